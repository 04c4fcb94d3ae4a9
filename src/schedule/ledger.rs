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
    #[error("{model} already holds a reservation")]
    AlreadyHeld { model: String },
    #[error("{loading} is loading on {device}; loads on one device go one at a time")]
    DeviceLoading { device: String, loading: String },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    Short(Vec<DeviceShort>),
}

/// Budgets per device and who holds what.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    budgets: Bytes,
    held: BTreeMap<String, Reservation>,
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

    pub fn get(&self, model: &str) -> Option<&Reservation> {
        self.held.get(model)
    }

    pub fn reservations(&self) -> impl Iterator<Item = (&String, &Reservation)> {
        self.held.iter()
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

    /// The model loading on one of `need`'s devices, if any.
    pub fn loading_on(&self, need: &Bytes) -> Option<(String, String)> {
        self.held.iter().find_map(|(m, r)| {
            (r.phase == Phase::Loading)
                .then(|| {
                    need.keys()
                        .find(|d| need[*d] > 0 && r.bytes.get(*d).is_some_and(|b| *b > 0))
                        .map(|d| (d.clone(), m.clone()))
                })
                .flatten()
        })
    }

    /// Reserves `need` for `model` before its spawn.
    pub fn reserve(&mut self, model: &str, need: Bytes) -> Result<(), ReserveError> {
        if self.held.contains_key(model) {
            return Err(ReserveError::AlreadyHeld {
                model: model.into(),
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
            model.into(),
            Reservation {
                bytes: need,
                phase: Phase::Loading,
            },
        );
        Ok(())
    }

    /// The model loaded; `measured` (when known) replaces the reservation,
    /// even above it: the ledger records what the device really holds.
    pub fn loaded(&mut self, model: &str, measured: Option<Bytes>) {
        if let Some(r) = self.held.get_mut(model) {
            if let Some(m) = measured {
                r.bytes = m;
            }
            r.phase = Phase::Loaded;
        }
    }

    /// The process exited (or is being stopped): its memory still counts.
    pub fn exited(&mut self, model: &str) {
        if let Some(r) = self.held.get_mut(model) {
            r.phase = Phase::Releasing;
        }
    }

    /// The memory is seen free (or the bounded wait for it ran out): the
    /// reservation goes.
    pub fn freed(&mut self, model: &str) -> Option<Reservation> {
        self.held.remove(model)
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
        l.reserve("a", bytes(&[("ROCm0", 6 * GIB)])).unwrap();
        assert_eq!(l.free("ROCm0"), 9 * GIB);
        // One load per device at a time.
        assert_eq!(
            l.reserve("b", bytes(&[("ROCm0", GIB)])),
            Err(ReserveError::DeviceLoading {
                device: "ROCm0".into(),
                loading: "a".into()
            })
        );
        // The measured figure replaces the reservation.
        l.loaded("a", Some(bytes(&[("ROCm0", 7 * GIB)])));
        assert_eq!(l.free("ROCm0"), 8 * GIB);
        let err = l.reserve("b", bytes(&[("ROCm0", 9 * GIB)])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "short by 1.00 GiB on ROCm0 (needs 9.00 GiB, 8.00 GiB free)"
        );
        // Exited is not free yet.
        l.exited("a");
        assert_eq!(l.free("ROCm0"), 8 * GIB);
        assert!(l.reserve("b", bytes(&[("ROCm0", 9 * GIB)])).is_err());
        assert_eq!(l.freed("a").map(|r| r.phase), Some(Phase::Releasing));
        assert_eq!(l.free("ROCm0"), 15 * GIB);
        l.reserve("b", bytes(&[("ROCm0", 9 * GIB)])).unwrap();
        assert_eq!(
            l.reserve("b", bytes(&[("ROCm0", GIB)])),
            Err(ReserveError::AlreadyHeld { model: "b".into() })
        );
    }

    #[test]
    fn devices_are_independent_and_unbudgeted_ones_unlimited() {
        let mut l = Ledger::new([("ROCm0".to_owned(), 4 * GIB), ("CPU".to_owned(), 8 * GIB)]);
        l.reserve("gpu", bytes(&[("ROCm0", 4 * GIB), ("CPU", GIB)]))
            .unwrap();
        l.loaded("gpu", None);
        // The host is not loading anything of `gpu` any more, and has room.
        l.reserve("cpu", bytes(&[("CPU", 7 * GIB), ("Vulkan0", 100 * GIB)]))
            .unwrap();
        assert_eq!(l.free("CPU"), 0);
        assert_eq!(l.free("Vulkan0"), u64::MAX);
        assert_eq!(l.held_on("ROCm0"), 4 * GIB);
    }
}
