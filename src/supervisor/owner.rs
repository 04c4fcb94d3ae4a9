//! The decisions of one model's owner, as a pure state machine.
//!
//! [`Core::step`] takes one [`Event`] and the time it happened and returns
//! the [`Effect`]s to perform: data such as "spawn process 3", "drain and
//! stop process 2", "measure how long process 3 has been idle". It starts
//! no process, reads no clock and sleeps on nothing. The executor
//! ([`super::instance`]) performs the effects and feeds what they found
//! back as events; [`Core::deadline`] says when it must call again with
//! [`Event::Timeout`] (a backoff delay or an idle check is due), so no
//! timer task exists and none needs cancelling. This is the shape of
//! quinn-proto and rustls ("sans-I/O").
//!
//! The state is one [`Phase`], which carries the processes it is about, plus
//! the processes on their way out (`leaving`). The invariant "at most one
//! instance of a model" is enforced in one place, [`Core::spawn_if_clear`]:
//! a process is started only when every other process of the model is gone,
//! except the serving one during a `blue_green` swap.

use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::Instant;

use super::backoff::Backoff;
use super::liveness;
use crate::plan::LaunchId;
use crate::spec::{Lifecycle, RestartPolicy, SwapStrategy};

/// The owner's own number for a process it started (1, 2, ...).
pub(crate) type ProcId = u64;

/// Port-taken retries (without backoff) before a bind failure counts.
const BIND_RETRIES: u32 = 3;

/// The shortest wait before looking again whether a model is idle.
const IDLE_RECHECK: Duration = Duration::from_millis(50);

/// How long a model stopped to make room for another may take to finish
/// its in-flight requests: in effect no bound, because such a stop never
/// cuts a request (a hung process is the liveness probe's business).
pub(crate) const MAKE_ROOM_DRAIN: Duration = Duration::from_secs(24 * 3600);

/// What a person may ask of a model (the status page's buttons).
///
/// - `Start`: start it now. An idle model (on demand, kept down by its
///   restart policy, or stopped by the operator) starts; one in backoff
///   skips the rest of its delay and forgets its failures; one that is
///   starting or ready is left as it is.
/// - `Stop`: drain and stop its processes. An always-on model then stays
///   stopped until `Start`, an edit of its launch in the spec, or a daemon
///   restart. An on-demand model returns to idle, so its next request
///   starts it again.
/// - `Restart`: drain and stop its processes, then start it again (the new
///   process starts once the old one is gone, whatever `swap` says).
///
/// Each answers `Err(OperateError::Gone)` once the model is being removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorAction {
    Start,
    Stop,
    Restart,
}

/// Why an [`OperatorAction`] was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OperateError {
    /// The model is being removed (or the daemon is stopping).
    #[error("model {model} has been removed")]
    Gone { model: String },
}

/// A start that did not become ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReadyFailure {
    pub message: String,
    /// The port was taken before llama-server bound it.
    pub bind_failure: bool,
}

/// What the owner is told to run: the launch and the daemon-side settings.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Target {
    pub launch: LaunchId,
    pub lifecycle: Lifecycle,
}

/// Everything that can happen to a model: one closed set.
#[derive(Clone, Debug)]
pub(crate) enum Event {
    /// The plan's `restart`: the spec wants another launch.
    Replace(Target),
    /// The plan's `keep`: the same launch, maybe other daemon-side settings.
    Settings(Target),
    /// A request arrived while nothing serves.
    Demand,
    Operate(OperatorAction),
    Shutdown,
    /// An earlier owner of this model has finished shutting down.
    PredecessorGone,
    /// The answer to [`Effect::Spawn`]: the pid, or why it failed.
    Spawned {
        proc: ProcId,
        result: Result<i32, String>,
    },
    /// The answer to [`Effect::WaitReady`]: spawn to `/health` 200.
    Ready {
        proc: ProcId,
        result: Result<Duration, ReadyFailure>,
    },
    /// A watched process ([`Effect::Watch`]) exited by itself.
    Exited {
        proc: ProcId,
        status: ExitStatus,
    },
    /// A retired process ([`Effect::Retire`]) was drained and stopped.
    Retired {
        proc: ProcId,
        /// Its exit was seen (`false`: it outlived SIGKILL's wait).
        reaped: bool,
        drained: u64,
        cut: u64,
    },
    /// What a liveness probe of a watched process found.
    Liveness {
        proc: ProcId,
        probe: liveness::Probe,
    },
    /// The answer to [`Effect::MeasureIdle`].
    IdleFor {
        proc: ProcId,
        idle: Duration,
    },
    /// [`Core::deadline`] has passed.
    Timeout,
    /// The memory arbiter's answers to a spawn's reservation (the spawn
    /// waits for one): the model cannot fit now, even with every idle
    /// model stopped.
    NoRoom {
        proc: ProcId,
        reason: String,
    },
    /// A `blue_green` replacement does not fit beside the serving process.
    NotBeside {
        proc: ProcId,
        reason: String,
    },
    /// Nobody waits for the on-demand model any more (only for a start,
    /// never for a replacement).
    Withdrawn {
        proc: ProcId,
    },
    /// Stop serving to make room for another model. The executor sends it
    /// only for an on-demand model that serves, after closing its gate (at
    /// once when no request was inside, or with `yield_turn`, whose
    /// in-flight requests then finish first).
    MakeRoom {
        for_model: String,
        yield_turn: bool,
    },
}

/// What the executor must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Start a process of `launch` (always the current target) and answer
    /// with [`Event::Spawned`] (or one of the memory arbiter's refusals).
    /// `beside`: a `blue_green` replacement next to the serving process.
    Spawn {
        proc: ProcId,
        launch: LaunchId,
        beside: bool,
    },
    /// Write it into the state file (for leftover reaping after a crash).
    Record { proc: ProcId },
    /// Poll its `/health` for up to `timeout`; answer with [`Event::Ready`].
    WaitReady { proc: ProcId, timeout: Duration },
    /// It serves: watch for its exit and probe its liveness.
    Watch { proc: ProcId },
    /// Close its gate, wait up to `drain` for the requests inside, stop it;
    /// answer with [`Event::Retired`].
    Retire { proc: ProcId, drain: Duration },
    /// It has exited: remove it from the state file.
    Forget { proc: ProcId },
    /// Read how long its gate has been empty; answer with [`Event::IdleFor`].
    MeasureIdle { proc: ProcId },
    /// The answer to the [`Event::Operate`] being handled.
    Reply(Result<(), OperateError>),
    /// A line for the model's log.
    Log(String),
    /// Every process is gone after a shutdown: the owner ends.
    Stopped,
}

/// One process the owner started and has not let go of.
#[derive(Clone, Debug)]
pub(crate) struct Proc {
    pub id: ProcId,
    pub launch: LaunchId,
    /// Known once [`Event::Spawned`] said so.
    pub pid: Option<i32>,
    /// Spawn to ready; `None` while it loads.
    pub ready_after: Option<Duration>,
    /// Port-taken retries so far for this start.
    bind_retries: u32,
    liveness: liveness::Tracker,
}

/// Why nothing runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Down {
    /// On demand: the next request starts it.
    OnDemand,
    /// It exited and its restart policy keeps it down until the spec changes.
    RestartPolicy,
    /// The operator stopped it.
    Operator,
}

/// A `blue_green` replacement beside the serving process.
#[derive(Clone, Debug)]
pub(crate) enum Replacement {
    None,
    /// To be started once a stale replacement has gone.
    Waiting {
        bind_retries: u32,
    },
    Loading(Proc),
    /// The last one failed; try again at `until`.
    Backoff {
        until: Instant,
    },
}

/// What the owner is doing. Each phase carries the processes it is about.
#[derive(Clone, Debug)]
pub(crate) enum Phase {
    Idle(Down),
    /// A start waits for this model's other processes to be gone. `swap`:
    /// it replaces an earlier one (shown as swapping, not starting).
    Waiting {
        swap: bool,
        bind_retries: u32,
    },
    Starting(Proc),
    Ready {
        serving: Proc,
        replacement: Replacement,
        /// When to measure whether an on-demand model has been idle long
        /// enough to stop.
        idle_check: Option<Instant>,
    },
    /// A start failed or the process died; start again at `until`.
    /// `failed`: it failed too often in a row.
    Backoff {
        until: Instant,
        failed: bool,
    },
    /// Shutting down: waiting for every process to be gone.
    Stopping,
    Stopped,
}

/// A process (or a whole earlier owner) on its way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Leaving {
    Proc(ProcId),
    Predecessor,
}

/// One model's owner, minus its I/O.
#[derive(Clone, Debug)]
pub(crate) struct Core {
    model: String,
    target: Target,
    phase: Phase,
    leaving: Vec<Leaving>,
    backoff: Backoff,
    last_proc: ProcId,
    /// Unplanned restarts: crashes, failed starts, hung processes replaced.
    pub restarts: u64,
    pub last_error: Option<String>,
    /// Why and when it was last restarted unasked.
    pub last_restart: Option<(Instant, String)>,
    /// Requests that finished while their process drained.
    pub drained: u64,
    /// Requests cut because a drain ran out of time.
    pub cut: u64,
    /// Starts refused because the model cannot fit in memory now.
    pub no_room: u64,
    /// Times it was stopped to make room for another model.
    pub made_room: u64,
    /// The last `blue_green` swap done `stop_first` because both processes
    /// did not fit, and why.
    pub fallback: Option<String>,
}

impl Core {
    /// A new owner and its first effects. With `predecessor`, an earlier
    /// owner of the model is still shutting down: nothing starts before
    /// [`Event::PredecessorGone`].
    pub(crate) fn new(
        model: &str,
        target: Target,
        backoff: Backoff,
        predecessor: bool,
    ) -> (Core, Vec<Effect>) {
        let mut core = Core {
            model: model.to_owned(),
            phase: Phase::Idle(Down::OnDemand),
            leaving: if predecessor {
                vec![Leaving::Predecessor]
            } else {
                vec![]
            },
            target,
            backoff,
            last_proc: 0,
            restarts: 0,
            last_error: None,
            last_restart: None,
            drained: 0,
            cut: 0,
            no_room: 0,
            made_room: 0,
            fallback: None,
        };
        let mut fx = Vec::new();
        if !core.target.lifecycle.on_demand {
            core.start(0, predecessor, &mut fx);
        }
        (core, fx)
    }

    pub(crate) fn phase(&self) -> &Phase {
        &self.phase
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    #[cfg(test)]
    pub(crate) fn leaving(&self) -> &[Leaving] {
        &self.leaving
    }

    pub(crate) fn is_stopped(&self) -> bool {
        matches!(self.phase, Phase::Stopped)
    }

    /// When the executor must send [`Event::Timeout`], if ever.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Backoff { until, .. } => Some(*until),
            Phase::Ready {
                replacement,
                idle_check,
                ..
            } => {
                let retry = match replacement {
                    Replacement::Backoff { until } => Some(*until),
                    _ => None,
                };
                [retry, *idle_check].into_iter().flatten().min()
            }
            _ => None,
        }
    }

    /// Whether `proc` is a start or a replacement that has not been
    /// spawned yet (its memory is still being found).
    pub(crate) fn awaits_spawn(&self, proc: ProcId) -> bool {
        match &self.phase {
            Phase::Starting(p) => p.id == proc && p.pid.is_none(),
            Phase::Ready {
                replacement: Replacement::Loading(n),
                ..
            } => n.id == proc && n.pid.is_none(),
            _ => false,
        }
    }

    /// Takes the start `proc` out of the phase (left `Stopping` for the
    /// caller to set) if it has not been spawned yet.
    fn take_unspawned_start(&mut self, proc: ProcId) -> Option<Proc> {
        if !matches!(self.phase, Phase::Starting(_)) || !self.awaits_spawn(proc) {
            return None;
        }
        match std::mem::replace(&mut self.phase, Phase::Stopping) {
            Phase::Starting(p) => Some(p),
            _ => unreachable!("matched above"),
        }
    }

    /// The process whose pid and port people see: the serving one, or the
    /// one loading to serve.
    pub(crate) fn current(&self) -> Option<&Proc> {
        match &self.phase {
            Phase::Starting(p) => Some(p),
            Phase::Ready { serving, .. } => Some(serving),
            _ => None,
        }
    }

    /// The process that admits requests, if one does.
    pub(crate) fn serving(&self) -> Option<&Proc> {
        match &self.phase {
            Phase::Ready { serving, .. } => Some(serving),
            _ => None,
        }
    }

    /// Every process the phase holds (not those leaving).
    #[cfg(test)]
    pub(crate) fn procs(&self) -> Vec<ProcId> {
        match &self.phase {
            Phase::Starting(p) => vec![p.id],
            Phase::Ready {
                serving,
                replacement: Replacement::Loading(n),
                ..
            } => vec![serving.id, n.id],
            Phase::Ready { serving, .. } => vec![serving.id],
            _ => vec![],
        }
    }

    /// Handles one event at `now`.
    pub(crate) fn step(&mut self, event: Event, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        match event {
            Event::Replace(target) => self.on_replace(target, &mut fx),
            Event::Settings(target) => self.on_settings(target, now, &mut fx),
            Event::Demand => {
                if matches!(self.phase, Phase::Idle(_)) && self.target.lifecycle.on_demand {
                    self.start(0, false, &mut fx);
                }
            }
            Event::Operate(action) => self.on_operate(action, &mut fx),
            Event::Shutdown => {
                if !matches!(self.phase, Phase::Stopping | Phase::Stopped) {
                    let phase = std::mem::replace(&mut self.phase, Phase::Stopping);
                    self.retire_all(phase, &mut fx);
                    self.resume(&mut fx);
                }
            }
            Event::PredecessorGone => {
                self.leaving.retain(|l| *l != Leaving::Predecessor);
                self.resume(&mut fx);
            }
            Event::Spawned { proc, result } => self.on_spawned(proc, result, now, &mut fx),
            Event::Ready { proc, result } => self.on_ready(proc, result, now, &mut fx),
            Event::Exited { proc, status } => self.on_exited(proc, status, now, &mut fx),
            Event::Retired {
                proc,
                reaped,
                drained,
                cut,
            } => {
                let before = self.leaving.len();
                self.leaving.retain(|l| *l != Leaving::Proc(proc));
                if self.leaving.len() < before {
                    self.drained += drained;
                    self.cut += cut;
                    // Only a reaped process leaves the state file, so a
                    // daemon that dies mid-stop still reaps it next start.
                    if reaped {
                        fx.push(Effect::Forget { proc });
                    }
                    self.resume(&mut fx);
                }
            }
            Event::Liveness { proc, probe } => self.on_liveness(proc, &probe, now, &mut fx),
            Event::IdleFor { proc, idle } => self.on_idle_for(proc, idle, now, &mut fx),
            Event::Timeout => self.on_timeout(now, &mut fx),
            Event::NoRoom { proc, reason } => self.on_no_room(proc, reason, now, &mut fx),
            Event::NotBeside { proc, reason } => self.on_not_beside(proc, reason, &mut fx),
            Event::Withdrawn { proc } => {
                if self.target.lifecycle.on_demand
                    && let Some(p) = self.take_unspawned_start(proc)
                {
                    fx.push(Effect::Log(
                        "nobody waits for it any more; not starting it".into(),
                    ));
                    self.retire(p, &mut fx);
                    self.phase = Phase::Idle(Down::OnDemand);
                }
            }
            Event::MakeRoom {
                for_model,
                yield_turn,
            } => self.on_make_room(&for_model, yield_turn, &mut fx),
        }
        fx
    }

    /// The process never started: memory for it cannot be had now. An
    /// on-demand model goes back to idle (its waiting requests fail at once
    /// with this reason; the next request asks again); an always-on one
    /// backs off and retries.
    fn on_no_room(&mut self, proc: ProcId, reason: String, now: Instant, fx: &mut Vec<Effect>) {
        if matches!(&self.phase, Phase::Ready { .. }) {
            // (The arbiter answers a replacement with `NotBeside`; this is
            // the same outcome for a refusal.)
            return self.on_not_beside(proc, reason, fx);
        }
        let Some(p) = self.take_unspawned_start(proc) else {
            return;
        };
        self.no_room += 1;
        self.retire(p, fx);
        if self.target.lifecycle.on_demand {
            fx.push(Effect::Log(format!(
                "{reason}; its requests fail until memory is free"
            )));
            self.last_error = Some(reason);
            self.phase = Phase::Idle(Down::OnDemand);
        } else {
            self.failed_start(reason, now, fx);
        }
    }

    /// `blue_green` needs the old and the new process in memory at once;
    /// when both do not fit, the swap is done `stop_first`.
    fn on_not_beside(&mut self, proc: ProcId, reason: String, fx: &mut Vec<Effect>) {
        if !self.awaits_spawn(proc) || !matches!(self.phase, Phase::Ready { .. }) {
            return;
        }
        let Phase::Ready {
            serving,
            replacement: Replacement::Loading(n),
            ..
        } = std::mem::replace(&mut self.phase, Phase::Stopping)
        else {
            unreachable!("awaits_spawn: a replacement loading")
        };
        let message = format!("blue_green swap done stop_first: {reason}");
        fx.push(Effect::Log(message.clone()));
        self.fallback = Some(message);
        self.retire(n, fx);
        self.retire(serving, fx);
        self.start(0, true, fx);
    }

    /// Another model needs the memory: stop serving (the executor closed
    /// the gate already) and go idle until the next request.
    fn on_make_room(&mut self, for_model: &str, yield_turn: bool, fx: &mut Vec<Effect>) {
        if !self.target.lifecycle.on_demand || !matches!(self.phase, Phase::Ready { .. }) {
            return;
        }
        let Phase::Ready {
            serving,
            replacement,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Stopping)
        else {
            unreachable!("matched above")
        };
        fx.push(Effect::Log(if yield_turn {
            format!("its turn is over: {for_model} waits for the memory; finishing the requests in flight, then stopping")
        } else {
            format!("idle: stopping to make room for {for_model}")
        }));
        self.made_room += 1;
        if let Replacement::Loading(n) = replacement {
            self.retire(n, fx);
        }
        self.retire_within(serving, MAKE_ROOM_DRAIN, fx);
        self.phase = Phase::Idle(Down::OnDemand);
    }

    /// The one place a process is started. Every other process of this
    /// model must be gone (reaped, or its owner finished); the only
    /// exception is `beside`, the ready process a `blue_green` replacement
    /// loads next to. Returns `None` (and starts nothing) otherwise.
    fn spawn_if_clear(
        &mut self,
        beside: Option<&Proc>,
        bind_retries: u32,
        fx: &mut Vec<Effect>,
    ) -> Option<Proc> {
        let clear = self.leaving.is_empty()
            && beside.is_none_or(|serving| {
                self.target.lifecycle.swap == SwapStrategy::BlueGreen
                    && serving.ready_after.is_some()
            });
        if !clear {
            return None;
        }
        self.last_proc += 1;
        let proc = Proc {
            id: self.last_proc,
            launch: self.target.launch.clone(),
            pid: None,
            ready_after: None,
            bind_retries,
            liveness: liveness::Tracker::default(),
        };
        fx.push(Effect::Spawn {
            proc: proc.id,
            launch: proc.launch.clone(),
            beside: beside.is_some(),
        });
        Some(proc)
    }

    /// Starts the target now, or as soon as the model's other processes
    /// are gone.
    fn start(&mut self, bind_retries: u32, swap: bool, fx: &mut Vec<Effect>) {
        self.phase = match self.spawn_if_clear(None, bind_retries, fx) {
            Some(p) => Phase::Starting(p),
            None => Phase::Waiting { swap, bind_retries },
        };
    }

    /// After something left: start what waited for it, or finish a shutdown.
    fn resume(&mut self, fx: &mut Vec<Effect>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Stopping);
        self.phase = match phase {
            Phase::Waiting { swap, bind_retries } => {
                match self.spawn_if_clear(None, bind_retries, fx) {
                    Some(p) => Phase::Starting(p),
                    None => Phase::Waiting { swap, bind_retries },
                }
            }
            Phase::Ready {
                serving,
                replacement: Replacement::Waiting { .. },
                ..
            } if self.target.lifecycle.swap == SwapStrategy::StopFirst => {
                // `swap` was edited to stop_first while a replacement was
                // due: replace the stop_first way.
                self.retire(serving, fx);
                match self.spawn_if_clear(None, 0, fx) {
                    Some(p) => Phase::Starting(p),
                    None => Phase::Waiting {
                        swap: true,
                        bind_retries: 0,
                    },
                }
            }
            Phase::Ready {
                serving,
                replacement: Replacement::Waiting { bind_retries },
                idle_check,
            } => {
                let replacement = match self.spawn_if_clear(Some(&serving), bind_retries, fx) {
                    Some(p) => Replacement::Loading(p),
                    None => Replacement::Waiting { bind_retries },
                };
                Phase::Ready {
                    serving,
                    replacement,
                    idle_check,
                }
            }
            Phase::Stopping if self.leaving.is_empty() => {
                fx.push(Effect::Stopped);
                Phase::Stopped
            }
            other => other,
        };
    }

    /// Takes a process out of service; it leaves once [`Event::Retired`]
    /// says so. A process that never served has no requests to drain.
    fn retire(&mut self, p: Proc, fx: &mut Vec<Effect>) {
        let drain = if p.ready_after.is_some() {
            self.target.lifecycle.drain_timeout
        } else {
            Duration::ZERO
        };
        self.retire_within(p, drain, fx);
    }

    fn retire_within(&mut self, p: Proc, drain: Duration, fx: &mut Vec<Effect>) {
        self.leaving.push(Leaving::Proc(p.id));
        fx.push(Effect::Retire { proc: p.id, drain });
    }

    /// Retires every process `phase` holds.
    fn retire_all(&mut self, phase: Phase, fx: &mut Vec<Effect>) {
        match phase {
            Phase::Starting(p) => self.retire(p, fx),
            Phase::Ready {
                serving,
                replacement,
                ..
            } => {
                if let Replacement::Loading(n) = replacement {
                    self.retire(n, fx);
                }
                self.retire(serving, fx);
            }
            _ => {}
        }
    }

    /// A start failed or a process died unasked: back off, then start again.
    fn failed_start(&mut self, message: String, now: Instant, fx: &mut Vec<Effect>) {
        self.restarts += 1;
        self.last_restart = Some((now, message.clone()));
        let decision = self.backoff.on_failure(now);
        fx.push(Effect::Log(format!(
            "{message}; retrying in {:?} (failure {} in a row)",
            decision.delay, decision.failures
        )));
        self.last_error = Some(message);
        self.phase = Phase::Backoff {
            until: now + decision.delay,
            failed: decision.failed,
        };
    }

    /// When an on-demand model that became ready at `now` should first be
    /// looked at: its gate has been empty since the spawn.
    /// A replacement that did not come up: the serving process keeps
    /// serving, and the replacement is retried after a backoff.
    fn replacement_failed(
        &mut self,
        message: String,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> Replacement {
        let decision = self.backoff.on_failure(now);
        fx.push(Effect::Log(format!(
            "{message}; the previous instance keeps serving; retrying in {:?}",
            decision.delay
        )));
        self.last_error = Some(message);
        Replacement::Backoff {
            until: now + decision.delay,
        }
    }

    fn idle_check_after_ready(&self, ready_after: Duration, now: Instant) -> Option<Instant> {
        let l = &self.target.lifecycle;
        let idle = l.idle_timeout.filter(|_| l.on_demand)?;
        Some(now + idle.saturating_sub(ready_after).max(IDLE_RECHECK))
    }

    fn on_replace(&mut self, target: Target, fx: &mut Vec<Effect>) {
        if matches!(self.phase, Phase::Stopping | Phase::Stopped) {
            return;
        }
        self.target = target;
        // A changed model gets a fresh start: forget earlier failures.
        self.backoff.reset();
        self.last_error = None;
        fx.push(Effect::Log(format!(
            "spec changed: launch id {}",
            self.target.launch
        )));
        let on_demand = self.target.lifecycle.on_demand;
        let phase = std::mem::replace(&mut self.phase, Phase::Stopping);
        match phase {
            Phase::Idle(_) if on_demand => self.phase = Phase::Idle(Down::OnDemand),
            // An operator's stop or the restart policy held the old launch
            // down; the new one starts.
            Phase::Idle(_) | Phase::Backoff { .. } => self.start(0, true, fx),
            Phase::Waiting { .. } => self.start(0, true, fx),
            // Still loading the old launch: nobody depends on it.
            Phase::Starting(p) => {
                self.retire(p, fx);
                self.start(0, true, fx);
            }
            Phase::Ready {
                serving,
                replacement,
                idle_check,
            } => {
                if let Replacement::Loading(n) = replacement {
                    self.retire(n, fx);
                }
                if serving.launch == self.target.launch {
                    // Edited back to what serves: nothing to replace.
                    self.phase = Phase::Ready {
                        serving,
                        replacement: Replacement::None,
                        idle_check,
                    };
                } else if self.target.lifecycle.swap == SwapStrategy::BlueGreen {
                    self.phase = Phase::Ready {
                        serving,
                        replacement: Replacement::Waiting { bind_retries: 0 },
                        idle_check,
                    };
                    self.resume(fx);
                } else {
                    self.retire(serving, fx);
                    self.start(0, true, fx);
                }
            }
            Phase::Stopping | Phase::Stopped => self.phase = phase,
        }
    }

    fn on_settings(&mut self, target: Target, now: Instant, fx: &mut Vec<Effect>) {
        if matches!(self.phase, Phase::Stopping | Phase::Stopped) {
            return;
        }
        if target.launch != self.target.launch {
            // Not what the plan sends; treat it as the replacement it is.
            return self.on_replace(target, fx);
        }
        self.target = target;
        let l = &self.target.lifecycle;
        let idle = l.idle_timeout.filter(|_| l.on_demand);
        if matches!(self.phase, Phase::Idle(Down::OnDemand)) && !l.on_demand {
            // Made always-on: start it.
            return self.start(0, false, fx);
        }
        if let Phase::Ready { idle_check, .. } = &mut self.phase {
            // Look at once; the measurement decides.
            *idle_check = idle.map(|_| now);
        }
    }

    fn on_operate(&mut self, action: OperatorAction, fx: &mut Vec<Effect>) {
        if matches!(self.phase, Phase::Stopping | Phase::Stopped) {
            fx.push(Effect::Reply(Err(OperateError::Gone {
                model: self.model.clone(),
            })));
            return;
        }
        fx.push(Effect::Log(format!("operator: {action:?}").to_lowercase()));
        match action {
            OperatorAction::Start => {
                if matches!(self.phase, Phase::Idle(_) | Phase::Backoff { .. }) {
                    // A person asked: earlier failures do not lengthen the
                    // next delay.
                    self.backoff.reset();
                    self.start(0, false, fx);
                }
            }
            OperatorAction::Stop => {
                let phase = std::mem::replace(&mut self.phase, Phase::Stopping);
                self.retire_all(phase, fx);
                self.backoff.reset();
                self.phase = Phase::Idle(if self.target.lifecycle.on_demand {
                    Down::OnDemand
                } else {
                    Down::Operator
                });
            }
            OperatorAction::Restart => {
                let phase = std::mem::replace(&mut self.phase, Phase::Stopping);
                self.retire_all(phase, fx);
                self.start(0, true, fx);
            }
        }
        fx.push(Effect::Reply(Ok(())));
    }

    fn on_spawned(
        &mut self,
        proc: ProcId,
        result: Result<i32, String>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let timeout = self.target.lifecycle.ready_timeout;
        let phase = std::mem::replace(&mut self.phase, Phase::Stopping);
        match (phase, result) {
            (Phase::Starting(mut p), Ok(pid)) if p.id == proc => {
                p.pid = Some(pid);
                fx.push(Effect::Record { proc });
                fx.push(Effect::WaitReady { proc, timeout });
                self.phase = Phase::Starting(p);
            }
            (Phase::Starting(p), Err(e)) if p.id == proc => self.failed_start(e, now, fx),
            (
                Phase::Ready {
                    serving,
                    replacement: Replacement::Loading(mut n),
                    idle_check,
                },
                result,
            ) if n.id == proc => {
                let replacement = match result {
                    Ok(pid) => {
                        n.pid = Some(pid);
                        fx.push(Effect::Record { proc });
                        fx.push(Effect::WaitReady { proc, timeout });
                        Replacement::Loading(n)
                    }
                    Err(e) => self.replacement_failed(
                        format!("could not start the replacement: {e}"),
                        now,
                        fx,
                    ),
                };
                self.phase = Phase::Ready {
                    serving,
                    replacement,
                    idle_check,
                };
            }
            (phase, _) => self.phase = phase,
        }
    }

    fn on_ready(
        &mut self,
        proc: ProcId,
        result: Result<Duration, ReadyFailure>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let phase = std::mem::replace(&mut self.phase, Phase::Stopping);
        match (phase, result) {
            (Phase::Starting(mut p), Ok(latency)) if p.id == proc => {
                fx.push(Effect::Log(format!(
                    "ready after {} ms",
                    latency.as_millis()
                )));
                self.backoff.on_healthy(now);
                self.last_error = None;
                p.ready_after = Some(latency);
                fx.push(Effect::Watch { proc });
                self.phase = Phase::Ready {
                    idle_check: self.idle_check_after_ready(latency, now),
                    serving: p,
                    replacement: Replacement::None,
                };
            }
            (Phase::Starting(p), Err(failure)) if p.id == proc => {
                let retries = p.bind_retries;
                self.retire(p, fx);
                if failure.bind_failure && retries < BIND_RETRIES {
                    // Someone took the port between picking and binding.
                    fx.push(Effect::Log(
                        "port taken before llama-server bound it; retrying on another".into(),
                    ));
                    self.start(retries + 1, false, fx);
                } else {
                    self.failed_start(format!("start failed: {}", failure.message), now, fx);
                }
            }
            (
                Phase::Ready {
                    serving,
                    replacement: Replacement::Loading(mut n),
                    idle_check,
                },
                result,
            ) if n.id == proc => match result {
                Ok(latency) => {
                    // Blue/green: the new process takes the traffic, the
                    // old one drains.
                    fx.push(Effect::Log(format!(
                        "replacement ready after {} ms; draining the previous instance",
                        latency.as_millis()
                    )));
                    self.backoff.on_healthy(now);
                    self.last_error = None;
                    self.retire(serving, fx);
                    n.ready_after = Some(latency);
                    fx.push(Effect::Watch { proc });
                    self.phase = Phase::Ready {
                        idle_check: self.idle_check_after_ready(latency, now),
                        serving: n,
                        replacement: Replacement::None,
                    };
                }
                Err(failure) => {
                    let retries = n.bind_retries;
                    self.retire(n, fx);
                    let replacement = if failure.bind_failure && retries < BIND_RETRIES {
                        fx.push(Effect::Log(
                            "port taken before the replacement bound it; retrying on another"
                                .into(),
                        ));
                        Replacement::Waiting {
                            bind_retries: retries + 1,
                        }
                    } else {
                        // The old process keeps serving; the edit is reported.
                        self.restarts += 1;
                        self.replacement_failed(
                            format!("start failed: {}", failure.message),
                            now,
                            fx,
                        )
                    };
                    self.phase = Phase::Ready {
                        serving,
                        replacement,
                        idle_check,
                    };
                    self.resume(fx);
                }
            },
            (phase, _) => self.phase = phase, // about a process already let go
        }
    }

    fn on_exited(&mut self, proc: ProcId, status: ExitStatus, now: Instant, fx: &mut Vec<Effect>) {
        if self.serving().is_none_or(|s| s.id != proc) {
            return; // a retired process; its retirement reports on it
        }
        let phase = std::mem::replace(&mut self.phase, Phase::Stopping);
        let Phase::Ready {
            serving,
            replacement,
            ..
        } = phase
        else {
            self.phase = phase;
            return;
        };
        fx.push(Effect::Forget { proc });
        if let Replacement::Loading(n) = replacement {
            self.retire(n, fx);
        }
        let message = format!(
            "llama-server (pid {}) exited unexpectedly: {status}",
            serving.pid.unwrap_or(0)
        );
        let restart = match self.target.lifecycle.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !status.success(),
            RestartPolicy::Never => false,
        };
        if restart {
            self.failed_start(message, now, fx);
        } else {
            fx.push(Effect::Log(format!(
                "{message}; its restart policy keeps it down"
            )));
            self.last_error = Some(message);
            self.phase = Phase::Idle(Down::RestartPolicy);
        }
    }

    /// A ready process that stopped answering is replaced like one that
    /// crashed; its in-flight requests cannot finish, so it is not drained.
    fn on_liveness(
        &mut self,
        proc: ProcId,
        probe: &liveness::Probe,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let policy = self.target.lifecycle.liveness;
        let Phase::Ready { serving, .. } = &mut self.phase else {
            return;
        };
        if serving.id != proc {
            return; // about a process already let go
        }
        let pid = serving.pid.unwrap_or(0);
        let failure = probe.failure.as_deref().unwrap_or("");
        match serving.liveness.observe(&policy, probe) {
            liveness::Verdict::Alive => {}
            liveness::Verdict::Busy => fx.push(Effect::Log(format!(
                "liveness probe failed while pid {pid} is busy (using CPU); not counted: {failure}"
            ))),
            liveness::Verdict::Suspect(n) => fx.push(Effect::Log(format!(
                "liveness probe {n}/{} of pid {pid} failed: {failure}",
                policy.failures
            ))),
            liveness::Verdict::Dead(why) => {
                let phase = std::mem::replace(&mut self.phase, Phase::Stopping);
                if let Phase::Ready {
                    serving,
                    replacement,
                    ..
                } = phase
                {
                    if let Replacement::Loading(n) = replacement {
                        self.retire(n, fx);
                    }
                    // Its requests will never finish: cut them now.
                    self.retire_within(serving, Duration::ZERO, fx);
                }
                self.failed_start(format!("llama-server (pid {pid}) {why}; replaced"), now, fx);
            }
        }
    }

    fn on_idle_for(&mut self, proc: ProcId, idle: Duration, now: Instant, fx: &mut Vec<Effect>) {
        let l = &self.target.lifecycle;
        let Some(limit) = l.idle_timeout.filter(|_| l.on_demand) else {
            return;
        };
        let phase = std::mem::replace(&mut self.phase, Phase::Stopping);
        match phase {
            Phase::Ready {
                serving,
                replacement,
                ..
            } if serving.id == proc => {
                // A replacement on its way keeps the model up: it is the
                // spec's latest word and stopping it would waste its load.
                let replacing = matches!(
                    replacement,
                    Replacement::Loading(_) | Replacement::Waiting { .. }
                );
                if idle >= limit && !replacing {
                    fx.push(Effect::Log(format!(
                        "idle for {}; stopping until the next request",
                        humantime::format_duration(limit)
                    )));
                    self.retire(serving, fx);
                    self.phase = Phase::Idle(Down::OnDemand);
                } else {
                    let wait = if replacing {
                        limit
                    } else {
                        limit.saturating_sub(idle)
                    };
                    self.phase = Phase::Ready {
                        serving,
                        replacement,
                        idle_check: Some(now + wait.max(IDLE_RECHECK)),
                    };
                }
            }
            phase => self.phase = phase,
        }
    }

    fn on_timeout(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if matches!(self.phase, Phase::Backoff { until, .. } if until <= now) {
            return self.start(0, false, fx);
        }
        let mut retry = false;
        if let Phase::Ready {
            serving,
            replacement,
            idle_check,
        } = &mut self.phase
        {
            if idle_check.is_some_and(|at| at <= now) {
                *idle_check = None;
                fx.push(Effect::MeasureIdle { proc: serving.id });
            }
            if matches!(replacement, Replacement::Backoff { until } if *until <= now) {
                *replacement = Replacement::Waiting { bind_retries: 0 };
                retry = true;
            }
        }
        if retry {
            self.resume(fx);
        }
    }
}

#[cfg(test)]
mod tests;
