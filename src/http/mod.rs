//! What the endpoint and the status API share: the rules for browsers (pure
//! functions of the request head), the API key, and the Prometheus text
//! format. Nothing here knows the daemon.

pub mod auth;
pub mod browser;
pub mod prometheus;
