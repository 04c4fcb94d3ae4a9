//! The daemon's reload runs memory admission like `validate`
//! (docs/scheduler.md): a spec that does not fit is rejected and nothing
//! that runs changes. Real daemon, real llama-server, tiny models.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::daemon::{Daemon, write_by_rename};

#[test]
fn a_reload_that_does_not_fit_is_rejected_and_nothing_changes() {
    let d = Daemon::start(&["a", "b"], "  a:\n    model: a.gguf\n");
    let before = d.wait_ready(&["a"]);
    // The same model, and a second always-on one, with a budget that
    // cannot hold both.
    let models = "  a:\n    model: a.gguf\n  b:\n    model: b.gguf\n    memory: 1GiB\n";
    let text = d.spec_text(models).replace(
        "models:\n",
        "memory:\n  ram: { total: 1GiB, reserve: 512MiB }\nmodels:\n",
    );
    write_by_rename(&d.spec, &text);
    let s = d.wait_status("the edit rejected", |s| s["last_reload"]["ok"] == false);
    let errors = s["last_reload"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = errors[0].as_str().unwrap();
    assert!(
        e.contains(
            "models.yaml:14:3: models.b: the always-on models do not fit together on CPU: a "
        ),
        "{e}"
    );
    assert!(e.contains(" + b 1.00 GiB = "), "{e}");
    assert!(
        e.contains(
            "against a budget of 512.00 MiB (1.00 GiB total - 512.00 MiB reserve): short by "
        ),
        "{e}"
    );
    assert_eq!(s["generation"], before["generation"], "nothing applied");
    assert_eq!(
        s["models"]["a"]["pid"], before["models"]["a"]["pid"],
        "a kept running"
    );
    assert!(
        s["models"]["b"].is_null(),
        "b was not started: {}",
        s["models"]
    );
    // A budget that holds both applies.
    write_by_rename(&d.spec, &text.replace("total: 1GiB", "total: 4GiB"));
    let s = d.wait_status("the fitting edit applied", |s| {
        s["last_reload"]["ok"] == true && s["models"]["b"].is_object()
    });
    assert_eq!(
        s["models"]["a"]["pid"], before["models"]["a"]["pid"],
        "a untouched"
    );
}
