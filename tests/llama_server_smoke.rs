//! Smoke test against a REAL llama-server: the tiny generated GGUF model
//! loads, and both plain and streaming chat completions work.
//!
//! Needs `ROCM_LLM_LLAMA_SERVER` (e.g. `$(scripts/llama-server.sh)`); without
//! it the test says SKIPPED loudly and passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rocm_llm::gguf::{TinyModel, write_tiny_llama};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const MAX_TOKENS: u64 = 8;

use common::free_port;

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

async fn wait_healthy(
    client: &reqwest::Client,
    base: &str,
    child: &mut Child,
    log: &Path,
) -> Duration {
    let start = Instant::now();
    common::eventually_async(common::PATIENCE, "llama-server is healthy", || {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "llama-server exited with {status} before becoming healthy; its log:\n{}",
                log_tail(log)
            );
        }
        async move {
            match client.get(format!("{base}/health")).send().await {
                Ok(r) if r.status() == reqwest::StatusCode::OK => Ok(start.elapsed()),
                _ => Err(log_tail(log)),
            }
        }
    })
    .await
}

fn assert_printable(text: &str) {
    assert!(
        text.chars().all(|c| c == ' ' || c.is_ascii_graphic()),
        "the tiny model should emit printable ASCII only, got {text:?}"
    );
}

#[tokio::test]
async fn tiny_model_serves_chat_completions() {
    let Some(server) = common::llama_server() else {
        return;
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("tiny.gguf");
    let t = Instant::now();
    write_tiny_llama(&model, &TinyModel::with_seed(7, "smoke")).expect("write the tiny model");
    eprintln!(
        "wrote {} ({} bytes) in {:?}",
        model.display(),
        std::fs::metadata(&model).expect("stat").len(),
        t.elapsed()
    );

    let port = free_port();
    let log = dir.path().join("llama-server.log");
    let log_file = std::fs::File::create(&log).expect("create the log");
    let spawned = Instant::now();
    let mut child = Command::new(&server)
        .arg("--model")
        .arg(&model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("clone log fd"))
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", Path::new(&server).display()));

    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let healthy_after = wait_healthy(&client, &base, &mut child, &log).await;
    eprintln!(
        "llama-server healthy {healthy_after:?} after spawn (spawn to health: {:?})",
        spawned.elapsed()
    );

    // Plain request.
    let t = Instant::now();
    let resp = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({
            "model": "tiny",
            "messages": [{"role": "user", "content": "Hello!"}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        }))
        .send()
        .await
        .expect("POST /v1/chat/completions");
    let status = resp.status();
    let body: Value = resp.json().await.expect("JSON body");
    assert_eq!(
        status,
        reqwest::StatusCode::OK,
        "body: {body}\nlog:\n{}",
        log_tail(&log)
    );
    let message = &body["choices"][0]["message"];
    assert_eq!(message["role"], "assistant", "body: {body}");
    let content = message["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content: {body}"));
    assert_printable(content);
    // The tiny model never emits </s>, so it always runs to max_tokens.
    assert_eq!(
        body["usage"]["completion_tokens"], MAX_TOKENS,
        "body: {body}"
    );
    assert_eq!(
        body["choices"][0]["finish_reason"], "length",
        "body: {body}"
    );
    eprintln!("completion in {:?}: {content:?}", t.elapsed());

    // Streaming request.
    let t = Instant::now();
    let mut resp = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({
            "messages": [{"role": "user", "content": "Stream, please."}],
            "max_tokens": MAX_TOKENS,
            "stream": true,
        }))
        .send()
        .await
        .expect("POST streaming /v1/chat/completions");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let mut raw = Vec::new();
    while let Some(chunk) = resp.chunk().await.expect("read the stream") {
        raw.extend_from_slice(&chunk);
    }
    let raw = String::from_utf8(raw).expect("UTF-8 stream");
    let data: Vec<&str> = raw
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert!(
        data.len() >= 3,
        "expected several data: chunks, got {raw:?}"
    );
    assert_eq!(data.last().copied(), Some("[DONE]"), "stream: {raw:?}");
    let mut streamed = String::new();
    for d in &data[..data.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk {d:?}: {e}"));
        assert_eq!(v["object"], "chat.completion.chunk", "chunk {d}");
        if let Some(s) = v["choices"][0]["delta"]["content"].as_str() {
            streamed.push_str(s);
        }
    }
    assert!(!streamed.is_empty(), "no streamed content in {raw:?}");
    assert_printable(&streamed);
    eprintln!(
        "stream of {} data: chunks in {:?}: {streamed:?}",
        data.len(),
        t.elapsed()
    );

    child.kill().await.expect("kill llama-server");
}
