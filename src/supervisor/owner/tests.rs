//! The owner's transitions, one line per case, and the property "never two
//! instances of a model" over random event sequences. No process, port or
//! clock: time is an offset from a fixed start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::*;
use crate::supervisor::backoff::{Backoff, BackoffPolicy};

/// The lifecycle a case starts from, from words: `on_demand`, `idle=SECS`,
/// `blue_green`, `never`, `on_failure`, `pred` (an earlier owner is
/// still shutting down).
fn setup(opts: &str) -> (Lifecycle, bool) {
    let mut l = Lifecycle {
        drain_timeout: Duration::from_secs(30),
        ready_timeout: Duration::from_secs(300),
        ..Lifecycle::default()
    };
    l.liveness.failures = 2;
    let mut predecessor = false;
    for word in opts.split_whitespace() {
        match word.split_once('=') {
            Some(("idle", secs)) => l.idle_timeout = Some(secs_of(secs)),
            _ => match word {
                "on_demand" => l.on_demand = true,
                "blue_green" => l.swap = SwapStrategy::BlueGreen,
                "never" => l.restart = RestartPolicy::Never,
                "on_failure" => l.restart = RestartPolicy::OnFailure,
                "pred" => predecessor = true,
                other => panic!("unknown option {other:?}"),
            },
        }
    }
    (l, predecessor)
}

fn secs_of(text: &str) -> Duration {
    Duration::from_secs_f64(text.parse().unwrap())
}

fn mid() -> f64 {
    0.5 // no jitter: delays are 1 s, 2 s, 4 s, ...
}

fn backoff() -> Backoff {
    Backoff::with_random(BackoffPolicy::default(), mid).unwrap()
}

fn exit(code: i32) -> ExitStatus {
    ExitStatus::from_raw(code << 8)
}

/// One event from its words. Process `N` has pid `100 + N`; times are
/// seconds.
fn event(words: &str, lifecycle: &Lifecycle) -> (Event, Duration) {
    let w: Vec<&str> = words.split_whitespace().collect();
    let proc = || w.get(1).map(|n| n.parse::<u64>().unwrap()).unwrap_or(0);
    let target = |launch: &str, l: Lifecycle| Target {
        launch: LaunchId(launch.into()),
        lifecycle: l,
    };
    let ev = match w[0] {
        "replace" => Event::Replace(target(w[1], lifecycle.clone())),
        "replace_stop_first" => Event::Replace(target(
            w[1],
            Lifecycle {
                swap: SwapStrategy::StopFirst,
                ..lifecycle.clone()
            },
        )),
        "settings" => Event::Settings(target("a", lifecycle.clone())),
        "settings_always_on" => Event::Settings(target(
            "a",
            Lifecycle {
                on_demand: false,
                ..lifecycle.clone()
            },
        )),
        "demand" => Event::Demand,
        "op_start" => Event::Operate(OperatorAction::Start),
        "op_stop" => Event::Operate(OperatorAction::Stop),
        "op_restart" => Event::Operate(OperatorAction::Restart),
        "shutdown" => Event::Shutdown,
        "pred_gone" => Event::PredecessorGone,
        "spawned" => Event::Spawned {
            proc: proc(),
            result: Ok(100 + i32::try_from(proc()).unwrap()),
        },
        "spawn_failed" => Event::Spawned {
            proc: proc(),
            result: Err("file a.gguf does not exist".into()),
        },
        "ready" => Event::Ready {
            proc: proc(),
            result: Ok(Duration::from_secs(1)),
        },
        "not_ready" => Event::Ready {
            proc: proc(),
            result: Err(ReadyFailure {
                message: "timed out".into(),
                bind_failure: false,
            }),
        },
        "port_taken" => Event::Ready {
            proc: proc(),
            result: Err(ReadyFailure {
                message: "couldn't bind HTTP server socket".into(),
                bind_failure: true,
            }),
        },
        "exit" => Event::Exited {
            proc: proc(),
            status: exit(w[2].parse().unwrap()),
        },
        "retired" => Event::Retired {
            proc: proc(),
            reaped: true,
            drained: 0,
            cut: 0,
        },
        "unreaped" => Event::Retired {
            proc: proc(),
            reaped: false,
            drained: 0,
            cut: 0,
        },
        "alive" | "hung" => Event::Liveness {
            proc: proc(),
            probe: liveness::Probe {
                failure: (w[0] == "hung").then(|| "no answer within 5s".into()),
                stat: None,
            },
        },
        "idle" => Event::IdleFor {
            proc: proc(),
            idle: secs_of(w[2]),
        },
        "no_room" => Event::NoRoom {
            proc: proc(),
            reason: "short by 1.00 GiB on ROCm0".into(),
        },
        "not_beside" => Event::NotBeside {
            proc: proc(),
            reason: "short by 1.00 GiB on ROCm0".into(),
        },
        "withdrawn" => Event::Withdrawn { proc: proc() },
        "evict" => Event::MakeRoom {
            for_model: "x".into(),
            yield_turn: false,
        },
        "yield" => Event::MakeRoom {
            for_model: "x".into(),
            yield_turn: true,
        },
        "at" => return (Event::Timeout, secs_of(w[1])),
        other => panic!("unknown event {other:?}"),
    };
    (ev, Duration::ZERO)
}

fn render_effect(e: &Effect) -> Option<String> {
    Some(match e {
        Effect::Spawn { proc, launch, .. } => format!("spawn {proc}@{launch}"),
        Effect::Record { proc } => format!("record {proc}"),
        Effect::WaitReady { proc, .. } => format!("wait {proc}"),
        Effect::Watch { proc } => format!("watch {proc}"),
        Effect::Retire { proc, drain } if drain.is_zero() => format!("stop {proc}"),
        Effect::Retire { proc, .. } => format!("drain {proc}"),
        Effect::Forget { proc } => format!("forget {proc}"),
        Effect::MeasureIdle { proc } => format!("measure {proc}"),
        Effect::Reply(Ok(())) => "ok".into(),
        Effect::Reply(Err(OperateError::Gone { .. })) => "gone".into(),
        Effect::Stopped => "end".into(),
        Effect::Log(_) => return None,
    })
}

fn render_phase(core: &Core, t0: Instant) -> String {
    let at = |i: &Instant| format!("{}s", i.duration_since(t0).as_secs_f64());
    let mut s = match core.phase() {
        Phase::Idle(Down::OnDemand) => "idle".into(),
        Phase::Idle(Down::RestartPolicy) => "down".into(),
        Phase::Idle(Down::Operator) => "held".into(),
        Phase::Waiting { swap: true, .. } => "swapping".into(),
        Phase::Waiting { swap: false, .. } => "waiting".into(),
        Phase::Starting(p) => format!("starting {}", p.id),
        Phase::Ready {
            serving,
            replacement,
            idle_check,
        } => {
            let mut s = format!("ready {}", serving.id);
            match replacement {
                Replacement::None => {}
                Replacement::Waiting { .. } => s.push_str(" +waiting"),
                Replacement::Loading(n) => s.push_str(&format!(" +{}", n.id)),
                Replacement::Backoff { until } => s.push_str(&format!(" +retry@{}", at(until))),
            }
            if let Some(i) = idle_check {
                s.push_str(&format!(" idle?@{}", at(i)));
            }
            s
        }
        Phase::Backoff {
            until,
            failed: false,
        } => format!("backoff@{}", at(until)),
        Phase::Backoff {
            until,
            failed: true,
        } => format!("failed@{}", at(until)),
        Phase::Stopping => "stopping".into(),
        Phase::Stopped => "stopped".into(),
    };
    let leaving: Vec<String> = core
        .leaving()
        .iter()
        .map(|l| match l {
            Leaving::Proc(p) => p.to_string(),
            Leaving::Predecessor => "pred".into(),
        })
        .collect();
    if !leaving.is_empty() {
        s.push_str(&format!(" leaving {}", leaving.join(",")));
    }
    s
}

/// Runs `events` (`;`-separated; `at SECS` is a timeout at that time) on a
/// new owner of launch `a` configured by `opts`, and compares the effects
/// (the first effects, then each event's, `|`-separated) and the final
/// phase (after `=>`).
fn check(opts: &str, events: &str, expected: &str) {
    let (lifecycle, predecessor) = setup(opts);
    let t0 = Instant::now();
    let target = Target {
        launch: LaunchId("a".into()),
        lifecycle: lifecycle.clone(),
    };
    let (mut core, first) = Core::new("m", target, backoff(), predecessor);
    let mut parts = vec![first];
    let mut now = t0;
    for words in events.split(';').map(str::trim).filter(|w| !w.is_empty()) {
        let (ev, at) = event(words, &lifecycle);
        if !at.is_zero() {
            now = t0 + at;
        }
        parts.push(core.step(ev, now));
    }
    let effects: Vec<String> = parts
        .iter()
        .map(|fx| {
            fx.iter()
                .filter_map(render_effect)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    let got = format!("{} => {}", effects.join(" | "), render_phase(&core, t0));
    if got != expected {
        FAILURES.with(|f| {
            f.borrow_mut().push(format!(
                "options: {opts}\nevents: {events}\n  want: {expected}\n   got: {got}"
            ))
        });
    }
}

thread_local! {
    /// Every mismatch of a table, so one run shows them all.
    static FAILURES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn assert_no_failures() {
    let failures = FAILURES.with(|f| std::mem::take(&mut *f.borrow_mut()));
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn transitions() {
    // Start-up.
    check("", "", "spawn 1@a => starting 1");
    check("on_demand", "", " => idle");
    check("pred", "pred_gone", " | spawn 1@a => starting 1");
    check("pred", "shutdown; pred_gone", " |  | end => stopped");
    check(
        "",
        "spawned 1; ready 1",
        "spawn 1@a | record 1, wait 1 | watch 1 => ready 1",
    );
    // A failed spawn (the file went away) backs off; the retry comes at 1 s.
    check(
        "",
        "spawn_failed 1; at 1",
        "spawn 1@a |  | spawn 2@a => starting 2",
    );
    // Not ready in time: stop it, back off, start again only once it is gone.
    check(
        "",
        "spawned 1; not_ready 1; at 1; retired 1",
        "spawn 1@a | record 1, wait 1 | stop 1 |  | forget 1, spawn 2@a => starting 2",
    );
    // The chosen port is taken: retried on another at once, no backoff, once the failed one is reaped.
    check(
        "",
        "spawned 1; port_taken 1; retired 1; spawned 2; ready 2",
        "spawn 1@a | record 1, wait 1 | stop 1 | forget 1, spawn 2@a | record 2, wait 2 | watch 2 => ready 2",
    );
    // Three port races in a row are retried; the fourth counts as a failure.
    check(
        "",
        "spawned 1; port_taken 1; retired 1; spawned 2; port_taken 2; retired 2; spawned 3; port_taken 3; retired 3; spawned 4; port_taken 4",
        "spawn 1@a | record 1, wait 1 | stop 1 | forget 1, spawn 2@a | record 2, wait 2 | stop 2 | forget 2, spawn 3@a | record 3, wait 3 | stop 3 | forget 3, spawn 4@a | record 4, wait 4 | stop 4 => backoff@1s leaving 4",
    );
    // Crashes back off exponentially: 1 s, then 2 s.
    check(
        "",
        "spawned 1; ready 1; exit 1 9; at 1; spawned 2; ready 2; exit 2 9",
        "spawn 1@a | record 1, wait 1 | watch 1 | forget 1 | spawn 2@a | record 2, wait 2 | watch 2 | forget 2 => backoff@3s",
    );
    // Ready for the healthy period (60 s) forgets the earlier failures.
    check(
        "",
        "spawned 1; ready 1; exit 1 9; at 1; spawned 2; ready 2; at 70; exit 2 9",
        "spawn 1@a | record 1, wait 1 | watch 1 | forget 1 | spawn 2@a | record 2, wait 2 | watch 2 |  | forget 2 => backoff@71s",
    );
    // restart: never keeps it down; on_failure restarts only a failure.
    check(
        "never",
        "spawned 1; ready 1; exit 1 0",
        "spawn 1@a | record 1, wait 1 | watch 1 | forget 1 => down",
    );
    check(
        "on_failure",
        "spawned 1; ready 1; exit 1 0",
        "spawn 1@a | record 1, wait 1 | watch 1 | forget 1 => down",
    );
    check(
        "on_failure",
        "spawned 1; ready 1; exit 1 1",
        "spawn 1@a | record 1, wait 1 | watch 1 | forget 1 => backoff@1s",
    );
    // A spec edit while down starts the new launch.
    check(
        "never",
        "spawned 1; ready 1; exit 1 0; replace b",
        "spawn 1@a | record 1, wait 1 | watch 1 | forget 1 | spawn 2@b => starting 2",
    );
    // stop_first: the old one drains and goes before the new one starts.
    check(
        "",
        "spawned 1; ready 1; replace b; retired 1",
        "spawn 1@a | record 1, wait 1 | watch 1 | drain 1 | forget 1, spawn 2@b => starting 2",
    );
    // An edit while the old launch still loads stops it at once.
    check(
        "",
        "spawned 1; replace b; retired 1",
        "spawn 1@a | record 1, wait 1 | stop 1 | forget 1, spawn 2@b => starting 2",
    );
    // A spec edit during backoff starts at once, with fresh failures.
    check(
        "",
        "spawned 1; ready 1; exit 1 9; replace b",
        "spawn 1@a | record 1, wait 1 | watch 1 | forget 1 | spawn 2@b => starting 2",
    );
    // A report about a process already let go changes nothing.
    check(
        "",
        "spawned 1; replace b; ready 1; exit 1 0; alive 1",
        "spawn 1@a | record 1, wait 1 | stop 1 |  |  |  => swapping leaving 1",
    );
    // blue_green: the replacement loads beside the serving one, then takes over.
    check(
        "blue_green",
        "spawned 1; ready 1; replace b; spawned 2; ready 2; retired 1",
        "spawn 1@a | record 1, wait 1 | watch 1 | spawn 2@b | record 2, wait 2 | drain 1, watch 2 | forget 1 => ready 2",
    );
    // A failed replacement leaves the old one serving and is retried after its backoff.
    check(
        "blue_green",
        "spawned 1; ready 1; replace b; spawned 2; not_ready 2; retired 2; at 1",
        "spawn 1@a | record 1, wait 1 | watch 1 | spawn 2@b | record 2, wait 2 | stop 2 | forget 2 | spawn 3@b => ready 1 +3",
    );
    // ...and after the spec changed again, the retry is of the newest launch, at once.
    check(
        "blue_green",
        "spawned 1; ready 1; replace b; spawned 2; not_ready 2; retired 2; replace c",
        "spawn 1@a | record 1, wait 1 | watch 1 | spawn 2@b | record 2, wait 2 | stop 2 | forget 2 | spawn 3@c => ready 1 +3",
    );
    // An edit while a replacement loads: that one goes first, then the newest loads.
    check(
        "blue_green",
        "spawned 1; ready 1; replace b; spawned 2; replace c; retired 2",
        "spawn 1@a | record 1, wait 1 | watch 1 | spawn 2@b | record 2, wait 2 | stop 2 | forget 2, spawn 3@c => ready 1 +3",
    );
    // Edited back to what serves: the replacement stops, nothing else does.
    check(
        "blue_green",
        "spawned 1; ready 1; replace b; spawned 2; replace a",
        "spawn 1@a | record 1, wait 1 | watch 1 | spawn 2@b | record 2, wait 2 | stop 2 => ready 1 leaving 2",
    );
    // The serving one crashes while its replacement loads: both go, and it backs off.
    check(
        "blue_green",
        "spawned 1; ready 1; replace b; spawned 2; exit 1 9",
        "spawn 1@a | record 1, wait 1 | watch 1 | spawn 2@b | record 2, wait 2 | forget 1, stop 2 => backoff@1s leaving 2",
    );
    // Shutdown during a stop_first swap: nothing new starts.
    check(
        "",
        "spawned 1; ready 1; replace b; shutdown; retired 1",
        "spawn 1@a | record 1, wait 1 | watch 1 | drain 1 |  | forget 1, end => stopped",
    );
    // Shutdown during a blue_green swap stops both.
    check(
        "blue_green",
        "spawned 1; ready 1; replace b; spawned 2; shutdown; retired 2; retired 1",
        "spawn 1@a | record 1, wait 1 | watch 1 | spawn 2@b | record 2, wait 2 | stop 2, drain 1 | forget 2 | forget 1, end => stopped",
    );
    // Shutdown during backoff ends at once; a later edit is ignored.
    check(
        "",
        "spawn_failed 1; shutdown; replace b",
        "spawn 1@a |  | end |  => stopped",
    );
    // A process that outlived SIGKILL stays in the state file.
    check(
        "",
        "spawned 1; ready 1; shutdown; unreaped 1",
        "spawn 1@a | record 1, wait 1 | watch 1 | drain 1 | end => stopped",
    );
    // On demand: a request starts it.
    check(
        "on_demand",
        "demand; spawned 1; ready 1",
        " | spawn 1@a | record 1, wait 1 | watch 1 => ready 1",
    );
    // Idle for idle_timeout: drained and stopped; the check comes idle_timeout after the spawn.
    check(
        "on_demand idle=60",
        "demand; spawned 1; ready 1; at 59; idle 1 60; retired 1",
        " | spawn 1@a | record 1, wait 1 | watch 1 | measure 1 | drain 1 | forget 1 => idle",
    );
    // Used recently: looked at again when it could be idle.
    check(
        "on_demand idle=60",
        "demand; spawned 1; ready 1; at 59; idle 1 20",
        " | spawn 1@a | record 1, wait 1 | watch 1 | measure 1 |  => ready 1 idle?@99s",
    );
    // Idle while a replacement loads: not stopped.
    check(
        "on_demand idle=60 blue_green",
        "demand; spawned 1; ready 1; replace b; spawned 2; at 59; idle 1 60",
        " | spawn 1@a | record 1, wait 1 | watch 1 | spawn 2@b | record 2, wait 2 | measure 1 |  => ready 1 +2 idle?@119s",
    );
    // A demand while the idle one is still stopping waits for it to go.
    check(
        "on_demand idle=60",
        "demand; spawned 1; ready 1; at 59; idle 1 60; demand; retired 1",
        " | spawn 1@a | record 1, wait 1 | watch 1 | measure 1 | drain 1 |  | forget 1, spawn 2@a => starting 2",
    );
    // Settings only: an on-demand model made always-on starts; an idle timeout is looked at at once.
    check(
        "on_demand",
        "settings_always_on",
        " | spawn 1@a => starting 1",
    );
    check(
        "on_demand idle=60",
        "demand; spawned 1; ready 1; settings",
        " | spawn 1@a | record 1, wait 1 | watch 1 |  => ready 1 idle?@0s",
    );
    // Liveness: two failed probes with no CPU progress replace it, cutting its requests.
    check(
        "",
        "spawned 1; ready 1; hung 1; alive 1; hung 1; hung 1; at 1; retired 1",
        "spawn 1@a | record 1, wait 1 | watch 1 |  |  |  | stop 1 |  | forget 1, spawn 2@a => starting 2",
    );
    // Operator: stop holds an always-on model down until start.
    check(
        "",
        "spawned 1; ready 1; op_stop; retired 1; op_start",
        "spawn 1@a | record 1, wait 1 | watch 1 | drain 1, ok | forget 1 | spawn 2@a, ok => starting 2",
    );
    check(
        "",
        "spawned 1; ready 1; op_stop; demand",
        "spawn 1@a | record 1, wait 1 | watch 1 | drain 1, ok |  => held leaving 1",
    );
    // ...an on-demand one returns to idle, and its next request starts it.
    check(
        "on_demand",
        "demand; spawned 1; ready 1; op_stop; retired 1; demand",
        " | spawn 1@a | record 1, wait 1 | watch 1 | drain 1, ok | forget 1 | spawn 2@a => starting 2",
    );
    // Restart drains, then starts once the old one is gone.
    check(
        "",
        "spawned 1; ready 1; op_restart; retired 1",
        "spawn 1@a | record 1, wait 1 | watch 1 | drain 1, ok | forget 1, spawn 2@a => starting 2",
    );
    // Start skips the rest of a backoff; anything asked while stopping is refused.
    check(
        "",
        "spawn_failed 1; op_start",
        "spawn 1@a |  | spawn 2@a, ok => starting 2",
    );
    check(
        "",
        "spawned 1; ready 1; shutdown; op_start",
        "spawn 1@a | record 1, wait 1 | watch 1 | drain 1 | gone => stopping leaving 1",
    );
    // Failed after five failures in a row, still retried at the longest delay.
    check(
        "",
        "spawn_failed 1; at 1; spawn_failed 2; at 3; spawn_failed 3; at 7; spawn_failed 4; at 15; spawn_failed 5",
        "spawn 1@a |  | spawn 2@a |  | spawn 3@a |  | spawn 4@a |  | spawn 5@a |  => failed@75s",
    );
    // Memory. A start the arbiter refuses: an on-demand model goes idle
    // (its requests fail at once), an always-on one backs off.
    check(
        "on_demand",
        "demand; no_room 1",
        " | spawn 1@a | stop 1 => idle leaving 1",
    );
    check(
        "",
        "no_room 1; retired 1; at 1",
        "spawn 1@a | stop 1 | forget 1 | spawn 2@a => starting 2",
    );
    // A refusal about a process already let go changes nothing.
    check(
        "",
        "spawned 1; no_room 1",
        "spawn 1@a | record 1, wait 1 |  => starting 1",
    );
    // Nobody waits any more: not started.
    check(
        "on_demand",
        "demand; withdrawn 1",
        " | spawn 1@a | stop 1 => idle leaving 1",
    );
    check("", "withdrawn 1", "spawn 1@a |  => starting 1");
    // Evicted (idle) or yielding (busy): drained without a bound, then idle.
    check(
        "on_demand",
        "demand; spawned 1; ready 1; evict",
        " | spawn 1@a | record 1, wait 1 | watch 1 | drain 1 => idle leaving 1",
    );
    check(
        "on_demand",
        "demand; spawned 1; ready 1; yield; demand; retired 1",
        " | spawn 1@a | record 1, wait 1 | watch 1 | drain 1 |  | forget 1, spawn 2@a => starting 2",
    );
    // Always-on models are never stopped to make room.
    check(
        "",
        "spawned 1; ready 1; evict",
        "spawn 1@a | record 1, wait 1 | watch 1 |  => ready 1",
    );
    // blue_green with no room beside the serving process: done stop_first.
    check(
        "blue_green",
        "spawned 1; ready 1; replace b; not_beside 2; retired 2; retired 1",
        "spawn 1@a | record 1, wait 1 | watch 1 | spawn 2@b | stop 2, drain 1 | forget 2 | forget 1, spawn 3@b => starting 3",
    );
    // swap edited to stop_first while a blue_green replacement waits to retry.
    check(
        "blue_green",
        "spawned 1; ready 1; replace b; spawned 2; not_ready 2; retired 2; replace_stop_first c; retired 1",
        "spawn 1@a | record 1, wait 1 | watch 1 | spawn 2@b | record 2, wait 2 | stop 2 | forget 2 | drain 1 | forget 1, spawn 3@c => starting 3",
    );
    assert_no_failures();
}

#[test]
fn each_deadline_is_reported() {
    let (lifecycle, _) = setup("on_demand idle=60 blue_green");
    let t0 = Instant::now();
    let target = Target {
        launch: LaunchId("a".into()),
        lifecycle,
    };
    let (mut core, _) = Core::new("m", target.clone(), backoff(), false);
    assert_eq!(core.deadline(), None);
    core.step(Event::Demand, t0);
    core.step(
        Event::Spawned {
            proc: 1,
            result: Err("gone".into()),
        },
        t0,
    );
    assert_eq!(core.deadline(), Some(t0 + Duration::from_secs(1)));
    core.step(Event::Timeout, t0 + Duration::from_secs(1));
    core.step(
        Event::Spawned {
            proc: 2,
            result: Ok(7),
        },
        t0,
    );
    core.step(
        Event::Ready {
            proc: 2,
            result: Ok(Duration::from_secs(10)),
        },
        t0,
    );
    assert_eq!(core.deadline(), Some(t0 + Duration::from_secs(50)));
    assert_eq!(core.restarts, 1);
    assert_eq!(core.last_error, None, "a ready process clears the error");
}

// ---- the property: never two instances of a model ----

/// What a random run may do next. Reports are picked among the ones the
/// effects so far have made possible, in any order.
#[derive(Clone, Debug)]
enum Step {
    Replace(u8, bool),
    Settings(bool, bool),
    Demand,
    Operate(u8),
    Shutdown,
    /// Deliver the `n`th outstanding report (modulo their number).
    Report(usize, u8),
    /// Advance the clock to the next deadline and time out.
    Timeout,
    /// A watched process exits by itself.
    Crash(usize, bool),
    /// Probe a watched process (`true`: it answers).
    Probe(usize, bool),
    /// The arbiter asks it to stop for another model (`true`: yield).
    MakeRoom(bool),
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0u8..3, any::<bool>()).prop_map(|(l, bg)| Step::Replace(l, bg)),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(od, idle)| Step::Settings(od, idle)),
        2 => Just(Step::Demand),
        1 => (0u8..3).prop_map(Step::Operate),
        1 => Just(Step::Shutdown),
        8 => (any::<usize>(), any::<u8>()).prop_map(|(n, how)| Step::Report(n, how)),
        2 => Just(Step::Timeout),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(n, ok)| Step::Crash(n, ok)),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(n, ok)| Step::Probe(n, ok)),
        1 => any::<bool>().prop_map(Step::MakeRoom),
    ]
}

/// A pending answer to an effect.
#[derive(Clone, Debug)]
enum Pending {
    Ready(ProcId),
    Retired(ProcId),
    Predecessor,
}

/// The world as the fake executor sees it: which processes live.
#[derive(Default)]
struct World {
    /// Spawned and not yet known to be dead.
    live: Vec<ProcId>,
    /// Serving processes whose exit is watched.
    watched: Vec<ProcId>,
    pending: Vec<Pending>,
    /// Answers to deliver before anything else (the executor answers
    /// spawns and idle measurements at once).
    immediate: Vec<Event>,
    spawn_ok: bool,
    /// How the arbiter answers the next spawns: 0 room, 1 no room, 2 not
    /// beside, 3 withdrawn.
    refuse: u8,
    ready_ok: u8,
    max_live: usize,
}

impl World {
    fn perform(
        &mut self,
        effects: Vec<Effect>,
        core: &Core,
        swap: SwapStrategy,
    ) -> Result<(), String> {
        for e in effects {
            match e {
                // As the arbiter answers: "not beside" only for a
                // replacement, "withdrawn" only for an on-demand model's
                // start (a refusal may come for either).
                Effect::Spawn { proc, beside, .. }
                    if self.refuse == 1
                        || (self.refuse == 2 && beside)
                        || (self.refuse == 3 && !beside && core.target().lifecycle.on_demand) =>
                {
                    let reason = "no room".to_owned();
                    self.immediate.push(match self.refuse {
                        1 => Event::NoRoom { proc, reason },
                        2 => Event::NotBeside { proc, reason },
                        _ => Event::Withdrawn { proc },
                    });
                }
                Effect::Spawn { proc, launch, .. } => {
                    if launch != core.target().launch {
                        return Err(format!(
                            "spawned {launch}, not the target {}",
                            core.target().launch
                        ));
                    }
                    if self.live.len()
                        >= match swap {
                            SwapStrategy::BlueGreen => 2,
                            SwapStrategy::StopFirst => 1,
                        }
                    {
                        return Err(format!(
                            "spawned {proc} while {:?} live ({swap:?})",
                            self.live
                        ));
                    }
                    if self.spawn_ok {
                        self.live.push(proc);
                        self.max_live = self.max_live.max(self.live.len());
                        self.immediate.push(Event::Spawned {
                            proc,
                            result: Ok(1000 + i32::try_from(proc).unwrap()),
                        });
                    } else {
                        self.immediate.push(Event::Spawned {
                            proc,
                            result: Err("no".into()),
                        });
                    }
                }
                Effect::WaitReady { proc, .. } => self.pending.push(Pending::Ready(proc)),
                Effect::Watch { proc } => self.watched.push(proc),
                Effect::Retire { proc, .. } => {
                    self.pending
                        .retain(|p| !matches!(p, Pending::Ready(r) if *r == proc));
                    self.pending.push(Pending::Retired(proc));
                }
                Effect::MeasureIdle { proc } => self.immediate.push(Event::IdleFor {
                    proc,
                    idle: Duration::from_secs(3600),
                }),
                Effect::Forget { .. }
                | Effect::Record { .. }
                | Effect::Reply(_)
                | Effect::Log(_)
                | Effect::Stopped => {}
            }
        }
        Ok(())
    }

    /// The invariants after every step.
    fn check(&self, core: &Core) -> Result<(), String> {
        let swap = core.target().lifecycle.swap;
        let mut held = core.procs();
        held.sort_unstable();
        for p in &held {
            if !self.live.contains(p)
                && !self
                    .immediate
                    .iter()
                    .any(|e| matches!(e, Event::Spawned { proc, .. } if proc == p))
            {
                return Err(format!("the phase holds {p}, which is not alive"));
            }
        }
        if held.len() > 1 && core.serving().is_none() {
            return Err(format!("{held:?} held with none serving"));
        }
        let _ = swap;
        Ok(())
    }
}

fn run(steps: &[Step], opts: (bool, bool, bool, u8)) -> Result<(), String> {
    let (on_demand, blue_green, predecessor, restart) = opts;
    let mut lifecycle = Lifecycle {
        on_demand,
        idle_timeout: on_demand.then(|| Duration::from_secs(60)),
        swap: if blue_green {
            SwapStrategy::BlueGreen
        } else {
            SwapStrategy::StopFirst
        },
        restart: [
            RestartPolicy::Always,
            RestartPolicy::OnFailure,
            RestartPolicy::Never,
        ][usize::from(restart % 3)],
        ..Lifecycle::default()
    };
    lifecycle.liveness.failures = 1;
    let t0 = Instant::now();
    let mut now = t0;
    let (mut core, first) = Core::new(
        "m",
        Target {
            launch: LaunchId("l0".into()),
            lifecycle: lifecycle.clone(),
        },
        backoff(),
        predecessor,
    );
    let mut world = World {
        spawn_ok: true,
        ..World::default()
    };
    if predecessor {
        world.pending.push(Pending::Predecessor);
    }
    // The swap in force when a spawn happens bounds the live count.
    let swap_bound = |core: &Core| core.target().lifecycle.swap;
    world.perform(first, &core, swap_bound(&core))?;
    let mut shut = false;
    let deliver = |core: &mut Core, world: &mut World, ev: Event, now: Instant| {
        let fx = core.step(ev, now);
        world.perform(fx, core, swap_bound(core))?;
        while !world.immediate.is_empty() {
            let ev = world.immediate.remove(0);
            let fx = core.step(ev, now);
            world.perform(fx, core, swap_bound(core))?;
        }
        world.check(core)
    };
    for step in steps
        .iter()
        .cloned()
        .chain(std::iter::repeat_n(Step::Report(0, 0), 64))
    {
        let ev = match step {
            Step::Replace(l, bg) => {
                lifecycle.swap = if bg {
                    SwapStrategy::BlueGreen
                } else {
                    SwapStrategy::StopFirst
                };
                Event::Replace(Target {
                    launch: LaunchId(format!("l{l}")),
                    lifecycle: lifecycle.clone(),
                })
            }
            Step::Settings(od, idle) => {
                lifecycle.on_demand = od;
                lifecycle.idle_timeout = idle.then(|| Duration::from_secs(60));
                Event::Settings(Target {
                    launch: core.target().launch.clone(),
                    lifecycle: lifecycle.clone(),
                })
            }
            Step::Demand => Event::Demand,
            Step::Operate(n) => Event::Operate(
                [
                    OperatorAction::Start,
                    OperatorAction::Stop,
                    OperatorAction::Restart,
                ][usize::from(n % 3)],
            ),
            Step::Shutdown => {
                shut = true;
                Event::Shutdown
            }
            Step::Report(n, how) => {
                if world.pending.is_empty() {
                    continue;
                }
                world.spawn_ok = how % 5 != 0;
                world.refuse = match how % 11 {
                    1 => 1,
                    2 => 2,
                    3 => 3,
                    _ => 0,
                };
                world.ready_ok = how;
                let p = world.pending.remove(n % world.pending.len());
                match p {
                    Pending::Predecessor => Event::PredecessorGone,
                    Pending::Retired(proc) => {
                        world.live.retain(|l| *l != proc);
                        Event::Retired {
                            proc,
                            reaped: how % 7 != 0,
                            drained: 1,
                            cut: 0,
                        }
                    }
                    Pending::Ready(proc) => {
                        let result = match how % 4 {
                            0 => Err(ReadyFailure {
                                message: "timed out".into(),
                                bind_failure: false,
                            }),
                            1 => Err(ReadyFailure {
                                message: "port".into(),
                                bind_failure: true,
                            }),
                            _ => Ok(Duration::from_millis(u64::from(how))),
                        };
                        Event::Ready { proc, result }
                    }
                }
            }
            Step::Timeout => match core.deadline() {
                Some(at) => {
                    now = now.max(at);
                    Event::Timeout
                }
                None => continue,
            },
            Step::Crash(n, ok) => {
                if world.watched.is_empty() {
                    continue;
                }
                let proc = world.watched.remove(n % world.watched.len());
                // A retired process leaves the live set when its
                // retirement reports; this exit is the stop it caused.
                if !world
                    .pending
                    .iter()
                    .any(|p| matches!(p, Pending::Retired(r) if *r == proc))
                {
                    world.live.retain(|l| *l != proc);
                }
                Event::Exited {
                    proc,
                    status: exit(i32::from(!ok)),
                }
            }
            Step::Probe(n, ok) => {
                if world.watched.is_empty() {
                    continue;
                }
                let proc = world.watched[n % world.watched.len()];
                Event::Liveness {
                    proc,
                    probe: liveness::Probe {
                        failure: (!ok).then(|| "hung".into()),
                        stat: None,
                    },
                }
            }
            Step::MakeRoom(yield_turn) => Event::MakeRoom {
                for_model: "other".into(),
                yield_turn,
            },
        };
        now += Duration::from_millis(10);
        deliver(&mut core, &mut world, ev, now)?;
    }
    if shut && !core.is_stopped() {
        return Err(format!(
            "shut down but not stopped: {:?} leaving {:?}",
            core.phase(),
            core.leaving()
        ));
    }
    if core.is_stopped() && !world.live.is_empty() {
        return Err(format!("stopped with {:?} alive", world.live));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Over random edits, demands, operator actions, shutdowns, crashes,
    /// probes, timeouts and reports in any order: a stop_first model never
    /// has two live processes, a blue_green one never three; the phase only
    /// holds live processes; a shutdown always ends with none alive.
    #[test]
    fn never_two_instances_of_a_model(
        steps in prop::collection::vec(step_strategy(), 1..60),
        opts in (any::<bool>(), any::<bool>(), any::<bool>(), any::<u8>()),
    ) {
        run(&steps, opts).map_err(TestCaseError::fail)?;
    }
}
