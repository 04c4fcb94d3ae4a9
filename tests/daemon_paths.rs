//! Relative paths in `extra_args` resolve against the spec's directory, as
//! `model:` does: each child runs there, and that directory is part of its
//! launch identity (issue 8, item 7). The daemon itself runs from the crate
//! root, so a path resolved against its working directory would not exist.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::daemon::{Daemon, pretty, state};
use rocm_llm::gguf::mmproj::{TinyProjector, write_tiny_projector};
use rocm_llm::supervisor::State;

#[test]
fn a_relative_mmproj_in_extra_args_is_found_beside_the_spec() {
    let models = "  a:\n    model: a.gguf\n    extra_args: [--mmproj, proj.gguf]\n";
    let Some(d) = Daemon::start(&["a"], "  a:\n    model: a.gguf\n") else {
        return;
    };
    d.wait_ready(&["a"]);
    let text = rocm_llm::gguf::TinyModel::with_seed(1, "a");
    let projector = TinyProjector {
        n_layer: 1,
        image_size: 224,
        patch_size: 14,
        ..TinyProjector::for_text_width(text.n_embd)
    };
    write_tiny_projector(&d.dir.path().join("proj.gguf"), &projector).unwrap();
    assert!(
        !std::path::Path::new("proj.gguf").exists(),
        "the test needs the daemon's working directory to lack proj.gguf"
    );
    let before = d.status().models["a"].launch_id.clone();
    d.write_spec(models);
    let status = d.wait_status("a restarted with the projector, ready", |s| {
        state(s, "a") == Some(State::Ready) && s.models["a"].launch_id != before
    });
    let log = status.models["a"].log.join("\n") + &d.log();
    assert!(
        !log.contains("failed to load") && !log.contains("No such file"),
        "llama-server could not open the projector:\n{log}"
    );
    // llama-server reads the projector at load: its compute buffer is in
    // the instance's measured memory only if it did.
    let memory = &status.models["a"].memory;
    assert!(
        memory.log_devices.values().any(|p| p.compute > 0),
        "no measured memory: {}",
        pretty(&status)
    );
}

#[test]
fn the_spec_directory_is_part_of_the_launch_identity() {
    use rocm_llm::plan::Launch;
    let a = desired_in("/srv/one/models.yaml", "models:\n  m:\n    model: m.gguf\n");
    let b = desired_in(
        "/srv/two/models.yaml",
        "models:\n  m:\n    model: /srv/one/m.gguf\n",
    );
    let (ma, mb) = (&a.models["m"], &b.models["m"]);
    assert_eq!(ma.model, mb.model, "the same model file");
    assert_eq!(ma.launch.working_dir, std::path::Path::new("/srv/one"));
    assert_eq!(mb.launch.working_dir, std::path::Path::new("/srv/two"));
    let program = std::path::Path::new("/bin/llama-server");
    assert_ne!(
        Launch::for_model(ma, program).identity(),
        Launch::for_model(mb, program).identity(),
        "a relative extra_args path means something else in another directory"
    );
}

/// A valid spec at `spec_path` (files are not looked at).
fn desired_in(spec_path: &str, yaml: &str) -> rocm_llm::spec::Desired {
    let ctx = rocm_llm::spec::validate::Context {
        spec_path: std::path::Path::new(spec_path),
        default_llama_server: "/bin/llama-server".into(),
        probe: &common::AnyFile,
    };
    rocm_llm::spec::validate::load(yaml, &ctx).unwrap_or_else(|e| panic!("{e}"))
}
