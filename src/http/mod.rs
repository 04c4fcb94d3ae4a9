//! HTTP rules shared by the endpoint and the status API, as pure functions
//! of the request head.

pub mod browser;
