//! The ledger: the one arbiter of memory at run time. Pure data; the owner
//! (the executor) asks it before every spawn and tells it what happened.
//!
//! - [`Ledger::reserve`] before a spawn: the footprint must fit in what is
//!   free, and only one model loads per device at a time, so no two
//!   llama-servers size themselves against the same free memory.
//! - [`Ledger::loaded`]: the measured figure replaces the reservation.
//! - [`Ledger::exited`]: the process is gone, but its memory still counts
//!   until [`Ledger::freed`] (the device shows it back; see
//!   [`super::freed`]), because AMD frees VRAM with a lag.

use std::collections::BTreeMap;
use std::fmt;

use crate::memory::human_bytes;

/// Bytes per device (llama.cpp's names: `CPU`, `ROCm0`, ...).
pub type Bytes = BTreeMap<String, u64>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reserved before the spawn; loading.
    Loading,
    /// Running; the figure is what it measured (or the reservation until
    /// a measurement arrives).
    Loaded,
    /// Exited or stopping; the memory is not yet seen free.
    Releasing,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub bytes: Bytes,
    pub phase: Phase,
}

/// What a device lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceShort {
    pub device: String,
    pub need: u64,
    pub free: u64,
}

impl fmt::Display for DeviceShort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "short by {} on {} (needs {}, {} free)",
            human_bytes(self.need.saturating_sub(self.free)),
            self.device,
            human_bytes(self.need),
            human_bytes(self.free)
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    #[error("{model} process {proc} already holds a reservation")]
    AlreadyHeld { model: String, proc: u64 },
    #[error("{loading} is loading on {device}; loads on one GPU go one at a time")]
    DeviceLoading { device: String, loading: String },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    Short(Vec<DeviceShort>),
}

/// Who holds a reservation: a model and the owner's number for one of its
/// processes (a `blue_green` swap holds two at once).
pub type Holder = (String, u64);

/// Budgets per device and who holds what.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    budgets: Bytes,
    held: BTreeMap<Holder, Reservation>,
}

impl Ledger {
    /// `budgets`: what each device may hold (total minus reserve). A device
    /// without a budget is not limited.
    pub fn new(budgets: impl IntoIterator<Item = (String, u64)>) -> Ledger {
        Ledger {
            budgets: budgets.into_iter().collect(),
            held: BTreeMap::new(),
        }
    }

    /// The same reservations against new budgets (a reload): what runs keeps
    /// what it holds, even above a smaller budget, until it stops.
    pub fn set_budgets(&mut self, budgets: impl IntoIterator<Item = (String, u64)>) {
        self.budgets = budgets.into_iter().collect();
    }

    pub fn budget(&self, device: &str) -> Option<u64> {
        self.budgets.get(device).copied()
    }

    pub fn budgets(&self) -> &Bytes {
        &self.budgets
    }

    /// What every reservation on `device` holds, releasing ones included.
    pub fn held_on(&self, device: &str) -> u64 {
        self.held
            .values()
            .map(|r| r.bytes.get(device).copied().unwrap_or(0))
            .sum()
    }

    /// What may still be reserved on `device` (`u64::MAX` without a budget).
    pub fn free(&self, device: &str) -> u64 {
        match self.budget(device) {
            Some(b) => b.saturating_sub(self.held_on(device)),
            None => u64::MAX,
        }
    }

    pub fn get(&self, model: &str, proc: u64) -> Option<&Reservation> {
        self.held.get(&(model.to_owned(), proc))
    }

    /// Every reservation, by holder.
    pub fn reservations(&self) -> impl Iterator<Item = (&Holder, &Reservation)> {
        self.held.iter()
    }

    fn of<'a>(&'a self, model: &'a str) -> impl Iterator<Item = &'a Reservation> + 'a {
        self.held
            .iter()
            .filter(move |((m, _), _)| m == model)
            .map(|(_, r)| r)
    }

    /// What `model`'s processes hold on `device`, in every phase.
    pub fn holds(&self, model: &str, device: &str) -> u64 {
        self.of(model)
            .map(|r| r.bytes.get(device).copied().unwrap_or(0))
            .sum()
    }

    /// What `model`'s processes on their way out hold on `device`.
    pub fn releasing(&self, model: &str, device: &str) -> u64 {
        self.of(model)
            .filter(|r| r.phase == Phase::Releasing)
            .map(|r| r.bytes.get(device).copied().unwrap_or(0))
            .sum()
    }

    /// Whether one of `model`'s processes is in `phase`.
    pub fn has(&self, model: &str, phase: Phase) -> bool {
        self.of(model).any(|r| r.phase == phase)
    }

    /// The models holding anything, each once.
    pub fn models(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.held.keys().map(|(m, _)| m.as_str()).collect();
        v.dedup();
        v
    }

    /// The devices where `need` does not fit in what is free now.
    pub fn shortfalls(&self, need: &Bytes) -> Vec<DeviceShort> {
        need.iter()
            .filter(|(d, b)| **b > self.free(d))
            .map(|(d, b)| DeviceShort {
                device: d.clone(),
                need: *b,
                free: self.free(d),
            })
            .collect()
    }

    /// The model loading on one of `need`'s GPUs, if any: `(device, model)`.
    /// The host is not one: nothing sizes itself against its free memory
    /// (a load there maps the file and allocates what it was told), while
    /// every model has a host part, so counting it would make all loads
    /// wait for each other.
    pub fn loading_on(&self, need: &Bytes) -> Option<(String, String)> {
        self.held.iter().find_map(|((m, _), r)| {
            (r.phase == Phase::Loading)
                .then(|| {
                    need.keys()
                        .filter(|d| d.as_str() != super::HOST)
                        .find(|d| need[*d] > 0 && r.bytes.get(*d).is_some_and(|b| *b > 0))
                        .map(|d| (d.clone(), m.clone()))
                })
                .flatten()
        })
    }

    /// Reserves `need` for process `proc` of `model` before its spawn.
    pub fn reserve(&mut self, model: &str, proc: u64, need: Bytes) -> Result<(), ReserveError> {
        let key = (model.to_owned(), proc);
        if self.held.contains_key(&key) {
            return Err(ReserveError::AlreadyHeld {
                model: model.into(),
                proc,
            });
        }
        if let Some((device, loading)) = self.loading_on(&need) {
            return Err(ReserveError::DeviceLoading { device, loading });
        }
        let short = self.shortfalls(&need);
        if !short.is_empty() {
            return Err(ReserveError::Short(short));
        }
        self.held.insert(
            key,
            Reservation {
                bytes: need,
                phase: Phase::Loading,
            },
        );
        Ok(())
    }

    /// The process loaded; `measured` (when known) replaces the
    /// reservation, even above it: the ledger records what the device
    /// really holds.
    pub fn loaded(&mut self, model: &str, proc: u64, measured: Option<Bytes>) {
        if let Some(r) = self.held.get_mut(&(model.to_owned(), proc)) {
            if let Some(m) = measured {
                r.bytes = m;
            }
            r.phase = Phase::Loaded;
        }
    }

    /// The process exited (or is being stopped): its memory still counts.
    pub fn exited(&mut self, model: &str, proc: u64) {
        if let Some(r) = self.held.get_mut(&(model.to_owned(), proc)) {
            r.phase = Phase::Releasing;
        }
    }

    /// The memory is seen free (or the bounded wait for it ran out), or the
    /// process never started: the reservation goes.
    pub fn freed(&mut self, model: &str, proc: u64) -> Option<Reservation> {
        self.held.remove(&(model.to_owned(), proc))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn bytes(d: &[(&str, u64)]) -> Bytes {
        d.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn a_reservation_lives_until_its_memory_is_seen_free() {
        let mut l = Ledger::new([("ROCm0".to_owned(), 15 * GIB)]);
        l.reserve("a", 1, bytes(&[("ROCm0", 6 * GIB)])).unwrap();
        assert_eq!(l.free("ROCm0"), 9 * GIB);
        // One load per device at a time.
        assert_eq!(
            l.reserve("b", 1, bytes(&[("ROCm0", GIB)])),
            Err(ReserveError::DeviceLoading {
                device: "ROCm0".into(),
                loading: "a".into()
            })
        );
        // The measured figure replaces the reservation.
        l.loaded("a", 1, Some(bytes(&[("ROCm0", 7 * GIB)])));
        assert_eq!(l.free("ROCm0"), 8 * GIB);
        let err = l.reserve("b", 1, bytes(&[("ROCm0", 9 * GIB)])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "short by 1.00 GiB on ROCm0 (needs 9.00 GiB, 8.00 GiB free)"
        );
        // Exited is not free yet.
        l.exited("a", 1);
        assert_eq!(l.free("ROCm0"), 8 * GIB);
        assert!(l.reserve("b", 1, bytes(&[("ROCm0", 9 * GIB)])).is_err());
        assert_eq!(l.freed("a", 1).map(|r| r.phase), Some(Phase::Releasing));
        assert_eq!(l.free("ROCm0"), 15 * GIB);
        l.reserve("b", 1, bytes(&[("ROCm0", 9 * GIB)])).unwrap();
        assert_eq!(
            l.reserve("b", 1, bytes(&[("ROCm0", GIB)])),
            Err(ReserveError::AlreadyHeld {
                model: "b".into(),
                proc: 1
            })
        );
    }

    #[test]
    fn devices_are_independent_and_unbudgeted_ones_unlimited() {
        let mut l = Ledger::new([("ROCm0".to_owned(), 4 * GIB), ("CPU".to_owned(), 8 * GIB)]);
        l.reserve("gpu", 1, bytes(&[("ROCm0", 4 * GIB), ("CPU", GIB)]))
            .unwrap();
        l.loaded("gpu", 1, None);
        // The host is not loading anything of `gpu` any more, and has room.
        l.reserve("cpu", 1, bytes(&[("CPU", 7 * GIB), ("Vulkan0", 100 * GIB)]))
            .unwrap();
        assert_eq!(l.free("CPU"), 0);
        assert_eq!(l.free("Vulkan0"), u64::MAX);
        assert_eq!(l.held_on("ROCm0"), 4 * GIB);
        // Loads on the host do not wait for each other (only GPUs' do).
        l.freed("cpu", 1);
        l.reserve("host1", 1, bytes(&[("CPU", GIB)])).unwrap();
        l.reserve("host2", 1, bytes(&[("CPU", GIB)])).unwrap();
    }
}
