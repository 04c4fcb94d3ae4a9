//! What a web browser may do to the endpoint and the status API.
//!
//! rocm-llm listens on loopback of a machine that also runs a browser, so
//! any web page is a potential client. Three defences, all decided here as
//! a pure function of the request head:
//! - **DNS rebinding**: a page on `evil.example` whose name is re-pointed at
//!   127.0.0.1 can read our answers as its own origin, but its requests still
//!   say `Host: evil.example`. Only our own address, loopback names and the
//!   spec's `allowed_hosts` are answered.
//! - **Cross-origin side effects**: a page may send "simple" requests
//!   (`text/plain` POSTs, form posts, image loads) without asking first. A
//!   request whose `Origin` is neither our own nor in `cors_origins`, or that
//!   the browser marks cross-site, is refused before it is routed, so no
//!   model starts and no generation runs.
//! - **CORS** for the origins the spec allows: preflights are answered and
//!   responses carry `Access-Control-Allow-Origin`.
//!
//! Non-browser clients (curl, SDKs) send no `Origin` and no `Sec-Fetch-*`
//! headers and are only subject to the `Host` check.

use std::net::{IpAddr, SocketAddr};

use hyper::Method;
use hyper::header::{self, HeaderMap, HeaderValue};

use crate::spec::{BrowserAccess, host_of};

/// How a request may proceed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it. `cors` is the allowed cross-origin `Origin` to echo in
    /// `Access-Control-Allow-Origin`, if the request came from one.
    Serve { cors: Option<HeaderValue> },
    /// A CORS preflight from an allowed origin: answer 204 with these.
    Preflight {
        origin: HeaderValue,
        /// The `Access-Control-Request-Headers` to allow, as asked.
        headers: Option<HeaderValue>,
    },
    /// Refuse with 403 and this explanation.
    Forbidden { code: &'static str, message: String },
}

/// The methods a preflight may ask for.
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, DELETE, OPTIONS";
/// Response headers a cross-origin page may read.
pub const EXPOSED_HEADERS: &str = "retry-after, x-rocm-llm-model";

/// Decides what the request may do. `local` is the address the client
/// connected to (the concrete one, also when listening on 0.0.0.0).
pub fn check(
    access: &BrowserAccess,
    method: &Method,
    headers: &HeaderMap,
    local: SocketAddr,
) -> Verdict {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    // HTTP/1.0 clients may send no Host; every browser sends one.
    if let Some(host) = host
        && !host_allowed(access, host, local)
    {
        return Verdict::Forbidden {
            code: "host_not_allowed",
            message: format!(
                "the Host `{host}` is not one this server answers to: it answers its own address, loopback names and the spec's `allowed_hosts` (this keeps DNS-rebinding web pages out); add the name to `allowed_hosts` to serve it"
            ),
        };
    }
    let origin = headers.get(header::ORIGIN);
    let origin_text = origin.and_then(|v| v.to_str().ok());
    let same_origin = match (origin_text, host) {
        (Some(o), Some(h)) => same_origin(o, h),
        _ => false,
    };
    let listed = origin_text.is_some_and(|o| origin_listed(access, o));
    let preflight =
        method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);

    if let Some(o) = origin.filter(|_| !same_origin) {
        if !listed {
            return Verdict::Forbidden {
                code: "origin_not_allowed",
                message: format!(
                    "requests from the web origin `{}` are refused: add it to the spec's `cors_origins` to let its pages call this server",
                    String::from_utf8_lossy(o.as_bytes())
                ),
            };
        }
        return if preflight {
            Verdict::Preflight {
                origin: o.clone(),
                headers: headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned(),
            }
        } else {
            Verdict::Serve {
                cors: Some(o.clone()),
            }
        };
    }
    // No Origin (or our own): a browser still tells a cross-site request by
    // `Sec-Fetch-Site` (image loads, no-cors fetches). Top-level navigations
    // are let through so that links to the status page work; they are GETs.
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let navigation = headers
        .get("sec-fetch-mode")
        .is_some_and(|v| v.as_bytes() == b"navigate")
        && (method == Method::GET || method == Method::HEAD);
    if !same_origin && matches!(fetch_site, Some("cross-site" | "same-site")) && !navigation {
        return Verdict::Forbidden {
            code: "cross_site_request",
            message: "cross-site requests without an allowed Origin are refused (see the spec's `cors_origins`)".into(),
        };
    }
    Verdict::Serve { cors: None }
}

/// Whether a `Host` header value names this server.
fn host_allowed(access: &BrowserAccess, host_header: &str, local: SocketAddr) -> bool {
    if access.allowed_hosts.iter().any(|h| h == "*") {
        return true;
    }
    let Some(host) = host_of(host_header.trim()) else {
        return false;
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true; // browsers resolve these to loopback themselves
    }
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        // Canonical: an IPv4 client of a dual-stack socket is `::ffff:a.b.c.d`.
        return ip.is_loopback() || ip.to_canonical() == local.ip().to_canonical();
    }
    access.allowed_hosts.contains(&host)
}

/// Whether `origin` (`scheme://authority`) is the page this server itself
/// served: same authority as the request's Host, over plain HTTP.
fn same_origin(origin: &str, host_header: &str) -> bool {
    origin
        .strip_prefix("http://")
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host_header.trim()))
}

fn origin_listed(access: &BrowserAccess, origin: &str) -> bool {
    let origin = origin.to_ascii_lowercase();
    access.cors_origins.iter().any(|o| o == "*" || *o == origin)
}

/// Whether a request that must carry JSON does: `application/json` (with
/// any parameters) or `application/*+json`, or no body at all. Anything
/// else (notably the `text/plain` a page may send without asking) is 415.
pub fn json_content_type(headers: &HeaderMap, body_is_empty: bool) -> Result<(), String> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return if body_is_empty {
            Ok(())
        } else {
            Err("this route takes a JSON body: send `Content-Type: application/json` (curl: -H 'Content-Type: application/json')".into())
        };
    };
    let essence = ct
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|s| s.ends_with("+json"));
    if json {
        Ok(())
    } else {
        Err(format!(
            "this route takes a JSON body, but the request says `Content-Type: {}`: send `Content-Type: application/json`",
            String::from_utf8_lossy(ct.as_bytes())
        ))
    }
}

/// Adds the CORS headers of an allowed cross-origin request to a response.
pub fn add_cors_headers(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED_HEADERS),
    );
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

/// The headers of a 204 answer to an allowed preflight.
pub fn preflight_headers(origin: HeaderValue, asked: Option<HeaderValue>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOWED_METHODS),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        asked.unwrap_or_else(|| HeaderValue::from_static("authorization, content-type")),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    h
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const LOOPBACK: &str = "127.0.0.1:8080";
    const LAN: &str = "192.168.1.20:8080";

    fn access(hosts: &[&str], origins: &[&str]) -> BrowserAccess {
        BrowserAccess {
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            cors_origins: origins.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// One case: the policy, the connection's local address, the method, the
    /// headers as `name: value` lines, and the verdict's kind (`serve`,
    /// `serve+cors`, `preflight` or the 403 code).
    fn check_case(
        a: &BrowserAccess,
        local: &str,
        method: Method,
        headers: &[&str],
        expected: &str,
    ) {
        let mut map = HeaderMap::new();
        for h in headers {
            let (k, v) = h.split_once(": ").unwrap();
            map.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let got = match check(a, &method, &map, local.parse().unwrap()) {
            Verdict::Serve { cors: None } => "serve".to_owned(),
            Verdict::Serve { cors: Some(o) } => format!("serve+cors {}", o.to_str().unwrap()),
            Verdict::Preflight { origin, .. } => format!("preflight {}", origin.to_str().unwrap()),
            Verdict::Forbidden { code, .. } => code.to_owned(),
        };
        assert_eq!(got, expected, "{method} {headers:?} on {local} with {a:?}");
    }

    #[test]
    fn hosts() {
        let none = access(&[], &[]);
        let named = access(&["llm.home.arpa"], &[]);
        let any = access(&["*"], &[]);
        let post = Method::POST;
        for (a, local, host, expected) in [
            (&none, LOOPBACK, "127.0.0.1:8080", "serve"),
            (&none, LOOPBACK, "localhost:8080", "serve"),
            (&none, LOOPBACK, "LocalHost.:8080", "serve"),
            (&none, LOOPBACK, "app.localhost", "serve"),
            (&none, LOOPBACK, "127.0.0.2:8080", "serve"),
            (&none, LOOPBACK, "[::1]:8080", "serve"),
            (&none, LOOPBACK, "evil.example:8080", "host_not_allowed"),
            (&none, LOOPBACK, "evil.example", "host_not_allowed"),
            (
                &none,
                LOOPBACK,
                "localhost.evil.example",
                "host_not_allowed",
            ),
            (&none, LOOPBACK, "192.168.1.20:8080", "host_not_allowed"),
            (&none, LOOPBACK, "localhost:notaport", "host_not_allowed"),
            (&none, LAN, "192.168.1.20:8080", "serve"),
            (&none, LAN, "192.168.1.21:8080", "host_not_allowed"),
            (&named, LAN, "llm.home.arpa:8080", "serve"),
            (&named, LAN, "LLM.home.arpa", "serve"),
            (&named, LAN, "other.home.arpa", "host_not_allowed"),
            (&any, LOOPBACK, "anything.example", "serve"),
        ] {
            let h = format!("host: {host}");
            check_case(a, local, post.clone(), &[&h], expected);
        }
        // No Host at all: an HTTP/1.0 client, never a browser.
        check_case(&none, LOOPBACK, Method::GET, &[], "serve");
    }

    #[test]
    fn origins() {
        let none = access(&[], &[]);
        let app = access(&[], &["http://localhost:3000", "https://chat.home.arpa"]);
        let star = access(&[], &["*"]);
        let h = "host: 127.0.0.1:8080";
        for (a, method, extra, expected) in [
            // The page we served ourselves (the status page).
            (
                &none,
                Method::POST,
                vec!["origin: http://127.0.0.1:8080"],
                "serve",
            ),
            (
                &none,
                Method::POST,
                vec!["origin: https://evil.example"],
                "origin_not_allowed",
            ),
            (
                &none,
                Method::GET,
                vec!["origin: https://evil.example"],
                "origin_not_allowed",
            ),
            (
                &none,
                Method::POST,
                vec!["origin: null"],
                "origin_not_allowed",
            ),
            (
                &none,
                Method::POST,
                vec!["origin: http://127.0.0.1:9999"],
                "origin_not_allowed",
            ),
            (
                &app,
                Method::POST,
                vec!["origin: http://localhost:3000"],
                "serve+cors http://localhost:3000",
            ),
            (
                &app,
                Method::POST,
                vec!["origin: HTTPS://chat.home.arpa"],
                "serve+cors HTTPS://chat.home.arpa",
            ),
            (
                &app,
                Method::POST,
                vec!["origin: http://localhost:3001"],
                "origin_not_allowed",
            ),
            (
                &star,
                Method::POST,
                vec!["origin: https://evil.example"],
                "serve+cors https://evil.example",
            ),
            (
                &app,
                Method::OPTIONS,
                vec![
                    "origin: http://localhost:3000",
                    "access-control-request-method: POST",
                ],
                "preflight http://localhost:3000",
            ),
            (
                &none,
                Method::OPTIONS,
                vec![
                    "origin: http://localhost:3000",
                    "access-control-request-method: POST",
                ],
                "origin_not_allowed",
            ),
            // OPTIONS without the preflight header is an ordinary request.
            (
                &app,
                Method::OPTIONS,
                vec!["origin: http://localhost:3000"],
                "serve+cors http://localhost:3000",
            ),
            // Browser requests without Origin, told apart by Sec-Fetch-Site.
            (
                &none,
                Method::GET,
                vec!["sec-fetch-site: cross-site", "sec-fetch-mode: no-cors"],
                "cross_site_request",
            ),
            (
                &none,
                Method::POST,
                vec!["sec-fetch-site: same-site", "sec-fetch-mode: no-cors"],
                "cross_site_request",
            ),
            (
                &none,
                Method::GET,
                vec!["sec-fetch-site: cross-site", "sec-fetch-mode: navigate"],
                "serve",
            ),
            (
                &none,
                Method::POST,
                vec!["sec-fetch-site: cross-site", "sec-fetch-mode: navigate"],
                "cross_site_request",
            ),
            (
                &none,
                Method::GET,
                vec!["sec-fetch-site: same-origin"],
                "serve",
            ),
            (&none, Method::GET, vec!["sec-fetch-site: none"], "serve"),
        ] {
            let mut all = vec![h];
            all.extend(extra);
            check_case(a, LOOPBACK, method, &all, expected);
        }
    }

    #[test]
    fn content_types() {
        for (ct, empty, ok) in [
            (Some("application/json"), false, true),
            (Some("Application/JSON; charset=utf-8"), false, true),
            (Some("application/merge-patch+json"), false, true),
            (Some("text/plain"), false, false),
            (Some("text/plain;charset=UTF-8"), false, false),
            (Some("application/x-www-form-urlencoded"), false, false),
            (Some("multipart/form-data; boundary=x"), false, false),
            (Some("application/jsonx"), false, false),
            (None, false, false),
            (None, true, true),
            (Some("text/plain"), true, false),
        ] {
            let mut h = HeaderMap::new();
            if let Some(ct) = ct {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            }
            assert_eq!(
                json_content_type(&h, empty).is_ok(),
                ok,
                "{ct:?}, empty body {empty}"
            );
        }
    }
}
