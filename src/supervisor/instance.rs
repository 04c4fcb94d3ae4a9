//! The owner of one model's llama-server: one task per model, and the
//! executor of the decisions [`super::owner::Core`] makes.
//!
//! The task's loop takes one input at a time (a command from a handle, a
//! report from a helper task, or [`Core::deadline`] passing), hands it to
//! the core as an [`Event`], and performs the [`Effect`]s it returns. Those
//! that answer at once (a spawn, an idle measurement) are fed back before
//! the next input; slow ones (waiting for readiness, draining and stopping,
//! watching for an exit, liveness probes) run in helper tasks that report
//! back with the [`ProcId`] they are about, so the core recognises and
//! ignores a late report about a process it has let go. Processes are
//! started through a [`Spawner`]: [`ProcessSpawner`] on tokio::process in
//! the daemon, an in-memory fake in the tests below.
//!
//! Others see the model through an [`InstanceHandle`]: a [`Snapshot`] of its
//! state (for the status API), [`InstanceHandle::acquire`] (for the proxy),
//! which waits for a serving process and returns a [`Lease`] that keeps it
//! from being stopped mid-request, and [`InstanceHandle::operate`] (for the
//! status page's buttons).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::gate::{Gate, Lease};
use super::leftovers::{InstanceRecord, StateFile};
use super::liveness::{self, Probe};
use super::logs::{LogSink, LogStream};
use super::owner::{Core, Down, Effect, Event, Phase, ProcId, ReadyFailure, Target};
pub use super::owner::{OperateError, OperatorAction};
use super::ports::pick_free_port;
use super::process::{RunningProcess, StopOutcome, spawn};
use crate::plan::{Launch, LaunchId};
use crate::schedule::arbiter::{Arbiter, Ask, Grant, Occupancy, Tenant};
use crate::schedule::ledger::Bytes;
use crate::spec::{Liveness, ModelConfig};

/// What an owner is asked to run: the model's options and its launch.
#[derive(Clone, Debug)]
pub struct InstanceSpec {
    pub config: ModelConfig,
    pub launch: Launch,
    pub id: LaunchId,
    /// What the memory arbiter reserves before each spawn.
    pub memory: MemoryNeed,
}

/// A model's footprint as admission found it (docs/scheduler.md).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryNeed {
    /// Bytes per device (llama.cpp's names); empty when unknown.
    pub need: Bytes,
    /// The spec's `memory:`, which stays the reservation after the load.
    pub declared: bool,
    /// Added to what llama-server's log says a GPU holds (the driver's and
    /// runtime's own share, which the log does not show).
    pub overheads: crate::memory::Overheads,
}

impl InstanceSpec {
    pub fn new(config: ModelConfig, program: &std::path::Path) -> InstanceSpec {
        let launch = Launch::for_model(&config, program);
        let id = launch.identity();
        InstanceSpec {
            config,
            launch,
            id,
            memory: MemoryNeed::default(),
        }
    }

    fn target(&self) -> Target {
        Target {
            launch: self.id.clone(),
            lifecycle: self.config.lifecycle.clone(),
        }
    }
}

/// A model's state as people see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Nothing runs: an on-demand model waiting for its first request, a
    /// model whose restart policy let it stay down, or one the operator
    /// stopped.
    Idle,
    /// llama-server is loading the model.
    Starting,
    /// Serving requests.
    Ready,
    /// Replacement in progress: requests wait for the new process.
    Swapping,
    /// A start failed or the process died; it restarts after a delay.
    Backoff,
    /// Failed too often in a row; still retried at the longest interval.
    Failed,
    /// Being shut down (removed from the spec, or the daemon is stopping).
    Stopping,
    /// Shut down for good; the owner is gone.
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Swapping => "swapping",
            State::Backoff => "backoff",
            State::Failed => "failed",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
        }
    }

    fn of(phase: &Phase) -> State {
        match phase {
            Phase::Idle(_) => State::Idle,
            Phase::Waiting { swap: true, .. } => State::Swapping,
            Phase::Waiting { swap: false, .. } | Phase::Starting(_) => State::Starting,
            Phase::Ready { .. } => State::Ready,
            Phase::Backoff { failed: false, .. } => State::Backoff,
            Phase::Backoff { failed: true, .. } => State::Failed,
            Phase::Stopping => State::Stopping,
            Phase::Stopped => State::Stopped,
        }
    }
}

/// What the owner publishes after every event.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub state: State,
    /// Where requests go now; `None` while they must wait.
    pub serving: Option<Arc<Gate>>,
    /// The launch the current process runs (the target's while none runs).
    pub launch_id: LaunchId,
    /// The launch the owner is working towards (the applied spec's); differs
    /// from `launch_id` while a replacement loads.
    pub target_launch_id: LaunchId,
    pub pid: Option<i32>,
    pub port: Option<u16>,
    pub started_at: Option<SystemTime>,
    /// Spawn to `/health` 200 of the current process.
    pub ready_after: Option<Duration>,
    /// Unplanned restarts (crashes and failed starts) since the daemon began.
    pub restarts: u64,
    pub last_error: Option<String>,
    /// Why the model was last restarted without being asked to (a crash, a
    /// failed start, a hung process replaced), and when; kept after the
    /// restart succeeds, unlike `last_error`.
    pub last_restart: Option<(SystemTime, String)>,
    pub queue_length: u32,
    pub wait_timeout: Duration,
    /// Whether a request may start the model when it is idle.
    pub on_demand: bool,
    /// Idle because the operator stopped it ([`OperatorAction::Stop`]).
    pub stopped_by_operator: bool,
    /// Requests that were in flight when a drain began and finished.
    pub drained: u64,
    /// Requests cut because a drain timed out.
    pub cut: u64,
    /// When memory is short, lower priorities yield first.
    pub priority: i32,
    /// Starts refused because the model could not fit in memory; the
    /// reason is `last_error`.
    pub no_room: u64,
    /// Times it was stopped to make room for another model.
    pub made_room: u64,
    /// The last `blue_green` swap done `stop_first` for lack of memory.
    pub swap_fallback: Option<String>,
    /// While its start waits for memory: the models holding it.
    pub waiting_for_memory: Option<Vec<String>>,
}

/// One process the owner started: the daemon's own record of when it
/// lived, for the status API (and the test that no two overlap).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct LaunchRecord {
    pub pid: i32,
    pub launch_id: LaunchId,
    /// Seconds since the Unix epoch, taken just before the fork.
    pub spawned_at: f64,
    /// Taken just after the exit was reaped; `None` while it runs.
    pub exited_at: Option<f64>,
}

/// How many [`LaunchRecord`]s each model keeps.
const LAUNCH_HISTORY: usize = 32;

type History = Arc<Mutex<VecDeque<LaunchRecord>>>;

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Why [`InstanceHandle::acquire`] could not give a lease.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcquireError {
    #[error(
        "{queued} requests are already waiting for model {model} to start (queue_length {limit})"
    )]
    QueueFull {
        model: String,
        queued: usize,
        limit: u32,
    },
    #[error("model {model} was not ready within {waited:?}")]
    Timeout { model: String, waited: Duration },
    /// Timed out while its start waited for memory other models hold.
    #[error(
        "model {model} waited {waited:?} for memory held by {} (see the status API)",
        held_by.join(", ")
    )]
    WaitingForMemory {
        model: String,
        waited: Duration,
        held_by: Vec<String>,
    },
    #[error("model {model} failed: {reason}")]
    Failed { model: String, reason: String },
    #[error("model {model} has been removed")]
    Gone { model: String },
    /// It cannot fit in memory now, even with every idle model stopped.
    #[error("{reason}")]
    NoRoom { model: String, reason: String },
}

/// What the owner's task is sent.
enum Input {
    Replace(Box<InstanceSpec>),
    Settings(Box<InstanceSpec>),
    Demand,
    Operate(OperatorAction, oneshot::Sender<Result<(), OperateError>>),
    Shutdown(oneshot::Sender<()>),
    /// From a helper task.
    Report(Event),
    /// The memory arbiter's answer for a spawn.
    Granted(ProcId, Grant),
    /// What its start waits for, as the memory arbiter sees it.
    MemoryWait(Option<Vec<String>>),
    /// The memory arbiter asks it to stop for another model.
    MakeRoom {
        for_model: String,
        yield_turn: bool,
    },
}

/// A cheap, cloneable view of one owner.
#[derive(Clone, Debug)]
pub struct InstanceHandle {
    name: Arc<str>,
    inbox: mpsc::UnboundedSender<Input>,
    snapshot: watch::Receiver<Snapshot>,
    waiting: Arc<AtomicUsize>,
    logs: LogSink,
    launches: History,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Replace(s) => write!(f, "Replace({})", s.id),
            Input::Settings(s) => write!(f, "Settings({})", s.id),
            Input::Demand => f.write_str("Demand"),
            Input::Operate(a, _) => write!(f, "Operate({a:?})"),
            Input::Shutdown(_) => f.write_str("Shutdown"),
            Input::Report(e) => write!(f, "Report({e:?})"),
            Input::Granted(p, g) => write!(f, "Granted({p}, {g:?})"),
            Input::MemoryWait(h) => write!(f, "MemoryWait({h:?})"),
            Input::MakeRoom { for_model, .. } => write!(f, "MakeRoom({for_model})"),
        }
    }
}

struct WaitingGuard(Arc<AtomicUsize>);

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl InstanceHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    /// A watch on the snapshot, to await changes (the status page's events).
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.clone()
    }

    /// The model's recent output lines.
    pub fn logs(&self) -> &LogSink {
        &self.logs
    }

    /// Requests waiting for this model to become ready.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// The processes this owner started, oldest first (the last
    /// [`LAUNCH_HISTORY`]).
    pub fn launches(&self) -> Vec<LaunchRecord> {
        self.launches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// The plan's `restart`: a new launch identity, which replaces the
    /// process by the model's swap strategy.
    pub fn replace(&self, spec: InstanceSpec) {
        let _ = self.inbox.send(Input::Replace(Box::new(spec)));
    }

    /// The plan's `keep`: the same launch; settings that only steer the
    /// daemon (timeouts, queue, on demand) take effect, no process restarts.
    pub fn update(&self, spec: InstanceSpec) {
        let _ = self.inbox.send(Input::Settings(Box::new(spec)));
    }

    /// An operator's start, stop or restart (see [`OperatorAction`] for
    /// what each does). Returns once the owner has taken it in, not once
    /// the process has started or stopped: watch the snapshot for that.
    pub async fn operate(&self, action: OperatorAction) -> Result<(), OperateError> {
        let gone = || OperateError::Gone {
            model: self.name.to_string(),
        };
        let (tx, rx) = oneshot::channel();
        self.inbox
            .send(Input::Operate(action, tx))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Drains and stops the model's processes and ends the owner.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inbox.send(Input::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Waits (bounded by the model's queue length and wait timeout) for a
    /// serving process and enters it. Starts an on-demand model.
    pub async fn acquire(&self) -> Result<Lease, AcquireError> {
        let mut rx = self.snapshot.clone();
        // Fast path: serving now.
        if let Some(lease) = rx.borrow().serving.as_ref().and_then(Gate::enter) {
            return Ok(lease);
        }
        let (limit, wait, refusals) = {
            let s = rx.borrow();
            (s.queue_length, s.wait_timeout, s.no_room)
        };
        // A request for an idle model starts it even when it cannot wait
        // for it (queue_length 0): the client's retry will find it up.
        if rx.borrow().state == State::Idle && rx.borrow().on_demand {
            let _ = self.inbox.send(Input::Demand);
        }
        let queued = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _guard = WaitingGuard(Arc::clone(&self.waiting));
        if queued >= limit as usize {
            return Err(AcquireError::QueueFull {
                model: self.name.to_string(),
                queued,
                limit,
            });
        }
        let deadline = Instant::now() + wait;
        loop {
            let verdict = {
                let s = rx.borrow_and_update();
                if let Some(lease) = s.serving.as_ref().and_then(Gate::enter) {
                    return Ok(lease);
                }
                match s.state {
                    State::Failed => Some(AcquireError::Failed {
                        model: self.name.to_string(),
                        reason: s
                            .last_error
                            .clone()
                            .unwrap_or_else(|| "it keeps failing to start".into()),
                    }),
                    State::Stopped | State::Stopping => Some(AcquireError::Gone {
                        model: self.name.to_string(),
                    }),
                    // Refused since this request came: it cannot fit now.
                    State::Idle if s.no_room > refusals => Some(AcquireError::NoRoom {
                        model: self.name.to_string(),
                        reason: s
                            .last_error
                            .clone()
                            .unwrap_or_else(|| "it does not fit in memory now".into()),
                    }),
                    State::Idle if s.on_demand => {
                        let _ = self.inbox.send(Input::Demand);
                        None
                    }
                    State::Idle if s.stopped_by_operator => Some(AcquireError::Failed {
                        model: self.name.to_string(),
                        reason:
                            "it was stopped by the operator; start it again from the status page"
                                .into(),
                    }),
                    // Down by its restart policy: say so instead of waiting.
                    State::Idle => Some(AcquireError::Failed {
                        model: self.name.to_string(),
                        reason: format!(
                            "{}; its restart policy keeps it down until the spec changes it",
                            s.last_error.as_deref().unwrap_or("it is not running")
                        ),
                    }),
                    _ => None,
                }
            };
            if let Some(e) = verdict {
                return Err(e);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(AcquireError::Gone {
                        model: self.name.to_string(),
                    });
                }
                Err(_) => {
                    let held_by = rx.borrow().waiting_for_memory.clone();
                    return Err(match held_by {
                        Some(held_by) => AcquireError::WaitingForMemory {
                            model: self.name.to_string(),
                            waited: wait,
                            held_by,
                        },
                        None => AcquireError::Timeout {
                            model: self.name.to_string(),
                            waited: wait,
                        },
                    });
                }
            }
        }
    }
}

/// What the memory arbiter reads and asks of the model.
impl Tenant for InstanceHandle {
    fn occupancy(&self) -> Occupancy {
        let s = self.snapshot.borrow();
        let gate = s.serving.as_ref();
        Occupancy {
            in_flight: gate.map_or(0, |g| g.in_flight() as u32),
            queued: self.waiting() as u32,
            idle_for: gate.map_or(Duration::ZERO, |g| g.idle_for()),
            loaded_for: match (s.started_at, s.ready_after, gate) {
                (Some(at), Some(after), Some(_)) => SystemTime::now()
                    .duration_since(at)
                    .unwrap_or_default()
                    .saturating_sub(after),
                _ => Duration::ZERO,
            },
            on_demand: s.on_demand,
            priority: s.priority,
            served: gate.map_or(0, |g| g.admitted()),
        }
    }

    fn stop_for(&self, for_model: &str, yield_turn: bool) {
        let _ = self.inbox.send(Input::MakeRoom {
            for_model: for_model.to_owned(),
            yield_turn,
        });
    }

    fn memory_wait(&self, held_by: Option<Vec<String>>) {
        let _ = self.inbox.send(Input::MemoryWait(held_by));
    }
}

/// A boxed future, for the object-safe seam.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One started process, as the executor uses it.
pub(crate) trait Child: Send + Sync + 'static {
    fn pid(&self) -> i32;
    fn port(&self) -> u16;
    /// `/proc/<pid>/stat` field 22, for the state file.
    fn start_time(&self) -> u64;
    /// The bearer key it requires, if any.
    fn upstream_key(&self) -> Option<Arc<str>>;
    /// Spawn to `/health` 200, or why not within `timeout`.
    fn wait_ready(&self, timeout: Duration) -> BoxFuture<Result<Duration, ReadyFailure>>;
    /// Its exit; cancellation-safe, any number of waiters.
    fn wait_exit(&self) -> BoxFuture<ExitStatus>;
    /// SIGTERM, `grace`, SIGKILL.
    fn stop(&self, grace: Duration) -> BoxFuture<StopOutcome>;
    /// Probes it until it exits, handing each result to `report` (which
    /// returns `false` once nobody listens).
    fn probe_liveness(
        &self,
        policy: Liveness,
        report: Box<dyn Fn(Probe) -> bool + Send>,
    ) -> BoxFuture<()>;
}

/// The seam between the owner and the operating system.
pub(crate) trait Spawner: Send + Sync + 'static {
    fn spawn(&self, spec: &InstanceSpec, logs: &LogSink) -> Result<Arc<dyn Child>, String>;
}

/// The real seam: llama-server on tokio::process ([`super::process`]).
pub(crate) struct ProcessSpawner;

impl Spawner for ProcessSpawner {
    fn spawn(&self, spec: &InstanceSpec, logs: &LogSink) -> Result<Arc<dyn Child>, String> {
        // The spec was checked when applied, but the file may have gone
        // since (a running process keeps the one it opened): say so rather
        // than let llama-server fail to load it.
        crate::spec::validate::FileProbe::check_gguf(
            &crate::spec::validate::Disk,
            &spec.config.model,
        )?;
        let port = pick_free_port().map_err(|e| e.to_string())?;
        let process = spawn(&spec.launch, port, logs.clone()).map_err(|e| e.to_string())?;
        Ok(Arc::new(process))
    }
}

impl Child for RunningProcess {
    fn pid(&self) -> i32 {
        RunningProcess::pid(self)
    }

    fn port(&self) -> u16 {
        RunningProcess::port(self)
    }

    fn start_time(&self) -> u64 {
        RunningProcess::start_time(self)
    }

    fn upstream_key(&self) -> Option<Arc<str>> {
        Some(Arc::clone(RunningProcess::upstream_key(self)))
    }

    fn wait_ready(&self, timeout: Duration) -> BoxFuture<Result<Duration, ReadyFailure>> {
        let p = self.clone();
        Box::pin(async move {
            RunningProcess::wait_ready(&p, timeout)
                .await
                .map_err(|e| ReadyFailure {
                    bind_failure: e.is_bind_failure(),
                    message: e.to_string(),
                })
        })
    }

    fn wait_exit(&self) -> BoxFuture<ExitStatus> {
        let p = self.clone();
        Box::pin(async move { p.wait().await })
    }

    fn stop(&self, grace: Duration) -> BoxFuture<StopOutcome> {
        let p = self.clone();
        Box::pin(async move { RunningProcess::stop(&p, grace).await })
    }

    fn probe_liveness(
        &self,
        policy: Liveness,
        report: Box<dyn Fn(Probe) -> bool + Send>,
    ) -> BoxFuture<()> {
        Box::pin(liveness::run(self.clone(), policy, report))
    }
}

/// A process the executor started and has not forgotten.
struct Running {
    child: Arc<dyn Child>,
    gate: Arc<Gate>,
    started_at: SystemTime,
}

/// Starts the owner of one model. It starts the model at once unless the
/// model is on demand. With `predecessor` (an earlier owner of the same
/// model, still shutting down), nothing starts before it has finished, so
/// there are never two instances of one model.
///
/// With `arbiter`, every spawn first reserves the model's memory
/// ([`InstanceSpec::memory`]) and waits for it.
pub(crate) fn start_instance(
    spec: InstanceSpec,
    state_file: StateFile,
    backoff: Backoff,
    predecessor: Option<tokio::task::JoinHandle<()>>,
    arbiter: Option<Arbiter>,
) -> InstanceHandle {
    start_with(
        spec,
        state_file,
        backoff,
        predecessor,
        Arc::new(ProcessSpawner),
        arbiter,
    )
}

pub(crate) fn start_with(
    spec: InstanceSpec,
    state_file: StateFile,
    backoff: Backoff,
    predecessor: Option<tokio::task::JoinHandle<()>>,
    spawner: Arc<dyn Spawner>,
    arbiter: Option<Arbiter>,
) -> InstanceHandle {
    let (inbox_tx, inbox) = mpsc::unbounded_channel();
    let name = spec.config.name.clone();
    let logs = LogSink::new(name.as_str());
    let (core, first) = Core::new(&name, spec.target(), backoff, predecessor.is_some());
    let mut executor = Executor {
        name: name.clone(),
        spec,
        core,
        spawner,
        children: BTreeMap::new(),
        inbox: inbox_tx.clone(),
        logs: logs.clone(),
        state_file,
        publish: watch::channel(placeholder()).0,
        launches: History::default(),
        shutdown_replies: Vec::new(),
        reply: None,
        arbiter: arbiter.clone(),
        owner_id: crate::schedule::arbiter::next_owner_id(),
        memory_wait: None,
    };
    let (publish, snapshot) = watch::channel(executor.snapshot());
    executor.publish = publish;
    let handle = InstanceHandle {
        name: Arc::from(name.as_str()),
        inbox: inbox_tx.clone(),
        snapshot,
        waiting: Arc::new(AtomicUsize::new(0)),
        logs,
        launches: Arc::clone(&executor.launches),
    };
    if let Some(a) = &arbiter {
        a.register(&name, executor.owner_id, Arc::new(handle.clone()));
    }
    if let Some(p) = predecessor {
        tokio::spawn(async move {
            // Requests wait while the previous instance of this model leaves.
            let _ = p.await;
            let _ = inbox_tx.send(Input::Report(Event::PredecessorGone));
        });
    }
    tokio::spawn(async move {
        executor.perform_all(first);
        executor.publish();
        executor.run(inbox).await;
    });
    handle
}

/// Stands in until the first real snapshot exists.
fn placeholder() -> Snapshot {
    Snapshot {
        state: State::Idle,
        serving: None,
        launch_id: LaunchId(String::new()),
        target_launch_id: LaunchId(String::new()),
        pid: None,
        port: None,
        started_at: None,
        ready_after: None,
        restarts: 0,
        last_error: None,
        last_restart: None,
        queue_length: 0,
        wait_timeout: Duration::ZERO,
        on_demand: false,
        stopped_by_operator: false,
        drained: 0,
        cut: 0,
        priority: 0,
        no_room: 0,
        made_room: 0,
        swap_fallback: None,
        waiting_for_memory: None,
    }
}

struct Executor {
    name: String,
    /// The spec of the core's target (what [`Effect::Spawn`] starts).
    spec: InstanceSpec,
    core: Core,
    spawner: Arc<dyn Spawner>,
    children: BTreeMap<ProcId, Running>,
    inbox: mpsc::UnboundedSender<Input>,
    logs: LogSink,
    state_file: StateFile,
    publish: watch::Sender<Snapshot>,
    launches: History,
    shutdown_replies: Vec<oneshot::Sender<()>>,
    /// The reply to the operator action being handled.
    reply: Option<oneshot::Sender<Result<(), OperateError>>>,
    /// Reserves memory before each spawn; `None`: no budget is kept.
    arbiter: Option<Arbiter>,
    /// This owner's number with the arbiter.
    owner_id: u64,
    /// The models whose memory its start waits for, if it waits.
    memory_wait: Option<Vec<String>>,
}

impl Executor {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Input>) {
        loop {
            let deadline = self.core.deadline();
            let input = tokio::select! {
                Some(input) = inbox.recv() => input,
                () = sleep_until(deadline) => Input::Report(Event::Timeout),
            };
            let event = match input {
                Input::Replace(spec) if !self.core.is_stopped() => {
                    self.spec = *spec;
                    Event::Replace(self.spec.target())
                }
                Input::Settings(spec) => {
                    self.spec = *spec;
                    Event::Settings(self.spec.target())
                }
                Input::Replace(_) => continue,
                Input::Demand => Event::Demand,
                Input::Operate(action, reply) => {
                    self.reply = Some(reply);
                    Event::Operate(action)
                }
                Input::Shutdown(reply) => {
                    self.shutdown_replies.push(reply);
                    Event::Shutdown
                }
                Input::Report(event) => event,
                Input::Granted(proc, grant) => match self.granted(proc, grant) {
                    Some(event) => event,
                    None => {
                        self.publish();
                        continue;
                    }
                },
                Input::MemoryWait(held_by) => {
                    self.memory_wait = held_by;
                    self.publish();
                    continue;
                }
                Input::MakeRoom {
                    for_model,
                    yield_turn,
                } => match self.make_room(for_model, yield_turn) {
                    Some(event) => event,
                    None => {
                        // Wakes a request turned away while the gate was
                        // shut for a moment.
                        self.publish();
                        continue;
                    }
                },
            };
            self.handle(event);
            self.publish();
            if self.core.is_stopped() {
                if let Some(a) = &self.arbiter {
                    a.unregister(&self.name, self.owner_id);
                }
                for reply in self.shutdown_replies.drain(..) {
                    let _ = reply.send(());
                }
                return;
            }
        }
    }

    /// Steps the core through `event` and whatever its effects answer at once.
    fn handle(&mut self, event: Event) {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let retired = match &event {
                Event::Retired { proc, reaped, .. } => {
                    if *reaped {
                        self.record_exit(*proc);
                    }
                    self.memory_gone(*proc);
                    Some(*proc)
                }
                Event::Exited { proc, .. } => {
                    self.record_exit(*proc);
                    if self.core.serving().is_some_and(|p| p.id == *proc) {
                        self.memory_gone(*proc);
                    }
                    None
                }
                _ => None,
            };
            let loaded = match &event {
                Event::Ready {
                    proc,
                    result: Ok(_),
                } => Some(*proc),
                _ => None,
            };
            let effects = self.core.step(event, Instant::now());
            if let Some(proc) = loaded
                && self.core.serving().is_some_and(|p| p.id == proc)
                && let Some(a) = &self.arbiter
            {
                a.loaded(&self.name, self.holder(proc), Some(self.measured()));
            }
            for effect in effects {
                self.perform(effect, &mut queue);
            }
            if let Some(proc) = retired {
                self.children.remove(&proc);
            }
        }
    }

    fn perform_all(&mut self, effects: Vec<Effect>) {
        let mut queue = VecDeque::new();
        for effect in effects {
            self.perform(effect, &mut queue);
        }
        while let Some(event) = queue.pop_front() {
            self.handle(event);
        }
    }

    fn perform(&mut self, effect: Effect, queue: &mut VecDeque<Event>) {
        match effect {
            Effect::Spawn {
                proc,
                launch,
                beside,
            } => {
                debug_assert_eq!(launch, self.spec.id, "the core spawns its target");
                if let Some(arbiter) = &self.arbiter {
                    // The spawn waits for the memory; the answer comes back
                    // as `Input::Granted`.
                    let answer = arbiter.reserve(Ask {
                        model: self.name.clone(),
                        proc: crate::schedule::arbiter::holder(self.owner_id, proc),
                        launch_id: self.spec.id.to_string(),
                        need: self.spec.memory.need.clone(),
                        declared: self.spec.memory.declared,
                        beside,
                        on_demand: self.spec.config.lifecycle.on_demand,
                    });
                    let inbox = self.inbox.clone();
                    tokio::spawn(async move {
                        let grant = answer.await;
                        let _ = inbox.send(Input::Granted(proc, grant));
                    });
                    return;
                }
                queue.push_back(self.spawn_now(proc, launch));
            }
            Effect::Record { proc } => {
                let Some(r) = self.children.get(&proc) else {
                    return;
                };
                let record = InstanceRecord {
                    model: self.name.clone(),
                    pid: r.child.pid(),
                    start_time: r.child.start_time(),
                    launch_id: self.spec.id.clone(),
                    port: r.child.port(),
                };
                if let Err(e) = self.state_file.record(record) {
                    let message = format!(
                        "could not record pid {} in the state file ({e}): if the daemon is killed, this llama-server is not reaped at its next start",
                        r.child.pid()
                    );
                    tracing::warn!(model = %self.name, "{message}");
                    self.logs.push(LogStream::Daemon, &message);
                }
            }
            Effect::WaitReady { proc, timeout } => {
                let Some(r) = self.children.get(&proc) else {
                    return;
                };
                let ready = r.child.wait_ready(timeout);
                let inbox = self.inbox.clone();
                tokio::spawn(async move {
                    let result = ready.await;
                    let _ = inbox.send(Input::Report(Event::Ready { proc, result }));
                });
            }
            Effect::Watch { proc } => {
                let Some(r) = self.children.get(&proc) else {
                    return;
                };
                let exit = r.child.wait_exit();
                let inbox = self.inbox.clone();
                tokio::spawn(async move {
                    let status = exit.await;
                    let _ = inbox.send(Input::Report(Event::Exited { proc, status }));
                });
                let inbox = self.inbox.clone();
                tokio::spawn(r.child.probe_liveness(
                    self.spec.config.lifecycle.liveness,
                    Box::new(move |probe| {
                        inbox
                            .send(Input::Report(Event::Liveness { proc, probe }))
                            .is_ok()
                    }),
                ));
            }
            Effect::Retire { proc, drain } => {
                let Some(r) = self.children.get(&proc) else {
                    if let Some(a) = &self.arbiter {
                        a.cancel(&self.name, self.holder(proc));
                    }
                    queue.push_back(Event::Retired {
                        proc,
                        reaped: true,
                        drained: 0,
                        cut: 0,
                    });
                    return;
                };
                let (child, gate) = (Arc::clone(&r.child), Arc::clone(&r.gate));
                if let Some(a) = &self.arbiter {
                    a.stopping(&self.name, self.holder(proc));
                }
                let grace = self.spec.config.lifecycle.stop_grace;
                let inbox = self.inbox.clone();
                let name = self.name.clone();
                tokio::spawn(async move {
                    let drained = gate.drain(drain).await;
                    if drained.cut > 0 {
                        tracing::warn!(model = %name, cut = drained.cut, "drain timeout ({drain:?}) ran out; cutting in-flight requests");
                    }
                    let outcome = child.stop(grace).await;
                    if outcome.was_killed() {
                        tracing::warn!(model = %name, pid = child.pid(), "llama-server ignored SIGTERM for {grace:?}; killed");
                    }
                    let _ = inbox.send(Input::Report(Event::Retired {
                        proc,
                        reaped: outcome.status().is_some(),
                        drained: drained.drained as u64,
                        cut: drained.cut as u64,
                    }));
                });
            }
            Effect::Forget { proc } => {
                if let Some(r) = self.children.remove(&proc) {
                    let _ = self.state_file.remove(r.child.pid());
                }
            }
            Effect::MeasureIdle { proc } => {
                if let Some(r) = self.children.get(&proc) {
                    queue.push_back(Event::IdleFor {
                        proc,
                        idle: r.gate.idle_for(),
                    });
                }
            }
            Effect::Reply(result) => {
                if let Some(reply) = self.reply.take() {
                    let _ = reply.send(result);
                }
            }
            Effect::Log(line) => {
                tracing::info!(model = %self.name, "{line}");
                self.logs.push(LogStream::Daemon, &line);
            }
            Effect::Stopped => {}
        }
    }

    /// Starts process `proc` of the target; the answer for the core.
    fn spawn_now(&mut self, proc: ProcId, launch: LaunchId) -> Event {
        let spawned_at = SystemTime::now();
        let result = match self.spawner.spawn(&self.spec, &self.logs) {
            Ok(child) => {
                let pid = child.pid();
                tracing::info!(model = %self.name, pid, port = child.port(), "starting llama-server");
                self.record_launch(pid, launch, spawned_at);
                let gate = Gate::with_key(child.port(), child.upstream_key());
                if let Some(a) = self.arbiter.clone() {
                    // A request leaving has no message of its own: without
                    // this a waiting load would see the model idle only at
                    // the arbiter's next tick.
                    gate.call_when_empty(move || a.look_again());
                }
                self.children.insert(
                    proc,
                    Running {
                        gate,
                        child,
                        started_at: SystemTime::now(),
                    },
                );
                Ok(pid)
            }
            Err(e) => {
                if let Some(a) = &self.arbiter {
                    a.cancel(&self.name, self.holder(proc));
                }
                Err(e)
            }
        };
        Event::Spawned { proc, result }
    }

    /// The arbiter's answer for `proc`: the event for the core, if any (the
    /// core may have moved on while the memory was being found).
    fn granted(&mut self, proc: ProcId, grant: Grant) -> Option<Event> {
        if !self.core.awaits_spawn(proc) || self.children.contains_key(&proc) {
            if let Some(a) = &self.arbiter {
                a.cancel(&self.name, self.holder(proc));
            }
            return None;
        }
        Some(match grant {
            Grant::Granted => self.spawn_now(proc, self.spec.id.clone()),
            Grant::NoRoom(reason) => Event::NoRoom { proc, reason },
            Grant::NotBeside(reason) => {
                if let Some(a) = &self.arbiter {
                    a.fell_back();
                }
                Event::NotBeside { proc, reason }
            }
            Grant::Withdrawn => Event::Withdrawn { proc },
        })
    }

    /// The arbiter asks the model to stop for another. It closes the gate
    /// here, on the owner's task, so the check that no request is inside
    /// and the close are one step: an eviction decided on a stale reading
    /// is refused, never a cut request.
    fn make_room(&mut self, for_model: String, yield_turn: bool) -> Option<Event> {
        if !self.spec.config.lifecycle.on_demand {
            return None;
        }
        let serving = self.core.serving()?;
        let gate = &self.children.get(&serving.id)?.gate;
        if yield_turn {
            gate.close();
        } else if !gate.close_if_idle() {
            tracing::debug!(model = %self.name, "a request came in; not stopping for {for_model}");
            return None;
        }
        if let Some(a) = &self.arbiter {
            a.made_room(yield_turn);
        }
        Some(Event::MakeRoom {
            for_model,
            yield_turn,
        })
    }

    /// The arbiter's number for `proc`.
    fn holder(&self, proc: ProcId) -> u64 {
        crate::schedule::arbiter::holder(self.owner_id, proc)
    }

    /// `proc` has exited: the arbiter watches for its memory to come back.
    fn memory_gone(&self, proc: ProcId) {
        if let Some(a) = &self.arbiter {
            match self.children.get(&proc) {
                Some(r) => a.gone(&self.name, self.holder(proc), r.child.pid().unsigned_abs()),
                None => a.cancel(&self.name, self.holder(proc)),
            }
        }
    }

    /// What the current llama-server said it allocated per device, plus
    /// each GPU backend's overhead (the log does not show the runtime's).
    fn measured(&self) -> Bytes {
        self.logs
            .memory()
            .devices
            .iter()
            .map(|(d, parts)| {
                let overhead = if d == crate::schedule::HOST {
                    0
                } else {
                    self.spec.memory.overheads.of_device(d)
                };
                (d.clone(), parts.total() + overhead)
            })
            .collect()
    }

    /// Notes the spawn in the launch history.
    fn record_launch(&self, pid: i32, launch_id: LaunchId, spawned_at: SystemTime) {
        {
            let mut history = self.launches.lock().unwrap_or_else(PoisonError::into_inner);
            if history.len() == LAUNCH_HISTORY {
                history.pop_front();
            }
            history.push_back(LaunchRecord {
                pid,
                launch_id,
                spawned_at: epoch_secs(spawned_at),
                exited_at: None,
            });
        }
    }

    /// Notes in the launch history that `proc` has been reaped. Called when
    /// its exit or retirement is handled, before anything new can spawn, so
    /// the record never shows a gap that was not there.
    fn record_exit(&self, proc: ProcId) {
        let Some(pid) = self.children.get(&proc).map(|r| r.child.pid()) else {
            return;
        };
        let at = epoch_secs(SystemTime::now());
        let mut history = self.launches.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = history
            .iter_mut()
            .rev()
            .find(|r| r.pid == pid && r.exited_at.is_none())
        {
            r.exited_at = Some(at);
        }
    }

    fn snapshot(&self) -> Snapshot {
        let core = &self.core;
        let current = core
            .current()
            .and_then(|p| Some((p, self.children.get(&p.id)?)));
        let serving = core
            .serving()
            .filter(|p| p.ready_after.is_some())
            .and_then(|p| self.children.get(&p.id))
            .map(|r| Arc::clone(&r.gate));
        let l = &core.target().lifecycle;
        let since = |at: Instant| SystemTime::now() - Instant::now().saturating_duration_since(at);
        Snapshot {
            state: State::of(core.phase()),
            serving,
            launch_id: current
                .map_or_else(|| core.target().launch.clone(), |(p, _)| p.launch.clone()),
            target_launch_id: core.target().launch.clone(),
            pid: current.map(|(_, r)| r.child.pid()),
            port: current.map(|(_, r)| r.child.port()),
            started_at: current.map(|(_, r)| r.started_at),
            ready_after: current.and_then(|(p, _)| p.ready_after),
            restarts: core.restarts,
            last_error: core.last_error.clone(),
            last_restart: core
                .last_restart
                .as_ref()
                .map(|(at, why)| (since(*at), why.clone())),
            queue_length: l.queue_length,
            wait_timeout: l.wait_timeout,
            on_demand: l.on_demand,
            stopped_by_operator: matches!(core.phase(), Phase::Idle(Down::Operator)),
            drained: core.drained,
            cut: core.cut,
            priority: l.priority,
            no_room: core.no_room,
            made_room: core.made_room,
            swap_fallback: core.fallback.clone(),
            // Only while a start is pending: a late message cannot leave it.
            waiting_for_memory: self
                .memory_wait
                .clone()
                .filter(|_| matches!(core.phase(), Phase::Starting(p) if p.pid.is_none())),
        }
    }

    fn publish(&self) {
        self.publish.send_replace(self.snapshot());
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
