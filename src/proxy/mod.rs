//! The OpenAI-compatible endpoint on the spec's `listen` address: one URL in
//! front of every model's llama-server.
//!
//! A request is routed by the `model` of its JSON body (a name or an alias;
//! `?model=` for llama.cpp's GET routes; `/upstream/{model}/…` for anything
//! else). The proxy then waits for a serving instance
//! ([`InstanceHandle::acquire`](crate::supervisor::InstanceHandle::acquire):
//! bounded by the model's `queue_length` and `wait_timeout`, starting an
//! on-demand model) and forwards the request over a pooled keep-alive
//! connection to the instance's loopback port. The response streams back
//! frame by frame; the instance's [`Lease`](crate::supervisor::Lease) is held
//! until the last byte is sent or the client leaves, so a hot-swap drains
//! the request instead of cutting it. A client that leaves drops the upstream
//! connection, and llama-server cancels the generation.
//!
//! See `docs/proxy.md`.

// Early answers travel as `Err(Response)`: built once per failed request.
#![allow(clippy::result_large_err)]

pub mod body;
pub mod error;
pub mod metrics;
pub mod route;
pub mod routes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::http::auth::{ApiKey, AuthError};
use body::{Hold, ProxyBody, UpstreamBody, json_response};
use error::ProxyError;
pub use metrics::ProxyMetrics;
use route::Route;

use crate::http::browser::{self, Verdict};
use crate::supervisor::{AcquireError, InstanceHandle, Lease, State};
use routes::{RouteEntry, Routes, SharedRoutes};

/// Bounds on what clients send. Responses are not bounded: long streams
/// are normal LLM traffic.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Largest request body; beyond it, 413.
    pub max_body: usize,
    /// How long a request body may take to arrive; beyond it, 408.
    pub body_timeout: Duration,
    /// How long a client may take to send a request's headers (also the
    /// idle limit of a kept-alive connection between requests).
    pub header_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_body: 32 << 20,
            body_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything a request needs. Cheap to clone.
#[derive(Clone)]
pub struct ProxyState {
    inner: Arc<Shared>,
}

struct Shared {
    routes: SharedRoutes,
    metrics: Arc<ProxyMetrics>,
    config: ProxyConfig,
    client: Client<HttpConnector, Full<Bytes>>,
    /// For the retry: never reuses a connection.
    fresh: Client<HttpConnector, Full<Bytes>>,
    shutdown: CancellationToken,
    started: SystemTime,
}

impl ProxyState {
    pub fn new(
        routes: SharedRoutes,
        metrics: Arc<ProxyMetrics>,
        config: ProxyConfig,
        shutdown: CancellationToken,
    ) -> ProxyState {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            // llama-server (cpp-httplib) closes idle keep-alive connections
            // after 5 s; give ours up first so a request never races a close.
            .pool_idle_timeout(Duration::from_secs(4))
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(1024)
            .build(connector.clone());
        let fresh = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        ProxyState {
            inner: Arc::new(Shared {
                routes,
                metrics,
                config,
                client,
                fresh,
                shutdown,
                started: SystemTime::now(),
            }),
        }
    }
}

/// Serves the endpoint on `listener` until `shutdown`. Connections already
/// open keep being served (their requests finish) while the daemon drains.
pub async fn serve(listener: TcpListener, state: ProxyState) {
    let shutdown = state.inner.shutdown.clone();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!("proxy accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let state = state.clone();
        let header_timeout = state.inner.config.header_timeout;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(guarded(&state.inner, req, local).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Applies what browsers may do ([`browser::check`]) before anything else,
/// so a refused request reaches no model.
async fn guarded(state: &Shared, req: Request<Incoming>, local: SocketAddr) -> Response<ProxyBody> {
    // One snapshot for the whole request: its browser rules, its key and
    // its first route lookup come from the same table.
    let table = state.routes.borrow().clone();
    match browser::check(&table.browser, req.method(), req.headers(), local) {
        Verdict::Serve { cors } => {
            let mut response = handle(state, &table, req).await;
            if let Some(origin) = cors {
                browser::add_cors_headers(response.headers_mut(), origin);
            }
            response
        }
        Verdict::Preflight { origin, headers } => {
            state.metrics.count_unrouted(204);
            let mut r = Response::new(ProxyBody::full(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            *r.headers_mut() = browser::preflight_headers(origin, headers);
            r
        }
        Verdict::Forbidden { code, message } => {
            state.metrics.count_unrouted(403);
            ProxyError::Forbidden { code, message }.into_response()
        }
    }
}

async fn handle(state: &Shared, table: &Routes, req: Request<Incoming>) -> Response<ProxyBody> {
    let received = Instant::now();
    let route = route::classify(req.method(), req.uri().path());
    if route == Route::Health {
        return json_response(StatusCode::OK, &json!({"status": "ok"}));
    }
    if let Err(e) = table.key.check(req.headers()) {
        let response = match e {
            AuthError::Unauthorized => ProxyError::Unauthorized,
            AuthError::Unavailable(reason) => ProxyError::KeyUnavailable(reason),
        }
        .into_response();
        state.metrics.count_unrouted(response.status().as_u16());
        return response;
    }
    let response = match route {
        Route::Health => json_response(StatusCode::OK, &json!({"status": "ok"})),
        Route::ListModels => list_models(state, table),
        Route::GetModel(id) => get_model(state, table, &id),
        Route::WrongMethod(allowed) => ProxyError::WrongMethod {
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            allowed,
        }
        .into_response(),
        Route::NotFound => ProxyError::UnknownRoute {
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
        }
        .into_response(),
        Route::ByBody | Route::ByQuery | Route::Upstream { .. } => {
            return proxy(state, table, req, route, received).await;
        }
    };
    state.metrics.count_unrouted(response.status().as_u16());
    response
}

/// `GET /v1/models`: every name and alias, in OpenAI's list format, with
/// each model's state (`ready`, `idle`, `starting`, …) as an extra field.
fn list_models(state: &Shared, routes: &Routes) -> Response<ProxyBody> {
    let mut data = Vec::new();
    for (name, entry) in &routes.models {
        data.push(model_object(state, routes, name, name, entry));
        for alias in &entry.aliases {
            data.push(model_object(state, routes, alias, name, entry));
        }
    }
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

fn get_model(state: &Shared, routes: &Routes, id: &str) -> Response<ProxyBody> {
    match routes
        .ids
        .get(id)
        .and_then(|name| routes.models.get(name).map(|e| (name, e)))
    {
        Some((name, entry)) => json_response(
            StatusCode::OK,
            &model_object(state, routes, id, name, entry),
        ),
        None => unknown_model(routes, id).into_response(),
    }
}

fn model_object(
    state: &Shared,
    routes: &Routes,
    id: &str,
    name: &str,
    entry: &RouteEntry,
) -> serde_json::Value {
    let snap = entry.handle.snapshot();
    let created = snap
        .started_at
        .unwrap_or(state.started)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut o = json!({
        "id": id,
        "object": "model",
        "created": created,
        "owned_by": "rocm-llm",
        "state": snap.state.as_str(),
        "on_demand": entry.on_demand,
        "default": routes.default.as_deref() == Some(name),
    });
    if id == name {
        o["aliases"] = json!(entry.aliases);
    } else {
        o["alias_of"] = json!(name);
    }
    if let Some(e) = snap
        .last_error
        .filter(|_| matches!(snap.state, State::Failed | State::Backoff))
    {
        o["last_error"] = json!(e);
    }
    o
}

fn unknown_model(routes: &Routes, id: &str) -> ProxyError {
    ProxyError::UnknownModel {
        id: id.to_owned(),
        available: routes.all_ids(),
    }
}

/// Reads the whole request body, within the size and time bounds.
async fn read_body(
    state: &Shared,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Bytes, ProxyError> {
    let max = state.config.max_body;
    let too_large = || ProxyError::BodyTooLarge { max_bytes: max };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max as u64
    {
        return Err(too_large());
    }
    match tokio::time::timeout(state.config.body_timeout, Limited::new(body, max).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(e)) => Err(ProxyError::BadBody(e.to_string())),
        Err(_) => Err(ProxyError::BodyTimeout(state.config.body_timeout)),
    }
}

enum Pick {
    Id(String),
    Fallback,
}

/// The model entry for a request, or why there is none.
fn resolve(state: &Shared, routes: &Routes, pick: &Pick) -> Result<RouteEntry, ProxyError> {
    let found = match pick {
        Pick::Id(id) => routes.lookup(id).ok_or_else(|| unknown_model(routes, id)),
        Pick::Fallback => routes.fallback().ok_or_else(|| {
            if routes.models.is_empty() {
                ProxyError::NoModels
            } else {
                ProxyError::ModelRequired {
                    models: routes.models.len(),
                    available: routes.all_ids(),
                }
            }
        }),
    };
    found.cloned().map_err(|e| {
        if state.shutdown.is_cancelled() {
            ProxyError::ShuttingDown
        } else {
            e
        }
    })
}

/// Waits for a serving instance of `pick`'s model. A model that went away
/// during a reload is looked up again once (it may have a new owner).
async fn lease(
    state: &Shared,
    pick: &Pick,
    mut entry: RouteEntry,
) -> Result<(InstanceHandle, Lease, Duration), ProxyError> {
    let start = Instant::now();
    let mut again = true;
    loop {
        match entry.handle.acquire().await {
            Ok(lease) => return Ok((entry.handle, lease, start.elapsed())),
            Err(AcquireError::Gone { .. }) if again => {
                again = false;
                entry = resolve(state, &state.routes.borrow().clone(), pick)?;
            }
            Err(e) => return Err(ProxyError::Acquire(e)),
        }
    }
}

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers, including those the `Connection` header
/// names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove("proxy-connection");
}

/// Removes every `Access-Control-*` header.
fn strip_cors(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

const MODEL_HEADER: HeaderName = HeaderName::from_static("x-rocm-llm-model");

async fn proxy(
    state: &Shared,
    table: &Routes,
    req: Request<Incoming>,
    route: Route,
    received: Instant,
) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let body = match read_body(state, &parts.headers, body).await {
        Ok(b) => b,
        Err(e) => {
            state.metrics.count_unrouted(e.status().as_u16());
            return e.into_response();
        }
    };
    let query = parts.uri.query();
    let mut stream = false;
    let (pick, path) = match &route {
        Route::Upstream { id, rest } => (Pick::Id(id.clone()), format!("/{rest}")),
        Route::ByQuery => (
            route::query_model(query).map_or(Pick::Fallback, Pick::Id),
            parts.uri.path().to_owned(),
        ),
        _ => {
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            // Only the transcription routes take a form; the rest must say
            // JSON, which a web page cannot send cross-origin unasked.
            let form = route::takes_form(parts.uri.path())
                && content_type.is_some_and(route::is_multipart);
            if !form
                && let Err(message) = browser::json_content_type(&parts.headers, body.is_empty())
            {
                state.metrics.count_unrouted(415);
                return ProxyError::UnsupportedMediaType(message.to_string()).into_response();
            }
            match route::body_info(content_type, &body) {
                Ok(info) => {
                    stream = info.stream;
                    (
                        info.model
                            .map_or(Pick::Fallback, |m| Pick::Id(m.into_owned())),
                        parts.uri.path().to_owned(),
                    )
                }
                Err(e) => {
                    state.metrics.count_unrouted(400);
                    return ProxyError::InvalidJson(e.0).into_response();
                }
            }
        }
    };
    let path_and_query = match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };

    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::AUTHORIZATION);
    headers.remove("x-api-key");
    headers.remove(header::EXPECT);
    if stream {
        // llama-server (b11434) closes the connection after a streamed
        // response without saying so; a request sent on it next would fail.
        // Say it up front so the connection never goes back to the pool.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }

    // Wait for a serving instance, counted as in flight from here on.
    let entry = match resolve(state, table, &pick) {
        Ok(e) => e,
        Err(e) => {
            state.metrics.count_unrouted(e.status().as_u16());
            return e.into_response();
        }
    };
    let model = state.metrics.model(entry.handle.name());
    let in_flight = model.enter();
    let (mut handle, mut lease, waited) = match lease(state, &pick, entry).await {
        Ok(l) => l,
        Err(e) => {
            model.count_status(e.status().as_u16());
            return e.into_response();
        }
    };
    model.queue_wait.observe(waited);

    let mut retried = false;
    let upstream = loop {
        let uri: Uri = match format!("http://127.0.0.1:{}{path_and_query}", lease.port()).parse() {
            Ok(u) => u,
            Err(e) => {
                model.count_status(400);
                return ProxyError::BadPath(e.to_string()).into_response();
            }
        };
        let mut up = Request::new(Full::new(body.clone()));
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri;
        *up.headers_mut() = headers.clone();
        if let Some(key) = lease.upstream_key()
            && let Ok(v) = HeaderValue::from_str(&format!("Bearer {key}"))
        {
            up.headers_mut().insert(header::AUTHORIZATION, v);
        }
        let client = if retried { &state.fresh } else { &state.client };
        match client.request(up).await {
            Ok(r) => break r,
            Err(e) if !retried => {
                // The instance went away between the lease and the connect
                // (a crash, or a stop that raced us), or closed a kept-alive
                // connection under us: once more, on a new connection to
                // whatever serves the model now.
                retried = true;
                model
                    .retries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(
                    model = handle.name(),
                    "upstream request failed before any response ({}); retrying once",
                    chain(&e)
                );
                drop(lease);
                match lease_on(&handle, state, &pick).await {
                    Ok((h, l)) => {
                        handle = h;
                        lease = l;
                    }
                    Err(e) => {
                        model.count_status(e.status().as_u16());
                        return e.into_response();
                    }
                }
            }
            Err(e) => {
                model.count_status(502);
                return ProxyError::UpstreamUnreachable {
                    model: handle.name().to_owned(),
                    reason: chain(&e),
                }
                .into_response();
            }
        }
    };

    let (mut head, incoming) = upstream.into_parts();
    model.count_status(head.status.as_u16());
    strip_hop_by_hop(&mut head.headers);
    // llama-server allows every origin; which origins may read an answer is
    // the daemon's decision alone (`cors_origins`, added by `guarded`).
    strip_cors(&mut head.headers);
    if let Ok(v) = HeaderValue::from_str(handle.name()) {
        head.headers.insert(MODEL_HEADER, v);
    }
    let hold = Hold {
        lease,
        in_flight,
        metrics: Arc::clone(&model),
        received,
    };
    let events = head
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let break_off = events.then(|| handle.name().to_owned());
    Response::from_parts(
        head,
        ProxyBody::Upstream(UpstreamBody::new(incoming, hold, break_off)),
    )
}

/// An error and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A fresh lease for the retry: the same owner if it still serves the
/// model, else whatever the routes say now.
async fn lease_on(
    handle: &InstanceHandle,
    state: &Shared,
    pick: &Pick,
) -> Result<(InstanceHandle, Lease), ProxyError> {
    match handle.acquire().await {
        Ok(l) => Ok((handle.clone(), l)),
        Err(AcquireError::Gone { .. }) => {
            let now = state.routes.borrow().clone();
            lease(state, pick, resolve(state, &now, pick)?)
                .await
                .map(|(h, l, _)| (h, l))
        }
        Err(e) => Err(ProxyError::Acquire(e)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A proxy with no models, on an ephemeral port.
    async fn bare_proxy(
        auth: ApiKey,
        config: ProxyConfig,
    ) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, routes) = tokio::sync::watch::channel(Arc::new(Routes {
            key: auth,
            ..Routes::default()
        }));
        let shutdown = CancellationToken::new();
        let state = ProxyState::new(
            routes,
            Arc::new(ProxyMetrics::default()),
            config,
            shutdown.clone(),
        );
        tokio::spawn(serve(listener, state));
        (addr, shutdown)
    }

    async fn raw(addr: std::net::SocketAddr, request: &[u8], then_wait: bool) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request).await.unwrap();
        if !then_wait {
            tcp.shutdown().await.unwrap();
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&out).contains("}}") {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_slow_body_gets_408_and_a_huge_one_413() {
        let config = ProxyConfig {
            body_timeout: Duration::from_millis(200),
            max_body: 1024,
            ..ProxyConfig::default()
        };
        let (addr, _stop) = bare_proxy(ApiKey::disabled(), config).await;
        let slow = raw(
            addr,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"mo",
            true,
        )
        .await;
        assert!(slow.starts_with("HTTP/1.1 408"), "{slow}");
        assert!(slow.contains("request_timeout"), "{slow}");
        let body = vec![b' '; 2048];
        let mut req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n".to_vec();
        req.extend_from_slice(&body);
        req.extend_from_slice(b"\r\n0\r\n\r\n");
        let huge = raw(addr, &req, true).await;
        assert!(huge.starts_with("HTTP/1.1 413"), "{huge}");
    }

    #[tokio::test]
    async fn no_models_and_api_keys() {
        let (addr, _stop) = bare_proxy(ApiKey::fixed("k"), ProxyConfig::default()).await;
        let get = |path: &str, key: Option<&str>| {
            let auth = key
                .map(|k| format!("Authorization: Bearer {k}\r\n"))
                .unwrap_or_default();
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n")
        };
        let r = raw(addr, get("/v1/models", None).as_bytes(), true).await;
        assert!(
            r.starts_with("HTTP/1.1 401")
                && r.to_ascii_lowercase().contains("www-authenticate: bearer"),
            "{r}"
        );
        let r = raw(addr, get("/healthz", None).as_bytes(), true).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = raw(addr, get("/v1/models", Some("k")).as_bytes(), true).await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.contains("\"data\":[]"),
            "{r}"
        );
        let post = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        let r = raw(addr, post, true).await;
        assert!(
            r.starts_with("HTTP/1.1 503")
                && r.contains("no_models")
                && r.to_ascii_lowercase().contains("retry-after"),
            "{r}"
        );
    }

    #[test]
    fn strips_hop_by_hop_headers_and_those_connection_names() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }
}
