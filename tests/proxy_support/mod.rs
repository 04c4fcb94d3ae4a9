//! A real daemon (in-process `rocm_llm::daemon::serve`) with real
//! llama-server children and tiny models, for the proxy tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use rocm_llm::daemon::{self, ServeOptions, watch::WatchTiming};
use rocm_llm::gguf::{TinyModel, write_tiny_llama};
use rocm_llm::supervisor::BackoffPolicy;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bounds every wait in these tests: far beyond what a tiny model needs,
/// short enough that a hang fails the test instead of the suite.
pub const PATIENCE: Duration = Duration::from_secs(90);

pub fn llama_server(test: &str) -> Option<PathBuf> {
    needs_path(
        test,
        "ROCM_LLM_LLAMA_SERVER",
        "the path of llama-server; ROCM_LLM_LLAMA_SERVER=$(scripts/llama-server.sh)",
    )
}

/// The path that the environment variable `name` holds, or `None` after
/// printing why `test` is skipped. Under CI a skip is a failure: there
/// scripts/test.sh provides everything the tests need.
pub fn needs_path(test: &str, name: &str, what: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(name) {
        return Some(PathBuf::from(p));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: a skip is a failure in CI (scripts/test.sh sets {name})"
    );
    eprintln!("SKIPPED: {test} needs {name}=<{what}> (scripts/test.sh sets it)");
    None
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub spec_path: PathBuf,
    /// `http://127.0.0.1:PORT` of the proxy.
    pub base: String,
    /// `http://127.0.0.1:PORT` of the status API.
    pub control: String,
    pub client: reqwest::Client,
    header: String,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), rocm_llm::daemon::ServeError>>>,
}

impl Daemon {
    /// Starts a daemon whose spec is the listen/control/llama_server header
    /// followed by `body` (the `defaults:`/`models:` part). Tiny models
    /// `a.gguf`, `b.gguf` and `c.gguf` lie beside the spec.
    pub async fn start(server: PathBuf, body: &str) -> Daemon {
        Daemon::start_with(server, body, BackoffPolicy::default()).await
    }

    pub async fn start_with(server: PathBuf, body: &str, backoff: BackoffPolicy) -> Daemon {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("rocm_llm=info")
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("tempdir");
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            write_tiny_llama(
                &dir.path().join(format!("{name}.gguf")),
                &TinyModel::with_seed(i as u64 + 1, *name),
            )
            .expect("tiny model");
        }
        let (listen, control) = (free_port(), free_port());
        let header = format!(
            "listen: 127.0.0.1:{listen}\ncontrol: 127.0.0.1:{control}\nllama_server: {}\n",
            server.display()
        );
        let spec_path = dir.path().join("models.yaml");
        std::fs::write(&spec_path, format!("{header}{body}")).expect("write the spec");
        let options = ServeOptions {
            spec_path: spec_path.clone(),
            state_dir: dir.path().join("state"),
            default_llama_server: server,
            watch: WatchTiming {
                debounce: Duration::from_millis(50),
                settle: Duration::from_millis(20),
            },
            leftover_grace: Duration::from_secs(5),
            backoff,
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(daemon::serve(options, shutdown.clone()));
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("client");
        let d = Daemon {
            dir,
            spec_path,
            base: format!("http://127.0.0.1:{listen}"),
            control: format!("http://127.0.0.1:{control}"),
            client,
            header,
            shutdown,
            task: Some(task),
        };
        let deadline = Instant::now() + PATIENCE;
        for url in [format!("{}/healthz", d.control), d.url("/healthz")] {
            while !d
                .client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                assert!(Instant::now() < deadline, "{url} never answered");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        d
    }

    /// Rewrites the spec the way editors do (temp file, rename).
    pub fn write_spec(&self, body: &str) {
        let tmp = self.dir.path().join(".models.yaml.tmp");
        std::fs::write(&tmp, format!("{}{body}", self.header)).expect("write the spec");
        std::fs::rename(&tmp, &self.spec_path).expect("rename the spec");
    }

    pub async fn status(&self) -> Option<Value> {
        let r = self
            .client
            .get(format!("{}/status", self.control))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// Polls `/status` until `ok` holds (panics with the last status after
    /// [`PATIENCE`]).
    pub async fn wait_for(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        let mut last = Value::Null;
        loop {
            if let Some(s) = self.status().await {
                if ok(&s) {
                    return s;
                }
                last = s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status:\n{last:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_state(&self, model: &str, state: &str) -> Value {
        self.wait_for(&format!("model {model} to be {state}"), |s| {
            s["models"][model]["state"] == state
        })
        .await
    }

    pub async fn wait_ready(&self, models: &[&str]) {
        for m in models {
            self.wait_state(m, "ready").await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the daemon and waits for every child to be stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(PATIENCE, t).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn chat(model: Option<&str>, max_tokens: u32, stream: bool) -> Value {
    let mut v = json!({
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": max_tokens,
        "stream": stream,
    });
    if let Some(m) = model {
        v["model"] = json!(m);
    }
    v
}

/// The `data:` payloads of an SSE body.
pub fn sse_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| {
            e.trim()
                .strip_prefix("data: ")
                .or_else(|| e.trim().strip_prefix("data:"))
        })
        .map(|s| s.trim().to_owned())
        .collect()
}

/// Checks that a streamed chat completion is complete: `[DONE]` last, the
/// role chunk, `max_tokens` content chunks (the tiny model never stops
/// early and emits one printable token per chunk), one `finish_reason`.
pub fn check_complete_stream(text: &str, max_tokens: u32) -> Result<(), String> {
    let events = sse_events(text);
    if events.last().map(String::as_str) != Some("[DONE]") {
        return Err(format!("the stream does not end with [DONE]: {text:?}"));
    }
    let mut content = 0;
    let mut finish = Vec::new();
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).map_err(|err| format!("bad event {e:?}: {err}"))?;
        let choice = &v["choices"][0];
        if choice["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
        {
            content += 1;
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish.push(f.to_owned());
        }
    }
    if content != max_tokens as usize || finish != ["length"] {
        return Err(format!(
            "expected {max_tokens} content chunks and one finish_reason `length`, got {content} and {finish:?}: {text}"
        ));
    }
    Ok(())
}
