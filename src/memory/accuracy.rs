//! The estimate against the real llama-server: generate a shape, start
//! llama-server on it with `-lv 4`, read the buffer lines it prints per
//! device, stop it, and compare with the estimate for the same options.
//! Used by the accuracy tests and by `rocm-llm memory-report`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::log::LogUsage;
use super::{Estimate, Overheads, Parts, estimate_model};
use crate::gguf::GgufHeader;
use crate::gguf::shapes::{Shape, write_shape};
use crate::spec::{CacheType, FlashAttn, LaunchOptions};

/// One setting of a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaseSettings {
    pub ctx: u32,
    pub cache: CacheType,
    pub flash_attn: bool,
    /// `None`: llama-server's default (4 slots, unified cache).
    pub parallel: Option<u32>,
    /// `None`: unset (with `--fit off`, every layer on a GPU when there is
    /// one).
    pub gpu_layers: Option<u32>,
}

impl CaseSettings {
    pub fn options(&self) -> LaunchOptions {
        LaunchOptions {
            ctx_size: Some(self.ctx),
            cache_type_k: Some(self.cache),
            cache_type_v: Some(self.cache),
            flash_attn: Some(if self.flash_attn {
                FlashAttn::On
            } else {
                FlashAttn::Off
            }),
            parallel: self.parallel,
            gpu_layers: self.gpu_layers.map(crate::spec::GpuLayers::Count),
            ..LaunchOptions::default()
        }
    }

    pub fn label(&self) -> String {
        let mut l = format!(
            "ctx {} {} fa {} np {}",
            self.ctx,
            self.cache,
            if self.flash_attn { "on" } else { "off" },
            self.parallel.map_or("auto".to_owned(), |n| n.to_string())
        );
        if let Some(n) = self.gpu_layers {
            l.push_str(&format!(" ngl {n}"));
        }
        l
    }
}

/// The settings the CI cases use: the default (4 unified slots, f16,
/// flash attention), a long q8_0 context with separate slots, and flash
/// attention off.
pub fn ci_settings() -> Vec<CaseSettings> {
    vec![
        CaseSettings {
            ctx: 4096,
            cache: CacheType::F16,
            flash_attn: true,
            parallel: None,
            gpu_layers: None,
        },
        CaseSettings {
            ctx: 16384,
            cache: CacheType::Q8_0,
            flash_attn: true,
            parallel: Some(4),
            gpu_layers: None,
        },
        CaseSettings {
            ctx: 8192,
            cache: CacheType::F16,
            flash_attn: false,
            parallel: Some(1),
            gpu_layers: None,
        },
    ]
}

/// Every combination: ctx 4k, 16k, 32k; f16 and q8_0 caches; flash
/// attention on and off (q8_0 needs it on); 1 and 4 slots.
pub fn full_settings() -> Vec<CaseSettings> {
    let mut v = Vec::new();
    for ctx in [4096, 16384, 32768] {
        for cache in [CacheType::F16, CacheType::Q8_0] {
            for fa in [true, false] {
                if cache != CacheType::F16 && !fa {
                    continue;
                }
                for parallel in [Some(1), Some(4)] {
                    v.push(CaseSettings {
                        ctx,
                        cache,
                        flash_attn: fa,
                        parallel,
                        gpu_layers: None,
                    });
                }
            }
        }
    }
    v
}

/// A measured case.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub model: String,
    pub settings: String,
    pub estimate: Parts,
    pub measured: Parts,
    /// Per device, when there is more than the host.
    pub estimate_devices: std::collections::BTreeMap<String, Parts>,
    pub measured_devices: std::collections::BTreeMap<String, Parts>,
}

impl CaseResult {
    /// (estimate - measured) / measured, over all parts.
    pub fn error(&self) -> f64 {
        let m = self.measured.total() as f64;
        (self.estimate.total() as f64 - m) / m
    }
}

/// What llama-server reports for `model` with `options`, started from
/// `server`, read from its log until it listens (or fails).
pub fn measure(
    server: &Path,
    model: &Path,
    options: &LaunchOptions,
    port: u16,
) -> Result<LogUsage, String> {
    let mut cmd = Command::new(server);
    cmd.envs(&options.env).arg("--model").arg(model);
    if let Some(c) = options.ctx_size {
        cmd.args(["--ctx-size", &c.to_string()]);
    }
    if let Some(n) = options.parallel {
        cmd.args(["--parallel", &n.to_string()]);
    }
    if let Some(fa) = options.flash_attn {
        cmd.args(["--flash-attn", &fa.to_string()]);
    }
    if let Some(t) = options.cache_type_k {
        cmd.args(["--cache-type-k", t.as_str()]);
    }
    if let Some(t) = options.cache_type_v {
        cmd.args(["--cache-type-v", t.as_str()]);
    }
    if let Some(crate::spec::GpuLayers::Count(n)) = options.gpu_layers {
        cmd.args(["--gpu-layers", &n.to_string()]);
    }
    cmd.args(&options.extra_args);
    // A projector reserves its compute buffer in the warmup only.
    if !options
        .extra_args
        .iter()
        .any(|a| a == "--mmproj" || a == "-mm")
    {
        cmd.arg("--no-warmup");
    }
    cmd.args(["-lv", "4", "--fit", "off", "--threads", "1"])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", server.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut usage = LogUsage::default();
    let mut tail: Vec<String> = Vec::new();
    let mut ok = false;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(120)) {
        usage.feed(&line);
        if line.contains("listening on") || line.contains("server is listening") {
            ok = true;
            break;
        }
        tail.push(line);
        if tail.len() > 20 {
            tail.remove(0);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(rx);
    let _ = reader.join();
    if !ok {
        return Err(format!(
            "llama-server did not come up; its last lines:\n{}",
            tail.join("\n")
        ));
    }
    Ok(usage)
}

/// The estimate for a model file with options on these GPUs.
pub fn estimate_file(
    model: &Path,
    options: &LaunchOptions,
    gpus: &[super::Device],
) -> Result<Estimate, String> {
    let h = GgufHeader::read_path(model).map_err(|e| e.to_string())?;
    estimate_model(&h, options, gpus, &Overheads::default())
}

/// Runs one case: writes the shape under `dir` (once), measures, estimates.
pub fn run_case(
    server: &Path,
    dir: &Path,
    shape: &Shape,
    settings: &CaseSettings,
    port: u16,
) -> Result<CaseResult, String> {
    let path = dir.join(format!("{}.gguf", shape.name));
    if !path.exists() {
        write_shape(&path, shape).map_err(|e| e.to_string())?;
    }
    run_file_case(server, &path, shape.name, settings, port)
}

/// Runs one case on an existing model file.
pub fn run_file_case(
    server: &Path,
    path: &Path,
    name: &str,
    settings: &CaseSettings,
    port: u16,
) -> Result<CaseResult, String> {
    run_file_case_with_env(server, path, name, settings, &Default::default(), port)
}

/// [`run_file_case`] with llama-server (and its device list) run under
/// `env` added, e.g. `GGML_VK_VISIBLE_DEVICES=0` for lavapipe.
pub fn run_file_case_with_env(
    server: &Path,
    path: &Path,
    name: &str,
    settings: &CaseSettings,
    env: &std::collections::BTreeMap<String, String>,
    port: u16,
) -> Result<CaseResult, String> {
    let options = LaunchOptions {
        env: env.clone(),
        ..settings.options()
    };
    let gpus: Vec<super::Device> = super::plan::list_devices_with_env(server, env)
        .iter()
        .map(super::plan::ListedDevice::device)
        .collect();
    let measured = measure(server, path, &options, port)?;
    let mut estimate = estimate_file(path, &options, &gpus)?;
    // llama-server does not print the backend's fixed overhead; compare
    // what it prints.
    for p in estimate.devices.values_mut() {
        p.overhead = 0;
    }
    Ok(CaseResult {
        model: name.to_owned(),
        settings: settings.label(),
        estimate: estimate.total(),
        measured: total_parts(&measured),
        estimate_devices: estimate.devices.clone(),
        measured_devices: measured.devices.clone(),
    })
}

fn total_parts(u: &LogUsage) -> Parts {
    let mut t = Parts::default();
    for p in u.devices.values() {
        t.add(p);
    }
    t
}

/// The report table, one row per case, in MiB.
pub fn render_table(results: &[CaseResult]) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut out = String::from(
        "| model | settings | weights est/real | KV est/real | compute est/real | output est/real | total est/real MiB | error | goal ±5 %/−2 % |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let mut per_device = String::new();
    for r in results {
        if r.measured_devices.len() > 1 || r.estimate_devices.len() > 1 {
            let mut devs: Vec<&String> = r.estimate_devices.keys().collect();
            devs.extend(r.measured_devices.keys());
            devs.sort();
            devs.dedup();
            let cells: Vec<String> = devs
                .iter()
                .map(|d| {
                    let e = r.estimate_devices.get(*d).map_or(0, Parts::total);
                    let m = r.measured_devices.get(*d).map_or(0, Parts::total);
                    format!("{d} {:.1}/{:.1}", mib(e), mib(m))
                })
                .collect();
            per_device.push_str(&format!(
                "| {} | {} | {} |\n",
                r.model,
                r.settings,
                cells.join(", ")
            ));
        }
    }
    for r in results {
        let (e, m) = (&r.estimate, &r.measured);
        let err = r.error();
        let goal = if (-0.02..=0.05).contains(&err) {
            "met"
        } else {
            "MISSED"
        };
        out.push_str(&format!(
            "| {} | {} | {:.1}/{:.1} | {:.1}/{:.1} | {:.1}/{:.1} | {:.2}/{:.2} | {:.1}/{:.1} | {:+.1} % | {goal} |\n",
            r.model,
            r.settings,
            mib(e.weights),
            mib(m.weights),
            mib(e.kv),
            mib(m.kv),
            mib(e.compute),
            mib(m.compute),
            mib(e.output),
            mib(m.output),
            mib(e.total()),
            mib(m.total()),
            err * 100.0
        ));
    }
    if !per_device.is_empty() {
        out.push_str("\n| model | settings | per device est/real MiB |\n|---|---|---|\n");
        out.push_str(&per_device);
    }
    out
}
