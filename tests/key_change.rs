//! Routes change only with their key: a client hammering the endpoint
//! across a reload that adds `api_key_file`, or one that moves to another
//! key, gets no success once the reload is applied (issue 8, item 6).
//!
//! "Applied" is the moment the status API first takes the new key and
//! refuses the hammer's (none, or the old one): the
//! daemon publishes the routes and their key in one table, so from then on
//! every request must be judged by the new key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, wait_until, write_by_rename};

/// The HTTP status of `GET path`, sent with `bearer` when given.
fn status_of(addr: &str, path: &str, bearer: Option<&str>) -> u16 {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return 0;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = bearer
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .is_err()
    {
        return 0;
    }
    let mut head = [0u8; 12];
    match s.read_exact(&mut head) {
        Ok(()) => std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        Err(_) => 0,
    }
}

fn write_key(path: &Path, key: &str) {
    std::fs::write(path, key).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// One request's outcome and when it was sent.
struct Sent {
    at: Instant,
    status: u16,
}

/// Sends `GET /v1/models` with `bearer` on one thread after another until
/// `stop`, recording each outcome.
fn hammer(
    listen: String,
    bearer: Option<String>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Sent>> {
    std::thread::spawn(move || {
        let mut sent = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let at = Instant::now();
            let status = status_of(&listen, "/v1/models", bearer.as_deref());
            sent.push(Sent { at, status });
        }
        sent
    })
}

/// Applies `edit`, waits until the status API accepts `new_key`, keeps the
/// hammer going a while longer, and returns (requests before, requests
/// after the reload was applied).
fn across_reload(
    d: &Daemon,
    bearer: Option<&str>,
    new_key: &str,
    edit: impl FnOnce(),
) -> (Vec<Sent>, Vec<Sent>) {
    let stop = Arc::new(AtomicBool::new(false));
    let worker = hammer(
        d.listen.clone(),
        bearer.map(str::to_owned),
        Arc::clone(&stop),
    );
    // Let the hammer succeed a while under the old table, so a test that
    // never reached the endpoint cannot pass.
    wait_until(
        Duration::from_secs(20),
        "a request succeeds before the edit",
        || (status_of(&d.listen, "/v1/models", bearer) == 200).then_some(()),
    );
    edit();
    wait_until(
        Duration::from_secs(30),
        "the status API takes the new key and refuses the hammer's",
        || {
            (status_of(&d.control, "/status", Some(new_key)) == 200
                && status_of(&d.control, "/status", bearer) == 401)
                .then_some(())
        },
    );
    let applied = Instant::now();
    // More requests after the reload, beside the hammer's, to catch a
    // table served late.
    let mine: Vec<Sent> = (0..200)
        .map(|_| Sent {
            at: Instant::now(),
            status: status_of(&d.listen, "/v1/models", bearer),
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    let mut sent = worker.join().unwrap();
    sent.extend(mine);
    sent.into_iter().partition(|s| s.at < applied)
}

fn assert_refused_after(after: &[Sent], before: &[Sent], what: &str) {
    assert!(
        before.iter().any(|s| s.status == 200),
        "{what}: no request succeeded before the edit ({} sent: {:?}), so the test proves nothing",
        before.len(),
        before
            .iter()
            .map(|s| s.status)
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert!(
        after.len() >= 10,
        "{what}: only {} requests were sent after the reload",
        after.len()
    );
    let served: Vec<u16> = after
        .iter()
        .map(|s| s.status)
        .filter(|s| *s != 401)
        .collect();
    assert!(
        served.is_empty(),
        "{what}: {} of {} requests sent after the reload was applied were not refused with 401: {served:?}",
        served.len(),
        after.len()
    );
}

#[test]
fn no_request_succeeds_without_the_key_once_a_reload_adds_it() {
    // On demand: the table lists the model without starting a llama-server.
    let models = "  a:\n    model: a.gguf\n    on_demand: true\n";
    let d = Daemon::start(&["a"], models);
    let key = d.dir.path().join("key");
    write_key(&key, "first-key");
    let (before, after) = across_reload(&d, None, "first-key", || {
        let text = d.spec_text(models).replacen(
            "defaults:",
            &format!("api_key_file: {}\ndefaults:", key.display()),
            1,
        );
        write_by_rename(&d.spec, &text);
    });
    assert_refused_after(&after, &before, "adding api_key_file");
}

#[test]
fn no_request_succeeds_with_the_old_key_once_a_reload_changes_it() {
    let models = "  a:\n    model: a.gguf\n    on_demand: true\n";
    let d = Daemon::start(&["a"], models);
    let (old, new) = (d.dir.path().join("old-key"), d.dir.path().join("new-key"));
    write_key(&old, "old-key");
    write_key(&new, "new-key");
    let with_key = |path: &Path| {
        d.spec_text(models).replacen(
            "defaults:",
            &format!("api_key_file: {}\ndefaults:", path.display()),
            1,
        )
    };
    write_by_rename(&d.spec, &with_key(&old));
    wait_until(Duration::from_secs(30), "the old key is in force", || {
        (status_of(&d.control, "/status", Some("old-key")) == 200
            && status_of(&d.control, "/status", None) == 401)
            .then_some(())
    });
    let (before, after) = across_reload(&d, Some("old-key"), "new-key", || {
        write_by_rename(&d.spec, &with_key(&new));
    });
    assert_refused_after(&after, &before, "moving to another key file");

    // A rotated key file takes effect on SIGHUP alone, the same way.
    let (before, after) = across_reload(&d, Some("new-key"), "rotated-key", || {
        write_key(&new, "rotated-key");
        d.signal("HUP");
    });
    assert_refused_after(&after, &before, "rotating the key file's content (SIGHUP)");
}
