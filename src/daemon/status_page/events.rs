//! `GET /events`: the status as a Server-Sent Events stream.
//!
//! Each event is `event: status` with the whole `GET /status` document on
//! one `data:` line. One is sent at once, then whenever something changes:
//! at once for an owner's snapshot (a state, pid or error), a reload, a
//! new routing table or the memory scheduler's (a wait, a reservation, a
//! counter); within a second for what moves without an event
//! (requests in flight, load progress, log lines, memory). An unchanged
//! document is not sent again; a comment line keeps idle connections open.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Frame;
use tokio::sync::mpsc;

use crate::daemon::status::{Probes, StatusState, report};
use crate::schedule::arbiter::MemoryReport;

/// How often the stream looks for changes nothing announces.
pub const TICK: Duration = Duration::from_secs(1);
/// A comment line after this long without an event.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// A response body fed from a channel: each message is one chunk.
pub struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// One SSE event: `event: name`, the data on one line, a blank line.
pub fn sse_event(name: &str, data: &str) -> String {
    // JSON from serde_json::to_string holds no newline; be safe anyway.
    let mut out = format!("event: {name}\n");
    for line in data.lines() {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// Starts the stream for one client; it ends when the client goes away.
pub fn stream(state: StatusState) -> ChannelBody {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let mut changes = state.page.subscribe();
        let mut scheduler = state.scheduler.clone();
        let mut scheduler_open = true;
        let mut last = String::new();
        let mut quiet = Duration::ZERO;
        if tx
            .send(Bytes::from_static(b"retry: 1000\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let seen = announced(&scheduler.borrow_and_update());
            let roots = state.probe_roots.clone();
            let probes = tokio::task::spawn_blocking(move || Probes::read_cached(&roots))
                .await
                .unwrap_or_else(|_| Probes::read(state.probe_roots.clone()));
            let json = serde_json::to_string(&report(&state, probes)).unwrap_or_default();
            let chunk = if json != last {
                quiet = Duration::ZERO;
                let event = sse_event("status", &json);
                last = json;
                Some(event)
            } else if quiet >= KEEPALIVE {
                quiet = Duration::ZERO;
                Some(": keepalive\n\n".to_owned())
            } else {
                None
            };
            if let Some(chunk) = chunk
                && tx.send(Bytes::from(chunk)).await.is_err()
            {
                return;
            }
            let started = tokio::time::Instant::now();
            let tick = started + TICK;
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        // Let a burst of changes (a reload touching every
                        // model) settle into one event.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        changes.borrow_and_update();
                        break;
                    }
                    changed = scheduler.changed(), if scheduler_open => {
                        if changed.is_err() {
                            scheduler_open = false;
                            continue;
                        }
                        if announced(&scheduler.borrow_and_update()) != seen {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            break;
                        }
                    }
                    () = tokio::time::sleep_until(tick) => break,
                    () = tx.closed() => return,
                }
            }
            quiet += started.elapsed();
        }
    });
    ChannelBody(rx)
}

/// What of the scheduler's report is worth an event at once (a model
/// waits or stops waiting, a reservation, a counter): all but the seconds
/// a start has waited, which change at each of its re-evaluations.
fn announced(report: &MemoryReport) -> MemoryReport {
    let mut report = report.clone();
    for h in report.models.values_mut() {
        h.waiting_s = None;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_framed_line_by_line() {
        assert_eq!(
            sse_event("status", "{\"a\":1}"),
            "event: status\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(sse_event("x", "a\nb"), "event: x\ndata: a\ndata: b\n\n");
    }

    #[test]
    fn the_seconds_a_start_waited_alone_are_no_news() {
        use crate::schedule::arbiter::Holding;
        let waiting = |held_by: &[&str], secs: f64| MemoryReport {
            models: [(
                "b".to_owned(),
                Holding {
                    waiting_for: Some(held_by.iter().map(|s| s.to_string()).collect()),
                    waiting_s: Some(secs),
                    ..Holding::default()
                },
            )]
            .into(),
            ..MemoryReport::default()
        };
        for (before, after, news) in [
            (waiting(&["a"], 0.1), waiting(&["a"], 0.2), false),
            (waiting(&["a"], 0.1), waiting(&["a", "c"], 0.2), true),
            (MemoryReport::default(), waiting(&["a"], 0.0), true),
            (waiting(&["a"], 3.0), MemoryReport::default(), true),
        ] {
            assert_eq!(
                announced(&before) != announced(&after),
                news,
                "{before:?} -> {after:?}"
            );
        }
    }
}
