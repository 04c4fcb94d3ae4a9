//! The memory estimate `rocm-llm plan` prints lives in [`crate::memory`];
//! this module keeps the names the plan code used.

pub use crate::memory::{Estimate, Parts, human_bytes};
