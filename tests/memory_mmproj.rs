//! The multimodal projector (`--mmproj` in `extra_args`) against the real
//! llama-server: generated llava-style `mlp` projectors (zero weights, a
//! ViT encoder of real widths and 1-2 layers, src/gguf/mmproj.rs) beside
//! the tiny text model, flash attention on and off. Its weights must equal
//! what llama-server's projector loader reports (`load_hparams: model
//! size`), and its compute buffer (`reserve_compute_meta:`) must lie within
//! the bounds measured for it (docs/memory.md, Multimodal). The daemon's
//! measured usage counts both beside the model's (tests/memory_status.rs
//! covers the model's).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use rocm_llm::gguf::GgufHeader;
use rocm_llm::gguf::mmproj::{TinyProjector, write_tiny_projector};
use rocm_llm::memory::accuracy::{estimate_file, measure};
use rocm_llm::memory::estimate::projector_compute;
use rocm_llm::spec::{FlashAttn, LaunchOptions};

const MIB: f64 = 1024.0 * 1024.0;

#[test]
fn the_projectors_weights_and_compute_buffer_are_counted() {
    let server = common::llama_server().expect("ROCM_LLM_LLAMA_SERVER");
    let dir = tempfile::tempdir().unwrap();
    let text = rocm_llm::gguf::TinyModel::with_seed(1, "t");
    let model = dir.path().join("t.gguf");
    rocm_llm::gguf::write_tiny_llama(&model, &text).unwrap();
    // (name, image, patch, width, feed-forward, heads, layers, compute
    // estimate / measured bounds)
    type Case = (&'static str, u32, u32, u32, u32, u32, u32, (f64, f64));
    let cases: [Case; 4] = [
        // 256 patches, no layer run (llava skips the last): the embedding.
        ("clip-l-224", 224, 14, 1024, 4096, 16, 1, (0.98, 1.02)),
        // 576 patches, one layer run: its feed-forward or its scores.
        ("clip-l-336", 336, 14, 1024, 4096, 16, 2, (0.98, 1.02)),
        // Here the allocator reuses the image's block: 1.15 vs 2.0 MiB.
        ("vit-b-224", 224, 16, 768, 3072, 12, 1, (1.0, 1.8)),
        ("siglip-448", 448, 14, 1152, 4304, 16, 1, (0.98, 1.02)),
    ];
    for (name, image, patch, e, ff, heads, layers, (lo, hi)) in cases {
        let p = TinyProjector {
            n_embd_text: text.n_embd,
            n_embd: e,
            n_ff: ff,
            n_head: heads,
            n_layer: layers,
            image_size: image,
            patch_size: patch,
        };
        let path = dir.path().join(format!("{name}.gguf"));
        write_tiny_projector(&path, &p).unwrap();
        let header = GgufHeader::read_path(&path).unwrap();
        for fa in [true, false] {
            let options = LaunchOptions {
                ctx_size: Some(256),
                parallel: Some(1),
                flash_attn: Some(if fa { FlashAttn::On } else { FlashAttn::Off }),
                extra_args: vec!["--mmproj".into(), path.display().to_string()],
                ..LaunchOptions::default()
            };
            let label = format!("{name} fa {}", if fa { "on" } else { "off" });
            let measured = measure(&server, &model, &options, common::daemon::free_port())
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            let without = LaunchOptions {
                extra_args: vec![],
                ..options.clone()
            };
            let with = estimate_file(&model, &options, &[]).unwrap();
            let base = estimate_file(&model, &without, &[]).unwrap();
            let est_weights = with.devices["CPU"].weights - base.devices["CPU"].weights;
            let est_compute = with.devices["CPU"].compute - base.devices["CPU"].compute;
            assert_eq!(est_compute, projector_compute(&header, fa), "{label}");
            let real_compute = measured.projector_compute();
            assert!(
                real_compute > 0,
                "{label}: no projector compute line\n{measured:?}"
            );
            let real_weights = measured.devices["CPU"].weights
                - rocm_llm::memory::accuracy::measure(
                    &server,
                    &model,
                    &without,
                    common::daemon::free_port(),
                )
                .unwrap()
                .devices["CPU"]
                    .weights;
            let ratio = est_compute as f64 / real_compute as f64;
            eprintln!(
                "{label}: weights {:.2}/{:.2} MiB, compute {:.2}/{:.2} MiB ({ratio:.2})",
                est_weights as f64 / MIB,
                real_weights as f64 / MIB,
                est_compute as f64 / MIB,
                real_compute as f64 / MIB
            );
            assert!(
                (est_weights as f64 - real_weights as f64).abs() <= 0.006 * MIB,
                "{label}: weights {est_weights} vs llama-server's {real_weights}"
            );
            assert!(
                (lo..=hi).contains(&ratio),
                "{label}: compute {est_compute} vs llama-server's {real_compute} ({ratio:.2}, bounds {lo}..{hi})"
            );
        }
    }
}
