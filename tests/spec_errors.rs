//! Table-driven spec error tests: one fixture per kind of mistake in
//! tests/fixtures/spec-errors/. Each fixture lists what it must produce in
//! `# expect: LINE:COLUMN: PATH: MESSAGE` comments; adding a case is adding a
//! file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use rocm_llm::spec::validate::{self, Context, FileProbe};

/// Model files "exist" unless their name says otherwise, so the fixtures
/// need no real GGUF files; the real probe is tested in tests/cli.rs.
struct NamedProbe;

impl FileProbe for NamedProbe {
    fn check_gguf(&self, path: &Path) -> Result<(), String> {
        let name = path.display().to_string();
        if name.contains("missing") {
            Err(format!("file {name} does not exist"))
        } else if name.ends_with(".txt") {
            Err(format!(
                "{name} is not a GGUF file (it does not start with the GGUF magic)"
            ))
        } else {
            Ok(())
        }
    }
    fn check_readable(&self, path: &Path) -> Result<(), String> {
        self.check_gguf(path)
            .map_err(|_| format!("file {} does not exist", path.display()))
    }
}

fn check(fixture: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(fixture).map_err(|e| e.to_string())?;
    let expected: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(str::to_owned)
        .collect();
    if expected.is_empty() {
        return Err("fixture has no `# expect:` line".into());
    }
    let ctx = Context {
        spec_path: Path::new("spec.yaml"),
        default_llama_server: PathBuf::from("llama-server"),
        probe: &NamedProbe,
    };
    let found: Vec<String> = match validate::load(&text, &ctx) {
        Ok(_) => vec![],
        Err(errors) => errors
            .diagnostics
            .iter()
            .map(|d| d.to_string().trim_start_matches("spec.yaml:").to_owned())
            .collect(),
    };
    let matches = |e: &String, f: &String| match e.strip_suffix("<syntax>") {
        // A YAML syntax error's wording belongs to the parser; its place and
        // kind are ours to check.
        Some(prefix) => f.starts_with(prefix),
        None => e == f,
    };
    if expected.len() == found.len() && expected.iter().zip(&found).all(|(e, f)| matches(e, f)) {
        Ok(())
    } else {
        Err(format!(
            "expected:\n  {}\nfound:\n  {}",
            expected.join("\n  "),
            found.join("\n  ")
        ))
    }
}

#[test]
fn every_fixture_reports_exactly_its_mistakes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spec-errors");
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    fixtures.sort();
    assert!(
        fixtures.len() >= 20,
        "fixtures went missing: {}",
        fixtures.len()
    );
    let failures: Vec<String> = fixtures
        .iter()
        .filter_map(|f| {
            check(f)
                .err()
                .map(|e| format!("{}:\n{e}", f.file_name().unwrap_or_default().display()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n\n")
    );
}
