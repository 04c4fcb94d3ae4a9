//! The effectful edge for one model instance. See the crate docs.
//!
//! Building blocks, each usable on its own:
//! - [`process`]: spawn one llama-server ([`spawn`]), observe its exit,
//!   stop its process group ([`RunningProcess::stop`]).
//! - [`liveness`]: the probe of a ready process and the pure judgement of
//!   its answers against its CPU use.
//! - [`logs`]: the per-model ring buffer of recent output lines ([`LogSink`]).
//! - [`readiness`]: `/health` polling ([`wait_ready`], [`probe`]).
//! - [`backoff`]: the pure restart policy ([`Backoff`]).
//! - [`leftovers`]: the state file of running children and the start-up
//!   reaping of a previous daemon's children ([`StateFile`], [`reap_leftovers`]).
//! - [`ports`]: picking a free loopback port ([`pick_free_port`]).

pub(crate) mod backoff;
pub(crate) mod gate;
pub(crate) mod instance;
pub mod leftovers;
pub(crate) mod liveness;
pub mod logs;
pub(crate) mod owner;
pub(crate) mod ports;
pub mod process;
pub mod progress;
pub(crate) mod readiness;

// Used beyond the crate (the binary, tests, benches).
pub use backoff::{BackoffError, BackoffPolicy};
pub use instance::{
    AcquireError, InstanceHandle, LaunchRecord, OperateError, OperatorAction, Snapshot, State,
};
pub use leftovers::{InstanceRecord, LeftoverOutcome, StateFile, reap_leftovers};
pub use logs::{LogLine, LogSink, LogStream};
pub use ports::pick_free_port;
pub use process::{StopOutcome, spawn};
pub use readiness::{ProbeResult, ReadyError, probe};

// Used by the daemon and the proxy.
pub(crate) use backoff::Backoff;
pub(crate) use gate::Lease;
pub(crate) use instance::{InstanceSpec, start_instance};
