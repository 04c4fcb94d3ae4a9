//! The scheduling policy, pure: what to do when a model must load and the
//! ledger says it does not fit ([`make_room`]), and when to swap between
//! models that cannot both be loaded ([`next_swap`]).

use std::time::Duration;

use super::ledger::{Bytes, DeviceShort, Ledger, Phase};

/// A model that holds memory now, as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resident {
    pub model: String,
    pub priority: i32,
    /// Requests being served.
    pub in_flight: u32,
    /// Requests waiting for it.
    pub queued: u32,
    /// When it last served (any monotone clock, e.g. ms since start).
    pub last_used: u64,
    /// Only on-demand models may be stopped to make room.
    pub on_demand: bool,
    /// How long it has served since it became ready: its turn so far.
    pub loaded_for: Duration,
    /// Requests its serving process has let in since it became ready.
    pub served: u64,
}

impl Resident {
    fn idle(&self) -> bool {
        self.in_flight == 0 && self.queued == 0
    }
}

/// What a load that does not fit should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Room {
    /// It fits now: reserve and spawn.
    Fits,
    /// Stop these idle models (in this order), wait for their memory, then
    /// load.
    Evict { victims: Vec<String> },
    /// Busy models hold the room (or memory is on its way back, or another
    /// load runs on the device): wait in the queue, bounded by
    /// `wait_timeout`, and ask again when something changes.
    Wait { held_by: Vec<String> },
    /// It cannot fit even with every on-demand model stopped: fail at once
    /// (503), evict nothing.
    Never { short: Vec<DeviceShort> },
}

/// What stopping a set of models gives back on `device`: all of what the
/// `whole` ones hold, and what the `releasing` ones already give back.
fn gain(ledger: &Ledger, releasing: &[&str], whole: &[&str], device: &str) -> u64 {
    let r: u64 = releasing
        .iter()
        .filter(|m| !whole.contains(m))
        .map(|m| ledger.releasing(m, device))
        .sum();
    let w: u64 = whole.iter().map(|m| ledger.holds(m, device)).sum();
    r + w
}

fn fits_with(ledger: &Ledger, need: &Bytes, releasing: &[&str], whole: &[&str]) -> bool {
    need.iter().all(|(d, b)| {
        *b <= ledger
            .free(d)
            .saturating_add(gain(ledger, releasing, whole, d))
    })
}

/// The models with memory on its way back (`model`'s own earlier process
/// included: a `stop_first` swap waits for it).
fn releasing(ledger: &Ledger) -> Vec<&str> {
    ledger
        .models()
        .into_iter()
        .filter(|m| ledger.has(m, Phase::Releasing))
        .collect()
}

/// An on-demand model, other than `model`, that has loaded and loads
/// nothing now: one that may be stopped to make room.
fn stoppable<'a>(ledger: &Ledger, model: &str, r: &'a Resident) -> Option<&'a Resident> {
    (r.model != model
        && r.on_demand
        && ledger.has(&r.model, Phase::Loaded)
        && !ledger.has(&r.model, Phase::Loading))
    .then_some(r)
}

/// Takes candidates in order until `need` fits, then spares, from the most
/// valuable back, every one not needed. `None` when all of them do not do.
fn choose<'a>(
    ledger: &Ledger,
    need: &Bytes,
    releasing: &[&str],
    candidates: &[&'a str],
) -> Option<Vec<&'a str>> {
    let mut taken: Vec<&str> = Vec::new();
    for m in candidates {
        if fits_with(ledger, need, releasing, &taken) {
            break;
        }
        // Only a model that frees something where memory is short helps.
        let helps = need.iter().any(|(d, b)| {
            *b > ledger
                .free(d)
                .saturating_add(gain(ledger, releasing, &taken, d))
                && ledger.holds(m, d) > 0
        });
        if helps {
            taken.push(m);
        }
    }
    if !fits_with(ledger, need, releasing, &taken) {
        return None;
    }
    let mut i = taken.len();
    while i > 0 {
        i -= 1;
        let without: Vec<&str> = taken.iter().copied().filter(|m| *m != taken[i]).collect();
        if fits_with(ledger, need, releasing, &without) {
            taken = without;
        }
    }
    Some(taken)
}

/// Decides how `model` gets `need` (for a process that holds nothing yet).
///
/// - Fits in what is free and no other load runs on its devices: [`Room::Fits`].
/// - Cannot fit even if every on-demand model were stopped (the always-on
///   ones hold the rest): [`Room::Never`].
/// - Memory already on its way back (exited processes, `model`'s own
///   included) covers it, or a load runs on the device: [`Room::Wait`].
/// - Else idle on-demand models, lowest priority first, then least recently
///   used, are taken until it fits, and any that turn out not to be needed
///   are spared: [`Room::Evict`]. A model with requests in flight or queued
///   is never a victim.
/// - If the idle ones are not enough, nothing is evicted: [`Room::Wait`] on
///   the busy ones, which drain first (see [`yielders`] for when one of
///   them must give its turn up).
pub fn make_room(ledger: &Ledger, model: &str, need: &Bytes, residents: &[Resident]) -> Room {
    let releasing = releasing(ledger);
    // Everything that could ever be given back: on-demand residents and
    // what is already being released.
    let reclaimable: Vec<&str> = residents
        .iter()
        .filter(|r| r.model != model && r.on_demand)
        .map(|r| r.model.as_str())
        .collect();
    let never: Vec<DeviceShort> = need
        .iter()
        .filter_map(|(d, b)| {
            let could = ledger
                .free(d)
                .saturating_add(gain(ledger, &releasing, &reclaimable, d));
            (*b > could).then(|| DeviceShort {
                device: d.clone(),
                need: *b,
                free: could,
            })
        })
        .collect();
    if !never.is_empty() {
        return Room::Never { short: never };
    }
    if let Some((_, loading)) = ledger.loading_on(need) {
        return Room::Wait {
            held_by: vec![loading],
        };
    }
    if fits_with(ledger, need, &[], &[]) {
        return Room::Fits;
    }
    if fits_with(ledger, need, &releasing, &[]) {
        return Room::Wait {
            held_by: releasing.iter().map(|m| (*m).to_owned()).collect(),
        };
    }
    let mut idle: Vec<&Resident> = residents
        .iter()
        .filter_map(|r| stoppable(ledger, model, r))
        .filter(|r| r.idle())
        .collect();
    idle.sort_by(|a, b| {
        (a.priority, a.last_used, &a.model).cmp(&(b.priority, b.last_used, &b.model))
    });
    let candidates: Vec<&str> = idle.iter().map(|r| r.model.as_str()).collect();
    match choose(ledger, need, &releasing, &candidates) {
        Some(victims) => Room::Evict {
            victims: victims.into_iter().map(str::to_owned).collect(),
        },
        None => {
            let mut held_by: Vec<String> = residents
                .iter()
                .filter(|r| r.model != model && r.on_demand && !r.idle())
                .map(|r| r.model.clone())
                .chain(releasing.iter().map(|m| (*m).to_owned()))
                .collect();
            held_by.sort();
            held_by.dedup();
            Room::Wait { held_by }
        }
    }
}

/// When [`make_room`] says [`Room::Wait`] because busy models hold the
/// room: the models to stop now so that `waiting` gets its turn, or none.
///
/// A busy model yields when [`next_swap`] says its turn is over for
/// `waiting` (its turn has lasted `fairness` and `waiting`'s oldest
/// request has waited as long). Yielding models stop taking requests, their
/// in-flight ones finish (never cut), then they stop. Idle on-demand models
/// go as well when they are needed too. Lowest priority, then least
/// recently used, first; any not needed is spared. Nothing when even all
/// of them would not make room.
pub fn yielders(
    ledger: &Ledger,
    need: &Bytes,
    residents: &[Resident],
    waiting: &Waiting,
    fairness: Duration,
) -> Vec<String> {
    let releasing = releasing(ledger);
    // A busy model yields only once it has let in a request: with a short
    // bound, two models could otherwise hand the memory back and forth
    // without serving anything (each loads, and yields before the requests
    // queued for it get in).
    let over = |r: &Resident| {
        r.idle()
            || r.served > 0
                && next_swap(
                    &Loaded {
                        model: r.model.clone(),
                        in_flight: r.in_flight,
                        queued: r.queued,
                        loaded_for: r.loaded_for,
                    },
                    std::slice::from_ref(waiting),
                    fairness,
                ) == Swap::To(waiting.model.clone())
    };
    let mut eligible: Vec<&Resident> = residents
        .iter()
        .filter_map(|r| stoppable(ledger, &waiting.model, r))
        .filter(|r| over(r))
        .collect();
    // The idle ones first (nothing to drain), then by priority and recency.
    eligible.sort_by(|a, b| {
        (!a.idle(), a.priority, a.last_used, &a.model).cmp(&(
            !b.idle(),
            b.priority,
            b.last_used,
            &b.model,
        ))
    });
    let candidates: Vec<&str> = eligible.iter().map(|r| r.model.as_str()).collect();
    if !eligible.iter().any(|r| !r.idle()) {
        return vec![];
    }
    choose(ledger, need, &releasing, &candidates)
        .unwrap_or_default()
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// The model loaded now, in a contest for the same memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub model: String,
    pub in_flight: u32,
    pub queued: u32,
    /// How long it has been loaded (since ready): its turn so far.
    pub loaded_for: Duration,
}

/// A model with requests waiting that cannot load beside [`Loaded`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub model: String,
    pub queued: u32,
    /// How long its oldest request has waited.
    pub oldest: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Swap {
    /// Keep serving the loaded model.
    Stay,
    /// Stop dispatching to the loaded model, let its in-flight requests
    /// finish (its queued ones wait), then stop it and load `to`.
    To(String),
}

/// The default fairness bound: see [`next_swap`].
pub const DEFAULT_FAIRNESS: Duration = Duration::from_secs(40);

/// The anti-thrash rule. While the loaded model has work (in flight or
/// queued), it keeps the memory for a turn of at least `fairness`: what is
/// queued for it is served first. Once its turn has lasted `fairness` and
/// another model's oldest request has waited `fairness`, the
/// longest-waiting model gets the memory. An idle loaded model gives way at
/// once. Among waiters, the oldest request wins (then the name, for a total
/// order).
///
/// Without the turn, two models both past the bound under load would swap
/// back and forth without serving anything (the benchmark found that).
/// The bound on a request's wait for its model to start loading, with two
/// models: `fairness` (the rest of the loaded model's turn, or its own
/// wait) plus the drain of the loaded model's in-flight requests, its stop
/// and the load.
pub fn next_swap(loaded: &Loaded, waiting: &[Waiting], fairness: Duration) -> Swap {
    let Some(first) = waiting
        .iter()
        .filter(|w| w.queued > 0 && w.model != loaded.model)
        .max_by(|a, b| a.oldest.cmp(&b.oldest).then_with(|| b.model.cmp(&a.model)))
    else {
        return Swap::Stay;
    };
    let busy = loaded.in_flight > 0 || loaded.queued > 0;
    if !busy || (loaded.loaded_for >= fairness && first.oldest >= fairness) {
        Swap::To(first.model.clone())
    } else {
        Swap::Stay
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

    /// A model in the ledger: `(name, GiB on ROCm0, phase)`; residents with
    /// `(name, priority, in_flight, queued, last_used, on_demand)`.
    fn setup(held: &[(&str, u64, Phase)], budget: u64) -> Ledger {
        let mut l = Ledger::new([("ROCm0".to_owned(), budget * GIB)]);
        for (m, g, phase) in held {
            l.reserve(m, 1, bytes(&[("ROCm0", g * GIB)])).unwrap();
            match phase {
                Phase::Loading => {}
                Phase::Loaded => l.loaded(m, 1, None),
                Phase::Releasing => l.exited(m, 1),
            }
        }
        l
    }

    fn r(
        model: &str,
        priority: i32,
        in_flight: u32,
        queued: u32,
        last_used: u64,
        on_demand: bool,
    ) -> Resident {
        Resident {
            model: model.into(),
            priority,
            in_flight,
            queued,
            last_used,
            on_demand,
            loaded_for: Duration::from_secs(60),
            served: 1,
        }
    }

    fn evict(v: &[&str]) -> Room {
        Room::Evict {
            victims: v.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn wait(v: &[&str]) -> Room {
        Room::Wait {
            held_by: v.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn make_room_table() {
        use Phase::*;
        let loaded3 = [("a", 4, Loaded), ("b", 4, Loaded), ("c", 4, Loaded)];
        // (ledger, budget GiB, residents, need GiB, expected)
        // (held, budget GiB, residents, need GiB, expected)
        type Case<'a> = (&'a [(&'a str, u64, Phase)], u64, Vec<Resident>, u64, Room);
        let cases: Vec<Case> = vec![
            // Room to spare.
            (
                &[("a", 4, Loaded)],
                15,
                vec![r("a", 0, 0, 0, 1, true)],
                8,
                Room::Fits,
            ),
            // Lowest priority first, whatever the recency.
            (
                &loaded3,
                15,
                vec![
                    r("a", 5, 0, 0, 1, true),
                    r("b", 0, 0, 0, 9, true),
                    r("c", 5, 0, 0, 2, true),
                ],
                6,
                evict(&["b"]),
            ),
            // Same priority: least recently used first.
            (
                &loaded3,
                15,
                vec![
                    r("a", 0, 0, 0, 3, true),
                    r("b", 0, 0, 0, 1, true),
                    r("c", 0, 0, 0, 2, true),
                ],
                6,
                evict(&["b"]),
            ),
            // Two needed: in order, no more.
            (
                &loaded3,
                15,
                vec![
                    r("a", 0, 0, 0, 3, true),
                    r("b", 0, 0, 0, 1, true),
                    r("c", 0, 0, 0, 2, true),
                ],
                10,
                evict(&["b", "c"]),
            ),
            // Busy models are never victims: the idle one goes.
            (
                &loaded3,
                15,
                vec![
                    r("a", 0, 1, 0, 1, true),
                    r("b", 0, 0, 2, 1, true),
                    r("c", 9, 0, 0, 9, true),
                ],
                6,
                evict(&["c"]),
            ),
            // Only busy ones could make room: wait for them, evict nothing.
            (
                &loaded3,
                12,
                vec![
                    r("a", 0, 1, 0, 1, true),
                    r("b", 0, 0, 2, 1, true),
                    r("c", 0, 0, 0, 9, true),
                ],
                8,
                wait(&["a", "b"]),
            ),
            // Always-on models are not victims; with them it never fits: fail at once.
            (
                &loaded3,
                12,
                vec![
                    r("a", 0, 0, 0, 1, false),
                    r("b", 0, 0, 0, 1, false),
                    r("c", 0, 0, 0, 1, true),
                ],
                8,
                Room::Never {
                    short: vec![DeviceShort {
                        device: "ROCm0".into(),
                        need: 8 * GIB,
                        free: 4 * GIB,
                    }],
                },
            ),
            // Bigger than the whole budget.
            (
                &[],
                15,
                vec![],
                16,
                Room::Never {
                    short: vec![DeviceShort {
                        device: "ROCm0".into(),
                        need: 16 * GIB,
                        free: 15 * GIB,
                    }],
                },
            ),
            // Memory on its way back covers it: wait for it, evict nothing more.
            (
                &[("a", 8, Releasing), ("b", 4, Loaded)],
                15,
                vec![r("b", 0, 0, 0, 1, true)],
                8,
                wait(&["a"]),
            ),
            // Not enough on its way back: an idle one goes as well.
            (
                &[("a", 4, Releasing), ("b", 8, Loaded)],
                15,
                vec![r("b", 0, 0, 0, 1, true)],
                10,
                evict(&["b"]),
            ),
            // Another load on the device: wait for it.
            (&[("a", 4, Loading)], 15, vec![], 2, wait(&["a"])),
            // A victim not needed after a later, bigger one is spared: b (1
            // GiB, lowest priority) goes first, then c (8 GiB) alone suffices.
            (
                &[("a", 5, Loaded), ("b", 1, Loaded), ("c", 8, Loaded)],
                15,
                vec![
                    r("a", 9, 1, 0, 0, true),
                    r("b", 0, 0, 0, 0, true),
                    r("c", 1, 0, 0, 0, true),
                ],
                8,
                evict(&["c"]),
            ),
        ];
        for (i, (held, budget, residents, need, want)) in cases.into_iter().enumerate() {
            let ledger = setup(held, budget);
            let got = make_room(&ledger, "new", &bytes(&[("ROCm0", need * GIB)]), &residents);
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn yielders_table() {
        use Phase::*;
        let s = Duration::from_secs;
        // A resident with (name, priority, in flight, loaded for s, last used).
        let busy = |m: &str, priority, in_flight, loaded_for, last_used| Resident {
            loaded_for: s(loaded_for),
            ..r(m, priority, in_flight, 0, last_used, true)
        };
        let waiting = |oldest| Waiting {
            model: "new".into(),
            queued: 1,
            oldest: s(oldest),
        };
        let names = |v: &[&str]| v.iter().map(|m| (*m).to_owned()).collect::<Vec<_>>();
        type Case<'a> = (
            &'a [(&'a str, u64, Phase)],
            Vec<Resident>,
            u64,
            Waiting,
            Vec<String>,
        );
        let held2: &[(&str, u64, Phase)] = &[("a", 8, Loaded), ("b", 6, Loaded)];
        let cases: Vec<Case> = vec![
            // The waiter has not waited the bound: nobody yields.
            (
                held2,
                vec![busy("a", 0, 1, 90, 1), busy("b", 0, 1, 90, 2)],
                8,
                waiting(39),
                vec![],
            ),
            // Past the bound, but both turns just began: nobody yields.
            (
                held2,
                vec![busy("a", 0, 1, 10, 1), busy("b", 0, 1, 10, 2)],
                8,
                waiting(90),
                vec![],
            ),
            // Both turns over: the lower priority one yields, one is enough.
            (
                held2,
                vec![busy("a", 1, 1, 90, 1), busy("b", 0, 1, 90, 2)],
                6,
                waiting(40),
                names(&["b"]),
            ),
            // b alone would not do: a goes instead (b is spared).
            (
                held2,
                vec![busy("a", 1, 1, 90, 1), busy("b", 0, 1, 90, 2)],
                8,
                waiting(40),
                names(&["a"]),
            ),
            // Same priority: the least recently used yields.
            (
                held2,
                vec![busy("a", 0, 1, 90, 1), busy("b", 0, 1, 90, 2)],
                6,
                waiting(40),
                names(&["a"]),
            ),
            // Only a's turn is over, and a is enough.
            (
                held2,
                vec![busy("a", 0, 1, 90, 1), busy("b", 0, 1, 5, 2)],
                8,
                waiting(40),
                names(&["a"]),
            ),
            // Only b's turn is over, and b alone is not enough: wait on.
            (
                held2,
                vec![busy("a", 0, 1, 5, 1), busy("b", 0, 1, 90, 2)],
                12,
                waiting(40),
                vec![],
            ),
            // An idle one goes with a busy one when both are needed.
            (
                held2,
                vec![busy("a", 0, 1, 90, 1), r("b", 0, 0, 0, 9, true)],
                12,
                waiting(40),
                names(&["b", "a"]),
            ),
            // A model that has let nothing in yet keeps its turn, even with
            // the bound at 0 s (no hand-over without progress).
            (
                held2,
                vec![
                    Resident {
                        served: 0,
                        queued: 3,
                        ..busy("a", 0, 0, 90, 1)
                    },
                    busy("b", 0, 1, 5, 2),
                ],
                8,
                waiting(90),
                vec![],
            ),
            // Always-on models never yield.
            (
                held2,
                vec![
                    Resident {
                        on_demand: false,
                        ..busy("a", 0, 1, 90, 1)
                    },
                    busy("b", 0, 1, 5, 2),
                ],
                8,
                waiting(90),
                vec![],
            ),
        ];
        for (i, (held, residents, need, w, want)) in cases.into_iter().enumerate() {
            let ledger = setup(held, 15);
            let got = yielders(
                &ledger,
                &bytes(&[("ROCm0", need * GIB)]),
                &residents,
                &w,
                DEFAULT_FAIRNESS,
            );
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn next_swap_table() {
        let s = Duration::from_secs;
        // The loaded model `a`: (in flight, queued, loaded for s).
        let loaded = |in_flight, queued, loaded_for| Loaded {
            model: "a".into(),
            in_flight,
            queued,
            loaded_for: s(loaded_for),
        };
        let w = |model: &str, queued, oldest| Waiting {
            model: model.into(),
            queued,
            oldest: s(oldest),
        };
        let to = |m: &str| Swap::To(m.into());
        let cases = [
            // Nobody waits.
            (loaded(1, 3, 99), vec![], Swap::Stay),
            (loaded(1, 3, 99), vec![w("b", 0, 99)], Swap::Stay),
            // The loaded model is idle: give way at once, even early in its turn.
            (loaded(0, 0, 0), vec![w("b", 1, 0)], to("b")),
            // Busy and the waiter within the bound: serve what is queued.
            (loaded(1, 0, 99), vec![w("b", 4, 39)], Swap::Stay),
            (loaded(0, 2, 99), vec![w("b", 4, 39)], Swap::Stay),
            // The bound reached and the turn done: swap, even with work
            // queued for the loaded one.
            (loaded(1, 5, 40), vec![w("b", 1, 40)], to("b")),
            // The waiter is past the bound but the turn just began: stay
            // (no ping-pong between two overdue models).
            (loaded(1, 5, 39), vec![w("b", 1, 90)], Swap::Stay),
            // The oldest request wins among waiters.
            (
                loaded(1, 0, 60),
                vec![w("b", 9, 41), w("c", 1, 60)],
                to("c"),
            ),
            (loaded(0, 0, 0), vec![w("b", 9, 2), w("c", 1, 3)], to("c")),
            // A waiter entry for the loaded model itself is ignored.
            (loaded(1, 0, 60), vec![w("a", 3, 99)], Swap::Stay),
        ];
        assert_eq!(DEFAULT_FAIRNESS, s(40));
        for (i, (l, waiting, want)) in cases.into_iter().enumerate() {
            assert_eq!(next_swap(&l, &waiting, DEFAULT_FAIRNESS), want, "case {i}");
        }
    }
}
