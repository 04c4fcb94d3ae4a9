//! The reconcile plan: a pure function from desired and observed state to
//! actions. The executor (the daemon) performs them, each kind its own way;
//! planning again after they are done yields nothing but `Keep`.
//!
//! "Observed" is what each model's owner is working towards: the launch of
//! the spec the daemon last applied ([`observed`]), which the status API
//! shows as `target_launch_id`. The daemon plans against its own record and
//! `rocm-llm plan` against the status, so both see the same thing, and a
//! replacement still loading is not planned twice.

pub mod launch;
pub mod memory;

use std::collections::BTreeMap;
use std::fmt;

pub use launch::{Launch, LaunchId};

use crate::spec::Desired;

/// What each model's owner works towards: its launch identity.
pub type Observed = BTreeMap<String, LaunchId>;

/// What the daemon observes after applying `desired`: every enabled model
/// (on-demand ones too) with its launch.
pub fn observed(desired: &Desired) -> Observed {
    desired_launches(desired)
        .into_iter()
        .map(|(name, launch)| (name, launch.identity()))
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActionKind {
    /// Owned but no longer wanted (removed, disabled): its owner drains and
    /// stops it and ends.
    Stop,
    /// Owned with another launch identity: its owner replaces the process
    /// by the model's swap strategy.
    Restart,
    /// Wanted, always on, and not owned: a new owner starts it now.
    Start,
    /// Wanted, on demand, and not owned: a new owner waits for its first
    /// request.
    Standby,
    /// Owned with the wanted identity: the process is left alone; settings
    /// that only steer the daemon (timeouts, queue) are handed over.
    Keep,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    pub kind: ActionKind,
    pub model: String,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self.kind {
            ActionKind::Stop => "stop",
            ActionKind::Restart => "restart",
            ActionKind::Start => "start",
            ActionKind::Standby => "standby",
            ActionKind::Keep => "keep",
        };
        write!(f, "{verb} {}", self.model)
    }
}

/// The launch each enabled model should run with.
pub fn desired_launches(desired: &Desired) -> BTreeMap<String, Launch> {
    desired
        .enabled_models()
        .map(|m| (m.name.clone(), Launch::for_model(m, &desired.llama_server)))
        .collect()
}

/// Actions that turn `observed` into `desired`, one for every model of
/// either. Deterministic: stops first (they free VRAM), then restarts, then
/// starts, then on-demand models (their first request starts them), each by
/// model name.
pub fn plan(desired: &Desired, observed: &Observed) -> Vec<Action> {
    let launches = desired_launches(desired);
    let mut actions = Vec::new();
    for (name, running) in observed {
        let kind = match launches.get(name) {
            None => ActionKind::Stop,
            Some(launch) if launch.identity() == *running => ActionKind::Keep,
            Some(_) => ActionKind::Restart,
        };
        actions.push(Action {
            kind,
            model: name.clone(),
        });
    }
    for name in launches.keys().filter(|n| !observed.contains_key(*n)) {
        let on_demand = desired
            .models
            .get(name)
            .is_some_and(|m| m.lifecycle.on_demand);
        actions.push(Action {
            kind: if on_demand {
                ActionKind::Standby
            } else {
                ActionKind::Start
            },
            model: name.clone(),
        });
    }
    actions.sort_by(|a, b| (a.kind, &a.model).cmp(&(b.kind, &b.model)));
    actions
}

/// True when the plan changes nothing.
pub fn is_noop(actions: &[Action]) -> bool {
    actions.iter().all(|a| a.kind == ActionKind::Keep)
}
