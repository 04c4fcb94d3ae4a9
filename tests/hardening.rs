//! A hostile world, against the real daemon, real llama-server and real
//! HTTP: browsers that must not reach the endpoint (DNS rebinding,
//! cross-origin side effects, CORS), children that hang after they became
//! ready (SIGSTOP), and children that are merely busy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use rocm_llm::supervisor::State;

use std::time::Duration;

use common::in_process::{Daemon, PATIENCE, chat, llama_server};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HOST, ORIGIN};
use serde_json::Value;
use tokio::time::Instant;

const BROWSER_SPEC: &str = "allowed_hosts: [llm.home.arpa]
cors_origins: ['http://localhost:3000']
models:
  a:
    model: a.gguf
    ctx_size: 256
    parallel: 1
    threads: 1
    on_demand: true
";

async fn send(
    d: &Daemon,
    req: reqwest::RequestBuilder,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let _ = d;
    let r = req.send().await.expect("request");
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// One tiny always-on model `a`.
const ONE_TINY: &str =
    "models:\n  a:\n    model: a.gguf\n    ctx_size: 256\n    parallel: 1\n    threads: 1\n";

/// Model `a` answers a short chat completion through the proxy.
async fn assert_serves(d: &Daemon) {
    let r = d
        .client
        .post(d.url("/v1/chat/completions"))
        .json(&chat(Some("a"), 4, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

fn port_of(url: &str) -> &str {
    url.rsplit(':').next().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn browsers_cannot_rebind_or_cause_side_effects_and_listed_origins_get_cors() {
    let Some(server) = llama_server() else {
        return;
    };
    let d = Daemon::start(server, BROWSER_SPEC).await;
    d.wait_state("a", State::Idle).await;
    let port = port_of(&d.base).to_owned();
    let control_port = port_of(&d.control).to_owned();

    // DNS rebinding: another name for 127.0.0.1 is refused, on both servers.
    for (url, host) in [
        (d.url("/v1/models"), format!("evil.example:{port}")),
        (
            format!("{}/status", d.control),
            format!("evil.example:{control_port}"),
        ),
        (
            format!("{}/metrics", d.control),
            "rebind.evil.example".to_owned(),
        ),
    ] {
        let (status, _, body) = send(&d, d.client.get(&url).header(HOST, host.clone())).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{url} with Host {host}: {body}"
        );
        assert!(body.to_string().contains("allowed_hosts"), "{body}");
    }
    // Our own names and the listed one are answered.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "llm.home.arpa".to_owned(),
    ] {
        let (status, _, body) = send(
            &d,
            d.client.get(d.url("/v1/models")).header(HOST, host.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "Host {host}: {body}");
    }

    // A page elsewhere posts a "simple" cross-origin request: refused
    // before routing, so the on-demand model does not even start.
    let body = serde_json::to_string(&chat(Some("a"), 4, false)).unwrap();
    let (status, _, answer) = send(
        &d,
        d.client
            .post(d.url("/v1/chat/completions"))
            .header(ORIGIN, "https://evil.example")
            .header(CONTENT_TYPE, "text/plain;charset=UTF-8")
            .body(body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(answer["error"]["code"], "origin_not_allowed", "{answer}");
    // The same without Origin but marked cross-site by the browser.
    let (status, _, answer) = send(
        &d,
        d.client
            .post(d.url("/v1/chat/completions"))
            .header("sec-fetch-site", "cross-site")
            .header("sec-fetch-mode", "no-cors")
            .header(CONTENT_TYPE, "text/plain")
            .body(body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(answer["error"]["code"], "cross_site_request", "{answer}");
    // Not JSON, from no browser at all: 415, and still nothing starts.
    let (status, _, answer) = send(
        &d,
        d.client
            .post(d.url("/v1/chat/completions"))
            .header(CONTENT_TYPE, "text/plain")
            .body(body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{answer}");
    assert_eq!(
        answer["error"]["code"], "unsupported_media_type",
        "{answer}"
    );
    let s = d.status().await.unwrap();
    assert_eq!(
        s.models["a"].state,
        State::Idle,
        "a refused request started the model: {s:#?}"
    );
    assert!(s.models["a"].pid.is_none(), "{s:#?}");

    // A listed origin: its preflight is answered, then its request is served
    // with CORS headers.
    let (status, headers, _) = send(
        &d,
        d.client
            .request(reqwest::Method::OPTIONS, d.url("/v1/chat/completions"))
            .header(ORIGIN, "http://localhost:3000")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            ),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert_eq!(
        headers["access-control-allow-headers"],
        "authorization, content-type"
    );
    // The preflight of an unlisted origin is refused.
    let (status, headers, _) = send(
        &d,
        d.client
            .request(reqwest::Method::OPTIONS, d.url("/v1/chat/completions"))
            .header(ORIGIN, "http://localhost:3001")
            .header("access-control-request-method", "POST"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!headers.contains_key("access-control-allow-origin"));

    let (status, headers, answer) = send(
        &d,
        d.client
            .post(d.url("/v1/chat/completions"))
            .header(ORIGIN, "http://localhost:3000")
            .json(&chat(Some("a"), 4, false)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    // The status API follows the same list.
    let (status, headers, _) = send(
        &d,
        d.client
            .get(format!("{}/status", d.control))
            .header(ORIGIN, "http://localhost:3000"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://localhost:3000"
    );
    d.stop().await;
}

/// Probes far more eager than the defaults; `ctx` is shared by 4 slots.
fn liveness_spec(ctx: u32) -> String {
    format!(
        "models:\n  a:\n    model: a.gguf\n    ctx_size: {ctx}\n    parallel: 4\n    threads: 1\n    stop_grace: 5s\n    liveness_interval: 200ms\n    liveness_timeout: 300ms\n    liveness_failures: 3\n"
    )
}

fn signal(pid: i32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::kill_process(pid, sig).expect("signal the child");
}

fn alive(pid: i32) -> bool {
    // A reaped child has no /proc entry; a zombie would still have one.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_child_is_replaced_and_its_stream_ends_with_an_error() {
    let Some(server) = llama_server() else {
        return;
    };
    let d = Daemon::start(server, &liveness_spec(16384)).await;
    let s = d.wait_state("a", State::Ready).await;
    let pid = s.models["a"].pid.unwrap();

    // A stream in flight when the child freezes.
    let streaming = tokio::spawn({
        let client = d.client.clone();
        let url = d.url("/v1/chat/completions");
        async move {
            let r = client
                .post(url)
                .json(&chat(Some("a"), 100_000, true))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let mut r = r;
            let mut text = String::new();
            let mut frozen = false;
            while let Ok(Some(chunk)) = r.chunk().await {
                text.push_str(&String::from_utf8_lossy(&chunk));
                if !frozen && text.len() > 2000 {
                    frozen = true;
                    signal(pid, rustix::process::Signal::STOP);
                }
            }
            text
        }
    });
    let text = tokio::time::timeout(PATIENCE, streaming)
        .await
        .expect("the stream never ended")
        .unwrap();
    let last = common::in_process::sse_events(&text)
        .pop()
        .unwrap_or_default();
    let event: Value = serde_json::from_str(&last).unwrap_or(Value::Null);
    assert_eq!(
        event["error"]["code"], "upstream_broke_off",
        "last event {last:?}"
    );

    let s = d
        .wait_for("a replacement of the stopped child", |s| {
            let a = &s.models["a"];
            a.state == State::Ready && a.pid.is_some_and(|p| p != pid)
        })
        .await;
    let a = &s.models["a"];
    let why = a
        .last_restart
        .as_ref()
        .map(|r| r.reason.clone())
        .unwrap_or_default();
    assert!(
        why.contains(&format!(
            "llama-server (pid {pid}) stopped answering /health"
        )) && why.contains("it is stopped (SIGSTOP"),
        "the status does not say why it was replaced: {a:#?}"
    );
    assert!(a.restarts >= 1, "{a:#?}");
    assert!(a.cut >= 1, "the frozen stream was not counted: {a:#?}");
    // The frozen process was reaped, not left stopped.
    common::eventually_async(
        PATIENCE,
        &format!("the stopped child {pid} is gone"),
        || async { !alive(pid) },
    )
    .await;
    // The replacement serves.
    assert_serves(&d).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_child_answers_health_and_is_never_replaced() {
    let Some(server) = llama_server() else {
        return;
    };
    // Aggressive probes, and more concurrent long streams than slots.
    let d = Daemon::start(server, &liveness_spec(16384)).await;
    let s = d.wait_state("a", State::Ready).await;
    let pid = s.models["a"].pid;
    let port = s.models["a"].port.unwrap();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let client = d.client.clone();
            let url = d.url("/v1/chat/completions");
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .json(&chat(Some("a"), 1000, true))
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let text = r.text().await.unwrap();
                (status, text)
            })
        })
        .collect();
    // While they generate, llama-server's own /health answers at once.
    let mut answered = 0;
    let direct = reqwest::Client::new();
    let start = Instant::now();
    while clients.iter().any(|c| !c.is_finished()) && start.elapsed() < PATIENCE {
        let h = direct
            .get(format!("http://127.0.0.1:{port}/health"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if h.is_ok_and(|r| r.status() == StatusCode::OK) {
            answered += 1;
        }
        // The sampling rate of the probe, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in clients {
        let (status, text) = c.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        // Whole: all 1000 tokens generated, and the stream closed properly.
        let events = common::in_process::sse_events(&text);
        assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{:.300}",
            &text[text.len().saturating_sub(300)..]
        );
        assert!(
            text.contains("\"predicted_n\":1000"),
            "{:.300}",
            &text[text.len().saturating_sub(300)..]
        );
    }
    assert!(answered > 0, "no /health answer while generating");
    let s = d.status().await.unwrap();
    let a = &s.models["a"];
    assert_eq!(a.pid, pid, "a busy child was replaced: {a:#?}");
    assert_eq!(a.restarts, 0, "{a:#?}");
    assert_eq!(a.cut, 0, "{a:#?}");
    d.stop().await;
}

const FAKE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/fake-llama-server.sh"
);

/// A model run through the fault-injecting wrapper, which then execs the
/// real llama-server. Its log verbosity is low so that the daemon's own
/// lines stay in the status's last 20.
fn faulty(mode: &str, real: &std::path::Path, counter: &std::path::Path) -> String {
    format!(
        "models:\n  a:\n    model: a.gguf\n    ctx_size: 256\n    parallel: 1\n    threads: 1\n    extra_args: [-lv, '1']\n    env: {{FAKE_LLAMA_MODE: {mode}, FAKE_REAL_LLAMA_SERVER: '{}', FAKE_COUNTER: '{}'}}\n",
        real.display(),
        counter.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_taken_at_spawn_is_retried_on_another_without_backoff() {
    let Some(real) = llama_server() else {
        return;
    };
    let counter = tempfile::NamedTempFile::new().unwrap();
    let d = Daemon::start(FAKE.into(), &faulty("bind-busy", &real, counter.path())).await;
    let s = d.wait_state("a", State::Ready).await;
    let a = &s.models["a"];
    assert_eq!(
        std::fs::read_to_string(counter.path()).unwrap().trim(),
        "2",
        "two bind failures first"
    );
    let retries = a
        .log
        .iter()
        .filter(|l| l.contains("port taken before llama-server bound it; retrying on another"))
        .count();
    assert_eq!(retries, 2, "{a:#?}");
    assert_eq!(a.restarts, 0, "a taken port is not a failure: {a:#?}");
    assert_serves(&d).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_lines_and_binary_garbage_on_stderr_are_capped_and_harmless() {
    let Some(real) = llama_server() else {
        return;
    };
    let counter = tempfile::NamedTempFile::new().unwrap();
    let d = Daemon::start(FAKE.into(), &faulty("garbage", &real, counter.path())).await;
    d.wait_state("a", State::Ready).await;
    // The daemon reads stderr on its own task, which may still be working
    // through the 8 MiB when the child answers /health: wait for its end.
    let s = d
        .wait_for("the end of the garbage in the log", |s| {
            s.models["a"].log.join("\n").contains("fake: garbage done")
        })
        .await;
    let log = s.models["a"].log.clone();
    for line in &log {
        let line = line.as_str();
        // The ring buffer caps each line at 2 KiB plus the truncation mark.
        assert!(
            line.len() <= 2048 + 64,
            "a {} byte line reached the status",
            line.len()
        );
    }
    let all = serde_json::to_string(&log).unwrap();
    let tail: String = all
        .chars()
        .rev()
        .take(300)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert!(
        all.contains("yyyy [...truncated]"),
        "the 4 MiB line was not marked as cut: {tail}"
    );
    assert_serves(&d).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_file_deleted_while_running_keeps_serving_and_a_restart_says_why() {
    let Some(server) = llama_server() else {
        return;
    };
    let d = Daemon::start(server, ONE_TINY).await;
    let s = d.wait_state("a", State::Ready).await;
    let pid = s.models["a"].pid.unwrap();
    let model = d.dir.path().join("a.gguf");
    let kept = d.dir.path().join("a.gguf.kept");
    std::fs::rename(&model, &kept).unwrap();
    // The running process holds the file it opened: it keeps serving.
    assert_serves(&d).await;
    // A crash now cannot restart it: the status says why, and keeps trying.
    signal(pid, rustix::process::Signal::KILL);
    let s = d
        .wait_for("a failed restart naming the missing file", |s| {
            s.models["a"]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("a.gguf") && e.contains("does not exist"))
        })
        .await;
    assert!(s.models["a"].pid.is_none(), "nothing should run: {s:#?}");
    // The file is back: the next retry serves.
    std::fs::rename(&kept, &model).unwrap();
    d.wait_state("a", State::Ready).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_state_directory_is_reported_and_serving_goes_on() {
    let Some(server) = llama_server() else {
        return;
    };
    // Quiet llama-server, so the daemon's warning stays in the last 20 lines.
    let quiet = format!("{ONE_TINY}    extra_args: [-lv, '1']\n");
    let d = Daemon::start(server, &quiet).await;
    let s = d.wait_state("a", State::Ready).await;
    let pid = s.models["a"].pid.unwrap();
    // A file where the directory was: no write can succeed, even as root.
    let state = d.dir.path().join("state");
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(&state, "not a directory").unwrap();
    signal(pid, rustix::process::Signal::KILL);
    let s = d
        .wait_for("a restart that reports the state file", |s| {
            let a = &s.models["a"];
            a.state == State::Ready
                && a.pid != Some(pid)
                && a.log.join("\n").contains("could not record")
        })
        .await;
    let log = s.models["a"].log.join("\n");
    assert!(log.contains("is not reaped"), "{log}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_spec_changes_nothing_and_says_so() {
    let Some(server) = llama_server() else {
        return;
    };
    let d = Daemon::start(server, ONE_TINY).await;
    let s = d.wait_state("a", State::Ready).await;
    let pid = s.models["a"].pid;
    let original = std::fs::read(&d.spec_path).unwrap();
    // Root reads any file whatever its mode, so the unreadable spec here is
    // a directory in its place: the same read error path as EACCES.
    std::fs::remove_file(&d.spec_path).unwrap();
    std::fs::create_dir(&d.spec_path).unwrap();
    let s = d
        .wait_for("the rejected read", |s| {
            s.daemon.last_reload.as_ref().is_some_and(|r| !r.ok)
                && s.daemon
                    .last_reload
                    .as_ref()
                    .unwrap()
                    .errors
                    .join("\n")
                    .contains("cannot read the spec")
        })
        .await;
    assert_eq!(s.models["a"].pid, pid, "{s:#?}");
    assert_eq!(s.models["a"].state, State::Ready, "{s:#?}");
    // A spec that is not UTF-8 is rejected at its first bad byte.
    std::fs::remove_dir(&d.spec_path).unwrap();
    let mut bad = original;
    bad.extend_from_slice(b"# caf\xe9\n");
    std::fs::write(&d.spec_path, &bad).unwrap();
    let s = d
        .wait_for("the rejected non-UTF-8 spec", |s| {
            s.daemon
                .last_reload
                .as_ref()
                .unwrap()
                .errors
                .join("\n")
                .contains("is not UTF-8 text")
        })
        .await;
    assert_eq!(s.models["a"].pid, pid, "{s:#?}");
    d.stop().await;
}
