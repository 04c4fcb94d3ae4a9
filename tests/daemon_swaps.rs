//! "Never two instances of a model", end to end: the daemon's own record
//! of when each llama-server was spawned (just before the fork) and when
//! its exit was reaped, across many swaps, crashes and mid-load edits.
//! Unlike sampling /proc, the record cannot miss a brief overlap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::daemon::{Daemon, kill, pretty, state};
use rocm_llm::daemon::status::StatusReport;
use rocm_llm::supervisor::State;

fn models(ctx: u32) -> String {
    format!(
        "  a:\n    model: a.gguf\n    ctx_size: {ctx}\n  b:\n    model: b.gguf\n    ctx_size: {ctx}\n    swap: blue_green\n"
    )
}

/// `(spawned_at, exited_at)` of each process the daemon started for `model`.
fn lifetimes(status: &StatusReport, model: &str) -> Vec<(f64, Option<f64>)> {
    let mut out: Vec<(f64, Option<f64>)> = status
        .models
        .get(model)
        .unwrap_or_else(|| panic!("no {model}: {}", pretty(status)))
        .launches
        .iter()
        .map(|l| (l.spawned_at, l.exited_at))
        .collect();
    out.sort_by(|x, y| x.0.total_cmp(&y.0));
    out
}

/// The most processes alive at once: at each spawn, those spawned earlier
/// that had not exited yet, plus itself.
fn most_at_once(lives: &[(f64, Option<f64>)]) -> usize {
    lives
        .iter()
        .map(|&(t, _)| {
            lives
                .iter()
                .filter(|&&(s, e)| s <= t && e.is_none_or(|e| e > t))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// The launch identity each model gets from the spec as it is on disk now,
/// computed as the daemon computes it.
fn launches_on_disk(d: &Daemon) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(&d.spec).unwrap();
    let ctx = rocm_llm::spec::validate::Context {
        spec_path: &d.spec,
        // The spec names its llama_server.
        default_llama_server: "llama-server".into(),
        probe: &rocm_llm::spec::validate::Disk,
    };
    let desired = rocm_llm::spec::validate::load(&text, &ctx).unwrap_or_else(|e| panic!("{e}"));
    desired
        .models
        .values()
        .map(|m| {
            let id = rocm_llm::plan::Launch::for_model(m, &desired.llama_server).identity();
            (m.name.clone(), id.to_string())
        })
        .collect()
}

fn converged(s: &StatusReport) -> bool {
    ["a", "b"].iter().all(|m| {
        state(s, m) == Some(State::Ready) && s.models[*m].launch_id == s.models[*m].target_launch_id
    })
}

#[test]
fn swaps_crashes_and_mid_load_edits_never_overlap_two_instances() {
    let Some(d) = Daemon::start(&["a", "b"], &models(64)) else {
        return;
    };
    d.wait_ready(&["a", "b"]);
    // Launches that must exist: the first start and the crash's restart.
    let mut expected = 2;
    for i in 1..=10u32 {
        let generation = d.status().daemon.generation;
        d.write_spec(&models(64 + 16 * i));
        // Every other edit lands while the previous one may still load.
        if i % 2 == 0 {
            // Serving what the file now says: a generation count alone could
            // be the previous edit's reload.
            let wanted = launches_on_disk(&d);
            d.wait_status("the edit applied and serving", |s| {
                s.daemon.generation > generation
                    && converged(s)
                    && wanted.iter().all(|(m, id)| s.models[m].launch_id == *id)
            });
            expected += 1;
        }
        if i == 6 {
            let s = d.status();
            kill("KILL", Daemon::pid(&s, "a"));
            kill("KILL", Daemon::pid(&s, "b"));
            d.wait_status("both restarted after the crash", |s| {
                converged(s) && ["a", "b"].iter().all(|m| s.models[*m].restarts == 1)
            });
        }
    }
    // Converged, and every earlier process reaped: b's (blue_green) old
    // one drains after its replacement is ready.
    let s = d.wait_status("converged on the last edit", |s| {
        converged(s)
            && ["a", "b"].iter().all(|m| {
                s.models[*m]
                    .launches
                    .iter()
                    .rev()
                    .skip(1)
                    .all(|r| r.exited_at.is_some())
            })
    });
    for (model, allowed) in [("a", 1), ("b", 2)] {
        let lives = lifetimes(&s, model);
        // The first start, each edit waited for, and the crash started one
        // process each (edits that landed mid-load may have been folded).
        assert!(
            lives.len() >= expected,
            "{model}: only {} launches recorded: {}",
            lives.len(),
            pretty(&s)
        );
        assert_eq!(
            lives.iter().filter(|(_, e)| e.is_none()).count(),
            1,
            "{model}: exactly one still runs: {lives:?}"
        );
        let most = most_at_once(&lives);
        assert!(
            most <= allowed,
            "{model}: {most} processes alive at once (at most {allowed}): {lives:?}"
        );
    }
    // blue_green: each replacement loaded beside the serving process, and
    // the record shows it (so it would show an overlap too many).
    assert_eq!(most_at_once(&lifetimes(&s, "b")), 2);
    // stop_first: each process was reaped before the next was forked.
    let a = lifetimes(&s, "a");
    for pair in a.windows(2) {
        assert!(pair[0].1.unwrap() <= pair[1].0, "a overlapped: {pair:?}");
    }
}

#[test]
fn overlap_counting_sees_an_overlap() {
    // The helper above must be able to fail.
    assert_eq!(most_at_once(&[(1.0, Some(3.0)), (2.0, None)]), 2);
    assert_eq!(most_at_once(&[(1.0, Some(2.0)), (2.0, None)]), 1);
    assert_eq!(
        most_at_once(&[(1.0, Some(5.0)), (2.0, Some(4.0)), (3.0, None)]),
        3
    );
}

/// `rocm-llm plan FILE` against the daemon on FILE's control address.
fn plan_against(d: &Daemon, models: &str) -> String {
    let file = d.dir.path().join("candidate.yaml");
    std::fs::write(&file, d.spec_text(models)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
        .arg("plan")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text[text.find("# against the daemon").unwrap_or(0)..].to_owned()
}

#[test]
fn plan_and_the_daemon_agree_while_a_replacement_is_pending() {
    let serving = "  a:\n    model: a.gguf\n    swap: blue_green\n";
    let failing =
        "  a:\n    model: a.gguf\n    swap: blue_green\n    extra_args: [--no-such-flag]\n";
    let Some(d) = Daemon::start(&["a"], serving) else {
        return;
    };
    d.wait_ready(&["a"]);
    // A replacement that cannot start: the old process keeps serving, so
    // what runs (launch_id) and what the owner works towards differ.
    d.write_spec(failing);
    let s = d.wait_status("the replacement failed", |s| s.models["a"].restarts >= 1);
    assert_ne!(s.models["a"].launch_id, s.models["a"].target_launch_id);
    // The daemon would do nothing with the spec it has applied: nor does plan.
    let same = plan_against(&d, failing);
    assert!(same.contains("#   nothing to do\n"), "{same}");
    let back = plan_against(&d, serving);
    assert!(back.contains("#   restart a\n"), "{back}");
    // Every model is in the plan, on-demand ones too.
    let more = plan_against(
        &d,
        &format!("{failing}  b:\n    model: a.gguf\n    on_demand: true\n"),
    );
    assert!(more.contains("#   standby b\n"), "{more}");
}
