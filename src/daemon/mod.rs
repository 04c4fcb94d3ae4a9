//! `rocm-llm serve`: the reconcile loop.
//!
//! Two levels of events, each a closed set handled in one `match`:
//! - this loop's [`DaemonEvent`]s: the spec changed (or SIGHUP asked for a
//!   reload), and shutdown;
//! - each model owner's events (instance ready, exited, probe results,
//!   timers), in [`crate::supervisor::instance`].
//!
//! A reload is: read, validate (all or nothing), plan against what the
//! owners run, hand each owner its new spec, publish the new routes. An
//! invalid spec changes nothing that runs; the error stays in the status
//! until a valid edit arrives.

pub mod client;
pub mod sdnotify;
pub mod status;
pub mod status_page;
pub mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::http::auth::ApiKey;
use crate::plan::{self, ActionKind};
use crate::proxy::{
    self,
    routes::{RouteEntry, Routes},
};
use crate::schedule::admission::Fit;
use crate::schedule::arbiter::{Arbiter, FreeWatch};
use crate::schedule::measured::Measured;
use crate::spec::validate::{self, Context, Disk};
use crate::spec::{DEFAULT_CONTROL, DEFAULT_LISTEN, Desired};
use crate::supervisor::{
    Backoff, BackoffPolicy, InstanceHandle, InstanceSpec, StateFile, reap_leftovers, start_instance,
};
use sdnotify::SdNotify;
use watch::{SpecRead, WatchTiming};

/// How the daemon is started.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub spec_path: PathBuf,
    pub state_dir: PathBuf,
    /// The llama-server used when the spec names none.
    pub default_llama_server: PathBuf,
    pub watch: WatchTiming,
    /// Grace for stopping children left by an earlier run.
    pub leftover_grace: Duration,
    pub backoff: BackoffPolicy,
    /// Where the GPU probes look (`/sys`, `/proc`, `nvidia-smi`): fixture
    /// trees in tests.
    pub probe_roots: crate::memory::probe::ProbeRoots,
}

/// The result of the latest reload, as the status API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub ok: bool,
    pub at: SystemTime,
    /// `file:line:column: path: message` for each mistake, or the reason
    /// the spec could not be read.
    pub errors: Vec<String>,
    /// What the reload did, e.g. `restart qwen`.
    pub actions: Vec<String>,
}

/// What the status API shows besides the models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub spec: PathBuf,
    /// Applied spec versions; 1 after the first successful load.
    pub generation: u64,
    pub last_reload: Option<ReloadReport>,
    pub reloads: u64,
    pub reload_errors: u64,
    pub listen: SocketAddr,
    pub control: SocketAddr,
    /// The file holding the API key, if the spec names one (read again
    /// inside every reload, and published with the routes it guards).
    pub api_key_file: Option<PathBuf>,
}

/// A spec read and validated once: what a reload acts on.
enum CheckedSpec {
    /// With what admission found: the budgets and each model's footprint.
    Valid(Desired, Box<Fit>),
    /// Nothing is applied. `partial` (absent when the file could not be
    /// read) still says where to listen and which key guards the endpoint.
    Invalid {
        partial: Option<Desired>,
        errors: Vec<String>,
    },
}

impl CheckedSpec {
    /// Where to listen and which key file to read, for the first start.
    fn addresses(&self) -> (SocketAddr, SocketAddr, Option<PathBuf>) {
        match self {
            CheckedSpec::Valid(d, _)
            | CheckedSpec::Invalid {
                partial: Some(d), ..
            } => (d.listen, d.control, d.api_key_file.clone()),
            CheckedSpec::Invalid { partial: None, .. } => (
                default_addr(DEFAULT_LISTEN),
                default_addr(DEFAULT_CONTROL),
                None,
            ),
        }
    }
}

enum DaemonEvent {
    SpecChanged(SpecRead),
    /// SIGHUP: read the spec again, whether or not it changed.
    Reload,
    Shutdown,
}

struct Daemon {
    options: ServeOptions,
    /// The restart policy, checked once at start; each owner gets a copy.
    backoff: Backoff,
    state_file: StateFile,
    owners: BTreeMap<String, InstanceHandle>,
    /// Owners shutting down, by model, so a re-added model waits for its
    /// predecessor and there are never two instances of one model.
    leaving: BTreeMap<String, tokio::task::JoinHandle<()>>,
    applied: Option<Desired>,
    /// The key published with the current routes.
    key: ApiKey,
    info: DaemonInfo,
    info_tx: tokio::sync::watch::Sender<DaemonInfo>,
    routes_tx: tokio::sync::watch::Sender<Arc<Routes>>,
    notify: SdNotify,
    /// The one arbiter of memory every owner reserves through.
    arbiter: Arbiter,
    /// What admission found at the last valid reload.
    fit: Fit,
}

/// Why the daemon could not start. Once it runs, nothing stops it but a
/// shutdown: bad specs, failed children and broken clients are reported
/// and outlived.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid restart backoff policy: {0}")]
    Backoff(#[from] crate::supervisor::BackoffError),
    #[error("cannot create the state directory {}: {source}", path.display())]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs the daemon until `shutdown` is cancelled (or SIGTERM/SIGINT).
pub async fn serve(options: ServeOptions, shutdown: CancellationToken) -> Result<(), ServeError> {
    let backoff = Backoff::new(options.backoff)?;
    let notify = SdNotify::from_env().unwrap_or_else(|e| {
        tracing::warn!("NOTIFY_SOCKET is unusable ({e}); not notifying systemd");
        SdNotify::disabled()
    });
    std::fs::create_dir_all(&options.state_dir).map_err(|source| ServeError::StateDir {
        path: options.state_dir.clone(),
        source,
    })?;
    for leftover in reap_leftovers(&options.state_dir, options.leftover_grace).await {
        tracing::warn!("an earlier run left llama-server behind: {leftover:?}");
    }
    let state_file = StateFile::new(&options.state_dir);

    // Watch before the first read, so an edit saved while the daemon starts
    // is never missed.
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (spec_tx, mut spec_rx) = mpsc::unbounded_channel();
    let _watcher = match watch::watch_spec(&options.spec_path, options.watch, spec_tx) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!("{e}; edits will only be picked up on SIGHUP");
            None
        }
    };
    let first = check_spec(&options, watch::read_spec(&options.spec_path));
    let (listen, control, api_key_file) = first.addresses();
    let info = DaemonInfo {
        spec: options.spec_path.clone(),
        generation: 0,
        last_reload: None,
        reloads: 0,
        reload_errors: 0,
        listen,
        control,
        api_key_file: api_key_file.clone(),
    };
    let (info_tx, info_rx) = tokio::sync::watch::channel(info.clone());
    let key = ApiKey::load(api_key_file.as_deref());
    let (routes_tx, routes_rx) = tokio::sync::watch::channel(Arc::new(Routes {
        key: key.clone(),
        ..Routes::default()
    }));

    let control_listener = tokio::net::TcpListener::bind(control)
        .await
        .map_err(|source| ServeError::Listen {
            what: "the status API, the spec's `control`",
            addr: control,
            source,
        })?;
    tracing::info!("status API on http://{control}");
    let proxy_metrics = Arc::new(proxy::ProxyMetrics::default());
    let arbiter = Arbiter::start(
        Vec::new(),
        Some(Measured::new(&options.state_dir)),
        FreeWatch {
            roots: options.probe_roots.clone(),
            ..FreeWatch::default()
        },
    );
    let status_state = status::StatusState {
        scheduler: arbiter.subscribe(),
        probe_roots: options.probe_roots.clone(),
        info: info_rx.clone(),
        routes: routes_rx.clone(),
        proxy: Arc::clone(&proxy_metrics),
        page: crate::daemon::status_page::Observer::spawn(
            info_rx.clone(),
            routes_rx.clone(),
            shutdown.clone(),
        ),
    };
    tokio::spawn(status::serve(
        control_listener,
        status_state,
        shutdown.clone(),
    ));

    let proxy_listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Listen {
            what: "the endpoint, the spec's `listen`",
            addr: listen,
            source,
        })?;
    tracing::info!("OpenAI-compatible endpoint on http://{listen}/v1");
    let proxy_state = proxy::ProxyState::new(
        routes_rx.clone(),
        proxy_metrics,
        proxy::ProxyConfig::default(),
        shutdown.clone(),
    );
    tokio::spawn(proxy::serve(proxy_listener, proxy_state));

    {
        let events_tx = events_tx.clone();
        tokio::spawn(async move {
            while let Some(read) = spec_rx.recv().await {
                let _ = events_tx.send(DaemonEvent::SpecChanged(read));
            }
        });
    }
    spawn_signal_handlers(events_tx.clone(), shutdown.clone()).map_err(ServeError::Signals)?;

    let mut daemon = Daemon {
        arbiter,
        fit: Fit::default(),
        options,
        backoff,
        state_file,
        owners: BTreeMap::new(),
        leaving: BTreeMap::new(),
        applied: None,
        key,
        info,
        info_tx,
        routes_tx,
        notify,
    };
    daemon.reload(first);
    let _ = daemon.notify.ready(&daemon.summary());

    loop {
        let event = tokio::select! {
            Some(e) = events.recv() => e,
            () = shutdown.cancelled() => DaemonEvent::Shutdown,
        };
        match event {
            DaemonEvent::SpecChanged(read) => {
                let checked = check_spec(&daemon.options, read);
                daemon.reload(checked);
            }
            DaemonEvent::Reload => {
                let _ = daemon.notify.reloading("reloading the spec");
                let read = watch::read_spec(&daemon.options.spec_path);
                let checked = check_spec(&daemon.options, read);
                daemon.reload(checked);
                let _ = daemon.notify.ready(&daemon.summary());
            }
            DaemonEvent::Shutdown => break,
        }
    }
    daemon.shutdown().await;
    Ok(())
}

fn default_addr(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
}

/// Reads nothing: validates what was read, once, and says what is wrong in
/// the log and in the form the status API shows.
fn check_spec(options: &ServeOptions, read: SpecRead) -> CheckedSpec {
    let spec = options.spec_path.display().to_string();
    let text = match read {
        SpecRead::Text(text) => text,
        SpecRead::Deleted => {
            tracing::error!("{spec} was deleted; keeping every model as it is until it comes back");
            return CheckedSpec::Invalid {
                partial: None,
                errors: vec![format!(
                    "{spec}: the spec file is gone; nothing was changed"
                )],
            };
        }
        SpecRead::Unreadable(e) => {
            tracing::error!("{spec}: cannot read the spec: {e}; nothing was changed");
            return CheckedSpec::Invalid {
                partial: None,
                errors: vec![format!("{spec}: cannot read the spec: {e}")],
            };
        }
        SpecRead::NotText(located) => {
            tracing::error!("invalid spec, nothing was changed: {located}");
            return CheckedSpec::Invalid {
                partial: None,
                errors: vec![located],
            };
        }
    };
    let ctx = Context {
        spec_path: &options.spec_path,
        default_llama_server: options.default_llama_server.clone(),
        probe: &Disk,
    };
    let (desired, fit, diagnostics) = validate::check_with_fit(&text, &ctx);
    if diagnostics.is_empty() {
        return CheckedSpec::Valid(desired, Box::new(fit));
    }
    let errors: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    for line in &errors {
        tracing::error!("invalid spec, nothing was changed: {line}");
    }
    CheckedSpec::Invalid {
        partial: Some(desired),
        errors,
    }
}

fn spawn_signal_handlers(
    events: mpsc::UnboundedSender<DaemonEvent>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(()) = hup.recv() => { let _ = events.send(DaemonEvent::Reload); }
                Some(()) = term.recv() => { shutdown.cancel(); }
                Some(()) = int.recv() => { shutdown.cancel(); }
                () = shutdown.cancelled() => break,
            }
        }
    });
    Ok(())
}

impl Daemon {
    fn summary(&self) -> String {
        let ready = self
            .owners
            .values()
            .filter(|h| h.snapshot().state == crate::supervisor::State::Ready)
            .count();
        format!(
            "{} models, {ready} ready, spec generation {}",
            self.owners.len(),
            self.info.generation
        )
    }

    fn reload(&mut self, checked: CheckedSpec) {
        let (desired, fit) = match checked {
            CheckedSpec::Valid(desired, fit) => (desired, *fit),
            CheckedSpec::Invalid { errors, .. } => return self.reject(errors),
        };
        // The budgets follow every valid spec (and what was detected).
        self.arbiter.set_budgets(
            fit.budgets
                .iter()
                .map(|b| (b.device.clone(), b.available()))
                .collect(),
            desired
                .memory
                .fairness
                .unwrap_or(crate::schedule::policy::DEFAULT_FAIRNESS),
        );
        self.arbiter.set_free_wait(
            desired
                .memory
                .free_wait
                .unwrap_or(crate::schedule::freed::DEFAULT_BOUND),
        );
        self.fit = fit;
        // The key is read here, before any routes are published: every
        // table the proxy sees carries the key of the spec that made it.
        let key = self.key.reloaded(desired.api_key_file.as_deref());
        let key_changed = key != self.key;
        self.key = key;
        if self.applied.as_ref() == Some(&desired) {
            // Nothing to do, but a valid spec clears an earlier error, and
            // a rotated key file (SIGHUP) takes effect.
            tracing::debug!("spec saved without changes");
            if key_changed {
                self.publish_routes(&desired);
            }
            if self.info.last_reload.as_ref().is_some_and(|r| !r.ok) {
                self.info.last_reload = Some(ReloadReport {
                    ok: true,
                    at: SystemTime::now(),
                    errors: vec![],
                    actions: vec![],
                });
                self.info_tx.send_replace(self.info.clone());
            }
            return;
        }
        if desired.listen != self.info.listen || desired.control != self.info.control {
            tracing::warn!(
                "listen/control addresses changed in the spec; restart the daemon to move them (still on {} and {})",
                self.info.listen,
                self.info.control
            );
        }
        let actions = self.apply(&desired);
        self.forget_old_measurements(&desired);
        self.info.api_key_file = desired.api_key_file.clone();
        self.applied = Some(desired);
        self.info.generation += 1;
        self.info.reloads += 1;
        self.info.last_reload = Some(ReloadReport {
            ok: true,
            at: SystemTime::now(),
            errors: vec![],
            actions: actions.clone(),
        });
        self.info_tx.send_replace(self.info.clone());
        if actions.is_empty() {
            tracing::info!(
                "spec generation {} applied: nothing to restart",
                self.info.generation
            );
        } else {
            tracing::info!(
                "spec generation {} applied: {}",
                self.info.generation,
                actions.join(", ")
            );
        }
    }

    fn reject(&mut self, errors: Vec<String>) {
        self.info.reload_errors += 1;
        self.info.last_reload = Some(ReloadReport {
            ok: false,
            at: SystemTime::now(),
            errors,
            actions: vec![],
        });
        self.info_tx.send_replace(self.info.clone());
    }

    /// Plans `desired` against what was applied before and performs each
    /// action; returns what was done.
    fn apply(&mut self, desired: &Desired) -> Vec<String> {
        // What each owner works towards is what was last applied, so a
        // replacement still loading is not planned a second time.
        let observed = self
            .applied
            .as_ref()
            .map(plan::observed)
            .unwrap_or_default();
        let mut done = Vec::new();
        for action in plan::plan(desired, &observed) {
            let name = action.model.clone();
            let spec = desired
                .models
                .get(&name)
                .map(|config| self.instance_spec(desired, config));
            match (action.kind, spec) {
                (ActionKind::Stop, _) => self.stop_owner(&name),
                (ActionKind::Restart, Some(spec)) => {
                    if let Some(handle) = self.owners.get(&name) {
                        handle.replace(spec);
                    }
                }
                (ActionKind::Keep, Some(spec)) => {
                    if let Some(handle) = self.owners.get(&name) {
                        handle.update(spec);
                    }
                }
                // An on-demand model's owner stays idle until a request.
                (ActionKind::Start | ActionKind::Standby, Some(spec)) => {
                    self.start_owner(&name, spec);
                }
                (_, None) => {}
            }
            if action.kind != ActionKind::Keep {
                done.push(action.to_string());
            }
        }
        self.publish_routes(desired);
        done
    }

    /// Shuts the owner down in the background; a later owner of the same
    /// name waits for it.
    fn stop_owner(&mut self, name: &str) {
        if let Some(handle) = self.owners.remove(name) {
            let previous = self.leaving.remove(name);
            self.leaving.insert(
                name.to_owned(),
                tokio::spawn(async move {
                    if let Some(p) = previous {
                        let _ = p.await;
                    }
                    handle.shutdown().await;
                }),
            );
        }
    }

    /// Keeps `measured.json` to the launches the spec has now, so it does
    /// not grow with every edit.
    fn forget_old_measurements(&self, desired: &Desired) {
        let ids: Vec<String> = desired
            .models
            .values()
            .map(|m| {
                InstanceSpec::new(m.clone(), &desired.llama_server)
                    .id
                    .to_string()
            })
            .collect();
        // The arbiter is the file's one writer.
        self.arbiter.keep_measured(ids);
    }

    /// What an owner runs, with the footprint admission found for it.
    fn instance_spec(&self, desired: &Desired, config: &crate::spec::ModelConfig) -> InstanceSpec {
        let mut spec = InstanceSpec::new(config.clone(), &desired.llama_server);
        if let Some(f) = self.fit.footprints.iter().find(|f| f.model == config.name) {
            spec.memory.need = f.devices.clone();
            spec.memory.declared = f.source == "declared";
        }
        spec.memory.overheads = crate::memory::Overheads::from_spec(&desired.memory.overheads);
        spec
    }

    fn start_owner(&mut self, name: &str, spec: InstanceSpec) {
        let previous = self.leaving.remove(name);
        let handle = start_instance(
            spec,
            self.state_file.clone(),
            self.backoff.clone(),
            previous,
            Some(self.arbiter.clone()),
        );
        self.owners.insert(name.to_owned(), handle);
    }

    fn publish_routes(&self, desired: &Desired) {
        let mut routes = Routes {
            browser: desired.browser.clone(),
            key: self.key.clone(),
            ..Routes::default()
        };
        for m in desired.enabled_models() {
            let Some(handle) = self.owners.get(&m.name) else {
                continue;
            };
            routes.ids.insert(m.name.clone(), m.name.clone());
            for alias in &m.aliases {
                routes.ids.insert(alias.clone(), m.name.clone());
            }
            if m.default {
                routes.default = Some(m.name.clone());
            }
            routes.models.insert(
                m.name.clone(),
                RouteEntry {
                    handle: handle.clone(),
                    aliases: m.aliases.clone(),
                    on_demand: m.lifecycle.on_demand,
                    idle_timeout: m.lifecycle.idle_timeout,
                    memory: crate::memory::plan::Planned::start(
                        m,
                        &desired.llama_server,
                        crate::memory::Overheads::from_spec(&desired.memory.overheads),
                    ),
                },
            );
        }
        self.routes_tx.send_replace(Arc::new(routes));
    }

    async fn shutdown(mut self) {
        tracing::info!(
            "shutting down: draining and stopping {} models",
            self.owners.len()
        );
        let _ = self.notify.stopping("stopping every model");
        self.routes_tx.send_replace(Arc::new(Routes::default()));
        let owners = std::mem::take(&mut self.owners);
        let mut stops: Vec<tokio::task::JoinHandle<()>> = owners
            .into_values()
            .map(|h| tokio::spawn(async move { h.shutdown().await }))
            .collect();
        stops.extend(std::mem::take(&mut self.leaving).into_values());
        for stop in stops {
            let _ = stop.await;
        }
        tracing::info!("every model stopped");
    }
}

/// The state directory: `$STATE_DIRECTORY` (systemd), else
/// `$XDG_STATE_HOME/rocm-llm`, else `~/.local/state/rocm-llm`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may pass several, separated by ':'; the first is ours.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        return PathBuf::from(first);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Path::new(&dir).join("rocm-llm");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local/state/rocm-llm")
}
