//! Regression tests for inputs that broke the functions the fuzz targets
//! (fuzz/fuzz_targets) drive, fed through the same functions. Each case
//! names how it was found.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rocm_llm::gguf::{GgufHeader, GgufValue, GgufWriter};
use rocm_llm::memory;
use rocm_llm::spec::LaunchOptions;

/// The bytes of a header with these metadata entries and no tensors, as a
/// file would hold them, parsed back.
fn header(kvs: &[(&str, GgufValue)]) -> GgufHeader {
    let mut w = GgufWriter::new();
    for (k, v) in kvs {
        w.add_kv(*k, v.clone());
    }
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).unwrap();
    GgufHeader::read(&bytes[..], 1 << 20).unwrap()
}

/// A llama header whose `block_count` claims `n_layer` layers (as a u64),
/// with a scalar head count: 2 heads of 4, so each layer caches
/// 2 * (4 + 4) = 16 elements per token.
fn llama_with_layers(n_layer: u64) -> GgufHeader {
    header(&[
        ("general.architecture", "llama".into()),
        ("llama.block_count", n_layer.into()),
        ("llama.context_length", 512u32.into()),
        ("llama.embedding_length", 8u32.into()),
        ("llama.attention.head_count", 2u32.into()),
    ])
}

/// Found by review of the gguf fuzz target (the fuzzer reaches it by raising
/// `block_count`): the KV estimate built a per-layer vector as long as the
/// layer count the file claims, so a 200-byte file made `rocm-llm plan`
/// allocate without bound (abort) or panic ("capacity overflow").
#[test]
fn a_claimed_layer_count_is_never_allocated() {
    let check = |n_layer: u64, expected: Option<u64>| {
        let h = llama_with_layers(n_layer);
        assert_eq!(h.kv_cache_bytes_per_token(2), expected, "{n_layer} layers");
        // `plan`'s estimate refuses layer counts no model has, before it
        // sizes anything by them.
        let e = memory::estimate_model(&h, &LaunchOptions::default(), &[], &Default::default());
        if n_layer > 4096 {
            let why = e.expect_err("an estimate for an impossible layer count");
            assert!(why.contains("more than any model has"), "{why}");
        }
    };
    check(2, Some(2 * 16 * 2));
    check(u64::from(u32::MAX), Some(u64::from(u32::MAX) * 16 * 2));
    check(1 << 40, Some((1 << 40) * 16 * 2));
    // 2^61 layers * 32 bytes overflows u64: no estimate.
    check(1 << 61, None);
    check(u64::MAX, None);
}

/// Found by the gguf fuzz target (its first run): a header with an `f64`
/// NaN value (and a tensor of an unknown type with a huge dimension). The
/// target's budget check compared the parses with `==`, which a NaN never
/// satisfies: a false alarm in the target, which now compares them as text.
/// Kept as a seed (fuzz/seeds/gguf/nan-and-huge-dims) and here: a smaller
/// budget must give the same parse, and everything `plan` reads from it
/// must answer without panicking.
#[test]
fn a_nan_value_parses_the_same_under_any_budget() {
    let bytes = include_bytes!("../fuzz/seeds/gguf/nan-and-huge-dims");
    let full = GgufHeader::read(&bytes[..], rocm_llm::gguf::DEFAULT_HEADER_LIMIT).unwrap();
    let small = GgufHeader::read(&bytes[..], 4096).unwrap();
    assert_eq!(format!("{small:?}"), format!("{full:?}"));
    assert!(matches!(full.get("t.12"), Some(GgufValue::F64(x)) if x.is_nan()));
    // The second tensor's type (256) is unknown: no weight total, no estimate.
    assert!(full.total_tensor_bytes().is_err());
    assert!(
        memory::estimate_model(&full, &LaunchOptions::default(), &[], &Default::default()).is_err()
    );
}
