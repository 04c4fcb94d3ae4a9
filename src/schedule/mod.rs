//! Scheduling models into memory (docs/scheduler.md).
//!
//! The pure core: [`admission`] (does the spec fit the budget?), [`ledger`]
//! (the one arbiter of memory at run time), [`policy`] (which idle models
//! make room, and when to swap between two models that cannot both fit).
//! The edges: [`arbiter`] (the one task that owns the ledger at run time
//! and answers every owner's reservation), [`detect`] (what the machine
//! has), [`freed`] (waiting until a stopped process's memory is seen free)
//! and [`measured`] (what each launch took, remembered in the state
//! directory).

pub mod admission;
pub mod arbiter;
pub mod detect;
pub mod freed;
pub mod ledger;
pub mod measured;
pub mod policy;

/// The device name llama.cpp gives the host.
pub const HOST: &str = "CPU";
