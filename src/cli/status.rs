//! `rocm-llm status`: the daemon's models in a table.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use rocm_llm::daemon::client::{self, GetError};
use rocm_llm::daemon::status::StatusReport;
use rocm_llm::supervisor::State;

/// `$ROCM_LLM_API_KEY`, when it is set.
fn api_key() -> Option<String> {
    std::env::var("ROCM_LLM_API_KEY")
        .ok()
        .filter(|k| !k.is_empty())
}

fn explain(e: GetError) -> String {
    match e {
        GetError::Connect { .. } => format!("{e} (is `rocm-llm serve` running?)"),
        e => e.to_string(),
    }
}

/// `GET path` on the daemon's control address, with `$ROCM_LLM_API_KEY`
/// when it is set.
pub fn get(control: &str, path: &str) -> Result<String, String> {
    client::get(control, path, api_key().as_deref()).map_err(explain)
}

/// The daemon's typed `GET /status`, with `$ROCM_LLM_API_KEY` when it is
/// set.
pub fn status(control: &str) -> Result<StatusReport, String> {
    client::status(control, api_key().as_deref()).map_err(explain)
}

pub fn run(control: &str, json: bool) -> ExitCode {
    if json {
        return match get(control, "/status") {
            Ok(body) => {
                super::emit(&format!("{body}\n"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(super::EXIT_FAILURE)
            }
        };
    }
    let status = match status(control) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(super::EXIT_FAILURE);
        }
    };
    super::emit(&render(&status, SystemTime::now()));
    let reload_ok = status.daemon.last_reload.as_ref().is_none_or(|r| r.ok);
    let any_failed = status.models.values().any(|m| m.state == State::Failed);
    if reload_ok && !any_failed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_INVALID)
    }
}

fn ago(secs: f64, now: SystemTime) -> String {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let d = Duration::from_secs((now - secs).max(0.0) as u64);
    humantime::format_duration(d)
        .to_string()
        .split(' ')
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The table a person reads at a glance, then the reload result.
pub fn render(status: &StatusReport, now: SystemTime) -> String {
    let mut rows = vec![
        [
            "MODEL",
            "STATE",
            "PID",
            "PORT",
            "READY",
            "UP",
            "RESTARTS",
            "IN-FLIGHT",
            "LAUNCH",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut errors = Vec::new();
    for (name, m) in &status.models {
        let dash = || "-".to_owned();
        rows.push(vec![
            name.clone(),
            state_cell(m),
            m.pid.map_or_else(dash, |p| p.to_string()),
            m.port.map_or_else(dash, |p| p.to_string()),
            m.ready_ms.map_or_else(dash, |ms| format!("{ms:.0}ms")),
            m.started_at
                .filter(|_| m.state == State::Ready)
                .map_or_else(dash, |t| ago(t, now)),
            m.restarts.to_string(),
            m.in_flight.to_string(),
            m.launch_id.clone(),
        ]);
        if let Some(why) = &m.memory.refused {
            errors.push(format!("no room  {name}: {why}"));
        }
        if let Some(e) = &m.last_error {
            errors.push(format!("error  {name}: {}", e.lines().next().unwrap_or(e)));
        } else if let Some(r) = &m.last_restart {
            let why = r.reason.lines().next().unwrap_or(&r.reason);
            errors.push(format!("restarted {} ago  {name}: {why}", ago(r.at, now)));
        }
        if let Some(p) = &m.progress {
            errors.push(format!(
                "loading  {name}: {}",
                rocm_llm::supervisor::progress::describe(p)
            ));
        }
        for w in &m.warnings {
            errors.push(format!("warning  {name}: {w}"));
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if rows.len() == 1 {
        out.push_str("(no models)\n");
    }
    for e in errors {
        out.push_str(&e);
        out.push('\n');
    }
    out.push_str(&render_memory(status));
    let spec = status.daemon.spec.display();
    let generation = status.daemon.generation;
    match &status.daemon.last_reload {
        Some(r) if !r.ok => {
            out.push_str(&format!("\nspec {spec} (generation {generation}): the last edit was REJECTED, nothing changed:\n"));
            for e in &r.errors {
                out.push_str(&format!("  {e}\n"));
            }
        }
        _ => out.push_str(&format!(
            "\nspec {spec} (generation {generation}): applied\n"
        )),
    }
    out
}

/// `waiting for memory (held by a, b)`: the start of a model that waits
/// for others to give memory up.
pub fn waiting_text(held_by: &[String]) -> String {
    if held_by.is_empty() {
        "waiting for memory".to_owned()
    } else {
        format!("waiting for memory (held by {})", held_by.join(", "))
    }
}

/// The state, or what a start waits for: a starting model that waits for
/// memory is not loading anything yet.
fn state_cell(m: &rocm_llm::daemon::status::ModelStatus) -> String {
    let state = m.state.as_str();
    match (&m.memory.waiting_for, &m.memory.refused) {
        (Some(held_by), _) if m.state == State::Starting => waiting_text(held_by),
        (Some(held_by), _) => format!("{state}, {}", waiting_text(held_by)),
        (None, Some(_)) => format!("{state} (no room)"),
        (None, None) => state.to_owned(),
    }
}

/// Measured memory: per model what llama-server reported per device and
/// what the GPU drivers see; per GPU total, used and free.
fn render_memory(status: &StatusReport) -> String {
    use rocm_llm::memory::human_bytes;
    let mut out = String::new();
    for (name, m) in &status.models {
        let mem = &m.memory;
        // The log's parts carry no overhead; the estimate's do.
        let parts: Vec<String> = mem
            .log_devices
            .iter()
            .map(|(dev, p)| format!("{dev} {}", human_bytes(p.total())))
            .collect();
        let mut line = String::new();
        if !parts.is_empty() {
            line.push_str(&format!("{} (llama-server)", parts.join(", ")));
        }
        if let Some(g) = mem.gpu_bytes.filter(|&g| g > 0) {
            if !line.is_empty() {
                line.push_str("; ");
            }
            line.push_str(&format!("GPU {} (driver)", human_bytes(g)));
        }
        if !line.is_empty() {
            out.push_str(&format!("memory {name}: {line}\n"));
        }
        if let Some(estimate) = &mem.estimate {
            let parts: Vec<String> = estimate
                .estimate
                .devices
                .iter()
                .map(|(dev, p)| format!("{dev} {}", human_bytes(p.total())))
                .collect();
            out.push_str(&format!(
                "estimate {name}: {} (rocm-llm, overhead included)\n",
                parts.join(", ")
            ));
        } else if let Some(e) = &mem.estimate_error {
            out.push_str(&format!("estimate {name}: none: {e}\n"));
        }
    }
    for d in &status.devices {
        out.push_str(&format!(
            "device {}: {} used of {}, {} free\n",
            d.name,
            human_bytes(d.used),
            human_bytes(d.total),
            human_bytes(d.free())
        ));
    }
    out.push_str(&render_scheduler(&status.scheduler));
    out
}

/// The scheduler's side: per llama.cpp device its budget, what is reserved
/// and measured, and what is free; per model what it holds; the counters.
/// Nothing without a budget or anything counted.
fn render_scheduler(s: &rocm_llm::schedule::arbiter::MemoryReport) -> String {
    use rocm_llm::memory::human_bytes;
    let per_device = |bytes: &std::collections::BTreeMap<String, u64>| {
        bytes
            .iter()
            .map(|(dev, b)| format!("{dev} {}", human_bytes(*b)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    for d in &s.devices {
        // A device only a reservation names has no budget (0).
        let of = if d.budget_bytes == 0 {
            ", no budget".to_owned()
        } else {
            format!(
                " of {}, {} free",
                human_bytes(d.budget_bytes),
                human_bytes(d.free_bytes)
            )
        };
        out.push_str(&format!(
            "budget {}: {} reserved{of}; {} measured\n",
            d.device,
            human_bytes(d.reserved_bytes),
            human_bytes(d.measured_bytes)
        ));
    }
    for (name, h) in s.models.iter().filter(|(_, h)| !h.reserved.is_empty()) {
        let mut line = format!("reserved {name}: {}", per_device(&h.reserved));
        if !h.phases.is_empty() {
            line.push_str(&format!(" ({})", h.phases.join(", ")));
        }
        if !h.measured.is_empty() {
            line.push_str(&format!("; measured {}", per_device(&h.measured)));
        }
        out.push_str(&line);
        out.push('\n');
    }
    let c = &s.counters;
    if !s.devices.is_empty() || *c != Default::default() {
        out.push_str(&format!(
            "scheduler: evictions {}, yields {}, refused {}, waits {}, swaps {}, blue_green fallbacks {}, free-wait timeouts {}\n",
            c.evictions, c.yields, c.refused, c.waits, c.swaps, c.fallbacks, c.free_timeouts
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::{Value, json};

    /// Seconds since the epoch of the fixed "now" the tests render at.
    const NOW: u64 = 1_790_000_000;

    /// A model in `state` with nothing else to show, then `overrides`.
    fn model(state: &str, overrides: Value) -> Value {
        let mut m = json!({
            "state": state, "stopped_by_operator": false, "pid": null, "port": null,
            "launch_id": "0123456789abcdef", "target_launch_id": "0123456789abcdef",
            "restarts": 0, "aliases": [], "on_demand": false, "in_flight": 0,
            "waiting": 0, "drained": 0, "cut": 0, "warnings": [], "log": [],
            "launches": [], "memory": {"log_devices": {}, "log_total_bytes": 0},
        });
        for (k, v) in overrides.as_object().unwrap() {
            m[k] = v.clone();
        }
        m
    }

    /// A report of `models`, with `daemon` overriding the daemon's fields.
    fn report(models: Value, daemon: Value, devices: Value) -> StatusReport {
        let mut r = json!({
            "spec": "/etc/rocm-llm/models.yaml", "generation": 3, "last_reload": null,
            "reloads": 3, "reload_errors": 0, "api_key_file": null,
            "listen": "127.0.0.1:8080", "control": "127.0.0.1:8081",
            "devices": devices, "reload_history": [], "models": models,
        });
        for (k, v) in daemon.as_object().unwrap() {
            r[k] = v.clone();
        }
        serde_json::from_value(r).expect("a status report")
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
    }

    #[test]
    fn a_loading_model_shows_its_progress() {
        for (progress, expected) in [
            (
                json!({"stage": "reading tensors", "bytes_done": 2_100_000_000u64, "bytes_total": 4_900_000_000u64, "percent": 42.857}),
                Some("loading  m: reading tensors 2.1/4.9 GB (43%)"),
            ),
            (
                json!({"stage": "starting", "bytes_done": 0, "bytes_total": 0, "percent": null}),
                Some("loading  m: starting"),
            ),
            (Value::Null, None),
        ] {
            let status = report(
                json!({"m": model("starting", json!({"pid": 7, "progress": progress}))}),
                json!({}),
                json!([]),
            );
            let text = render(&status, now());
            let line = text.lines().find(|l| l.starts_with("loading"));
            assert_eq!(line, expected, "{text}");
        }
    }

    #[test]
    fn the_state_column_says_what_a_start_waits_for() {
        for (state, memory, expected) in [
            ("ready", json!({}), "ready"),
            (
                "starting",
                json!({"waiting_for": ["a", "b"]}),
                "waiting for memory (held by a, b)",
            ),
            ("starting", json!({"waiting_for": []}), "waiting for memory"),
            (
                "swapping",
                json!({"waiting_for": ["a"]}),
                "swapping, waiting for memory (held by a)",
            ),
            (
                "idle",
                json!({"refused": "model m does not fit"}),
                "idle (no room)",
            ),
        ] {
            let mut mem = json!({"log_devices": {}, "log_total_bytes": 0});
            for (k, v) in memory.as_object().unwrap() {
                mem[k] = v.clone();
            }
            let status = report(
                json!({"m": model(state, json!({"memory": mem}))}),
                json!({}),
                json!([]),
            );
            let text = render(&status, now());
            let row = text.lines().nth(1).unwrap();
            let cell = row.strip_prefix("m").unwrap().trim_start();
            assert!(
                cell.starts_with(&format!("{expected}  ")),
                "{memory}: {text}"
            );
        }
    }

    /// Two on-demand models that do not fit together in a 100 MiB host
    /// budget: `a` serves and holds 60 MiB, `b` waits for it, `c` was
    /// refused (it can never fit); the per-device budget (a device no
    /// budget covers says so) and the counters.
    #[test]
    fn the_status_table_with_a_memory_budget() {
        const MIB: u64 = 1 << 20;
        let t = NOW as f64;
        let status = report(
            json!({
                "a": model("ready", json!({
                    "pid": 5001, "port": 40011, "ready_ms": 640.0, "started_at": t - 95.0,
                    "in_flight": 1, "on_demand": true,
                    "memory": {"log_devices": {}, "log_total_bytes": 0, "reserved": {"CPU": 60 * MIB, "Vulkan0": 8 * MIB}},
                })),
                "b": model("starting", json!({
                    "on_demand": true,
                    "memory": {"log_devices": {}, "log_total_bytes": 0, "waiting_for": ["a"]},
                })),
                "c": model("idle", json!({
                    "on_demand": true,
                    "memory": {"log_devices": {}, "log_total_bytes": 0, "refused": "model c does not fit in the memory budget now, even with every idle on-demand model stopped: short by 20.00 MiB on CPU (needs 120.00 MiB, 100.00 MiB free)"},
                })),
            }),
            json!({"scheduler": {
                "devices": [
                    {"device": "CPU", "budget_bytes": 100 * MIB, "reserved_bytes": 60 * MIB, "measured_bytes": 48 * MIB, "free_bytes": 40 * MIB},
                    {"device": "Vulkan0", "budget_bytes": 0, "reserved_bytes": 8 * MIB, "measured_bytes": 6 * MIB, "free_bytes": 0},
                ],
                "models": {
                    "a": {"reserved": {"CPU": 60 * MIB, "Vulkan0": 8 * MIB}, "measured": {"CPU": 48 * MIB, "Vulkan0": 6 * MIB}, "phases": ["loaded"], "waiting_for": null, "waiting_s": null, "refused": null},
                    "b": {"reserved": {}, "measured": {}, "phases": [], "waiting_for": ["a"], "waiting_s": 3.2, "refused": null},
                    "c": {"reserved": {}, "measured": {}, "phases": [], "waiting_for": null, "waiting_s": null, "refused": "model c does not fit in the memory budget now, even with every idle on-demand model stopped: short by 20.00 MiB on CPU (needs 120.00 MiB, 100.00 MiB free)"},
                },
                "counters": {"evictions": 4, "yields": 1, "refused": 1, "waits": 6, "swaps": 5, "fallbacks": 0, "free_timeouts": 0},
            }}),
            json!([]),
        );
        insta::assert_snapshot!(render(&status, now()));
    }

    /// The table as a person reads it: a serving model with a crash behind
    /// it and measured memory, an idle on-demand one, one loading, one that
    /// failed, a GPU, and an edit that was rejected.
    #[test]
    fn the_status_table() {
        let t = NOW as f64;
        let parts = json!({"weights": 1_500_000_000u64, "kv": 268_435_456u64, "compute": 300_000_000u64, "output": 600_000, "overhead": 0});
        let status = report(
            json!({
                "chat": model("ready", json!({
                    "pid": 4242, "port": 40001, "ready_ms": 812.4,
                    "started_at": t - 3725.0, "restarts": 1, "in_flight": 2,
                    "aliases": ["assistant"],
                    "last_restart": {"at": t - 3800.0, "reason": "llama-server (pid 4100) exited: signal 9 (SIGKILL)\nlast lines of its log"},
                    "memory": {
                        "log_devices": {"ROCm0": parts, "CPU": {"weights": 300_000_000u64, "kv": 0, "compute": 20_000_000u64, "output": 0, "overhead": 0}},
                        "log_total_bytes": 2_389_035_456u64, "gpu_bytes": 2_400_000_000u64,
                        "estimate": {
                            "total_bytes": 2_490_000_000u64, "context": 4096, "context_per_slot": 2048,
                            "slots": 2, "flash_attn": true, "gpu_layers": 29, "n_layer": 28,
                            "devices": {"ROCm0": {"weights": 1_500_000_000u64, "kv": 268_435_456u64, "compute": 310_000_000u64, "output": 600_000, "overhead": 100_000_000u64}, "CPU": {"weights": 300_000_000u64, "kv": 0, "compute": 11_000_000u64, "output": 0, "overhead": 0}},
                        },
                    },
                })),
                "coder": model("idle", json!({"on_demand": true, "idle_timeout_s": 600.0})),
                "vision": model("starting", json!({
                    "pid": 4301, "port": 40002,
                    "warnings": ["the ROCm build found no GPU; running on the CPU"],
                    "progress": {"stage": "reading tensors", "bytes_done": 1_200_000_000u64, "bytes_total": 3_000_000_000u64, "percent": 40.0},
                    "memory": {"log_devices": {}, "log_total_bytes": 0, "gpu_bytes": 0, "estimate_error": "vision.gguf: unknown architecture \"clip\""},
                })),
                "broken": model("failed", json!({
                    "restarts": 6,
                    "last_error": "start failed: llama-server exited with status 1 before it was ready\nerror: unknown argument: --no-such-flag",
                })),
            }),
            json!({"last_reload": {
                "ok": false, "at": {"secs_since_epoch": NOW - 60, "nanos_since_epoch": 0},
                "errors": ["/etc/rocm-llm/models.yaml:7:15: models.chat.parallel: expected an integer from 1 to 256, found integer 0"],
                "actions": [],
            }, "reload_errors": 1}),
            json!([{"name": "card0", "pci": "0000:03:00.0", "total": 17_163_091_968u64, "used": 2_684_354_560u64, "gtt_total": null, "gtt_used": null}]),
        );
        insta::assert_snapshot!(render(&status, now()));
    }
}
