//! What a model will need in (V)RAM, estimated from its GGUF header and its
//! options before anything is launched: the weights plus the KV cache for
//! the configured context. Compute buffers come on top (llama-server prints
//! them per device at load); `--fit` may shrink an unset context or layer
//! count to make things fit.

use serde::Serialize;

use crate::gguf::GgufHeader;
use crate::spec::{CacheType, LaunchOptions};

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MemoryEstimate {
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    /// The context the KV cache is sized for, in tokens.
    pub context: u64,
}

impl MemoryEstimate {
    pub fn total_bytes(&self) -> u64 {
        self.weights_bytes.saturating_add(self.kv_cache_bytes)
    }
}

/// Bytes one cached element takes (quantized types store blocks of 32).
pub fn cache_bytes_per_element(t: CacheType) -> f64 {
    match t {
        CacheType::F32 => 4.0,
        CacheType::F16 | CacheType::Bf16 => 2.0,
        CacheType::Q8_0 => 34.0 / 32.0,
        CacheType::Q4_0 | CacheType::Iq4Nl => 18.0 / 32.0,
        CacheType::Q4_1 => 20.0 / 32.0,
        CacheType::Q5_0 => 22.0 / 32.0,
        CacheType::Q5_1 => 24.0 / 32.0,
    }
}

/// The estimate for a model with these options, or `None` when the header
/// lacks what is needed (an architecture without the usual keys).
pub fn estimate(header: &GgufHeader, options: &LaunchOptions) -> Option<MemoryEstimate> {
    let weights_bytes = header.total_tensor_bytes().ok()?;
    let context = match options.ctx_size {
        Some(n) if n > 0 => u64::from(n),
        _ => header.context_length()?,
    };
    // Elements per token, K and V together (one "byte" per element).
    let elements = header.kv_cache_bytes_per_token(1)?;
    let k = cache_bytes_per_element(options.cache_type_k.unwrap_or(CacheType::F16));
    let v = cache_bytes_per_element(options.cache_type_v.unwrap_or(CacheType::F16));
    let per_token = elements as f64 / 2.0 * (k + v);
    let kv_cache_bytes = (per_token * context as f64).round() as u64;
    Some(MemoryEstimate {
        weights_bytes,
        kv_cache_bytes,
        context,
    })
}

/// `5.81 GiB`, `470 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gguf::{TinyModel, tiny_llama_bytes};

    fn tiny_header() -> GgufHeader {
        let bytes = tiny_llama_bytes(&TinyModel::default()).unwrap();
        GgufHeader::read(&bytes[..], 1 << 20).unwrap()
    }

    #[test]
    fn kv_cache_follows_context_and_cache_types() {
        let h = tiny_header();
        // The tiny model: 2 layers, 4 KV heads of 16 = 64 K + 64 V values per layer.
        let elements_per_token = 2 * (64 + 64);
        let check = |ctx: Option<u32>,
                     k: Option<CacheType>,
                     v: Option<CacheType>,
                     expected_kv: u64,
                     expected_ctx: u64| {
            let o = LaunchOptions {
                ctx_size: ctx,
                cache_type_k: k,
                cache_type_v: v,
                ..LaunchOptions::default()
            };
            let e = estimate(&h, &o).unwrap();
            assert_eq!(
                (e.kv_cache_bytes, e.context),
                (expected_kv, expected_ctx),
                "{ctx:?} {k:?} {v:?}"
            );
            assert_eq!(e.weights_bytes, h.total_tensor_bytes().unwrap());
        };
        // Default f16, the trained context (2048).
        check(None, None, None, elements_per_token * 2 * 2048, 2048);
        check(Some(0), None, None, elements_per_token * 2 * 2048, 2048);
        check(Some(512), None, None, elements_per_token * 2 * 512, 512);
        check(
            Some(512),
            Some(CacheType::F32),
            Some(CacheType::F32),
            elements_per_token * 4 * 512,
            512,
        );
        // q8_0 K, f16 V: half the elements at 34/32 bytes, half at 2.
        check(
            Some(512),
            Some(CacheType::Q8_0),
            None,
            (elements_per_token as f64 / 2.0 * (34.0 / 32.0 + 2.0) * 512.0) as u64,
            512,
        );
    }

    #[test]
    fn bytes_read_like_people_write_them() {
        for (n, text) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.00 KiB"),
            (469_760, "458.75 KiB"),
            (5 << 30, "5.00 GiB"),
        ] {
            assert_eq!(human_bytes(n), text);
        }
    }
}
