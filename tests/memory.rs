//! The memory estimate `rocm-llm plan` prints, checked against what the real
//! llama-server reports for the same model and options.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use rocm_llm::gguf::{GgufHeader, TinyModel, write_tiny_llama};
use rocm_llm::plan::memory::estimate;
use rocm_llm::spec::{CacheType, LaunchOptions};

/// The MiB figure after `marker` on a line of llama-server's log.
fn mib_after(line: &str, marker: &str) -> Option<f64> {
    let rest = &line[line.find(marker)? + marker.len()..];
    rest.trim_start_matches([' ', '='])
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn the_estimate_matches_llama_servers_own_buffer_sizes() {
    let server = common::daemon::llama_server();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.gguf");
    // A larger tiny model, so the sizes are well above the log's rounding.
    let tiny = TinyModel {
        n_embd: 256,
        n_ff: 512,
        n_layer: 4,
        ..TinyModel::with_seed(7, "est")
    };
    write_tiny_llama(&model, &tiny).unwrap();
    for (ctx, k) in [(1024u32, CacheType::F16), (4096, CacheType::Q8_0)] {
        let options = LaunchOptions {
            ctx_size: Some(ctx),
            cache_type_k: Some(k),
            ..LaunchOptions::default()
        };
        let e = estimate(&GgufHeader::read_path(&model).unwrap(), &options).unwrap();
        let mut child = Command::new(&server)
            .args([
                "--model",
                &model.display().to_string(),
                "--ctx-size",
                &ctx.to_string(),
                "--cache-type-k",
                k.as_str(),
            ])
            // Verbosity 4 prints the buffer sizes.
            .args([
                "-lv",
                "4",
                "--threads",
                "1",
                "--host",
                "127.0.0.1",
                "--port",
                &common::daemon::free_port().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (mut weights, mut kv) = (None, None);
        for line in BufReader::new(child.stderr.take().unwrap()).lines() {
            let line = line.unwrap();
            weights = weights.or_else(|| mib_after(&line, "model buffer size"));
            kv = kv.or_else(|| {
                line.contains("llama_kv_cache: size")
                    .then(|| mib_after(&line, "size"))
                    .flatten()
            });
            if (weights.is_some() && kv.is_some()) || line.contains("listening on") {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let (weights, kv) = (
            weights.expect("model buffer line"),
            kv.expect("KV cache line"),
        );
        // llama-server prints two decimals.
        assert!(
            (mib(e.weights_bytes) - weights).abs() <= 0.006,
            "weights: estimated {} MiB, llama-server {weights} MiB",
            mib(e.weights_bytes)
        );
        assert!(
            (mib(e.kv_cache_bytes) - kv).abs() <= 0.006,
            "KV ({ctx}, {k}): estimated {} MiB, llama-server {kv} MiB",
            mib(e.kv_cache_bytes)
        );
    }
}
