//! The executor against an in-memory fake spawner: what the handle's
//! callers see (acquire, operate, shutdown, the launch history).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::AtomicI32;

use super::*;
use crate::supervisor::backoff::BackoffPolicy;

/// Processes that become ready at once and exit when stopped.
#[derive(Default)]
struct FakeSpawner {
    next_pid: AtomicI32,
    /// Spawned and not yet stopped.
    live: Mutex<Vec<i32>>,
    /// The most processes alive at once.
    most: AtomicUsize,
    children: Mutex<Vec<Arc<FakeChild>>>,
}

impl FakeSpawner {
    /// The process `pid` dies by itself.
    fn crash(&self, pid: i32) {
        self.live.lock().unwrap().retain(|p| *p != pid);
        for c in self
            .children
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.pid == pid)
        {
            c.exit.send_replace(Some(ExitStatus::from_raw(9)));
        }
    }
}

struct FakeChild {
    pid: i32,
    exit: watch::Sender<Option<ExitStatus>>,
    spawner: Arc<FakeSpawner>,
}

impl Child for FakeChild {
    fn pid(&self) -> i32 {
        self.pid
    }
    fn port(&self) -> u16 {
        1
    }
    fn start_time(&self) -> u64 {
        1
    }
    fn upstream_key(&self) -> Option<Arc<str>> {
        None
    }
    fn wait_ready(&self, _: Duration) -> BoxFuture<Result<Duration, ReadyFailure>> {
        Box::pin(async { Ok(Duration::from_millis(5)) })
    }
    fn wait_exit(&self) -> BoxFuture<ExitStatus> {
        let mut rx = self.exit.subscribe();
        Box::pin(async move {
            let status = *rx.wait_for(Option::is_some).await.unwrap();
            status.unwrap()
        })
    }
    fn stop(&self, _: Duration) -> BoxFuture<StopOutcome> {
        self.spawner.live.lock().unwrap().retain(|p| *p != self.pid);
        let status = ExitStatus::from_raw(0);
        self.exit.send_replace(Some(status));
        Box::pin(async move { StopOutcome::Graceful(status) })
    }
    fn probe_liveness(&self, _: Liveness, _: Box<dyn Fn(Probe) -> bool + Send>) -> BoxFuture<()> {
        Box::pin(async {})
    }
}

struct Shared(Arc<FakeSpawner>);

impl Spawner for Shared {
    fn spawn(&self, _: &InstanceSpec, _: &LogSink) -> Result<Arc<dyn Child>, String> {
        let pid = self.0.next_pid.fetch_add(1, Ordering::SeqCst) + 100;
        let mut live = self.0.live.lock().unwrap();
        live.push(pid);
        self.0.most.fetch_max(live.len(), Ordering::SeqCst);
        let child = Arc::new(FakeChild {
            pid,
            exit: watch::channel(None).0,
            spawner: Arc::clone(&self.0),
        });
        self.0.children.lock().unwrap().push(Arc::clone(&child));
        Ok(child)
    }
}

fn spec(yaml_options: &str) -> InstanceSpec {
    let dir = std::env::temp_dir();
    let desired = crate::spec::validate::load(
        &format!("models:\n  m:\n    model: /dev/null\n{yaml_options}"),
        &crate::spec::validate::Context {
            spec_path: &dir.join("models.yaml"),
            default_llama_server: "/bin/true".into(),
            probe: &NoDisk,
        },
    )
    .unwrap();
    InstanceSpec::new(desired.models["m"].clone(), &desired.llama_server)
}

/// Every file exists and is a fine GGUF.
struct NoDisk;

impl crate::spec::validate::FileProbe for NoDisk {
    fn check_readable(&self, _: &std::path::Path) -> Result<(), String> {
        Ok(())
    }
    fn check_gguf(&self, _: &std::path::Path) -> Result<(), String> {
        Ok(())
    }
    fn check_executable(&self, _: &std::path::Path) -> Result<(), String> {
        Ok(())
    }
}

fn owner(options: &str) -> (InstanceHandle, Arc<FakeSpawner>, tempfile::TempDir) {
    let fake = Arc::new(FakeSpawner::default());
    let dir = tempfile::tempdir().unwrap();
    let handle = start_with(
        spec(options),
        StateFile::new(dir.path()),
        Backoff::new(BackoffPolicy::default()).unwrap(),
        None,
        Arc::new(Shared(Arc::clone(&fake))),
        None,
    );
    (handle, fake, dir)
}

async fn until(handle: &InstanceHandle, what: &str, f: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let mut rx = handle.snapshot.clone();
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| f(s)))
        .await
        .unwrap_or_else(|_| panic!("waited for {what}: {:?}", handle.snapshot()))
        .unwrap()
        .clone()
}

#[tokio::test]
async fn operator_stop_holds_an_always_on_model_down_until_start() {
    let (h, fake, _dir) = owner("");
    until(&h, "ready", |s| s.state == State::Ready).await;
    h.operate(OperatorAction::Stop).await.unwrap();
    let s = until(&h, "stopped by the operator", |s| s.stopped_by_operator).await;
    assert_eq!(s.state, State::Idle);
    let err = h.acquire().await.unwrap_err();
    assert!(err.to_string().contains("stopped by the operator"), "{err}");
    h.operate(OperatorAction::Start).await.unwrap();
    until(&h, "ready again", |s| s.state == State::Ready).await;
    assert!(h.acquire().await.is_ok());
    h.operate(OperatorAction::Restart).await.unwrap();
    until(&h, "restarted", |s| {
        s.state == State::Ready && s.pid == Some(102)
    })
    .await;
    h.shutdown().await;
    assert_eq!(
        h.operate(OperatorAction::Start).await,
        Err(OperateError::Gone { model: "m".into() })
    );
    assert_eq!(fake.most.load(Ordering::SeqCst), 1, "never two at once");
    let launches = h.launches();
    assert_eq!(
        launches.iter().map(|l| l.pid).collect::<Vec<_>>(),
        [100, 101, 102]
    );
    for pair in launches.windows(2) {
        let ended = pair[0].exited_at.expect("an earlier one has exited");
        assert!(ended <= pair[1].spawned_at, "{pair:?}");
    }
}

#[tokio::test]
async fn a_request_starts_an_on_demand_model_and_stop_returns_it_to_idle() {
    let (h, fake, _dir) = owner("    on_demand: true\n");
    assert_eq!(h.snapshot().state, State::Idle);
    let lease = h.acquire().await.unwrap();
    drop(lease);
    h.operate(OperatorAction::Stop).await.unwrap();
    let s = until(&h, "idle", |s| s.state == State::Idle).await;
    assert!(
        !s.stopped_by_operator,
        "on demand: the next request starts it"
    );
    assert!(h.acquire().await.is_ok());
    assert_eq!(fake.next_pid.load(Ordering::SeqCst), 2);
    h.shutdown().await;
    assert!(fake.live.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_edit_replaces_and_a_settings_change_restarts_nothing() {
    let (h, fake, _dir) = owner("");
    let first = until(&h, "ready", |s| s.state == State::Ready).await;
    h.update(spec("    queue_length: 3\n"));
    let s = until(&h, "new settings", |s| s.queue_length == 3).await;
    assert_eq!(s.pid, first.pid);
    h.replace(spec("    ctx_size: 64\n    queue_length: 3\n"));
    let s = until(&h, "replaced", |s| {
        s.state == State::Ready && s.pid != first.pid
    })
    .await;
    assert_eq!(s.launch_id, s.target_launch_id);
    assert_ne!(s.launch_id, first.launch_id);
    assert_eq!(fake.most.load(Ordering::SeqCst), 1);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn deadlines_run_on_the_owners_clock_idle_stop_and_crash_backoff() {
    let (h, fake, _dir) = owner("    on_demand: true\n    idle_timeout: 5s\n");
    drop(h.acquire().await.unwrap());
    let t0 = Instant::now();
    until(&h, "stopped when idle", |s| s.state == State::Idle).await;
    assert!(t0.elapsed() >= Duration::from_secs(4), "{:?}", t0.elapsed());
    assert!(fake.live.lock().unwrap().is_empty());
    let lease = h.acquire().await.unwrap();
    let pid = h.snapshot().pid.unwrap();
    fake.crash(pid);
    until(&h, "backing off", |s| s.state == State::Backoff).await;
    drop(lease);
    let t1 = Instant::now();
    let s = until(&h, "restarted", |s| s.state == State::Ready).await;
    assert!(
        t1.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t1.elapsed()
    );
    assert_eq!(s.restarts, 1);
    assert!(s.last_restart.unwrap().1.contains("exited unexpectedly"));
    h.shutdown().await;
}

/// Two on-demand owners of 60 MiB each under one arbiter with 100 MiB: they
/// cannot both be loaded.
fn two_under_a_budget(
    b_options: &str,
) -> (
    InstanceHandle,
    InstanceHandle,
    Arc<FakeSpawner>,
    tempfile::TempDir,
) {
    let fake = Arc::new(FakeSpawner::default());
    let dir = tempfile::tempdir().unwrap();
    let arbiter = Arbiter::start(
        vec![(crate::schedule::HOST.into(), 100 << 20)],
        None,
        crate::schedule::arbiter::FreeWatch {
            roots: crate::memory::probe::ProbeRoots {
                sys: dir.path().join("no-sys"),
                proc: dir.path().join("no-proc"),
                nvidia_smi: dir.path().join("no-nvidia-smi"),
            },
            ..Default::default()
        },
    );
    let start = |name: &str, more: &str| {
        let mut s = spec(&format!("    on_demand: true\n    memory: 60MiB\n{more}"));
        s.config.name = name.into();
        s.memory.need = Bytes::from([(crate::schedule::HOST.to_owned(), 60 << 20)]);
        s.memory.declared = true;
        start_with(
            s,
            StateFile::new(dir.path()),
            Backoff::new(BackoffPolicy::default()).unwrap(),
            None,
            Arc::new(Shared(Arc::clone(&fake))),
            Some(arbiter.clone()),
        )
    };
    (start("a", ""), start("b", b_options), fake, dir)
}

#[tokio::test]
async fn a_model_with_a_request_inside_is_not_evicted_and_is_once_it_leaves() {
    let (a, b, fake, _dir) = two_under_a_budget("");
    let lease = a.acquire().await.unwrap();
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.acquire().await.map(|l| l.port()) }
    });
    // b waits for the memory a holds while a serves a request (a's turn
    // lasts 40 s, far longer than this test).
    until(&b, "b says what it waits for", |s| {
        s.state == State::Starting && s.waiting_for_memory == Some(vec!["a".to_owned()])
    })
    .await;
    for _ in 0..5 {
        tokio::time::sleep(crate::schedule::arbiter::TICK).await;
        assert_eq!(
            a.snapshot().state,
            State::Ready,
            "a is never stopped with a request inside"
        );
        assert!(!waiter.is_finished());
    }
    assert_eq!(fake.live.lock().unwrap().len(), 1);
    drop(lease);
    assert!(
        waiter.await.unwrap().is_ok(),
        "b serves once a is idle and gone"
    );
    let s = a.snapshot();
    assert_eq!((s.state, s.made_room, s.cut), (State::Idle, 1, 0));
    assert_eq!(fake.most.load(Ordering::SeqCst), 1, "never both in memory");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_request_that_waits_too_long_for_memory_says_who_holds_it() {
    let (a, b, _fake, _dir) = two_under_a_budget("    wait_timeout: 300ms\n");
    let _lease = a.acquire().await.unwrap();
    let err = b.acquire().await.unwrap_err();
    assert_eq!(
        err,
        AcquireError::WaitingForMemory {
            model: "b".into(),
            waited: Duration::from_millis(300),
            held_by: vec!["a".into()],
        }
    );
    assert!(err.to_string().contains("memory held by a"), "{err}");
}
