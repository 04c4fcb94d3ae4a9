//! `rocm-llm plan --json`: one object with each model's command line and
//! its memory estimate, whole and per device (docs/memory.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use rocm_llm::gguf::{TinyModel, write_tiny_llama};

#[test]
fn plan_json_has_the_estimate_per_device_and_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(&dir.path().join("a.gguf"), &TinyModel::default()).unwrap();
    let spec = dir.path().join("spec.yaml");
    std::fs::write(
        &spec,
        "llama_server: /bin/true\ncontrol: 127.0.0.1:1\nmodels:\n  a:\n    model: a.gguf\n    ctx_size: 1024\n    parallel: 2\n  b:\n    model: a.gguf\n    on_demand: true\n  c:\n    model: a.gguf\n    enabled: false\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
        .args(["plan", "--json"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let a = &v["models"]["a"];
    let mem = &a["memory"];
    let devices = mem["devices"].as_object().unwrap();
    assert_eq!(
        devices.keys().collect::<Vec<_>>(),
        ["CPU"],
        "no GPU: all on the host"
    );
    let cpu = &devices["CPU"];
    let parts: u64 = [
        "weights_bytes",
        "kv_bytes",
        "compute_bytes",
        "output_bytes",
        "overhead_bytes",
    ]
    .iter()
    .map(|k| cpu[*k].as_u64().unwrap())
    .sum();
    assert_eq!(cpu["total_bytes"].as_u64(), Some(parts));
    assert_eq!(mem["total_bytes"].as_u64(), Some(parts));
    // 2 layers x 4 KV heads x 16 x (K + V) x f16, 2 streams of 512 cells.
    assert_eq!(cpu["kv_bytes"].as_u64(), Some(2 * 4 * 16 * 2 * 2 * 1024));
    // Logits for one token per slot: 259 tokens x 2 slots x f32.
    assert_eq!(cpu["output_bytes"].as_u64(), Some(259 * 2 * 4));
    assert_eq!(mem["context"].as_u64(), Some(1024));
    assert_eq!(mem["slots"].as_u64(), Some(2));
    assert_eq!(mem["gpu_layers"].as_u64(), Some(0));
    assert_eq!(mem["layers"].as_u64(), Some(3));

    let args: Vec<&str> = a["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    let model = dir.path().join("a.gguf").display().to_string();
    assert_eq!(
        args,
        [
            "--model",
            &model,
            "--alias",
            "a",
            "--ctx-size",
            "1024",
            "--parallel",
            "2",
            "--fit",
            "off",
            "-lv",
            "4"
        ]
    );
    assert_eq!(a["program"], "/bin/true");
    assert!(
        a["command_line"]
            .as_str()
            .unwrap()
            .ends_with("--host 127.0.0.1 --port <chosen at start>")
    );

    // The on-demand model: the trained context (2048), 4 unified slots.
    let b = &v["models"]["b"]["memory"];
    assert_eq!(b["context"].as_u64(), Some(2048));
    assert_eq!(b["slots"].as_u64(), Some(4));
    assert_eq!(v["models"]["c"]["memory"], serde_json::Value::Null);
    // Only `a` starts at once.
    assert_eq!(v["always_on"]["total_bytes"], mem["total_bytes"]);
    assert_eq!(v["devices"], serde_json::json!({}));
}

/// With the Vulkan build and a model whose `env:` makes lavapipe visible,
/// `plan --json` estimates on `Vulkan0` as the daemon will run it, with the
/// Vulkan overhead there.
#[test]
fn plan_json_lists_the_devices_a_models_env_makes_visible() {
    let server = common::backend_server("vulkan");
    let Some(server) = server else {
        common::skip("no Vulkan llama-server");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_tiny_llama(&dir.path().join("a.gguf"), &TinyModel::default()).unwrap();
    let spec = dir.path().join("spec.yaml");
    std::fs::write(
        &spec,
        format!(
            "llama_server: {}\ncontrol: 127.0.0.1:1\nmodels:\n  v:\n    model: a.gguf\n    gpu_layers: all\n    \
             env: {{ GGML_VK_VISIBLE_DEVICES: \"0\" }}\n  h:\n    model: a.gguf\n",
            server.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
        .args(["plan", "--json"])
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vulkan = &v["models"]["v"]["memory"]["devices"];
    assert_eq!(
        vulkan["Vulkan0"]["overhead_bytes"].as_u64(),
        Some(64 << 20),
        "{v:#}"
    );
    assert!(
        vulkan["Vulkan0"]["weights_bytes"].as_u64().unwrap() > 0,
        "{v:#}"
    );
    // Without the env the model gets what the build lists by default
    // (here nothing: lavapipe is a CPU-type device llama.cpp skips).
    let default: Vec<String> = rocm_llm::memory::plan::list_devices(&server)
        .into_iter()
        .map(|d| d.name)
        .collect();
    let host = v["models"]["h"]["memory"]["devices"].as_object().unwrap();
    let mut expected = vec!["CPU".to_owned()];
    expected.extend(default);
    expected.sort();
    assert_eq!(host.keys().cloned().collect::<Vec<_>>(), expected, "{v:#}");
}
