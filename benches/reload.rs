//! Spec edit to model serving, through the daemon, against a direct
//! llama-server cold start of the same model, measured side by side in one
//! run. Run: `ROCM_LLM_LLAMA_SERVER=$(scripts/llama-server.sh) cargo bench --bench reload`.
//!
//! The daemon's own cost is what remains of edit-to-serving after taking
//! away the cold start (measured directly, same model and flags) and the
//! watcher's deliberate wait (debounce + settle), which is shown apart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 15;
const DEBOUNCE_MS: u64 = 100;

/// The body of a 200 answer, or nothing.
fn get(addr: &str, path: &str) -> Option<String> {
    rocm_llm::daemon::client::get(addr, path, None).ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn direct_cold_start(server: &Path, model: &Path, ctx: u32) -> f64 {
    let port = free_port();
    let t0 = Instant::now();
    let mut child = Command::new(server)
        .args([
            "--model",
            &model.display().to_string(),
            "--alias",
            "a",
            "--ctx-size",
            &ctx.to_string(),
            "--parallel",
            "1",
            "--threads",
            "1",
        ])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn llama-server");
    let addr = format!("127.0.0.1:{port}");
    loop {
        if get(&addr, "/health").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    ms
}

struct Measured {
    total: Vec<f64>,
}

fn through_daemon(server: &Path, dir: &Path, swap: &str) -> Measured {
    let listen = format!("127.0.0.1:{}", free_port());
    let control = format!("127.0.0.1:{}", free_port());
    let spec = dir.join(format!("bench-{swap}.yaml"));
    let text = |ctx: u32| {
        format!(
            "listen: {listen}\ncontrol: {control}\nllama_server: {}\nmodels:\n  a:\n    model: tiny.gguf\n    ctx_size: {ctx}\n    parallel: 1\n    threads: 1\n    swap: {swap}\n",
            server.display()
        )
    };
    let save = |body: String| {
        let tmp = spec.with_extension("tmp~");
        std::fs::write(&tmp, body).expect("write");
        std::fs::rename(&tmp, &spec).expect("rename");
    };
    save(text(256));
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
        .args([
            "serve",
            "--spec",
            &spec.display().to_string(),
            "--debounce",
            &format!("{DEBOUNCE_MS}ms"),
            "--log",
            "warn",
        ])
        .arg("--state-dir")
        .arg(dir.join(format!("state-{swap}")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rocm-llm");
    let ready_with = |ctx_marker: &str| loop {
        if let Ok(status) = rocm_llm::daemon::client::status(&control, None)
            && let Some(a) = status.models.get("a")
            && a.state == rocm_llm::supervisor::State::Ready
            && a.launch_id == ctx_marker
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    // The launch id of each variant, from `rocm-llm plan`.
    let launch_id = |ctx: u32| {
        let probe = dir.join(format!("probe-{swap}-{ctx}.yaml"));
        std::fs::write(&probe, text(ctx).replace(&control, "127.0.0.1:1")).expect("write");
        let out = Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
            .arg("plan")
            .arg(&probe)
            .output()
            .expect("plan");
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        out.split("launch id ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .unwrap_or_default()
            .to_owned()
    };
    let ids = [launch_id(256), launch_id(512)];
    ready_with(&ids[0]);
    let mut total = Vec::new();
    for run in 0..RUNS {
        let (ctx, id) = if run % 2 == 0 {
            (512, &ids[1])
        } else {
            (256, &ids[0])
        };
        std::thread::sleep(Duration::from_millis(200));
        let t0 = Instant::now();
        save(text(ctx));
        ready_with(id);
        total.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status();
    let _ = daemon.wait();
    Measured { total }
}

fn main() {
    let Some(server) = std::env::var_os("ROCM_LLM_LLAMA_SERVER").map(PathBuf::from) else {
        eprintln!("set ROCM_LLM_LLAMA_SERVER=$(scripts/llama-server.sh)");
        std::process::exit(2);
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("tiny.gguf");
    rocm_llm::gguf::write_tiny_llama(&model, &rocm_llm::gguf::TinyModel::default()).expect("model");

    // Interleave so both see the same machine load.
    let mut direct = Vec::new();
    for i in 0..RUNS {
        direct.push(direct_cold_start(
            &server,
            &model,
            if i % 2 == 0 { 512 } else { 256 },
        ));
    }
    let stop_first = through_daemon(&server, dir.path(), "stop_first");
    let blue_green = through_daemon(&server, dir.path(), "blue_green");
    for i in 0..RUNS {
        direct.push(direct_cold_start(
            &server,
            &model,
            if i % 2 == 0 { 512 } else { 256 },
        ));
    }

    let cold = median(direct);
    let settle_ms = rocm_llm::daemon::watch::WatchTiming::default()
        .settle
        .as_millis();
    let wait = (u128::from(DEBOUNCE_MS) + settle_ms) as f64;
    println!("spec edit -> model serving, tiny model, {RUNS} edits per mode, medians");
    println!("  direct llama-server cold start (spawn -> /health 200): {cold:7.1} ms");
    println!(
        "  watcher wait (debounce {DEBOUNCE_MS} ms + settle {settle_ms} ms), shown apart: {wait:7.1} ms"
    );
    for (name, m) in [("stop_first", &stop_first), ("blue_green", &blue_green)] {
        let total = median(m.total.clone());
        let overhead = total - wait - cold;
        println!(
            "  {name:<10}: edit -> serving {total:7.1} ms; daemon overhead (minus wait and cold start) {overhead:6.1} ms; ratio to cold start {:.2}x",
            (total - wait) / cold
        );
    }
}
