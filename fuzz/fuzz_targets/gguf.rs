//! Fuzzes the GGUF header reader with arbitrary bytes as the model file, and
//! everything `plan` computes from a header (weights, KV cache, the memory
//! estimate).
//!
//! Invariants, for every input:
//! - nothing panics, hangs or allocates without bound (run it with
//!   `-rss_limit_mb` and `-timeout`: scripts/fuzz.sh does);
//! - the budget is honoured: a read under a small budget either fails with
//!   `TooLarge` or parses exactly what the default budget parses;
//! - an accepted header is consistent: version 2 or 3, a power-of-two
//!   alignment, a data offset that is a multiple of it and past the bytes
//!   read.
//!
//! The bytes reach the parser through a `BufReader`, as `read_path` reads a
//! file, with a small buffer so reads straddle its refills.
//!
//! Run (from the repository root): scripts/fuzz.sh 1, or
//!   cargo +nightly fuzz run gguf fuzz/corpus/gguf fuzz/seeds/gguf -- -max_len=65536 -rss_limit_mb=1024 -timeout=10

#![no_main]

use std::io::BufReader;

use libfuzzer_sys::fuzz_target;
use rocm_llm::gguf::{DEFAULT_HEADER_LIMIT, GgufError, GgufHeader};
use rocm_llm::memory;
use rocm_llm::spec::{CacheType, LaunchOptions};

/// A budget far below the default, so that the fuzzer reaches `TooLarge`.
const SMALL_LIMIT: u64 = 4096;

fn read(data: &[u8], limit: u64) -> Result<GgufHeader, GgufError> {
    GgufHeader::read(BufReader::with_capacity(7, data), limit)
}

fuzz_target!(|data: &[u8]| {
    let full = read(data, DEFAULT_HEADER_LIMIT);
    match read(data, SMALL_LIMIT) {
        // Compared as text: a NaN value is not equal to itself.
        Ok(small) => match &full {
            Ok(full) => assert_eq!(
                format!("{small:?}"),
                format!("{full:?}"),
                "the budget changed the parse"
            ),
            Err(e) => panic!("parsed under {SMALL_LIMIT} bytes but not under the default: {e}"),
        },
        Err(GgufError::TooLarge { limit, .. }) => assert_eq!(limit, SMALL_LIMIT),
        Err(e) => {
            // Any other error happens before the budget runs out, so the
            // default budget meets the same one.
            let full = full.as_ref().err().map(ToString::to_string);
            assert_eq!(Some(e.to_string()), full, "the budget changed the error");
        }
    }
    let Ok(h) = full else { return };

    assert!(h.version == 2 || h.version == 3, "version {}", h.version);
    assert!(h.alignment.is_power_of_two(), "alignment {}", h.alignment);
    assert_eq!(h.data_offset % h.alignment, 0, "data offset not aligned");
    // magic + version + two counts.
    assert!(h.data_offset >= 24, "data offset {}", h.data_offset);

    // What `plan` and `status` read from a header.
    let _ = (
        h.architecture(),
        h.name(),
        h.chat_template(),
        h.tensor_count(),
    );
    let _ = (h.block_count(), h.context_length(), h.embedding_length());
    let _ = (h.feed_forward_length(), h.head_count(), h.head_count_kv());
    let _ = h.total_tensor_bytes();
    for t in &h.tensors {
        let _ = (t.n_elements(), t.n_bytes());
    }
    let _ = h.kv_cache_bytes_per_token(2);
    for (ctx, k) in [(None, None), (Some(4096), Some(CacheType::Q4_0))] {
        let options = LaunchOptions {
            ctx_size: ctx,
            cache_type_k: k,
            ..LaunchOptions::default()
        };
        // With no GPU and with one: placement, KV, compute and output.
        for gpus in [vec![], vec![memory::Device::new("ROCm0", 16 << 30)]] {
            if let Ok(e) =
                memory::estimate_model(&h, &options, &gpus, &memory::Overheads::default())
            {
                let _ = memory::human_bytes(e.total_bytes());
            }
        }
    }
});
