//! rocm-llm: declare local LLMs in one YAML file; the daemon keeps llama-server
//! processes matching it and serves them behind one OpenAI-compatible endpoint.
//!
//! Layout (data flows top to bottom):
//! - [`spec`]: the pure core. YAML text -> validated desired state, with
//!   located, actionable errors.
//! - [`plan`]: the pure core. Desired state + observed instances -> actions.
//! - [`gguf`]: reading GGUF headers (and writing tiny test models).
//! - [`supervisor`]: the effectful edge for one model instance: one owner task
//!   per model, spawning, readiness, stop, restart backoff.
//! - [`daemon`]: the reconcile loop over a closed set of events, the spec
//!   watcher, the status API and systemd notification.
//! - [`proxy`]: the OpenAI-compatible endpoint.
//! - [`http`]: rules both HTTP servers share (what browsers may do).
//! - [`status_page`]: the status page on the control address, its live
//!   `/events` stream and the operator actions.
//! - [`schedule`]: the pure memory policy (admission, the ledger, eviction,
//!   anti-thrash) and the edge that detects the machine's memory.

pub mod daemon;
pub mod gguf;
pub mod http;
pub mod memory;
pub mod plan;
pub mod proxy;
pub mod schedule;
pub mod spec;
pub mod status_page;
pub mod supervisor;
