//! rocm-llm: declare local LLMs in one YAML file; the daemon keeps llama-server
//! processes matching it and serves them behind one OpenAI-compatible endpoint.
//!
//! Layout, each layer importing only those below it (docs/architecture.md):
//! - [`spec`]: the pure core. YAML text -> validated desired state, with
//!   located, actionable errors (admission against the memory budget
//!   included).
//! - [`plan`]: the pure core. Desired state + observed instances -> actions.
//! - [`gguf`]: reading GGUF headers (and writing tiny test models).
//! - [`memory`]: what a model needs per device (pure), and what the drivers
//!   and llama-server's log say it holds.
//! - [`schedule`]: the pure memory policy (admission, the ledger, eviction,
//!   anti-thrash) and the edge that detects the machine's memory.
//! - [`supervisor`]: the effectful edge for one model: one owner per model,
//!   a pure core and its executor, spawning, readiness, stop, backoff.
//! - [`http`]: what both HTTP servers share: browser rules, the API key, the
//!   Prometheus text format.
//! - [`proxy`]: the OpenAI-compatible endpoint and its routing table.
//! - [`daemon`]: the reconcile loop over a closed set of events, the spec
//!   watcher, the status API and page, and systemd notification.

// Items are pub(crate) unless the crate exports them.
#![warn(unreachable_pub)]

pub mod daemon;
pub mod gguf;
pub mod http;
pub mod memory;
pub mod plan;
pub mod proxy;
pub mod schedule;
pub mod spec;
pub mod supervisor;
