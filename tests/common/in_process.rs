//! The in-process daemon harness: `rocm_llm::daemon::serve` on the test's
//! runtime, with real llama-server children and tiny models. The proxy
//! tests use it for what the binary cannot be given (a backoff policy of
//! milliseconds) and for an async HTTP client with a connection pool.

use std::path::PathBuf;
use std::time::Duration;

use rocm_llm::daemon::status::StatusReport;
use rocm_llm::daemon::{self, ServeOptions, watch::WatchTiming};
use rocm_llm::supervisor::{BackoffPolicy, State};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use super::PATIENCE;
use super::{eventually_async, free_port};
// What the tests of this harness use besides it, in one import.
#[allow(unused_imports)]
pub use super::daemon::{pretty, state};
#[allow(unused_imports)]
pub use super::{llama_server, needs_env};

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
        super::write_tiny_models(dir.path(), &["a", "b", "c"]);
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
            probe_roots: Default::default(),
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
        for url in [format!("{}/healthz", d.control), d.url("/healthz")] {
            eventually_async(PATIENCE, &format!("{url} answers"), || async {
                match d.client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(r.status().to_string()),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await;
        }
        d
    }

    /// Rewrites the spec the way editors do (temp file, rename).
    pub fn write_spec(&self, body: &str) {
        let tmp = self.dir.path().join(".models.yaml.tmp");
        std::fs::write(&tmp, format!("{}{body}", self.header)).expect("write the spec");
        std::fs::rename(&tmp, &self.spec_path).expect("rename the spec");
    }

    /// `GET /status`, typed; `Err` says why there is none.
    pub async fn status(&self) -> Result<StatusReport, String> {
        let r = self
            .client
            .get(format!("{}/status", self.control))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body = r.text().await.map_err(|e| e.to_string())?;
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
    }

    /// Polls `/status` until `ok` holds (panics with the last status after
    /// [`PATIENCE`]).
    pub async fn wait_for(&self, what: &str, ok: impl Fn(&StatusReport) -> bool) -> StatusReport {
        eventually_async(PATIENCE, what, || async {
            let s = self.status().await?;
            if ok(&s) { Ok(s) } else { Err(pretty(&s)) }
        })
        .await
    }

    pub async fn wait_state(&self, model: &str, want: State) -> StatusReport {
        self.wait_for(&format!("model {model} to be {}", want.as_str()), |s| {
            state(s, model) == Some(want)
        })
        .await
    }

    pub async fn wait_ready(&self, models: &[&str]) {
        for m in models {
            self.wait_state(m, State::Ready).await;
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
