//! Measured memory: per device (total, used) and per process, from the
//! places the drivers publish it. Every probe takes its root (a sysfs or
//! procfs tree, an `nvidia-smi` binary) as a parameter, so tests run them
//! against fixture trees and a fake `nvidia-smi`.
//!
//! - amdgpu: `<sys>/class/drm/card*/device/mem_info_{vram,gtt}_{total,used}`
//!   per device; per process `<sys>/class/kfd/kfd/proc/<pid>/vram_<gpu_id>`
//!   (KFD, what ROCm allocates) and `<proc>/<pid>/fdinfo/*`
//!   `drm-memory-vram` (DRM clients, deduplicated by `drm-client-id`).
//! - NVIDIA: `nvidia-smi --query-gpu=...` per device and
//!   `nvidia-smi --query-compute-apps=pid,used_memory` per process.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One device's memory as its driver reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMemory {
    /// `card0` (amdgpu) or `nvidia0`.
    pub name: String,
    /// The PCI address, when known (`0000:03:00.0`).
    pub pci: Option<String>,
    pub total: u64,
    pub used: u64,
    /// GTT (system memory the GPU maps), amdgpu only.
    pub gtt_total: Option<u64>,
    pub gtt_used: Option<u64>,
}

impl DeviceMemory {
    pub fn free(&self) -> u64 {
        self.total.saturating_sub(self.used)
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// amdgpu devices under `sys` (normally `/sys`), in card order.
pub fn amdgpu_devices(sys: &Path) -> Vec<DeviceMemory> {
    let Ok(entries) = std::fs::read_dir(sys.join("class/drm")) else {
        return Vec::new();
    };
    let mut cards: Vec<(u32, std::path::PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n: u32 = name.strip_prefix("card")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    cards.sort();
    cards
        .into_iter()
        .filter_map(|(n, card)| {
            let dev = card.join("device");
            let total = read_u64(&dev.join("mem_info_vram_total"))?;
            let used = read_u64(&dev.join("mem_info_vram_used")).unwrap_or(0);
            let pci = std::fs::read_to_string(dev.join("uevent"))
                .ok()
                .and_then(|u| {
                    u.lines()
                        .find_map(|l| l.strip_prefix("PCI_SLOT_NAME=").map(str::to_owned))
                });
            Some(DeviceMemory {
                name: format!("card{n}"),
                pci,
                total,
                used,
                gtt_total: read_u64(&dev.join("mem_info_gtt_total")),
                gtt_used: read_u64(&dev.join("mem_info_gtt_used")),
            })
        })
        .collect()
}

/// VRAM a process holds through KFD (ROCm), per KFD gpu id, under `sys`.
/// `None` when KFD has no entry for the process (it holds nothing, or it
/// has exited).
pub fn kfd_process_vram(sys: &Path, pid: u32) -> Option<BTreeMap<String, u64>> {
    let dir = sys.join(format!("class/kfd/kfd/proc/{pid}"));
    let entries = std::fs::read_dir(dir).ok()?;
    let mut out = BTreeMap::new();
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().into_string().unwrap_or_default();
        if let Some(gpu) = name.strip_prefix("vram_")
            && let Some(bytes) = read_u64(&e.path())
        {
            out.insert(gpu.to_owned(), bytes);
        }
    }
    Some(out)
}

/// A size as fdinfo writes it: `123 KiB`, `4 MiB`, `17`.
fn fdinfo_size(text: &str) -> Option<u64> {
    let mut w = text.split_whitespace();
    let n: u64 = w.next()?.parse().ok()?;
    let scale = match w.next() {
        None => 1,
        Some("KiB") => 1 << 10,
        Some("MiB") => 1 << 20,
        Some("GiB") => 1 << 30,
        Some(_) => return None,
    };
    n.checked_mul(scale)
}

/// VRAM a process holds through DRM (amdgpu), per PCI device, from
/// `<proc>/<pid>/fdinfo/*`. Several descriptors of one DRM client count once.
pub fn drm_fdinfo_vram(proc_root: &Path, pid: u32) -> BTreeMap<String, u64> {
    let mut clients: BTreeMap<(String, String), u64> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(proc_root.join(format!("{pid}/fdinfo"))) else {
        return BTreeMap::new();
    };
    for e in entries.filter_map(Result::ok) {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let mut driver = None;
        let mut pdev = String::new();
        let mut client = None;
        let mut vram = None;
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k.trim() {
                "drm-driver" => driver = Some(v.to_owned()),
                "drm-pdev" => pdev = v.to_owned(),
                "drm-client-id" => client = Some(v.to_owned()),
                "drm-memory-vram" => vram = fdinfo_size(v),
                _ => {}
            }
        }
        if driver.as_deref() == Some("amdgpu")
            && let (Some(c), Some(b)) = (client, vram)
        {
            clients.insert((pdev, c), b);
        }
    }
    let mut out = BTreeMap::new();
    for ((pdev, _), b) in clients {
        *out.entry(pdev).or_insert(0) += b;
    }
    out
}

/// Runs `nvidia-smi` with `args`, bounded in time; its stdout, or `None`.
fn run_smi(smi: &Path, args: &[&str]) -> Option<String> {
    let mut child = Command::new(smi)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) => return None,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut out = String::new();
    use std::io::Read;
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    Some(out)
}

const MIB: u64 = 1 << 20;

/// NVIDIA devices from `nvidia-smi` (the binary at `smi`).
pub fn nvidia_devices(smi: &Path) -> Vec<DeviceMemory> {
    let Some(out) = run_smi(
        smi,
        &[
            "--query-gpu=index,pci.bus_id,memory.total,memory.used",
            "--format=csv,noheader,nounits",
        ],
    ) else {
        return Vec::new();
    };
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            let [index, pci, total, used] = f[..] else {
                return None;
            };
            Some(DeviceMemory {
                name: format!("nvidia{index}"),
                pci: Some(pci.to_owned()),
                total: total.parse::<u64>().ok()? * MIB,
                used: used.parse::<u64>().ok()? * MIB,
                gtt_total: None,
                gtt_used: None,
            })
        })
        .collect()
}

/// Memory each process holds on NVIDIA GPUs, by pid (summed over GPUs).
pub fn nvidia_processes(smi: &Path) -> BTreeMap<u32, u64> {
    let Some(out) = run_smi(
        smi,
        &[
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ],
    ) else {
        return BTreeMap::new();
    };
    let mut m = BTreeMap::new();
    for l in out.lines() {
        if let Some((pid, used)) = l.split_once(',')
            && let (Ok(pid), Ok(used)) = (pid.trim().parse::<u32>(), used.trim().parse::<u64>())
        {
            *m.entry(pid).or_insert(0) += used * MIB;
        }
    }
    m
}

/// Where the probes look: `/sys`, `/proc` and `nvidia-smi` on PATH in
/// production; fixture trees in tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeRoots {
    pub sys: std::path::PathBuf,
    pub proc: std::path::PathBuf,
    pub nvidia_smi: std::path::PathBuf,
}

impl Default for ProbeRoots {
    fn default() -> Self {
        ProbeRoots {
            sys: "/sys".into(),
            proc: "/proc".into(),
            nvidia_smi: "nvidia-smi".into(),
        }
    }
}

/// Every device the probes find.
pub fn devices(roots: &ProbeRoots) -> Vec<DeviceMemory> {
    let mut d = amdgpu_devices(&roots.sys);
    d.extend(nvidia_devices(&roots.nvidia_smi));
    d
}

/// What one process holds on the GPUs, in bytes: KFD's figure where KFD has
/// one, else DRM fdinfo's, plus NVIDIA's.
pub fn process_gpu_bytes(roots: &ProbeRoots, pid: u32, nvidia: &BTreeMap<u32, u64>) -> u64 {
    let amd: u64 = match kfd_process_vram(&roots.sys, pid) {
        Some(per_gpu) if !per_gpu.is_empty() => per_gpu.values().sum(),
        _ => drm_fdinfo_vram(&roots.proc, pid).values().sum(),
    };
    amd + nvidia.get(&pid).copied().unwrap_or(0)
}
