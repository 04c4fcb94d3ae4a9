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
            m.state.as_str().to_owned(),
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
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A report with one model `m` starting, with `progress`.
    fn starting_with(progress: serde_json::Value) -> StatusReport {
        serde_json::from_value(serde_json::json!({
            "spec": "/specs/models.yaml", "generation": 1, "last_reload": null,
            "reloads": 1, "reload_errors": 0, "api_key_file": null,
            "listen": "127.0.0.1:8080", "control": "127.0.0.1:8081",
            "devices": [], "reload_history": [],
            "models": {"m": {
                "state": "starting", "pid": 7, "port": 9000, "launch_id": "l",
                "target_launch_id": "l", "restarts": 0, "aliases": [],
                "on_demand": false, "in_flight": 0, "waiting": 0, "drained": 0,
                "cut": 0, "warnings": [], "log": [], "progress": progress,
                "memory": {"log_devices": {}, "log_total_bytes": 0},
            }},
        }))
        .expect("a status report")
    }

    #[test]
    fn a_loading_model_shows_its_progress() {
        for (progress, expected) in [
            (
                serde_json::json!({"stage": "reading tensors", "bytes_done": 2_100_000_000u64, "bytes_total": 4_900_000_000u64, "percent": 42.857}),
                Some("loading  m: reading tensors 2.1/4.9 GB (43%)"),
            ),
            (
                serde_json::json!({"stage": "starting", "bytes_done": 0, "bytes_total": 0, "percent": null}),
                Some("loading  m: starting"),
            ),
            (serde_json::Value::Null, None),
        ] {
            let text = render(&starting_with(progress), SystemTime::UNIX_EPOCH);
            let line = text.lines().find(|l| l.starts_with("loading"));
            assert_eq!(line, expected, "{text}");
        }
    }
}
