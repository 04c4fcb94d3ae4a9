//! The estimate: where each tensor goes, what the KV cache and the compute
//! and output buffers take, per device.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Parts;
use super::hparams::{Hparams, LayerCache};
use super::settings::{Offload, Settings, SplitMode};
use crate::gguf::{GgufHeader, GgufTensorInfo};
use crate::spec::{CacheType, LaunchOptions};

/// A GPU the model may use, as llama-server names it (`ROCm0`, `CUDA0`,
/// `Vulkan0`), with its free memory (used for the default layer split, as
/// llama.cpp splits by free memory when `tensor_split` is unset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub free: u64,
    /// The largest tensor the backend runs an operation on: a weight above
    /// it stays on the host, and an operation whose result is above it runs
    /// on the host (`None`: no such limit). See [`Device::tensor_limit`].
    pub max_tensor: Option<u64>,
}

impl Device {
    pub fn new(name: impl Into<String>, free: u64) -> Device {
        Device {
            name: name.into(),
            free,
            max_tensor: None,
        }
    }

    /// A device as `llama-server --list-devices` describes it, with the
    /// backend's tensor limit.
    pub fn listed(name: impl Into<String>, description: &str, free: u64) -> Device {
        let name = name.into();
        Device {
            max_tensor: Device::tensor_limit(&name, description),
            name,
            free,
        }
    }

    /// b11434's Vulkan backend refuses an operation whose sources or result
    /// exceed the device's `maxStorageBufferRange` (without
    /// `VK_EXT_shader_64bit_indexing`; `ggml_backend_vk_device_supports_op`),
    /// so the loader keeps such a weight on the host (`select_weight_buft`)
    /// and the scheduler runs such an operation there. Mesa's lavapipe
    /// (llvmpipe) reports 2^27 bytes (`LP_MAX_TGSI_SHADER_BUFFER_SIZE`);
    /// another Vulkan driver's limit is at most what a `uint32_t` holds.
    /// ROCm and CUDA have no such limit.
    pub fn tensor_limit(name: &str, description: &str) -> Option<u64> {
        if !name.starts_with("Vulkan") {
            None
        } else if description.contains("llvmpipe") {
            Some(1 << 27)
        } else {
            Some(u64::from(u32::MAX))
        }
    }
}

/// A backend, as the per-process overhead is kept by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    Rocm,
    Cuda,
    Vulkan,
    Cpu,
}

impl Backend {
    pub const ALL: [Backend; 4] = [Backend::Rocm, Backend::Cuda, Backend::Vulkan, Backend::Cpu];

    /// `rocm`, `cuda`, `vulkan`, `cpu` (any case; `hip` is ROCm).
    pub fn parse(text: &str) -> Option<Backend> {
        Some(match text.to_ascii_lowercase().as_str() {
            "rocm" | "hip" => Backend::Rocm,
            "cuda" => Backend::Cuda,
            "vulkan" => Backend::Vulkan,
            "cpu" => Backend::Cpu,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Rocm => "rocm",
            Backend::Cuda => "cuda",
            Backend::Vulkan => "vulkan",
            Backend::Cpu => "cpu",
        }
    }

    /// The backend of a device llama.cpp names `ROCm0`, `CUDA1`, `Vulkan0`,
    /// `CPU`.
    pub fn of_device(device: &str) -> Backend {
        if device.starts_with("ROCm") || device.starts_with("HIP") {
            Backend::Rocm
        } else if device.starts_with("CUDA") {
            Backend::Cuda
        } else if device.starts_with("Vulkan") {
            Backend::Vulkan
        } else {
            Backend::Cpu
        }
    }
}

/// Each backend's fixed per-process overhead on a device it uses: the
/// runtime context (HIP, CUDA, Vulkan) and its kernels, which llama-server
/// does not print. The defaults are documented guesses (docs/memory.md),
/// not measured here; the spec can override them per backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overheads {
    bytes: BTreeMap<Backend, u64>,
}

impl Default for Overheads {
    /// ROCm/HIP 512 MiB, CUDA 384 MiB, Vulkan 64 MiB, CPU 0.
    fn default() -> Overheads {
        const MIB: u64 = 1 << 20;
        Overheads {
            bytes: BTreeMap::from([
                (Backend::Rocm, 512 * MIB),
                (Backend::Cuda, 384 * MIB),
                (Backend::Vulkan, 64 * MIB),
                (Backend::Cpu, 0),
            ]),
        }
    }
}

impl Overheads {
    /// The defaults with the spec's `memory.overhead` figures applied.
    pub fn from_spec(spec: &crate::spec::BackendOverheads) -> Overheads {
        let mut o = Overheads::default();
        for (backend, bytes) in [
            (Backend::Rocm, spec.rocm),
            (Backend::Cuda, spec.cuda),
            (Backend::Vulkan, spec.vulkan),
            (Backend::Cpu, spec.cpu),
        ] {
            if let Some(bytes) = bytes {
                o = o.with(backend, bytes);
            }
        }
        o
    }

    /// These overheads with `backend`'s set to `bytes`.
    pub fn with(mut self, backend: Backend, bytes: u64) -> Overheads {
        self.bytes.insert(backend, bytes);
        self
    }

    /// The defaults with each `(backend name, bytes)` applied, as a spec's
    /// `overhead:` map gives them; an unknown name is an error that lists
    /// the known ones.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> Result<Overheads, String> {
        let mut o = Overheads::default();
        for (name, bytes) in pairs {
            let backend = Backend::parse(name).ok_or_else(|| {
                format!(
                    "unknown backend `{name}`: expected one of {}",
                    Backend::ALL.map(Backend::as_str).join(", ")
                )
            })?;
            o = o.with(backend, bytes);
        }
        Ok(o)
    }

    pub fn of(&self, backend: Backend) -> u64 {
        self.bytes.get(&backend).copied().unwrap_or(0)
    }

    /// The overhead on a device, by its name's backend.
    pub fn of_device(&self, device: &str) -> u64 {
        self.of(Backend::of_device(device))
    }
}

/// The estimate for one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Per device (`CPU` is the host).
    pub devices: BTreeMap<String, Parts>,
    /// KV cells in all (the context, padded, times the streams).
    pub context: u64,
    /// Cells per slot.
    pub context_per_slot: u64,
    pub slots: u64,
    pub flash_attn: bool,
    /// Layers on a GPU, of `n_layer + 1` (the output layer counts).
    pub gpu_layers: u64,
    pub n_layer: u64,
}

impl Estimate {
    pub fn total_bytes(&self) -> u64 {
        self.devices.values().map(Parts::total).sum()
    }

    pub fn total(&self) -> Parts {
        let mut t = Parts::default();
        for p in self.devices.values() {
            t.add(p);
        }
        t
    }
}

fn pad(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// `(elements per block, bytes per block)` of a cache type.
fn cache_block(t: CacheType) -> (u64, u64) {
    match t {
        CacheType::F32 => (1, 4),
        CacheType::F16 | CacheType::Bf16 => (1, 2),
        CacheType::Q8_0 => (32, 34),
        CacheType::Q4_0 | CacheType::Iq4Nl => (32, 18),
        CacheType::Q4_1 => (32, 20),
        CacheType::Q5_0 => (32, 22),
        CacheType::Q5_1 => (32, 24),
    }
}

fn row_bytes(t: CacheType, n: u64) -> u64 {
    let (block, bytes) = cache_block(t);
    n.div_ceil(block) * bytes
}

/// The layer a tensor belongs to: `Some(il)` for `blk.<il>.`, `None` for the
/// token embeddings (the input layer) and `Some(n_layer)` for the rest (the
/// output layer).
fn tensor_layer(name: &str, n_layer: u64) -> Option<u64> {
    if let Some(rest) = name.strip_prefix("blk.") {
        return rest.split('.').next()?.parse().ok();
    }
    if name.starts_with("token_embd") || name.starts_with("token_types") {
        return None;
    }
    Some(n_layer)
}

/// Whether `pattern` (llama.cpp takes a regular expression; here the common
/// forms: alternatives with `|`, `.` and `\.` literally, `.*` and `\d+`
/// wildcards) matches somewhere in `name`.
pub fn override_matches(pattern: &str, name: &str) -> bool {
    pattern.split('|').any(|alt| glob_search(alt, name))
}

fn glob_search(pattern: &str, name: &str) -> bool {
    // Tokens: literal chars, ANY (.*), DIGITS (\d+ or [0-9]+), ONE (.).
    #[derive(Clone, Copy, PartialEq)]
    enum Tok {
        Lit(char),
        Any,
        Digits,
        One,
    }
    let mut toks = Vec::new();
    let chars: Vec<char> = pattern.trim_start_matches('^').chars().collect();
    let anchored_end = pattern.ends_with('$');
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let rest: String = chars[i..].iter().collect();
        if rest.starts_with(".*") {
            toks.push(Tok::Any);
            i += 2;
        } else if rest.starts_with("\\d+") || rest.starts_with("[0-9]+") {
            toks.push(Tok::Digits);
            i += if rest.starts_with("\\d+") { 3 } else { 6 };
        } else if rest.starts_with("\\.") {
            toks.push(Tok::Lit('.'));
            i += 2;
        } else if c == '.' {
            toks.push(Tok::One);
            i += 1;
        } else if (c == '$' && i == chars.len() - 1) || c == '(' || c == ')' {
            i += 1;
        } else {
            toks.push(Tok::Lit(c));
            i += 1;
        }
    }
    let name: Vec<char> = name.chars().collect();
    fn m(t: &[Tok], s: &[char], end: bool) -> bool {
        match t.first() {
            None => !end || s.is_empty(),
            Some(Tok::Lit(c)) => s.first() == Some(c) && m(&t[1..], &s[1..], end),
            Some(Tok::One) => !s.is_empty() && m(&t[1..], &s[1..], end),
            Some(Tok::Any) => (0..=s.len()).any(|k| m(&t[1..], &s[k..], end)),
            Some(Tok::Digits) => {
                let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
                (1..=n).any(|k| m(&t[1..], &s[k..], end))
            }
        }
    }
    let anchored_start = pattern.starts_with('^');
    if anchored_start {
        m(&toks, &name, anchored_end)
    } else {
        (0..=name.len()).any(|k| m(&toks, &name[k..], anchored_end))
    }
}

/// Whether the CPU backend repacks this weight into its `CPU_REPACK` buffer:
/// matrices used by a matrix multiplication, of a type with an x86 AVX2
/// repack in b11434's `ggml-cpu/repack.cpp` (Q4_0, Q4_K, IQ4_NL, MXFP4), with
/// rows in multiples of 8. The token embeddings are read by row, not
/// multiplied, so they stay. (ARM builds repack other types; rocm-llm's
/// build is x86-64.)
pub fn cpu_repacks(t: &GgufTensorInfo) -> bool {
    matches!(t.ggml_type.0, 2 | 12 | 20 | 39)
        && t.dims.len() >= 2
        && t.dims[1].is_multiple_of(8)
        && !t.name.starts_with("token_embd")
}

/// Where the layers go: `None` the host, `Some(i)` GPU `i`; index `n_layer`
/// is the output layer. llama.cpp's `load_tensors`: the last `n` layers
/// offload, the output layer only when `n > n_layer`, split across GPUs at
/// the cumulative fractions of `tensor_split` (default: free memory).
pub fn layer_devices(n_layer: u64, s: &Settings, gpus: &[Device]) -> Vec<Option<usize>> {
    let n_all = n_layer + 1;
    if gpus.is_empty() {
        return vec![None; n_all as usize];
    }
    let ngl = match s.offload {
        Offload::All => n_all,
        Offload::Layers(n) => n.min(n_all),
    };
    let start = n_all - ngl;
    let fractions: Vec<f64> = if s.split_mode == SplitMode::None {
        (0..gpus.len())
            .map(|i| if i == s.main_gpu { 1.0 } else { 0.0 })
            .collect()
    } else if s.tensor_split.iter().any(|&x| x > 0.0) {
        (0..gpus.len())
            .map(|i| s.tensor_split.get(i).copied().unwrap_or(0.0))
            .collect()
    } else {
        gpus.iter().map(|g| g.free.max(1) as f64).collect()
    };
    let sum: f64 = fractions.iter().sum();
    let mut cum = Vec::with_capacity(fractions.len());
    let mut acc = 0.0;
    for f in &fractions {
        acc += f;
        cum.push(acc / sum);
    }
    (0..n_all)
        .map(|il| {
            if il < start {
                return None;
            }
            let x = (il - start) as f64 / ngl as f64;
            let gpu = cum.partition_point(|&c| c <= x).min(gpus.len() - 1);
            Some(gpu)
        })
        .collect()
}

/// The device name for a placement.
fn dev_name(d: Option<usize>, gpus: &[Device]) -> String {
    d.map_or_else(|| "CPU".to_owned(), |i| gpus[i].name.clone())
}

/// The estimate for a checked header and launch options.
pub fn estimate_model(
    header: &GgufHeader,
    options: &LaunchOptions,
    gpus: &[Device],
    overheads: &Overheads,
) -> Result<Estimate, String> {
    let h = Hparams::from_header(header)?;
    let s = Settings::resolve(options, h.n_ctx_train);
    let mmproj = match &s.mmproj {
        Some(p) => Some(
            crate::gguf::check_model(p)
                .map_err(|e| format!("the --mmproj file: {e}"))?
                .header,
        ),
        None => None,
    };
    estimate(&h, &header.tensors, &s, gpus, mmproj.as_ref(), overheads)
}

/// The estimate from the parts.
pub fn estimate(
    h: &Hparams,
    tensors: &[GgufTensorInfo],
    s: &Settings,
    gpus: &[Device],
    mmproj: Option<&GgufHeader>,
    overheads: &Overheads,
) -> Result<Estimate, String> {
    let mut devices: BTreeMap<String, Parts> = BTreeMap::new();
    devices.insert("CPU".to_owned(), Parts::default());
    let placement = layer_devices(h.n_layer, s, gpus);
    let layer_dev = |il: u64| placement.get(il as usize).copied().flatten();
    let output_dev = layer_dev(h.n_layer);

    // Weights. On the host, matrices the CPU backend repacks go to a
    // `CPU_REPACK` buffer (a copy), and the memory-mapped buffer spans the
    // file from the first to the last tensor it holds (gaps included), as
    // llama-model-loader maps it.
    let mut host_range: Option<(u64, u64)> = None;
    let mut host_repack = 0u64;
    let over_limit = |g: &Device, bytes: u64| g.max_tensor.is_some_and(|l| bytes > l);
    let mut output_on_host = false;
    for t in tensors {
        let bytes = t.n_bytes().map_err(|e| e.to_string())?;
        let layer = tensor_layer(&t.name, h.n_layer);
        let mut dev = layer.and_then(layer_dev);
        if let Some(il) = layer
            && il < h.n_layer
            && t.name.contains("_exps")
            && il < s.n_cpu_moe
        {
            dev = None;
        }
        // A weight the device cannot run its operation on stays on the host
        // (Vulkan's storage-buffer limit; see `Device::tensor_limit`).
        if dev.is_some_and(|i| over_limit(&gpus[i], bytes)) {
            if layer == Some(h.n_layer) && t.name.starts_with("output.") {
                output_on_host = true;
            }
            dev = None;
        }
        let mut name = dev_name(dev, gpus);
        if let Some(o) = s
            .overrides
            .iter()
            .find(|o| override_matches(&o.pattern, &t.name))
        {
            name = super::log::buffer_device(&o.buffer);
        }
        if name == "CPU" {
            if cpu_repacks(t) {
                host_repack += bytes;
            } else {
                let end = t.offset + bytes;
                host_range = Some(
                    host_range.map_or((t.offset, end), |(a, b)| (a.min(t.offset), b.max(end))),
                );
            }
        } else {
            devices.entry(name).or_default().weights += bytes;
        }
        // Tied embeddings: the output layer loads its own copy of the token
        // embeddings where it is not on the host.
        if t.name == "token_embd.weight" && !h.has_output && output_dev.is_some() {
            if output_dev.is_some_and(|i| over_limit(&gpus[i], bytes)) {
                // Too large for the device: the output layer reads the
                // host's copy, and its matrix multiplication runs there.
                output_on_host = true;
                continue;
            }
            devices
                .entry(dev_name(output_dev, gpus))
                .or_default()
                .weights += bytes;
        }
    }
    let mapped = host_range.map_or(0, |(a, b)| b - a);
    devices.entry("CPU".to_owned()).or_default().weights += mapped + host_repack;

    // KV cache (llama_context / llama_kv_cache(_iswa)): the context padded
    // to 256; without a unified cache each slot gets its own stream of
    // ctx/slots cells, padded to 256.
    let n_seq = s.n_seq.max(1);
    let n_ctx = pad(s.ctx_size.max(1), 256);
    let (kv_size, n_stream) = if s.kv_unified {
        (n_ctx, 1)
    } else {
        (pad(n_ctx / n_seq, 256), n_seq)
    };
    let fa = s.flash_attn.unwrap_or(true);
    let swa_size = if s.swa_full {
        kv_size
    } else {
        pad(
            kv_size.min(h.n_swa * if s.kv_unified { n_seq } else { 1 } + s.n_ubatch),
            256,
        )
    };
    let v_max = (0..h.n_layer as usize)
        .map(|il| h.kv_elements(il).1)
        .max()
        .unwrap_or(0);
    // The largest cache of one layer kept on the host.
    let mut host_layer_kv = 0u64;
    for il in 0..h.n_layer {
        let cells = match h.layers[il as usize] {
            LayerCache::Full => kv_size,
            LayerCache::Swa => swa_size,
            LayerCache::Recurrent => {
                let (r, st) = h.recurrent_rs;
                let bytes = (r + st) * 4 * n_seq;
                let dev = if s.no_kv_offload { None } else { layer_dev(il) };
                devices.entry(dev_name(dev, gpus)).or_default().kv += bytes;
                continue;
            }
            LayerCache::None => continue,
        };
        let (k, mut v) = h.kv_elements(il as usize);
        if !fa && v > 0 {
            // A transposed V cache is sized for the widest layer.
            v = v_max;
        }
        let bytes = (row_bytes(s.type_k, k) + row_bytes(s.type_v, v)) * cells * n_stream;
        let dev = if s.no_kv_offload { None } else { layer_dev(il) };
        if dev.is_none() {
            host_layer_kv = host_layer_kv.max(bytes);
        }
        // One layer's K (or V) cache is one tensor; a device that cannot run
        // operations on it makes llama-server abort at load ("pre-allocated
        // tensor (cache_k_l0) in a buffer (Vulkan0) that cannot run the
        // operation").
        if let Some(g) = dev.map(|i| &gpus[i]) {
            let widest = row_bytes(s.type_k, k).max(row_bytes(s.type_v, v)) * cells * n_stream;
            if over_limit(g, widest) {
                return Err(format!(
                    "layer {il}'s KV cache tensor ({}) exceeds {}'s largest tensor ({}): \
                     llama-server aborts at load; lower ctx_size, quantize the cache, \
                     or keep the cache on the host (--no-kv-offload)",
                    super::human_bytes(widest),
                    g.name,
                    super::human_bytes(g.max_tensor.unwrap_or(0))
                ));
            }
        }
        devices.entry(dev_name(dev, gpus)).or_default().kv += bytes;
    }

    // Output buffer (llama_context::output_reserve): logits for one token
    // per slot, on the host.
    devices.entry("CPU".to_owned()).or_default().output = h.n_vocab * n_seq * 4;

    // Compute buffers: the worst-case graph for one ubatch, on each device
    // that runs part of it.
    let n_tokens = n_ctx.min(s.n_ubatch);
    let full_kv = kv_size;
    let swa_kv = if h.layers.contains(&LayerCache::Swa) {
        swa_size
    } else {
        0
    };
    let graph = ComputeGraph {
        h,
        fa,
        n_tokens,
        n_outputs: n_seq.min(s.n_batch).min(n_tokens),
        full_kv,
        swa_kv,
    };
    let mut runs: BTreeMap<String, (bool, bool)> = BTreeMap::new(); // (layers, output)
    for il in 0..h.n_layer {
        runs.entry(dev_name(layer_dev(il), gpus)).or_default().0 = true;
    }
    let output_runs_on = if output_on_host { None } else { output_dev };
    runs.entry(dev_name(output_runs_on, gpus)).or_default().1 = true;
    // The scheduler offloads a ubatch of 32 tokens or more to a GPU even
    // for layers whose weights are on the host (`offload_op`), copying the
    // weights in as it goes: with no layer on a GPU the first one still
    // computes, and the host computes only its inputs (and the logits,
    // too few rows to offload).
    let op_offload = !gpus.is_empty() && n_tokens >= 32;
    if op_offload && placement.iter().all(Option::is_none) {
        runs.entry(gpus[0].name.clone()).or_default().0 = true;
    }
    // Attention scores a device cannot hold (without flash attention, over
    // its tensor limit) are computed on the host, from copies of Q, K and V.
    let mut attention_on_host = false;
    for (dev, (layers, _)) in &runs {
        if let Some(g) = gpus.iter().find(|g| &g.name == dev) {
            attention_on_host |= *layers && over_limit(g, graph.scores());
        }
    }
    let gpu_kv = !s.no_kv_offload && placement[..h.n_layer as usize].iter().any(Option::is_some);
    let host_runs_layers = !op_offload && placement.iter().any(Option::is_none);
    // An offloaded ubatch of a host layer brings that layer's cache along
    // (a copy in the GPU's compute buffer), unless its attention stays on
    // the host.
    let kv_copy_to = (op_offload && host_layer_kv > 0 && !attention_on_host).then(|| {
        (0..=h.n_layer as usize)
            .find_map(|il| placement.get(il).copied().flatten())
            .unwrap_or(0)
    });
    for (dev, (layers, output)) in &runs {
        let bytes = match gpus.iter().position(|g| &g.name == dev) {
            Some(i) => {
                let g = &gpus[i];
                let copy = if kv_copy_to == Some(i) {
                    host_layer_kv
                } else {
                    0
                };
                graph.peak(*layers, *output, !over_limit(g, graph.scores())) + copy
            }
            None if host_runs_layers => graph.peak(true, *output, true),
            // The host runs no layer: its inputs, and the logits when the
            // output matrix stayed there.
            None => graph.host_input(attention_on_host, gpu_kv) + graph.logits(*output),
        };
        devices.entry(dev.clone()).or_default().compute += bytes;
    }
    if !gpus.is_empty() && !runs.contains_key("CPU") {
        devices.entry("CPU".to_owned()).or_default().compute +=
            graph.host_input(attention_on_host, gpu_kv);
    }

    // Multimodal projector: on the first GPU (or the host).
    if let Some(mm) = mmproj {
        let bytes: u64 = mm.tensors.iter().filter_map(|t| t.n_bytes().ok()).sum();
        let dev = if gpus.is_empty() {
            None
        } else {
            Some(s.main_gpu.min(gpus.len() - 1))
        };
        let p = devices.entry(dev_name(dev, gpus)).or_default();
        p.weights += bytes;
        p.compute += projector_compute(mm, fa);
    }

    for g in gpus {
        if let Some(p) = devices.get_mut(&g.name) {
            p.overhead = overheads.of_device(&g.name);
        }
    }
    let gpu_layers = placement.iter().filter(|d| d.is_some()).count() as u64;
    Ok(Estimate {
        devices,
        context: kv_size * n_stream,
        context_per_slot: kv_size,
        slots: n_seq,
        flash_attn: fa,
        gpu_layers,
        n_layer: h.n_layer,
    })
}

/// The multimodal projector's compute buffer, reserved at load for one
/// image of `clip.vision.image_size` (tools/mtmd: `reserve_compute_meta`
/// over the warmup image). For a ViT encoder (llava's graph, measured on
/// generated `mlp` projectors, docs/memory.md): the f32 image, plus the
/// larger of the patch embedding (its f16 im2col and two f32 residual rows
/// per patch) and an encoder layer (a feed-forward row and three residual
/// rows per patch; without flash attention the `patches² x heads` f32
/// scores and four residual rows). llava skips the last layer, so a
/// one-layer encoder runs none. 0 without a vision encoder's keys (audio
/// projectors are not estimated).
pub fn projector_compute(mm: &GgufHeader, flash_attn: bool) -> u64 {
    let get = |k: &str| mm.get_u64(&format!("clip.vision.{k}"));
    let (Some(e), Some(image), Some(patch)) = (
        get("embedding_length"),
        get("image_size"),
        get("patch_size").filter(|&p| p > 0),
    ) else {
        return 0;
    };
    let ff = get("feed_forward_length").unwrap_or(4 * e);
    let heads = get("attention.head_count").unwrap_or(1);
    let layers_run = get("block_count").unwrap_or(0).saturating_sub(1);
    let n_pos = (image / patch).pow(2);
    let raw = image * image * 3 * 4;
    let row = n_pos * e * 4;
    let embed = n_pos * patch * patch * 3 * 2 + 2 * row;
    let layer = if layers_run == 0 {
        0
    } else if flash_attn {
        n_pos * ff * 4 + 3 * row
    } else {
        (n_pos * ff * 4 + 3 * row).max(n_pos * n_pos * heads * 4 + 4 * row)
    };
    raw + embed.max(layer)
}

/// The compute graph's worst case, reserved by `sched_reserve` for a full
/// ubatch over the whole cache.
struct ComputeGraph<'a> {
    h: &'a Hparams,
    fa: bool,
    n_tokens: u64,
    n_outputs: u64,
    full_kv: u64,
    swa_kv: u64,
}

impl ComputeGraph<'_> {
    /// The attention masks, live through the whole graph: one per cache
    /// kind, `cells x ubatch`, f16 with flash attention and f32 without.
    fn masks(&self) -> u64 {
        let el = if self.fa { 2 } else { 4 };
        (self.full_kv + self.swa_kv) * self.n_tokens * el
    }

    /// The logits of the outputs, when `output` runs here.
    fn logits(&self, output: bool) -> u64 {
        if output {
            self.h.n_vocab * self.n_outputs * 4
        } else {
            0
        }
    }

    /// The attention scores of one layer without flash attention:
    /// `cells x ubatch x heads` f32 (0 with flash attention).
    fn scores(&self) -> u64 {
        if self.fa {
            0
        } else {
            self.full_kv.max(self.swa_kv) * self.n_tokens * self.h.n_head_max() * 4
        }
    }

    /// The host's share when no layer runs there: the embedded tokens and
    /// the masks, filled in f32 on the host (a GPU casts its own f16 copy);
    /// with `attention` also the scores and the copy of Q they are computed
    /// from, and with `copies` the copies of a GPU layer's K and V.
    fn host_input(&self, attention: bool, copies: bool) -> u64 {
        let h = self.h;
        let t = self.n_tokens;
        // Three residual-wide f32 rows per token: the embedded tokens, the
        // mixed-input embedding (`inp_mixed_tokens`, a second GET_ROWS) and
        // its input tensor, all on the host (GGML_SCHED_DEBUG=2 shows them).
        let mut bytes = 3 * h.n_embd * t * 4 + t * 8 + (self.full_kv + self.swa_kv) * t * 4;
        if attention {
            let kvd = h.n_head_kv.iter().copied().max().unwrap_or(0) * h.head_k;
            let cells = self.full_kv.max(self.swa_kv);
            bytes += self.scores() + t * h.n_head_max() * h.head_k * 4;
            if copies {
                bytes += 2 * cells * kvd * 2;
            }
        }
        bytes
    }

    /// The peak of the live tensors. The per-token coefficients come from
    /// the graph (llama-graph.cpp: build_attn_mha, build_ffn, build_moe_ffn)
    /// as ggml-alloc lays it out on the CPU backend, and were checked against
    /// llama-server's own figures (docs/memory.md):
    /// - attention without flash attention: the KQ scores,
    ///   `cells x ubatch x heads` f32 (soft_max works in place), beside
    ///   3 residual-wide, 3 Q-wide and 2 KV-wide f32 rows per token;
    /// - feed-forward: 3 `n_ff`-wide and 5 residual-wide f32 rows per token
    ///   (a MoE: the used experts' rows, the router's logits and weights);
    /// - output: the logits of the outputs (one per slot) and a residual row.
    ///
    /// `scores_here`: the attention scores are computed on this device
    /// (else on the host, see [`ComputeGraph::host_input`]).
    fn peak(&self, layers: bool, output: bool, scores_here: bool) -> u64 {
        let h = self.h;
        let t = self.n_tokens;
        let e = h.n_embd;
        let n_head = h.n_head_max();
        let q = n_head * h.head_k;
        let kvd = h.n_head_kv.iter().copied().max().unwrap_or(0) * h.head_k;
        let mut peak = 0;
        if layers {
            let rows = (3 * e + 3 * q + 2 * kvd) * t * 4;
            let attn = if scores_here {
                rows + self.scores()
            } else {
                rows
            };
            let ffn = if h.n_expert > 0 {
                let k = h.n_expert_used.max(1);
                (3 * h.n_ff_exp * k + 5 * e + 2 * h.n_expert + k * e) * t * 4
            } else {
                (3 * h.n_ff_max() + 5 * e) * t * 4
            };
            peak = peak.max(attn).max(ffn);
        }
        if output {
            peak = peak.max(h.n_vocab * self.n_outputs * 4 + 2 * e * t * 4);
        }
        self.masks() + peak
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;
    use crate::gguf::shapes::{Shape, ShapeArch, real_shapes, shape_writer};
    use crate::spec::{GpuLayers, LaunchOptions};

    const MIB: u64 = 1 << 20;

    fn header(shape: &Shape) -> GgufHeader {
        let mut out = Vec::new();
        shape_writer(shape)
            .unwrap()
            .write_to(&mut HeaderOnly(&mut out))
            .ok();
        GgufHeader::read(&out[..], 1 << 30).unwrap()
    }

    /// Keeps what is written up to the tensor data (the header), so a
    /// multi-gigabyte shape costs nothing here.
    struct HeaderOnly<'a>(&'a mut Vec<u8>);
    impl std::io::Write for HeaderOnly<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0.len() > 64 << 20 {
                return Err(std::io::Error::other("header only"));
            }
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn shape(name: &str) -> Shape {
        real_shapes().into_iter().find(|s| s.name == name).unwrap()
    }

    fn small() -> Shape {
        Shape {
            name: "small",
            arch: ShapeArch::Llama,
            n_embd: 256,
            n_layer: 4,
            n_head: 4,
            n_head_kv: 2,
            head_dim: 64,
            n_ff: 512,
            n_vocab: 1000,
            tied: false,
            n_swa: 0,
            moe: None,
            weights: GgmlType::F16,
            n_ctx_train: 4096,
        }
    }

    fn run(shape: &Shape, o: &LaunchOptions, gpus: &[Device]) -> Estimate {
        estimate_model(&header(shape), o, gpus, &Overheads::default()).unwrap()
    }

    fn opts(f: impl FnOnce(&mut LaunchOptions)) -> LaunchOptions {
        let mut o = LaunchOptions::default();
        f(&mut o);
        o
    }

    #[test]
    fn layers_offload_from_the_output_layer_down() {
        // b11434's load_tensors: i_gpu_start = n_layer + 1 - n_gpu_layers,
        // and the output layer is layer n_layer, so it is the first to go.
        let one = [Device::new("ROCm0", 16 << 30)];
        let check = |offload: Offload, expected: &[Option<usize>]| {
            let s = Settings {
                offload,
                ..Settings::resolve(&LaunchOptions::default(), 4096)
            };
            assert_eq!(layer_devices(4, &s, &one), expected, "{offload:?}");
        };
        let (c, g) = (None, Some(0));
        check(Offload::Layers(0), &[c, c, c, c, c]);
        check(Offload::Layers(1), &[c, c, c, c, g]);
        check(Offload::Layers(2), &[c, c, c, g, g]);
        check(Offload::Layers(4), &[c, g, g, g, g]);
        check(Offload::Layers(5), &[g, g, g, g, g]);
        check(Offload::Layers(99), &[g, g, g, g, g]);
        check(Offload::All, &[g, g, g, g, g]);
        // No GPU: everything on the host whatever is asked.
        let s = Settings::resolve(&LaunchOptions::default(), 4096);
        assert_eq!(layer_devices(4, &s, &[]), vec![None; 5]);
    }

    #[test]
    fn layers_split_across_gpus_by_tensor_split_or_free_memory() {
        let two = [
            Device::new("ROCm0", 8 << 30),
            Device::new("ROCm1", 24 << 30),
        ];
        let check = |extra: &[&str], expected: &[Option<usize>]| {
            let o = opts(|o| o.extra_args = extra.iter().map(|s| s.to_string()).collect());
            let s = Settings::resolve(&o, 4096);
            assert_eq!(layer_devices(7, &s, &two), expected, "{extra:?}");
        };
        let (a, b) = (Some(0), Some(1));
        // By free memory, 1:3 over 8 layers (7 + output): 2 and 6.
        check(&[], &[a, a, b, b, b, b, b, b]);
        check(&["--tensor-split", "1,1"], &[a, a, a, a, b, b, b, b]);
        check(&["-ts", "3/1"], &[a, a, a, a, a, a, b, b]);
        check(&["--tensor-split=0,1"], &[b; 8]);
        check(&["-sm", "none"], &[a; 8]);
        check(&["-sm", "none", "-mg", "1"], &[b; 8]);
    }

    #[test]
    fn weights_follow_their_layers_experts_and_overrides() {
        let s = small();
        let gpu = [Device::new("CUDA0", 16 << 30)];
        let all = run(&s, &LaunchOptions::default(), &gpu);
        let embd = 256 * 1000 * 2;
        let total: u64 = header(&s).total_tensor_bytes().unwrap();
        assert_eq!(
            all.devices["CPU"].weights, embd,
            "only the input layer stays"
        );
        assert_eq!(all.devices["CUDA0"].weights, total - embd);
        assert_eq!(all.gpu_layers, 5);
        assert_eq!(all.devices["CUDA0"].overhead, 384 * MIB);

        // Two: the output layer and layer 3 go; the host keeps the input and
        // layers 0-2, contiguous in the file, so its mapped range is exact.
        let two = run(
            &s,
            &opts(|o| o.gpu_layers = Some(GpuLayers::Count(2))),
            &gpu,
        );
        assert_eq!(two.gpu_layers, 2);
        let layer = 2 * 256 * 4 + (256 * 256 * 2 + 2 * 256 * 128 + 3 * 256 * 512) * 2;
        let output = 256 * 4 + 256 * 1000 * 2;
        assert_eq!(two.devices["CUDA0"].weights, layer + output);
        assert_eq!(two.devices["CPU"].weights, total - layer - output);

        // Tied embeddings: the offloaded output layer loads its own copy.
        let tied = Shape {
            tied: true,
            ..small()
        };
        let t = run(&tied, &LaunchOptions::default(), &gpu);
        let tied_total = header(&tied).total_tensor_bytes().unwrap();
        assert_eq!(t.devices["CPU"].weights, embd);
        assert_eq!(t.devices["CUDA0"].weights, tied_total);

        // An override sends matching tensors to the host.
        let o = opts(|o| o.extra_args = vec!["-ot".into(), "ffn_.*=CPU".into()]);
        let ot = run(&s, &o, &gpu);
        let ffn = 4 * 3 * 256 * 512 * 2;
        assert_eq!(
            ot.devices["CUDA0"].weights,
            total - embd - ffn - 4 * 256 * 4
        );
    }

    #[test]
    fn cpu_moe_keeps_the_experts_of_the_first_layers_on_the_host() {
        let m = Shape {
            moe: Some((8, 2, 128)),
            arch: ShapeArch::Qwen3Moe,
            ..small()
        };
        let gpu = [Device::new("ROCm0", 16 << 30)];
        let expert_layer = 3 * 256 * 128 * 8 * 2;
        let base = run(&m, &LaunchOptions::default(), &gpu);
        for (args, layers_on_host) in [
            (vec!["--n-cpu-moe", "1"], 1),
            (vec!["--n-cpu-moe=3"], 3),
            (vec!["--cpu-moe"], 4),
        ] {
            let o = opts(|o| o.extra_args = args.iter().map(|s| s.to_string()).collect());
            let e = run(&m, &o, &gpu);
            assert_eq!(
                base.devices["ROCm0"].weights - e.devices["ROCm0"].weights,
                layers_on_host * expert_layer,
                "{args:?}"
            );
        }
    }

    #[test]
    fn kv_cache_sizes_follow_llama_cpp() {
        // (shape, ctx, parallel, extra args, KV bytes)
        let f16 = 2u64;
        let llama = shape("llama3-8b"); // 2 layers, 8 KV heads of 128
        let row = 8 * 128 * f16 * 2; // K + V per cell and layer
        let gemma = shape("gemma3-1b"); // 6 layers: 5 sliding (512), 1 full; 1 KV head of 256
        let grow = 256 * f16 * 2;
        type Case<'a> = (&'a Shape, u32, Option<u32>, Vec<&'a str>, u64);
        let cases: Vec<Case> = vec![
            (&llama, 4096, None, vec![], 2 * row * 4096),
            // Padded to 256.
            (&llama, 4000, None, vec![], 2 * row * 4096),
            // 4 separate slots: 1000 cells each, padded to 1024.
            (&llama, 4000, Some(4), vec![], 2 * row * 4096),
            (&llama, 3000, Some(4), vec![], 2 * row * 768 * 4),
            (&llama, 3000, Some(4), vec!["--kv-unified"], 2 * row * 3072),
            // iSWA: the window (512) plus a ubatch, times the slots when unified.
            (&gemma, 8192, Some(1), vec![], grow * (8192 + 5 * 1024)),
            (&gemma, 8192, None, vec![], grow * (8192 + 5 * 2560)),
            (&gemma, 8192, Some(4), vec![], grow * 4 * (2048 + 5 * 1024)),
            (&gemma, 8192, Some(1), vec!["--swa-full"], grow * 6 * 8192),
            // A small context caps the window.
            (&gemma, 512, Some(1), vec![], grow * 6 * 512),
        ];
        for (s, ctx, parallel, extra, expected) in cases {
            let o = opts(|o| {
                o.ctx_size = Some(ctx);
                o.parallel = parallel;
                o.extra_args = extra.iter().map(|x| x.to_string()).collect();
            });
            let e = run(s, &o, &[]);
            assert_eq!(
                e.devices["CPU"].kv, expected,
                "{} ctx {ctx} np {parallel:?} {extra:?}",
                s.name
            );
        }
    }

    #[test]
    fn mla_keeps_no_v_and_recurrent_layers_keep_state() {
        let mut w = crate::gguf::GgufWriter::new();
        w.add_kv("general.architecture", "deepseek2")
            .add_kv("deepseek2.block_count", 2u32)
            .add_kv("deepseek2.embedding_length", 2048u32)
            .add_kv("deepseek2.attention.head_count", 16u32)
            .add_kv("deepseek2.attention.head_count_kv", 1u32)
            .add_kv("deepseek2.attention.key_length", 576u32)
            .add_kv("deepseek2.attention.value_length", 512u32)
            .add_kv("deepseek2.attention.key_length_mla", 192u32)
            .add_kv("deepseek2.attention.value_length_mla", 128u32)
            .add_kv("deepseek2.vocab_size", 1000u32);
        let mut b = Vec::new();
        w.write_to(&mut b).unwrap();
        let h = GgufHeader::read(&b[..], 1 << 20).unwrap();
        let o = opts(|o| {
            o.ctx_size = Some(1024);
            o.parallel = Some(1);
        });
        let e = estimate_model(&h, &o, &[], &Overheads::default()).unwrap();
        assert_eq!(e.devices["CPU"].kv, 2 * 576 * 2 * 1024);

        let mut w = crate::gguf::GgufWriter::new();
        w.add_kv("general.architecture", "mamba")
            .add_kv("mamba.block_count", 3u32)
            .add_kv("mamba.embedding_length", 768u32)
            .add_kv("mamba.ssm.conv_kernel", 4u32)
            .add_kv("mamba.ssm.inner_size", 1536u32)
            .add_kv("mamba.ssm.state_size", 16u32)
            .add_kv("mamba.vocab_size", 1000u32);
        let mut b = Vec::new();
        w.write_to(&mut b).unwrap();
        let h = GgufHeader::read(&b[..], 1 << 20).unwrap();
        let e = estimate_model(
            &h,
            &opts(|o| o.parallel = Some(2)),
            &[],
            &Overheads::default(),
        )
        .unwrap();
        // Per layer and sequence: conv (4-1) x 1536 and ssm 16 x 1536, f32.
        assert_eq!(e.devices["CPU"].kv, 3 * 2 * (3 * 1536 + 16 * 1536) * 4);
    }

    #[test]
    fn overheads_default_to_the_documented_constants_and_can_be_overridden() {
        let d = Overheads::default();
        for (device, bytes) in [
            ("ROCm0", 512 * MIB),
            ("HIP1", 512 * MIB),
            ("CUDA0", 384 * MIB),
            ("Vulkan0", 64 * MIB),
            ("CPU", 0),
        ] {
            assert_eq!(d.of_device(device), bytes, "{device}");
        }
        let o = Overheads::default()
            .with(Backend::parse("ROCm").unwrap(), 300 * MIB)
            .with(Backend::Cpu, 1);
        assert_eq!(o.of_device("ROCm1"), 300 * MIB);
        assert_eq!(o.of_device("CPU"), 1);
        assert_eq!(o.of_device("CUDA0"), 384 * MIB, "the others keep theirs");
        for b in Backend::ALL {
            assert_eq!(Backend::parse(b.as_str()), Some(b));
        }
        assert_eq!(Backend::parse("metal"), None);
        let spec = Overheads::from_pairs([("rocm", 300 * MIB), ("Vulkan", 0)]).unwrap();
        assert_eq!(spec.of_device("ROCm0"), 300 * MIB);
        assert_eq!(spec.of_device("Vulkan0"), 0);
        assert_eq!(spec.of_device("CUDA0"), 384 * MIB);
        assert_eq!(
            Overheads::from_pairs([("metal", 1)]).unwrap_err(),
            "unknown backend `metal`: expected one of rocm, cuda, vulkan, cpu"
        );
        // The estimate adds the overhead it is given, per GPU it uses.
        let gpu = [Device::new("ROCm0", 16 << 30)];
        let e = estimate_model(
            &header(&small()),
            &LaunchOptions::default(),
            &gpu,
            &Overheads::default().with(Backend::Rocm, 7),
        )
        .unwrap();
        assert_eq!(e.devices["ROCm0"].overhead, 7);
        assert_eq!(e.devices["CPU"].overhead, 0);
    }

    #[test]
    fn vulkan_keeps_what_exceeds_the_devices_tensor_limit_on_the_host() {
        for (name, description, limit) in [
            ("Vulkan0", "llvmpipe (LLVM 22.1.8, 256 bits)", Some(1 << 27)),
            (
                "Vulkan0",
                "AMD Radeon RX 7800 XT (RADV NAVI32)",
                Some(u64::from(u32::MAX)),
            ),
            ("ROCm0", "AMD Radeon RX 7800 XT", None),
            ("CUDA0", "NVIDIA GeForce RTX 4090", None),
        ] {
            assert_eq!(
                Device::tensor_limit(name, description),
                limit,
                "{description}"
            );
        }
        // small(): the output matrix is 500 KB, a layer's largest 256 KB.
        let lavapipe = |limit: u64| Device {
            max_tensor: Some(limit),
            ..Device::new("Vulkan0", 16 << 30)
        };
        let o = opts(|o| {
            o.ctx_size = Some(512);
            o.parallel = Some(1);
            o.flash_attn = Some(crate::spec::FlashAttn::Off);
        });
        let free = run(&small(), &o, &[Device::new("Vulkan0", 16 << 30)]);
        let capped = run(&small(), &o, &[lavapipe(300_000)]);
        let output = 256 * 1000 * 2;
        assert_eq!(
            free.devices["Vulkan0"].weights - capped.devices["Vulkan0"].weights,
            output,
            "the output matrix stays on the host"
        );
        // The host then computes the logits; and attention scores over the
        // limit move there too (512 cells x 512 tokens x 4 heads f32 = 4 MiB), leaving the GPU
        // its rows.
        assert!(capped.devices["CPU"].compute > free.devices["CPU"].compute);
        assert!(capped.devices["Vulkan0"].compute < free.devices["Vulkan0"].compute);
        // The host maps the file from its first to its last tensor, so it
        // holds at least the moved matrix more.
        assert!(
            capped.devices["CPU"].weights >= free.devices["CPU"].weights + output,
            "{capped:?}"
        );
        // A layer's cache over the limit: llama-server aborts, so no estimate.
        let long = opts(|o| {
            o.ctx_size = Some(65536);
            o.parallel = Some(1);
        });
        // 65536 cells x 2 heads x 64 x f16 = 16 MiB per K tensor.
        let err = estimate_model(
            &header(&small()),
            &long,
            &[lavapipe(8 << 20)],
            &Overheads::default(),
        )
        .unwrap_err();
        assert!(err.contains("exceeds Vulkan0's largest tensor"), "{err}");
        assert!(
            estimate_model(
                &header(&small()),
                &long,
                &[lavapipe(16 << 20)],
                &Overheads::default()
            )
            .is_ok()
        );
        // Tied embeddings over the limit: no second copy on the device.
        let tied = Shape {
            tied: true,
            ..small()
        };
        let t = run(&tied, &o, &[lavapipe(300_000)]);
        let file = header(&tied).total_tensor_bytes().unwrap();
        assert_eq!(t.total().weights, file, "one copy of the embeddings");
    }

    #[test]
    fn overrides_match_like_the_patterns_people_write() {
        for (pattern, name, expected) in [
            ("exps=CPU", "blk.3.ffn_up_exps.weight", true),
            (r"\.ffn_.*_exps\.", "blk.3.ffn_up_exps.weight", true),
            (r"blk\.(1|2)\.ffn", "blk.2.ffn_up.weight", true),
            (r"blk\.\d+\.ffn_down", "blk.12.ffn_down.weight", true),
            ("attn", "blk.0.ffn_up.weight", false),
            ("^output", "blk.0.output", false),
            ("^output", "output.weight", true),
        ] {
            let p = pattern.split('=').next().unwrap();
            assert_eq!(override_matches(p, name), expected, "{pattern} {name}");
        }
    }
}
