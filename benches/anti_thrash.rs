//! The anti-thrash benchmark: one alternating workload through two swap
//! policies, side by side, on a virtual clock with real load times. Pure
//! policy, no processes: `rocm_llm::schedule::policy::next_swap` decides
//! for "ours"; FIFO swaps at each request for the other model, as
//! llama-swap and Ollama do.
//!
//! Run: `cargo bench --bench anti_thrash` (docs/scheduler.md has the
//! figures and what the workloads are).

mod common;
use common::Rng;

use std::collections::VecDeque;
use std::time::Duration;

use rocm_llm::schedule::policy::{DEFAULT_FAIRNESS, Loaded, Swap, Waiting, next_swap};

/// Seconds on the virtual clock.
type T = f64;

#[derive(Clone, Copy)]
struct Costs {
    /// From spawn to ready.
    load: T,
    /// From SIGTERM to the memory seen free.
    stop: T,
    /// Requests one model serves at once (llama-server's slots).
    slots: usize,
}

#[derive(Clone, Copy)]
enum Workload {
    /// `clients` agents in a closed loop, each alternating its requests
    /// between the two models, with a think time between them.
    Agents { clients: usize, think: (T, T) },
    /// Open arrivals (Poisson, this mean gap) whose models alternate.
    Alternating { mean_gap: T },
}

#[derive(Clone, Copy, PartialEq)]
enum PolicyKind {
    Fifo,
    Ours(Duration),
}

#[derive(Clone, Copy)]
struct Request {
    client: usize,
    model: usize,
    arrival: T,
    service: T,
}

enum Phase {
    Empty,
    /// Loaded since the given time.
    Serving(usize, T),
    /// Draining in-flight requests before a swap to `to`.
    Draining {
        to: usize,
    },
    Stopping {
        until: T,
        to: usize,
    },
    Loading {
        until: T,
        model: usize,
    },
}

struct Outcome {
    waits: Vec<T>,
    swaps: usize,
    end: T,
}

fn simulate(
    policy: PolicyKind,
    workload: Workload,
    costs: Costs,
    requests: usize,
    seed: u64,
) -> Outcome {
    let mut rng = Rng(seed);
    let mut queue: VecDeque<Request> = VecDeque::new();
    // Completion times of in-flight requests: (done, client, model).
    let mut in_flight: Vec<(T, usize, usize)> = Vec::new();
    let mut pending: Vec<Request> = Vec::new(); // future arrivals
    let mut issued = 0;
    let mut next_model_of_client: Vec<usize> = Vec::new();
    match workload {
        Workload::Agents { clients, think } => {
            for c in 0..clients {
                next_model_of_client.push(c % 2);
                let at = rng.uniform(think);
                pending.push(Request {
                    client: c,
                    model: c % 2,
                    arrival: at,
                    service: rng.uniform((2.0, 6.0)),
                });
                next_model_of_client[c] = 1 - c % 2;
                issued += 1;
            }
        }
        Workload::Alternating { mean_gap } => {
            let mut t = 0.0;
            for i in 0..requests {
                t += rng.exp(mean_gap);
                pending.push(Request {
                    client: 0,
                    model: i % 2,
                    arrival: t,
                    service: rng.uniform((2.0, 6.0)),
                });
            }
            issued = requests;
        }
    }
    let mut phase = Phase::Empty;
    let mut now: T = 0.0;
    let mut waits = Vec::new();
    let mut swaps = 0;
    let mut steps: u64 = 0;
    loop {
        steps += 1;
        assert!(steps < 50_000_000, "the simulation makes no progress");
        // Decide at `now` until nothing changes.
        loop {
            let mut changed = false;
            match phase {
                Phase::Empty => {
                    if let Some(r) = queue.front() {
                        phase = Phase::Loading {
                            until: now + costs.load,
                            model: r.model,
                        };
                        swaps += 1;
                        changed = true;
                    }
                }
                Phase::Serving(m, since) => {
                    let busy = in_flight.len();
                    let to = match policy {
                        PolicyKind::Fifo => queue.front().filter(|r| r.model != m).map(|r| r.model),
                        PolicyKind::Ours(fairness) => {
                            let loaded = Loaded {
                                model: m.to_string(),
                                in_flight: busy as u32,
                                queued: queue.iter().filter(|r| r.model == m).count() as u32,
                                loaded_for: Duration::from_secs_f64(now - since),
                            };
                            let waiting: Vec<Waiting> = (0..2)
                                .filter(|o| *o != m)
                                .filter_map(|o| {
                                    let mine: Vec<&Request> =
                                        queue.iter().filter(|r| r.model == o).collect();
                                    let oldest = mine
                                        .iter()
                                        .map(|r| r.arrival)
                                        .fold(f64::INFINITY, f64::min);
                                    (!mine.is_empty()).then(|| Waiting {
                                        model: o.to_string(),
                                        queued: mine.len() as u32,
                                        oldest: Duration::from_secs_f64((now - oldest).max(0.0)),
                                    })
                                })
                                .collect();
                            match next_swap(&loaded, &waiting, fairness) {
                                Swap::Stay => None,
                                Swap::To(o) => o.parse().ok(),
                            }
                        }
                    };
                    if let Some(to) = to {
                        phase = Phase::Draining { to };
                        changed = true;
                    } else if busy < costs.slots {
                        // FIFO serves strictly in order; ours the oldest
                        // request for the loaded model.
                        let pick = match policy {
                            PolicyKind::Fifo => queue.front().filter(|r| r.model == m).map(|_| 0),
                            PolicyKind::Ours(_) => queue.iter().position(|r| r.model == m),
                        };
                        if let Some(i) = pick
                            && let Some(r) = queue.remove(i)
                        {
                            waits.push(now - r.arrival);
                            in_flight.push((now + r.service, r.client, r.model));
                            changed = true;
                        }
                    }
                }
                Phase::Draining { to } if in_flight.is_empty() => {
                    phase = Phase::Stopping {
                        until: now + costs.stop,
                        to,
                    };
                    changed = true;
                }
                Phase::Stopping { until, to } if until <= now => {
                    phase = Phase::Loading {
                        until: now + costs.load,
                        model: to,
                    };
                    swaps += 1;
                    changed = true;
                }
                Phase::Loading { until, model } if until <= now => {
                    phase = Phase::Serving(model, now);
                    changed = true;
                }
                _ => {}
            }
            if !changed {
                break;
            }
        }
        if waits.len() >= requests && in_flight.is_empty() {
            break;
        }
        // The next event.
        let next_arrival = pending
            .iter()
            .map(|r| r.arrival)
            .fold(f64::INFINITY, f64::min);
        let next_done = in_flight.iter().map(|f| f.0).fold(f64::INFINITY, f64::min);
        let next_phase = match phase {
            Phase::Stopping { until, .. } | Phase::Loading { until, .. } => until,
            _ => f64::INFINITY,
        };
        let t = next_arrival.min(next_done).min(next_phase);
        if !t.is_finite() {
            break;
        }
        now = t;
        while let Some(i) = pending.iter().position(|r| r.arrival <= now) {
            queue.push_back(pending.swap_remove(i));
        }
        // Keep the queue in arrival order (FIFO means arrival order).
        queue
            .make_contiguous()
            .sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
        while let Some(i) = in_flight.iter().position(|f| f.0 <= now) {
            let (_, client, _) = in_flight.swap_remove(i);
            if let Workload::Agents { think, .. } = workload
                && issued < requests
            {
                let model = next_model_of_client[client];
                next_model_of_client[client] = 1 - model;
                pending.push(Request {
                    client,
                    model,
                    arrival: now + rng.uniform(think),
                    service: rng.uniform((2.0, 6.0)),
                });
                issued += 1;
            }
        }
    }
    Outcome {
        waits,
        swaps,
        end: now,
    }
}

struct Row {
    swaps_per_100: f64,
    mean: T,
    p99: T,
    per_minute: f64,
}

fn measure(o: &Outcome) -> Row {
    let mut w = o.waits.clone();
    w.sort_by(f64::total_cmp);
    let n = w.len().max(1);
    let p99 = w[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1];
    Row {
        swaps_per_100: o.swaps as f64 * 100.0 / n as f64,
        mean: w.iter().sum::<f64>() / n as f64,
        p99,
        per_minute: n as f64 / o.end * 60.0,
    }
}

fn main() {
    let costs = Costs {
        load: 8.0,
        stop: 1.0,
        slots: 1,
    };
    let requests = 2000;
    let workloads = [
        (
            "4 agents alternating A/B, think 0.5-2 s",
            Workload::Agents {
                clients: 4,
                think: (0.5, 2.0),
            },
        ),
        (
            "8 agents alternating A/B, think 0.5-2 s",
            Workload::Agents {
                clients: 8,
                think: (0.5, 2.0),
            },
        ),
        (
            "open arrivals alternating A/B, mean gap 15 s",
            Workload::Alternating { mean_gap: 15.0 },
        ),
        (
            "open arrivals alternating A/B, mean gap 6 s",
            Workload::Alternating { mean_gap: 6.0 },
        ),
    ];
    println!(
        "anti-thrash: {requests} requests per run, load {} s, stop {} s, service 2-6 s uniform, {} slot per model\n",
        costs.load, costs.stop, costs.slots
    );
    println!(
        "| workload | policy | swaps/100 req | mean wait s | p99 wait s | req/min | swaps vs FIFO | p99 vs FIFO | goal (<= 0.25, <= 1.5) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let bounds = [
        Duration::from_secs(10),
        DEFAULT_FAIRNESS,
        Duration::from_secs(90),
    ];
    for (name, w) in workloads {
        let fifo = measure(&simulate(PolicyKind::Fifo, w, costs, requests, 7));
        println!(
            "| {name} | FIFO | {:.1} | {:.1} | {:.1} | {:.2} | 1 | 1 |  |",
            fifo.swaps_per_100, fifo.mean, fifo.p99, fifo.per_minute
        );
        for bound in bounds {
            let ours = measure(&simulate(PolicyKind::Ours(bound), w, costs, requests, 7));
            let swap_ratio = ours.swaps_per_100 / fifo.swaps_per_100;
            let p99_ratio = ours.p99 / fifo.p99;
            let goal = if swap_ratio <= 0.25 && p99_ratio <= 1.5 {
                "met"
            } else {
                "not met"
            };
            let default = if bound == DEFAULT_FAIRNESS {
                ", the default"
            } else {
                ""
            };
            println!(
                "| {name} | ours, bound {} s{default} | {:.1} | {:.1} | {:.1} | {:.2} | {swap_ratio:.2} | {p99_ratio:.2} | {goal} |",
                bound.as_secs(),
                ours.swaps_per_100,
                ours.mean,
                ours.p99,
                ours.per_minute
            );
        }
    }
}
