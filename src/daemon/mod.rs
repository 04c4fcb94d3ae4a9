//! See the crate docs.
pub mod sdnotify;
