//! Fuzzes how the proxy reads a request: the route from the method and path,
//! the `model` from a JSON body, a multipart form or the query string, and
//! the upstream address it forwards `/upstream/{model}/…` to.
//!
//! An input is four fields separated by the first three newlines (the seeds
//! in fuzz/seeds/proxy_request are readable examples):
//!   METHOD PATH[?QUERY]
//!   QUERY (used when the first line has none)
//!   CONTENT-TYPE (empty: none)
//!   BODY (the rest, any bytes)
//!
//! Invariants, for every input:
//! - nothing panics;
//! - a `model` read from a JSON body is the body's own top-level `"model"`
//!   string (as a full JSON parse sees it), and `stream` is its `"stream":
//!   true`: the proxy never routes a body to a model it does not name;
//! - a multipart `model` is text of the body;
//! - `?model=` is only read from a query that has a `model` key;
//! - percent-decoding never grows a string;
//! - for any request target the HTTP parser accepts, an `/upstream/…` route
//!   is forwarded to 127.0.0.1 on the model's port and nowhere else. The
//!   forward address is built as in `proxy::proxy` (src/proxy/mod.rs):
//!   `http://127.0.0.1:{port}/{rest}[?{query}]`.
//!
//! Run (from the repository root): scripts/fuzz.sh 1, or
//!   cargo +nightly fuzz run proxy_request fuzz/corpus/proxy_request fuzz/seeds/proxy_request -- -max_len=65536

#![no_main]

use hyper::{Method, Uri};
use libfuzzer_sys::fuzz_target;
use rocm_llm::proxy::route::{self, Route};

/// The port an instance would listen on (any will do).
const PORT: u16 = 40123;

fn fields(data: &[u8]) -> (&[u8], &[u8], &[u8], &[u8]) {
    let mut rest = data;
    let mut next = || match rest.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let field = &rest[..i];
            rest = &rest[i + 1..];
            field
        }
        None => std::mem::take(&mut rest),
    };
    let (a, b, c) = (next(), next(), next());
    (a, b, c, rest)
}

fuzz_target!(|data: &[u8]| {
    let (line, query_field, content_type, body) = fields(data);
    let line = String::from_utf8_lossy(line);
    let (method, target) = line.split_once(' ').unwrap_or(("GET", &line));
    let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);

    // The request target as hyper would hand it over, when it accepts it.
    let (path, query) = match target.parse::<Uri>() {
        Ok(uri) => (uri.path().to_owned(), uri.query().map(str::to_owned)),
        Err(_) => (target.to_owned(), None),
    };
    let query = query.or_else(|| {
        (!query_field.is_empty()).then(|| String::from_utf8_lossy(query_field).into_owned())
    });
    let accepted = target.parse::<Uri>().is_ok();

    let route = route::classify(&method, &path);
    if let Route::Upstream { id, rest } = &route {
        let decoded = route::percent_decode(path.strip_prefix("/upstream/").unwrap_or(""));
        assert!(
            decoded.starts_with(id.as_str()),
            "upstream id {id:?} is not the first segment of {path:?}"
        );
        if accepted {
            let path_and_query = match &query {
                Some(q) => format!("/{rest}?{q}"),
                None => format!("/{rest}"),
            };
            if let Ok(uri) = format!("http://127.0.0.1:{PORT}{path_and_query}").parse::<Uri>() {
                assert_eq!(
                    uri.host(),
                    Some("127.0.0.1"),
                    "forwarded off loopback: {uri}"
                );
                assert_eq!(
                    uri.port_u16(),
                    Some(PORT),
                    "forwarded to another port: {uri}"
                );
                assert_eq!(uri.scheme_str(), Some("http"));
            }
        }
    }

    if let Some(q) = &query {
        if let Some(m) = route::query_model(Some(q)) {
            assert!(
                q.split('&')
                    .any(|p| p == "model" || p.starts_with("model=")),
                "?model={m:?} read from a query without a model key: {q:?}"
            );
        }
        let decoded = route::percent_decode(q);
        assert!(decoded.len() <= q.len(), "percent-decoding grew {q:?}");
    }

    let content_type = std::str::from_utf8(content_type)
        .ok()
        .filter(|ct| !ct.is_empty());
    let multipart = content_type.is_some_and(|ct| {
        ct.trim_start()
            .to_ascii_lowercase()
            .starts_with("multipart/form-data")
    });
    let Ok(info) = route::body_info(content_type, body) else {
        return;
    };
    if multipart {
        if let Some(m) = &info.model {
            assert!(
                String::from_utf8_lossy(body).contains(m.as_ref()),
                "multipart model {m:?} is not in the body"
            );
        }
        return;
    }
    // A full parse fails where the proxy's partial one need not (numbers
    // out of f64 range in fields it skips); compare where both parse.
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(o)) => {
            let named = o.get("model").and_then(serde_json::Value::as_str);
            if let Some(m) = &info.model {
                assert_eq!(
                    Some(m.as_ref()),
                    named,
                    "routed to a model the body does not name"
                );
            }
            assert_eq!(
                info.stream,
                o.get("stream") == Some(&serde_json::Value::Bool(true)),
                "stream differs from the body's"
            );
        }
        Ok(v) => panic!("a non-object body was accepted: {v}"),
        Err(_) => {}
    }
});
