//! The proxy's per-model metrics, printed by the status API's `/metrics`
//! beside the owner's (drained and cut requests live in the owner snapshot).
//!
//! Everything on the request path is an atomic add, except the first
//! request of a model (which inserts its entry) and each response's status
//! counter (a short mutex around a small map).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::http::prometheus::escape_label;

/// Upper bounds of the histogram buckets, in seconds (then `+Inf`).
pub const BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// A Prometheus histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {:.9}",
            self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count());
    }
}

/// The series of one model.
#[derive(Debug, Default)]
pub struct ModelMetrics {
    statuses: Mutex<BTreeMap<u16, u64>>,
    in_flight: AtomicI64,
    /// Clients that went away before their response was complete.
    pub disconnects: AtomicU64,
    /// Upstream connections that failed and were retried once.
    pub retries: AtomicU64,
    /// Responses whose upstream body broke off mid-way.
    pub upstream_errors: AtomicU64,
    /// Waiting in `acquire` for a serving instance.
    pub queue_wait: Histogram,
    /// Request received to the first response body byte.
    pub ttfb: Histogram,
}

impl ModelMetrics {
    pub fn count_status(&self, status: u16) {
        if let Ok(mut m) = self.statuses.lock() {
            *m.entry(status).or_default() += 1;
        }
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// One request in flight; counted down on drop.
#[derive(Debug)]
pub struct InFlight(Arc<ModelMetrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All of the proxy's metrics.
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    models: RwLock<HashMap<String, Arc<ModelMetrics>>>,
    /// Requests answered before a model was chosen (unknown model, bad
    /// request, auth), by status: their model ids are not labels, so a
    /// client cannot grow the label set.
    unrouted: Mutex<BTreeMap<u16, u64>>,
}

impl ProxyMetrics {
    /// The series of `model` (a model name, never an alias).
    pub fn model(&self, model: &str) -> Arc<ModelMetrics> {
        if let Ok(m) = self.models.read()
            && let Some(found) = m.get(model)
        {
            return Arc::clone(found);
        }
        match self.models.write() {
            Ok(mut m) => Arc::clone(m.entry(model.to_owned()).or_default()),
            Err(_) => Arc::new(ModelMetrics::default()),
        }
    }

    pub fn count_unrouted(&self, status: u16) {
        if let Ok(mut m) = self.unrouted.lock() {
            *m.entry(status).or_default() += 1;
        }
    }

    /// Prometheus text of every series.
    pub fn render(&self) -> String {
        let mut models: Vec<(String, Arc<ModelMetrics>)> = match self.models.read() {
            Ok(m) => m.iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect(),
            Err(_) => Vec::new(),
        };
        models.sort_by(|a, b| a.0.cmp(&b.0));
        let labels: Vec<String> = models
            .iter()
            .map(|(name, _)| format!("model=\"{}\"", escape_label(name)))
            .collect();
        let mut out = String::new();

        let _ = writeln!(
            out,
            "# HELP rocm_llm_proxy_requests_total Proxied requests by model and response status."
        );
        let _ = writeln!(out, "# TYPE rocm_llm_proxy_requests_total counter");
        for ((_, m), l) in models.iter().zip(&labels) {
            if let Ok(statuses) = m.statuses.lock() {
                for (code, n) in statuses.iter() {
                    let _ = writeln!(
                        out,
                        "rocm_llm_proxy_requests_total{{{l},code=\"{code}\"}} {n}"
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP rocm_llm_proxy_unrouted_requests_total Requests answered before a model was chosen (unknown model, bad request, API key), by status."
        );
        let _ = writeln!(out, "# TYPE rocm_llm_proxy_unrouted_requests_total counter");
        if let Ok(unrouted) = self.unrouted.lock() {
            for (code, n) in unrouted.iter() {
                let _ = writeln!(
                    out,
                    "rocm_llm_proxy_unrouted_requests_total{{code=\"{code}\"}} {n}"
                );
            }
        }
        let mut counter =
            |name: &str, kind: &str, help: &str, f: &dyn Fn(&ModelMetrics) -> String| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for ((_, m), l) in models.iter().zip(&labels) {
                    let _ = writeln!(out, "{name}{{{l}}} {}", f(m));
                }
            };
        counter(
            "rocm_llm_proxy_in_flight",
            "gauge",
            "Requests in the proxy: waiting for the model, or streaming.",
            &|m| m.in_flight().to_string(),
        );
        counter(
            "rocm_llm_proxy_client_disconnects_total",
            "counter",
            "Clients that left before their response was complete (their upstream request is cancelled).",
            &|m| m.disconnects.load(Ordering::Relaxed).to_string(),
        );
        counter(
            "rocm_llm_proxy_upstream_retries_total",
            "counter",
            "Requests retried once because the instance's connection failed before any response.",
            &|m| m.retries.load(Ordering::Relaxed).to_string(),
        );
        counter(
            "rocm_llm_proxy_upstream_errors_total",
            "counter",
            "Responses whose upstream body broke off.",
            &|m| m.upstream_errors.load(Ordering::Relaxed).to_string(),
        );

        let _ = writeln!(
            out,
            "# HELP rocm_llm_proxy_queue_wait_seconds Time waiting for a serving instance (start, restart, swap)."
        );
        let _ = writeln!(out, "# TYPE rocm_llm_proxy_queue_wait_seconds histogram");
        for ((_, m), l) in models.iter().zip(&labels) {
            m.queue_wait
                .render(&mut out, "rocm_llm_proxy_queue_wait_seconds", l);
        }
        let _ = writeln!(
            out,
            "# HELP rocm_llm_proxy_time_to_first_byte_seconds Request received to the first response body byte."
        );
        let _ = writeln!(
            out,
            "# TYPE rocm_llm_proxy_time_to_first_byte_seconds histogram"
        );
        for ((_, m), l) in models.iter().zip(&labels) {
            m.ttfb
                .render(&mut out, "rocm_llm_proxy_time_to_first_byte_seconds", l);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = ProxyMetrics::default();
        let a = m.model("a");
        a.count_status(200);
        a.count_status(200);
        a.count_status(503);
        a.ttfb.observe(Duration::from_micros(300));
        a.ttfb.observe(Duration::from_millis(30));
        {
            let _in = a.enter();
            assert_eq!(m.model("a").in_flight(), 1);
        }
        m.count_unrouted(404);
        let text = m.render();
        assert!(
            text.contains("rocm_llm_proxy_requests_total{model=\"a\",code=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("rocm_llm_proxy_requests_total{model=\"a\",code=\"503\"} 1"));
        assert!(text.contains("rocm_llm_proxy_unrouted_requests_total{code=\"404\"} 1"));
        assert!(text.contains("rocm_llm_proxy_in_flight{model=\"a\"} 0"));
        assert!(text.contains(
            "rocm_llm_proxy_time_to_first_byte_seconds_bucket{model=\"a\",le=\"0.0005\"} 1"
        ));
        assert!(text.contains(
            "rocm_llm_proxy_time_to_first_byte_seconds_bucket{model=\"a\",le=\"0.01\"} 1"
        ));
        assert!(text.contains(
            "rocm_llm_proxy_time_to_first_byte_seconds_bucket{model=\"a\",le=\"0.05\"} 2"
        ));
        assert!(text.contains(
            "rocm_llm_proxy_time_to_first_byte_seconds_bucket{model=\"a\",le=\"+Inf\"} 2"
        ));
        assert!(text.contains("rocm_llm_proxy_time_to_first_byte_seconds_count{model=\"a\"} 2"));
    }
}
