//! The arbiter of memory at run time: one task that owns the [`Ledger`] and
//! applies the policy ([`super::policy`]) to every load.
//!
//! Each model's owner asks it before spawning ([`Arbiter::reserve`]) and
//! tells it what happened after (loaded, stopping, gone). The arbiter
//! answers a reservation when it can: at once when the footprint fits; after
//! idle models were stopped for it ([`Tenant::stop_for`]) and their memory
//! is seen free ([`super::freed`]); after a busy model's turn ran out
//! ([`super::policy::yielders`]); or with a refusal when it can never fit
//! now. It reads each model's load (in flight, queued, idle for) through
//! [`Tenant`], but never acts on that reading alone: the owner that is
//! asked to stop checks again, on its own task, that it may (an owner asked
//! to stop while idle refuses once a request has come in), so a stale read
//! can delay a load but never cut a request.
//!
//! While anything waits it looks again every [`TICK`], because a drain
//! finishing has no message of its own; a model's last request leaving
//! has one ([`Arbiter::look_again`]), so an idle model gives way at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::freed::{self, FreedBy, Watch};
use super::ledger::{Bytes, Ledger, Phase, ReserveError};
use super::measured::Measured;
use super::policy::{self, Resident, Room, Waiting};
use crate::memory::human_bytes;
use crate::memory::probe::ProbeRoots;

/// How often waiting reservations are looked at again.
pub const TICK: Duration = Duration::from_millis(100);

/// A request for an on-demand model's memory is withdrawn once nobody has
/// waited for the model this long (every request gave up or timed out), so
/// a load nobody wants does not run later.
const ABANDONED_AFTER: Duration = Duration::from_secs(1);

/// An owner asked to stop for another model and not gone yet is asked
/// again after this long (it refuses while a request is inside).
const ASK_AGAIN: Duration = Duration::from_secs(1);

/// One model's load, as its owner sees it now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub in_flight: u32,
    /// Requests waiting for it to start (or for its gate to open).
    pub queued: u32,
    /// How long no request has been inside.
    pub idle_for: Duration,
    /// How long its serving process has been ready.
    pub loaded_for: Duration,
    pub on_demand: bool,
    pub priority: i32,
    /// Requests its serving process has let in.
    pub served: u64,
}

/// What the arbiter may ask of a model's owner.
pub trait Tenant: Send + Sync + 'static {
    fn occupancy(&self) -> Occupancy;
    /// Stop the serving process to make room for `for_model`. With
    /// `yield_turn` its in-flight requests finish first (never cut) and
    /// new ones wait for its next start; without, the owner stops only if
    /// no request is inside at that moment.
    fn stop_for(&self, for_model: &str, yield_turn: bool);
    /// Its start waits for memory these models hold (`None`: no longer),
    /// so its requests can say why they wait.
    fn memory_wait(&self, held_by: Option<Vec<String>>);
}

/// The answer to [`Arbiter::reserve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Reserved: spawn now.
    Granted,
    /// It cannot fit even with every idle model stopped: fail its requests
    /// at once.
    NoRoom(String),
    /// A `blue_green` replacement does not fit beside the serving process.
    NotBeside(String),
    /// Nobody waits for the model any more: do not start it.
    Withdrawn,
}

/// One reservation asked for.
#[derive(Debug)]
pub struct Ask {
    pub model: String,
    /// The owner's number for the process.
    pub proc: u64,
    pub launch_id: String,
    /// The estimate (or declared footprint) per device.
    pub need: Bytes,
    /// `need` is the spec's declared `memory`: it stays the reservation
    /// after the load (the measured figure is only shown), and no measured
    /// figure from an earlier start replaces it.
    pub declared: bool,
    /// A `blue_green` replacement next to the serving process: it gets room
    /// only if it fits beside it now, and evicts nothing.
    pub beside: bool,
    pub on_demand: bool,
}

enum Msg {
    /// An owner (by its number, unique in the daemon's life) begins.
    Register(String, u64, Arc<dyn Tenant>),
    /// It ended; a later owner of the same model may have registered since.
    Unregister(String, u64),
    /// A model did stop for another (it may refuse a request to).
    MadeRoom {
        yield_turn: bool,
    },
    Reserve(Ask, oneshot::Sender<Grant>),
    /// The process will not start after all (or its start failed).
    Cancel(String, u64),
    Loaded {
        model: String,
        proc: u64,
        measured: Option<Bytes>,
    },
    /// Its stop begins: the memory is still held.
    Stopping(String, u64),
    /// Reaped: wait until its memory is seen free.
    Gone {
        model: String,
        proc: u64,
        pid: u32,
    },
    Freed {
        model: String,
        proc: u64,
        by: FreedBy,
    },
    Budgets(Vec<(String, u64)>, Duration),
    FreeWait(Duration),
    FellBack,
    /// Something the arbiter reads changed (a model's last request left).
    LookAgain,
    /// Forget the measured figures of every other launch.
    KeepMeasured(Vec<String>),
}

/// How the arbiter watches for freed memory.
#[derive(Clone, Debug)]
pub struct FreeWatch {
    pub roots: ProbeRoots,
    pub bound: Duration,
    pub poll: Duration,
}

impl Default for FreeWatch {
    fn default() -> Self {
        FreeWatch {
            roots: ProbeRoots::default(),
            bound: freed::DEFAULT_BOUND,
            poll: Duration::from_millis(100),
        }
    }
}

/// The memory as the status API shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryReport {
    pub devices: Vec<DeviceBudget>,
    /// Per model: what it holds and what it waits for.
    pub models: BTreeMap<String, Holding>,
    pub counters: Counters,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceBudget {
    pub device: String,
    /// Total minus reserve.
    pub budget_bytes: u64,
    /// What every reservation holds (releasing ones included).
    pub reserved_bytes: u64,
    /// What the loaded processes measured (llama-server's buffer lines).
    pub measured_bytes: u64,
    pub free_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Holding {
    /// Bytes per device its processes hold, all phases.
    pub reserved: Bytes,
    /// What its loaded process measured, per device.
    pub measured: Bytes,
    /// `loading`, `loaded`, `releasing` (the phases of its processes).
    pub phases: Vec<String>,
    /// Set while a start waits for memory: the models holding it.
    pub waiting_for: Option<Vec<String>>,
    /// Seconds its start has waited for memory.
    pub waiting_s: Option<f64>,
    /// Why the last start was refused, if it was.
    pub refused: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Idle models stopped to make room.
    pub evictions: u64,
    /// Busy models asked to give their turn up (anti-thrash).
    pub yields: u64,
    /// Starts refused because the model cannot fit now.
    pub refused: u64,
    /// Starts that had to wait for memory.
    pub waits: u64,
    /// Starts that needed other models stopped first.
    pub swaps: u64,
    /// `blue_green` swaps done `stop_first` because both did not fit.
    pub fallbacks: u64,
    /// Waits for freed memory that ran out of time.
    pub free_timeouts: u64,
}

/// A handle on the arbiter task.
#[derive(Clone, Debug)]
pub struct Arbiter {
    tx: mpsc::UnboundedSender<Msg>,
    report: watch::Receiver<MemoryReport>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("arbiter message")
    }
}

impl Arbiter {
    /// Starts the arbiter with these budgets (total minus reserve, per
    /// device; see [`super::admission::budgets`]). `measured`: where the
    /// figures of earlier starts are kept.
    pub fn start(
        budgets: Vec<(String, u64)>,
        measured: Option<Measured>,
        watch: FreeWatch,
    ) -> Arbiter {
        let (tx, rx) = mpsc::unbounded_channel();
        let (report_tx, report) = watch::channel(MemoryReport::default());
        let task = Task {
            ledger: Ledger::new(budgets),
            tenants: BTreeMap::new(),
            pending: Vec::new(),
            asked: BTreeMap::new(),
            measured_now: BTreeMap::new(),
            at_stop: BTreeMap::new(),
            refused: BTreeMap::new(),
            granted: BTreeMap::new(),
            counters: Counters::default(),
            measured,
            watch,
            tx: tx.downgrade(),
            report: report_tx,
            epoch: Instant::now(),
            fairness: policy::DEFAULT_FAIRNESS,
        };
        tokio::spawn(task.run(rx));
        Arbiter { tx, report }
    }

    /// `owner`: a number no other owner in this process has (see
    /// [`next_owner_id`]).
    pub fn register(&self, model: &str, owner: u64, tenant: Arc<dyn Tenant>) {
        let _ = self.tx.send(Msg::Register(model.into(), owner, tenant));
    }

    pub fn unregister(&self, model: &str, owner: u64) {
        let _ = self.tx.send(Msg::Unregister(model.into(), owner));
    }

    /// The model stopped for another, as [`Tenant::stop_for`] asked.
    pub fn made_room(&self, yield_turn: bool) {
        let _ = self.tx.send(Msg::MadeRoom { yield_turn });
    }

    /// Asks for room; the answer comes when there is some (or never will
    /// be). A dropped arbiter answers [`Grant::Granted`]: no budget holds.
    pub fn reserve(&self, ask: Ask) -> impl std::future::Future<Output = Grant> + Send + use<> {
        let (tx, rx) = oneshot::channel();
        let sent = self.tx.send(Msg::Reserve(ask, tx)).is_ok();
        async move {
            if !sent {
                return Grant::Granted;
            }
            rx.await.unwrap_or(Grant::Granted)
        }
    }

    pub fn cancel(&self, model: &str, proc: u64) {
        let _ = self.tx.send(Msg::Cancel(model.into(), proc));
    }

    pub fn loaded(&self, model: &str, proc: u64, measured: Option<Bytes>) {
        let _ = self.tx.send(Msg::Loaded {
            model: model.into(),
            proc,
            measured,
        });
    }

    pub fn stopping(&self, model: &str, proc: u64) {
        let _ = self.tx.send(Msg::Stopping(model.into(), proc));
    }

    pub fn gone(&self, model: &str, proc: u64, pid: u32) {
        let _ = self.tx.send(Msg::Gone {
            model: model.into(),
            proc,
            pid,
        });
    }

    /// Decide again now, not at the next [`TICK`]: a model's last request
    /// has left, so a waiting load may evict it (or its turn may end).
    pub fn look_again(&self) {
        let _ = self.tx.send(Msg::LookAgain);
    }

    /// A `blue_green` swap was done `stop_first` (counted for the status).
    pub fn fell_back(&self) {
        let _ = self.tx.send(Msg::FellBack);
    }

    /// New budgets and fairness bound (a reload).
    pub fn set_budgets(&self, budgets: Vec<(String, u64)>, fairness: Duration) {
        let _ = self.tx.send(Msg::Budgets(budgets, fairness));
    }

    /// A new bound on the wait for freed memory (a reload); waits already
    /// running keep theirs.
    pub fn set_free_wait(&self, bound: Duration) {
        let _ = self.tx.send(Msg::FreeWait(bound));
    }

    /// Keeps the remembered figures of these launches only (the spec's
    /// current ones), so `measured.json` does not grow with every edit.
    pub fn keep_measured(&self, launch_ids: Vec<String>) {
        let _ = self.tx.send(Msg::KeepMeasured(launch_ids));
    }

    pub fn report(&self) -> MemoryReport {
        self.report.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<MemoryReport> {
        self.report.clone()
    }
}

struct Pending {
    ask: Ask,
    reply: oneshot::Sender<Grant>,
    since: Instant,
    waited: bool,
    /// Set when other models were stopped for it.
    made_room: bool,
    held_by: Vec<String>,
    /// What its owner was last told it waits for.
    told: Option<Vec<String>>,
}

struct Task {
    ledger: Ledger,
    /// The current owner of each model: its number and its view.
    tenants: BTreeMap<String, (u64, Arc<dyn Tenant>)>,
    pending: Vec<Pending>,
    /// Models asked to stop for another, and when.
    asked: BTreeMap<String, Instant>,
    /// What each loaded process measured, by holder.
    measured_now: BTreeMap<(String, u64), Bytes>,
    /// The device reading when each stop began, by holder.
    at_stop: BTreeMap<(String, u64), Option<Watch>>,
    refused: BTreeMap<String, String>,
    /// What each granted process was asked with: its launch and whether its
    /// footprint is declared.
    granted: BTreeMap<(String, u64), (String, bool)>,
    counters: Counters,
    measured: Option<Measured>,
    watch: FreeWatch,
    tx: mpsc::WeakUnboundedSender<Msg>,
    report: watch::Sender<MemoryReport>,
    epoch: Instant,
    fairness: Duration,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        loop {
            let msg = if self.pending.is_empty() {
                match rx.recv().await {
                    Some(m) => Some(m),
                    None => return,
                }
            } else {
                tokio::select! {
                    m = rx.recv() => match m { Some(m) => Some(m), None => return },
                    () = tokio::time::sleep(TICK) => None,
                }
            };
            if let Some(msg) = msg {
                if matches!(msg, Msg::LookAgain) && self.pending.is_empty() {
                    continue;
                }
                self.handle(msg);
            }
            self.decide();
            self.publish();
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Register(model, owner, tenant) => {
                self.tenants.insert(model, (owner, tenant));
            }
            Msg::Unregister(model, owner) => {
                if self.tenants.get(&model).is_some_and(|(o, _)| *o == owner) {
                    self.tenants.remove(&model);
                    self.refused.remove(&model);
                }
            }
            Msg::MadeRoom { yield_turn: true } => self.counters.yields += 1,
            Msg::MadeRoom { yield_turn: false } => self.counters.evictions += 1,
            Msg::Reserve(mut ask, reply) => {
                if !ask.declared
                    && let Some(m) = self.measured.as_ref().and_then(|m| m.get(&ask.launch_id))
                {
                    // What this launch really took last time.
                    ask.need = m;
                }
                self.pending.push(Pending {
                    ask,
                    reply,
                    since: Instant::now(),
                    waited: false,
                    made_room: false,
                    held_by: Vec::new(),
                    told: None,
                });
            }
            Msg::Cancel(model, proc) => {
                self.pending
                    .retain(|p| !(p.ask.model == model && p.ask.proc == proc));
                self.ledger.freed(&model, proc);
                self.granted.remove(&(model, proc));
            }
            Msg::Loaded {
                model,
                proc,
                measured,
            } => {
                let key = (model.clone(), proc);
                let (launch_id, declared) = self.granted.get(&key).cloned().unwrap_or_default();
                if let Some(m) = &measured {
                    self.measured_now.insert((model.clone(), proc), m.clone());
                }
                let replace = measured.filter(|m| !declared && !m.is_empty());
                if let (Some(m), Some(store)) = (&replace, &self.measured)
                    && !launch_id.is_empty()
                    && let Err(e) = store.record(&launch_id, m)
                {
                    tracing::warn!(%model, "cannot remember what the load measured in {}: {e}", store.path().display());
                }
                self.ledger.loaded(&model, proc, replace);
            }
            Msg::Stopping(model, proc) => {
                let w = self.watch_for(&model, proc);
                self.at_stop.insert((model.clone(), proc), w);
                self.ledger.exited(&model, proc);
            }
            Msg::Gone { model, proc, pid } => {
                self.ledger.exited(&model, proc);
                self.measured_now.remove(&(model.clone(), proc));
                let watch = self
                    .at_stop
                    .remove(&(model.clone(), proc))
                    .flatten()
                    .map(|w| Watch { pid, ..w })
                    .unwrap_or(Watch {
                        pid,
                        device: None,
                        used_at_stop: None,
                        held: 0,
                    });
                let roots = self.watch.roots.clone();
                let (bound, poll) = (self.watch.bound, self.watch.poll);
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let by = freed::wait_freed(&roots, &watch, bound, poll).await;
                    if let Some(tx) = tx.upgrade() {
                        let _ = tx.send(Msg::Freed { model, proc, by });
                    }
                });
            }
            Msg::Freed { model, proc, by } => {
                if by == FreedBy::TimedOut {
                    self.counters.free_timeouts += 1;
                    tracing::warn!(%model, "its memory was not seen free within {:?}; releasing its reservation anyway", self.watch.bound);
                }
                self.ledger.freed(&model, proc);
                self.granted.remove(&(model, proc));
            }
            Msg::Budgets(b, fairness) => {
                self.ledger.set_budgets(b);
                self.fairness = fairness;
            }
            Msg::FreeWait(bound) => self.watch.bound = bound,
            Msg::FellBack => self.counters.fallbacks += 1,
            Msg::LookAgain => {}
            Msg::KeepMeasured(ids) => {
                if let Some(store) = &self.measured {
                    let keep: Vec<&str> = ids.iter().map(String::as_str).collect();
                    if let Err(e) = store.retain(&keep) {
                        tracing::warn!("cannot prune {}: {e}", store.path().display());
                    }
                }
            }
        }
    }

    /// What to watch when `model`'s process `proc` stops: its biggest GPU
    /// reservation, on the driver's device for it, read now.
    fn watch_for(&self, model: &str, proc: u64) -> Option<Watch> {
        let r = self.ledger.get(model, proc)?;
        let (device, held) = r
            .bytes
            .iter()
            .filter(|(d, _)| d.as_str() != super::HOST)
            .max_by_key(|(_, b)| **b)?;
        // One reading of the probes gives the device and its used memory.
        let drivers = crate::memory::probe::devices(&self.watch.roots);
        let probe = freed::driver_device(device, &drivers)?;
        Some(Watch {
            pid: 0,
            used_at_stop: drivers.iter().find(|d| d.name == probe).map(|d| d.used),
            device: Some(probe),
            held: *held,
        })
    }

    fn residents(&self) -> Vec<Resident> {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        self.tenants
            .iter()
            .filter(|(m, _)| self.ledger.models().contains(&m.as_str()))
            .map(|(m, (_, t))| {
                let o = t.occupancy();
                Resident {
                    model: m.clone(),
                    priority: o.priority,
                    in_flight: o.in_flight,
                    queued: o.queued,
                    last_used: now_ms.saturating_sub(o.idle_for.as_millis() as u64),
                    on_demand: o.on_demand,
                    loaded_for: o.loaded_for,
                    served: o.served,
                }
            })
            .collect()
    }

    /// Answers every waiting reservation it can, oldest first. A device an
    /// older one waits for is not given to a younger one (no starving).
    fn decide(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.asked
            .retain(|m, at| at.elapsed() < ASK_AGAIN && self.ledger.has(m, Phase::Loaded));
        self.pending.sort_by_key(|p| p.since);
        let mut blocked: BTreeSet<String> = BTreeSet::new();
        let pending = std::mem::take(&mut self.pending);
        for mut p in pending {
            if p.reply.is_closed() {
                continue;
            }
            let tenant = self.tenants.get(&p.ask.model).map(|(_, t)| Arc::clone(t));
            match self.try_grant(&mut p, &blocked) {
                Some(grant) => {
                    if p.told.is_some()
                        && let Some(t) = &tenant
                    {
                        t.memory_wait(None);
                    }
                    if grant == Grant::Granted {
                        if p.made_room {
                            self.counters.swaps += 1;
                        }
                        self.refused.remove(&p.ask.model);
                        self.granted.insert(
                            (p.ask.model.clone(), p.ask.proc),
                            (p.ask.launch_id.clone(), p.ask.declared),
                        );
                    }
                    if let Grant::NoRoom(why) = &grant {
                        self.counters.refused += 1;
                        self.refused.insert(p.ask.model.clone(), why.clone());
                    }
                    let _ = p.reply.send(grant);
                }
                None => {
                    if !p.waited {
                        p.waited = true;
                        self.counters.waits += 1;
                    }
                    blocked.extend(
                        p.ask
                            .need
                            .iter()
                            .filter(|(_, b)| **b > 0)
                            .map(|(d, _)| d.clone()),
                    );
                    if p.told.as_ref() != Some(&p.held_by)
                        && let Some(t) = &tenant
                    {
                        t.memory_wait(Some(p.held_by.clone()));
                        p.told = Some(p.held_by.clone());
                    }
                    self.pending.push(p);
                }
            }
        }
    }

    /// One waiting reservation: its answer, or `None` to keep waiting.
    fn try_grant(&mut self, p: &mut Pending, blocked: &BTreeSet<String>) -> Option<Grant> {
        let ask = &p.ask;
        let tenant = self.tenants.get(&ask.model).map(|(_, t)| Arc::clone(t));
        if ask.beside {
            return match self.ledger.reserve(&ask.model, ask.proc, ask.need.clone()) {
                Ok(()) => Some(Grant::Granted),
                Err(ReserveError::Short(short)) => Some(Grant::NotBeside(format!(
                    "the replacement does not fit beside the serving instance: {}",
                    short
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
                Err(ReserveError::AlreadyHeld { .. }) => Some(Grant::Granted),
                Err(ReserveError::DeviceLoading { loading, .. }) => {
                    p.held_by = vec![loading];
                    None
                }
            };
        }
        if ask.on_demand
            && p.since.elapsed() >= ABANDONED_AFTER
            && tenant.as_ref().is_some_and(|t| t.occupancy().queued == 0)
        {
            return Some(Grant::Withdrawn);
        }
        if ask.need.iter().any(|(d, b)| *b > 0 && blocked.contains(d)) {
            return None;
        }
        let residents = self.residents();
        match policy::make_room(&self.ledger, &ask.model, &ask.need, &residents) {
            Room::Fits => match self.ledger.reserve(&ask.model, ask.proc, ask.need.clone()) {
                Ok(()) | Err(ReserveError::AlreadyHeld { .. }) => Some(Grant::Granted),
                Err(_) => None,
            },
            Room::Never { short } => Some(Grant::NoRoom(format!(
                "model {} does not fit in the memory budget now, even with every idle on-demand model stopped: {}",
                ask.model,
                short
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            Room::Evict { victims } => {
                for v in &victims {
                    self.ask_to_stop(v, &ask.model, false);
                }
                p.made_room = true;
                p.held_by = victims;
                None
            }
            Room::Wait { held_by } => {
                let waiting = Waiting {
                    model: ask.model.clone(),
                    queued: tenant.map_or(1, |t| t.occupancy().queued.max(1)),
                    oldest: p.since.elapsed(),
                };
                let turn_over =
                    policy::yielders(&self.ledger, &ask.need, &residents, &waiting, self.fairness);
                for v in &turn_over {
                    self.ask_to_stop(v, &ask.model, true);
                }
                if !turn_over.is_empty() {
                    p.made_room = true;
                }
                p.held_by = held_by;
                None
            }
        }
    }

    fn ask_to_stop(&mut self, victim: &str, for_model: &str, yield_turn: bool) {
        if self.asked.contains_key(victim) {
            return;
        }
        let Some((_, t)) = self.tenants.get(victim) else {
            return;
        };
        tracing::debug!(
            model = %victim,
            "asked to stop for {for_model} ({})",
            if yield_turn { "its turn is over" } else { "idle" }
        );
        t.stop_for(for_model, yield_turn);
        self.asked.insert(victim.to_owned(), Instant::now());
    }

    fn publish(&self) {
        let mut models: BTreeMap<String, Holding> = BTreeMap::new();
        for ((m, proc), r) in self.ledger.reservations() {
            let e = models.entry(m.clone()).or_default();
            for (d, b) in &r.bytes {
                *e.reserved.entry(d.clone()).or_default() += b;
            }
            if let Some(mm) = self.measured_now.get(&(m.clone(), *proc)) {
                for (d, b) in mm {
                    *e.measured.entry(d.clone()).or_default() += b;
                }
            }
            e.phases.push(
                match r.phase {
                    Phase::Loading => "loading",
                    Phase::Loaded => "loaded",
                    Phase::Releasing => "releasing",
                }
                .into(),
            );
        }
        for p in &self.pending {
            let e = models.entry(p.ask.model.clone()).or_default();
            e.waiting_for = Some(p.held_by.clone());
            e.waiting_s = Some(p.since.elapsed().as_secs_f64());
        }
        for (m, why) in &self.refused {
            models.entry(m.clone()).or_default().refused = Some(why.clone());
        }
        let mut devices: BTreeSet<String> = self.ledger.budgets().keys().cloned().collect();
        devices.extend(models.values().flat_map(|m| m.reserved.keys().cloned()));
        let devices = devices
            .into_iter()
            .map(|d| DeviceBudget {
                budget_bytes: self.ledger.budget(&d).unwrap_or(0),
                reserved_bytes: self.ledger.held_on(&d),
                measured_bytes: self
                    .measured_now
                    .values()
                    .map(|m| m.get(&d).copied().unwrap_or(0))
                    .sum(),
                free_bytes: self.ledger.budget(&d).map_or(0, |_| self.ledger.free(&d)),
                device: d,
            })
            .collect();
        let report = MemoryReport {
            devices,
            models,
            counters: self.counters,
        };
        self.report.send_if_modified(|old| {
            let changed = *old != report;
            if changed {
                *old = report;
            }
            changed
        });
    }
}

/// A number for a new owner, unique for the process's life: it tells a
/// model's successive owners apart, and makes the ledger's holders (owner
/// number and process number together, [`holder`]) unique.
pub fn next_owner_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The ledger's number for process `proc` of owner `owner`: a model's
/// earlier owner may still be releasing its process 1 when the next owner
/// starts its own process 1.
pub fn holder(owner: u64, proc: u64) -> u64 {
    (owner << 32) | (proc & 0xffff_ffff)
}

/// For messages: `1.50 GiB on ROCm0, 2.00 MiB on CPU`.
pub fn describe(bytes: &Bytes) -> String {
    bytes
        .iter()
        .filter(|(_, b)| **b > 0)
        .map(|(d, b)| format!("{} on {d}", human_bytes(*b)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const MIB: u64 = 1 << 20;

    #[derive(Default)]
    struct FakeTenant {
        occupancy: Mutex<Occupancy>,
        asked: Mutex<Vec<(String, bool)>>,
    }

    impl Tenant for FakeTenant {
        fn occupancy(&self) -> Occupancy {
            self.occupancy.lock().unwrap().clone()
        }
        fn stop_for(&self, for_model: &str, yield_turn: bool) {
            self.asked
                .lock()
                .unwrap()
                .push((for_model.into(), yield_turn));
        }
        fn memory_wait(&self, _: Option<Vec<String>>) {}
    }

    fn cpu(mib: u64) -> Bytes {
        Bytes::from([(crate::schedule::HOST.to_owned(), mib * MIB)])
    }

    fn ask(model: &str, proc: u64, mib: u64) -> Ask {
        Ask {
            model: model.into(),
            proc,
            launch_id: format!("{model}-launch"),
            need: cpu(mib),
            declared: true,
            beside: false,
            on_demand: true,
        }
    }

    /// An arbiter over a 100 MiB host budget and on-demand tenants, each
    /// with one request queued.
    fn setup(models: &[&str]) -> (Arbiter, BTreeMap<String, Arc<FakeTenant>>) {
        let a = Arbiter::start(
            vec![(crate::schedule::HOST.into(), 100 * MIB)],
            None,
            FreeWatch {
                roots: ProbeRoots {
                    sys: "/nonexistent".into(),
                    proc: "/nonexistent".into(),
                    nvidia_smi: "/nonexistent".into(),
                },
                ..FreeWatch::default()
            },
        );
        let mut tenants = BTreeMap::new();
        for (i, m) in models.iter().enumerate() {
            let t = Arc::new(FakeTenant::default());
            *t.occupancy.lock().unwrap() = Occupancy {
                queued: 1,
                on_demand: true,
                ..Occupancy::default()
            };
            a.register(m, i as u64 + 1, t.clone());
            tenants.insert((*m).to_owned(), t);
        }
        (a, tenants)
    }

    async fn settle(a: &Arbiter) -> MemoryReport {
        // Every message sent so far is handled before a later report.
        for _ in 0..5 {
            tokio::time::sleep(TICK).await;
        }
        a.report()
    }

    #[tokio::test(start_paused = true)]
    async fn a_model_whose_last_request_left_is_evicted_at_once_not_at_the_next_tick() {
        let (a, t) = setup(&["a", "b"]);
        assert_eq!(a.reserve(ask("a", 1, 60)).await, Grant::Granted);
        a.loaded("a", 1, None);
        *t["a"].occupancy.lock().unwrap() = Occupancy {
            in_flight: 1,
            on_demand: true,
            ..Occupancy::default()
        };
        let _b = tokio::spawn(a.reserve(ask("b", 1, 60)));
        settle(&a).await;
        assert!(
            t["a"].asked.lock().unwrap().is_empty(),
            "a is busy and its turn is not over"
        );
        // Half-way to the next tick (settle ends on one).
        tokio::time::sleep(TICK / 2).await;
        t["a"].occupancy.lock().unwrap().in_flight = 0;
        let at = Instant::now();
        a.look_again();
        // Only yields: the paused clock cannot reach the next tick.
        for _ in 0..100 {
            if !t["a"].asked.lock().unwrap().is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(*t["a"].asked.lock().unwrap(), vec![("b".to_owned(), false)]);
        assert!(at.elapsed() < TICK, "asked after {:?}", at.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_model_is_evicted_and_the_room_given_once_it_is_free() {
        let (a, t) = setup(&["a", "b"]);
        assert_eq!(a.reserve(ask("a", 1, 60)).await, Grant::Granted);
        a.loaded("a", 1, Some(cpu(1)));
        // a served and is idle now.
        t["a"].occupancy.lock().unwrap().queued = 0;
        let b = tokio::spawn(a.reserve(ask("b", 1, 60)));
        let r = settle(&a).await;
        assert_eq!(*t["a"].asked.lock().unwrap(), vec![("b".to_owned(), false)]);
        assert_eq!(r.models["b"].waiting_for, Some(vec!["a".to_owned()]));
        assert!(!b.is_finished(), "b waits while a still holds its memory");
        // A declared footprint stays the reservation whatever was measured.
        assert_eq!(r.models["a"].reserved, cpu(60));
        assert_eq!(r.models["a"].measured, cpu(1));
        a.made_room(false);
        a.stopping("a", 1);
        a.gone("a", 1, 4242);
        assert_eq!(b.await.unwrap(), Grant::Granted);
        let r = settle(&a).await;
        assert_eq!(r.models["b"].reserved, cpu(60));
        assert!(!r.models.contains_key("a"), "{r:?}");
        assert_eq!(r.counters.evictions, 1);
        assert_eq!(r.counters.swaps, 1);
        assert_eq!(r.counters.waits, 1);
        assert_eq!(r.devices[0].reserved_bytes, 60 * MIB);
        assert_eq!(r.devices[0].free_bytes, 40 * MIB);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_model_keeps_its_turn_then_yields() {
        let (a, t) = setup(&["a", "b"]);
        a.set_budgets(
            vec![(crate::schedule::HOST.into(), 100 * MIB)],
            Duration::from_secs(5),
        );
        assert_eq!(a.reserve(ask("a", 1, 60)).await, Grant::Granted);
        a.loaded("a", 1, None);
        *t["a"].occupancy.lock().unwrap() = Occupancy {
            in_flight: 1,
            served: 1,
            on_demand: true,
            loaded_for: Duration::from_secs(60),
            ..Occupancy::default()
        };
        let _b = tokio::spawn(a.reserve(ask("b", 1, 60)));
        settle(&a).await;
        assert!(
            t["a"].asked.lock().unwrap().is_empty(),
            "b has not waited the bound"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        settle(&a).await;
        assert_eq!(*t["a"].asked.lock().unwrap(), vec![("b".to_owned(), true)]);
    }

    #[tokio::test(start_paused = true)]
    async fn what_cannot_fit_now_is_refused_and_nobody_is_asked_to_stop() {
        let (a, t) = setup(&["a", "big"]);
        // a is always-on: never a victim.
        t["a"].occupancy.lock().unwrap().on_demand = false;
        assert_eq!(a.reserve(ask("a", 1, 60)).await, Grant::Granted);
        a.loaded("a", 1, None);
        let g = a.reserve(ask("big", 1, 50)).await;
        let Grant::NoRoom(why) = g else {
            panic!("{g:?}")
        };
        assert!(why.contains("short by 10.00 MiB on CPU"), "{why}");
        assert!(t["a"].asked.lock().unwrap().is_empty());
        let r = settle(&a).await;
        assert_eq!(r.counters.refused, 1);
        assert_eq!(r.models["big"].refused.as_deref(), Some(why.as_str()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_replacement_that_does_not_fit_beside_is_told_so() {
        let (a, _t) = setup(&["a"]);
        assert_eq!(a.reserve(ask("a", 1, 60)).await, Grant::Granted);
        a.loaded("a", 1, None);
        let g = a
            .reserve(Ask {
                beside: true,
                ..ask("a", 2, 60)
            })
            .await;
        assert!(matches!(g, Grant::NotBeside(_)), "{g:?}");
        assert_eq!(
            a.reserve(Ask {
                beside: true,
                ..ask("a", 3, 40)
            })
            .await,
            Grant::Granted,
            "40 MiB fit beside"
        );
        let r = settle(&a).await;
        assert_eq!(r.models["a"].reserved, cpu(100));
        assert_eq!(r.models["a"].phases, vec!["loaded", "loading"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_start_is_withdrawn_and_a_younger_one_does_not_jump_the_queue() {
        let (a, t) = setup(&["a", "b", "c"]);
        assert_eq!(a.reserve(ask("a", 1, 60)).await, Grant::Granted);
        a.loaded("a", 1, None);
        // a is busy for good: b waits for it, and c (which would fit in
        // the 40 MiB free) must not take the room b waits for.
        t["a"].occupancy.lock().unwrap().in_flight = 1;
        let b = tokio::spawn(a.reserve(ask("b", 1, 50)));
        settle(&a).await;
        let c = tokio::spawn(a.reserve(ask("c", 1, 30)));
        settle(&a).await;
        assert!(!b.is_finished() && !c.is_finished());
        // b's requests all gave up: its start is withdrawn, and c goes.
        t["b"].occupancy.lock().unwrap().queued = 0;
        tokio::time::sleep(ABANDONED_AFTER).await;
        assert_eq!(b.await.unwrap(), Grant::Withdrawn);
        assert_eq!(c.await.unwrap(), Grant::Granted);
    }

    #[tokio::test]
    async fn an_estimate_is_replaced_by_what_the_load_measured_and_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let a = Arbiter::start(
            vec![(crate::schedule::HOST.into(), 100 * MIB)],
            Some(Measured::new(dir.path())),
            FreeWatch::default(),
        );
        let estimate = Ask {
            declared: false,
            ..ask("a", 1, 30)
        };
        assert_eq!(a.reserve(estimate).await, Grant::Granted);
        a.loaded("a", 1, Some(cpu(42)));
        a.stopping("a", 1);
        a.gone("a", 1, u32::MAX);
        // The next start of the same launch reserves what it measured.
        let again = Ask {
            declared: false,
            ..ask("a", 2, 30)
        };
        assert_eq!(a.reserve(again).await, Grant::Granted);
        let r = settle(&a).await;
        assert_eq!(r.models["a"].reserved, cpu(42), "{r:?}");
        assert_eq!(Measured::new(dir.path()).get("a-launch"), Some(cpu(42)));
    }

    #[test]
    fn holders_of_successive_owners_differ() {
        assert_ne!(holder(1, 1), holder(2, 1));
        assert_eq!(holder(3, 7) & 0xffff_ffff, 7);
    }
}
