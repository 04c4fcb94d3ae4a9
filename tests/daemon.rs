//! The daemon against the real llama-server: the binary, real files, real
//! signals. The fake llama-server appears only for faults the real one
//! cannot be made to show (hanging before ready, ignoring SIGTERM).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::daemon::{
    Daemon, eventually, pid_alive, processes_mentioning, state, write_by_rename, write_by_truncate,
};
use rocm_llm::daemon::status::StatusReport;
use rocm_llm::supervisor::State;

const TWO: &str = "  a:\n    model: a.gguf\n  b:\n    model: b.gguf\n    aliases: [bee]\n";

/// The typed report reads every field the daemon writes and writes back
/// the same JSON: the CLI, the tests and the status page see one format.
#[test]
fn the_status_report_round_trips_through_its_type() {
    let Some(d) = Daemon::start(&["a", "b"], TWO) else {
        return;
    };
    d.wait_ready(&["a", "b"]);
    // A rejected edit, so the reload report and history carry errors too.
    write_by_rename(
        &d.spec,
        &d.spec_text("  a:\n    model: a.gguf\n    ctx_size: lots\n"),
    );
    d.wait_status("the edit rejected", |s| {
        s.daemon.last_reload.as_ref().is_some_and(|r| !r.ok)
    });
    let wire: serde_json::Value = d.status_json();
    let typed: StatusReport = serde_json::from_value(wire.clone()).expect("the report reads");
    assert_eq!(
        serde_json::to_value(&typed).unwrap(),
        wire,
        "the type drops or changes a field"
    );
    let again: StatusReport =
        serde_json::from_str(&serde_json::to_string(&typed).unwrap()).unwrap();
    assert_eq!(again, typed);
    assert_eq!(typed.models["b"].aliases, ["bee"]);
    assert_eq!(state(&typed, "a"), Some(State::Ready));
    assert!(!typed.reload_history.is_empty(), "{wire:#}");
}

#[test]
fn starts_every_model_and_the_status_shows_it() {
    let Some(d) = Daemon::start(&["a", "b"], TWO) else {
        return;
    };
    let s = d.wait_ready(&["a", "b"]);
    for m in ["a", "b"] {
        let model = &s.models[m];
        assert!(pid_alive(Daemon::pid(&s, m)), "{m} pid is a live process");
        assert!(model.port.unwrap() > 0);
        assert_eq!(model.launch_id.as_str().len(), 16);
        assert!(model.ready_ms.unwrap() > 0.0);
        assert!(model.started_at.unwrap() > 1.7e9);
        assert_eq!(model.restarts, 0);
        assert!(model.last_error.is_none());
        assert!(!model.log.is_empty(), "last log lines are kept");
    }
    assert_eq!(s.models["b"].aliases[0], "bee");
    assert_eq!(s.daemon.generation, 1);
    assert!(s.daemon.last_reload.as_ref().unwrap().ok);
    assert!(s.daemon.spec.ends_with("models.yaml"));
    // The child really serves on the port the status names.
    let port = s.models["a"].port.unwrap();
    assert!(common::daemon::get(&format!("127.0.0.1:{port}"), "/health").is_ok());

    let metrics = common::daemon::get(&d.control, "/metrics").unwrap();
    assert!(
        metrics.contains("rocm_llm_model_up{model=\"a\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rocm_llm_model_restarts_total{model=\"b\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("rocm_llm_reloads_total 1"), "{metrics}");
    assert!(
        metrics.contains("rocm_llm_reload_errors_total 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rocm_llm_model_ready_seconds{model=\"a\"} 0."),
        "{metrics}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
        .args(["status", "--control", &d.control])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.starts_with("MODEL  STATE  PID"), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("a      ready")),
        "{table}"
    );
}

#[test]
fn rename_save_and_truncate_save_restart_only_the_changed_model() {
    let Some(d) = Daemon::start(&["a", "b"], TWO) else {
        return;
    };
    let before = d.wait_ready(&["a", "b"]);
    let (a0, b0) = (Daemon::pid(&before, "a"), Daemon::pid(&before, "b"));

    // Rename-save: b changes.
    write_by_rename(&d.spec, &d.spec_text("  a:\n    model: a.gguf\n  b:\n    model: b.gguf\n    aliases: [bee]\n    ctx_size: 128\n"));
    let s = d.wait_status("b restarted", |s| {
        s.daemon.generation == 2
            && state(s, "b") == Some(State::Ready)
            && s.models["b"].pid != Some(b0)
    });
    assert_eq!(Daemon::pid(&s, "a"), a0, "a was not touched");
    assert!(!pid_alive(b0), "the old b is gone");
    assert_eq!(
        s.daemon.last_reload.as_ref().unwrap().actions,
        ["restart b"]
    );

    // Truncate-save in two pieces: a changes. The half-written file is a
    // valid spec without b; b must not be torn down.
    let b1 = Daemon::pid(&s, "b");
    write_by_truncate(&d.spec, &d.spec_text("  a:\n    model: a.gguf\n    ctx_size: 128\n  b:\n    model: b.gguf\n    aliases: [bee]\n    ctx_size: 128\n"));
    let s = d.wait_status("a restarted", |s| {
        s.daemon.generation == 3
            && state(s, "a") == Some(State::Ready)
            && s.models["a"].pid != Some(a0)
    });
    assert_eq!(
        Daemon::pid(&s, "b"),
        b1,
        "b was not touched by the partial file"
    );
    assert_eq!(
        s.daemon.last_reload.as_ref().unwrap().actions,
        ["restart a"]
    );
    assert_eq!(s.daemon.reloads, 3);
}

#[test]
fn an_invalid_edit_changes_nothing_and_the_status_shows_where() {
    let Some(d) = Daemon::start(&["a", "b"], TWO) else {
        return;
    };
    let before = d.wait_ready(&["a", "b"]);
    write_by_rename(
        &d.spec,
        &d.spec_text("  a:\n    model: a.gguf\n    ctx_size: lots\n"),
    );
    let s = d.wait_status("the edit rejected", |s| {
        s.daemon.last_reload.as_ref().is_some_and(|r| !r.ok)
    });
    let errors = &s.daemon.last_reload.as_ref().unwrap().errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = errors[0].as_str();
    assert!(e.ends_with("models.yaml:12:15: models.a.ctx_size: expected an integer from 0 to 4194304, found string \"lots\""), "{e}");
    assert_eq!(s.daemon.generation, 1);
    assert_eq!(s.daemon.reload_errors, 1);
    for m in ["a", "b"] {
        assert_eq!(s.models[m].pid, before.models[m].pid, "{m} kept running");
        assert_eq!(s.models[m].state, State::Ready);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
        .args(["status", "--control", &d.control])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "status exits 1 while the last edit is rejected"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("REJECTED"));

    // A deleted spec changes nothing either, and is reported.
    std::fs::remove_file(&d.spec).unwrap();
    let s = d.wait_status("the deletion reported", |s| s.daemon.reload_errors == 2);
    assert!(
        s.daemon.last_reload.as_ref().unwrap().errors[0]
            .as_str()
            .contains("the spec file is gone")
    );
    assert_eq!(s.models["b"].pid, before.models["b"].pid);

    // The next valid edit clears the error.
    d.write_spec(TWO);
    let s = d.wait_status("recovered", |s| {
        s.daemon.last_reload.as_ref().is_some_and(|r| r.ok)
    });
    assert_eq!(
        s.models["a"].pid, before.models["a"].pid,
        "the same spec again restarts nothing"
    );
}

#[test]
fn a_child_killed_with_sigkill_is_restarted() {
    let Some(d) = Daemon::start(&["a"], "  a:\n    model: a.gguf\n") else {
        return;
    };
    let s = d.wait_ready(&["a"]);
    let pid = Daemon::pid(&s, "a");
    common::daemon::kill("KILL", pid);
    let s = d.wait_status("a restarted", |s| {
        state(s, "a") == Some(State::Ready) && s.models["a"].pid != Some(pid)
    });
    assert_eq!(s.models["a"].restarts, 1);
    assert!(
        s.models["a"].last_error.is_none(),
        "a healthy restart clears the error"
    );
    eventually(common::PATIENCE, "the crash is logged", || {
        d.log().contains("exited unexpectedly").then_some(())
    });
}

#[test]
fn a_child_that_never_becomes_ready_times_out_fails_and_backs_off() {
    let Some(d) = Daemon::start(&["a"], "  a:\n    model: a.gguf\n") else {
        return;
    };
    let server = d.fake_or_real_server();
    let spec = d.spec_text_with_server(
        "  a:\n    model: a.gguf\n  stuck:\n    model: a.gguf\n    ready_timeout: 1s\n    env: {FAKE_LLAMA_MODE: hang}\n",
        &server,
    );
    write_by_rename(&d.spec, &spec);
    // First a timeout and a backoff...
    let s = d.wait_status("stuck backing off", |s| {
        state(s, "stuck") == Some(State::Backoff)
    });
    let e = s.models["stuck"].last_error.as_deref().unwrap();
    assert!(e.contains("not ready within 1s"), "{e}");
    // ...then, after repeated failures, `failed` (the default policy: 5 in a row).
    let s = d.wait_status("stuck failed", |s| state(s, "stuck") == Some(State::Failed));
    assert!(s.models["stuck"].restarts >= 5);
    // a was restarted by the binary change but is otherwise unaffected.
    assert_eq!(s.models["a"].state, State::Ready);
}

#[test]
fn a_child_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let Some(d) = Daemon::start(&["a"], "  a:\n    model: a.gguf\n") else {
        return;
    };
    d.wait_ready(&["a"]);
    let spec = d.spec_text_with_server(
        "  a:\n    model: a.gguf\n    stop_grace: 1s\n    ready_timeout: 1h\n    env: {FAKE_LLAMA_MODE: ignore-term}\n",
        &d.fake_or_real_server(),
    );
    write_by_rename(&d.spec, &spec);
    let s = d.wait_status("the stubborn fake starting", |s| {
        // A start has a pid once its memory is reserved and it is spawned.
        state(s, "a") == Some(State::Starting)
            && s.daemon.generation == 2
            && s.models["a"].pid.is_some()
    });
    let stubborn = Daemon::pid(&s, "a");
    // Remove it: SIGTERM is ignored, so SIGKILL must follow after 1 s.
    write_by_rename(&d.spec, &d.spec_text("  b:\n    model: a.gguf\n"));
    eventually(common::PATIENCE, "the stubborn process is gone", || {
        (!pid_alive(stubborn)).then_some(())
    });
    eventually(common::PATIENCE, "the daemon reports the SIGKILL", || {
        d.log().contains("ignored SIGTERM").then_some(())
    });
}

#[test]
fn sigterm_to_the_daemon_leaves_no_llama_server_behind() {
    let Some(mut d) = Daemon::start(&["a", "b"], TWO) else {
        return;
    };
    let s = d.wait_ready(&["a", "b"]);
    let pids = [Daemon::pid(&s, "a"), Daemon::pid(&s, "b")];
    d.signal("TERM");
    assert_eq!(
        d.wait_exit(common::PATIENCE),
        Some(0),
        "exits 0 after a graceful stop"
    );
    for pid in pids {
        assert!(!pid_alive(pid), "llama-server {pid} outlived the daemon");
    }
    assert!(d.children().is_empty(), "{:?}", d.children());
}

#[test]
fn sigkill_to_the_daemon_leaves_nothing_and_the_next_start_cleans_up() {
    let Some(mut d) = Daemon::start(&["a", "b"], TWO) else {
        return;
    };
    let s = d.wait_ready(&["a", "b"]);
    let pids = [Daemon::pid(&s, "a"), Daemon::pid(&s, "b")];
    d.signal("KILL");
    d.wait_exit(common::PATIENCE);
    // The parent-death signal stops the children.
    eventually(
        common::PATIENCE,
        "no llama-server is left within 2 s",
        || d.children().is_empty().then_some(()),
    );
    for pid in pids {
        assert!(!pid_alive(pid));
    }
    // The next run finds the stale state file, cleans up nothing (all gone)
    // and serves again.
    d.spawn();
    let s = d.wait_ready(&["a", "b"]);
    assert!(!pids.contains(&Daemon::pid(&s, "a")));
    assert_eq!(d.children().len(), 2);
}

#[test]
fn a_leftover_from_a_crashed_run_is_stopped_at_the_next_start() {
    // Simulate a crash that the parent-death signal could not cover: a
    // recorded llama-server whose daemon is gone. Start one by hand, record
    // it in the state file, and start the daemon.
    let Some(d) = Daemon::start(&["a"], "  a:\n    model: a.gguf\n") else {
        return;
    };
    d.wait_ready(&["a"]);
    let mut d = d;
    d.signal("TERM");
    d.wait_exit(common::PATIENCE);
    let port = common::daemon::free_port();
    let mut orphan =
        std::process::Command::new(common::llama_server().expect("ROCM_LLM_LLAMA_SERVER"))
            .args([
                "--model",
                &d.dir.path().join("a.gguf").display().to_string(),
                "--port",
                &port.to_string(),
                "--threads",
                "1",
                "-c",
                "256",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // As the daemon marks its children.
            .env(rocm_llm::supervisor::process::MODEL_MARK, "a")
            .process_group(0)
            .spawn()
            .unwrap();
    let pid = orphan.id() as i32;
    let start_time = rocm_llm::supervisor::process::process_start_time(pid).unwrap();
    let state = rocm_llm::supervisor::StateFile::new(&d.dir.path().join("state"));
    state
        .record(rocm_llm::supervisor::InstanceRecord {
            model: "a".into(),
            pid,
            start_time,
            launch_id: rocm_llm::plan::LaunchId("x".into()),
            port,
        })
        .unwrap();
    d.spawn();
    d.wait_ready(&["a"]);
    eventually(common::PATIENCE, "the orphan is reaped", || {
        orphan.try_wait().unwrap().map(|_| ())
    });
    assert!(
        d.log().contains("an earlier run left llama-server behind"),
        "{}",
        d.log()
    );
    assert_eq!(d.children().len(), 1, "only the daemon's own instance runs");
}

#[test]
fn fifty_rapid_edits_converge_to_the_last_with_never_two_instances_of_a_model() {
    let Some(d) = Daemon::start(&["a", "b"], TWO) else {
        return;
    };
    d.wait_ready(&["a", "b"]);
    let a_model = d.dir.path().join("a.gguf").display().to_string();
    let b_model = d.dir.path().join("b.gguf").display().to_string();
    let ctx_of_edit = |i: u32| 64 + (i % 7) * 16;
    let mut worst = 0;
    for i in 0..50 {
        let ctx = ctx_of_edit(i);
        write_by_rename(&d.spec, &d.spec_text(&format!("  a:\n    model: a.gguf\n    ctx_size: {ctx}\n  b:\n    model: b.gguf\n    aliases: [bee]\n")));
        for model in [&a_model, &b_model] {
            worst = worst.max(processes_mentioning(model).len());
        }
        // Some edits land within one debounce window, some apart.
        std::thread::sleep(Duration::from_millis(5 + u64::from(i % 5) * 40));
    }
    let last_ctx = ctx_of_edit(49);
    let has_last = |pid: i32| {
        let cmdline = String::from_utf8_lossy(
            &std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
        )
        .replace('\0', " ");
        cmdline.contains(&format!("--ctx-size {last_ctx} "))
    };
    let s = d.wait_status("converged on the last edit", |s| {
        state(s, "a") == Some(State::Ready) && s.models["a"].pid.is_some_and(has_last)
    });
    assert!(
        s.daemon.generation > 2,
        "edits were applied along the way: {s:#?}"
    );
    for model in [&a_model, &b_model] {
        assert_eq!(processes_mentioning(model).len(), 1);
    }
    assert!(
        worst <= 1,
        "saw {worst} llama-servers for one model at once"
    );
    assert_eq!(processes_mentioning(&b_model).len(), 1);
}

#[test]
fn systemd_hears_ready_reloading_and_stopping_and_sighup_reloads() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    with_notifying_daemon(&socket_path, |mut d| {
        let recv = || {
            let mut buf = [0u8; 4096];
            let n = socket.recv(&mut buf).expect("a notification");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        let first = recv();
        assert!(first.contains("READY=1"), "{first}");
        let before = d.wait_ready(&["a"]);
        // An edit that the watcher cannot see (same path, SIGHUP instead).
        d.signal("HUP");
        let reloading = recv();
        assert!(
            reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
            "{reloading}"
        );
        let ready = recv();
        assert!(ready.contains("READY=1"), "{ready}");
        let after = d.status();
        assert_eq!(
            after.models["a"].pid, before.models["a"].pid,
            "an unchanged spec restarts nothing"
        );
        d.signal("TERM");
        let stopping = recv();
        assert!(stopping.contains("STOPPING=1"), "{stopping}");
        assert_eq!(d.wait_exit(common::PATIENCE), Some(0));
    });
}

/// Starts a daemon whose environment has NOTIFY_SOCKET, without touching
/// this test process's environment.
fn with_notifying_daemon(socket: &std::path::Path, f: impl FnOnce(Daemon)) {
    let Some(d) = Daemon::start_with_env(
        &["a"],
        "  a:\n    model: a.gguf\n",
        &[("NOTIFY_SOCKET", socket.as_os_str())],
    ) else {
        return;
    };
    f(d);
}

#[test]
fn plan_shows_the_diff_against_the_running_daemon() {
    let Some(d) = Daemon::start(&["a", "b"], TWO) else {
        return;
    };
    d.wait_ready(&["a", "b"]);
    let plan = |text: &str| {
        let file = d.dir.path().join("candidate.yaml");
        std::fs::write(&file, d.spec_text(text)).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
            .arg("plan")
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let same = plan(TWO);
    assert!(
        same.contains(&format!(
            "# against the daemon at {} (spec generation 1):\n#   nothing to do\n",
            d.control
        )),
        "{same}"
    );
    let changed = plan("  a:\n    model: a.gguf\n    ctx_size: 128\n  c:\n    model: b.gguf\n");
    assert!(
        changed.contains("#   stop b\n#   restart a\n#   start c\n"),
        "{changed}"
    );
}

#[test]
fn an_invalid_spec_at_start_runs_nothing_until_a_valid_save() {
    // Start from a broken spec: the daemon must still come up on the
    // spec's own control address and say what is wrong.
    let Some(mut d) = Daemon::start(&["a"], "  a:\n    model: a.gguf\n    ctx_size: lots\n") else {
        return;
    };
    let s = d.wait_status("the start-up error reported", |s| {
        s.daemon.last_reload.as_ref().is_some_and(|r| !r.ok)
    });
    assert!(
        s.daemon.last_reload.as_ref().unwrap().errors[0]
            .as_str()
            .contains("models.a.ctx_size"),
        "{s:#?}"
    );
    assert_eq!(s.daemon.generation, 0);
    assert!(d.children().is_empty());
    d.write_spec("  a:\n    model: a.gguf\n");
    d.wait_ready(&["a"]);
    d.signal("TERM");
    assert_eq!(d.wait_exit(common::PATIENCE), Some(0));
}

#[test]
fn a_client_that_hangs_up_while_waiting_leaves_the_queue() {
    let Some(d) = Daemon::start(&["a"], "  a:\n    model: a.gguf\n") else {
        return;
    };
    d.wait_ready(&["a"]);
    // A model that never becomes ready: requests for it wait.
    let server = d.fake_or_real_server();
    let spec = d.spec_text_with_server(
        "  a:\n    model: a.gguf\n  stuck:\n    model: a.gguf\n    ready_timeout: 1h\n    wait_timeout: 1h\n    env: {FAKE_LLAMA_MODE: hang}\n",
        &server,
    );
    write_by_rename(&d.spec, &spec);
    d.wait_status("stuck starting", |s| {
        state(s, "stuck") == Some(State::Starting)
    });
    let client = d.send_chat("stuck");
    d.wait_status("the request queued", |s| s.models["stuck"].waiting == 1);
    drop(client);
    d.wait_status("the queue slot freed", |s| s.models["stuck"].waiting == 0);
}

#[test]
fn restart_never_keeps_a_dead_model_down_and_requests_hear_why() {
    use std::io::Read as _;
    let Some(d) = Daemon::start(&["a"], "  a:\n    model: a.gguf\n    restart: never\n") else {
        return;
    };
    let s = d.wait_ready(&["a"]);
    let pid = Daemon::pid(&s, "a");
    common::daemon::kill("KILL", pid);
    let s = d.wait_status("a down", |s| state(s, "a") == Some(State::Idle));
    assert!(
        s.models["a"]
            .last_error
            .as_deref()
            .unwrap()
            .contains("exited unexpectedly")
    );
    let mut client = d.send_chat("a");
    let mut response = String::new();
    client.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(
        response.contains("restart policy keeps it down"),
        "{response}"
    );
    // Nothing was started behind the client's back.
    assert!(d.children().is_empty(), "{:?}", d.children());
    assert_eq!(d.status().models["a"].state, State::Idle);
}

#[test]
fn a_blue_green_replacement_that_fails_leaves_the_old_instance_serving_and_is_retried() {
    let Some(d) = Daemon::start(&["a"], "  a:\n    model: a.gguf\n    swap: blue_green\n") else {
        return;
    };
    let s = d.wait_ready(&["a"]);
    let (pid, launch) = (Daemon::pid(&s, "a"), s.models["a"].launch_id.clone());
    // llama-server refuses an unknown flag and exits before it is ready.
    d.write_spec(
        "  a:\n    model: a.gguf\n    swap: blue_green\n    extra_args: [--no-such-flag]\n",
    );
    let s = d.wait_status("the replacement failed twice", |s| {
        s.models["a"].restarts >= 2
    });
    let a = &s.models["a"];
    assert_eq!(a.state, State::Ready, "{s:#?}");
    assert_eq!(Daemon::pid(&s, "a"), pid, "the old instance keeps serving");
    assert_eq!(a.launch_id, launch);
    assert_ne!(a.target_launch_id, launch);
    assert!(
        a.last_error.as_deref().unwrap().contains("start failed"),
        "{s:#?}"
    );
    // Fixing the spec replaces it.
    d.write_spec("  a:\n    model: a.gguf\n    swap: blue_green\n    ctx_size: 128\n");
    let s = d.wait_status("the fixed replacement serving", |s| {
        state(s, "a") == Some(State::Ready) && s.models["a"].pid != Some(pid)
    });
    assert_eq!(s.models["a"].launch_id, s.models["a"].target_launch_id);
    assert!(s.models["a"].last_error.is_none());
}
