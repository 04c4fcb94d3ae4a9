//! The measured-usage probes against fixture sysfs and procfs trees and a
//! fake `nvidia-smi` (no AMD or NVIDIA GPU is here): tests/fixtures/probes/.
//! The trees copy the layout of the real files: amdgpu's
//! `device/mem_info_{vram,gtt}_{total,used}`, KFD's per-process
//! `vram_<gpu_id>`, DRM fdinfo's `drm-memory-vram`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rocm_llm::memory::probe::{
    self, DeviceMemory, ProbeRoots, amdgpu_devices, drm_fdinfo_vram, kfd_process_vram,
    nvidia_devices, nvidia_processes,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/probes")
}

const MIB: u64 = 1 << 20;

#[test]
fn amdgpu_devices_from_sysfs() {
    let d = amdgpu_devices(&fixtures().join("sys"));
    assert_eq!(
        d,
        vec![DeviceMemory {
            name: "card0".into(),
            pci: Some("0000:03:00.0".into()),
            total: 17_163_091_968,
            used: 9_663_676_416,
            gtt_total: Some(33_554_432_000),
            gtt_used: Some(52_428_800),
        }]
    );
    assert_eq!(d[0].free(), 17_163_091_968 - 9_663_676_416);
    // No sysfs at all: no devices, no error.
    assert!(amdgpu_devices(Path::new("/nonexistent")).is_empty());
}

#[test]
fn kfd_per_process_vram() {
    let sys = fixtures().join("sys");
    let m = kfd_process_vram(&sys, 4242).unwrap();
    assert_eq!(
        m,
        BTreeMap::from([("11111".into(), MIB), ("53213".into(), 8 << 30)])
    );
    // A process KFD does not know (exited, or never used ROCm).
    assert_eq!(kfd_process_vram(&sys, 1), None);
}

#[test]
fn drm_fdinfo_counts_each_client_once_and_only_amdgpu() {
    let proc_root = fixtures().join("proc");
    // fds 5 and 6 are the same client (77): 4 GiB once; client 78: 1 MiB;
    // the i915 client is not VRAM of an amdgpu.
    assert_eq!(
        drm_fdinfo_vram(&proc_root, 4343),
        BTreeMap::from([("0000:03:00.0".into(), (4 << 30) + MIB)])
    );
    assert!(drm_fdinfo_vram(&proc_root, 4242).is_empty());
    assert!(drm_fdinfo_vram(&proc_root, 9).is_empty());
}

#[test]
fn nvidia_smi_devices_and_processes() {
    let smi = fixtures().join("fake-nvidia-smi.sh");
    let d = nvidia_devices(&smi);
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].name, "nvidia0");
    assert_eq!(d[0].pci.as_deref(), Some("00000000:01:00.0"));
    assert_eq!((d[0].total, d[0].used), (24564 * MIB, 10240 * MIB));
    assert_eq!(d[1].free(), 12288 * MIB);
    // Two entries for one pid (two GPUs) add up.
    assert_eq!(
        nvidia_processes(&smi),
        BTreeMap::from([(4242, 9000 * MIB), (5151, 2048 * MIB)])
    );
    // No nvidia-smi: nothing, quickly.
    assert!(nvidia_devices(Path::new("/nonexistent/nvidia-smi")).is_empty());
    assert!(nvidia_processes(Path::new("/nonexistent/nvidia-smi")).is_empty());
}

#[test]
fn per_process_prefers_kfd_then_fdinfo_and_adds_nvidia() {
    let roots = ProbeRoots {
        sys: fixtures().join("sys"),
        proc: fixtures().join("proc"),
        nvidia_smi: fixtures().join("fake-nvidia-smi.sh"),
    };
    let nv = nvidia_processes(&roots.nvidia_smi);
    // 4242: KFD's 8 GiB + 1 MiB, and 9000 MiB on NVIDIA.
    assert_eq!(
        probe::process_gpu_bytes(&roots, 4242, &nv),
        (8 << 30) + MIB + 9000 * MIB
    );
    // 4343: no KFD entry, so DRM fdinfo.
    assert_eq!(probe::process_gpu_bytes(&roots, 4343, &nv), (4 << 30) + MIB);
    assert_eq!(probe::process_gpu_bytes(&roots, 7, &nv), 0);
    let all = probe::devices(&roots);
    let names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["card0", "nvidia0", "nvidia1"]);
}
