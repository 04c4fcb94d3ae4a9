//! Waiting until a stopped model's memory is seen free, so the ledger can
//! give its reservation back ([`super::ledger::Ledger::freed`]). AMD frees
//! VRAM with a lag after the process exits, so "exited" is not "free".
//!
//! The edge: it reads the probes under [`ProbeRoots`] (tests give fixture
//! trees). The arbiter ([`super::arbiter`]) runs it after each exit.
//!
//! What counts as seen free, in this order:
//! - the device's used memory (`mem_info_vram_used` of its card, or
//!   nvidia-smi's figure) has dropped by what the process held, within an
//!   eighth of it (other programs move the figure a little), against the
//!   reading taken when the stop began;
//! - when the device cannot be read: the process's KFD entry
//!   (`<sys>/class/kfd/kfd/proc/<pid>`) is gone.
//!
//! Without either reading nothing can be seen; the wait then ends at once
//! as [`FreedBy::NothingToWatch`]. Every wait is bounded.

use std::time::{Duration, Instant};

use crate::memory::probe::{self, ProbeRoots};

/// What to watch for one stopped process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    pub pid: u32,
    /// The probe's device name (`card0`, `nvidia0`), when known.
    pub device: Option<String>,
    /// The device's used bytes when the stop began ([`used_now`]).
    pub used_at_stop: Option<u64>,
    /// What the process held on the device (its reservation or measured
    /// figure).
    pub held: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreedBy {
    /// The device's used memory dropped by what the process held.
    DeviceUsedDropped,
    /// The process's KFD entry is gone (the device could not be read).
    KfdEntryGone,
    /// Neither can be read here: nothing to wait for.
    NothingToWatch,
    /// The bound ran out first: the caller releases anyway, and says so.
    TimedOut,
}

/// The device's used bytes now, by the probe's name.
pub fn used_now(roots: &ProbeRoots, device: &str) -> Option<u64> {
    probe::devices(roots)
        .into_iter()
        .find(|d| d.name == device)
        .map(|d| d.used)
}

/// One look: `Some` when the memory is seen free (or nothing can be seen).
pub fn check(roots: &ProbeRoots, w: &Watch) -> Option<FreedBy> {
    if let (Some(device), Some(before)) = (&w.device, w.used_at_stop)
        && let Some(used) = used_now(roots, device)
    {
        let target = before.saturating_sub(w.held).saturating_add(w.held / 8);
        return (used <= target).then_some(FreedBy::DeviceUsedDropped);
    }
    let kfd = roots.sys.join(format!("class/kfd/kfd/proc/{}", w.pid));
    if roots.sys.join("class/kfd/kfd/proc").is_dir() {
        return (!kfd.exists()).then_some(FreedBy::KfdEntryGone);
    }
    Some(FreedBy::NothingToWatch)
}

/// Polls [`check`] every `poll` until it answers or `bound` passes.
pub async fn wait_freed(roots: &ProbeRoots, w: &Watch, bound: Duration, poll: Duration) -> FreedBy {
    let deadline = Instant::now() + bound;
    loop {
        // The probes read sysfs and may run nvidia-smi: off the async threads.
        let (r, watch) = (roots.clone(), w.clone());
        let seen = tokio::task::spawn_blocking(move || check(&r, &watch))
            .await
            .unwrap_or(Some(FreedBy::NothingToWatch));
        if let Some(by) = seen {
            return by;
        }
        if Instant::now() >= deadline {
            return FreedBy::TimedOut;
        }
        tokio::time::sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// The bound used when the caller has none: AMD has been seen to take
/// seconds to return VRAM after a large process exits.
pub const DEFAULT_BOUND: Duration = Duration::from_secs(30);

/// The driver's name (`card0`, `nvidia0`) for a device llama.cpp names
/// (`ROCm0`, `CUDA1`, `Vulkan0`): the N-th GPU of the kind the backend
/// uses, in the order the probes list them (amdgpu cards by number, then
/// NVIDIA's by index). llama.cpp orders its devices the way the runtime
/// does, which for one GPU per kind (the common box) is this order; with
/// several, set `HIP_VISIBLE_DEVICES` or the like so they agree.
pub fn driver_device(llama: &str, drivers: &[probe::DeviceMemory]) -> Option<String> {
    let digits = llama.trim_start_matches(|c: char| !c.is_ascii_digit());
    let index: usize = digits.parse().ok()?;
    let backend = &llama[..llama.len() - digits.len()];
    let amd = |d: &&probe::DeviceMemory| d.name.starts_with("card");
    let nvidia = |d: &&probe::DeviceMemory| d.name.starts_with("nvidia");
    let of_kind: Vec<&probe::DeviceMemory> = match backend {
        "ROCm" | "HIP" => drivers.iter().filter(amd).collect(),
        "CUDA" => drivers.iter().filter(nvidia).collect(),
        "Vulkan" => drivers.iter().collect(),
        _ => return None,
    };
    of_kind.get(index).map(|d| d.name.clone())
}
