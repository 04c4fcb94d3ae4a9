//! A tiny multimodal projector (`--mmproj`) for tests: a llava-style
//! `mlp` projector over a one-block vision encoder, all weights zero, in
//! the layout b11434's `tools/mtmd/clip.cpp` loads.

use std::io;
use std::path::Path;

use super::{GgmlType, GgufValue, GgufWriter};

/// The projector's shape; `n_embd_text` must be the text model's width
/// (mtmd refuses a projector whose output width differs).
#[derive(Clone, Debug)]
pub struct TinyProjector {
    pub n_embd_text: u32,
    pub n_embd: u32,
    pub n_ff: u32,
    pub n_head: u32,
    pub n_layer: u32,
    pub image_size: u32,
    pub patch_size: u32,
}

impl TinyProjector {
    pub fn for_text_width(n_embd_text: u32) -> TinyProjector {
        TinyProjector {
            n_embd_text,
            n_embd: 32,
            n_ff: 64,
            n_head: 2,
            n_layer: 1,
            image_size: 32,
            patch_size: 8,
        }
    }

    /// Patches per image side, squared.
    pub fn n_patches(&self) -> u64 {
        u64::from(self.image_size / self.patch_size).pow(2)
    }
}

pub fn tiny_projector_writer(p: &TinyProjector) -> io::Result<GgufWriter> {
    if p.patch_size == 0 || !p.image_size.is_multiple_of(p.patch_size) || p.n_head == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "image_size must be a multiple of patch_size, n_head > 0",
        ));
    }
    let (e, ff, text) = (
        u64::from(p.n_embd),
        u64::from(p.n_ff),
        u64::from(p.n_embd_text),
    );
    let ps = u64::from(p.patch_size);
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "clip")
        .add_kv("general.name", "rocm-llm tiny projector")
        .add_kv("general.file_type", 0u32)
        .add_kv("clip.projector_type", "mlp")
        .add_kv("clip.has_vision_encoder", true)
        .add_kv("clip.use_gelu", true)
        .add_kv("clip.vision.embedding_length", p.n_embd)
        .add_kv("clip.vision.feed_forward_length", p.n_ff)
        .add_kv("clip.vision.block_count", p.n_layer)
        .add_kv("clip.vision.projection_dim", p.n_embd_text)
        .add_kv("clip.vision.attention.head_count", p.n_head)
        .add_kv("clip.vision.attention.layer_norm_epsilon", 1e-6f32)
        .add_kv("clip.vision.image_size", p.image_size)
        .add_kv("clip.vision.patch_size", p.patch_size)
        .add_kv("clip.vision.image_mean", GgufValue::f32_array([0.5f32; 3]))
        .add_kv("clip.vision.image_std", GgufValue::f32_array([0.5f32; 3]));
    let f32 = GgmlType::F32;
    w.add_tensor_zeros("v.patch_embd.weight", &[ps, ps, 3, e], GgmlType::F16)
        .add_tensor_zeros("v.patch_embd.bias", &[e], f32)
        .add_tensor_zeros("v.position_embd.weight", &[e, p.n_patches()], f32);
    for il in 0..p.n_layer {
        let b = |t: &str| format!("v.blk.{il}.{t}");
        for t in ["attn_q", "attn_k", "attn_v", "attn_out"] {
            w.add_tensor_zeros(b(&format!("{t}.weight")), &[e, e], f32)
                .add_tensor_zeros(b(&format!("{t}.bias")), &[e], f32);
        }
        for t in ["ln1", "ln2"] {
            w.add_tensor_zeros(b(&format!("{t}.weight")), &[e], f32)
                .add_tensor_zeros(b(&format!("{t}.bias")), &[e], f32);
        }
        w.add_tensor_zeros(b("ffn_up.weight"), &[e, ff], f32)
            .add_tensor_zeros(b("ffn_up.bias"), &[ff], f32)
            .add_tensor_zeros(b("ffn_down.weight"), &[ff, e], f32)
            .add_tensor_zeros(b("ffn_down.bias"), &[e], f32);
    }
    w.add_tensor_zeros("mm.0.weight", &[e, text], f32)
        .add_tensor_zeros("mm.0.bias", &[text], f32)
        .add_tensor_zeros("mm.2.weight", &[text, text], f32)
        .add_tensor_zeros("mm.2.bias", &[text], f32);
    Ok(w)
}

pub fn write_tiny_projector(path: &Path, p: &TinyProjector) -> io::Result<()> {
    tiny_projector_writer(p)?.write_sparse_file(path)
}
