//! Counting the requests in flight on one llama-server process, so it can be
//! drained before it is stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The door to one process. Requests enter with a [`Lease`]; closing the
/// gate turns new requests away (they wait for the next process) while the
/// ones inside finish.
#[derive(Debug)]
pub struct Gate {
    port: u16,
    /// The bearer key the process behind the gate requires.
    upstream_key: Option<Arc<str>>,
    in_flight: AtomicUsize,
    /// Requests let in, ever.
    admitted: AtomicU64,
    closed: AtomicBool,
    emptied: Notify,
    last_used: Mutex<Instant>,
    /// Called each time the last request inside leaves.
    on_empty: OnceLock<OnEmpty>,
}

struct OnEmpty(Box<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for OnEmpty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnEmpty")
    }
}

/// One request's hold on a process. Dropping it lets the process drain.
#[derive(Debug)]
pub struct Lease {
    gate: Arc<Gate>,
}

impl Lease {
    /// The loopback port of the llama-server this lease is for.
    pub fn port(&self) -> u16 {
        self.gate.port
    }

    /// The bearer key that llama-server requires, if it requires one.
    pub fn upstream_key(&self) -> Option<&str> {
        self.gate.upstream_key.as_deref()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.gate.leave();
    }
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainOutcome {
    /// Requests that were in flight when the drain began and finished.
    pub drained: usize,
    /// Requests still running when the drain timeout ran out (the stop cuts them).
    pub cut: usize,
}

impl Gate {
    #[cfg(test)]
    pub fn new(port: u16) -> Arc<Gate> {
        Gate::with_key(port, None)
    }

    /// The gate of a process that requires `upstream_key` as bearer key.
    pub fn with_key(port: u16, upstream_key: Option<Arc<str>>) -> Arc<Gate> {
        Arc::new(Gate {
            port,
            upstream_key,
            in_flight: AtomicUsize::new(0),
            admitted: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            emptied: Notify::new(),
            last_used: Mutex::new(Instant::now()),
            on_empty: OnceLock::new(),
        })
    }

    /// Calls `f` each time the last request inside leaves (the memory
    /// arbiter looks again at once: an idle model may now give way).
    pub fn call_when_empty(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_empty.set(OnEmpty(Box::new(f)));
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A lease, unless the gate is closed.
    pub fn enter(self: &Arc<Self>) -> Option<Lease> {
        // Count first, then check: a drain that closes the gate after our
        // increment is guaranteed to see us and wait.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            self.leave();
            return None;
        }
        self.admitted.fetch_add(1, Ordering::SeqCst);
        Some(Lease {
            gate: Arc::clone(self),
        })
    }

    /// Requests let in since the process behind it began serving.
    pub fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::SeqCst)
    }

    fn leave(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.emptied.notify_waiters();
            if let Some(f) = self.on_empty.get() {
                (f.0)();
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// How long no request has been inside; zero while one is.
    pub fn idle_for(&self) -> Duration {
        if self.in_flight() > 0 {
            return Duration::ZERO;
        }
        self.last_used
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or(Duration::ZERO)
    }

    /// Turns new requests away (those inside go on).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Closes the gate only if no request is inside; `false` (and the gate
    /// open) otherwise. A request that tried to enter in between was turned
    /// away and waits for the owner's next snapshot, so the caller must
    /// publish one after a `false`.
    pub fn close_if_idle(&self) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        // `enter` counts before it checks: a request counted now is inside.
        if self.in_flight() == 0 {
            return true;
        }
        self.closed.store(false, Ordering::SeqCst);
        false
    }

    /// Closes the gate and waits until every request inside has left, or
    /// `timeout` has passed.
    pub async fn drain(&self, timeout: Duration) -> DrainOutcome {
        self.closed.store(true, Ordering::SeqCst);
        let at_start = self.in_flight();
        let deadline = Instant::now() + timeout;
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            // Register before checking, so a leave between check and wait
            // is not missed.
            emptied.as_mut().enable();
            let now = self.in_flight();
            if now == 0 {
                return DrainOutcome {
                    drained: at_start,
                    cut: 0,
                };
            }
            if tokio::time::timeout_at(deadline, emptied).await.is_err() {
                let cut = self.in_flight();
                return DrainOutcome {
                    drained: at_start.saturating_sub(cut),
                    cut,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_leases_and_turns_new_ones_away() {
        let gate = Gate::new(1);
        let a = gate.enter().unwrap();
        let b = gate.enter().unwrap();
        let g = Arc::clone(&gate);
        let drain = tokio::spawn(async move { g.drain(Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        assert!(gate.enter().is_none(), "a closed gate admits nobody");
        drop(a);
        drop(b);
        assert_eq!(drain.await.unwrap(), DrainOutcome { drained: 2, cut: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_after_its_timeout_and_counts_the_cut() {
        let gate = Gate::new(1);
        let _held = gate.enter().unwrap();
        let out = gate.drain(Duration::from_secs(3)).await;
        assert_eq!(out, DrainOutcome { drained: 0, cut: 1 });
    }

    #[test]
    fn only_an_empty_gate_closes_if_idle() {
        let gate = Gate::new(1);
        let lease = gate.enter().unwrap();
        assert!(!gate.close_if_idle(), "a request is inside");
        assert!(gate.enter().is_some(), "and the gate is open again");
        drop(lease);
        assert!(gate.close_if_idle());
        assert!(gate.enter().is_none());
    }

    #[tokio::test]
    async fn an_empty_gate_drains_at_once() {
        let gate = Gate::new(1);
        assert_eq!(
            gate.drain(Duration::from_secs(60)).await,
            DrainOutcome { drained: 0, cut: 0 }
        );
    }

    #[test]
    fn the_callback_runs_each_time_the_last_request_leaves() {
        let gate = Gate::new(1);
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        gate.call_when_empty(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        let (a, b) = (gate.enter().unwrap(), gate.enter().unwrap());
        drop(a);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "one request is still inside"
        );
        drop(b);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        drop(gate.enter().unwrap());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
