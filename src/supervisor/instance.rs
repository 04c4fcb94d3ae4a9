//! The owner of one model's llama-server: one task per model, and the only
//! place that decides what happens to its processes.
//!
//! Everything that can happen to a model arrives as an [`Event`] on the
//! owner's queue and is handled in one `match`, one at a time, against the
//! owner's own state. Slow work (waiting for readiness, draining, stopping)
//! runs in helper tasks that report back with the process generation they
//! were about, so a late report about a process that is already gone is
//! recognised and ignored instead of acted on.
//!
//! Others see the model through an [`InstanceHandle`]: a [`Snapshot`] of its
//! state (for the status API) and [`InstanceHandle::acquire`] (for the
//! proxy), which waits for a serving process and returns a [`Lease`] that
//! keeps it from being stopped mid-request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::backoff::{Backoff, BackoffPolicy};
use super::gate::{DrainOutcome, Gate, Lease};
use super::leftovers::{InstanceRecord, StateFile};
use super::liveness;
use super::logs::{LogSink, LogStream};
use super::ports::pick_free_port;
use super::process::{RunningProcess, StopOutcome, spawn};
use super::readiness::ReadyError;
use crate::plan::{Launch, LaunchId};
use crate::spec::{ModelConfig, RestartPolicy, SwapStrategy};

/// What an owner is asked to run: the model's options and its launch.
#[derive(Clone, Debug)]
pub struct InstanceSpec {
    pub config: ModelConfig,
    pub launch: Launch,
    pub id: LaunchId,
}

impl InstanceSpec {
    pub fn new(config: ModelConfig, program: &std::path::Path) -> InstanceSpec {
        let launch = Launch::for_model(&config, program);
        let id = launch.identity();
        InstanceSpec { config, launch, id }
    }
}

/// A model's state as people see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Nothing runs: an on-demand model waiting for its first request, or
    /// a model whose restart policy let it stay down.
    Idle,
    /// llama-server is loading the model.
    Starting,
    /// Serving requests.
    Ready,
    /// `stop_first` replacement in progress: requests wait for the new process.
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
}

/// What the owner publishes after every event.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub state: State,
    /// Where requests go now; `None` while they must wait.
    pub serving: Option<Arc<Gate>>,
    /// The launch the current process runs (the target's while none runs).
    pub launch_id: LaunchId,
    /// The launch the owner is working towards; differs from `launch_id`
    /// while a replacement loads.
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
    /// Requests that were in flight when a drain began and finished.
    pub drained: u64,
    /// Requests cut because a drain timed out.
    pub cut: u64,
}

#[derive(Debug)]
enum Command {
    Apply(Box<InstanceSpec>),
    /// A request arrived for a model that is not running.
    Demand,
    Shutdown(oneshot::Sender<()>),
    /// A person pressed start, stop or restart (status page, API).
    Operate(OperatorAction, oneshot::Sender<Result<(), OperateError>>),
}

/// What an operator may ask of a model through its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorAction {
    /// Start it now if it is not running (or retry a failing one now).
    Start,
    /// Drain and stop it; it stays down until started, restarted, or its
    /// launch changes in the spec.
    Stop,
    /// Stop it and start it again.
    Restart,
}

/// Why an operator action was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OperateError {
    #[error("model {model} is being removed")]
    Gone { model: String },
}

/// Everything that can happen to a model.
#[derive(Debug)]
enum Event {
    Command(Command),
    /// A process answered `/health` 200, or never will.
    ReadyResult {
        generation: u64,
        result: Result<Duration, ReadyError>,
    },
    /// A ready process exited.
    Exited {
        generation: u64,
        status: std::process::ExitStatus,
    },
    /// A process we retired has been drained and stopped.
    Retired {
        generation: u64,
        pid: i32,
        outcome: StopOutcome,
        drain: DrainOutcome,
    },
    /// What a liveness probe of a ready process found.
    Liveness {
        generation: u64,
        probe: liveness::Probe,
    },
    /// A backoff delay or an idle check is due.
    Timer {
        epoch: u64,
        kind: TimerKind,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerKind {
    /// Start again after a failure.
    Retry = 0,
    /// Start a blue/green replacement again after it failed.
    RetryNext = 1,
    IdleCheck = 2,
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
    #[error("model {model} failed: {reason}")]
    Failed { model: String, reason: String },
    #[error("model {model} has been removed")]
    Gone { model: String },
}

/// A cheap, cloneable view of one owner.
#[derive(Clone, Debug)]
pub struct InstanceHandle {
    name: Arc<str>,
    events: mpsc::UnboundedSender<Event>,
    snapshot: watch::Receiver<Snapshot>,
    waiting: Arc<AtomicUsize>,
    logs: LogSink,
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

    /// A watch on the snapshot, to await changes.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.clone()
    }

    pub fn logs(&self) -> &LogSink {
        &self.logs
    }

    /// Requests waiting for this model to become ready.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Applies a new spec for this model: options that only steer the daemon
    /// take effect at once; a new launch identity replaces the process (by
    /// the model's swap strategy).
    pub fn apply(&self, spec: InstanceSpec) {
        let _ = self
            .events
            .send(Event::Command(Command::Apply(Box::new(spec))));
    }

    /// Drains and stops the model's processes and ends the owner.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self
            .events
            .send(Event::Command(Command::Shutdown(tx)))
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Performs an operator's action inside the owner (so it is decided
    /// against the owner's state, never a stale read).
    pub async fn operate(&self, action: OperatorAction) -> Result<(), OperateError> {
        let gone = || OperateError::Gone {
            model: self.name.to_string(),
        };
        let (tx, rx) = oneshot::channel();
        self.events
            .send(Event::Command(Command::Operate(action, tx)))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Waits (bounded by the model's queue length and wait timeout) for a
    /// serving process and enters it. Starts an on-demand model.
    pub async fn acquire(&self) -> Result<Lease, AcquireError> {
        let mut rx = self.snapshot.clone();
        // Fast path: serving now.
        if let Some(lease) = rx.borrow().serving.as_ref().and_then(Gate::enter) {
            return Ok(lease);
        }
        let (limit, wait) = {
            let s = rx.borrow();
            (s.queue_length, s.wait_timeout)
        };
        // A request for an idle model starts it even when it cannot wait
        // for it (queue_length 0): the client's retry will find it up.
        if rx.borrow().state == State::Idle && rx.borrow().on_demand {
            let _ = self.events.send(Event::Command(Command::Demand));
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
                    State::Idle if s.on_demand => {
                        let _ = self.events.send(Event::Command(Command::Demand));
                        None
                    }
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
                    return Err(AcquireError::Timeout {
                        model: self.name.to_string(),
                        waited: wait,
                    });
                }
            }
        }
    }
}

/// One llama-server process the owner started.
struct Proc {
    generation: u64,
    process: RunningProcess,
    gate: Arc<Gate>,
    id: LaunchId,
    ready_after: Option<Duration>,
    started_at: SystemTime,
    /// Bind failures in a row (port raced away), retried without backoff.
    bind_retries: u32,
    liveness: liveness::Tracker,
}

struct Owner {
    name: String,
    spec: InstanceSpec,
    state: State,
    /// The process serving (or loading to serve).
    current: Option<Proc>,
    /// A blue/green replacement loading beside `current`.
    next: Option<Proc>,
    /// Processes being drained and stopped.
    retiring: Vec<u64>,
    /// Start `spec` once the retiring processes are gone (`stop_first`).
    start_after_retire: bool,
    shutdown_replies: Vec<oneshot::Sender<()>>,
    generation: u64,
    /// Per timer kind; a timer fires only if its kind was not re-armed or
    /// cancelled since it was set.
    timer_epochs: [u64; 3],
    backoff: Backoff,
    restarts: u64,
    last_error: Option<String>,
    last_restart: Option<(SystemTime, String)>,
    drained: u64,
    cut: u64,
    logs: LogSink,
    state_file: StateFile,
    events: mpsc::UnboundedSender<Event>,
    publish: watch::Sender<Snapshot>,
}

/// Starts the owner of one model. It starts the model at once unless the
/// model is on demand. With `predecessor` (an earlier owner of the same
/// model, still shutting down), nothing starts before it has finished, so
/// there are never two instances of one model.
pub fn start_instance(
    spec: InstanceSpec,
    state_file: StateFile,
    backoff: BackoffPolicy,
    predecessor: Option<tokio::task::JoinHandle<()>>,
) -> InstanceHandle {
    let (events, mut inbox) = mpsc::unbounded_channel();
    let name = spec.config.name.clone();
    let logs = LogSink::new(name.as_str());
    let initial = Snapshot {
        state: State::Idle,
        serving: None,
        launch_id: spec.id.clone(),
        target_launch_id: spec.id.clone(),
        pid: None,
        port: None,
        started_at: None,
        ready_after: None,
        restarts: 0,
        last_error: None,
        last_restart: None,
        queue_length: spec.config.lifecycle.queue_length,
        wait_timeout: spec.config.lifecycle.wait_timeout,
        on_demand: spec.config.lifecycle.on_demand,
        drained: 0,
        cut: 0,
    };
    let (publish, snapshot) = watch::channel(initial);
    let backoff = Backoff::new(backoff).unwrap_or_else(|_| {
        // The policy is ours, not the user's; fall back rather than fail.
        Backoff::new(BackoffPolicy::default())
            .unwrap_or_else(|_| unreachable!("the default backoff policy is valid"))
    });
    let handle = InstanceHandle {
        name: Arc::from(name.as_str()),
        events: events.clone(),
        snapshot,
        waiting: Arc::new(AtomicUsize::new(0)),
        logs: logs.clone(),
    };
    let mut owner = Owner {
        name,
        spec,
        state: State::Idle,
        current: None,
        next: None,
        retiring: Vec::new(),
        start_after_retire: false,
        shutdown_replies: Vec::new(),
        generation: 0,
        timer_epochs: [0; 3],
        backoff,
        restarts: 0,
        last_error: None,
        last_restart: None,
        drained: 0,
        cut: 0,
        logs,
        state_file,
        events,
        publish,
    };
    tokio::spawn(async move {
        if let Some(p) = predecessor {
            // Requests wait while the previous instance of this model leaves.
            owner.state = State::Swapping;
            owner.publish();
            let _ = p.await;
            owner.state = State::Idle;
        }
        if !owner.spec.config.lifecycle.on_demand {
            owner.start();
        }
        owner.publish();
        while let Some(event) = inbox.recv().await {
            owner.handle(event);
            owner.publish();
            if owner.state == State::Stopped {
                for reply in owner.shutdown_replies.drain(..) {
                    let _ = reply.send(());
                }
                break;
            }
        }
    });
    handle
}

impl Owner {
    fn handle(&mut self, event: Event) {
        match event {
            Event::Command(Command::Apply(spec)) => self.apply(*spec),
            Event::Command(Command::Demand) => {
                if self.state == State::Idle && self.spec.config.lifecycle.on_demand {
                    self.start();
                }
            }
            Event::Command(Command::Operate(action, reply)) => {
                let _ = reply.send(self.operate(action));
            }
            Event::Command(Command::Shutdown(reply)) => {
                self.shutdown_replies.push(reply);
                self.state = State::Stopping;
                self.start_after_retire = false;
                self.timer_epochs = self.timer_epochs.map(|e| e + 1);
                if let Some(p) = self.next.take() {
                    self.retire(p);
                }
                if let Some(p) = self.current.take() {
                    self.retire(p);
                }
                self.finish_if_stopped();
            }
            Event::ReadyResult { generation, result } => self.on_ready_result(generation, result),
            Event::Exited { generation, status } => self.on_exited(generation, status),
            Event::Liveness { generation, probe } => self.on_liveness(generation, &probe),
            Event::Retired {
                generation,
                pid,
                outcome,
                drain,
            } => self.on_retired(generation, pid, outcome, drain),
            Event::Timer { epoch, kind } if epoch == self.timer_epochs[kind as usize] => match kind
            {
                // A failed process may still be on its way out: wait for it.
                TimerKind::Retry
                    if matches!(self.state, State::Backoff | State::Failed)
                        && !self.retiring.is_empty() =>
                {
                    self.start_after_retire = true;
                }
                TimerKind::Retry if matches!(self.state, State::Backoff | State::Failed) => {
                    self.start()
                }
                TimerKind::RetryNext => {
                    let stale = self.current.as_ref().is_some_and(|p| p.id != self.spec.id);
                    if self.state == State::Ready && self.next.is_none() && stale {
                        self.start_next();
                    }
                }
                TimerKind::IdleCheck => self.check_idle(),
                TimerKind::Retry => {}
            },
            Event::Timer { .. } => {} // superseded
        }
    }

    fn operate(&mut self, action: OperatorAction) -> Result<(), OperateError> {
        if matches!(self.state, State::Stopping | State::Stopped) {
            return Err(OperateError::Gone {
                model: self.name.clone(),
            });
        }
        self.logs.push(
            LogStream::Daemon,
            &format!("operator: {action:?}").to_lowercase(),
        );
        match action {
            OperatorAction::Start => {
                if matches!(self.state, State::Idle | State::Backoff | State::Failed)
                    && self.current.is_none()
                {
                    self.backoff.reset();
                    if self.retiring.is_empty() {
                        self.start();
                    } else {
                        self.state = State::Swapping;
                        self.start_after_retire = true;
                    }
                }
            }
            OperatorAction::Stop | OperatorAction::Restart => {
                self.cancel(TimerKind::Retry);
                self.cancel(TimerKind::RetryNext);
                self.cancel(TimerKind::IdleCheck);
                self.start_after_retire = false;
                if let Some(p) = self.next.take() {
                    self.retire(p);
                }
                if let Some(p) = self.current.take() {
                    self.retire(p);
                }
                self.last_error = None;
                self.state = State::Idle;
                if action == OperatorAction::Restart {
                    self.backoff.reset();
                    if self.retiring.is_empty() {
                        self.start();
                    } else {
                        self.state = State::Swapping;
                        self.start_after_retire = true;
                    }
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, spec: InstanceSpec) {
        if matches!(self.state, State::Stopping | State::Stopped) {
            return;
        }
        let relaunch = spec.id != self.spec.id;
        self.spec = spec;
        if !relaunch {
            self.schedule_idle_check();
            return;
        }
        // A changed model gets a fresh start: forget earlier failures.
        self.backoff.reset();
        self.cancel(TimerKind::Retry);
        self.cancel(TimerKind::RetryNext);
        self.last_error = None;
        self.logs.push(
            LogStream::Daemon,
            &format!("spec changed: launch id {}", self.spec.id),
        );
        if let Some(p) = self.next.take() {
            self.retire(p);
        }
        let serving = self
            .current
            .as_ref()
            .is_some_and(|p| p.ready_after.is_some());
        match self.current.take() {
            // Still loading the old launch: nobody depends on it. Stop it,
            // and start the new one once it is reaped (never two at once).
            Some(p) if !serving => {
                self.retire(p);
                self.state = State::Swapping;
                self.start_after_retire = true;
            }
            Some(p) => match self.spec.config.lifecycle.swap {
                SwapStrategy::BlueGreen => {
                    self.current = Some(p);
                    self.start_next();
                }
                SwapStrategy::StopFirst => {
                    self.state = State::Swapping;
                    self.start_after_retire = true;
                    self.retire(p);
                }
            },
            None if self.state == State::Idle && self.spec.config.lifecycle.on_demand => {}
            // stop_first: an older process is still on its way out.
            None if !self.retiring.is_empty()
                && self.spec.config.lifecycle.swap == SwapStrategy::StopFirst =>
            {
                self.state = State::Swapping;
                self.start_after_retire = true;
            }
            None => self.start(),
        }
    }

    fn spawn_proc(&mut self) -> Result<Proc, String> {
        self.generation += 1;
        // The spec was checked when applied, but the file may have gone
        // since (a running process keeps the one it opened): say so rather
        // than let llama-server fail to load it.
        crate::spec::validate::FileProbe::check_gguf(
            &crate::spec::validate::Disk,
            &self.spec.config.model,
        )?;
        let port = pick_free_port().map_err(|e| e.to_string())?;
        let process =
            spawn(&self.spec.launch, port, self.logs.clone()).map_err(|e| e.to_string())?;
        if let Err(e) = self.state_file.record(InstanceRecord::for_process(
            &self.name,
            self.spec.id.clone(),
            &process,
        )) {
            let message = format!(
                "could not record pid {} in the state file ({e}): if the daemon is killed, this llama-server is not reaped at its next start",
                process.pid()
            );
            tracing::warn!(model = %self.name, "{message}");
            self.logs.push(LogStream::Daemon, &message);
        }
        let generation = self.generation;
        let events = self.events.clone();
        let timeout = self.spec.config.lifecycle.ready_timeout;
        let p = process.clone();
        tokio::spawn(async move {
            let result = p.wait_ready(timeout).await;
            let _ = events.send(Event::ReadyResult { generation, result });
        });
        let gate = Gate::with_key(port, Some(Arc::clone(process.upstream_key())));
        Ok(Proc {
            generation,
            process,
            gate,
            id: self.spec.id.clone(),
            ready_after: None,
            started_at: SystemTime::now(),
            bind_retries: 0,
            liveness: liveness::Tracker::default(),
        })
    }

    fn start(&mut self) {
        self.cancel(TimerKind::Retry);
        match self.spawn_proc() {
            Ok(p) => {
                tracing::info!(model = %self.name, pid = p.process.pid(), port = p.gate.port(), "starting llama-server");
                self.current = Some(p);
                self.state = State::Starting;
            }
            Err(e) => self.failed_start(e.to_string()),
        }
    }

    fn start_next(&mut self) {
        match self.spawn_proc() {
            Ok(p) => {
                tracing::info!(model = %self.name, pid = p.process.pid(), "starting the replacement beside the serving instance");
                self.next = Some(p);
            }
            Err(e) => {
                self.last_error = Some(format!("could not start the replacement: {e}"));
                let decision = self.backoff.on_failure(Instant::now());
                self.schedule(decision.delay, TimerKind::RetryNext);
            }
        }
    }

    fn on_ready_result(&mut self, generation: u64, result: Result<Duration, ReadyError>) {
        let is_current = self
            .current
            .as_ref()
            .is_some_and(|p| p.generation == generation);
        let is_next = self
            .next
            .as_ref()
            .is_some_and(|p| p.generation == generation);
        if !is_current && !is_next {
            return; // about a process already retired
        }
        match result {
            Ok(latency) => {
                tracing::info!(model = %self.name, ready_ms = latency.as_millis() as u64, "ready");
                self.backoff.on_healthy(Instant::now());
                self.last_error = None;
                if is_next {
                    // Blue/green: the new process takes the traffic, the
                    // old one drains.
                    if let Some(old) = self.current.take() {
                        self.retire(old);
                    }
                    self.current = self.next.take();
                }
                if let Some(p) = self.current.as_mut() {
                    p.ready_after = Some(latency);
                    self.watch_exit(generation);
                    self.watch_liveness(generation);
                }
                self.state = State::Ready;
                self.schedule_idle_check();
            }
            Err(e) => {
                let bind_failure = e.is_bind_failure();
                let slot = if is_next {
                    self.next.take()
                } else {
                    self.current.take()
                };
                let retries = slot.as_ref().map_or(0, |p| p.bind_retries);
                if let Some(p) = slot {
                    self.retire(p);
                }
                if bind_failure && retries < 3 {
                    // Someone took the port between picking and binding.
                    self.logs.push(
                        LogStream::Daemon,
                        "port taken before llama-server bound it; retrying on another",
                    );
                    if is_next {
                        self.start_next();
                        if let Some(p) = self.next.as_mut() {
                            p.bind_retries = retries + 1;
                        }
                    } else {
                        self.start();
                        if let Some(p) = self.current.as_mut() {
                            p.bind_retries = retries + 1;
                        }
                    }
                    return;
                }
                let message = format!("start failed: {e}");
                if is_next {
                    // The old process keeps serving; the edit is reported.
                    tracing::error!(model = %self.name, "{message}; the previous instance keeps serving");
                    self.last_error = Some(message);
                    self.restarts += 1;
                    let decision = self.backoff.on_failure(Instant::now());
                    self.schedule(decision.delay, TimerKind::RetryNext);
                } else {
                    self.failed_start(message);
                }
            }
        }
    }

    fn failed_start(&mut self, message: String) {
        tracing::error!(model = %self.name, "{message}");
        self.restarts += 1;
        self.last_restart = Some((SystemTime::now(), message.clone()));
        self.last_error = Some(message);
        let decision = self.backoff.on_failure(Instant::now());
        self.state = if decision.failed {
            State::Failed
        } else {
            State::Backoff
        };
        self.logs.push(
            LogStream::Daemon,
            &format!(
                "retrying in {:?} (failure {} in a row)",
                decision.delay, decision.failures
            ),
        );
        self.schedule(decision.delay, TimerKind::Retry);
    }

    fn watch_exit(&self, generation: u64) {
        if let Some(p) = &self.current {
            let process = p.process.clone();
            let events = self.events.clone();
            tokio::spawn(async move {
                let status = process.wait().await;
                let _ = events.send(Event::Exited { generation, status });
            });
        }
    }

    fn watch_liveness(&self, generation: u64) {
        if let Some(p) = &self.current {
            tokio::spawn(liveness::run(
                p.process.clone(),
                self.spec.config.lifecycle.liveness,
                self.events.clone(),
                move |probe| Event::Liveness { generation, probe },
            ));
        }
    }

    /// A ready process that stopped answering is replaced like one that
    /// crashed; its in-flight requests cannot finish, so it is not drained.
    fn on_liveness(&mut self, generation: u64, probe: &liveness::Probe) {
        let policy = self.spec.config.lifecycle.liveness;
        let Some(p) = self.current.as_mut().filter(|p| p.generation == generation) else {
            return; // about a process already retired
        };
        let verdict = p.liveness.observe(&policy, probe);
        let pid = p.process.pid();
        match verdict {
            liveness::Verdict::Alive => {}
            liveness::Verdict::Busy => self.logs.push(
                LogStream::Daemon,
                &format!(
                    "liveness probe failed while pid {pid} is busy (using CPU); not counted: {}",
                    probe.failure.as_deref().unwrap_or("")
                ),
            ),
            liveness::Verdict::Suspect(n) => self.logs.push(
                LogStream::Daemon,
                &format!(
                    "liveness probe {n}/{} of pid {pid} failed: {}",
                    policy.failures,
                    probe.failure.as_deref().unwrap_or("")
                ),
            ),
            liveness::Verdict::Dead(why) => {
                let Some(p) = self.current.take() else {
                    return;
                };
                // failed_start logs it as an error.
                let message = format!("llama-server (pid {pid}) {why}; replaced");
                self.logs.push(LogStream::Daemon, &message);
                if let Some(next) = self.next.take() {
                    self.retire(next);
                }
                // Its requests will never finish: cut them now, no drain.
                self.retire_within(p, Duration::ZERO);
                self.failed_start(message);
            }
        }
    }

    fn on_exited(&mut self, generation: u64, status: std::process::ExitStatus) {
        let Some(p) = self.current.take_if(|p| p.generation == generation) else {
            return; // a retired process; its retirement reports on it
        };
        let _ = self.state_file.remove(p.process.pid());
        let message = format!(
            "llama-server (pid {}) exited unexpectedly: {status}",
            p.process.pid()
        );
        let restart = match self.spec.config.lifecycle.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !status.success(),
            RestartPolicy::Never => false,
        };
        if let Some(next) = self.next.take() {
            self.retire(next);
        }
        if restart {
            self.failed_start(message);
        } else {
            tracing::warn!(model = %self.name, "{message}; restart policy keeps it down");
            self.last_error = Some(message);
            self.state = State::Idle;
        }
    }

    /// Takes a process out of service: close its gate, drain it, stop it.
    fn retire(&mut self, p: Proc) {
        let drain = if p.ready_after.is_some() {
            self.spec.config.lifecycle.drain_timeout
        } else {
            Duration::ZERO
        };
        self.retire_within(p, drain);
    }

    /// Closes the gate, waits up to `drain_timeout` for the requests inside
    /// (then cuts and counts them), and stops the process.
    fn retire_within(&mut self, p: Proc, drain_timeout: Duration) {
        self.retiring.push(p.generation);
        let lifecycle = self.spec.config.lifecycle.clone();
        let events = self.events.clone();
        let name = self.name.clone();
        tokio::spawn(async move {
            let drain = p.gate.drain(drain_timeout).await;
            if drain.cut > 0 {
                tracing::warn!(model = %name, cut = drain.cut, "drain timeout ({drain_timeout:?}) ran out; cutting in-flight requests");
            }
            let outcome = p.process.stop(lifecycle.stop_grace).await;
            if outcome.was_killed() {
                tracing::warn!(model = %name, pid = p.process.pid(), "llama-server ignored SIGTERM for {:?}; killed", lifecycle.stop_grace);
            }
            let pid = p.process.pid();
            let _ = events.send(Event::Retired {
                generation: p.generation,
                pid,
                outcome,
                drain,
            });
        });
    }

    fn on_retired(&mut self, generation: u64, pid: i32, outcome: StopOutcome, drain: DrainOutcome) {
        self.retiring.retain(|g| *g != generation);
        self.drained += drain.drained as u64;
        self.cut += drain.cut as u64;
        // Only a reaped process leaves the state file, so a daemon that dies
        // mid-stop still finds an unreaped one on its next start.
        if outcome.status().is_some() {
            let _ = self.state_file.remove(pid);
        }
        if self.start_after_retire && self.retiring.is_empty() {
            self.start_after_retire = false;
            self.start();
        }
        self.finish_if_stopped();
    }

    fn finish_if_stopped(&mut self) {
        if self.state == State::Stopping
            && self.retiring.is_empty()
            && self.current.is_none()
            && self.next.is_none()
        {
            self.state = State::Stopped;
        }
    }

    fn cancel(&mut self, kind: TimerKind) {
        self.timer_epochs[kind as usize] += 1;
    }

    fn schedule(&self, delay: Duration, kind: TimerKind) {
        let events = self.events.clone();
        let epoch = self.timer_epochs[kind as usize];
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::Timer { epoch, kind });
        });
    }

    fn schedule_idle_check(&mut self) {
        if let (Some(idle), true, State::Ready) = (
            self.spec.config.lifecycle.idle_timeout,
            self.spec.config.lifecycle.on_demand,
            self.state,
        ) {
            self.cancel(TimerKind::IdleCheck);
            let idle_for = self
                .current
                .as_ref()
                .map_or(Duration::ZERO, |p| p.gate.idle_for());
            self.schedule(
                idle.saturating_sub(idle_for).max(Duration::from_millis(50)),
                TimerKind::IdleCheck,
            );
        }
    }

    fn check_idle(&mut self) {
        let Some(idle) = self.spec.config.lifecycle.idle_timeout else {
            return;
        };
        if self.state != State::Ready || !self.spec.config.lifecycle.on_demand {
            return;
        }
        let idle_for = self
            .current
            .as_ref()
            .map_or(Duration::ZERO, |p| p.gate.idle_for());
        if idle_for >= idle {
            tracing::info!(model = %self.name, "idle for {:?}; stopping until the next request", idle_for);
            self.logs.push(
                LogStream::Daemon,
                &format!("idle for {}; stopping", humantime::format_duration(idle)),
            );
            if let Some(p) = self.current.take() {
                self.retire(p);
            }
            self.state = State::Idle;
        } else {
            // Busy, or used recently: look again when it could be idle.
            self.schedule_idle_check();
        }
    }

    fn publish(&self) {
        let current = self.current.as_ref();
        let serving = match self.state {
            State::Ready => current
                .filter(|p| p.ready_after.is_some())
                .map(|p| Arc::clone(&p.gate)),
            _ => None,
        };
        let l = &self.spec.config.lifecycle;
        self.publish.send_replace(Snapshot {
            state: self.state,
            serving,
            launch_id: current.map_or_else(|| self.spec.id.clone(), |p| p.id.clone()),
            target_launch_id: self.spec.id.clone(),
            pid: current.map(|p| p.process.pid()),
            port: current.map(|p| p.gate.port()),
            started_at: current.map(|p| p.started_at),
            ready_after: current.and_then(|p| p.ready_after),
            restarts: self.restarts,
            last_error: self.last_error.clone(),
            last_restart: self.last_restart.clone(),
            queue_length: l.queue_length,
            wait_timeout: l.wait_timeout,
            on_demand: l.on_demand,
            drained: self.drained,
            cut: self.cut,
        });
    }
}
