//! The supervisor's process building blocks against real processes and
//! signals: the real llama-server (when `ROCM_LLM_LLAMA_SERVER` names one)
//! and, for faults it cannot show on demand, tests/fixtures/fake-llama-server.sh.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{PATIENCE, eventually_async};

use rocm_llm::plan::launch::{Launch, LaunchId};
use rocm_llm::supervisor::leftovers::{InstanceRecord, LeftoverOutcome, StateFile, reap_leftovers};
use rocm_llm::supervisor::process::{process_start_time, read_proc_stat};
use rocm_llm::supervisor::{
    LogSink, LogStream, ProbeResult, ReadyError, StopOutcome, pick_free_port, probe, spawn,
};

fn fake() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-llama-server.sh")
}

fn fake_launch(mode: &str) -> Launch {
    let mut env = BTreeMap::new();
    env.insert("FAKE_LLAMA_MODE".to_owned(), mode.to_owned());
    env.insert("FAKE_LLAMA_ECHO".to_owned(), "from-the-spec".to_owned());
    Launch {
        program: fake(),
        args: vec!["--model".into(), "/nonexistent.gguf".into()],
        env,
        working_dir: Default::default(),
    }
}

/// Whether `pid` (with `start_time`) still runs; zombies count as dead
/// (in a container nobody may reap a reparented grandchild).
fn alive(pid: i32, start_time: u64) -> bool {
    matches!(read_proc_stat(pid), Ok(s) if s.start_time == start_time && s.state != 'Z')
}

async fn wait_dead(pid: i32, start_time: u64, what: &str) {
    eventually_async(PATIENCE, what, || async { !alive(pid, start_time) }).await;
}

async fn wait_for_file(path: &Path) -> String {
    eventually_async(
        PATIENCE,
        &format!("{} is written", path.display()),
        || async {
            std::fs::read_to_string(path)
                .ok()
                .filter(|s| s.ends_with('\n'))
        },
    )
    .await
}

/// Whether `pid` ignores SIGTERM (its `trap '' TERM` is in force), from
/// the kernel's own record, `SigIgn` in /proc/PID/status.
fn ignores_term(pid: i32) -> bool {
    const SIGTERM_BIT: u64 = 1 << (15 - 1);
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let mask = s.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|mask| mask & SIGTERM_BIT != 0)
}

/// Waits until `pid`'s trap has made it ignore SIGTERM.
async fn wait_ignores_term(pid: i32) {
    eventually_async(PATIENCE, &format!("{pid} ignores SIGTERM"), || async {
        ignores_term(pid)
    })
    .await;
}

#[tokio::test]
async fn real_llama_server_becomes_ready_and_stops_gracefully() {
    let Some(bin) = common::llama_server() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("tiny.gguf");
    rocm_llm::gguf::write_tiny_llama(&model_path, &rocm_llm::gguf::TinyModel::default()).unwrap();
    let model = rocm_llm::spec::ModelConfig {
        name: "tiny".into(),
        model: model_path,
        aliases: vec![],
        default: false,
        enabled: true,
        launch: rocm_llm::spec::LaunchOptions {
            ctx_size: Some(256),
            threads: Some(1),
            ..Default::default()
        },
        lifecycle: Default::default(),
    };
    let launch = Launch::for_model(&model, Path::new(&bin));

    let port = pick_free_port().unwrap();
    let logs = LogSink::new("tiny");
    let p = spawn(&launch, port, logs.clone()).unwrap();
    assert!(p.start_time() > 0);
    assert_eq!(process_start_time(p.pid()).unwrap(), p.start_time());
    let took = p.wait_ready(Duration::from_secs(120)).await.unwrap();
    eprintln!("real llama-server ready {took:?} after spawn");
    assert_eq!(probe(port).await, ProbeResult::Ready);
    assert!(p.exit_status().is_none());
    assert!(logs.len() > 1, "llama-server's output is captured");
    assert!(
        logs.snapshot()
            .iter()
            .any(|l| l.stream == LogStream::Stderr),
        "{:#?}",
        logs.tail(5)
    );

    let outcome = p.stop(Duration::from_secs(30)).await;
    assert!(
        matches!(outcome, StopOutcome::Graceful(_)),
        "{outcome:?}\n{:#?}",
        logs.tail(20)
    );
    assert!(!alive(p.pid(), p.start_time()));
    assert!(matches!(probe(port).await, ProbeResult::Unreachable(_)));
    // Stopping again is harmless.
    assert!(matches!(
        p.stop(Duration::from_secs(1)).await,
        StopOutcome::AlreadyExited(_)
    ));

    // A taken port: llama-server exits at once, recognisably.
    let holder = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let taken = holder.local_addr().unwrap().port();
    let p = spawn(&launch, taken, LogSink::new("tiny")).unwrap();
    let err = p.wait_ready(Duration::from_secs(60)).await.unwrap_err();
    assert!(err.is_bind_failure(), "{err}");
}

#[tokio::test]
async fn exit_before_ready_reports_the_last_lines() {
    let port = pick_free_port().unwrap();
    let p = spawn(&fake_launch("exit"), port, LogSink::new("m")).unwrap();
    let err = p.wait_ready(Duration::from_secs(30)).await.unwrap_err();
    let ReadyError::ExitedBeforeReady { status, last_lines } = &err else {
        panic!("{err}");
    };
    assert_eq!(status.code(), Some(1));
    let text = err.to_string();
    assert!(
        text.contains("fake: error: failed to load model (simulated)"),
        "{text}"
    );
    assert!(!err.is_bind_failure());
    // The argv the supervisor built, and the spec's environment.
    let expected = format!(
        "fake-llama-server mode=exit echo=from-the-spec args: --model /nonexistent.gguf --host 127.0.0.1 --port {port}"
    );
    assert!(last_lines.contains(&expected), "{last_lines:#?}");
    // The daemon's own lines frame the run.
    assert!(
        last_lines[0].starts_with(&format!("started pid {} on port {port}", p.pid())),
        "{last_lines:#?}"
    );
    assert!(
        last_lines.last().unwrap().contains("exited"),
        "{last_lines:#?}"
    );
    assert!(
        matches!(p.stop(Duration::from_secs(1)).await, StopOutcome::AlreadyExited(s) if s.code() == Some(1))
    );
}

#[tokio::test]
async fn a_hang_times_out_and_sigterm_suffices() {
    let port = pick_free_port().unwrap();
    let p = spawn(&fake_launch("hang"), port, LogSink::new("m")).unwrap();
    let err = p.wait_ready(Duration::from_millis(300)).await.unwrap_err();
    assert!(
        matches!(
            &err,
            ReadyError::Timeout {
                last_probe: ProbeResult::Unreachable(_),
                ..
            }
        ),
        "{err}"
    );
    let outcome = p.stop(Duration::from_secs(10)).await;
    let StopOutcome::Graceful(status) = outcome else {
        panic!("{outcome:?}")
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15));
    assert!(!alive(p.pid(), p.start_time()));
}

#[tokio::test]
async fn ignoring_sigterm_gets_sigkill_after_the_grace() {
    let p = spawn(
        &fake_launch("ignore-term"),
        pick_free_port().unwrap(),
        LogSink::new("m"),
    )
    .unwrap();
    // The fake's trap is in force (the shell, then the sleep it execs,
    // ignore SIGTERM).
    let lines = p.logs().clone();
    wait_ignores_term(p.pid()).await;

    let started = tokio::time::Instant::now();
    let outcome = p.stop(Duration::from_millis(500)).await;
    let took = started.elapsed();
    let StopOutcome::Killed(status) = outcome else {
        panic!("{outcome:?}")
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9));
    // It waited out the grace before the SIGKILL.
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(outcome.was_killed());
    assert_eq!(p.exit_status(), Some(status), "reaped");
    assert!(!alive(p.pid(), p.start_time()));
    assert!(lines.tail_text(5).iter().any(|l| l.contains("SIGKILL")));
}

#[tokio::test]
async fn the_whole_process_group_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let gc_file = dir.path().join("grandchildren");
    // A leader with two grandchildren: one dies of SIGTERM with it, one
    // ignores SIGTERM and outlives the leader; the reaper SIGKILLs it.
    let script = r#"
        sleep 300 &
        a=$!
        (trap '' TERM; exec sleep 301) &
        b=$!
        echo "$a $b" > "$GC_FILE"
        wait
    "#;
    let launch = Launch {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        env: BTreeMap::from([("GC_FILE".to_owned(), gc_file.display().to_string())]),
        working_dir: Default::default(),
    };
    let p = spawn(&launch, pick_free_port().unwrap(), LogSink::new("m")).unwrap();
    let pids = wait_for_file(&gc_file).await;
    let gcs: Vec<(i32, u64)> = pids
        .split_whitespace()
        .map(|s| {
            let pid: i32 = s.parse().unwrap();
            let stat = read_proc_stat(pid).unwrap();
            assert_eq!(stat.pgrp, p.pid(), "grandchild is in the child's group");
            (pid, stat.start_time)
        })
        .collect();
    assert_eq!(gcs.len(), 2);
    wait_ignores_term(gcs[1].0).await;

    let outcome = p.stop(Duration::from_secs(10)).await;
    assert!(matches!(outcome, StopOutcome::Graceful(_)), "{outcome:?}");
    for (pid, st) in gcs {
        wait_dead(pid, st, &format!("grandchild {pid} is gone")).await;
    }
}

#[tokio::test]
async fn many_observers_one_exit() {
    let p = spawn(
        &fake_launch("hang"),
        pick_free_port().unwrap(),
        LogSink::new("m"),
    )
    .unwrap();
    // Cancelling a wait is harmless.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), p.wait())
            .await
            .is_err()
    );
    let watchers: Vec<_> = (0..3)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move { p.wait().await })
        })
        .collect();
    let mut exit = p.exit_watch();
    assert!(exit.borrow().is_none());
    let (a, b) = tokio::join!(
        p.stop(Duration::from_secs(10)),
        p.stop(Duration::from_secs(10))
    );
    let status = a.status().unwrap();
    assert_eq!(b.status(), Some(status));
    for w in watchers {
        assert_eq!(w.await.unwrap(), status);
    }
    exit.wait_for(Option::is_some).await.unwrap();
    assert_eq!(*exit.borrow(), Some(status));
    assert_eq!(p.wait().await, status);
    assert!(
        !p.signal(rustix::process::Signal::TERM),
        "no signals after the exit"
    );
}

#[tokio::test]
async fn spawn_failure_is_an_error() {
    let launch = Launch {
        program: "/nonexistent/llama-server".into(),
        args: vec![],
        env: BTreeMap::new(),
        working_dir: Default::default(),
    };
    let err = spawn(&launch, 1, LogSink::new("m")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/llama-server"),
        "{err}"
    );
}

/// The body of `parent_death_signal_stops_the_child` in a helper process:
/// spawns a `hang` child, writes "<pid> <start_time>\n" to the file named by
/// the environment, then waits to be killed. A no-op in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pdeathsig_helper() {
    let Some(out) = std::env::var_os("ROCM_LLM_TEST_PDEATHSIG_OUT") else {
        return;
    };
    let p = spawn(
        &fake_launch("hang"),
        pick_free_port().unwrap(),
        LogSink::new("m"),
    )
    .unwrap();
    std::fs::write(&out, format!("{} {}\n", p.pid(), p.start_time())).unwrap();
    // The behaviour under test: stay alive until the test kills us.
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test]
async fn parent_death_signal_stops_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("child");
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "pdeathsig_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ROCM_LLM_TEST_PDEATHSIG_OUT", &out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let line = wait_for_file(&out).await;
    let mut it = line.split_whitespace();
    let pid: i32 = it.next().unwrap().parse().unwrap();
    let start_time: u64 = it.next().unwrap().parse().unwrap();
    assert!(alive(pid, start_time));

    // The "daemon" dies without any chance to clean up.
    helper.kill().unwrap();
    helper.wait().unwrap();
    wait_dead(pid, start_time, "the child dies with its parent").await;
}

fn start_sleeper(ignore_term: bool) -> (std::process::Child, InstanceRecord) {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("/bin/sh");
    if ignore_term {
        cmd.args(["-c", "trap '' TERM; exec sleep 60"]);
    } else {
        cmd.args(["-c", "exec sleep 60"]);
    }
    // The mark the daemon gives its children; only marked processes are reaped.
    let child = cmd
        .process_group(0)
        .env(rocm_llm::supervisor::process::MODEL_MARK, "sleeper")
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    // Wait for the shell to become `sleep`: while a process execs, its
    // environment (where the daemon's mark is read) can read as empty.
    common::eventually(common::PATIENCE, "the sleeper execs sleep", || {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "sleep" {
            Ok(())
        } else {
            Err(comm)
        }
    });
    let record = InstanceRecord {
        model: "sleeper".into(),
        pid,
        start_time: process_start_time(pid).unwrap(),
        launch_id: LaunchId("0123456789abcdef".into()),
        port: 1234,
    };
    (child, record)
}

#[tokio::test]
async fn leftovers_are_stopped_but_recycled_pids_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (mut polite, polite_rec) = start_sleeper(false);
    let (mut stubborn, stubborn_rec) = start_sleeper(true);
    let (mut stranger, stranger_rec) = start_sleeper(false);
    // Same pid as a recorded child, another start time: a recycled pid.
    let recycled = InstanceRecord {
        start_time: stranger_rec.start_time + 1,
        ..stranger_rec.clone()
    };
    wait_ignores_term(stubborn_rec.pid).await;

    let sf = StateFile::new(dir.path());
    for r in [&polite_rec, &stubborn_rec, &recycled] {
        sf.record(r.clone()).unwrap();
    }
    drop(sf); // the daemon "dies"

    let found = reap_leftovers(dir.path(), Duration::from_millis(500)).await;
    let outcomes: Vec<_> = found
        .iter()
        .map(|l| (l.record.pid, l.outcome.clone()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (polite_rec.pid, LeftoverOutcome::Stopped),
            (stubborn_rec.pid, LeftoverOutcome::Killed),
            (
                stranger_rec.pid,
                LeftoverOutcome::Recycled {
                    start_time: stranger_rec.start_time
                }
            ),
        ]
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(polite.wait().unwrap().signal(), Some(15));
    assert_eq!(stubborn.wait().unwrap().signal(), Some(9));
    assert!(
        alive(stranger_rec.pid, stranger_rec.start_time),
        "a recycled pid is never killed"
    );
    stranger.kill().unwrap();
    stranger.wait().unwrap();
    assert!(
        !dir.path().join("instances.json").exists(),
        "the list is cleared"
    );
    // Nothing left the second time.
    assert!(
        reap_leftovers(dir.path(), Duration::from_millis(10))
            .await
            .is_empty()
    );
}
