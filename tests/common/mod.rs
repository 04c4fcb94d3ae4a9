//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod daemon;

use std::path::{Path, PathBuf};

use rocm_llm::spec::Desired;
use rocm_llm::spec::validate::{self, Context, FileProbe};

/// Every model file exists: for tests of planning, where files don't matter.
pub struct AnyFile;

impl FileProbe for AnyFile {
    fn check_gguf(&self, _: &Path) -> Result<(), String> {
        Ok(())
    }
    fn check_readable(&self, _: &Path) -> Result<(), String> {
        Ok(())
    }
}

pub fn desired(yaml: &str) -> Desired {
    let ctx = Context {
        spec_path: Path::new("/specs/models.yaml"),
        default_llama_server: PathBuf::from("/bin/llama-server"),
        probe: &AnyFile,
    };
    match validate::load(yaml, &ctx) {
        Ok(d) => d,
        Err(e) => panic!("spec should be valid:\n{e}\n---\n{yaml}"),
    }
}
