//! Subcommands. Exit codes: 0 success; 1 the spec is invalid (or the
//! daemon reports a problem); 2 usage error; 3 an operational failure (a file
//! or the daemon could not be reached).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod serve;
mod status;
mod status_watch;

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

use rocm_llm::plan::{self, Launch, memory};
use rocm_llm::schedule::admission::Fit;
use rocm_llm::spec::validate::{self, Context, Disk};
use rocm_llm::spec::{Desired, SpecErrors};

pub const EXIT_INVALID: u8 = 1;
pub const EXIT_FAILURE: u8 = 3;

#[derive(Parser)]
#[command(
    name = "rocm-llm",
    version,
    about = "Declare local LLMs in one YAML file; rocm-llm keeps llama-server matching it.",
    after_help = "Exit codes: 0 success, 1 invalid spec, 2 usage error, 3 operational failure."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check spec files and print every mistake with file:line:column.
    Validate {
        /// Spec files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show the exact llama-server command line and environment of each model.
    Plan {
        /// The spec file.
        file: PathBuf,
        /// Print one JSON object (models, their command lines and memory
        /// estimates per device; see docs/memory.md).
        #[arg(long)]
        json: bool,
    },
    /// Print the spec's JSON Schema (for editors and CI).
    Schema,
    /// Run the daemon: keep llama-server instances matching the spec, reload
    /// on every save (and on SIGHUP), serve the endpoint and the status API.
    Serve {
        /// The spec file to follow.
        #[arg(long)]
        spec: PathBuf,
        /// Where the daemon records its children, to clean up after a crash.
        /// Default: $STATE_DIRECTORY, $XDG_STATE_HOME/rocm-llm or ~/.local/state/rocm-llm.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Quiet time after a file event before the spec is read.
        #[arg(long, default_value = "100ms", value_parser = parse_duration)]
        debounce: std::time::Duration,
        /// Log filter (also RUST_LOG), e.g. `info,llama_server=warn`.
        #[arg(long, env = "RUST_LOG", default_value = "info")]
        log: String,
        /// Where the GPU memory probes read sysfs (amdgpu's
        /// `mem_info_vram_*`, KFD's processes): `/sys`, or a copy of it in
        /// a container or a test.
        #[arg(long, default_value = "/sys")]
        sys_root: PathBuf,
    },
    /// Show the running daemon's models at a glance.
    Status {
        /// The daemon's control address.
        #[arg(long, default_value = rocm_llm::spec::DEFAULT_CONTROL)]
        control: String,
        /// Print the raw JSON of GET /status.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Keep the table on screen, refreshed in place; quit with q or Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// How often --watch refreshes.
        #[arg(long, default_value = "1s", value_parser = parse_duration, requires = "watch")]
        interval: std::time::Duration,
    },
    /// Measure the memory estimate against the real llama-server: generate
    /// models with real models' shapes (few layers, zero weights), start
    /// llama-server on each with several settings, and print a table of the
    /// estimate against the buffer sizes llama-server reports.
    MemoryReport {
        /// The llama-server to measure (default: $ROCM_LLM_LLAMA_SERVER or PATH).
        #[arg(long)]
        llama_server: Option<PathBuf>,
        /// Only shapes whose name contains this.
        #[arg(long)]
        only: Option<String>,
        /// Every setting (ctx 4k-32k, f16/q8_0, flash attention on/off,
        /// 1/4 slots) instead of the three CI settings.
        #[arg(long)]
        full: bool,
        /// Also measure this GGUF file (e.g. SmolLM2).
        #[arg(long)]
        model: Vec<PathBuf>,
        /// Write the generated models into this directory and keep them.
        #[arg(long)]
        keep: Option<PathBuf>,
        /// Pass `--gpu-layers N` (for a build with an offload device).
        #[arg(long)]
        gpu_layers: Option<u32>,
    },
    /// Write a tiny random-weight llama GGUF (~0.5 MB) for demos and tests.
    /// It loads in milliseconds and answers, in gibberish.
    DemoModel {
        /// Where to write the model.
        out: PathBuf,
        /// Seed of the random weights; different seeds give different files.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { files } => validate_files(&files),
        Command::Plan { file, json } => plan_file(&file, json),
        Command::Schema => {
            emit(&format!("{}\n", schema_json()));
            ExitCode::SUCCESS
        }
        Command::Serve {
            spec,
            state_dir,
            debounce,
            log,
            sys_root,
        } => serve::run(spec, state_dir, debounce, &log, sys_root),
        Command::Status {
            control,
            watch: true,
            interval,
            ..
        } => status_watch::run(&control, interval),
        Command::Status { control, json, .. } => status::run(&control, json),
        Command::MemoryReport {
            llama_server,
            only,
            full,
            model,
            keep,
            gpu_layers,
        } => memory_report(
            &llama_server.unwrap_or_else(default_llama_server),
            only.as_deref(),
            full,
            &model,
            keep,
            gpu_layers,
        ),
        Command::DemoModel { out, seed } => {
            let name = out
                .file_stem()
                .map_or_else(|| "tiny".to_owned(), |s| s.to_string_lossy().into_owned());
            match rocm_llm::gguf::write_tiny_llama(
                &out,
                &rocm_llm::gguf::TinyModel::with_seed(seed, &name),
            ) {
                Ok(()) => {
                    println!("{}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: cannot write {}: {e}", out.display());
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
    }
}

/// Writes to stdout; a reader that went away (`rocm-llm plan | head`) is
/// not an error worth a panic.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write to stdout: {e}");
    }
}

pub fn schema_json() -> String {
    serde_json::to_string_pretty(&rocm_llm::spec::decode::spec_schema()).unwrap_or_default()
}

/// `$ROCM_LLM_LLAMA_SERVER`, then `llama-server` on PATH, then the bare name
/// (which fails at spawn with a clear error).
pub fn default_llama_server() -> PathBuf {
    if let Some(p) = std::env::var_os("ROCM_LLM_LLAMA_SERVER").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    validate::find_on_path(Path::new("llama-server"))
        .unwrap_or_else(|| PathBuf::from("llama-server"))
}

pub enum LoadError {
    Read(String),
    Invalid { errors: SpecErrors, source: String },
}

pub fn load_spec(path: &Path) -> Result<(Desired, Fit), LoadError> {
    let bytes = std::fs::read(path)
        .map_err(|e| LoadError::Read(format!("{}: cannot read the spec: {e}", path.display())))?;
    let text = validate::spec_text(bytes, path)
        .map_err(|(errors, source)| LoadError::Invalid { errors, source })?;
    let ctx = Context {
        spec_path: path,
        default_llama_server: default_llama_server(),
        probe: &Disk,
    };
    validate::load_with_fit(&text, &ctx).map_err(|errors| LoadError::Invalid {
        errors,
        source: text,
    })
}

fn report(err: &LoadError) -> u8 {
    match err {
        LoadError::Read(message) => {
            eprintln!("error: {message}");
            EXIT_FAILURE
        }
        LoadError::Invalid { errors, source } => {
            for d in &errors.diagnostics {
                eprintln!("error: {}\n", d.render(source));
            }
            eprintln!(
                "{} error{} found",
                errors.diagnostics.len(),
                if errors.diagnostics.len() == 1 {
                    ""
                } else {
                    "s"
                }
            );
            EXIT_INVALID
        }
    }
}

/// Prints what does not stop a launch but may: an architecture this
/// llama.cpp does not know.
fn warn_models(desired: &Desired) {
    for m in desired.models.values() {
        if let Ok(checked) = rocm_llm::gguf::check_model(&m.model) {
            for w in &checked.warnings {
                eprintln!("warning: models.{}.model: {w}", m.name);
            }
        }
    }
}

fn validate_files(files: &[PathBuf]) -> ExitCode {
    let mut worst = 0;
    for file in files {
        match load_spec(file) {
            Ok((desired, fit)) => {
                warn_models(&desired);
                let enabled = desired.enabled_models().count();
                println!(
                    "{}: ok ({} model{}, {enabled} enabled)",
                    file.display(),
                    desired.models.len(),
                    if desired.models.len() == 1 { "" } else { "s" }
                );
                emit(&render_detected(&desired, &fit));
            }
            Err(e) => worst = worst.max(report(&e)),
        }
    }
    ExitCode::from(worst)
}

fn plan_file(file: &Path, json: bool) -> ExitCode {
    let (desired, fit) = match load_spec(file) {
        Ok(d) => d,
        Err(e) => return ExitCode::from(report(&e)),
    };
    warn_models(&desired);
    // Admission already asked llama-server which GPUs it sees.
    let listed = fit.machine.gpus.clone();
    if json {
        let mut value = plan_json(&desired, &listed);
        value["fit"] = fit_json(&fit);
        emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        ));
        return ExitCode::SUCCESS;
    }
    emit(&format!(
        "{}{}{}",
        render_plan(&desired, &listed),
        render_fit(&fit),
        render_diff(&desired)
    ));
    ExitCode::SUCCESS
}

fn gpus_of(listed: &[rocm_llm::memory::plan::ListedDevice]) -> Vec<rocm_llm::memory::Device> {
    listed
        .iter()
        .map(rocm_llm::memory::plan::ListedDevice::device)
        .collect()
}

/// The GPUs a model's llama-server sees: the spec-wide list, or, when the
/// model sets an `env:` (`GGML_VK_VISIBLE_DEVICES`, `HIP_VISIBLE_DEVICES`
/// change what it sees), its own, as the daemon asks it.
fn model_gpus(
    m: &rocm_llm::spec::ModelConfig,
    desired: &Desired,
    listed: &[rocm_llm::memory::Device],
) -> Vec<rocm_llm::memory::Device> {
    if m.launch.env.is_empty() {
        return listed.to_vec();
    }
    rocm_llm::memory::plan::list_devices_with_env(&desired.llama_server, &m.launch.env)
        .iter()
        .map(rocm_llm::memory::plan::ListedDevice::device)
        .collect()
}

/// The per-backend overheads the estimate adds (the spec's `memory:` block
/// will set them; until then the documented defaults).
fn desired_overheads(desired: &Desired) -> rocm_llm::memory::Overheads {
    rocm_llm::memory::Overheads::from_spec(&desired.memory.overheads)
}

fn gpu_layers_text(e: &memory::Estimate) -> String {
    if e.gpu_layers == 0 {
        "none (no GPU)".to_owned()
    } else if e.gpu_layers == e.n_layer + 1 {
        "all".to_owned()
    } else {
        format!("{} of {}", e.gpu_layers, e.n_layer + 1)
    }
}

fn parts_line(p: &memory::Parts) -> String {
    let mut s = format!(
        "weights {} + KV {} + compute {} + output {}",
        memory::human_bytes(p.weights),
        memory::human_bytes(p.kv),
        memory::human_bytes(p.compute),
        memory::human_bytes(p.output),
    );
    if p.overhead > 0 {
        s.push_str(&format!(" + overhead {}", memory::human_bytes(p.overhead)));
    }
    s.push_str(&format!(" = {}", memory::human_bytes(p.total())));
    s
}

pub fn render_plan(desired: &Desired, listed: &[rocm_llm::memory::plan::ListedDevice]) -> String {
    let gpus = gpus_of(listed);
    let mut out = String::new();
    let mut always_on: Vec<memory::Estimate> = Vec::new();
    let mut largest_on_demand: Option<(u64, &str)> = None;
    for m in desired.models.values() {
        let launch = Launch::for_model(m, &desired.llama_server);
        out.push_str(&format!(
            "# {}  (launch id {})\n",
            m.name,
            launch.identity()
        ));
        if !m.enabled {
            out.push_str("#   disabled: nothing runs\n\n");
            continue;
        }
        if m.lifecycle.on_demand {
            out.push_str("#   on demand: starts at its first request\n");
        }
        if let Some(bytes) = m.lifecycle.footprint {
            out.push_str(&format!(
                "#   declared memory: {} (admission counts it instead of the estimate)\n",
                memory::human_bytes(bytes)
            ));
        }
        match rocm_llm::memory::plan::model_estimate(
            m,
            &model_gpus(m, desired, &gpus),
            &desired_overheads(desired),
        ) {
            Ok(e) => {
                out.push_str(&format!(
                    "#   memory: {} in all; context {} cells ({} slot{}{}), flash attention {}, GPU layers {}\n",
                    memory::human_bytes(e.total_bytes()),
                    e.context,
                    e.slots,
                    if e.slots == 1 { "" } else { "s" },
                    if e.context == e.context_per_slot && e.slots > 1 {
                        ", unified"
                    } else {
                        ""
                    },
                    if e.flash_attn { "on" } else { "off" },
                    gpu_layers_text(&e),
                ));
                for (dev, p) in &e.devices {
                    if p.total() > 0 {
                        out.push_str(&format!("#     {dev}: {}\n", parts_line(p)));
                    }
                }
                if m.lifecycle.on_demand {
                    let bytes = m.lifecycle.footprint.unwrap_or_else(|| e.total_bytes());
                    if largest_on_demand.is_none_or(|(b, _)| bytes > b) {
                        largest_on_demand = Some((bytes, &m.name));
                    }
                } else {
                    always_on.push(e);
                }
            }
            Err(e) => out.push_str(&format!("#   memory: cannot be estimated: {e}\n")),
        }
        for (k, v) in &launch.env {
            out.push_str(&format!("{k}={} \\\n  ", shell_word(v)));
        }
        out.push_str(&launch.shell_line());
        out.push_str(" --host 127.0.0.1 --port <chosen at start>\n\n");
    }
    let sums = rocm_llm::memory::plan::sum_devices(&always_on);
    let total: u64 = sums.values().map(memory::Parts::total).sum();
    out.push_str(&format!(
        "# memory of the models that start at once: {}\n",
        memory::human_bytes(total)
    ));
    for (dev, p) in &sums {
        let of = listed
            .iter()
            .find(|d| d.name == *dev)
            .map(|d| {
                format!(
                    " of {} ({} free now)",
                    memory::human_bytes(d.total),
                    memory::human_bytes(d.free)
                )
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "#   {dev}: {}{of}\n",
            memory::human_bytes(p.total())
        ));
    }
    if let Some((bytes, name)) = largest_on_demand {
        out.push_str(&format!(
            "# with the largest on-demand model ({name}) loaded as well: {}\n",
            memory::human_bytes(total.saturating_add(bytes))
        ));
    }
    out
}

/// `rocm-llm plan --json`: one object; docs/memory.md documents its shape.
pub fn plan_json(
    desired: &Desired,
    listed: &[rocm_llm::memory::plan::ListedDevice],
) -> serde_json::Value {
    use serde_json::json;
    let gpus = gpus_of(listed);
    let parts_json = |p: &memory::Parts| {
        json!({
            "weights_bytes": p.weights,
            "kv_bytes": p.kv,
            "compute_bytes": p.compute,
            "output_bytes": p.output,
            "overhead_bytes": p.overhead,
            "total_bytes": p.total(),
        })
    };
    let mut models = serde_json::Map::new();
    let mut always_on = Vec::new();
    for m in desired.models.values() {
        let launch = Launch::for_model(m, &desired.llama_server);
        let mut entry = json!({
            "enabled": m.enabled,
            "on_demand": m.lifecycle.on_demand,
            "launch_id": launch.identity().0,
            "program": launch.program.display().to_string(),
            "args": launch.args,
            "env": launch.env,
            "command_line": format!("{} --host 127.0.0.1 --port <chosen at start>", launch.shell_line()),
            "memory": null,
        });
        if m.enabled {
            match rocm_llm::memory::plan::model_estimate(
                m,
                &model_gpus(m, desired, &gpus),
                &desired_overheads(desired),
            ) {
                Ok(e) => {
                    let devices: serde_json::Map<String, serde_json::Value> = e
                        .devices
                        .iter()
                        .map(|(d, p)| (d.clone(), parts_json(p)))
                        .collect();
                    entry["memory"] = json!({
                        "total_bytes": e.total_bytes(),
                        "devices": devices,
                        "context": e.context,
                        "context_per_slot": e.context_per_slot,
                        "slots": e.slots,
                        "flash_attn": e.flash_attn,
                        "gpu_layers": e.gpu_layers,
                        "layers": e.n_layer + 1,
                    });
                    if !m.lifecycle.on_demand {
                        always_on.push(e);
                    }
                }
                Err(err) => entry["memory_error"] = json!(err),
            }
        }
        models.insert(m.name.clone(), entry);
    }
    let sums = rocm_llm::memory::plan::sum_devices(&always_on);
    let devices: serde_json::Map<String, serde_json::Value> = listed
        .iter()
        .map(|d| {
            (
                d.name.clone(),
                json!({"description": d.description, "total_bytes": d.total, "free_bytes": d.free}),
            )
        })
        .collect();
    json!({
        "llama_server": desired.llama_server.display().to_string(),
        "devices": devices,
        "models": models,
        "always_on": {
            "total_bytes": sums.values().map(memory::Parts::total).sum::<u64>(),
            "devices": sums.iter().map(|(d, p)| (d.clone(), parts_json(p))).collect::<serde_json::Map<_, _>>(),
        },
    })
}

/// What `validate` says it detected, and how the budget is used.
pub fn render_detected(desired: &Desired, fit: &Fit) -> String {
    let mut out = String::new();
    let gpus: Vec<String> = fit
        .machine
        .gpus
        .iter()
        .map(|g| {
            format!(
                "{} {} ({})",
                g.name,
                g.description,
                memory::human_bytes(g.total)
            )
        })
        .collect();
    out.push_str(&format!(
        "  detected: {} lists {}; host memory {}\n",
        desired.llama_server.display(),
        if gpus.is_empty() {
            "no GPU (every model runs on the host)".to_owned()
        } else {
            gpus.join(", ")
        },
        fit.machine
            .ram_total
            .map_or_else(|| "unknown".to_owned(), memory::human_bytes),
    ));
    for b in &fit.budgets {
        out.push_str(&format!(
            "  budget {}: {} ({}); always-on models {}\n",
            b.device,
            b,
            b.source,
            memory::human_bytes(fit.always_on(&b.device))
        ));
    }
    for note in &fit.notes {
        out.push_str(&format!("  note: {note}\n"));
    }
    for (m, why) in &fit.unchecked {
        out.push_str(&format!("  not checked: {m}: {why}\n"));
    }
    out
}

/// The fit table `plan` prints: each device's budget and each enabled
/// model's footprint on it.
pub fn render_fit(fit: &Fit) -> String {
    let mut out = String::from("\n# memory budget (admission, docs/scheduler.md):\n");
    for b in &fit.budgets {
        let used = fit.always_on(&b.device);
        out.push_str(&format!(
            "#   {}: {}, {}; always-on {}, {} left beside them\n",
            b.device,
            b,
            b.source,
            memory::human_bytes(used),
            memory::human_bytes(b.available().saturating_sub(used)),
        ));
    }
    if fit.budgets.is_empty() {
        out.push_str("#   no budget known: nothing is checked\n");
    }
    let devices: Vec<&str> = fit.budgets.iter().map(|b| b.device.as_str()).collect();
    let mut rows = vec![{
        let mut h = vec![
            "model".to_owned(),
            "kind".to_owned(),
            "priority".to_owned(),
            "from".to_owned(),
        ];
        h.extend(devices.iter().map(|d| (*d).to_owned()));
        h.push("fits".to_owned());
        h
    }];
    for f in &fit.footprints {
        let mut row = vec![
            f.model.clone(),
            if f.always_on {
                "always-on"
            } else {
                "on demand"
            }
            .to_owned(),
            f.priority.to_string(),
            f.source.to_owned(),
        ];
        row.extend(devices.iter().map(|d| {
            let b = f.on(d);
            if b == 0 {
                "-".to_owned()
            } else {
                memory::human_bytes(b)
            }
        }));
        let shorts: Vec<String> = fit
            .shortfalls
            .iter()
            .filter(|s| s.members.iter().any(|(m, _)| *m == f.model))
            .map(|s| format!("short by {} on {}", memory::human_bytes(s.short), s.device))
            .collect();
        row.push(if !shorts.is_empty() {
            shorts.join(", ")
        } else if f.always_on {
            "yes".to_owned()
        } else {
            "yes, beside the always-on models".to_owned()
        });
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(&format!("#   {}\n", cells.join("  ").trim_end()));
    }
    for (m, why) in &fit.unchecked {
        out.push_str(&format!("#   {m}: not checked: {why}\n"));
    }
    // On-demand models that cannot be loaded together.
    let on_demand: Vec<_> = fit.footprints.iter().filter(|f| !f.always_on).collect();
    for (i, a) in on_demand.iter().enumerate() {
        for b in &on_demand[i + 1..] {
            for budget in &fit.budgets {
                let d = budget.device.as_str();
                let need = fit.always_on(d) + a.on(d) + b.on(d);
                if a.on(d) > 0 && b.on(d) > 0 && need > budget.available() {
                    out.push_str(&format!(
                        "#   {} and {} do not fit together on {} (short by {}): they take turns: the daemon stops the idle one (or, once its turn is over, the busy one after its requests finish) before the other loads (docs/scheduler.md)\n",
                        a.model,
                        b.model,
                        d,
                        memory::human_bytes(need - budget.available())
                    ));
                }
            }
        }
    }
    for note in &fit.notes {
        out.push_str(&format!("#   note: {note}\n"));
    }
    out
}

/// `plan --json`'s `fit` (docs/scheduler.md).
pub fn fit_json(fit: &Fit) -> serde_json::Value {
    use serde_json::json;
    json!({
        "budgets": fit.budgets.iter().map(|b| json!({
            "device": b.device,
            "total_bytes": b.total,
            "reserve_bytes": b.reserve,
            "available_bytes": b.available(),
            "source": b.source,
            "always_on_bytes": fit.always_on(&b.device),
        })).collect::<Vec<_>>(),
        "models": fit.footprints.iter().map(|f| (f.model.clone(), json!({
            "always_on": f.always_on,
            "priority": f.priority,
            "source": f.source,
            "devices": f.devices,
        }))).collect::<serde_json::Map<_, _>>(),
        "unchecked": fit.unchecked.iter().map(|(m, why)| json!({"model": m, "reason": why})).collect::<Vec<_>>(),
        "notes": fit.notes,
        "shortfalls": fit.shortfalls.iter().map(|s| json!({
            "model": s.model,
            "kind": s.kind,
            "device": s.device,
            "short_bytes": s.short,
            "members": s.members.iter().map(|(m, b)| json!({"model": m, "bytes": b})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// What the running daemon (if one answers on the spec's control address)
/// would do with this spec, or what a fresh daemon would.
pub fn render_diff(desired: &Desired) -> String {
    let control = desired.control.to_string();
    let (observed, header) = match status::status(&control).ok() {
        Some(status) => {
            let observed: plan::Observed = status
                .models
                .into_iter()
                // What the owner works towards, as the daemon plans.
                .map(|(name, m)| (name, plan::LaunchId(m.target_launch_id)))
                .collect();
            let generation = status.daemon.generation;
            (
                observed,
                format!("# against the daemon at {control} (spec generation {generation}):\n"),
            )
        }
        None => (
            plan::Observed::new(),
            format!("# no daemon answers at {control}; from nothing running, the daemon would:\n"),
        ),
    };
    let mut out = header;
    let actions = plan::plan(desired, &observed);
    if plan::is_noop(&actions) {
        out.push_str("#   nothing to do\n");
    }
    for a in actions {
        out.push_str(&format!("#   {a}\n"));
    }
    out
}

fn shell_word(s: &str) -> String {
    Launch {
        program: PathBuf::from(s),
        args: vec![],
        env: Default::default(),
        working_dir: PathBuf::new(),
    }
    .shell_line()
}

fn memory_report(
    server: &Path,
    only: Option<&str>,
    full: bool,
    models: &[PathBuf],
    keep: Option<PathBuf>,
    gpu_layers: Option<u32>,
) -> ExitCode {
    use rocm_llm::memory::accuracy;
    let keeping = keep.is_some();
    let dir = match keep.map_or_else(tempfile_dir, |d| {
        std::fs::create_dir_all(&d)
            .map(|()| d)
            .map_err(|e| e.to_string())
    }) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let mut settings = if full {
        accuracy::full_settings()
    } else {
        accuracy::ci_settings()
    };
    for s in &mut settings {
        s.gpu_layers = gpu_layers;
    }
    let mut results = Vec::new();
    let mut failed = false;
    let port = 18000 + (std::process::id() % 1000) as u16;
    let mut run = |name: &str, r: Result<accuracy::CaseResult, String>| match r {
        Ok(r) => {
            eprintln!("{} {}: {:+.1} %", r.model, r.settings, r.error() * 100.0);
            results.push(r);
        }
        Err(e) => {
            eprintln!("error: {name}: {e}");
            failed = true;
        }
    };
    for shape in rocm_llm::gguf::shapes::real_shapes() {
        if only.is_some_and(|o| !shape.name.contains(o)) {
            continue;
        }
        for s in &settings {
            let r = accuracy::run_case(server, &dir, &shape, s, port);
            run(shape.name, r);
        }
        if !keeping {
            let _ = std::fs::remove_file(dir.join(format!("{}.gguf", shape.name)));
        }
    }
    for m in models {
        let name = m
            .file_stem()
            .map_or_else(|| "model".to_owned(), |s| s.to_string_lossy().into_owned());
        for s in &settings {
            let r = accuracy::run_file_case(server, m, &name, s, port);
            run(&name, r);
        }
    }
    if !keeping {
        let _ = std::fs::remove_dir_all(&dir);
    }
    emit(&accuracy::render_table(&results));
    if let Some(worst) = results
        .iter()
        .max_by(|a, b| a.error().abs().total_cmp(&b.error().abs()))
    {
        emit(&format!(
            "\nworst: {} {}: {:+.1} %; {} of {} cases within +5 %/-2 %\n",
            worst.model,
            worst.settings,
            worst.error() * 100.0,
            results
                .iter()
                .filter(|r| (-0.02..=0.05).contains(&r.error()))
                .count(),
            results.len()
        ));
    }
    if failed {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("rocm-llm-memory-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}
