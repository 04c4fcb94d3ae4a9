//! Memory admission (docs/scheduler.md): sizes, `validate` and `plan` on
//! real files, and `plan` on examples/rx7800xt.yaml with a GPU listed by a fake
//! `--list-devices` (no GPU is here).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use rocm_llm::gguf::{TinyModel, write_tiny_llama};
use rocm_llm::spec::{MemoryTotal, Size};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

#[test]
fn sizes_are_written_in_binary_units() {
    for (text, want) in [
        ("16GiB", Ok(16 * GIB)),
        ("512MiB", Ok(512 * MIB)),
        ("0B", Ok(0)),
        (" 1.5GiB ", Ok(3 * GIB / 2)),
        ("1 KiB", Ok(1024)),
        ("2TiB", Ok(2 << 40)),
        (
            "16GB",
            Err(
                "decimal units are not accepted, found \"16GB\": write 16GiB (1024-based, as llama.cpp and the GPU drivers count), or 14.90GiB for the same bytes",
            ),
        ),
        (
            "512mb",
            Err(
                "decimal units are not accepted, found \"512mb\": write 512MiB (1024-based, as llama.cpp and the GPU drivers count), or 488.28MiB for the same bytes",
            ),
        ),
        (
            "9",
            Err(
                "expected a size such as 16GiB, 512MiB or 0B, found \"9\": a size needs its unit (B, KiB, MiB, GiB or TiB)",
            ),
        ),
        (
            "GiB",
            Err("expected a size such as 16GiB, 512MiB or 0B, found \"GiB\""),
        ),
        (
            "1.GiB",
            Err("expected a size such as 16GiB, 512MiB or 0B, found \"1.GiB\""),
        ),
        (
            "1.2.3GiB",
            Err("expected a size such as 16GiB, 512MiB or 0B, found \"1.2.3GiB\""),
        ),
        (
            "-1GiB",
            Err("expected a size such as 16GiB, 512MiB or 0B, found \"-1GiB\""),
        ),
        (
            "2000000TiB",
            Err("2000000TiB is too large (at most 1048576TiB)"),
        ),
    ] {
        assert_eq!(
            Size::parse(text).map(|s| s.0),
            want.map_err(str::to_owned),
            "{text:?}"
        );
    }
    // Written back in the largest exact unit.
    for (bytes, text) in [
        (16 * GIB, "16GiB"),
        (1536 * MIB, "1536MiB"),
        (0, "0B"),
        (1000, "1000B"),
    ] {
        assert_eq!(Size(bytes).to_string(), text);
        assert_eq!(Size::parse(text).unwrap().0, bytes);
    }
    assert_eq!(MemoryTotal::parse("auto"), Ok(MemoryTotal::Auto));
    assert_eq!(
        MemoryTotal::parse("8GiB"),
        Ok(MemoryTotal::Size(Size(8 * GIB)))
    );
    assert_eq!(
        MemoryTotal::parse("lots"),
        Err("expected auto or a size such as 16GiB, 512MiB or 0B, found \"lots\"".to_owned())
    );
}

fn rocm_llm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
}

/// A directory with two tiny models and a spec around `body`.
fn spec_dir(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in ["a", "b"].iter().enumerate() {
        write_tiny_llama(
            &dir.path().join(format!("{name}.gguf")),
            &TinyModel::with_seed(i as u64 + 1, *name),
        )
        .unwrap();
    }
    let spec = dir.path().join("spec.yaml");
    std::fs::write(
        &spec,
        format!("llama_server: /bin/true\ncontrol: 127.0.0.1:1\n{body}"),
    )
    .unwrap();
    (dir, spec)
}

#[test]
fn validate_says_what_it_detected_and_plan_prints_the_fit() {
    let (_dir, spec) = spec_dir(
        "memory:\n  ram: { total: 4GiB, reserve: 1GiB }\nmodels:\n  a:\n    model: a.gguf\n    ctx_size: 512\n  b:\n    model: b.gguf\n    on_demand: true\n    memory: 2GiB\n    priority: 3\n",
    );
    let out = rocm_llm().arg("validate").arg(&spec).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(
            "  detected: /bin/true lists no GPU (every model runs on the host); host memory "
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "  budget CPU: 3.00 GiB (4.00 GiB total - 1.00 GiB reserve) (spec); always-on models "
        ),
        "{text}"
    );

    let out = rocm_llm().arg("plan").arg(&spec).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("# memory budget (admission, docs/scheduler.md):\n#   CPU: 3.00 GiB (4.00 GiB total - 1.00 GiB reserve), spec; always-on "), "{text}");
    let row = |model: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("#   {model} ")))
            .unwrap_or_else(|| panic!("no row for {model}:\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        row("a").starts_with("# a always-on 0 estimate "),
        "{}",
        row("a")
    );
    assert!(row("a").ends_with(" yes"), "{}", row("a"));
    assert_eq!(
        row("b"),
        "# b on demand 3 declared 2.00 GiB yes, beside the always-on models"
    );

    let out = rocm_llm()
        .args(["plan", "--json"])
        .arg(&spec)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fit = &v["fit"];
    assert_eq!(fit["budgets"][0]["device"], "CPU");
    assert_eq!(fit["budgets"][0]["available_bytes"].as_u64(), Some(3 * GIB));
    assert_eq!(fit["models"]["b"]["devices"]["CPU"].as_u64(), Some(2 * GIB));
    assert_eq!(fit["models"]["b"]["source"], "declared");
    // The estimate of `a` is the plan's own estimate of it.
    assert_eq!(
        fit["models"]["a"]["devices"]["CPU"],
        v["models"]["a"]["memory"]["devices"]["CPU"]["total_bytes"]
    );
    assert_eq!(
        fit["budgets"][0]["always_on_bytes"],
        fit["models"]["a"]["devices"]["CPU"]
    );
    assert_eq!(fit["shortfalls"], serde_json::json!([]));
}

#[test]
fn a_spec_that_does_not_fit_is_invalid_at_the_models_key() {
    // `b` declares more than the host budget leaves beside `a`.
    let (_dir, spec) = spec_dir(
        "memory:\n  ram: { total: 2GiB, reserve: 1GiB }\n  overhead: { cpu: 100MiB }\nmodels:\n  a:\n    model: a.gguf\n    ctx_size: 512\n  b:\n    model: b.gguf\n    on_demand: true\n    memory: 1GiB\n",
    );
    for cmd in ["validate", "plan"] {
        let out = rocm_llm().arg(cmd).arg(&spec).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        // `a`'s estimate with the spec's 100 MiB host overhead.
        assert!(
            err.contains("spec.yaml:10:3: models.b: on-demand model b does not fit beside the always-on models on CPU: a 10"),
            "{cmd}: {err}"
        );
        assert!(err.contains(" + b 1.00 GiB = 1.10 GiB against a budget of 1.00 GiB (2.00 GiB total - 1.00 GiB reserve): short by 10"), "{cmd}: {err}");
        assert!(err.contains(" MiB on CPU ("), "{cmd}: {err}");
    }
}

/// A llama-server that lists an RX 7800 XT, for `plan` on the example:
/// `--list-devices` is all `plan` runs (no GPU is here).
fn fake_rocm_lister(dir: &Path) -> PathBuf {
    let path = dir.join("llama-server-rx7800xt");
    std::fs::write(
        &path,
        "#!/bin/sh\n[ \"$1\" = --list-devices ] || exit 1\necho 'Available devices:'\necho '  ROCm0: AMD Radeon RX 7800 XT (16368 MiB, 16100 MiB free)'\n",
    )
    .unwrap();
    let ok = Command::new("chmod")
        .arg("+x")
        .arg(&path)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    path
}

#[test]
fn plan_on_the_rx7800xt_example_shows_the_fit() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut text = std::fs::read_to_string(root.join("examples/rx7800xt.yaml")).unwrap();
    // The example's model files are the user's: tiny stand-ins, since the
    // example declares each footprint.
    for (i, file) in [
        "/srv/models/Qwen3-8B-Q4_K_M.gguf",
        "/srv/models/gemma-3-4b-it-Q4_K_M.gguf",
        "/srv/models/Meta-Llama-3-8B-Instruct-Q6_K.gguf",
    ]
    .iter()
    .enumerate()
    {
        assert!(text.contains(file), "the example names {file}");
        let local = dir.path().join(format!("m{i}.gguf"));
        write_tiny_llama(&local, &TinyModel::with_seed(i as u64 + 1, "m")).unwrap();
        text = text.replace(file, &local.display().to_string());
    }
    let server = fake_rocm_lister(dir.path());
    text = text.replace(
        "listen: 127.0.0.1:8080\n",
        &format!(
            "listen: 127.0.0.1:8080\nllama_server: {}\n",
            server.display()
        ),
    );
    let text = text.replace("control: 127.0.0.1:8081", "control: 127.0.0.1:1");
    let spec = dir.path().join("rx7800xt.yaml");
    std::fs::write(&spec, text).unwrap();
    let out = rocm_llm().arg("plan").arg(&spec).output().unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fit = &plan[plan.find("# memory budget").expect("the fit table")..];
    eprintln!("{fit}");
    assert!(
        fit.contains("#   ROCm0: 15.48 GiB (15.98 GiB total - 512.00 MiB reserve), detected (llama-server --list-devices); always-on 6.75 GiB, 8.73 GiB left beside them"),
        "{fit}"
    );
    let row = |model: &str| {
        fit.lines()
            .find(|l| l.starts_with(&format!("#   {model} ")))
            .unwrap_or_else(|| panic!("no row for {model}:\n{fit}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        row("qwen3-8b").starts_with("# qwen3-8b always-on 0 declared - 6.75 GiB"),
        "{fit}"
    );
    assert!(
        row("gemma3-4b").starts_with("# gemma3-4b on demand 10 declared - 3.75 GiB"),
        "{fit}"
    );
    assert!(
        row("llama3-8b").starts_with("# llama3-8b on demand 0 declared - 7.75 GiB"),
        "{fit}"
    );
    assert!(
        row("llama3-8b").ends_with("yes, beside the always-on models"),
        "{fit}"
    );
    assert!(
        fit.contains("#   gemma3-4b and llama3-8b do not fit together on ROCm0 (short by 2.77 GiB): they take turns: the daemon stops the idle one (or, once its turn is over, the busy one after its requests finish) before the other loads (docs/scheduler.md)"),
        "{fit}"
    );
}
