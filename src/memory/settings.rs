//! The llama-server settings that shape memory, resolved the way llama.cpp
//! b11434 resolves them: from the spec's options and the flags in
//! `extra_args`, with llama-server's defaults for what is unset.

use std::path::PathBuf;

use crate::spec::{CacheType, FlashAttn, GpuLayers, GpuLayersKeyword, LaunchOptions};

/// How many layers go to the GPU(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offload {
    /// This many of the repeating layers, counted from the last; the output
    /// layer goes too when the count exceeds the layer count.
    Layers(u64),
    /// Every layer and the output layer.
    All,
}

/// `--split-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitMode {
    /// Whole layers per GPU (the default).
    Layer,
    /// Rows of each matrix across GPUs; KV and compute on the main GPU.
    Row,
    /// Everything on the main GPU.
    None,
}

/// A `-ot`/`--override-tensor` rule: tensors whose name matches `pattern`
/// (a regular expression in llama.cpp; here a substring or `a|b`
/// alternatives, which is what people write) go to `buffer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    pub pattern: String,
    pub buffer: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `--ctx-size`, 0 or unset: the trained context.
    pub ctx_size: u64,
    /// Slots; llama-server's default is 4 with a unified cache.
    pub n_seq: u64,
    pub kv_unified: bool,
    pub n_batch: u64,
    pub n_ubatch: u64,
    /// `None`: auto (on where the backend supports it, which in b11434 is
    /// every backend rocm-llm targets).
    pub flash_attn: Option<bool>,
    pub type_k: CacheType,
    pub type_v: CacheType,
    pub offload: Offload,
    /// `gpu_layers: auto` or unset: llama-server's `--fit` decides; the
    /// estimate assumes every layer offloaded (what `--fit` does when it fits).
    pub offload_auto: bool,
    pub swa_full: bool,
    /// `--n-cpu-moe N` (`--cpu-moe` is every layer): the expert tensors of
    /// the first N layers stay on the host.
    pub n_cpu_moe: u64,
    pub overrides: Vec<Override>,
    pub mmproj: Option<PathBuf>,
    pub split_mode: SplitMode,
    pub tensor_split: Vec<f64>,
    pub main_gpu: usize,
    /// `--fit off` given in `extra_args`.
    pub fit_off: bool,
    /// `--no-kv-offload`: the KV cache stays on the host.
    pub no_kv_offload: bool,
}

fn cache_type(text: &str) -> Option<CacheType> {
    Some(match text {
        "f32" => CacheType::F32,
        "f16" => CacheType::F16,
        "bf16" => CacheType::Bf16,
        "q8_0" => CacheType::Q8_0,
        "q4_0" => CacheType::Q4_0,
        "q4_1" => CacheType::Q4_1,
        "iq4_nl" => CacheType::Iq4Nl,
        "q5_0" => CacheType::Q5_0,
        "q5_1" => CacheType::Q5_1,
        _ => return None,
    })
}

impl Settings {
    /// The settings for these options; `n_ctx_train` fills an unset context.
    pub fn resolve(o: &LaunchOptions, n_ctx_train: u64) -> Settings {
        let mut s = Settings {
            ctx_size: o.ctx_size.map_or(0, u64::from),
            n_seq: o.parallel.map_or(4, u64::from),
            kv_unified: o.parallel.is_none(),
            n_batch: o.batch_size.map_or(2048, u64::from),
            n_ubatch: o.ubatch_size.map_or(512, u64::from),
            flash_attn: match o.flash_attn {
                Some(FlashAttn::On) => Some(true),
                Some(FlashAttn::Off) => Some(false),
                _ => None,
            },
            type_k: o.cache_type_k.unwrap_or(CacheType::F16),
            type_v: o.cache_type_v.unwrap_or(CacheType::F16),
            offload: match o.gpu_layers {
                Some(GpuLayers::Count(n)) => Offload::Layers(u64::from(n)),
                _ => Offload::All,
            },
            offload_auto: matches!(
                o.gpu_layers,
                None | Some(GpuLayers::Keyword(GpuLayersKeyword::Auto))
            ),
            swa_full: false,
            n_cpu_moe: 0,
            overrides: Vec::new(),
            mmproj: None,
            split_mode: SplitMode::Layer,
            tensor_split: Vec::new(),
            main_gpu: 0,
            fit_off: false,
            no_kv_offload: false,
        };
        let args = &o.extra_args;
        let mut i = 0;
        while i < args.len() {
            let (flag, inline) = match args[i].split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
                _ => (args[i].as_str(), None),
            };
            let mut value = || -> Option<String> {
                if let Some(v) = &inline {
                    return Some(v.clone());
                }
                i += 1;
                args.get(i).cloned()
            };
            let number = |v: Option<String>| v.and_then(|v| v.parse::<u64>().ok());
            match flag {
                // The options the spec has keys for may also come in
                // `extra_args`, after them: the last one wins, as in
                // llama.cpp's parser.
                "-c" | "--ctx-size" => {
                    if let Some(n) = number(value()) {
                        s.ctx_size = n;
                    }
                }
                "-np" | "--parallel" => {
                    if let Some(n) = number(value()) {
                        s.n_seq = n;
                        s.kv_unified = false;
                    }
                }
                "-b" | "--batch-size" => {
                    if let Some(n) = number(value()) {
                        s.n_batch = n;
                    }
                }
                "-ub" | "--ubatch-size" => {
                    if let Some(n) = number(value()) {
                        s.n_ubatch = n;
                    }
                }
                "-fa" | "--flash-attn" => {
                    s.flash_attn = match value().as_deref() {
                        Some("on") => Some(true),
                        Some("off") => Some(false),
                        _ => None,
                    }
                }
                "-ngl" | "--gpu-layers" | "--n-gpu-layers" => match value().as_deref() {
                    Some("all") | Some("auto") => s.offload = Offload::All,
                    Some(v) => {
                        if let Ok(n) = v.parse() {
                            s.offload = Offload::Layers(n);
                        }
                    }
                    None => {}
                },
                "--swa-full" => s.swa_full = true,
                "--cpu-moe" | "-cmoe" => s.n_cpu_moe = u64::MAX,
                "--n-cpu-moe" | "-ncmoe" => {
                    s.n_cpu_moe = value().and_then(|v| v.parse().ok()).unwrap_or(0);
                }
                "-ot" | "--override-tensor" => {
                    for rule in value().unwrap_or_default().split(',') {
                        if let Some((p, b)) = rule.split_once('=') {
                            s.overrides.push(Override {
                                pattern: p.to_owned(),
                                buffer: b.to_owned(),
                            });
                        }
                    }
                }
                // Relative to the child's working directory, the spec's.
                "-mm" | "--mmproj" => s.mmproj = value().map(|v| o.working_dir.join(v)),
                "-sm" | "--split-mode" => {
                    s.split_mode = match value().as_deref() {
                        Some("row") => SplitMode::Row,
                        Some("none") => SplitMode::None,
                        _ => SplitMode::Layer,
                    }
                }
                "-ts" | "--tensor-split" => {
                    s.tensor_split = value()
                        .unwrap_or_default()
                        .split([',', '/'])
                        .filter_map(|x| x.trim().parse().ok())
                        .collect();
                }
                "-mg" | "--main-gpu" => {
                    s.main_gpu = value().and_then(|v| v.parse().ok()).unwrap_or(0);
                }
                "-fit" | "--fit" => s.fit_off = value().as_deref() == Some("off"),
                "-kvu" | "--kv-unified" => s.kv_unified = true,
                "-no-kvu" | "--no-kv-unified" => s.kv_unified = false,
                "-nkvo" | "--no-kv-offload" => s.no_kv_offload = true,
                "-ctk" | "--cache-type-k" => {
                    if let Some(t) = value().as_deref().and_then(cache_type) {
                        s.type_k = t;
                    }
                }
                "-ctv" | "--cache-type-v" => {
                    if let Some(t) = value().as_deref().and_then(cache_type) {
                        s.type_v = t;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        if s.ctx_size == 0 {
            s.ctx_size = n_ctx_train;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(args: &[&str]) -> Settings {
        let o = LaunchOptions {
            ctx_size: Some(4096),
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            ..LaunchOptions::default()
        };
        Settings::resolve(&o, 131072)
    }

    #[test]
    fn defaults_are_llama_servers() {
        let s = Settings::resolve(&LaunchOptions::default(), 8192);
        assert_eq!(
            (s.ctx_size, s.n_seq, s.kv_unified, s.n_batch, s.n_ubatch),
            (8192, 4, true, 2048, 512)
        );
        assert_eq!(
            (s.flash_attn, s.offload, s.offload_auto),
            (None, Offload::All, true)
        );
        assert_eq!((s.type_k, s.type_v), (CacheType::F16, CacheType::F16));
    }

    #[test]
    fn extra_args_are_read_and_the_last_wins() {
        assert_eq!(with(&["-c", "0"]).ctx_size, 131072);
        assert_eq!(with(&["--ctx-size=2048"]).ctx_size, 2048);
        let s = with(&["-np", "2"]);
        assert_eq!((s.n_seq, s.kv_unified), (2, false));
        let s = with(&["-np", "2", "-kvu"]);
        assert_eq!((s.n_seq, s.kv_unified), (2, true));
        assert_eq!(with(&["-ngl", "7"]).offload, Offload::Layers(7));
        assert_eq!(with(&["--n-gpu-layers", "all"]).offload, Offload::All);
        assert_eq!(with(&["-fa", "off"]).flash_attn, Some(false));
        assert_eq!(
            with(&["-ctk", "q8_0", "-ctv", "q4_0"]).type_v,
            CacheType::Q4_0
        );
        assert_eq!(with(&["-ub", "256", "-b", "1024"]).n_ubatch, 256);
        assert!(with(&["--swa-full"]).swa_full);
        assert!(with(&["--fit", "off"]).fit_off);
        assert_eq!(with(&["--cpu-moe"]).n_cpu_moe, u64::MAX);
        assert_eq!(with(&["-ncmoe", "3"]).n_cpu_moe, 3);
        assert_eq!(
            with(&["-ot", "exps=CPU,attn=ROCm0"]).overrides,
            vec![
                Override {
                    pattern: "exps".into(),
                    buffer: "CPU".into()
                },
                Override {
                    pattern: "attn".into(),
                    buffer: "ROCm0".into()
                },
            ]
        );
        assert_eq!(
            with(&["--mmproj", "/m/p.gguf"]).mmproj,
            Some(PathBuf::from("/m/p.gguf"))
        );
        assert_eq!(with(&["-ts", "3,1"]).tensor_split, vec![3.0, 1.0]);
        assert_eq!(with(&["-sm", "row"]).split_mode, SplitMode::Row);
        // A flag without its value at the end is ignored, not a panic.
        assert_eq!(with(&["-c"]).ctx_size, 4096);
    }
}
