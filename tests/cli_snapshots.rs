//! Snapshots (insta) of the human output of `rocm-llm validate` and
//! `rocm-llm plan` on representative specs: what a person reads, whole, so
//! an unintended change to it shows in review. The temporary directory is
//! redacted to `[DIR]`, launch ids (they hash paths in it) to `[ID]`, and
//! the host's detected memory to `[HOST]`; the specs give their memory
//! budget, so nothing else varies between machines or runs.
//! The status table's snapshot is a unit test in src/cli/status.rs (its
//! input is a report, not a spec). `INSTA_UPDATE=always cargo test --test
//! cli_snapshots` rewrites them after an intended change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

/// A spec directory with tiny models `names` and an executable fake
/// `bin/llama-server` (validate checks that it can run; these need no real
/// one).
fn spec_dir(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, name) in names.iter().enumerate() {
        rocm_llm::gguf::write_tiny_llama(
            &dir.path().join(format!("{name}.gguf")),
            &rocm_llm::gguf::TinyModel::with_seed(i as u64 + 1, *name),
        )
        .expect("tiny model");
    }
    std::fs::create_dir(dir.path().join("bin")).expect("mkdir");
    let server = dir.path().join("bin/llama-server");
    std::fs::write(&server, "#!/bin/sh\n").expect("write");
    std::fs::set_permissions(&server, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    dir
}

/// `rocm-llm ARGS SPEC` on `spec` written in `dir`: the exit code, then
/// stdout and stderr, with `dir` redacted.
fn run(dir: &Path, args: &[&str], spec: &str) -> String {
    let path = dir.join("models.yaml");
    std::fs::write(&path, spec).expect("write the spec");
    let out = Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
        .args(args)
        .arg(&path)
        .env("ROCM_LLM_LLAMA_SERVER", "/bin/true")
        .env_remove("ROCM_LLM_API_KEY")
        .output()
        .expect("run rocm-llm");
    let text = format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        out.status
            .code()
            .map_or("by signal".into(), |c| c.to_string()),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = redact_launch_ids(&text.replace(&dir.display().to_string(), "[DIR]"));
    // `validate` reports the host's memory beside the spec's budget.
    text.lines()
        .map(|l| match l.find("host memory ") {
            Some(i) => format!("{}host memory [HOST]\n", &l[..i]),
            None => format!("{l}\n"),
        })
        .collect()
}

/// A launch id hashes the command line, and so the temporary directory in
/// it: `launch id 0123456789abcdef` becomes `launch id [ID]`.
fn redact_launch_ids(text: &str) -> String {
    const MARK: &str = "launch id ";
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(MARK) {
        let (head, tail) = rest.split_at(i + MARK.len());
        out.push_str(head);
        let id_len = tail.chars().take_while(char::is_ascii_hexdigit).count();
        out.push_str(if id_len > 0 { "[ID]" } else { "" });
        rest = &tail[id_len..];
    }
    out.push_str(rest);
    out
}

/// Two models, an alias, on-demand, an idle timeout, blue/green: what
/// most specs use. Port 1 on the control address: no daemon answers there.
/// The host's memory is given, not detected, so the budget is this
/// machine's as any other's.
const TWO_MODELS: &str = "\
llama_server: bin/llama-server
listen: 127.0.0.1:8080
control: 127.0.0.1:1
memory:
  ram: { total: 16GiB, reserve: 1GiB }
defaults:
  ctx_size: 512
  parallel: 2
models:
  chat:
    model: chat.gguf
    aliases: [assistant]
    swap: blue_green
  coder:
    model: coder.gguf
    on_demand: true
    idle_timeout: 10m
    flash_attn: on
    env: {HSA_OVERRIDE_GFX_VERSION: \"11.0.1\"}
    extra_args: [--top-k, \"40\"]
";

#[test]
fn validate_a_valid_spec() {
    let dir = spec_dir(&["chat", "coder"]);
    insta::assert_snapshot!(run(dir.path(), &["validate"], TWO_MODELS));
}

#[test]
fn validate_a_spec_with_mistakes() {
    let dir = spec_dir(&["chat"]);
    std::fs::write(dir.path().join("notes.txt"), "not a model").expect("write");
    let spec = "\
llama_server: bin/llama-server
models:
  qwen:
    model: notes.txt
    ctx_sise: 4096
    parallel: 0
    ready_timeout: soon
  gemma:
    model: missing.gguf
  chat:
    model: chat.gguf
    aliases: [qwen]
";
    insta::assert_snapshot!(run(dir.path(), &["validate"], spec));
}

#[test]
fn plan_from_nothing_running() {
    let dir = spec_dir(&["chat", "coder"]);
    insta::assert_snapshot!(run(dir.path(), &["plan"], TWO_MODELS));
}
