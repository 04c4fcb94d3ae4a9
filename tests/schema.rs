//! The committed schema/rocm-llm.schema.json is a snapshot of what the code
//! generates; editors use the committed copy, so drift fails here.
//! To accept a change: `cargo run -q -- schema > schema/rocm-llm.schema.json`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

mod common;

#[test]
fn committed_schema_matches_the_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let committed = std::fs::read_to_string(root.join("schema/rocm-llm.schema.json"))
        .expect("schema/rocm-llm.schema.json");
    let generated = serde_json::to_string_pretty(&rocm_llm::spec::decode::spec_schema())
        .expect("schema serialises");
    assert!(
        committed.trim_end() == generated.trim_end(),
        "schema/rocm-llm.schema.json is stale; regenerate it with `cargo run -q -- schema > schema/rocm-llm.schema.json`"
    );
}

#[test]
fn every_example_points_editors_at_the_schema_and_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for entry in std::fs::read_dir(root.join("examples")).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("example");
        assert!(
            text.starts_with("# yaml-language-server: $schema=../schema/rocm-llm.schema.json\n"),
            "{} must start with the yaml-language-server schema line",
            path.display()
        );
        // The model files are the user's; only the spec itself is checked.
        common::desired(&text);
        seen += 1;
    }
    assert!(
        seen >= 3,
        "expected the realistic, minimal and demo examples, found {seen}"
    );
}
