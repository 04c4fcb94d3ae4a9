#![allow(clippy::unwrap_used, clippy::expect_used)]
use rocm_llm::gguf::mmproj::{TinyProjector, write_tiny_projector};
#[test]
fn scratch_write() {
    let dir = std::path::Path::new("/tmp/memwt/mm");
    std::fs::create_dir_all(dir).unwrap();
    let m = rocm_llm::gguf::TinyModel::with_seed(1, "t");
    rocm_llm::gguf::write_tiny_llama(&dir.join("t.gguf"), &m).unwrap();
    for (name, image, patch, e, ff, heads, layers) in [
        ("a", 224, 14, 1024, 4096, 16, 1),
        ("b", 336, 14, 1024, 4096, 16, 2),
        ("c", 224, 16, 768, 3072, 12, 1),
        ("d", 448, 14, 1152, 4304, 16, 1),
    ] {
        let p = TinyProjector {
            n_embd_text: m.n_embd,
            n_embd: e,
            n_ff: ff,
            n_head: heads,
            n_layer: layers,
            image_size: image,
            patch_size: patch,
        };
        write_tiny_projector(&dir.join(format!("{name}.gguf")), &p).unwrap();
    }
}
