//! The OpenAI-compatible endpoint against a REAL daemon with REAL
//! llama-server children on tiny models: routing, errors, streaming,
//! cancellation, on-demand start and idle stop, the API key, and the
//! official `openai` Python client.
//!
//! Needs `ROCM_LLM_LLAMA_SERVER` (e.g. `$(scripts/llama-server.sh)`); the
//! Python test also needs `ROCM_LLM_TEST_PYTHON` (a python with `openai`).
//! Without them the tests say SKIPPED and pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::eventually_async;
use common::in_process::{pretty, state};
use rocm_llm::daemon::status::StatusReport;
use rocm_llm::supervisor::State;

use std::time::Duration;

use common::in_process::{Daemon, PATIENCE, chat, check_complete_stream, llama_server, sse_events};
use reqwest::StatusCode;
use rocm_llm::supervisor::BackoffPolicy;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const TWO_MODELS: &str = "\
defaults:
  threads: 1
  ctx_size: 512
  parallel: 2
models:
  a:
    model: a.gguf
    aliases: [alpha]
  b:
    model: b.gguf
";

async fn post(d: &Daemon, path: &str, body: &Value) -> reqwest::Response {
    d.client
        .post(d.url(path))
        .json(body)
        .send()
        .await
        .expect("send")
}

fn served_by(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-rocm-llm-model")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn error_body(r: reqwest::Response) -> Value {
    let v: Value = r.json().await.expect("an error body in JSON");
    let e = &v["error"];
    assert!(
        e["message"].is_string()
            && e["type"].is_string()
            && e.get("param").is_some()
            && e.get("code").is_some(),
        "not OpenAI's error format: {v}"
    );
    v
}

async fn metrics(d: &Daemon) -> String {
    d.client
        .get(format!("{}/metrics", d.control))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_by_name_and_alias_and_answers_in_openai_format() {
    let Some(server) = llama_server() else {
        return;
    };
    let d = Daemon::start(server, TWO_MODELS).await;
    d.wait_ready(&["a", "b"]).await;

    // /v1/models: names and aliases, with their state.
    let models: Value = d
        .client
        .get(d.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "alpha", "b"]);
    for m in models["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model");
        assert_eq!(m["state"], "ready", "{m}");
        assert!(m["created"].is_u64() && m["owned_by"].is_string());
    }
    assert_eq!(models["data"][1]["alias_of"], "a");
    let one: Value = d
        .client
        .get(d.url("/v1/models/alpha"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["alias_of"], "a");

    // Routing by name and by alias.
    for (id, expect) in [("a", "a"), ("alpha", "a"), ("b", "b")] {
        let r = post(&d, "/v1/chat/completions", &chat(Some(id), 4, false)).await;
        assert_eq!(r.status(), StatusCode::OK, "model {id}");
        assert_eq!(served_by(&r), expect, "model {id}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 4);
    }
    // Other llama-server routes, by body and by query.
    let r = post(
        &d,
        "/v1/completions",
        &serde_json::json!({"model": "b", "prompt": "hi", "max_tokens": 3}),
    )
    .await;
    assert_eq!((r.status(), served_by(&r)), (StatusCode::OK, "b".into()));
    let r = post(
        &d,
        "/tokenize",
        &serde_json::json!({"model": "alpha", "content": "hello world"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.json::<Value>().await.unwrap()["tokens"].is_array());
    let r = d.client.get(d.url("/props?model=b")).send().await.unwrap();
    assert_eq!((r.status(), served_by(&r)), (StatusCode::OK, "b".into()));
    let r = d
        .client
        .get(d.url("/upstream/alpha/slots"))
        .send()
        .await
        .unwrap();
    assert_eq!((r.status(), served_by(&r)), (StatusCode::OK, "a".into()));
    assert!(r.json::<Value>().await.unwrap().is_array());

    // An unknown model: 404 listing what exists.
    let r = post(&d, "/v1/chat/completions", &chat(Some("nope"), 4, false)).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let v = error_body(r).await;
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["param"], "model");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("available models: a, alpha, b"),
        "{v}"
    );
    let r = d
        .client
        .get(d.url("/upstream/nope/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // No model and no default: a 400 that says what to do.
    let r = post(&d, "/v1/chat/completions", &chat(None, 4, false)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v = error_body(r).await;
    assert_eq!(v["error"]["code"], "model_required");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("default: true"),
        "{v}"
    );

    // Malformed requests get clear 4xx answers.
    let r = d
        .client
        .post(d.url("/v1/chat/completions"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body("{\"model\": \"a\", ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        error_body(r).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    let r = d
        .client
        .post(d.url("/v1/chat/completions"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body("[1, 2]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = d
        .client
        .get(d.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = d.client.get(d.url("/no/such/route")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    error_body(r).await;
    let r = d.client.get(d.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A body announced larger than the limit: 413 before it is read.
    let mut tcp = tokio::net::TcpStream::connect(d.base.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 40000000\r\n\r\n").await.unwrap();
    let mut head = vec![0u8; 12];
    tcp.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");

    // The default model takes requests naming none (a daemon-only option:
    // applied without a restart).
    d.write_spec(&TWO_MODELS.replace(
        "    model: b.gguf\n",
        "    model: b.gguf\n    default: true\n",
    ));
    d.wait_for("generation 2", |s| s.daemon.generation == 2)
        .await;
    let r = post(&d, "/v1/chat/completions", &chat(None, 4, false)).await;
    assert_eq!((r.status(), served_by(&r)), (StatusCode::OK, "b".into()));

    // The metrics count it all.
    let m = metrics(&d).await;
    assert!(
        m.contains("rocm_llm_proxy_requests_total{model=\"a\",code=\"200\"}"),
        "{m}"
    );
    assert!(
        m.contains("rocm_llm_proxy_unrouted_requests_total{code=\"404\"}"),
        "{m}"
    );
    assert!(
        m.contains("rocm_llm_proxy_time_to_first_byte_seconds_bucket{model=\"b\",le=\"+Inf\"}"),
        "{m}"
    );
    assert!(
        m.contains("rocm_llm_proxy_queue_wait_seconds_count{model=\"a\"}"),
        "{m}"
    );
    d.stop().await;
}

async fn slots_processing(d: &Daemon, model: &str) -> bool {
    let slots: Value = d
        .client
        .get(d.url(&format!("/upstream/{model}/slots")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    slots
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["is_processing"] == true)
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_chunk_by_chunk_and_a_client_disconnect_cancels_upstream() {
    let Some(server) = llama_server() else {
        return;
    };
    // One slot with the tiny model's whole context: a long generation.
    let d = Daemon::start(server, "defaults:\n  threads: 1\n  ctx_size: 2048\n  parallel: 1\nmodels:\n  a:\n    model: a.gguf\n").await;
    d.wait_ready(&["a"]).await;

    // A whole stream: complete, and delivered in many pieces as generated.
    let start = Instant::now();
    let mut r = post(&d, "/v1/chat/completions", &chat(Some("a"), 200, true)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert!(
        r.headers()
            .get("transfer-encoding")
            .is_none_or(|v| v == "chunked")
    );
    let mut text = String::new();
    let mut arrivals = Vec::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        arrivals.push(start.elapsed());
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    check_complete_stream(&text, 200).unwrap();
    eprintln!(
        "200 tokens arrived in {} reads, first after {:?}, last after {:?}",
        arrivals.len(),
        arrivals.first().unwrap(),
        arrivals.last().unwrap()
    );
    assert!(
        arrivals.len() > 1,
        "the stream arrived in one piece: buffered?"
    );

    // A long stream: the first chunks arrive while llama-server is still
    // generating (nothing waits for the end), then the client leaves.
    let mut r = post(&d, "/v1/chat/completions", &chat(Some("a"), 1900, true)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut events = 0;
    let mut got = String::new();
    while events < 5 {
        let chunk = r.chunk().await.unwrap().expect("the stream ended early");
        got.push_str(std::str::from_utf8(&chunk).unwrap());
        events = sse_events(&got).len();
    }
    assert!(!got.contains("[DONE]"));
    assert!(
        slots_processing(&d, "a").await,
        "the first chunks must arrive while the generation runs"
    );
    drop(r);

    // llama-server notices and cancels the task: its slot goes idle long
    // before 1900 tokens would be done, and it logs the cancellation.
    eventually_async(PATIENCE, "the upstream generation is cancelled", || async {
        !slots_processing(&d, "a").await
    })
    .await;
    let s = d
        .wait_for("llama-server to log the cancellation", |s| {
            s.models["a"]
                .log
                .iter()
                .any(|l| l.as_str().contains("cancel task"))
        })
        .await;
    let log: Vec<&str> = s.models["a"].log.iter().map(|l| l.as_str()).collect();
    eprintln!("llama-server after the disconnect:\n{}", log.join("\n"));
    let released = log
        .iter()
        .rev()
        .find(|l| l.contains("stop processing: n_tokens"))
        .expect("a release line");
    let n: u32 = released
        .rsplit("n_tokens = ")
        .next()
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        n < 56 + 1900,
        "the slot was released after {n} tokens: it ran to the end"
    );

    eventually_async(PATIENCE, "the disconnect is counted", || async {
        let m = metrics(&d).await;
        if m.contains("rocm_llm_proxy_client_disconnects_total{model=\"a\"} 1")
            && m.contains("rocm_llm_proxy_in_flight{model=\"a\"} 0")
        {
            Ok(())
        } else {
            Err(m)
        }
    })
    .await;
    let s = d.status().await.unwrap();
    assert_eq!(s.models["a"].in_flight, 0, "the lease was released");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn starts_on_demand_and_stops_when_idle() {
    let Some(server) = llama_server() else {
        return;
    };
    let spec = "defaults:\n  threads: 1\n  ctx_size: 512\n  parallel: 2\nmodels:\n  a:\n    model: a.gguf\n    on_demand: true\n    idle_timeout: 1s\n";
    let d = Daemon::start(server, spec).await;
    d.wait_state("a", State::Idle).await;
    let models: Value = d
        .client
        .get(d.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["state"], "idle");

    // Requests arriving while it is idle start it and wait for it; one
    // model, so requests naming none go to it.
    let mut waiting = Vec::new();
    for i in 0..4 {
        let body = chat(if i % 2 == 0 { Some("a") } else { None }, 4, i % 2 == 0);
        let (client, url) = (d.client.clone(), d.url("/v1/chat/completions"));
        waiting.push(tokio::spawn(async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }));
    }
    for w in waiting {
        let (status, text) = w.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{text}");
    }
    let s = d.status().await.unwrap();
    assert_eq!(s.models["a"].state, State::Ready);
    assert_eq!(s.models["a"].restarts, 0);
    let m = metrics(&d).await;
    assert!(
        m.contains("rocm_llm_proxy_queue_wait_seconds_count{model=\"a\"} 4"),
        "{m}"
    );

    // A second without requests: stopped.
    d.wait_state("a", State::Idle).await;
    // And started again by the next request.
    let r = post(&d, "/v1/chat/completions", &chat(Some("a"), 4, false)).await;
    assert_eq!(r.status(), StatusCode::OK);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unavailable_models_get_503_with_retry_after() {
    let Some(server) = llama_server() else {
        return;
    };
    // One failed start makes a model `failed` (retried a minute later).
    let backoff = BackoffPolicy {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
        failed_after: 1,
        jitter: 0.0,
        ..BackoffPolicy::default()
    };
    let spec = "\
defaults:
  threads: 1
  ctx_size: 256
  parallel: 1
models:
  broken:
    model: a.gguf
    extra_args: [--no-such-flag]
  full:
    model: b.gguf
    on_demand: true
    queue_length: 0
  slow:
    model: c.gguf
    on_demand: true
    wait_timeout: 1ms
";
    let d = Daemon::start_with(server, spec, backoff).await;
    d.wait_state("broken", State::Failed).await;

    let check = |r: &reqwest::Response| {
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let after: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(after > 0);
    };
    let r = post(&d, "/v1/chat/completions", &chat(Some("broken"), 4, false)).await;
    check(&r);
    let v = error_body(r).await;
    assert_eq!(v["error"]["code"], "model_failed");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("failed"),
        "the reason: {v}"
    );

    let r = post(&d, "/v1/chat/completions", &chat(Some("full"), 4, false)).await;
    check(&r);
    let v = error_body(r).await;
    assert_eq!(v["error"]["code"], "queue_full");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("queue_length 0"),
        "{v}"
    );

    let r = post(&d, "/v1/chat/completions", &chat(Some("slow"), 4, false)).await;
    check(&r);
    let v = error_body(r).await;
    assert_eq!(v["error"]["code"], "model_loading");

    // The listing says why.
    let models: Value = d
        .client
        .get(d.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let broken = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "broken")
        .unwrap()
        .clone();
    assert_eq!(broken["state"], "failed");
    assert!(broken["last_error"].is_string(), "{broken}");
    let m = metrics(&d).await;
    assert!(
        m.contains("rocm_llm_proxy_requests_total{model=\"broken\",code=\"503\"} 1"),
        "{m}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_key_guards_the_proxy_and_the_status_api() {
    let Some(server) = llama_server() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("key");
    std::fs::write(&key_file, "first-key\n").unwrap();
    let spec = format!(
        "api_key_file: {}\ndefaults:\n  threads: 1\n  ctx_size: 256\n  parallel: 1\nmodels:\n  a:\n    model: a.gguf\n",
        key_file.display()
    );
    let d = Daemon::start(server, &spec).await;
    let with = |key: &str, rb: reqwest::RequestBuilder| rb.bearer_auth(key);

    // Without the key: 401 everywhere but /healthz.
    let r = post(&d, "/v1/chat/completions", &chat(Some("a"), 4, false)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_body(r).await["error"]["code"], "invalid_api_key");
    assert_eq!(
        d.client
            .get(d.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        d.client
            .get(d.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    for path in ["/status", "/metrics"] {
        let r = d
            .client
            .get(format!("{}{path}", d.control))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    assert_eq!(
        d.client
            .get(format!("{}/healthz", d.control))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let r = with(
        "wrong",
        d.client
            .post(d.url("/v1/chat/completions"))
            .json(&chat(Some("a"), 4, false)),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // With it: served.
    let status = |key: &'static str| {
        let (client, url) = (d.client.clone(), format!("{}/status", d.control));
        async move { client.get(url).bearer_auth(key).send().await.unwrap() }
    };
    eventually_async(PATIENCE, "a is ready", || async {
        let s: StatusReport = status("first-key").await.json().await.unwrap();
        if state(&s, "a") == Some(State::Ready) {
            Ok(())
        } else {
            Err(pretty(&s))
        }
    })
    .await;
    let r = with(
        "first-key",
        d.client
            .post(d.url("/v1/chat/completions"))
            .json(&chat(Some("a"), 4, false)),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = d
        .client
        .get(d.url("/v1/models"))
        .header("x-api-key", "first-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A new key is read at the next reload.
    std::fs::write(&key_file, "second-key").unwrap();
    d.write_spec(&spec.replace(
        "parallel: 1\nmodels",
        "parallel: 1\n  queue_length: 10\nmodels",
    ));
    eventually_async(PATIENCE, "the new key is read", || async {
        status("second-key").await.status() == StatusCode::OK
    })
    .await;
    assert_eq!(status("first-key").await.status(), StatusCode::UNAUTHORIZED);
    let r = with(
        "second-key",
        d.client
            .post(d.url("/v1/chat/completions"))
            .json(&chat(Some("a"), 4, false)),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_openai_python_client_works() {
    let Some(server) = llama_server() else {
        return;
    };
    let Some(python) =
        common::in_process::needs_env("ROCM_LLM_TEST_PYTHON", "a python with the openai package")
    else {
        return;
    };
    let d = Daemon::start(server, TWO_MODELS).await;
    d.wait_ready(&["a", "b"]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(python)
            .arg(script)
            .arg(&d.base)
            .output(),
    )
    .await
    .expect("the python client hung")
    .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "openai client failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    d.stop().await;
}
