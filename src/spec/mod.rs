//! The spec: YAML text in, validated desired state out. Pure apart from
//! reading the GGUF headers the spec names (behind [`validate::FileProbe`]).

pub mod model;
pub mod tree;
pub mod validate;

pub use model::*;
pub mod decode;
pub mod desired;
pub mod diagnostic;

pub use desired::*;
pub use diagnostic::{Diagnostic, SpecErrors};
