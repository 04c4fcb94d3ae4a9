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
    /// Every declared model, enabled or not, by name.
    pub models: BTreeMap<String, ModelConfig>,
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
        }
    }
}
