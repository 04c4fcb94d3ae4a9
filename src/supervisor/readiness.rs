//! Is a llama-server ready? `GET http://127.0.0.1:<port>/health`.
//!
//! llama-server (b11434) refuses connections until it binds, answers 503
//! while the model loads and 200 once it can serve. [`wait_ready`] polls
//! about every [`POLL_INTERVAL`] so readiness is seen within milliseconds,
//! reusing one keep-alive connection (llama-server's HTTP pool grows on
//! demand, so holding one connection costs it nothing) and reconnecting
//! whenever that fails. [`probe`] is a single check on a fresh connection.

use std::fmt;
use std::future::Future;
use std::process::ExitStatus;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Time between two polls in [`wait_ready`].
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How long one health request may take (connect + response) before it
/// counts as unreachable.
pub(crate) const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Health responses bigger than this are not read (llama-server's is ~15 B).
const MAX_BODY: usize = 64 * 1024;

/// What one `/health` request said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// 200: serving.
    Ready,
    /// 503: up, still loading the model.
    Loading,
    /// Some other HTTP status (not llama-server on that port?).
    Unexpected(u16),
    /// No HTTP answer: refused (not bound yet, or gone), reset, or timed out.
    Unreachable(String),
}

impl fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeResult::Ready => f.write_str("200 ready"),
            ProbeResult::Loading => f.write_str("503 loading"),
            ProbeResult::Unexpected(code) => write!(f, "unexpected HTTP status {code}"),
            ProbeResult::Unreachable(why) => write!(f, "unreachable: {why}"),
        }
    }
}

/// Why a start did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    #[error("llama-server was not ready within {timeout:?} (last /health: {last_probe})")]
    Timeout {
        timeout: Duration,
        last_probe: ProbeResult,
    },
    #[error(
        "llama-server exited before it was ready ({status}){}",
        format_tail(last_lines)
    )]
    ExitedBeforeReady {
        status: ExitStatus,
        /// Its last output lines, oldest first ([`crate::supervisor::RunningProcess::wait_ready`]
        /// fills them in; the free [`wait_ready`] leaves them empty).
        last_lines: Vec<String>,
    },
}

impl ReadyError {
    /// Whether llama-server reported that it could not bind its port, i.e.
    /// another process took the port between picking and binding: retry at
    /// once on a fresh port rather than counting a crash.
    pub fn is_bind_failure(&self) -> bool {
        match self {
            ReadyError::ExitedBeforeReady { last_lines, .. } => last_lines.iter().any(|l| {
                l.contains("couldn't bind HTTP server socket")
                    || l.contains("Address already in use")
            }),
            ReadyError::Timeout { .. } => false,
        }
    }
}

fn format_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut s = String::from("; its last output:");
    for l in lines {
        s.push_str("\n    ");
        s.push_str(l);
    }
    s
}

/// Polls `/health` on `127.0.0.1:port` until it answers 200, `timeout`
/// passes, or `exited` (typically [`RunningProcess::wait`](super::RunningProcess::wait))
/// completes. Returns how long it took. Cancellation-safe.
pub(crate) async fn wait_ready(
    port: u16,
    timeout: Duration,
    exited: impl Future<Output = ExitStatus>,
) -> Result<Duration, ReadyError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut exited = std::pin::pin!(exited);
    let mut client = HealthClient::new(port);
    // The last complete answer; a probe cut short by the overall deadline
    // does not replace it.
    let mut last: Option<ProbeResult> = None;
    loop {
        let probe_limit = Instant::now() + DEFAULT_PROBE_TIMEOUT;
        let probe_deadline = deadline.min(probe_limit);
        tokio::select! {
            biased;
            status = &mut exited => {
                return Err(ReadyError::ExitedBeforeReady { status, last_lines: Vec::new() });
            }
            r = tokio::time::timeout_at(probe_deadline, client.probe()) => match r {
                Ok(ProbeResult::Ready) => return Ok(start.elapsed()),
                Ok(other) => last = Some(other),
                Err(_) => {
                    client.reset();
                    if probe_limit <= deadline {
                        last = Some(ProbeResult::Unreachable(format!(
                            "no answer within {DEFAULT_PROBE_TIMEOUT:?}"
                        )));
                    } else if last.is_none() {
                        last = Some(ProbeResult::Unreachable("no answer before the deadline".into()));
                    }
                }
            },
        }
        if Instant::now() >= deadline {
            let last_probe = last.unwrap_or_else(|| ProbeResult::Unreachable("not probed".into()));
            return Err(ReadyError::Timeout {
                timeout,
                last_probe,
            });
        }
        let next = deadline.min(Instant::now() + POLL_INTERVAL);
        tokio::select! {
            biased;
            status = &mut exited => {
                return Err(ReadyError::ExitedBeforeReady { status, last_lines: Vec::new() });
            }
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

/// One `/health` check on a fresh connection, bounded by
/// [`DEFAULT_PROBE_TIMEOUT`].
pub async fn probe(port: u16) -> ProbeResult {
    probe_with_timeout(port, DEFAULT_PROBE_TIMEOUT).await
}

/// One `/health` check on a fresh connection, bounded by `timeout`.
pub(crate) async fn probe_with_timeout(port: u16, timeout: Duration) -> ProbeResult {
    let mut client = HealthClient::new(port);
    match tokio::time::timeout(timeout, client.probe()).await {
        Ok(r) => r,
        Err(_) => ProbeResult::Unreachable(format!("no answer within {timeout:?}")),
    }
}

/// A `/health` client holding at most one keep-alive connection.
struct HealthClient {
    port: u16,
    conn: Option<SendRequest<Empty<Bytes>>>,
}

impl HealthClient {
    fn new(port: u16) -> HealthClient {
        HealthClient { port, conn: None }
    }

    fn reset(&mut self) {
        self.conn = None;
    }

    async fn probe(&mut self) -> ProbeResult {
        // A kept connection the server has meanwhile closed fails the first
        // request; then try once more on a fresh one.
        let reused = self.conn.is_some();
        let first = self.probe_once().await;
        if reused && matches!(first, ProbeResult::Unreachable(_)) {
            return self.probe_once().await;
        }
        first
    }

    async fn probe_once(&mut self) -> ProbeResult {
        let kept = match self.conn.take() {
            Some(mut s) if !s.is_closed() => s.ready().await.ok().map(|()| s),
            _ => None,
        };
        let mut sender = match kept {
            Some(s) => s,
            None => match self.connect().await {
                Ok(s) => s,
                Err(why) => return ProbeResult::Unreachable(why),
            },
        };
        let req = match Request::get("/health")
            .header(hyper::header::HOST, format!("127.0.0.1:{}", self.port))
            .body(Empty::<Bytes>::new())
        {
            Ok(r) => r,
            Err(e) => return ProbeResult::Unreachable(format!("building the request: {e}")),
        };
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => return ProbeResult::Unreachable(e.to_string()),
        };
        let status = resp.status();
        // Read the body to the end, so the connection can be reused.
        if Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .is_ok()
        {
            self.conn = Some(sender);
        }
        match status {
            StatusCode::OK => ProbeResult::Ready,
            StatusCode::SERVICE_UNAVAILABLE => ProbeResult::Loading,
            other => ProbeResult::Unexpected(other.as_u16()),
        }
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, String> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        // Ends when `sender` is dropped or the server closes the connection.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use http_body_util::Full;
    use hyper::Response;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;

    /// A tiny stand-in for llama-server's /health: 503 for the first
    /// `loading` requests, then 200. Returns (port, request counter, connection counter).
    async fn health_server(loading: u32) -> (u16, Arc<AtomicU32>, Arc<AtomicU32>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicU32::new(0));
        let conns = Arc::new(AtomicU32::new(0));
        let (h, c) = (hits.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let h = h.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let n = h.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let code = if req.uri().path() != "/health" {
                                404
                            } else if n < loading {
                                503
                            } else {
                                200
                            };
                            let mut r = Response::new(Full::new(Bytes::from_static(
                                b"{\"status\":\"ok\"}",
                            )));
                            *r.status_mut() = StatusCode::from_u16(code).unwrap();
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (port, hits, conns)
    }

    fn free_port() -> u16 {
        crate::supervisor::ports::pick_free_port().unwrap()
    }

    #[tokio::test]
    async fn probe_states() {
        let (port, _, _) = health_server(1).await;
        assert_eq!(probe(port).await, ProbeResult::Loading);
        assert_eq!(probe(port).await, ProbeResult::Ready);
        assert!(matches!(
            probe(free_port()).await,
            ProbeResult::Unreachable(_)
        ));
    }

    #[tokio::test]
    async fn waits_through_loading_on_one_connection() {
        let (port, hits, conns) = health_server(5).await;
        let took = wait_ready(port, Duration::from_secs(10), std::future::pending())
            .await
            .unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 6);
        assert_eq!(
            conns.load(Ordering::SeqCst),
            1,
            "keep-alive connection reused"
        );
        // 5 polls of 10 ms: well under a second even on a loaded machine.
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn detects_a_late_bind_within_milliseconds() {
        let port = free_port();
        let waiter = tokio::spawn(wait_ready(
            port,
            Duration::from_secs(10),
            std::future::pending(),
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let bound = Instant::now();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = service_fn(|_req: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
        let took = waiter.await.unwrap().unwrap();
        assert!(took >= Duration::from_millis(200));
        assert!(
            bound.elapsed() < Duration::from_millis(500),
            "{:?}",
            bound.elapsed()
        );
    }

    #[tokio::test]
    async fn times_out_with_the_last_probe() {
        let (port, _, _) = health_server(u32::MAX).await;
        let err = wait_ready(port, Duration::from_millis(100), std::future::pending())
            .await
            .unwrap_err();
        match err {
            ReadyError::Timeout { last_probe, .. } => assert_eq!(last_probe, ProbeResult::Loading),
            other => panic!("{other}"),
        }
        let err = wait_ready(
            free_port(),
            Duration::from_millis(50),
            std::future::pending(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                ReadyError::Timeout {
                    last_probe: ProbeResult::Unreachable(_),
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn exit_ends_the_wait() {
        use std::os::unix::process::ExitStatusExt;
        let exited = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            ExitStatus::from_raw(1 << 8)
        };
        let err = wait_ready(free_port(), Duration::from_secs(10), exited)
            .await
            .unwrap_err();
        match &err {
            ReadyError::ExitedBeforeReady { status, .. } => assert_eq!(status.code(), Some(1)),
            other => panic!("{other}"),
        }
        assert!(!err.is_bind_failure());
        let bind = ReadyError::ExitedBeforeReady {
            status: ExitStatus::from_raw(1 << 8),
            last_lines: vec![
                "srv    start: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 1"
                    .into(),
            ],
        };
        assert!(bind.is_bind_failure());
        assert!(
            bind.to_string()
                .contains("its last output:\n    srv    start: couldn't bind"),
            "{bind}"
        );
    }
}
