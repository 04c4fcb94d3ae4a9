//! The CLI as a user runs it: real binary, real files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// The binary, with an executable default `llama_server` (validation checks
/// that it can run; these specs name none) unless a test removes it.
fn rocm_llm() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rocm-llm"));
    cmd.env("ROCM_LLM_LLAMA_SERVER", "/bin/true");
    cmd
}

#[test]
fn validate_prints_all_five_mistakes_with_places_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("notes.txt"), "not a model").expect("write");
    let spec = dir.path().join("models.yaml");
    std::fs::write(
        &spec,
        "models:\n  qwen:\n    model: notes.txt\n    ctx_sise: 4096\n    parallel: 0\n    ready_timeout: soon\n  gemma:\n    model: missing.gguf\n",
    )
    .expect("write");
    let out = rocm_llm().arg("validate").arg(&spec).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let at = |line: &str| format!("{}:{line}", spec.display());
    for expected in [
        format!(
            "{}: models.gemma.model: file {} does not exist",
            at("8:12"),
            dir.path().join("missing.gguf").display()
        ),
        format!(
            "{}: models.qwen.model: {} is not a GGUF file",
            at("3:12"),
            dir.path().join("notes.txt").display()
        ),
        format!(
            "{}: models.qwen.ctx_sise: unknown key \"ctx_sise\" (did you mean \"ctx_size\"?)",
            at("4:5")
        ),
        format!(
            "{}: models.qwen.parallel: expected an integer from 1 to 256, found integer 0",
            at("5:15")
        ),
        format!(
            "{}: models.qwen.ready_timeout: expected a duration such as 30s, 10m or 1h 30m, found \"soon\"",
            at("6:20")
        ),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("5 errors found"), "{stderr}");
    // The source line and a caret under the mistake.
    assert!(
        stderr.contains(" 5 |     parallel: 0\n   |               ^"),
        "{stderr}"
    );
}

#[test]
fn validate_accepts_a_valid_spec_with_a_real_gguf_and_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    rocm_llm_lib_write_model(&dir.path().join("tiny.gguf"));
    let spec = dir.path().join("models.yaml");
    std::fs::write(&spec, "models:\n  tiny:\n    model: tiny.gguf\n").expect("write");
    let out = rocm_llm().arg("validate").arg(&spec).output().expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 model, 1 enabled)"));
}

fn rocm_llm_lib_write_model(path: &std::path::Path) {
    rocm_llm::gguf::write_tiny_llama(path, &rocm_llm::gguf::TinyModel::default())
        .expect("tiny model");
}

#[test]
fn validate_of_an_unreadable_file_exits_3() {
    let out = rocm_llm()
        .args(["validate", "/nonexistent/models.yaml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("/nonexistent/models.yaml: cannot read the spec")
    );
}

#[test]
fn plan_prints_the_exact_command_line_and_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    rocm_llm_lib_write_model(&dir.path().join("tiny.gguf"));
    // validate checks that llama_server can run; plan needs no real one.
    let server = dir.path().join("bin/llama-server");
    std::fs::create_dir(dir.path().join("bin")).expect("mkdir");
    std::fs::write(&server, "#!/bin/sh\n").expect("write");
    std::fs::set_permissions(&server, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let spec = dir.path().join("models.yaml");
    std::fs::write(
        &spec,
        "llama_server: bin/llama-server\ncontrol: 127.0.0.1:1\nmodels:\n  tiny:\n    model: tiny.gguf\n    ctx_size: 512\n    flash_attn: on\n    env: {HSA_OVERRIDE_GFX_VERSION: \"11.0.1\"}\n    extra_args: [--top-k, \"40\"]\n",
    )
    .expect("write");
    let out = rocm_llm().arg("plan").arg(&spec).output().expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = dir.path().join("tiny.gguf");
    let expected = format!(
        "HSA_OVERRIDE_GFX_VERSION=11.0.1 \\\n  {} --model {} --alias tiny --ctx-size 512 --flash-attn on --fit off -lv 4 --top-k 40 --host 127.0.0.1 --port <chosen at start>",
        server.display(),
        model.display()
    );
    assert!(
        stdout.contains(&expected),
        "expected:\n{expected}\nin:\n{stdout}"
    );
    assert!(stdout.contains("#   start tiny"), "{stdout}");
    // The memory estimate from the GGUF header (checked against
    // llama-server's own figures in tests/memory.rs).
    assert!(
        stdout.contains("#     CPU: weights 450.75 KiB + KV 256.00 KiB + compute 1.88 MiB + output 4.05 KiB = 2.57 MiB"),
        "{stdout}"
    );
    // The same spec named relatively from its own directory plans the same launch.
    let relative = rocm_llm()
        .arg("plan")
        .arg("models.yaml")
        .current_dir(dir.path())
        .output()
        .expect("run");
    let launch_line = |s: &str| {
        s.lines()
            .find(|l| l.contains("launch id"))
            .map(str::to_owned)
    };
    assert_eq!(
        launch_line(&String::from_utf8_lossy(&relative.stdout)),
        launch_line(&stdout)
    );
    assert!(
        stdout.contains("no daemon answers at 127.0.0.1:1"),
        "{stdout}"
    );
}

#[test]
fn schema_command_prints_the_committed_schema() {
    let out = rocm_llm().arg("schema").output().expect("run");
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schema/rocm-llm.schema.json"
    ))
    .expect("schema");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        committed.trim_end()
    );
}

#[test]
fn every_command_has_help_and_the_binary_a_version() {
    for args in [
        vec!["--help"],
        vec!["validate", "--help"],
        vec!["plan", "--help"],
        vec!["schema", "--help"],
        vec!["--version"],
    ] {
        let out = rocm_llm().args(&args).output().expect("run");
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
    let out = rocm_llm().arg("no-such-command").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_spec_that_is_not_utf8_is_invalid_at_its_first_bad_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("models.yaml");
    std::fs::write(&spec, b"models:\n  a:\n    model: caf\xe9.gguf\n").expect("write");
    let out = rocm_llm().arg("validate").arg(&spec).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:3:15: the spec is not UTF-8 text: byte 0xe9 (file offset 27)",
            spec.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("1 error found"), "{stderr}");
}

#[test]
fn validate_says_which_llama_server_cannot_run_and_where_it_looked() {
    let dir = tempfile::tempdir().expect("tempdir");
    rocm_llm_lib_write_model(&dir.path().join("tiny.gguf"));
    std::fs::write(dir.path().join("not-executable"), "#!/bin/sh\n").expect("write");
    let cases = [
        // Named in the spec: the error is at its value.
        (
            "llama_server: /nowhere/llama-server\n",
            None,
            "1:15: llama_server: llama-server cannot run: file /nowhere/llama-server does not exist".to_owned(),
        ),
        (
            "llama_server: not-executable\n",
            None,
            format!(
                "1:15: llama_server: llama-server cannot run: {} is not executable (mode 644; chmod +x it)",
                dir.path().join("not-executable").display()
            ),
        ),
        // Not named: from $ROCM_LLM_LLAMA_SERVER, else PATH, which it shows.
        (
            "",
            Some("/empty-dir-for-test"),
            "1:1: llama_server: llama-server cannot run: the spec sets no `llama_server`, so the daemon runs llama-server (from $ROCM_LLM_LLAMA_SERVER, else `llama-server` on PATH), and `llama-server` is not on PATH (/empty-dir-for-test)".to_owned(),
        ),
    ];
    for (head, path, expected) in cases {
        let spec = dir.path().join("models.yaml");
        std::fs::write(
            &spec,
            format!("{head}models:\n  tiny:\n    model: tiny.gguf\n"),
        )
        .expect("write");
        let mut cmd = rocm_llm();
        cmd.arg("validate")
            .arg(&spec)
            .env_remove("ROCM_LLM_LLAMA_SERVER");
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        let out = cmd.output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("{}:{expected}", spec.display())),
            "expected {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn a_model_path_that_is_a_fifo_is_refused_without_hanging() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("model.gguf");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let spec = dir.path().join("models.yaml");
    std::fs::write(&spec, "models:\n  a:\n    model: model.gguf\n").expect("write");
    // `timeout` turns a hang into a failure instead of a stuck suite.
    let out = Command::new("timeout")
        .arg("20")
        .arg(env!("CARGO_BIN_EXE_rocm-llm"))
        .env("ROCM_LLM_LLAMA_SERVER", "/bin/true")
        .arg("validate")
        .arg(&spec)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{} is not a regular file", fifo.display())),
        "{stderr}"
    );
}
