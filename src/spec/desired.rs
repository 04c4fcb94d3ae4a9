//! The applicable form of a spec: validated, defaults applied, paths
//! resolved. Only this form is ever acted on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::model::{CacheType, FlashAttn, GpuLayers, LoadMode, RestartPolicy, SwapStrategy};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_CONTROL: &str = "127.0.0.1:8081";

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Desired {
    pub listen: SocketAddr,
    pub control: SocketAddr,
    pub api_key_file: Option<PathBuf>,
    pub llama_server: PathBuf,
    /// Who may reach the endpoint and the status API from a browser.
    pub browser: BrowserAccess,
    /// What the models may fill on each device.
    pub memory: MemoryBudget,
    /// Every declared model, enabled or not, by name.
    pub models: BTreeMap<String, ModelConfig>,
}

/// The spec's `memory` block, defaults applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryBudget {
    /// Each GPU's memory.
    pub vram: Pool,
    /// The host's memory (llama.cpp's `CPU` device).
    pub ram: Pool,
    pub overheads: BackendOverheads,
    /// The anti-thrash bound; `None`: the default
    /// ([`crate::schedule::policy::DEFAULT_FAIRNESS`]).
    pub fairness: Option<std::time::Duration>,
    /// The bound on the wait for freed memory; `None`: the default
    /// ([`crate::schedule::freed::DEFAULT_BOUND`]).
    pub free_wait: Option<std::time::Duration>,
}

pub const DEFAULT_VRAM_RESERVE: u64 = 512 << 20;
pub const DEFAULT_RAM_RESERVE: u64 = 1 << 30;

/// One kind of memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Pool {
    /// `None`: `auto`, what the machine reports.
    pub total: Option<u64>,
    /// Left alone.
    pub reserve: u64,
}

impl Pool {
    pub fn vram_default() -> Pool {
        Pool {
            total: None,
            reserve: DEFAULT_VRAM_RESERVE,
        }
    }
    pub fn ram_default() -> Pool {
        Pool {
            total: None,
            reserve: DEFAULT_RAM_RESERVE,
        }
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool::vram_default()
    }
}

/// The spec's per-backend overheads; `None` keeps the built-in figure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BackendOverheads {
    pub rocm: Option<u64>,
    pub cuda: Option<u64>,
    pub vulkan: Option<u64>,
    pub cpu: Option<u64>,
}

impl BackendOverheads {
    /// The spec's figure for a device named as llama.cpp names it
    /// (`ROCm0`, `CUDA0`, `Vulkan0`, `CPU`), if the spec sets one.
    pub fn for_device(&self, device: &str) -> Option<u64> {
        if device.starts_with("ROCm") || device.starts_with("HIP") {
            self.rocm
        } else if device.starts_with("CUDA") {
            self.cuda
        } else if device.starts_with("Vulkan") {
            self.vulkan
        } else if device == "CPU" {
            self.cpu
        } else {
            None
        }
    }
}

/// The spec's `allowed_hosts` and `cors_origins`, checked and lowercased.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BrowserAccess {
    /// Host names (no port) answered besides the own address and loopback;
    /// `"*"` for all.
    pub allowed_hosts: Vec<String>,
    /// `scheme://host[:port]` origins allowed cross-origin; `"*"` for all.
    pub cors_origins: Vec<String>,
}

/// Whether `h` is a host name or IP address as a `Host` header carries it
/// (without port; IPv6 in brackets), or `"*"`.
pub fn valid_host(h: &str) -> bool {
    if h == "*" {
        return true;
    }
    if let Some(v6) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The host of an authority `host[:port]` or `[v6][:port]`; `None` when the
/// port is not a port.
pub fn host_of(authority: &str) -> Option<&str> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        let rest = &authority[end..];
        if !rest.is_empty() && !rest.starts_with(':') {
            return None;
        }
        (&authority[..end], rest.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    match port {
        Some(p) => p.parse::<u16>().ok().map(|_| host),
        None => Some(host),
    }
}

/// `scheme://host[:port]` lowercased, as browsers send it in `Origin`; or
/// `"*"`. `None` for anything else (a path, a bad port, another scheme).
pub fn normal_origin(o: &str) -> Option<String> {
    if o == "*" {
        return Some(o.to_owned());
    }
    let lower = o.to_ascii_lowercase();
    let (scheme, authority) = lower.split_once("://")?;
    if !matches!(scheme, "http" | "https") {
        return None;
    }
    let host = host_of(authority)?;
    (host != "*" && valid_host(host)).then(|| lower.clone())
}

impl Desired {
    /// The models that should have a running (or startable) instance.
    pub fn enabled_models(&self) -> impl Iterator<Item = &ModelConfig> {
        self.models.values().filter(|m| m.enabled)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelConfig {
    pub name: String,
    /// Absolute path of the GGUF file.
    pub model: PathBuf,
    pub aliases: Vec<String>,
    pub default: bool,
    pub enabled: bool,
    pub launch: LaunchOptions,
    pub lifecycle: Lifecycle,
}

/// Options that reach llama-server's command line or environment.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LaunchOptions {
    pub ctx_size: Option<u32>,
    pub gpu_layers: Option<GpuLayers>,
    pub parallel: Option<u32>,
    pub flash_attn: Option<FlashAttn>,
    pub cache_type_k: Option<CacheType>,
    pub cache_type_v: Option<CacheType>,
    pub threads: Option<u32>,
    pub batch_size: Option<u32>,
    pub ubatch_size: Option<u32>,
    pub load_mode: Option<LoadMode>,
    pub chat_template: Option<String>,
    pub chat_template_file: Option<PathBuf>,
    pub jinja: Option<bool>,
    pub env: BTreeMap<String, String>,
    pub extra_args: Vec<String>,
    /// The spec's directory, absolute: the child's working directory, so a
    /// relative path in `extra_args` (`--mmproj x.gguf`) resolves the way
    /// `model:` does. Empty: the daemon's own (only in tests that build
    /// options by hand).
    pub working_dir: PathBuf,
}

/// Options that only steer the daemon; changing them restarts nothing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Lifecycle {
    pub ready_timeout: Duration,
    pub stop_grace: Duration,
    pub restart: RestartPolicy,
    pub swap: SwapStrategy,
    pub on_demand: bool,
    pub idle_timeout: Option<Duration>,
    pub queue_length: u32,
    pub wait_timeout: Duration,
    pub drain_timeout: Duration,
    pub liveness: Liveness,
    /// When memory is short, lower priorities yield first.
    pub priority: i32,
    /// The declared footprint (`memory:`), used instead of the estimate.
    pub footprint: Option<u64>,
}

/// Liveness probes of a ready process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Liveness {
    pub interval: Duration,
    pub timeout: Duration,
    /// Failures in a row that replace the process; 0: never probe.
    pub failures: u32,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            failures: 3,
        }
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            ready_timeout: Duration::from_secs(300),
            stop_grace: Duration::from_secs(30),
            restart: RestartPolicy::Always,
            swap: SwapStrategy::StopFirst,
            on_demand: false,
            idle_timeout: None,
            queue_length: 64,
            wait_timeout: Duration::from_secs(120),
            drain_timeout: Duration::from_secs(300),
            liveness: Liveness::default(),
            priority: 0,
            footprint: None,
        }
    }
}
