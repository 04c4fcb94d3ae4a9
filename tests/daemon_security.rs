//! Findings of the security review (issue 10, item 7), shown against the real
//! daemon and the real llama-server.
//!
//! Each test failed before its fix (findings S1, S2 and S4 in
//! docs/hardening.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::daemon::Daemon;

/// Sends `head` (request line and headers, without the final blank line)
/// and `body` with `Connection: close`, and returns the whole response.
fn raw(addr: &str, head: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the endpoint");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{head}\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn llama_servers_cors_headers_never_reach_a_client() {
    let Some(d) = Daemon::start(&["a"], "  a:\n    model: a.gguf\n") else {
        return;
    };
    d.wait_ready(&["a"]);
    let chat = r#"{"model":"a","messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#;
    for (head, body) in [
        (
            "POST /v1/chat/completions HTTP/1.1\r\nOrigin: http://evil.example\r\nContent-Type: application/json",
            chat,
        ),
        (
            "OPTIONS /upstream/a/v1/chat/completions HTTP/1.1\r\nOrigin: http://evil.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type",
            "",
        ),
    ] {
        let response = raw(&d.listen, head, body);
        let (headers, _) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        assert!(
            !headers
                .to_ascii_lowercase()
                .contains("access-control-allow-origin: http://evil.example"),
            "a page on http://evil.example may read this answer:\n{headers}"
        );
    }
}

#[test]
fn a_child_answers_only_the_daemon() {
    let Some(d) = Daemon::start(&["a"], "  a:\n    model: a.gguf\n") else {
        return;
    };
    let status = d.wait_ready(&["a"]);
    // Unix-socket children (no port) cannot be reached this way at all.
    let Some(port) = status.models["a"].port else {
        return;
    };
    let chat = r#"{"model":"a","messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#;
    let response = raw(
        &format!("127.0.0.1:{port}"),
        "POST /v1/chat/completions HTTP/1.1\r\nOrigin: http://evil.example\r\nContent-Type: text/plain",
        chat,
    );
    assert!(
        !response.starts_with("HTTP/1.1 200"),
        "any local user, and a web page that finds the port, can use model a without the daemon:\n{}",
        response.lines().take(4).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn leftover_reaping_never_stops_a_process_that_is_not_a_llama_server() {
    let Some(mut d) = Daemon::start(&["a"], "  a:\n    model: a.gguf\n") else {
        return;
    };
    d.wait_ready(&["a"]);
    d.signal("TERM");
    d.wait_exit(common::PATIENCE);
    // Anyone who can write the state directory can name any process: its
    // pid and start time are public in /proc.
    let mut bystander = std::process::Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = bystander.id() as i32;
    let start_time = rocm_llm::supervisor::process::process_start_time(pid).unwrap();
    rocm_llm::supervisor::StateFile::new(&d.dir.path().join("state"))
        .record(rocm_llm::supervisor::InstanceRecord {
            model: "a".into(),
            pid,
            start_time,
            launch_id: rocm_llm::plan::LaunchId("x".into()),
            port: common::daemon::free_port(),
        })
        .unwrap();
    d.spawn();
    d.wait_ready(&["a"]);
    let survived = bystander.try_wait().unwrap().is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(
        survived,
        "the daemon stopped `sleep 300` because its state file named it:\n{}",
        d.log()
    );
}
