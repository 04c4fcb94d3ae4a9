//! Semantic checks: everything the schema cannot say. Turns a decoded
//! [`SpecFile`] into the applicable [`Desired`] state, or every reason why not.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::decode::{self, Places};
use super::desired::{
    BackendOverheads, BrowserAccess, DEFAULT_CONTROL, DEFAULT_LISTEN, Desired, LaunchOptions,
    Lifecycle, Liveness, MemoryBudget, ModelConfig, Pool, normal_origin, valid_host,
};
use super::diagnostic::{Diagnostic, SpecErrors};
use super::model::{ModelOptions, SpecFile};
use super::tree::{self, Pos};
use crate::memory::{Device, Estimate};
use crate::schedule::admission::{self, Fit};
use crate::schedule::detect::Machine;

/// The outside world validation needs, as a seam: tests use an in-memory
/// fake, the CLI and daemon the real file system.
pub trait FileProbe {
    /// `Ok` when `path` is a readable file that starts with the GGUF magic.
    fn check_gguf(&self, path: &Path) -> Result<(), String>;
    /// `Ok` when `path` is a readable regular file.
    fn check_readable(&self, path: &Path) -> Result<(), String>;
    /// `Ok` when `program` (a path, or a bare name looked up on PATH) can
    /// be executed. Fakes accept every program.
    fn check_executable(&self, program: &Path) -> Result<(), String> {
        let _ = program;
        Ok(())
    }
    /// The machine as memory admission sees it: the GPUs `llama_server`
    /// lists, the host's memory, what the drivers report. Fakes detect
    /// nothing, so only declared totals and footprints are checked.
    fn machine(&self, llama_server: &Path) -> Machine {
        let _ = llama_server;
        Machine::default()
    }
    /// A model's estimate on these GPUs. Fakes have none: admission then
    /// counts only models with a declared `memory`.
    fn estimate(&self, model: &ModelConfig, gpus: &[Device]) -> Result<Estimate, String> {
        let _ = (model, gpus);
        Err("no estimate in this test probe".into())
    }
}

/// The real file system.
pub struct Disk;

/// Whether `program` is named without a directory (`llama-server`), so that
/// exec looks it up on PATH.
pub fn is_bare_name(program: &Path) -> bool {
    program.components().count() == 1 && !program.is_absolute()
}

/// The first file named `name` in a PATH directory, as exec would find it.
pub fn find_on_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

impl FileProbe for Disk {
    fn machine(&self, llama_server: &Path) -> Machine {
        crate::schedule::detect::machine(llama_server, &crate::memory::probe::ProbeRoots::default())
    }
    fn estimate(&self, model: &ModelConfig, gpus: &[Device]) -> Result<Estimate, String> {
        // The built-in overheads: admission puts the spec's in their place.
        crate::memory::plan::model_estimate(model, gpus, &crate::memory::Overheads::default())
    }
    fn check_gguf(&self, path: &Path) -> Result<(), String> {
        // Missing, unreadable and non-regular files (a FIFO would block the
        // read) get the plain file messages; the rest is the GGUF check
        // (header, truncation, split parts).
        self.check_readable(path)?;
        crate::gguf::check_model(path)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    fn check_executable(&self, program: &Path) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        if is_bare_name(program) {
            return match find_on_path(program) {
                Some(c) => self.check_executable(&c),
                None => Err(format!(
                    "`{}` is not on PATH ({})",
                    program.display(),
                    std::env::var_os("PATH")
                        .unwrap_or_default()
                        .to_string_lossy()
                )),
            };
        }
        let meta = std::fs::metadata(program).map_err(|e| describe_io(program, &e))?;
        if !meta.is_file() {
            return Err(format!("{} is not a regular file", program.display()));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(format!(
                "{} is not executable (mode {:o}; chmod +x it)",
                program.display(),
                meta.permissions().mode() & 0o7777
            ));
        }
        Ok(())
    }
    fn check_readable(&self, path: &Path) -> Result<(), String> {
        let meta = std::fs::metadata(path).map_err(|e| describe_io(path, &e))?;
        if !meta.is_file() {
            return Err(format!("{} is not a regular file", path.display()));
        }
        std::fs::File::open(path)
            .map(|_| ())
            .map_err(|e| describe_io(path, &e))
    }
}

fn describe_io(path: &Path, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => format!("file {} does not exist", path.display()),
        std::io::ErrorKind::PermissionDenied => format!(
            "file {} is not readable (permission denied)",
            path.display()
        ),
        _ => format!("cannot read {}: {e}", path.display()),
    }
}

/// What the edge supplies: the file's name and the fallback llama-server.
pub struct Context<'a> {
    /// The spec's path as the user named it; relative model paths resolve
    /// against its directory.
    pub spec_path: &'a Path,
    /// Used when the spec has no `llama_server`: `$ROCM_LLM_LLAMA_SERVER` or
    /// `llama-server` found on PATH, looked up by the caller.
    pub default_llama_server: PathBuf,
    pub probe: &'a dyn FileProbe,
}

/// A spec file's bytes as text. A file that is not UTF-8 is an invalid spec:
/// the error points at the line and column of its first bad byte, and comes
/// with the text as far as it can be shown (for the caret).
pub fn spec_text(bytes: Vec<u8>, spec_path: &Path) -> Result<String, (SpecErrors, String)> {
    match String::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(e) => {
            let bytes = e.into_bytes();
            let good = std::str::from_utf8(&bytes).map_or_else(|e| e.valid_up_to(), |s| s.len());
            let before = String::from_utf8_lossy(&bytes[..good]);
            let line = before.matches('\n').count() as u64 + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1;
            let byte = bytes.get(good).copied().unwrap_or_default();
            let errors = SpecErrors::single(
                spec_path,
                Some(Pos { line, column }),
                "",
                format!(
                    "the spec is not UTF-8 text: byte 0x{byte:02x} (file offset {good}) cannot start or continue a UTF-8 character; save the file as UTF-8"
                ),
            );
            Err((errors, String::from_utf8_lossy(&bytes).into_owned()))
        }
    }
}

/// Parses, decodes and validates one spec file's text, memory admission
/// included.
pub fn load(text: &str, ctx: &Context<'_>) -> Result<Desired, SpecErrors> {
    let (desired, _, diagnostics) = check_with_fit(text, ctx);
    if diagnostics.is_empty() {
        Ok(desired)
    } else {
        Err(SpecErrors { diagnostics })
    }
}

/// [`load`], with what admission found: the machine and the fit table
/// (for `validate` and `plan` to show).
pub fn load_with_fit(text: &str, ctx: &Context<'_>) -> Result<(Desired, Fit), SpecErrors> {
    let (desired, fit, diagnostics) = check_with_fit(text, ctx);
    if diagnostics.is_empty() {
        Ok((desired, fit))
    } else {
        Err(SpecErrors { diagnostics })
    }
}

/// One validation pass: the spec as far as it is valid, with its mistakes
/// (sorted by place). With mistakes the result must not be applied, but its
/// `listen`, `control` and `api_key_file` are still what the spec says where
/// those keys are valid (the defaults where not), so a typo elsewhere never
/// moves the daemon or drops its key.
pub fn check(text: &str, ctx: &Context<'_>) -> (Desired, Vec<Diagnostic>) {
    let (desired, _, diagnostics) = check_with_fit(text, ctx);
    (desired, diagnostics)
}

/// [`check`], with admission's fit table (empty when the spec has other
/// mistakes: admission reads the model files).
pub fn check_with_fit(text: &str, ctx: &Context<'_>) -> (Desired, Fit, Vec<Diagnostic>) {
    let tree = match tree::parse(text) {
        Ok(tree) => tree,
        Err(e) => {
            let pos = e.location().map(|l| Pos {
                line: l.line(),
                column: l.column(),
            });
            let message = e.without_snippet().to_string();
            // The library's message repeats the place; keep what comes after it.
            let message = strip_location_prefix(&message);
            let unparsed = Desired {
                listen: default_address(DEFAULT_LISTEN),
                control: default_address(DEFAULT_CONTROL),
                api_key_file: None,
                llama_server: ctx.default_llama_server.clone(),
                browser: BrowserAccess::default(),
                memory: Default::default(),
                models: BTreeMap::new(),
            };
            let errors =
                SpecErrors::single(ctx.spec_path, pos, "", format!("invalid YAML: {message}"));
            return (unparsed, Fit::default(), errors.diagnostics);
        }
    };
    let decoded = decode::decode(&tree);
    let mut v = Validator {
        ctx,
        places: &decoded.places,
        diagnostics: Vec::new(),
    };
    for p in &decoded.problems {
        v.diagnostics.push(Diagnostic {
            file: ctx.spec_path.to_owned(),
            pos: Some(p.pos),
            path: p.path.clone(),
            message: p.message.clone(),
        });
    }
    let desired = v.validate(&decoded.spec);
    let mut fit = Fit::default();
    if v.diagnostics.is_empty() {
        // Admission needs a spec whose files are good: the estimate reads
        // them.
        let machine = ctx.probe.machine(&desired.llama_server);
        fit = admission::check(&desired, &machine, &|m, gpus| ctx.probe.estimate(m, gpus));
        for short in &fit.shortfalls {
            let path = format!("models.{}", short.model);
            let pos = v.places.key(&path);
            v.error_at(pos, &path, short.to_string());
        }
    }
    v.diagnostics.sort_by_key(|a| a.pos);
    (desired, fit, v.diagnostics)
}

fn default_address(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
}

/// The parser's message without the place it repeats (we print our own).
fn strip_location_prefix(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message).trim();
    // The library's advice is for programmers, not spec authors.
    let first = first
        .split(", set DuplicateKeyPolicy")
        .next()
        .unwrap_or(first);
    match first.rfind(" at line ") {
        Some(i) if first[i..].contains("column") => first[..i].to_owned(),
        _ => first.to_owned(),
    }
}

struct Validator<'a> {
    ctx: &'a Context<'a>,
    places: &'a Places,
    diagnostics: Vec<Diagnostic>,
}

/// Environment variables llama-server reads as flags the daemon owns.
const OWNED_ENV: &[&str] = &[
    "LLAMA_ARG_HOST",
    "LLAMA_ARG_PORT",
    "LLAMA_ARG_MODEL",
    "LLAMA_ARG_ALIAS",
    "LLAMA_API_KEY",
    "LLAMA_ARG_API_KEY",
    "LLAMA_ARG_API_KEY_FILE",
    "LLAMA_ARG_API_PREFIX",
    "LLAMA_ARG_SSL_KEY_FILE",
    "LLAMA_ARG_SSL_CERT_FILE",
    "LLAMA_ARG_REUSE_PORT",
    "LLAMA_ARG_STATIC_PATH",
    "LLAMA_ARG_CORS_ORIGINS",
    "LLAMA_ARG_HF_REPO",
    "LLAMA_ARG_HF_FILE",
    "LLAMA_ARG_MODEL_URL",
    "LLAMA_ARG_DOCKER_REPO",
    "LLAMA_ARG_MODELS_DIR",
    "LLAMA_ARG_MODELS_PRESET",
    "LLAMA_ARG_TOOLS",
];

const PLAIN_HTTP: &str = "the daemon talks plain HTTP to its children on loopback";
const LOCAL_FILES_ONLY: &str = "use `model` with a local GGUF; the daemon downloads nothing";
const NOT_ROUTER_MODE: &str = "router mode is the daemon's job: declare each model";

/// Flags the daemon sets itself, or that would take its place or bypass it;
/// `extra_args` may not set them.
const OWNED_FLAGS: &[(&str, &str)] = &[
    ("--host", "the daemon binds every instance to 127.0.0.1"),
    ("--port", "the daemon picks each instance's port"),
    ("-m", "use the model's `model` option"),
    ("--model", "use the model's `model` option"),
    ("-a", "use `aliases`; the daemon routes them"),
    ("--alias", "use `aliases`; the daemon routes them"),
    (
        "--api-key",
        "use the top-level `api_key_file`; the daemon checks keys",
    ),
    (
        "--api-key-file",
        "use the top-level `api_key_file`; the daemon checks keys",
    ),
    (
        "--api-prefix",
        "the daemon routes llama-server's paths as they are",
    ),
    ("--ssl-key-file", PLAIN_HTTP),
    ("--ssl-cert-file", PLAIN_HTTP),
    (
        "--reuse-port",
        "another process could then bind the instance's port",
    ),
    ("--path", "the daemon serves no static files from a child"),
    (
        "--cors-origins",
        "use the top-level `cors_origins`; the daemon answers browsers",
    ),
    ("-hf", LOCAL_FILES_ONLY),
    ("-hfr", LOCAL_FILES_ONLY),
    ("--hf-repo", LOCAL_FILES_ONLY),
    ("-hff", LOCAL_FILES_ONLY),
    ("--hf-file", LOCAL_FILES_ONLY),
    ("-mu", LOCAL_FILES_ONLY),
    ("--model-url", LOCAL_FILES_ONLY),
    ("-dr", LOCAL_FILES_ONLY),
    ("--docker-repo", LOCAL_FILES_ONLY),
    ("--models-dir", NOT_ROUTER_MODE),
    ("--models-preset", NOT_ROUTER_MODE),
    (
        "--tools",
        "it lets any client run llama-server's built-in tools on this machine",
    ),
];

impl Validator<'_> {
    fn error_at(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            file: self.ctx.spec_path.to_owned(),
            pos: Some(pos),
            path: path.to_owned(),
            message: message.into(),
        });
    }
    fn error(&mut self, path: &str, message: impl Into<String>) {
        let pos = self.places.value(path);
        self.error_at(pos, path, message);
    }

    /// The one place a relative path in the spec becomes absolute: against
    /// the spec's directory.
    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_owned();
        }
        self.spec_dir().join(p)
    }

    /// The spec's directory, absolute whatever directory the command ran
    /// in, so the same spec gives the same launch identity to `plan` and to
    /// the daemon.
    fn spec_dir(&self) -> PathBuf {
        let base = self
            .ctx
            .spec_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::path::absolute(base).unwrap_or_else(|_| base.to_owned())
    }

    fn address(&mut self, key: &str, written: Option<&String>, default: &str) -> SocketAddr {
        let text = written.map(String::as_str).unwrap_or(default);
        text.parse().unwrap_or_else(|_| {
            self.error(
                key,
                format!("expected an address such as {default} (IP:port), found \"{text}\""),
            );
            // An error was recorded, so this is only ever a partial
            // result's address: where the daemon listens until it is fixed.
            default_address(default)
        })
    }

    fn validate(&mut self, spec: &SpecFile) -> Desired {
        let listen = self.address("listen", spec.listen.as_ref(), DEFAULT_LISTEN);
        let control = self.address("control", spec.control.as_ref(), DEFAULT_CONTROL);
        if listen == control && spec.listen.is_some() {
            self.error("control", format!("the status API and the endpoint cannot share {listen}; pick another port for `control`"));
        }
        let api_key_file = spec.api_key_file.as_ref().map(|p| self.resolve(p));
        if let Some(path) = &api_key_file
            && let Err(e) = self.ctx.probe.check_readable(path)
        {
            self.error("api_key_file", e);
        }
        let llama_server = spec
            .llama_server
            .as_ref()
            .map(|p| self.resolve(p))
            .unwrap_or_else(|| self.ctx.default_llama_server.clone());
        if let Err(e) = self.ctx.probe.check_executable(&llama_server) {
            if spec.llama_server.is_some() {
                self.error("llama_server", format!("llama-server cannot run: {e}"));
            } else {
                self.error_at(
                    Pos { line: 1, column: 1 },
                    "llama_server",
                    format!(
                        "llama-server cannot run: the spec sets no `llama_server`, so the daemon runs {} (from $ROCM_LLM_LLAMA_SERVER, else `llama-server` on PATH), and {e}; set `llama_server: /path/to/llama-server`",
                        llama_server.display()
                    ),
                );
            }
        }
        let browser = BrowserAccess {
            allowed_hosts: self.list("allowed_hosts", spec.allowed_hosts.as_deref(), |h| {
                valid_host(h).then(|| h.to_ascii_lowercase()).ok_or_else(|| {
                    format!("expected a host name such as llm.home.arpa or 192.168.1.20 (no scheme, port or path), or \"*\", found \"{h}\"")
                })
            }),
            cors_origins: self.list("cors_origins", spec.cors_origins.as_deref(), |o| {
                normal_origin(o).ok_or_else(|| {
                    format!("expected an origin such as http://llm.home.arpa:3000 (scheme://host[:port], no path), or \"*\", found \"{o}\"")
                })
            }),
        };

        for (key, what) in [
            ("model", "a model file"),
            ("aliases", "aliases"),
            ("default", "`default`"),
            ("memory", "a declared footprint (`memory`)"),
        ] {
            let path = format!("defaults.{key}");
            if self.places.written(&path) {
                let pos = self.places.key(&path);
                self.error_at(
                    pos,
                    &path,
                    format!("{what} can only be set on a model, not in defaults"),
                );
            }
        }
        if spec.models.is_empty() && !self.places.written("models") {
            self.error_at(
                Pos { line: 1, column: 1 },
                "models",
                "the spec declares no models; add a `models:` mapping",
            );
        }

        let mut models = BTreeMap::new();
        for (name, own) in &spec.models {
            let config = self.model(name, &spec.defaults, own);
            models.insert(name.clone(), config);
        }
        self.check_ids(&models);
        let memory = memory_budget(spec.memory.as_ref());
        Desired {
            listen,
            control,
            api_key_file,
            llama_server,
            browser,
            memory,
            models,
        }
    }

    /// Checks each entry of a list of strings, reporting a bad one at its
    /// own line and column.
    fn list(
        &mut self,
        key: &str,
        items: Option<&[String]>,
        check: impl Fn(&str) -> Result<String, String>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (i, item) in items.unwrap_or_default().iter().enumerate() {
            match check(item.trim()) {
                Ok(v) => out.push(v),
                Err(e) => self.error(&format!("{key}[{i}]"), e),
            }
        }
        out
    }

    fn model(&mut self, name: &str, defaults: &ModelOptions, own: &ModelOptions) -> ModelConfig {
        let base = format!("models.{name}");
        if name.trim().is_empty()
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
            || name.len() > 128
        {
            let pos = self.places.key(&base);
            self.error_at(
                pos,
                &base,
                format!("model name \"{name}\" must be 1 to 128 characters without spaces"),
            );
        }
        let o = merge(defaults, own);
        let model = match &own.model {
            Some(p) => {
                let path = self.resolve(p);
                if let Err(e) = self.ctx.probe.check_gguf(&path) {
                    self.error(&format!("{base}.model"), e);
                }
                path
            }
            None => {
                let pos = self.places.key(&base);
                self.error_at(
                    pos,
                    &base,
                    "missing required key `model` (the path of the GGUF file)",
                );
                PathBuf::new()
            }
        };
        if o.chat_template.is_some() && o.chat_template_file.is_some() {
            self.error(
                &format!("{base}.chat_template_file"),
                "set either `chat_template` or `chat_template_file`, not both",
            );
        }
        let chat_template_file = o.chat_template_file.as_ref().map(|p| self.resolve(p));
        if let Some(p) = &chat_template_file
            && let Err(e) = self.ctx.probe.check_readable(p)
        {
            let path = if own.chat_template_file.is_some() {
                format!("{base}.chat_template_file")
            } else {
                "defaults.chat_template_file".to_owned()
            };
            self.error(&path, e);
        }
        if let (Some(b), Some(u)) = (o.batch_size, o.ubatch_size)
            && u > b
        {
            self.error(
                &format!("{base}.ubatch_size"),
                format!("ubatch_size ({u}) cannot exceed batch_size ({b})"),
            );
        }
        let env = o.env.clone().unwrap_or_default();
        for key in env.keys() {
            let path = self.option_path(
                &base,
                own.env.as_ref().is_some_and(|e| e.contains_key(key)),
                &format!("env.{key}"),
            );
            if !valid_env_name(key) {
                self.error_at(self.places.key(&path), &path, format!("\"{key}\" is not a valid environment variable name (letters, digits and _, not starting with a digit)"));
            } else if OWNED_ENV.contains(&key.as_str()) {
                self.error_at(
                    self.places.key(&path),
                    &path,
                    format!("{key} would override a setting the daemon owns; remove it"),
                );
            }
        }
        let extra_args = o.extra_args.clone().unwrap_or_default();
        for (i, arg) in extra_args.iter().enumerate() {
            let flag = arg.split_once('=').map_or(arg.as_str(), |(f, _)| f);
            if let Some((owned, why)) = OWNED_FLAGS.iter().find(|(f, _)| *f == flag) {
                let path =
                    self.option_path(&base, own.extra_args.is_some(), &format!("extra_args[{i}]"));
                self.error(
                    &path,
                    format!(
                        "`{owned}` is set by the daemon and cannot be passed in extra_args: {why}"
                    ),
                );
            }
        }
        let d = Lifecycle::default();
        let lifecycle = Lifecycle {
            ready_timeout: o.ready_timeout.map_or(d.ready_timeout, |x| x.0),
            stop_grace: o.stop_grace.map_or(d.stop_grace, |x| x.0),
            restart: o.restart.unwrap_or(d.restart),
            swap: o.swap.unwrap_or(d.swap),
            on_demand: o.on_demand.unwrap_or(d.on_demand),
            idle_timeout: o.idle_timeout.map(|x| x.0),
            queue_length: o.queue_length.unwrap_or(d.queue_length),
            wait_timeout: o.wait_timeout.map_or(d.wait_timeout, |x| x.0),
            drain_timeout: o.drain_timeout.map_or(d.drain_timeout, |x| x.0),
            liveness: Liveness {
                interval: o.liveness_interval.map_or(d.liveness.interval, |x| x.0),
                timeout: o.liveness_timeout.map_or(d.liveness.timeout, |x| x.0),
                failures: o.liveness_failures.unwrap_or(d.liveness.failures),
            },
            priority: o.priority.unwrap_or(d.priority),
            footprint: own.memory.map(|s| s.0),
        };
        let sec = Duration::from_secs;
        for (key, value, min, max) in [
            (
                "ready_timeout",
                Some(lifecycle.ready_timeout),
                sec(1),
                sec(24 * 3600),
            ),
            (
                "stop_grace",
                Some(lifecycle.stop_grace),
                Duration::ZERO,
                sec(3600),
            ),
            (
                "idle_timeout",
                lifecycle.idle_timeout,
                sec(1),
                sec(365 * 24 * 3600),
            ),
            (
                "wait_timeout",
                Some(lifecycle.wait_timeout),
                Duration::ZERO,
                sec(24 * 3600),
            ),
            (
                "drain_timeout",
                Some(lifecycle.drain_timeout),
                Duration::ZERO,
                sec(24 * 3600),
            ),
            (
                "liveness_interval",
                Some(lifecycle.liveness.interval),
                Duration::from_millis(10),
                sec(24 * 3600),
            ),
            (
                "liveness_timeout",
                Some(lifecycle.liveness.timeout),
                Duration::from_millis(10),
                sec(3600),
            ),
        ] {
            if let Some(v) = value
                && (v < min || v > max)
            {
                let written_here = self.places.written(&format!("{base}.{key}"));
                let path = self.option_path(&base, written_here, key);
                self.error(
                    &path,
                    format!(
                        "expected a duration from {} to {}, found {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max),
                        humantime::format_duration(v)
                    ),
                );
            }
        }
        if lifecycle.idle_timeout.is_some() && !lifecycle.on_demand {
            let path = self.option_path(&base, own.idle_timeout.is_some(), "idle_timeout");
            self.error(&path, "idle_timeout needs `on_demand: true`, or a model stopped for idleness would never start again");
        }
        ModelConfig {
            name: name.to_owned(),
            model,
            aliases: own.aliases.clone().unwrap_or_default(),
            default: own.default.unwrap_or(false),
            enabled: own.enabled.or(defaults.enabled).unwrap_or(true),
            launch: LaunchOptions {
                ctx_size: o.ctx_size,
                gpu_layers: o.gpu_layers,
                parallel: o.parallel,
                flash_attn: o.flash_attn,
                cache_type_k: o.cache_type_k,
                cache_type_v: o.cache_type_v,
                threads: o.threads,
                batch_size: o.batch_size,
                ubatch_size: o.ubatch_size,
                load_mode: o.load_mode,
                chat_template: o.chat_template.clone(),
                chat_template_file,
                jinja: o.jinja,
                env,
                extra_args,
                working_dir: self.spec_dir(),
            },
            lifecycle,
        }
    }

    /// The path of an option as the user wrote it: on the model, or inherited
    /// from `defaults`.
    fn option_path(&self, base: &str, on_model: bool, rest: &str) -> String {
        if on_model {
            format!("{base}.{rest}")
        } else {
            format!("defaults.{rest}")
        }
    }

    fn check_ids(&mut self, models: &BTreeMap<String, ModelConfig>) {
        // Every id (name or alias) must name exactly one model.
        let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
        for name in models.keys() {
            owner.insert(name, name);
        }
        for (name, m) in models {
            for (i, alias) in m.aliases.iter().enumerate() {
                let path = format!("models.{name}.aliases[{i}]");
                if alias.trim().is_empty() || alias.chars().any(char::is_whitespace) {
                    self.error(
                        &path,
                        format!("alias \"{alias}\" must be non-empty and without spaces"),
                    );
                    continue;
                }
                match owner.get(alias.as_str()) {
                    Some(other) if *other == name.as_str() && alias == name => {
                        self.error(
                            &path,
                            format!("alias \"{alias}\" repeats the model's own name"),
                        );
                    }
                    Some(other) if *other == name.as_str() => {
                        self.error(&path, format!("alias \"{alias}\" is listed twice"));
                    }
                    Some(other) if models.contains_key(alias) => {
                        self.error(
                            &path,
                            format!("alias \"{alias}\" is already the name of model \"{other}\""),
                        );
                    }
                    Some(other) => {
                        self.error(
                            &path,
                            format!("alias \"{alias}\" is already an alias of model \"{other}\""),
                        );
                    }
                    None => {
                        owner.insert(alias, name);
                    }
                }
            }
        }
        let defaults: Vec<&str> = models
            .values()
            .filter(|m| m.default)
            .map(|m| m.name.as_str())
            .collect();
        if defaults.len() > 1 {
            for name in &defaults[1..] {
                self.error(
                    &format!("models.{name}.default"),
                    format!(
                        "only one model can be the default; \"{}\" already is",
                        defaults[0]
                    ),
                );
            }
        }
    }
}

/// A model's options over the defaults: the model's value wins; `env` maps
/// merge key by key.
pub fn merge(defaults: &ModelOptions, own: &ModelOptions) -> ModelOptions {
    macro_rules! pick {
        ($($field:ident),* $(,)?) => {
            ModelOptions { $($field: own.$field.clone().or_else(|| defaults.$field.clone()),)* env: None }
        };
    }
    let mut merged = pick!(
        model,
        aliases,
        default,
        enabled,
        ctx_size,
        gpu_layers,
        parallel,
        flash_attn,
        cache_type_k,
        cache_type_v,
        threads,
        batch_size,
        ubatch_size,
        load_mode,
        chat_template,
        chat_template_file,
        jinja,
        extra_args,
        ready_timeout,
        stop_grace,
        restart,
        swap,
        on_demand,
        idle_timeout,
        queue_length,
        wait_timeout,
        drain_timeout,
        liveness_interval,
        liveness_timeout,
        liveness_failures,
        memory,
        priority,
    );
    merged.env = match (&defaults.env, &own.env) {
        (None, None) => None,
        (d, o) => {
            let mut env = d.clone().unwrap_or_default();
            env.extend(o.clone().unwrap_or_default());
            Some(env)
        }
    };
    // A model's own chat_template replaces an inherited template file.
    if own.chat_template.is_some() && own.chat_template_file.is_none() {
        merged.chat_template_file = None;
    }
    if own.chat_template_file.is_some() && own.chat_template.is_none() {
        merged.chat_template = None;
    }
    merged
}

fn valid_env_name(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The `memory` block with its defaults.
fn memory_budget(spec: Option<&super::model::MemorySpec>) -> MemoryBudget {
    let pool = |p: Option<&super::model::PoolSpec>, default: Pool| Pool {
        total: match p.and_then(|p| p.total) {
            Some(super::model::MemoryTotal::Size(s)) => Some(s.0),
            _ => default.total,
        },
        reserve: p.and_then(|p| p.reserve).map_or(default.reserve, |s| s.0),
    };
    let o = spec.and_then(|s| s.overhead.clone()).unwrap_or_default();
    MemoryBudget {
        vram: pool(spec.and_then(|s| s.vram.as_ref()), Pool::vram_default()),
        ram: pool(spec.and_then(|s| s.ram.as_ref()), Pool::ram_default()),
        overheads: BackendOverheads {
            rocm: o.rocm.map(|s| s.0),
            cuda: o.cuda.map(|s| s.0),
            vulkan: o.vulkan.map(|s| s.0),
            cpu: o.cpu.map(|s| s.0),
        },
        fairness: spec.and_then(|s| s.fairness).map(|d| d.0),
        free_wait: spec.and_then(|s| s.free_wait).map(|d| d.0),
    }
}
