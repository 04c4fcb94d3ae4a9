//! Plan tests: an edit from one spec to another, and the actions it must
//! produce. One line per case.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use rocm_llm::plan::{self, Observed, desired_launches};

const BASE: &str = "
models:
  qwen:
    model: qwen.gguf
    ctx_size: 8192
    aliases: [q]
  gemma:
    model: gemma.gguf
";

/// Plans the edit `before` -> `after`, starting from `before` running.
fn check(before: &str, after: &str, expected: &[&str]) {
    let running: Observed = desired_launches(&common::desired(before))
        .into_iter()
        .map(|(name, launch)| (name, launch.identity()))
        .collect();
    let actions = plan::plan(&common::desired(after), &running);
    let got: Vec<String> = actions
        .iter()
        .filter(|a| a.kind != plan::ActionKind::Keep)
        .map(ToString::to_string)
        .collect();
    assert_eq!(got, expected, "\nbefore:{before}\nafter:{after}");
}

#[test]
fn edits_produce_exactly_the_needed_actions() {
    // add a model
    check(
        BASE,
        &format!("{BASE}  llama:\n    model: llama.gguf\n"),
        &["start llama"],
    );
    // remove a model
    check(
        BASE,
        "models:\n  gemma:\n    model: gemma.gguf\n",
        &["stop qwen"],
    );
    // change an option that reaches llama-server
    check(
        BASE,
        &BASE.replace("ctx_size: 8192", "ctx_size: 16384"),
        &["restart qwen"],
    );
    // rename: the old name stops, the new one starts
    check(
        BASE,
        &BASE.replace("  qwen:", "  qwen3:"),
        &["stop qwen", "start qwen3"],
    );
    // alias change: routing only, nothing restarts
    check(
        BASE,
        &BASE.replace("aliases: [q]", "aliases: [q, qwen-latest]"),
        &[],
    );
    // disable a model
    check(
        BASE,
        &BASE.replace(
            "    model: gemma.gguf",
            "    model: gemma.gguf\n    enabled: false",
        ),
        &["stop gemma"],
    );
    // re-enable it
    check(
        &BASE.replace(
            "    model: gemma.gguf",
            "    model: gemma.gguf\n    enabled: false",
        ),
        BASE,
        &["start gemma"],
    );
    // env change restarts, and only that model
    check(
        BASE,
        &BASE.replace(
            "    model: gemma.gguf",
            "    model: gemma.gguf\n    env: {HSA_OVERRIDE_GFX_VERSION: \"11.0.1\"}",
        ),
        &["restart gemma"],
    );
    // a defaults change reaches every model that doesn't override it
    check(
        BASE,
        &format!("defaults:\n  threads: 8\n{BASE}"),
        &["restart gemma", "restart qwen"],
    );
    // ...and none that does
    check(
        BASE,
        &format!("defaults:\n  ctx_size: 4096\n{BASE}"),
        &["restart gemma"],
    );
    // a different llama-server binary restarts everything
    check(
        BASE,
        &format!("llama_server: /opt/llama/bin/llama-server\n{BASE}"),
        &["restart gemma", "restart qwen"],
    );
    // daemon-only options apply without a restart
    check(
        BASE,
        &BASE.replace(
            "    aliases: [q]",
            "    aliases: [q]\n    ready_timeout: 10m\n    swap: blue_green\n    stop_grace: 1m",
        ),
        &[],
    );
    // several at once come out stops, restarts, starts, each by name
    check(
        BASE,
        "models:\n  gemma:\n    model: gemma.gguf\n    ctx_size: 2048\n  zeta:\n    model: z.gguf\n  alpha:\n    model: a.gguf\n",
        &["stop qwen", "restart gemma", "start alpha", "start zeta"],
    );
}

#[test]
fn no_op_edits_give_an_empty_plan() {
    let variants = [
        // comments added
        "# my models\nmodels:\n  qwen: # the big one\n    model: qwen.gguf\n    ctx_size: 8192 # enough\n    aliases: [q]\n  gemma:\n    model: gemma.gguf\n",
        // keys and models reordered
        "models:\n  gemma:\n    model: gemma.gguf\n  qwen:\n    aliases: [q]\n    ctx_size: 8192\n    model: qwen.gguf\n",
        // defaults written out explicitly
        "listen: 127.0.0.1:8080\nmodels:\n  qwen:\n    model: qwen.gguf\n    ctx_size: 8192\n    aliases: [q]\n    enabled: true\n    flash_attn: auto\n    gpu_layers: auto\n    cache_type_k: f16\n    load_mode: auto\n    restart: always\n    ready_timeout: 5m\n  gemma:\n    model: gemma.gguf\n    batch_size: 2048\n    ubatch_size: 512\n    env: {}\n    extra_args: []\n",
        // a default moved into `defaults` where both models get the same value
        "defaults:\n  flash_attn: auto\nmodels:\n  qwen:\n    model: qwen.gguf\n    ctx_size: 8192\n    aliases: [q]\n  gemma:\n    model: gemma.gguf\n",
        // a defaults change that reaches no model (both override it)
        "defaults:\n  ctx_size: 1024\nmodels:\n  qwen:\n    model: qwen.gguf\n    ctx_size: 8192\n    aliases: [q]\n  gemma:\n    model: gemma.gguf\n    ctx_size: 0\n",
        // flow style instead of block style
        "models: {qwen: {model: qwen.gguf, ctx_size: 8192, aliases: [q]}, gemma: {model: gemma.gguf}}\n",
    ];
    for after in variants {
        check(BASE, after, &[]);
    }
}

#[test]
fn on_demand_models_are_in_the_plan_but_not_started() {
    let running = Observed::new();
    let desired = common::desired(
        "models:\n  a:\n    model: a.gguf\n    on_demand: true\n  b:\n    model: b.gguf\n",
    );
    let got: Vec<String> = plan::plan(&desired, &running)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(got, ["start b", "standby a"]);
}
