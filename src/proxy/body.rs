//! Response bodies: the proxy's own small answers, and upstream bodies
//! streamed through frame by frame while holding the instance's lease.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::json;
use tokio::time::Instant;

use super::metrics::{InFlight, ModelMetrics};
use crate::supervisor::Lease;

/// The body of every proxy response.
#[derive(Debug)]
pub enum ProxyBody {
    /// A complete body the proxy wrote itself.
    Full(Option<Bytes>),
    /// An instance's response, streamed as it arrives.
    Upstream(UpstreamBody),
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        let bytes = bytes.into();
        ProxyBody::Full(if bytes.is_empty() { None } else { Some(bytes) })
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(up) => Pin::new(up).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Upstream(up) => up.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Upstream(up) => up.size_hint(),
        }
    }
}

/// What one proxied request holds until its response is fully sent or the
/// client has gone: the instance's lease (so a drain waits for it) and its
/// in-flight count.
#[derive(Debug)]
pub struct Hold {
    pub lease: Lease,
    pub in_flight: InFlight,
    pub metrics: Arc<ModelMetrics>,
    pub received: Instant,
}

/// An upstream response body. Frames pass through as they arrive: no
/// buffering, so server-sent events reach the client chunk by chunk.
/// Dropping it (the client went away) drops the upstream connection, which
/// makes llama-server cancel the generation.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    hold: Option<Hold>,
    first_byte: bool,
    /// For a server-sent-events response, the model's name: if the upstream
    /// breaks off, the client gets a last `error` event saying so (OpenAI's
    /// clients raise it) instead of a torn chunked body.
    sse_model: Option<String>,
    /// The break-off event was sent: the body is over.
    ended: bool,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, hold: Hold, sse_model: Option<String>) -> UpstreamBody {
        UpstreamBody {
            inner,
            hold: Some(hold),
            first_byte: false,
            sse_model,
            ended: false,
        }
    }

    /// The response is complete (or broke off): let the lease go now.
    fn finish(&mut self) {
        if let Some(hold) = self.hold.take() {
            if !self.first_byte {
                hold.metrics.ttfb.observe(hold.received.elapsed());
            }
            drop(hold);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if !this.first_byte
                    && frame.is_data()
                    && let Some(hold) = &this.hold
                {
                    this.first_byte = true;
                    hold.metrics.ttfb.observe(hold.received.elapsed());
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(hold) = &this.hold {
                    hold.metrics
                        .upstream_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!("upstream response broke off: {e}");
                }
                this.finish();
                if let Some(model) = &this.sse_model {
                    this.ended = true;
                    return Poll::Ready(Some(Ok(Frame::data(break_off_event(model, e)))));
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The last event of a stream whose llama-server went away mid-response.
fn break_off_event(model: &str, e: &hyper::Error) -> Bytes {
    let event = json!({
        "error": {
            "message": format!("model {model}'s llama-server stopped in the middle of this response ({e}); the answer is incomplete"),
            "type": "server_error",
            "param": null,
            "code": "upstream_broke_off",
        }
    });
    Bytes::from(format!("\n\ndata: {event}\n\n"))
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.hold.is_some() {
            if self.ended || self.inner.is_end_stream() {
                self.finish();
            } else if let Some(hold) = self.hold.take() {
                // The client went away mid-response.
                hold.metrics
                    .disconnects
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// An error in OpenAI's format: `{"error":{"message","type","param","code"}}`.
pub fn openai_error(
    status: StatusCode,
    kind: &str,
    code: &str,
    param: Option<&str>,
    message: impl Into<String>,
) -> Response<ProxyBody> {
    let body = json!({
        "error": {
            "message": message.into(),
            "type": kind,
            "param": param,
            "code": code,
        }
    });
    let mut r = Response::new(ProxyBody::full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A 503 that tells the client when to try again.
pub fn unavailable(
    code: &str,
    retry_after_secs: u64,
    message: impl Into<String>,
) -> Response<ProxyBody> {
    let mut r = openai_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable_error",
        code,
        None,
        message,
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    r
}

pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
