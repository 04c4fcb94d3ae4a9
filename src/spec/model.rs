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
    /// The memory the models may fill, per device: admission in
    /// `validate`, `plan` and every reload (docs/scheduler.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemorySpec>,
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
    /// A declared footprint used instead of the estimate (all of it on the
    /// model's first GPU, or on the host when it runs on none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    /// When memory is short, lower priorities yield first. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: Option<i32>,
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

/// A number of bytes written with a binary unit: `16GiB`, `512MiB`, `1.5GiB`,
/// `0B`. Decimal units (`GB`, `MB`) are refused with a hint: GPU tools and
/// llama.cpp print binary units, and a silent 7 % difference is how budgets
/// go wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Size(pub u64);

const BINARY_UNITS: [(&str, u64); 5] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

impl Size {
    pub const EXPECTED: &'static str = "a size such as 16GiB, 512MiB or 0B";

    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = (&t[..split], t[split..].trim());
        let expected = || format!("expected {}, found \"{text}\"", Size::EXPECTED);
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
            return Err(expected());
        }
        let Some((_, scale)) = BINARY_UNITS.iter().find(|(u, _)| *u == unit) else {
            let decimal = [
                ("kB", "KiB", 1e3, 1024.0),
                ("MB", "MiB", 1e6, 1_048_576.0),
                ("GB", "GiB", 1e9, 1_073_741_824.0),
                ("TB", "TiB", 1e12, 1_099_511_627_776.0),
            ];
            if let Some((_, binary, dec, bin)) =
                decimal.iter().find(|(d, ..)| d.eq_ignore_ascii_case(unit))
            {
                let same = number.parse::<f64>().unwrap_or(0.0) * dec / bin;
                return Err(format!(
                    "decimal units are not accepted, found \"{text}\": write {number}{binary} (1024-based, as llama.cpp and the GPU drivers count), or {same:.2}{binary} for the same bytes"
                ));
            }
            if unit.is_empty() {
                return Err(format!(
                    "expected {}, found \"{text}\": a size needs its unit (B, KiB, MiB, GiB or TiB)",
                    Size::EXPECTED
                ));
            }
            return Err(expected());
        };
        let bytes = match number.split_once('.') {
            None => number
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(*scale)),
            Some((whole, frac)) if !frac.contains('.') && frac.len() <= 6 => {
                let whole: u64 = whole
                    .parse()
                    .ok()
                    .filter(|_| !whole.is_empty())
                    .unwrap_or(0);
                let digits: u64 = frac.parse().ok().unwrap_or(0);
                let denom = 10u64.pow(frac.len() as u32);
                whole.checked_mul(*scale).and_then(|w| {
                    let part = u128::from(digits) * u128::from(*scale) / u128::from(denom);
                    w.checked_add(u64::try_from(part).ok()?)
                })
            }
            Some(_) => return Err(expected()),
        };
        // 1 EiB: far beyond any machine; larger is a typo.
        match bytes {
            Some(b) if b <= 1 << 60 => Ok(Size(b)),
            _ => Err(format!("{text} is too large (at most 1048576TiB)")),
        }
    }
}

impl fmt::Display for Size {
    /// The largest unit that writes the size exactly (`1536MiB`, `16GiB`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, scale) = BINARY_UNITS
            .iter()
            .rev()
            .find(|(_, s)| self.0.is_multiple_of(*s) && (self.0 > 0 || *s == 1))
            .copied()
            .unwrap_or(("B", 1));
        write!(f, "{}{unit}", self.0 / scale)
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Size::parse(&text).map_err(serde::de::Error::custom)
    }
}

const SIZE_PATTERN: &str = r"^\s*\d+(\.\d+)?\s*(B|KiB|MiB|GiB|TiB)\s*$";

impl JsonSchema for Size {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Size".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "size",
            "description": "A size in binary units: B, KiB, MiB, GiB or TiB (1024-based), e.g. 16GiB, 512MiB, 1.5GiB, 0B. Decimal units (GB, MB) are refused.",
            "pattern": SIZE_PATTERN,
            "examples": ["16GiB", "512MiB", "0B"]
        })
    }
}

/// A device's memory: `auto` (detected) or a size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemoryTotal {
    Auto,
    Size(Size),
}

impl MemoryTotal {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim() == "auto" {
            return Ok(MemoryTotal::Auto);
        }
        Size::parse(text).map(MemoryTotal::Size).map_err(|e| {
            if e.starts_with("expected ") {
                e.replacen("expected ", "expected auto or ", 1)
            } else {
                e
            }
        })
    }
}

impl fmt::Display for MemoryTotal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryTotal::Auto => f.write_str("auto"),
            MemoryTotal::Size(s) => s.fmt(f),
        }
    }
}

impl Serialize for MemoryTotal {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MemoryTotal {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        MemoryTotal::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for MemoryTotal {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MemoryTotal".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "size-or-auto",
            "description": "`auto` (what the machine reports; docs/scheduler.md) or a size in binary units, e.g. 16GiB.",
            "pattern": r"^\s*(auto|\d+(\.\d+)?\s*(B|KiB|MiB|GiB|TiB))\s*$",
            "examples": ["auto", "16GiB"]
        })
    }
}

/// The memory budget: what the daemon may fill on each device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    /// Each GPU's memory. `total` applies to every GPU llama-server lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram: Option<PoolSpec>,
    /// Host memory, for what runs on the CPU (and the host-side buffers of
    /// offloaded models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<PoolSpec>,
    /// The fixed per-process cost of a backend's runtime on its device,
    /// replacing the built-in guesses (docs/memory.md, "Overhead").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead: Option<OverheadSpec>,
    /// The anti-thrash bound (docs/scheduler.md): a busy on-demand model
    /// keeps the memory for a turn this long, and gives it up once a
    /// request for a model that cannot load beside it has waited as long.
    /// Default `40s`; `0s` swaps at each request for the other model (what
    /// FIFO schedulers do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fairness: Option<HumanDuration>,
    /// How long a stopped model's memory may take to be seen free (the
    /// device's used memory drops, or its KFD entry goes) before its
    /// reservation is released anyway, logged and counted. Default `30s`:
    /// AMD returns VRAM with a lag after the process exits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_wait: Option<HumanDuration>,
}

/// One kind of memory: how much there is and how much to leave alone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// `auto` (default): what the machine reports. Or a size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<MemoryTotal>,
    /// Left for everything else (desktop, other programs). Default 512MiB
    /// for `vram`, 1GiB for `ram`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve: Option<Size>,
}

/// Per-backend overhead. Unset backends keep the built-in figure
/// (ROCm 512MiB, CUDA 384MiB, Vulkan 64MiB, CPU 0B).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OverheadSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rocm: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vulkan: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Size>,
}
