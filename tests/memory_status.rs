//! Measured usage in the running daemon: `GET /status` and `/metrics` carry
//! what each real llama-server reported it allocated per device (its
//! buffer lines, which the daemon asks for with `-lv 4`), and `rocm-llm
//! status` prints it. On this CPU-only machine the GPU probes find nothing;
//! they are tested against fixture trees in tests/memory_probes.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::daemon::Daemon;
use rocm_llm::gguf::GgufHeader;
use rocm_llm::spec::LaunchOptions;

#[test]
fn status_shows_what_llama_server_reported_and_it_matches_the_estimate() {
    let d = Daemon::start(&["a"], "  a:\n    model: a.gguf\n");
    let status = d.wait_status("a's buffer sizes and estimate", |s| {
        s["models"]["a"]["memory"]["log_devices"]["CPU"]["compute"]
            .as_u64()
            .is_some_and(|c| c > 0)
            && s["models"]["a"]["memory"]["estimate"].is_object()
    });
    let mem = &status["models"]["a"]["memory"];
    let cpu = &mem["log_devices"]["CPU"];
    // The daemon's spec (tests/common): ctx 256, 1 slot, defaults otherwise.
    let header = GgufHeader::read_path(d.dir.path().join("a.gguf")).unwrap();
    let options = LaunchOptions {
        ctx_size: Some(256),
        parallel: Some(1),
        ..LaunchOptions::default()
    };
    let e = rocm_llm::memory::estimate_model(&header, &options, &[], &Default::default()).unwrap();
    let p = &e.devices["CPU"];
    // The daemon shows the same estimate (the CPU build lists no GPU), and
    // beside it what llama-server reported.
    let shown = &mem["estimate"];
    assert_eq!(mem["estimate_error"], serde_json::Value::Null, "{mem}");
    assert_eq!(
        shown["total_bytes"].as_u64(),
        Some(e.total_bytes()),
        "{mem}"
    );
    assert_eq!(shown["gpu_layers"].as_u64(), Some(0), "{mem}");
    assert_eq!(
        shown["devices"],
        serde_json::json!({"CPU": {"weights": p.weights, "kv": p.kv, "compute": p.compute,
                                   "output": p.output, "overhead": 0}}),
        "{mem}"
    );
    let mib = |v: &serde_json::Value| v.as_u64().unwrap() as f64 / 1048576.0;
    let close =
        |got: &serde_json::Value, want: u64| (mib(got) - want as f64 / 1048576.0).abs() <= 0.006;
    assert!(close(&cpu["weights"], p.weights), "{mem} vs {p:?}");
    assert!(close(&cpu["kv"], p.kv), "{mem} vs {p:?}");
    assert!(close(&cpu["output"], p.output), "{mem} vs {p:?}");
    // The compute buffer of this 64-wide toy is not an accuracy case (those
    // are in tests/memory.rs, with real widths); the estimate's rows are
    // sized for real widths and come out some 16 % over here.
    let compute = cpu["compute"].as_u64().unwrap() as f64;
    assert!(
        (0.9..1.25).contains(&(p.compute as f64 / compute)),
        "{mem} vs {p:?}"
    );
    assert_eq!(
        mem["log_total_bytes"].as_u64().unwrap(),
        ["weights", "kv", "compute", "output"]
            .iter()
            .map(|k| cpu[*k].as_u64().unwrap())
            .sum::<u64>()
    );
    // No GPU here: the process holds none, and no device is listed.
    assert_eq!(mem["gpu_bytes"].as_u64(), Some(0));
    assert_eq!(status["devices"], serde_json::json!([]));

    let metrics = common::daemon::get(&d.control, "/metrics").unwrap();
    let line = format!(
        "rocm_llm_model_memory_bytes{{model=\"a\",device=\"CPU\",part=\"kv\"}} {}",
        cpu["kv"].as_u64().unwrap()
    );
    assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    for (part, bytes) in [
        ("weights", p.weights),
        ("compute", p.compute),
        ("overhead", 0),
    ] {
        let line = format!(
            "rocm_llm_model_memory_estimate_bytes{{model=\"a\",device=\"CPU\",part=\"{part}\"}} {bytes}"
        );
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
        .args(["status", "--control", &d.control])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("memory a: CPU ") && stdout.contains("(llama-server)"),
        "{stdout}"
    );
    let estimate_line = format!(
        "estimate a: CPU {} (rocm-llm, overhead included)",
        rocm_llm::memory::human_bytes(e.total_bytes())
    );
    assert!(
        stdout.contains(&estimate_line),
        "{estimate_line} not in\n{stdout}"
    );
}
