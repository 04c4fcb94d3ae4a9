//! The reconcile plan: a pure function from desired and observed state to
//! actions. The executor (the daemon) performs them; planning again after
//! they are done yields nothing but `Keep`.

pub mod launch;
pub mod memory;

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

pub use launch::{Launch, LaunchId};

use crate::spec::Desired;

/// What runs now: the launch identity of each model's instance.
pub type Observed = BTreeMap<String, LaunchId>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Running but no longer wanted (removed, disabled).
    Stop,
    /// Running with another launch identity.
    Restart,
    /// Wanted and not running.
    Start,
    /// Running with the wanted identity: never touched.
    Keep,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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

/// Actions that turn `observed` into `desired`. Deterministic: stops first
/// (they free VRAM), then restarts, then starts, each by model name.
/// On-demand models are not started here; their first request starts them.
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
    for name in launches.keys() {
        let on_demand = desired
            .models
            .get(name)
            .is_some_and(|m| m.lifecycle.on_demand);
        if !observed.contains_key(name) && !on_demand {
            actions.push(Action {
                kind: ActionKind::Start,
                model: name.clone(),
            });
        }
    }
    actions.sort_by(|a, b| (a.kind, &a.model).cmp(&(b.kind, &b.model)));
    actions
}

/// True when the plan changes nothing.
pub fn is_noop(actions: &[Action]) -> bool {
    actions.iter().all(|a| a.kind == ActionKind::Keep)
}
