//! Fuzzes the spec front end: arbitrary UTF-8 through `validate::load`, the
//! same path `rocm-llm validate` and the daemon's reload take.
//!
//! Invariants, for every input:
//! - nothing panics (parsing, decoding, validation, rendering the errors,
//!   planning);
//! - a rejected spec carries at least one diagnostic, and each renders
//!   against the text it came from;
//! - an accepted spec plans idempotently: once its launches run, planning
//!   again changes nothing.
//!
//! Every model file "exists" (the probe accepts everything), so the fuzzer
//! reaches the semantic checks instead of stopping at a missing file.
//!
//! Run (from the repository root; the examples and error fixtures seed it):
//!   mkdir -p fuzz/corpus/spec_parser
//!   cargo +nightly fuzz run spec_parser fuzz/corpus/spec_parser examples tests/fixtures/spec-errors -- -max_total_time=60 -max_len=16384

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rocm_llm::plan::{self, Observed};
use rocm_llm::spec::validate::{self, Context, FileProbe};

struct AnyFile;

impl FileProbe for AnyFile {
    fn check_gguf(&self, _: &Path) -> Result<(), String> {
        Ok(())
    }
    fn check_readable(&self, _: &Path) -> Result<(), String> {
        Ok(())
    }
}

fuzz_target!(|text: &str| {
    let ctx = Context {
        spec_path: Path::new("fuzz.yaml"),
        default_llama_server: "llama-server".into(),
        probe: &AnyFile,
    };
    match validate::load(text, &ctx) {
        Ok(desired) => {
            let running: Observed = plan::desired_launches(&desired)
                .into_iter()
                .map(|(name, launch)| (name, launch.identity()))
                .collect();
            let again = plan::plan(&desired, &running);
            assert!(
                plan::is_noop(&again),
                "planning after the launches ran is not a no-op: {again:?}"
            );
        }
        Err(errors) => {
            assert!(
                !errors.diagnostics.is_empty(),
                "a rejected spec with no diagnostic"
            );
            for d in &errors.diagnostics {
                let _ = d.render(text);
            }
        }
    }
});
