//! The shape of a model, read from its GGUF header the way llama.cpp b11434
//! reads it (`llama_model::load_hparams`, `src/llama-hparams.cpp`): what the
//! memory estimate needs and nothing else.

use crate::gguf::{GgufHeader, GgufValue};

/// What kind of per-sequence memory each layer keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCache {
    /// Keys and values for every cell of the context.
    Full,
    /// Keys and values for a sliding window only (iSWA).
    Swa,
    /// A fixed-size recurrent state (Mamba-style), no KV.
    Recurrent,
    /// Neither (a layer without attention or state).
    None,
}

/// The model hyper-parameters the estimate uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Hparams {
    pub arch: String,
    pub n_layer: u64,
    pub n_embd: u64,
    pub n_vocab: u64,
    pub n_ctx_train: u64,
    /// Per layer.
    pub n_head: Vec<u64>,
    pub n_head_kv: Vec<u64>,
    pub n_ff: Vec<u64>,
    /// Head sizes of K and V (`attention.key_length`/`value_length`, else
    /// `n_embd / n_head`).
    pub head_k: u64,
    pub head_v: u64,
    /// MLA (deepseek2-style): the cache keeps only the compressed K.
    pub mla: bool,
    /// The sliding window, 0 when none.
    pub n_swa: u64,
    pub layers: Vec<LayerCache>,
    /// Recurrent state elements per layer and sequence: (conv `r`, ssm `s`).
    pub recurrent_rs: (u64, u64),
    pub n_expert: u64,
    pub n_expert_used: u64,
    /// The expert feed-forward size (`expert_feed_forward_length`, else n_ff).
    pub n_ff_exp: u64,
    /// A separate `output.weight` (false: tied to the token embeddings).
    pub has_output: bool,
}

/// llama.cpp's default SWA pattern for an architecture, as
/// `(n_pattern, dense_first)` (`load_swa_pattern` calls in `src/models/`).
fn swa_pattern(arch: &str) -> Option<(u64, bool)> {
    Some(match arch {
        "gemma2" | "gpt-oss" => (2, false),
        "gemma3" | "gemma-embedding" => (6, false),
        "gemma3n" => (5, false),
        "cohere2" | "exaone4" | "exaone-moe" | "olmo2" | "afmoe" | "mellum" | "muse-glimmer"
        | "llama4" => (4, false),
        "cohere2moe" | "laguna" => (4, true),
        _ => return None,
    })
}

/// Architectures whose layers keep recurrent state only.
const RECURRENT: &[&str] = &["mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"];

impl Hparams {
    /// The hyper-parameters, or what is missing.
    pub fn from_header(h: &GgufHeader) -> Result<Hparams, String> {
        let arch = h
            .architecture()
            .ok_or("the header has no general.architecture")?
            .to_owned();
        let key = |s: &str| format!("{arch}.{s}");
        let n_layer = h
            .get_u64(&key("block_count"))
            .ok_or_else(|| format!("the header has no {}", key("block_count")))?;
        let n_embd = h
            .get_u64(&key("embedding_length"))
            .ok_or_else(|| format!("the header has no {}", key("embedding_length")))?;
        let layers_n = usize::try_from(n_layer).map_err(|_| "too many layers".to_owned())?;
        if layers_n > 4096 {
            return Err(format!(
                "{} is {n_layer}, more than any model has",
                key("block_count")
            ));
        }
        let per_layer = |suffix: &str, default: u64| -> Vec<u64> {
            match h.get(&key(suffix)) {
                Some(GgufValue::Array(a)) => {
                    let mut v: Vec<u64> =
                        a.values.iter().map(|x| x.as_u64().unwrap_or(0)).collect();
                    v.resize(layers_n, default);
                    v
                }
                Some(v) => vec![v.as_u64().unwrap_or(default); layers_n],
                None => vec![default; layers_n],
            }
        };
        let n_head = per_layer("attention.head_count", 0);
        let head_max = n_head.iter().copied().max().unwrap_or(0);
        let n_head_kv = match h.get(&key("attention.head_count_kv")) {
            Some(_) => per_layer("attention.head_count_kv", 0),
            None => n_head.clone(),
        };
        let n_ff = per_layer("feed_forward_length", 0);
        let default_head = n_embd.checked_div(head_max).unwrap_or(0);
        let head_k = h
            .get_u64(&key("attention.key_length"))
            .unwrap_or(default_head);
        let head_v = h
            .get_u64(&key("attention.value_length"))
            .unwrap_or(default_head);
        let mla = h.get_u64(&key("attention.key_length_mla")).is_some()
            && h.get_u64(&key("attention.value_length_mla")).is_some();

        let n_swa = h.get_u64(&key("attention.sliding_window")).unwrap_or(0);
        let mut layers = vec![LayerCache::Full; layers_n];
        if n_swa > 0 {
            let explicit = match h.get(&key("attention.sliding_window_pattern")) {
                Some(GgufValue::Array(a)) => Some(
                    a.values
                        .iter()
                        .map(|v| v.as_bool().unwrap_or(false))
                        .collect::<Vec<bool>>(),
                ),
                _ => None,
            };
            let pattern = h
                .get_u64(&key("attention.sliding_window_pattern"))
                .map(|n| (n, false))
                .or_else(|| swa_pattern(&arch));
            for (il, l) in layers.iter_mut().enumerate() {
                let il64 = il as u64;
                let swa = match (&explicit, pattern) {
                    (Some(v), _) => v.get(il).copied().unwrap_or(false),
                    (None, Some((n, dense_first))) => {
                        if n == 0 {
                            true
                        } else if dense_first {
                            !il64.is_multiple_of(n)
                        } else {
                            il64 % n < n - 1
                        }
                    }
                    // An architecture whose pattern rocm-llm does not know:
                    // count every layer as full, which over-estimates.
                    (None, None) => false,
                };
                if swa {
                    *l = LayerCache::Swa;
                }
            }
        }

        let d_conv = h.get_u64(&key("ssm.conv_kernel")).unwrap_or(0);
        let d_inner = h.get_u64(&key("ssm.inner_size")).unwrap_or(0);
        let d_state = h.get_u64(&key("ssm.state_size")).unwrap_or(0);
        let n_group = h.get_u64(&key("ssm.group_count")).unwrap_or(0);
        let recurrent_rs = (
            d_conv.saturating_sub(1) * (d_inner + 2 * n_group * d_state),
            d_state * d_inner,
        );
        let has_ssm = d_inner > 0;
        if RECURRENT.contains(&arch.as_str()) {
            layers.fill(LayerCache::Recurrent);
        } else if has_ssm {
            // Hybrid: layers without KV heads keep recurrent state.
            for (l, &kv) in layers.iter_mut().zip(&n_head_kv) {
                if kv == 0 {
                    *l = LayerCache::Recurrent;
                }
            }
        } else {
            for (l, &kv) in layers.iter_mut().zip(&n_head_kv) {
                if kv == 0 {
                    *l = LayerCache::None;
                }
            }
        }

        let n_vocab = h
            .get_u64(&key("vocab_size"))
            .or_else(|| {
                h.get("tokenizer.ggml.tokens")
                    .and_then(GgufValue::as_array)
                    .map(|a| a.values.len() as u64)
            })
            .or_else(|| {
                h.tensors
                    .iter()
                    .find(|t| t.name == "token_embd.weight")
                    .and_then(|t| t.dims.get(1).copied())
            })
            .ok_or("the header has no vocabulary size")?;
        let n_ff_max = n_ff.iter().copied().max().unwrap_or(0);
        Ok(Hparams {
            n_layer,
            n_embd,
            n_vocab,
            n_ctx_train: h.get_u64(&key("context_length")).unwrap_or(0),
            n_head,
            n_head_kv,
            n_ff,
            head_k,
            head_v,
            mla,
            n_swa,
            layers,
            recurrent_rs,
            n_expert: h.get_u64(&key("expert_count")).unwrap_or(0),
            n_expert_used: h.get_u64(&key("expert_used_count")).unwrap_or(0),
            n_ff_exp: h
                .get_u64(&key("expert_feed_forward_length"))
                .unwrap_or(n_ff_max),
            has_output: h.tensors.iter().any(|t| t.name == "output.weight"),
            arch,
        })
    }

    pub fn n_head_max(&self) -> u64 {
        self.n_head.iter().copied().max().unwrap_or(0)
    }

    pub fn n_ff_max(&self) -> u64 {
        self.n_ff.iter().copied().max().unwrap_or(0)
    }

    /// K and V elements one cell of layer `il` holds.
    pub fn kv_elements(&self, il: usize) -> (u64, u64) {
        let kv = self.n_head_kv.get(il).copied().unwrap_or(0);
        let v = if self.mla { 0 } else { kv * self.head_v };
        (kv * self.head_k, v)
    }
}
