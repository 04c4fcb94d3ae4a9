//! Every way the endpoint refuses or fails a request, as one enum: each
//! variant knows its status, its OpenAI error `type` and `code`, and what to
//! tell the client, so the request path returns `Result<_, ProxyError>` and
//! turns an error into a response in one place ([`ProxyError::into_response`]).

use std::time::Duration;

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use super::body::{ProxyBody, openai_error, unavailable};
use crate::supervisor::AcquireError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The browser rules refused it (`http::browser`).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error(
        "missing or wrong API key: send it as `Authorization: Bearer <key>` (the key is in the file the spec's api_key_file names)"
    )]
    Unauthorized,
    #[error("the endpoint cannot check API keys: {0}")]
    KeyUnavailable(String),
    #[error("{method} {path} is not served; use {allowed}")]
    WrongMethod {
        method: String,
        path: String,
        allowed: &'static str,
    },
    #[error(
        "unknown route {method} {path}: try POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, GET /v1/models, or /upstream/{{model}}/<path> for any other llama-server route"
    )]
    UnknownRoute { method: String, path: String },
    #[error("{}", unknown_model_message(id, available))]
    UnknownModel { id: String, available: Vec<String> },
    #[error("no models are being served (is the spec valid? see the status API)")]
    NoModels,
    #[error(
        "this request names no model and {} models are served with none marked `default: true`: set \"model\" to one of: {} (or mark one model `default: true` in the spec)",
        models,
        available.join(", ")
    )]
    ModelRequired {
        models: usize,
        available: Vec<String>,
    },
    #[error("rocm-llm is shutting down")]
    ShuttingDown,
    #[error("the request body is larger than the limit of {} MiB", max_bytes >> 20)]
    BodyTooLarge { max_bytes: usize },
    #[error("could not read the request body: {0}")]
    BadBody(String),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    InvalidJson(String),
    #[error("cannot forward this path: {0}")]
    BadPath(String),
    #[error("model {model}'s llama-server did not answer: {reason}")]
    UpstreamUnreachable { model: String, reason: String },
    /// No serving instance could be had (queue full, still loading, failed,
    /// being replaced).
    #[error("{}", acquire_message(.0))]
    Acquire(AcquireError),
}

fn unknown_model_message(id: &str, available: &[String]) -> String {
    if available.is_empty() {
        format!(
            "the model `{id}` does not exist: no models are being served (is the spec valid? see the status API)"
        )
    } else {
        format!(
            "the model `{id}` does not exist; available models: {}",
            available.join(", ")
        )
    }
}

fn acquire_message(e: &AcquireError) -> String {
    match e {
        AcquireError::Timeout { .. } => format!("{e}; it is still loading, try again"),
        AcquireError::WaitingForMemory { .. } => format!("{e}; try again"),
        AcquireError::Gone { .. } => format!("{e} or is being replaced; try again"),
        AcquireError::QueueFull { .. }
        | AcquireError::Failed { .. }
        | AcquireError::NoRoom { .. } => e.to_string(),
    }
}

impl ProxyError {
    /// For a 503: the code and how many seconds the client should wait.
    fn retry(&self) -> Option<(&'static str, u64)> {
        Some(match self {
            ProxyError::KeyUnavailable(_) => ("api_key_unavailable", 5),
            ProxyError::NoModels => ("no_models", 5),
            ProxyError::ShuttingDown => ("shutting_down", 5),
            ProxyError::Acquire(AcquireError::QueueFull { .. }) => ("queue_full", 2),
            ProxyError::Acquire(AcquireError::Timeout { .. }) => ("model_loading", 5),
            ProxyError::Acquire(AcquireError::WaitingForMemory { .. }) => {
                ("waiting_for_memory", 10)
            }
            ProxyError::Acquire(AcquireError::Failed { .. }) => ("model_failed", 30),
            ProxyError::Acquire(AcquireError::Gone { .. }) => ("model_unavailable", 1),
            ProxyError::Acquire(AcquireError::NoRoom { .. }) => ("insufficient_memory", 10),
            _ => return None,
        })
    }

    /// Everything else: status, OpenAI `type`, `code` and `param`.
    fn kind(&self) -> (StatusCode, &'static str, &'static str, Option<&'static str>) {
        const INVALID: &str = "invalid_request_error";
        match self {
            ProxyError::Forbidden { code, .. } => (StatusCode::FORBIDDEN, INVALID, code, None),
            ProxyError::Unauthorized => {
                (StatusCode::UNAUTHORIZED, INVALID, "invalid_api_key", None)
            }
            ProxyError::WrongMethod { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                INVALID,
                "method_not_allowed",
                None,
            ),
            ProxyError::UnknownRoute { .. } => {
                (StatusCode::NOT_FOUND, INVALID, "unknown_url", None)
            }
            ProxyError::UnknownModel { .. } => (
                StatusCode::NOT_FOUND,
                INVALID,
                "model_not_found",
                Some("model"),
            ),
            ProxyError::ModelRequired { .. } => (
                StatusCode::BAD_REQUEST,
                INVALID,
                "model_required",
                Some("model"),
            ),
            ProxyError::BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID,
                "request_too_large",
                None,
            ),
            ProxyError::BadBody(_) => (StatusCode::BAD_REQUEST, INVALID, "bad_body", None),
            ProxyError::BodyTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                INVALID,
                "request_timeout",
                None,
            ),
            ProxyError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                INVALID,
                "unsupported_media_type",
                None,
            ),
            ProxyError::InvalidJson(_) => (StatusCode::BAD_REQUEST, INVALID, "invalid_json", None),
            ProxyError::BadPath(_) => (StatusCode::BAD_REQUEST, INVALID, "bad_path", None),
            ProxyError::UpstreamUnreachable { .. } => (
                StatusCode::BAD_GATEWAY,
                "server_error",
                "upstream_unreachable",
                None,
            ),
            // The 503s, answered through `retry`.
            ProxyError::KeyUnavailable(_)
            | ProxyError::NoModels
            | ProxyError::ShuttingDown
            | ProxyError::Acquire(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable_error",
                "unavailable",
                None,
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.kind().0
    }

    /// The answer in OpenAI's error format, with `Retry-After` on a 503,
    /// `WWW-Authenticate` on a 401 and `Allow` on a 405.
    pub fn into_response(self) -> Response<ProxyBody> {
        let message = self.to_string();
        if let Some((code, secs)) = self.retry() {
            return unavailable(code, secs, message);
        }
        let (status, kind, code, param) = self.kind();
        let mut r = openai_error(status, kind, code, param, message);
        match &self {
            ProxyError::Unauthorized => {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ProxyError::WrongMethod { allowed, .. } => {
                if let Ok(v) = HeaderValue::from_str(allowed) {
                    r.headers_mut().insert(header::ALLOW, v);
                }
            }
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn each_error_has_its_status_code_and_headers() {
        use http_body_util::BodyExt;
        let gone = AcquireError::Gone { model: "m".into() };
        for (e, status, code, header) in [
            (
                ProxyError::Unauthorized,
                401,
                "invalid_api_key",
                Some("www-authenticate"),
            ),
            (
                ProxyError::KeyUnavailable("x".into()),
                503,
                "api_key_unavailable",
                Some("retry-after"),
            ),
            (
                ProxyError::WrongMethod {
                    method: "GET".into(),
                    path: "/v1/chat/completions".into(),
                    allowed: "POST",
                },
                405,
                "method_not_allowed",
                Some("allow"),
            ),
            (
                ProxyError::UnknownModel {
                    id: "x".into(),
                    available: vec!["a".into()],
                },
                404,
                "model_not_found",
                None,
            ),
            (ProxyError::NoModels, 503, "no_models", Some("retry-after")),
            (
                ProxyError::BodyTooLarge { max_bytes: 1 << 20 },
                413,
                "request_too_large",
                None,
            ),
            (
                ProxyError::Acquire(gone),
                503,
                "model_unavailable",
                Some("retry-after"),
            ),
        ] {
            let message = e.to_string();
            let r = e.into_response();
            assert_eq!(r.status().as_u16(), status, "{message}");
            if let Some(h) = header {
                assert!(r.headers().contains_key(h), "{message}: no {h}");
            }
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"]["code"], code, "{message}");
            assert_eq!(body["error"]["message"], message.as_str());
        }
    }
}
