//! The spec as written: the serde- and schema-facing types.
//!
//! These types mirror the YAML one to one. Nothing here is trusted yet:
//! [`super::validate`] turns a [`SpecFile`] into the applicable
//! [`super::Desired`] state.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The whole spec file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "rocm-llm spec")]
pub struct SpecFile {
    /// Address of the OpenAI-compatible endpoint. Default `127.0.0.1:8080`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Address of the status API (`/status`, `/healthz`, `/metrics`). Default `127.0.0.1:8081`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<String>,
    /// A file holding the bearer key that clients must send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// The llama-server binary. Default: `$ROCM_LLM_LLAMA_SERVER`, then `llama-server` on PATH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llama_server: Option<PathBuf>,
    /// More `Host` names the endpoint and the status API answer to, besides
    /// the address a client connected to and the loopback names (`localhost`,
    /// `*.localhost`, `127.0.0.1`, `[::1]`). Any other name gets 403, which
    /// keeps DNS-rebinding web pages out. `"*"` answers every name: only
    /// behind a reverse proxy that checks `Host` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_hosts: Option<Vec<String>>,
    /// Web origins (`scheme://host[:port]`) whose pages may call the
    /// endpoint and the status API from a browser (CORS). Default none: a
    /// request from any other page's origin gets 403 and does nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_origins: Option<Vec<String>>,
    /// Options every model inherits; a model's own value wins.
    #[serde(default, skip_serializing_if = "ModelOptions::is_empty")]
    pub defaults: ModelOptions,
    /// The models to serve, by OpenAI `model` id.
    #[serde(default)]
    pub models: BTreeMap<String, ModelOptions>,
}

/// Options of one model (or, in `defaults`, of every model).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelOptions {
    /// Path of the GGUF file. Required on every model; relative paths are
    /// resolved against the spec file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// Extra `model` ids routed to this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aliases: Option<Vec<String>>,
    /// Receives requests that name no model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    /// `false` keeps the entry but runs nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// `--ctx-size`; 0 takes the context the model was trained with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4_194_304))]
    pub ctx_size: Option<u32>,
    /// `--gpu-layers`: a count, `all` or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_layers: Option<GpuLayers>,
    /// `--parallel`: concurrent sequences (slots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub parallel: Option<u32>,
    /// `--flash-attn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flash_attn: Option<FlashAttn>,
    /// `--cache-type-k`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type_k: Option<CacheType>,
    /// `--cache-type-v`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type_v: Option<CacheType>,
    /// `--threads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub threads: Option<u32>,
    /// `--batch-size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_048_576))]
    pub batch_size: Option<u32>,
    /// `--ubatch-size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_048_576))]
    pub ubatch_size: Option<u32>,
    /// `--load-mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_mode: Option<LoadMode>,
    /// `--chat-template`: a built-in template name or Jinja source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// `--chat-template-file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_file: Option<PathBuf>,
    /// `--jinja` or `--no-jinja`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jinja: Option<bool>,
    /// Environment of the llama-server process, e.g. `HSA_OVERRIDE_GFX_VERSION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Raw arguments appended to the command line. They may not set a flag
    /// the daemon owns (`--host`, `--port`, `--model`, `--alias`, `--api-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_args: Option<Vec<String>>,

    /// How long a start may take before it counts as failed. Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout: Option<HumanDuration>,
    /// SIGTERM to SIGKILL. Default `30s`: SIGKILL of a busy ROCm process has hung GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace: Option<HumanDuration>,
    /// What to do when the process exits. Default `always`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    /// How a changed model is replaced. Default `stop_first`, which suits one 16 GB GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<SwapStrategy>,
    /// Start at the first request instead of at load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand: Option<bool>,
    /// Stop the model after this long without requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<HumanDuration>,
    /// Requests that may wait for a starting model. Default 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100_000))]
    pub queue_length: Option<u32>,
    /// How long a request waits for a starting model. Default `2m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_timeout: Option<HumanDuration>,
    /// How long in-flight requests may run before a stop cuts them. Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<HumanDuration>,
    /// How often a ready llama-server is asked `/health`. Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_interval: Option<HumanDuration>,
    /// How long one liveness probe may take. Default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_timeout: Option<HumanDuration>,
    /// Failed probes in a row, while the process uses no CPU or is stopped,
    /// after which it is replaced. Default 3; 0 turns liveness probes off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub liveness_failures: Option<u32>,
}

impl ModelOptions {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// `--gpu-layers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum GpuLayers {
    Count(#[schemars(range(min = 0, max = 9999))] u32),
    Keyword(GpuLayersKeyword),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GpuLayersKeyword {
    /// Offload every layer.
    All,
    /// llama-server's default. The daemon runs it with `--fit off`, so this
    /// offloads every layer; with `--fit on` in `extra_args`, llama.cpp's
    /// fit decides at start (docs/memory.md).
    Auto,
}

macro_rules! flag_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The spelling llama-server and the spec use.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

flag_enum!(
    /// `--flash-attn`.
    FlashAttn { On => "on", Off => "off", Auto => "auto" }
);
flag_enum!(
    /// KV cache types the pinned llama.cpp accepts.
    CacheType {
        F32 => "f32", F16 => "f16", Bf16 => "bf16", Q8_0 => "q8_0", Q4_0 => "q4_0",
        Q4_1 => "q4_1", Iq4Nl => "iq4_nl", Q5_0 => "q5_0", Q5_1 => "q5_1",
    }
);
flag_enum!(
    /// `--load-mode` (replaces the removed `--mlock` and `--no-mmap`).
    LoadMode {
        Auto => "auto", None => "none", Mmap => "mmap", Mlock => "mlock",
        MmapMlock => "mmap+mlock", Dio => "dio",
    }
);
flag_enum!(
    /// What the supervisor does when llama-server exits.
    RestartPolicy { Always => "always", OnFailure => "on_failure", Never => "never" }
);
flag_enum!(
    /// How a model whose launch identity changed is replaced.
    SwapStrategy { StopFirst => "stop_first", BlueGreen => "blue_green" }
);

/// A duration written the way people write them: `500ms`, `30s`, `10m`, `1h 30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HumanDuration(pub std::time::Duration);

impl HumanDuration {
    pub fn parse(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|_| {
                format!("expected a duration such as 30s, 10m or 1h 30m, found \"{text}\"")
            })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        HumanDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "duration",
            "description": "A duration such as 500ms, 30s, 10m or 1h 30m.",
            "pattern": r"^\s*\d+\s*[a-zµ]+(\s*\d+\s*[a-zµ]+)*\s*$",
            "examples": ["30s", "10m"]
        })
    }
}
