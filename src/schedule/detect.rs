//! What the machine has, for `memory: {vram: {total: auto}, ram: {total:
//! auto}}`: the GPUs llama-server itself lists (`--list-devices`, the names
//! the estimate uses), the host's memory (`MemTotal` of `<proc>/meminfo`),
//! and what the drivers report (amdgpu sysfs, nvidia-smi), each under the
//! probe roots given.

use std::path::Path;

use crate::memory::plan::{ListedDevice, list_devices};
use crate::memory::probe::{self, DeviceMemory, ProbeRoots};

/// The machine as admission sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Machine {
    /// The GPUs llama-server lists, by llama.cpp's names (`ROCm0`).
    pub gpus: Vec<ListedDevice>,
    /// The host's memory (`MemTotal`), when it can be read.
    pub ram_total: Option<u64>,
    /// GPUs the drivers report (`card0`, `nvidia0`), whether or not this
    /// llama-server build can use them.
    pub drivers: Vec<DeviceMemory>,
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("MemTotal:")?;
        let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        kib.checked_mul(1024)
    })
}

/// The host's memory under `proc` (normally `/proc`).
pub fn ram_total(proc_root: &Path) -> Option<u64> {
    parse_meminfo_total(&std::fs::read_to_string(proc_root.join("meminfo")).ok()?)
}

/// `llama_server --list-devices`, asked once per binary (path, size and
/// modification time) for the process's life: the daemon validates at every
/// reload, and a GPU build's device listing takes a while.
fn listed_gpus(llama_server: &Path) -> Vec<ListedDevice> {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, OnceLock};
    type Key = (std::path::PathBuf, u64, Option<std::time::SystemTime>);
    static CACHE: OnceLock<Mutex<BTreeMap<Key, Vec<ListedDevice>>>> = OnceLock::new();
    let meta = std::fs::metadata(llama_server).ok();
    let key: Key = (
        llama_server.to_owned(),
        meta.as_ref().map_or(0, std::fs::Metadata::len),
        meta.and_then(|m| m.modified().ok()),
    );
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return hit;
    }
    let listed = list_devices(llama_server);
    if let Ok(mut c) = cache.lock() {
        c.insert(key, listed.clone());
    }
    listed
}

/// Detects the machine: `llama_server --list-devices` (bounded; nothing
/// when it cannot run; cached per binary) and the probes under `roots`.
pub fn machine(llama_server: &Path, roots: &ProbeRoots) -> Machine {
    Machine {
        gpus: listed_gpus(llama_server),
        ram_total: ram_total(&roots.proc),
        drivers: probe::devices(roots),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_is_read_in_bytes() {
        for (text, want) in [
            (
                "MemTotal:       24567012 kB\nMemFree: 1 kB\n",
                Some(24_567_012 * 1024),
            ),
            ("MemFree: 1 kB\n", None),
            ("MemTotal: lots\n", None),
        ] {
            assert_eq!(parse_meminfo_total(text), want, "{text:?}");
        }
    }
}
