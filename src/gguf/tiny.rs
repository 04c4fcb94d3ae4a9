//! A tiny, real llama-architecture model for tests and demos.
//!
//! The default [`TinyModel`] is a 2-layer, 64-wide llama with seeded random
//! F32 weights (~0.5 MB) and a byte-level SentencePiece vocab: `<unk>`,
//! `<s>`, `</s>` and the 256 byte tokens `<0x00>`..`<0xFF>`, so any text
//! tokenizes (byte fallback) and any output detokenizes. It carries a ChatML
//! `tokenizer.chat_template`, so llama-server serves `/v1/chat/completions`.
//!
//! The weights are random, but shaped so that generation is well-behaved:
//! residual dimension 0 is a large constant that no layer writes to, and the
//! output matrix gives that dimension a large positive weight for printable
//! ASCII tokens (0x20..=0x7E) and a large negative one for every other token,
//! `</s>` included. So with any ordinary sampling the model emits printable
//! ASCII (always valid UTF-8 and JSON-safe) and never stops on its own: a
//! request generates exactly `max_tokens` tokens (or until the context
//! fills), which keeps tests deterministic in length. With temperature 0 the
//! text itself is deterministic too.
//!
//! The random numbers come from SplitMix64 here, not from a crate, so a given
//! [`TinyModel`] yields the same bytes in every build and version.

use std::io;
use std::path::Path;

use super::{GgufValue, GgufWriter};

/// A minimal ChatML template (the `<|im_start|>` markers tokenize as plain
/// bytes in the tiny vocab, which is fine for a random model).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The shape and identity of a tiny llama model. Different seeds or names give
/// different files; equal values give identical files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinyModel {
    /// Seeds the weights.
    pub seed: u64,
    /// `general.name`.
    pub name: String,
    /// Hidden size; a multiple of `n_head` with an even head size.
    pub n_embd: u32,
    pub n_layer: u32,
    pub n_head: u32,
    /// Key/value heads; divides `n_head`.
    pub n_head_kv: u32,
    /// Feed-forward size.
    pub n_ff: u32,
    /// `llama.context_length`; llama-server's default context size.
    pub n_ctx_train: u32,
    /// `tokenizer.chat_template`; `None` leaves it out.
    pub chat_template: Option<String>,
}

impl Default for TinyModel {
    fn default() -> Self {
        TinyModel {
            seed: 0,
            name: "rocm-llm-tiny".to_owned(),
            n_embd: 64,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 4,
            n_ff: 128,
            n_ctx_train: 2048,
            chat_template: Some(CHATML_TEMPLATE.to_owned()),
        }
    }
}

impl TinyModel {
    /// The default model with another seed and name.
    pub fn with_seed(seed: u64, name: impl Into<String>) -> Self {
        TinyModel {
            seed,
            name: name.into(),
            ..TinyModel::default()
        }
    }

    fn validate(&self) -> io::Result<()> {
        let bad = |msg: &str| {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TinyModel: {msg}"),
            ))
        };
        if self.n_layer == 0
            || self.n_head == 0
            || self.n_head_kv == 0
            || self.n_ff == 0
            || self.n_ctx_train == 0
        {
            return bad("n_layer, n_head, n_head_kv, n_ff and n_ctx_train must be positive");
        }
        if self.n_embd < 2
            || !self.n_embd.is_multiple_of(self.n_head)
            || !(self.n_embd / self.n_head).is_multiple_of(2)
        {
            return bad("n_embd must be a multiple of n_head with an even head size");
        }
        if !self.n_head.is_multiple_of(self.n_head_kv) {
            return bad("n_head_kv must divide n_head");
        }
        Ok(())
    }
}

/// Token ids of the tiny vocab.
pub const TINY_UNK: u32 = 0;
pub const TINY_BOS: u32 = 1;
pub const TINY_EOS: u32 = 2;
/// The id of byte token `<0xXX>` is `TINY_BYTE0 + XX`.
pub const TINY_BYTE0: u32 = 3;
/// The vocab size: 3 special tokens and 256 bytes.
pub const TINY_VOCAB: u32 = 259;

// llama.cpp's llama_token_type numbers.
const TOKEN_TYPE_UNKNOWN: i32 = 2;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_BYTE: i32 = 6;

/// SplitMix64: tiny, fast, and stable forever (unlike a crate's StdRng).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-scale, scale).
    fn uniform(&mut self, scale: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (unit * 2.0 - 1.0) * scale
    }

    fn fill(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(scale)).collect()
    }
}

fn is_printable_token(id: u32) -> bool {
    id.checked_sub(TINY_BYTE0)
        .is_some_and(|b| (0x20..=0x7E).contains(&b))
}

/// Builds the tiny model as a [`GgufWriter`].
pub fn tiny_llama_writer(opts: &TinyModel) -> io::Result<GgufWriter> {
    opts.validate()?;
    let n_embd = u64::from(opts.n_embd);
    let n_ff = u64::from(opts.n_ff);
    let head_dim = opts.n_embd / opts.n_head;
    let n_embd_kv = u64::from(head_dim * opts.n_head_kv);
    let n_vocab = u64::from(TINY_VOCAB);
    let ne = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);

    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "llama")
        .add_kv("general.name", opts.name.as_str())
        .add_kv(
            "general.description",
            "rocm-llm tiny test model: random weights, byte-level vocab",
        )
        .add_kv("general.file_type", 0u32) // all F32
        .add_kv("llama.context_length", opts.n_ctx_train)
        .add_kv("llama.embedding_length", opts.n_embd)
        .add_kv("llama.block_count", opts.n_layer)
        .add_kv("llama.feed_forward_length", opts.n_ff)
        .add_kv("llama.attention.head_count", opts.n_head)
        .add_kv("llama.attention.head_count_kv", opts.n_head_kv)
        .add_kv("llama.attention.layer_norm_rms_epsilon", 1e-5f32)
        .add_kv("llama.rope.dimension_count", head_dim)
        .add_kv("llama.rope.freq_base", 10000.0f32)
        .add_kv("llama.vocab_size", TINY_VOCAB);

    let mut tokens = vec!["<unk>".to_owned(), "<s>".to_owned(), "</s>".to_owned()];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    let mut types = vec![TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_CONTROL];
    types.extend(std::iter::repeat_n(TOKEN_TYPE_BYTE, 256));
    w.add_kv("tokenizer.ggml.model", "llama")
        .add_kv("tokenizer.ggml.tokens", GgufValue::string_array(tokens))
        .add_kv(
            "tokenizer.ggml.scores",
            GgufValue::f32_array(std::iter::repeat_n(0.0, TINY_VOCAB as usize)),
        )
        .add_kv("tokenizer.ggml.token_type", GgufValue::i32_array(types))
        .add_kv("tokenizer.ggml.unknown_token_id", TINY_UNK)
        .add_kv("tokenizer.ggml.bos_token_id", TINY_BOS)
        .add_kv("tokenizer.ggml.eos_token_id", TINY_EOS)
        .add_kv("tokenizer.ggml.add_bos_token", true)
        .add_kv("tokenizer.ggml.add_eos_token", false);
    if let Some(t) = &opts.chat_template {
        w.add_kv("tokenizer.chat_template", t.as_str());
    }

    let mut rng = SplitMix64(opts.seed ^ 0x726F_636D_2D6C_6C6D); // "rocm-llm"
    let ones = |n: u64| vec![1.0f32; ne(n)];
    // A matrix of `rows` rows of `cols` (ggml dims [cols, rows]); row r
    // computes output r. `zero_row0` keeps the layer off residual dim 0.
    let mut matrix = |cols: u64, rows: u64, zero_row0: bool| {
        let scale = 1.0 / (cols as f32).sqrt();
        let mut m = rng.fill(ne(cols * rows), scale);
        if zero_row0 {
            m[..ne(cols)].fill(0.0);
        }
        m
    };

    // Token embeddings: dim 0 is the constant 4, the rest small and random.
    let mut embd = matrix(n_embd, n_vocab, false);
    for row in embd.chunks_mut(ne(n_embd)) {
        row[0] = 4.0;
        for v in &mut row[1..] {
            *v *= 0.5 * (n_embd as f32).sqrt();
        }
    }
    w.add_tensor_f32("token_embd.weight", &[n_embd, n_vocab], &embd);

    for l in 0..opts.n_layer {
        let name = |t: &str| format!("blk.{l}.{t}.weight");
        let q = matrix(n_embd, n_embd, false);
        let k = matrix(n_embd, n_embd_kv, false);
        let v = matrix(n_embd, n_embd_kv, false);
        let o = matrix(n_embd, n_embd, true);
        let gate = matrix(n_embd, n_ff, false);
        let up = matrix(n_embd, n_ff, false);
        let down = matrix(n_ff, n_embd, true);
        w.add_tensor_f32(name("attn_norm"), &[n_embd], &ones(n_embd))
            .add_tensor_f32(name("attn_q"), &[n_embd, n_embd], &q)
            .add_tensor_f32(name("attn_k"), &[n_embd, n_embd_kv], &k)
            .add_tensor_f32(name("attn_v"), &[n_embd, n_embd_kv], &v)
            .add_tensor_f32(name("attn_output"), &[n_embd, n_embd], &o)
            .add_tensor_f32(name("ffn_norm"), &[n_embd], &ones(n_embd))
            .add_tensor_f32(name("ffn_gate"), &[n_embd, n_ff], &gate)
            .add_tensor_f32(name("ffn_up"), &[n_embd, n_ff], &up)
            .add_tensor_f32(name("ffn_down"), &[n_ff, n_embd], &down);
    }

    // Output: dim 0 decides printable (+2) versus everything else (-2); the
    // rest, small and random, picks among printable tokens.
    let mut out = matrix(n_embd, n_vocab, false);
    for (id, row) in (0u32..).zip(out.chunks_mut(ne(n_embd))) {
        row[0] = if is_printable_token(id) { 2.0 } else { -2.0 };
        for v in &mut row[1..] {
            *v *= 0.5 * (n_embd as f32).sqrt();
        }
    }
    w.add_tensor_f32("output_norm.weight", &[n_embd], &ones(n_embd))
        .add_tensor_f32("output.weight", &[n_embd, n_vocab], &out);
    Ok(w)
}

/// The tiny model's file contents.
pub fn tiny_llama_bytes(opts: &TinyModel) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    tiny_llama_writer(opts)?.write_to(&mut out)?;
    Ok(out)
}

/// Writes the tiny model to `path` (atomically: readers never see half a file).
pub fn write_tiny_llama(path: &Path, opts: &TinyModel) -> io::Result<()> {
    tiny_llama_writer(opts)?.write_file(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::gguf::{GgmlType, GgufHeader, has_gguf_magic};

    #[test]
    fn writes_a_readable_tiny_llama() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        let opts = TinyModel::default();
        write_tiny_llama(&path, &opts).unwrap();
        assert!(has_gguf_magic(&path).unwrap());
        let len = std::fs::metadata(&path).unwrap().len();
        assert!((300_000..700_000).contains(&len), "size {len}");

        let h = GgufHeader::read_path(&path).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.architecture(), Some("llama"));
        assert_eq!(h.name(), Some("rocm-llm-tiny"));
        assert_eq!(h.block_count(), Some(2));
        assert_eq!(h.context_length(), Some(2048));
        assert_eq!(h.embedding_length(), Some(64));
        assert_eq!(h.feed_forward_length(), Some(128));
        assert_eq!(h.head_count(), Some(4));
        assert_eq!(h.head_count_kv(), Some(4));
        assert_eq!(h.chat_template(), Some(CHATML_TEMPLATE));
        assert_eq!(h.get_str("tokenizer.ggml.model"), Some("llama"));
        let tokens = h.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
        assert_eq!(tokens.values.len(), TINY_VOCAB as usize);
        assert_eq!(
            tokens.values[(TINY_BYTE0 + 0x0A) as usize].as_str(),
            Some("<0x0A>")
        );
        // 2 + 9 per layer tensors, all F32.
        assert_eq!(h.tensor_count(), 2 * 9 + 3);
        assert!(h.tensors.iter().all(|t| t.ggml_type == GgmlType::F32));
        let per_layer = 4 * 64 * 64 + 3 * 64 * 128 + 2 * 64;
        let weights = (2 * 259 * 64 + 64 + 2 * per_layer) * 4;
        assert_eq!(h.total_tensor_bytes().unwrap(), weights);
        // The data section holds exactly the (padded) tensors.
        assert!(len - h.data_offset >= weights && len - h.data_offset < weights + 32 * 21);
        // 2 layers * 4 heads * (16 + 16) * 2 bytes (f16 cache)
        assert_eq!(h.kv_cache_bytes_per_token(2), Some(512));
    }

    #[test]
    fn same_options_same_bytes_other_seed_other_bytes() {
        let a = tiny_llama_bytes(&TinyModel::default()).unwrap();
        let b = tiny_llama_bytes(&TinyModel::default()).unwrap();
        assert_eq!(a, b);
        let c = tiny_llama_bytes(&TinyModel::with_seed(1, "rocm-llm-tiny")).unwrap();
        assert_eq!(a.len(), c.len());
        assert_ne!(a, c);
        let d = tiny_llama_bytes(&TinyModel::with_seed(0, "other")).unwrap();
        assert_ne!(a, d);
    }

    #[test]
    fn other_shapes_work_and_bad_shapes_are_refused() {
        let opts = TinyModel {
            n_embd: 32,
            n_layer: 1,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 48,
            n_ctx_train: 256,
            chat_template: None,
            ..TinyModel::default()
        };
        let bytes = tiny_llama_bytes(&opts).unwrap();
        let h = GgufHeader::read(&bytes[..], 1 << 20).unwrap();
        assert_eq!(h.head_count_kv(), Some(2));
        assert_eq!(h.chat_template(), None);
        assert_eq!(h.context_length(), Some(256));

        for bad in [
            TinyModel {
                n_head: 3,
                ..TinyModel::default()
            },
            TinyModel {
                n_head_kv: 3,
                ..TinyModel::default()
            },
            TinyModel {
                n_layer: 0,
                ..TinyModel::default()
            },
            TinyModel {
                n_embd: 4,
                n_head: 4,
                ..TinyModel::default()
            },
        ] {
            let err = tiny_llama_bytes(&bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn only_printable_ascii_is_favoured() {
        assert!(is_printable_token(TINY_BYTE0 + u32::from(b' ')));
        assert!(is_printable_token(TINY_BYTE0 + u32::from(b'~')));
        assert!(!is_printable_token(TINY_BYTE0 + 0x7F));
        assert!(!is_printable_token(TINY_BYTE0 + u32::from(b'\n')));
        assert!(!is_printable_token(TINY_EOS));
        assert!(!is_printable_token(TINY_BYTE0 + 0xC3));
    }
}
