//! Properties of the memory policy (src/schedule/) over random ledgers:
//! eviction never picks a busy or always-on model, "never" evicts nothing,
//! the victims it names make room and none of them is superfluous.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use rocm_llm::schedule::ledger::{Bytes, Ledger};
use rocm_llm::schedule::policy::{Resident, Room, make_room};

const MIB: u64 = 1 << 20;

/// (MiB held, priority, in flight, queued, last used, on demand)
type Model = (u64, i32, u32, u32, u64, bool);

fn build(budget: u64, models: &[Model]) -> (Ledger, Vec<Resident>) {
    let mut ledger = Ledger::new([("ROCm0".to_owned(), budget * MIB)]);
    let mut residents = Vec::new();
    for (i, (held, priority, in_flight, queued, last_used, on_demand)) in models.iter().enumerate()
    {
        let name = format!("m{i}");
        // Only what fits is loaded, as the ledger would have it.
        if ledger
            .reserve(&name, 1, Bytes::from([("ROCm0".to_owned(), held * MIB)]))
            .is_ok()
        {
            ledger.loaded(&name, 1, None);
            residents.push(Resident {
                model: name,
                priority: *priority,
                in_flight: *in_flight,
                queued: *queued,
                last_used: *last_used,
                on_demand: *on_demand,
                loaded_for: std::time::Duration::ZERO,
                served: 0,
            });
        }
    }
    (ledger, residents)
}

proptest! {
    #[test]
    fn eviction_is_safe_and_sufficient(
        budget in 1u64..64,
        models in prop::collection::vec((1u64..16, -2i32..3, 0u32..2, 0u32..2, 0u64..100, any::<bool>()), 0..8),
        need in 1u64..64,
    ) {
        let (ledger, residents) = build(budget, &models);
        let need = Bytes::from([("ROCm0".to_owned(), need * MIB)]);
        let room = make_room(&ledger, "new", &need, &residents);
        let held = |m: &str| ledger.holds(m, "ROCm0");
        let fits_after = |victims: &[String]| {
            let freed: u64 = victims.iter().map(|v| held(v)).sum();
            need["ROCm0"] <= ledger.free("ROCm0") + freed
        };
        match &room {
            Room::Fits => prop_assert!(fits_after(&[])),
            Room::Evict { victims } => {
                prop_assert!(!victims.is_empty());
                prop_assert!(!fits_after(&[]));
                prop_assert!(fits_after(victims), "the victims make room");
                for v in victims {
                    let r = residents.iter().find(|r| &r.model == v).unwrap();
                    prop_assert!(r.on_demand && r.in_flight == 0 && r.queued == 0, "victim {v} is idle and on demand");
                    let others: Vec<String> = victims.iter().filter(|x| *x != v).cloned().collect();
                    prop_assert!(!fits_after(&others), "victim {v} is needed");
                }
            }
            Room::Never { .. } => {
                // Even every on-demand model stopped would not do.
                let all: Vec<String> = residents.iter().filter(|r| r.on_demand).map(|r| r.model.clone()).collect();
                prop_assert!(!fits_after(&all));
            }
            Room::Wait { held_by } => {
                prop_assert!(!fits_after(&[]));
                // The idle ones alone are not enough; the busy ones named would be.
                let idle: Vec<String> = residents.iter().filter(|r| r.on_demand && r.in_flight == 0 && r.queued == 0).map(|r| r.model.clone()).collect();
                prop_assert!(!fits_after(&idle));
                let mut all = idle.clone();
                all.extend(held_by.iter().cloned());
                prop_assert!(fits_after(&all));
                for h in held_by {
                    let r = residents.iter().find(|r| &r.model == h).unwrap();
                    prop_assert!(r.in_flight > 0 || r.queued > 0, "{h} holds the room because it is busy");
                }
            }
        }
    }
}
