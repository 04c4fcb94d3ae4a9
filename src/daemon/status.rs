//! The status API on the control address: `GET /status` (JSON),
//! `GET /healthz`, `GET /metrics` (Prometheus text).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::DaemonInfo;
use crate::http::auth::AuthError;
use crate::http::browser::{self, Verdict};
use crate::http::prometheus::{escape_label, write_family};
use crate::proxy::routes::Routes;
use crate::supervisor::Snapshot;

#[derive(Clone)]
pub struct StatusState {
    pub info: tokio::sync::watch::Receiver<DaemonInfo>,
    pub routes: tokio::sync::watch::Receiver<Arc<Routes>>,
    /// The proxy's per-model series, appended to `/metrics`.
    pub proxy: Arc<crate::proxy::ProxyMetrics>,
    /// What the status page needs besides (state since, reload history).
    pub page: Arc<crate::daemon::status_page::Observer>,
    /// The memory arbiter's ledger, budgets and counters.
    pub scheduler: tokio::sync::watch::Receiver<crate::schedule::arbiter::MemoryReport>,
    /// Where the GPU probes look (the daemon's `--sys-root`).
    pub probe_roots: crate::memory::probe::ProbeRoots,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastRestart {
    pub at: f64,
    pub reason: String,
}

/// One model in `GET /status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelStatus {
    pub state: crate::supervisor::State,
    /// Idle because the operator stopped it (until started again, an edit
    /// of its launch, or a daemon restart).
    pub stopped_by_operator: bool,
    pub pid: Option<i32>,
    pub port: Option<u16>,
    /// The launch the running process was started with.
    pub launch_id: String,
    /// The launch the spec asks for; differs while a replacement loads.
    pub target_launch_id: String,
    /// Seconds since the Unix epoch.
    pub started_at: Option<f64>,
    pub ready_ms: Option<f64>,
    pub restarts: u64,
    pub last_error: Option<String>,
    /// Why and when (seconds since the epoch) it was last restarted
    /// unasked: a crash, a failed start, or a hung process replaced.
    pub last_restart: Option<LastRestart>,
    pub aliases: Vec<String>,
    pub on_demand: bool,
    pub in_flight: usize,
    pub waiting: usize,
    pub drained: u64,
    pub cut: u64,
    /// What the current run's output says is amiss, e.g. "the ROCm build
    /// found no GPU; running on the CPU" (see `supervisor::logs::warning_in`).
    pub warnings: Vec<String>,
    pub log: Vec<String>,
    /// What the instance holds: as llama-server reported it, and as the
    /// GPU drivers see its process.
    pub memory: ModelMemory,
    /// Seconds since the epoch when it entered `state`.
    pub state_since: Option<f64>,
    /// How far a starting llama-server has got (see
    /// `supervisor::progress`); `None` unless one is loading.
    pub progress: Option<crate::supervisor::progress::LoadProgress>,
    /// An on-demand model stops after this long idle (seconds).
    pub idle_timeout_s: Option<f64>,
    /// How long the serving instance has had no request (seconds).
    pub idle_for_s: Option<f64>,
    /// The processes the owner started (the last 32), with spawn and exit
    /// times in seconds since the epoch.
    pub launches: Vec<crate::supervisor::LaunchRecord>,
}

/// Measured memory of one model's instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMemory {
    /// The buffer sizes llama-server printed at load, per device (`CPU` is
    /// the host); empty until they arrive, or when its log verbosity is
    /// below 4.
    pub log_devices: std::collections::BTreeMap<String, crate::memory::Parts>,
    /// Their sum.
    pub log_total_bytes: u64,
    /// GPU memory the process holds (amdgpu KFD or DRM fdinfo, nvidia-smi);
    /// `None` without a running process.
    pub gpu_bytes: Option<u64>,
    /// What rocm-llm estimated the model takes per device, as `plan` shows
    /// it; `None` while it is being made or when it cannot be.
    pub estimate: Option<EstimateReport>,
    /// Why there is no estimate (an unreadable model, an unknown shape).
    pub estimate_error: Option<String>,
    /// What the memory arbiter holds for it, per device (all its
    /// processes, releasing ones included).
    #[serde(default)]
    pub reserved: std::collections::BTreeMap<String, u64>,
    /// Set while its start waits for memory: the models holding it.
    #[serde(default)]
    pub waiting_for: Option<Vec<String>>,
    /// Why its last start was refused for lack of memory, until one succeeds.
    #[serde(default)]
    pub refused: Option<String>,
    /// When memory is short, lower priorities yield first.
    #[serde(default)]
    pub priority: i32,
    /// Times it was stopped to make room for another model.
    #[serde(default)]
    pub made_room: u64,
    /// The last `blue_green` swap done `stop_first` for lack of memory.
    #[serde(default)]
    pub swap_fallback: Option<String>,
}

/// The estimate in `GET /status`: per device the same parts as
/// `log_devices`, plus the backend's overhead.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EstimateReport {
    pub total_bytes: u64,
    #[serde(flatten)]
    pub estimate: crate::memory::Estimate,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    #[serde(flatten)]
    pub daemon: DaemonInfo,
    pub models: std::collections::BTreeMap<String, ModelStatus>,
    /// Each GPU's memory as its driver reports it (amdgpu sysfs,
    /// nvidia-smi); empty without one.
    pub devices: Vec<crate::memory::probe::DeviceMemory>,
    /// The latest reloads, newest first, with errors rendered against the
    /// spec's source.
    pub reload_history: Vec<crate::daemon::status_page::ReloadRecord>,
    /// The memory budget at run time: per device budget, reserved,
    /// measured and free; per model what it holds and what it waits for;
    /// the scheduler's counters (docs/scheduler.md).
    #[serde(default)]
    pub scheduler: crate::schedule::arbiter::MemoryReport,
}

/// `State` is read back as it is written (`snake_case`, as
/// [`State::as_str`]); the derive stays off `supervisor`, which has no use
/// for reading it.
impl<'de> Deserialize<'de> for crate::supervisor::State {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        ALL_STATES
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown model state `{text}`")))
    }
}

/// Every [`crate::supervisor::State`], for reading one back by name.
const ALL_STATES: [crate::supervisor::State; 8] = {
    use crate::supervisor::State::*;
    [
        Idle, Starting, Ready, Swapping, Backoff, Failed, Stopping, Stopped,
    ]
};

/// Fails to compile when `State` gains a variant that [`ALL_STATES`] lacks.
const _: fn(crate::supervisor::State) = |s| {
    use crate::supervisor::State::*;
    match s {
        Idle | Starting | Ready | Swapping | Backoff | Failed | Stopping | Stopped => {}
    }
};

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn model_status(
    snap: &Snapshot,
    entry: &crate::proxy::routes::RouteEntry,
    probes: &Probes,
    since: Option<SystemTime>,
    holding: Option<&crate::schedule::arbiter::Holding>,
) -> ModelStatus {
    let loading = matches!(
        snap.state,
        crate::supervisor::State::Starting | crate::supervisor::State::Swapping
    ) && snap.ready_after.is_none();
    let progress = snap.pid.filter(|_| loading).map(|pid| {
        let run = crate::supervisor::progress::current_run(&entry.handle.logs().snapshot());
        crate::supervisor::progress::read(std::path::Path::new("/proc"), pid, &run)
    });
    let usage = entry.handle.logs().memory();
    let (estimate, estimate_error) = match entry.memory.get() {
        Some(Ok(e)) => (
            Some(EstimateReport {
                total_bytes: e.total_bytes(),
                estimate: e,
            }),
            None,
        ),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let memory = ModelMemory {
        estimate,
        estimate_error,
        log_total_bytes: usage.total(),
        log_devices: usage.devices,
        gpu_bytes: snap
            .pid
            .and_then(|p| u32::try_from(p).ok())
            .map(|pid| crate::memory::probe::process_gpu_bytes(&probes.roots, pid, &probes.nvidia)),
        reserved: holding.map(|h| h.reserved.clone()).unwrap_or_default(),
        // Only while it is starting: a reservation answered a moment ago
        // is not a wait.
        waiting_for: holding.and_then(|h| h.waiting_for.clone()).filter(|_| {
            snap.state == crate::supervisor::State::Starting
                || snap.state == crate::supervisor::State::Swapping
        }),
        refused: holding.and_then(|h| h.refused.clone()),
        priority: snap.priority,
        made_room: snap.made_room,
        swap_fallback: snap.swap_fallback.clone(),
    };
    ModelStatus {
        memory,
        state: snap.state,
        stopped_by_operator: snap.stopped_by_operator,
        pid: snap.pid,
        port: snap.port,
        launch_id: snap.launch_id.to_string(),
        target_launch_id: snap.target_launch_id.to_string(),
        started_at: snap.started_at.map(epoch_secs),
        ready_ms: snap.ready_after.map(|d| d.as_secs_f64() * 1000.0),
        restarts: snap.restarts,
        last_error: snap.last_error.clone(),
        last_restart: snap.last_restart.as_ref().map(|(at, reason)| LastRestart {
            at: epoch_secs(*at),
            reason: reason.clone(),
        }),
        aliases: entry.aliases.clone(),
        on_demand: entry.on_demand,
        in_flight: snap.serving.as_ref().map_or(0, |g| g.in_flight()),
        waiting: entry.handle.waiting(),
        drained: snap.drained,
        cut: snap.cut,
        warnings: entry.handle.logs().warnings(),
        log: entry.handle.logs().tail_text(20),
        state_since: since.map(epoch_secs),
        progress,
        idle_timeout_s: entry
            .idle_timeout
            .filter(|_| entry.on_demand)
            .map(|d| d.as_secs_f64()),
        idle_for_s: snap.serving.as_ref().map(|g| g.idle_for().as_secs_f64()),
        launches: entry.handle.launches(),
    }
}

/// One reading of the GPU probes, shared by every model of a report.
#[derive(Clone)]
pub struct Probes {
    pub roots: crate::memory::probe::ProbeRoots,
    pub devices: Vec<crate::memory::probe::DeviceMemory>,
    pub nvidia: std::collections::BTreeMap<u32, u64>,
}

impl Probes {
    /// Reads `/sys`, `/proc` and `nvidia-smi` (each quick to fail without
    /// such a GPU; nvidia-smi is bounded to 10 s).
    pub fn read(roots: crate::memory::probe::ProbeRoots) -> Probes {
        Probes {
            devices: crate::memory::probe::devices(&roots),
            nvidia: crate::memory::probe::nvidia_processes(&roots.nvidia_smi),
            roots,
        }
    }

    /// [`Probes::read`] of `roots`, at most once a second: a client
    /// polling `/status` does not run `nvidia-smi` at its pace.
    pub fn read_cached(roots: &crate::memory::probe::ProbeRoots) -> Probes {
        use std::sync::Mutex;
        use std::time::{Duration, Instant};
        static LAST: Mutex<Option<(Instant, Probes)>> = Mutex::new(None);
        let mut last = LAST
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, p)) = last.as_ref()
            && at.elapsed() < Duration::from_secs(1)
            && p.roots == *roots
        {
            return p.clone();
        }
        let p = Probes::read(roots.clone());
        *last = Some((Instant::now(), p.clone()));
        p
    }
}

/// `GET /status`, with one reading of the GPU probes for every model.
pub fn report(state: &StatusState, probes: Probes) -> StatusReport {
    let routes = state.routes.borrow().clone();
    let scheduler = state.scheduler.borrow().clone();
    let models = routes
        .models
        .iter()
        .map(|(name, entry)| {
            (
                name.clone(),
                model_status(
                    &entry.handle.snapshot(),
                    entry,
                    &probes,
                    state.page.since(name),
                    scheduler.models.get(name),
                ),
            )
        })
        .collect();
    StatusReport {
        daemon: state.info.borrow().clone(),
        models,
        devices: probes.devices,
        reload_history: state.page.history(),
        scheduler,
    }
}

/// Per-model series in Prometheus text; the proxy adds its own.
pub fn metrics(state: &StatusState, probes: Probes) -> String {
    let routes = state.routes.borrow().clone();
    let info = state.info.borrow().clone();
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
        write_family(&mut out, name, kind, help, rows);
    };
    let per_model = |f: &dyn Fn(&Snapshot) -> String| -> Vec<(String, String)> {
        routes
            .models
            .iter()
            .map(|(name, e)| {
                (
                    format!("{{model=\"{}\"}}", escape_label(name)),
                    f(&e.handle.snapshot()),
                )
            })
            .collect()
    };
    family(
        "rocm_llm_model_up",
        "gauge",
        "1 when the model's llama-server is ready.",
        per_model(&|s| u8::from(s.serving.is_some()).to_string()),
    );
    family(
        "rocm_llm_model_restarts_total",
        "counter",
        "Unplanned restarts (crashes and failed starts).",
        per_model(&|s| s.restarts.to_string()),
    );
    family(
        "rocm_llm_model_ready_seconds",
        "gauge",
        "Spawn to ready of the current instance.",
        per_model(&|s| {
            s.ready_after
                .map_or("NaN".into(), |d| format!("{:.6}", d.as_secs_f64()))
        }),
    );
    family(
        "rocm_llm_model_in_flight",
        "gauge",
        "Requests in flight.",
        per_model(&|s| s.serving.as_ref().map_or(0, |g| g.in_flight()).to_string()),
    );
    family(
        "rocm_llm_model_drained_requests_total",
        "counter",
        "Requests that finished while their instance drained.",
        per_model(&|s| s.drained.to_string()),
    );
    family(
        "rocm_llm_model_cut_requests_total",
        "counter",
        "Requests cut because a drain timed out.",
        per_model(&|s| s.cut.to_string()),
    );
    let mut memory_rows = Vec::new();
    for (name, e) in &routes.models {
        for (device, p) in e.handle.logs().memory().devices {
            for (part, bytes) in [
                ("weights", p.weights),
                ("kv", p.kv),
                ("compute", p.compute),
                ("output", p.output),
            ] {
                memory_rows.push((
                    format!(
                        "{{model=\"{}\",device=\"{}\",part=\"{part}\"}}",
                        escape_label(name),
                        escape_label(&device)
                    ),
                    bytes.to_string(),
                ));
            }
        }
    }
    family(
        "rocm_llm_model_memory_bytes",
        "gauge",
        "Buffers the model's llama-server reported at load, by device and part.",
        memory_rows,
    );
    let mut estimate_rows = Vec::new();
    for (name, e) in &routes.models {
        let Some(Ok(estimate)) = e.memory.get() else {
            continue;
        };
        for (device, p) in &estimate.devices {
            for (part, bytes) in [
                ("weights", p.weights),
                ("kv", p.kv),
                ("compute", p.compute),
                ("output", p.output),
                ("overhead", p.overhead),
            ] {
                estimate_rows.push((
                    format!(
                        "{{model=\"{}\",device=\"{}\",part=\"{part}\"}}",
                        escape_label(name),
                        escape_label(device)
                    ),
                    bytes.to_string(),
                ));
            }
        }
    }
    family(
        "rocm_llm_model_memory_estimate_bytes",
        "gauge",
        "What rocm-llm estimates the model takes, by device and part (as `rocm-llm plan`).",
        estimate_rows,
    );
    family(
        "rocm_llm_model_gpu_bytes",
        "gauge",
        "GPU memory the model's process holds (amdgpu KFD/fdinfo, nvidia-smi).",
        routes
            .models
            .iter()
            .filter_map(|(name, e)| {
                let pid = u32::try_from(e.handle.snapshot().pid?).ok()?;
                Some((
                    format!("{{model=\"{}\"}}", escape_label(name)),
                    crate::memory::probe::process_gpu_bytes(&probes.roots, pid, &probes.nvidia)
                        .to_string(),
                ))
            })
            .collect(),
    );
    let mut device_rows = Vec::new();
    for d in &probes.devices {
        for (kind, bytes) in [("total", d.total), ("used", d.used), ("free", d.free())] {
            device_rows.push((
                format!("{{device=\"{}\",kind=\"{kind}\"}}", escape_label(&d.name)),
                bytes.to_string(),
            ));
        }
    }
    family(
        "rocm_llm_device_memory_bytes",
        "gauge",
        "Each GPU's memory as its driver reports it.",
        device_rows,
    );
    let scheduler = state.scheduler.borrow().clone();
    let mut budget_rows = Vec::new();
    for d in &scheduler.devices {
        for (kind, bytes) in [
            ("budget", d.budget_bytes),
            ("reserved", d.reserved_bytes),
            ("measured", d.measured_bytes),
            ("free", d.free_bytes),
        ] {
            budget_rows.push((
                format!("{{device=\"{}\",kind=\"{kind}\"}}", escape_label(&d.device)),
                bytes.to_string(),
            ));
        }
    }
    family(
        "rocm_llm_memory_budget_bytes",
        "gauge",
        "The scheduler's memory budget per llama.cpp device: budget (total minus reserve), reserved, measured and free.",
        budget_rows,
    );
    let mut reserved_rows = Vec::new();
    let mut waiting_rows = Vec::new();
    for name in routes.models.keys() {
        let h = scheduler.models.get(name);
        for (device, bytes) in h.map(|h| h.reserved.clone()).unwrap_or_default() {
            reserved_rows.push((
                format!(
                    "{{model=\"{}\",device=\"{}\"}}",
                    escape_label(name),
                    escape_label(&device)
                ),
                bytes.to_string(),
            ));
        }
        waiting_rows.push((
            format!("{{model=\"{}\"}}", escape_label(name)),
            u8::from(h.is_some_and(|h| h.waiting_for.is_some())).to_string(),
        ));
    }
    family(
        "rocm_llm_model_memory_reserved_bytes",
        "gauge",
        "What the memory arbiter holds for the model, by device.",
        reserved_rows,
    );
    family(
        "rocm_llm_model_waiting_for_memory",
        "gauge",
        "1 while the model's start waits for memory held by other models.",
        waiting_rows,
    );
    let c = scheduler.counters;
    for (name, help, value) in [
        (
            "rocm_llm_scheduler_evictions_total",
            "Idle on-demand models stopped to make room.",
            c.evictions,
        ),
        (
            "rocm_llm_scheduler_yields_total",
            "Busy models whose turn ran out, drained and stopped for a waiting one.",
            c.yields,
        ),
        (
            "rocm_llm_scheduler_refused_total",
            "Starts refused at once because the model cannot fit now.",
            c.refused,
        ),
        (
            "rocm_llm_scheduler_memory_waits_total",
            "Starts that waited for memory.",
            c.waits,
        ),
        (
            "rocm_llm_scheduler_swaps_total",
            "Starts that needed other models stopped first.",
            c.swaps,
        ),
        (
            "rocm_llm_scheduler_blue_green_fallbacks_total",
            "blue_green swaps done stop_first because both did not fit.",
            c.fallbacks,
        ),
        (
            "rocm_llm_scheduler_free_wait_timeouts_total",
            "Waits for a stopped model's memory to be seen free that ran out of time.",
            c.free_timeouts,
        ),
    ] {
        family(
            name,
            "counter",
            help,
            vec![(String::new(), value.to_string())],
        );
    }
    family(
        "rocm_llm_reloads_total",
        "counter",
        "Spec versions applied.",
        vec![(String::new(), info.reloads.to_string())],
    );
    family(
        "rocm_llm_reload_errors_total",
        "counter",
        "Spec reloads rejected (invalid, unreadable or deleted).",
        vec![(String::new(), info.reload_errors.to_string())],
    );
    family(
        "rocm_llm_spec_generation",
        "gauge",
        "The applied spec generation.",
        vec![(String::new(), info.generation.to_string())],
    );
    out.push_str(&state.proxy.render());
    out
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Responses of the control address: whole, or streamed (`/events`).
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

async fn handle(
    state: StatusState,
    req: Request<Incoming>,
    local: std::net::SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let access = state.routes.borrow().browser.clone();
    let cors = match browser::check(&access, req.method(), req.headers(), local) {
        Verdict::Serve { cors } => cors,
        Verdict::Preflight { origin, headers } => {
            let mut r = respond(StatusCode::NO_CONTENT, "text/plain", String::new());
            r.headers_mut()
                .extend(browser::preflight_headers(origin, headers));
            return Ok(r.map(BodyExt::boxed_unsync));
        }
        Verdict::Forbidden { message, .. } => {
            return Ok(
                respond(StatusCode::FORBIDDEN, "text/plain", format!("{message}\n"))
                    .map(BodyExt::boxed_unsync),
            );
        }
    };
    let mut response = route(&state, &req).await;
    if let Some(origin) = cors {
        browser::add_cors_headers(response.headers_mut(), origin);
    }
    Ok(response)
}

async fn route(state: &StatusState, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if let Some(page) = crate::daemon::status_page::asset(req.method(), path) {
        return page.map(BodyExt::boxed_unsync);
    }
    if crate::daemon::status_page::is_public(path) {
        return route_whole(state, req).await.map(BodyExt::boxed_unsync);
    }
    // One table for the key and the action's owner.
    let routes = state.routes.borrow().clone();
    if routes.key.check(req.headers()).is_err() {
        return route_whole(state, req).await.map(BodyExt::boxed_unsync);
    }
    if path == "/events" && req.method() == Method::GET {
        let mut r =
            Response::new(crate::daemon::status_page::events::stream(state.clone()).boxed_unsync());
        let h = r.headers_mut();
        h.insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/event-stream"),
        );
        h.insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static("no-cache"),
        );
        return r;
    }
    if let Some(r) =
        crate::daemon::status_page::action(&routes, req.method(), path, req.headers()).await
    {
        return r.map(BodyExt::boxed_unsync);
    }
    route_whole(state, req).await.map(BodyExt::boxed_unsync)
}

async fn route_whole(state: &StatusState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if !crate::daemon::status_page::is_public(req.uri().path()) {
        let checked = state.routes.borrow().key.check(req.headers());
        match checked {
            Ok(()) => {}
            Err(AuthError::Unauthorized) => {
                let mut r = respond(
                    StatusCode::UNAUTHORIZED,
                    "text/plain",
                    "missing or wrong API key: send `Authorization: Bearer <key>`\n".into(),
                );
                r.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static("Bearer"),
                );
                return r;
            }
            Err(AuthError::Unavailable(reason)) => {
                return respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("{reason}\n"),
                );
            }
        }
    }
    // The GPU probes read sysfs and may run nvidia-smi: off the async
    // threads.
    let probes = match (req.method(), req.uri().path()) {
        (&Method::GET, "/status" | "/metrics") => {
            let roots = state.probe_roots.clone();
            tokio::task::spawn_blocking(move || Probes::read_cached(&roots))
                .await
                .ok()
        }
        _ => None,
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/status") => match serde_json::to_string_pretty(&report(
            state,
            probes.unwrap_or_else(|| Probes::read(state.probe_roots.clone())),
        )) {
            Ok(json) => respond(StatusCode::OK, "application/json", json),
            Err(e) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            ),
        },
        (&Method::GET, "/metrics") => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics(
                state,
                probes.unwrap_or_else(|| Probes::read(state.probe_roots.clone())),
            ),
        ),
        (_, "/healthz" | "/status" | "/metrics" | "/events") => respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /, /status, /events, /healthz or /metrics\n".into(),
        ),
    }
}

pub async fn serve(listener: TcpListener, state: StatusState, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("status API accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let state = state.clone();
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req, local));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
