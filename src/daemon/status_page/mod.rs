//! The status page on the control address, and what it needs that the
//! status API did not have: when each model entered its state, the reload
//! history with errors rendered against the spec's source, the live
//! `/events` stream, and the operator actions (`POST /models/{name}/{start,
//! stop,restart}`), which go through the model's owner.
//!
//! The page itself is three hand-written files in `assets/status-page/`,
//! embedded in the binary; it loads nothing from anywhere else (its
//! Content-Security-Policy says so to the browser too). See
//! docs/status-page.md.

pub mod events;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{HeaderMap, Method, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::daemon::DaemonInfo;
use crate::proxy::routes::Routes;
use crate::supervisor::{OperatorAction, State};

/// Reloads kept in the history.
pub const HISTORY_LEN: usize = 20;

/// One reload as the history shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReloadRecord {
    pub ok: bool,
    /// Seconds since the Unix epoch.
    pub at: f64,
    /// The generation after this reload.
    pub generation: u64,
    pub errors: Vec<String>,
    /// Each error as the CLI prints it: `file:line:column: ...`, then the
    /// source line and a caret (as the spec read just after the reload).
    pub rendered: Vec<String>,
    pub actions: Vec<String>,
}

#[derive(Default)]
struct Seen {
    since: BTreeMap<String, (State, SystemTime)>,
    history: VecDeque<ReloadRecord>,
    last_reload_at: Option<SystemTime>,
}

/// Follows the daemon's info, its routes and every owner's snapshot, and
/// remembers what the page shows but nobody else keeps.
pub struct Observer {
    seen: Mutex<Seen>,
    /// Bumped on every change anyone may want to see at once.
    changes: watch::Sender<u64>,
}

impl Observer {
    /// An observer with nothing seen, not following anything (tests).
    pub fn detached() -> Arc<Observer> {
        Arc::new(Observer {
            seen: Mutex::default(),
            changes: watch::channel(0).0,
        })
    }

    /// Starts following; ends with `shutdown`.
    pub fn spawn(
        mut info: watch::Receiver<DaemonInfo>,
        mut routes: watch::Receiver<Arc<Routes>>,
        shutdown: CancellationToken,
    ) -> Arc<Observer> {
        let observer = Observer::detached();
        let me = Arc::clone(&observer);
        tokio::spawn(async move {
            let (tx, mut rx) = mpsc::unbounded_channel::<(String, State)>();
            let mut forwarders: Vec<tokio::task::JoinHandle<()>> = Vec::new();
            let follow = |routes: &Routes, forwarders: &mut Vec<tokio::task::JoinHandle<()>>| {
                for f in forwarders.drain(..) {
                    f.abort();
                }
                for (name, entry) in &routes.models {
                    let mut snapshots = entry.handle.subscribe();
                    let (tx, name) = (tx.clone(), name.clone());
                    forwarders.push(tokio::spawn(async move {
                        loop {
                            let state = snapshots.borrow_and_update().state;
                            if tx.send((name.clone(), state)).is_err()
                                || snapshots.changed().await.is_err()
                            {
                                return;
                            }
                        }
                    }));
                }
            };
            me.note_info(&info.borrow_and_update().clone());
            follow(&routes.borrow_and_update().clone(), &mut forwarders);
            loop {
                tokio::select! {
                    Ok(()) = info.changed() => {
                        let i = info.borrow_and_update().clone();
                        me.note_info(&i);
                    }
                    Ok(()) = routes.changed() => {
                        let r = routes.borrow_and_update().clone();
                        follow(&r, &mut forwarders);
                        me.bump();
                    }
                    Some((name, state)) = rx.recv() => me.note_state(&name, state),
                    () = shutdown.cancelled() => break,
                }
            }
            for f in forwarders {
                f.abort();
            }
        });
        observer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// When the model entered the state it is in.
    pub fn since(&self, model: &str) -> Option<SystemTime> {
        self.lock().since.get(model).map(|(_, at)| *at)
    }

    /// The reloads seen, newest first.
    pub fn history(&self) -> Vec<ReloadRecord> {
        self.lock().history.iter().rev().cloned().collect()
    }

    fn note_state(&self, model: &str, state: State) {
        {
            let mut seen = self.lock();
            let entry = seen
                .since
                .entry(model.to_owned())
                .or_insert((state, SystemTime::now()));
            if entry.0 != state {
                *entry = (state, SystemTime::now());
            }
        }
        // Any published snapshot (pid, port, errors) is news, not only a
        // new state.
        self.bump();
    }

    fn note_info(&self, info: &DaemonInfo) {
        if let Some(r) = &info.last_reload {
            let mut seen = self.lock();
            if seen.last_reload_at != Some(r.at) {
                seen.last_reload_at = Some(r.at);
                let source = if r.ok {
                    String::new()
                } else {
                    std::fs::read_to_string(&info.spec).unwrap_or_default()
                };
                let rendered = r
                    .errors
                    .iter()
                    .map(|e| render_error(e, &info.spec, &source))
                    .collect();
                seen.history.push_back(ReloadRecord {
                    ok: r.ok,
                    at: epoch_secs(r.at),
                    generation: info.generation,
                    errors: r.errors.clone(),
                    rendered,
                    actions: r.actions.clone(),
                });
                while seen.history.len() > HISTORY_LEN {
                    seen.history.pop_front();
                }
            }
        }
        self.bump();
    }
}

pub fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A reload error (`file:line:column: key: message`) with the source line
/// and a caret under the column, as the CLI prints spec errors; unchanged
/// when it names no position in `spec`.
pub fn render_error(error: &str, spec: &Path, source: &str) -> String {
    let file = spec.display().to_string();
    let position = error.strip_prefix(&file).and_then(|rest| {
        let mut parts = rest.strip_prefix(':')?.splitn(3, ':');
        let line = parts.next()?.parse().ok()?;
        let column = parts.next()?.parse().ok()?;
        let message = parts.next()?.strip_prefix(' ')?;
        Some((line, column, message))
    });
    match position {
        Some((line, column, message)) => crate::spec::diagnostic::Diagnostic {
            file: spec.to_owned(),
            pos: Some(crate::spec::tree::Pos { line, column }),
            path: String::new(),
            message: message.to_owned(),
        }
        .render(source),
        None => error.to_owned(),
    }
}

/// Paths served without the API key: the page (it holds no data; it asks
/// for the key) and its assets.
pub fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/" | "/assets/page.js" | "/assets/page.css"
    )
}

const INDEX_HTML: &str = include_str!("../../../assets/status-page/index.html");
const PAGE_JS: &str = include_str!("../../../assets/status-page/page.js");
const PAGE_CSS: &str = include_str!("../../../assets/status-page/page.css");

/// Nothing but this server: no CDN, no inline script, no framing (the
/// action buttons cannot be clickjacked).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn plain(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

/// The page and its assets, or `None` for another path.
pub fn asset(method: &Method, path: &str) -> Option<Response<Full<Bytes>>> {
    let (content_type, body) = match path {
        "/" => ("text/html; charset=utf-8", INDEX_HTML),
        "/assets/page.js" => ("text/javascript; charset=utf-8", PAGE_JS),
        "/assets/page.css" => ("text/css; charset=utf-8", PAGE_CSS),
        _ => return None,
    };
    if method != Method::GET && method != Method::HEAD {
        return Some(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        ));
    }
    let mut r = plain(StatusCode::OK, content_type, body.to_owned());
    let h = r.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-cache"),
    ] {
        h.insert(name, hyper::header::HeaderValue::from_static(value));
    }
    Some(r)
}

/// `/models/{name}/{start|stop|restart}` split into its model and action.
pub fn action_path(path: &str) -> Option<(&str, Option<OperatorAction>)> {
    let rest = path.strip_prefix("/models/")?;
    let (name, verb) = rest.rsplit_once('/')?;
    let action = match verb {
        "start" => Some(OperatorAction::Start),
        "stop" => Some(OperatorAction::Stop),
        "restart" => Some(OperatorAction::Restart),
        _ => None,
    };
    (!name.is_empty()).then_some((name, action))
}

/// An operator action, or `None` when `path` is not one. Only a POST with
/// a JSON content type acts: a cross-site form or a simple `fetch` cannot
/// send one without a CORS preflight, which the Origin check refuses.
pub async fn action(
    routes: &Routes,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<Response<Full<Bytes>>> {
    let (name, action) = action_path(path)?;
    let json =
        |status, value: serde_json::Value| plain(status, "application/json", format!("{value}\n"));
    let Some(action) = action else {
        return Some(json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "the actions are start, stop and restart"}),
        ));
    };
    if method != Method::POST {
        return Some(json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "actions are POSTs"}),
        ));
    }
    if let Err(e) = crate::http::browser::json_content_type(headers, false) {
        return Some(json(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            serde_json::json!({ "error": e }),
        ));
    }
    let Some(entry) = routes.models.get(name) else {
        return Some(json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": format!("no model named `{name}`") }),
        ));
    };
    Some(match entry.handle.operate(action).await {
        Ok(()) => json(
            StatusCode::OK,
            serde_json::json!({ "model": name, "action": action }),
        ),
        Err(e) => json(
            StatusCode::CONFLICT,
            serde_json::json!({ "error": e.to_string() }),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_get_their_source_line_and_caret() {
        let spec = Path::new("/etc/rocm-llm/models.yaml");
        let source = "models:\n  qwen:\n    ctx_size: lots\n";
        for (error, expected) in [
            (
                "/etc/rocm-llm/models.yaml:3:15: models.qwen.ctx_size: expected an integer, found `lots`",
                "/etc/rocm-llm/models.yaml:3:15: models.qwen.ctx_size: expected an integer, found `lots`\n   |\n 3 |     ctx_size: lots\n   |               ^",
            ),
            // No position: unchanged.
            (
                "/etc/rocm-llm/models.yaml: the spec file is gone; nothing was changed",
                "/etc/rocm-llm/models.yaml: the spec file is gone; nothing was changed",
            ),
            // Another file: unchanged.
            ("/other.yaml:1:1: x: y", "/other.yaml:1:1: x: y"),
        ] {
            assert_eq!(render_error(error, spec, source), expected, "{error}");
        }
    }

    #[test]
    fn action_paths() {
        for (path, expected) in [
            (
                "/models/qwen/stop",
                Some(("qwen", Some(OperatorAction::Stop))),
            ),
            (
                "/models/qwen/start",
                Some(("qwen", Some(OperatorAction::Start))),
            ),
            (
                "/models/qwen/restart",
                Some(("qwen", Some(OperatorAction::Restart))),
            ),
            ("/models/qwen/explode", Some(("qwen", None))),
            ("/models//stop", None),
            ("/models/qwen", None),
            ("/status", None),
        ] {
            assert_eq!(action_path(path), expected, "{path}");
        }
    }

    #[test]
    fn public_paths_hold_no_data() {
        for (path, public) in [
            ("/", true),
            ("/assets/page.js", true),
            ("/healthz", true),
            ("/status", false),
            ("/events", false),
            ("/metrics", false),
            ("/models/a/stop", false),
            ("/assets/other.js", false),
        ] {
            assert_eq!(is_public(path), public, "{path}");
        }
    }
}
