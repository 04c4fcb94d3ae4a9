//! Test models with real models' shapes (widths, vocabularies, head layouts,
//! sliding windows, experts) but few layers and all-zero weights, written as
//! sparse files: a llama-3-wide model costs a few MB of disk and loads in a
//! second. They exist to check the memory estimate against what the real
//! llama-server allocates for them; they answer nothing useful.

use std::io;
use std::path::Path;

use super::{GgmlType, GgufValue, GgufWriter};

/// Which llama.cpp architecture (and so which tensors) a shape uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShapeArch {
    Llama,
    /// llama with Q/K/V biases.
    Qwen2,
    /// Q/K norms and an explicit head size.
    Qwen3,
    /// qwen3 with experts.
    Qwen3Moe,
    /// Sliding-window layers (pattern 6), Q/K norms, post-norms.
    Gemma3,
}

impl ShapeArch {
    pub fn name(self) -> &'static str {
        match self {
            ShapeArch::Llama => "llama",
            ShapeArch::Qwen2 => "qwen2",
            ShapeArch::Qwen3 => "qwen3",
            ShapeArch::Qwen3Moe => "qwen3moe",
            ShapeArch::Gemma3 => "gemma3",
        }
    }
}

/// One test shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    pub name: &'static str,
    pub arch: ShapeArch,
    pub n_embd: u64,
    pub n_layer: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub head_dim: u64,
    pub n_ff: u64,
    pub n_vocab: u64,
    /// No `output.weight`: the output reuses the token embeddings.
    pub tied: bool,
    /// The sliding window (gemma3), 0 for none.
    pub n_swa: u64,
    /// `(experts, used, expert ff)`.
    pub moe: Option<(u64, u64, u64)>,
    /// The type of the big matrices (norms stay F32).
    pub weights: GgmlType,
    pub n_ctx_train: u64,
}

/// Shapes taken from real models' configurations, with 2 layers (6 for
/// gemma3, one full pattern of 5 sliding + 1 full).
pub fn real_shapes() -> Vec<Shape> {
    let base = Shape {
        name: "",
        arch: ShapeArch::Llama,
        n_embd: 4096,
        n_layer: 2,
        n_head: 32,
        n_head_kv: 8,
        head_dim: 128,
        n_ff: 14336,
        n_vocab: 128256,
        tied: false,
        n_swa: 0,
        moe: None,
        weights: GgmlType::F16,
        n_ctx_train: 131072,
    };
    vec![
        Shape {
            name: "llama3-8b",
            weights: GgmlType::Q8_0,
            ..base.clone()
        },
        Shape {
            name: "llama3.2-1b",
            n_embd: 2048,
            n_head: 32,
            n_head_kv: 8,
            head_dim: 64,
            n_ff: 8192,
            tied: true,
            ..base.clone()
        },
        Shape {
            name: "mistral-7b",
            n_vocab: 32768,
            weights: GgmlType::Q4_0,
            n_ctx_train: 32768,
            ..base.clone()
        },
        Shape {
            name: "qwen2.5-7b",
            arch: ShapeArch::Qwen2,
            n_embd: 3584,
            n_head: 28,
            n_head_kv: 4,
            head_dim: 128,
            n_ff: 18944,
            n_vocab: 152064,
            weights: GgmlType::Q8_0,
            n_ctx_train: 32768,
            ..base.clone()
        },
        Shape {
            name: "qwen2.5-0.5b",
            arch: ShapeArch::Qwen2,
            n_embd: 896,
            n_head: 14,
            n_head_kv: 2,
            head_dim: 64,
            n_ff: 4864,
            n_vocab: 151936,
            tied: true,
            n_ctx_train: 32768,
            ..base.clone()
        },
        Shape {
            name: "qwen3-8b",
            arch: ShapeArch::Qwen3,
            n_embd: 4096,
            n_head: 32,
            n_head_kv: 8,
            head_dim: 128,
            n_ff: 12288,
            n_vocab: 151936,
            weights: GgmlType::Q8_0,
            n_ctx_train: 40960,
            ..base.clone()
        },
        Shape {
            name: "qwen3-0.6b",
            arch: ShapeArch::Qwen3,
            n_embd: 1024,
            n_head: 16,
            n_head_kv: 8,
            head_dim: 128,
            n_ff: 3072,
            n_vocab: 151936,
            tied: true,
            n_ctx_train: 40960,
            ..base.clone()
        },
        Shape {
            name: "qwen3-30b-a3b",
            arch: ShapeArch::Qwen3Moe,
            n_embd: 2048,
            n_head: 32,
            n_head_kv: 4,
            head_dim: 128,
            n_ff: 6144,
            n_vocab: 151936,
            moe: Some((128, 8, 768)),
            weights: GgmlType::Q8_0,
            n_ctx_train: 40960,
            ..base.clone()
        },
        Shape {
            name: "gemma3-1b",
            arch: ShapeArch::Gemma3,
            n_embd: 1152,
            n_layer: 6,
            n_head: 4,
            n_head_kv: 1,
            head_dim: 256,
            n_ff: 6912,
            n_vocab: 262144,
            tied: true,
            n_swa: 512,
            n_ctx_train: 32768,
            ..base.clone()
        },
        Shape {
            name: "gemma3-4b",
            arch: ShapeArch::Gemma3,
            n_embd: 2560,
            n_layer: 6,
            n_head: 8,
            n_head_kv: 4,
            head_dim: 256,
            n_ff: 10240,
            n_vocab: 262208,
            tied: true,
            n_swa: 1024,
            weights: GgmlType::Q8_0,
            ..base.clone()
        },
    ]
}

// llama.cpp's llama_token_type numbers.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_UNKNOWN: i32 = 2;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_BYTE: i32 = 6;

/// The shape as a GGUF writer (all tensors zero).
pub fn shape_writer(s: &Shape) -> io::Result<GgufWriter> {
    let bad = |m: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, m.to_owned()));
    if s.n_vocab < 259 || s.n_head == 0 || s.n_head_kv == 0 || s.n_layer == 0 {
        return bad("a shape needs at least 259 tokens, a head and a layer");
    }
    let arch = s.arch.name();
    let k = |suffix: &str| format!("{arch}.{suffix}");
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", arch)
        .add_kv("general.name", s.name)
        .add_kv(k("context_length"), s.n_ctx_train as u32)
        .add_kv(k("embedding_length"), s.n_embd as u32)
        .add_kv(k("block_count"), s.n_layer as u32)
        .add_kv(k("feed_forward_length"), s.n_ff as u32)
        .add_kv(k("attention.head_count"), s.n_head as u32)
        .add_kv(k("attention.head_count_kv"), s.n_head_kv as u32)
        .add_kv(k("attention.key_length"), s.head_dim as u32)
        .add_kv(k("attention.value_length"), s.head_dim as u32)
        .add_kv(k("attention.layer_norm_rms_epsilon"), 1e-6f32)
        .add_kv(k("rope.dimension_count"), s.head_dim as u32)
        .add_kv(k("rope.freq_base"), 10000.0f32)
        .add_kv(k("vocab_size"), s.n_vocab as u32);
    if s.n_swa > 0 {
        w.add_kv(k("attention.sliding_window"), s.n_swa as u32);
    }
    if let Some((n, used, ff)) = s.moe {
        w.add_kv(k("expert_count"), n as u32)
            .add_kv(k("expert_used_count"), used as u32)
            .add_kv(k("expert_feed_forward_length"), ff as u32);
    }

    let n_vocab = usize::try_from(s.n_vocab).unwrap_or(usize::MAX);
    let mut tokens = vec!["<unk>".to_owned(), "<s>".to_owned(), "</s>".to_owned()];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    let mut types = vec![TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL];
    types.extend(std::iter::repeat_n(TOKEN_BYTE, 256));
    let fill = n_vocab - tokens.len();
    tokens.extend((0..fill).map(|i| format!("\u{2581}t{i}")));
    types.extend(std::iter::repeat_n(TOKEN_NORMAL, fill));
    w.add_kv("tokenizer.ggml.model", "llama")
        .add_kv("tokenizer.ggml.tokens", GgufValue::string_array(tokens))
        .add_kv(
            "tokenizer.ggml.scores",
            GgufValue::f32_array(std::iter::repeat_n(0.0, n_vocab)),
        )
        .add_kv("tokenizer.ggml.token_type", GgufValue::i32_array(types))
        .add_kv("tokenizer.ggml.unknown_token_id", 0u32)
        .add_kv("tokenizer.ggml.bos_token_id", 1u32)
        .add_kv("tokenizer.ggml.eos_token_id", 2u32);

    let (e, v, f) = (s.n_embd, s.n_vocab, s.n_ff);
    let q = s.n_head * s.head_dim;
    let kv = s.n_head_kv * s.head_dim;
    let wt = s.weights;
    let f32t = GgmlType::F32;
    w.add_tensor_zeros("token_embd.weight", &[e, v], wt);
    for l in 0..s.n_layer {
        let n = |t: &str| format!("blk.{l}.{t}");
        w.add_tensor_zeros(n("attn_norm.weight"), &[e], f32t)
            .add_tensor_zeros(n("attn_q.weight"), &[e, q], wt)
            .add_tensor_zeros(n("attn_k.weight"), &[e, kv], wt)
            .add_tensor_zeros(n("attn_v.weight"), &[e, kv], wt)
            .add_tensor_zeros(n("attn_output.weight"), &[q, e], wt)
            .add_tensor_zeros(n("ffn_norm.weight"), &[e], f32t);
        if s.arch == ShapeArch::Qwen2 {
            w.add_tensor_zeros(n("attn_q.bias"), &[q], f32t)
                .add_tensor_zeros(n("attn_k.bias"), &[kv], f32t)
                .add_tensor_zeros(n("attn_v.bias"), &[kv], f32t);
        }
        if matches!(
            s.arch,
            ShapeArch::Qwen3 | ShapeArch::Qwen3Moe | ShapeArch::Gemma3
        ) {
            w.add_tensor_zeros(n("attn_q_norm.weight"), &[s.head_dim], f32t)
                .add_tensor_zeros(n("attn_k_norm.weight"), &[s.head_dim], f32t);
        }
        if s.arch == ShapeArch::Gemma3 {
            w.add_tensor_zeros(n("post_attention_norm.weight"), &[e], f32t)
                .add_tensor_zeros(n("post_ffw_norm.weight"), &[e], f32t);
        }
        match s.moe {
            Some((n_exp, _, ff)) => {
                w.add_tensor_zeros(n("ffn_gate_inp.weight"), &[e, n_exp], f32t)
                    .add_tensor_zeros(n("ffn_gate_exps.weight"), &[e, ff, n_exp], wt)
                    .add_tensor_zeros(n("ffn_up_exps.weight"), &[e, ff, n_exp], wt)
                    .add_tensor_zeros(n("ffn_down_exps.weight"), &[ff, e, n_exp], wt);
            }
            None => {
                w.add_tensor_zeros(n("ffn_gate.weight"), &[e, f], wt)
                    .add_tensor_zeros(n("ffn_up.weight"), &[e, f], wt)
                    .add_tensor_zeros(n("ffn_down.weight"), &[f, e], wt);
            }
        }
    }
    w.add_tensor_zeros("output_norm.weight", &[e], f32t);
    if !s.tied {
        w.add_tensor_zeros("output.weight", &[e, v], wt);
    }
    Ok(w)
}

/// Writes the shape to `path` as a sparse file.
pub fn write_shape(path: &Path, s: &Shape) -> io::Result<()> {
    shape_writer(s)?.write_sparse_file(path)
}
