//! `rocm-llm status`: the daemon's models in a table.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use serde_json::Value;

/// `GET path` on the daemon's control address, with `$ROCM_LLM_API_KEY`
/// when it is set.
pub fn get(control: &str, path: &str) -> Result<String, String> {
    let key = std::env::var("ROCM_LLM_API_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    rocm_llm::daemon::client::get(control, path, key.as_deref()).map_err(|e| match e {
        rocm_llm::daemon::client::GetError::Connect { .. } => {
            format!("{e} (is `rocm-llm serve` running?)")
        }
        e => e.to_string(),
    })
}

pub fn run(control: &str, json: bool) -> ExitCode {
    let body = match get(control, "/status") {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(super::EXIT_FAILURE);
        }
    };
    if json {
        super::emit(&format!("{body}\n"));
        return ExitCode::SUCCESS;
    }
    let status: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: the daemon's status is not JSON: {e}");
            return ExitCode::from(super::EXIT_FAILURE);
        }
    };
    super::emit(&render(&status, SystemTime::now()));
    let reload_ok = status["last_reload"]["ok"].as_bool().unwrap_or(true);
    let any_failed = status["models"]
        .as_object()
        .is_some_and(|m| m.values().any(|v| v["state"] == "failed"));
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
pub fn render(status: &Value, now: SystemTime) -> String {
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
    if let Some(models) = status["models"].as_object() {
        for (name, m) in models {
            let dash = || "-".to_owned();
            rows.push(vec![
                name.clone(),
                m["state"].as_str().unwrap_or("?").to_owned(),
                m["pid"].as_i64().map_or_else(dash, |p| p.to_string()),
                m["port"].as_u64().map_or_else(dash, |p| p.to_string()),
                m["ready_ms"]
                    .as_f64()
                    .map_or_else(dash, |ms| format!("{ms:.0}ms")),
                m["started_at"]
                    .as_f64()
                    .filter(|_| m["state"] == "ready")
                    .map_or_else(dash, |t| ago(t, now)),
                m["restarts"].as_u64().unwrap_or(0).to_string(),
                m["in_flight"].as_u64().unwrap_or(0).to_string(),
                m["launch_id"].as_str().unwrap_or("-").to_owned(),
            ]);
            if let Some(e) = m["last_error"].as_str() {
                errors.push(format!("error  {name}: {}", e.lines().next().unwrap_or(e)));
            } else if let (Some(why), Some(at)) = (
                m["last_restart"]["reason"].as_str(),
                m["last_restart"]["at"].as_f64(),
            ) {
                let why = why.lines().next().unwrap_or(why);
                errors.push(format!("restarted {} ago  {name}: {why}", ago(at, now)));
            }
            if let Some(p) = m["progress"].as_object() {
                errors.push(format!("loading  {name}: {}", describe_progress(p)));
            }
            for w in m["warnings"].as_array().into_iter().flatten() {
                if let Some(w) = w.as_str() {
                    errors.push(format!("warning  {name}: {w}"));
                }
            }
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
    let spec = status["spec"].as_str().unwrap_or("?");
    let generation = status["generation"].as_u64().unwrap_or(0);
    match status["last_reload"].as_object() {
        Some(r) if r.get("ok").and_then(Value::as_bool) == Some(false) => {
            out.push_str(&format!("\nspec {spec} (generation {generation}): the last edit was REJECTED, nothing changed:\n"));
            for e in r
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out.push_str(&format!("  {}\n", e.as_str().unwrap_or_default()));
            }
        }
        _ => out.push_str(&format!(
            "\nspec {spec} (generation {generation}): applied\n"
        )),
    }
    out
}

/// "reading tensors 2.1/4.9 GB (43%)", as `supervisor::progress::describe`.
fn describe_progress(p: &serde_json::Map<String, Value>) -> String {
    let stage = p.get("stage").and_then(Value::as_str).unwrap_or("loading");
    let gb = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0) as f64 / 1e9;
    match p.get("percent").and_then(Value::as_f64) {
        Some(pct) => format!(
            "{stage} {:.1}/{:.1} GB ({pct:.0}%)",
            gb("bytes_done"),
            gb("bytes_total")
        ),
        None => stage.to_owned(),
    }
}

/// Measured memory: per model what llama-server reported per device and
/// what the GPU drivers see; per GPU total, used and free.
fn render_memory(status: &Value) -> String {
    use rocm_llm::memory::human_bytes;
    let mut out = String::new();
    if let Some(models) = status["models"].as_object() {
        for (name, m) in models {
            let mem = &m["memory"];
            let mut parts = Vec::new();
            if let Some(devs) = mem["log_devices"].as_object() {
                for (dev, p) in devs {
                    let total = ["weights", "kv", "compute", "output"]
                        .iter()
                        .filter_map(|k| p[*k].as_u64())
                        .sum::<u64>();
                    parts.push(format!("{dev} {}", human_bytes(total)));
                }
            }
            let mut line = String::new();
            if !parts.is_empty() {
                line.push_str(&format!("{} (llama-server)", parts.join(", ")));
            }
            if let Some(g) = mem["gpu_bytes"].as_u64().filter(|&g| g > 0) {
                if !line.is_empty() {
                    line.push_str("; ");
                }
                line.push_str(&format!("GPU {} (driver)", human_bytes(g)));
            }
            if !line.is_empty() {
                out.push_str(&format!("memory {name}: {line}\n"));
            }
        }
    }
    for d in status["devices"].as_array().into_iter().flatten() {
        let (Some(total), Some(used)) = (d["total"].as_u64(), d["used"].as_u64()) else {
            continue;
        };
        out.push_str(&format!(
            "device {}: {} used of {}, {} free\n",
            d["name"].as_str().unwrap_or("?"),
            human_bytes(used),
            human_bytes(total),
            human_bytes(total.saturating_sub(used))
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

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
            (Value::Null, None),
        ] {
            let status =
                serde_json::json!({"models": {"m": {"state": "starting", "progress": progress}}});
            let text = render(&status, SystemTime::UNIX_EPOCH);
            let line = text.lines().find(|l| l.starts_with("loading"));
            assert_eq!(line, expected, "{text}");
        }
    }
}
