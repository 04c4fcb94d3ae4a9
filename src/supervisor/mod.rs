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

pub mod backoff;
pub mod gate;
pub mod instance;
pub mod leftovers;
pub mod liveness;
pub mod logs;
pub(crate) mod owner;
pub mod ports;
pub mod process;
pub mod readiness;

pub use backoff::{Backoff, BackoffError, BackoffPolicy, Decision};
pub use gate::{DrainOutcome, Gate, Lease};
pub use instance::{
    AcquireError, InstanceHandle, InstanceSpec, LaunchRecord, OperateError, OperatorAction,
    Snapshot, State, start_instance,
};
pub use leftovers::{
    InstanceRecord, Leftover, LeftoverError, LeftoverOutcome, STATE_FILE_NAME, StateFile,
    reap_leftovers,
};
pub use logs::{LogError, LogLine, LogSink, LogStream};
pub use ports::{PortError, pick_free_port};
pub use process::{KILL_WAIT, RunningProcess, SpawnError, StopOutcome, spawn};
pub use readiness::{ProbeResult, ReadyError, probe, wait_ready};
