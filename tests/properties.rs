//! Property tests of the pure core: round trips, idempotent planning, and at
//! most one instance per model.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use proptest::prelude::*;
use rocm_llm::plan::{self, ActionKind, Observed, desired_launches};
use rocm_llm::spec::decode;
use rocm_llm::spec::{
    CacheType, FlashAttn, GpuLayers, GpuLayersKeyword, HumanDuration, ModelOptions, SpecFile,
    SwapStrategy, tree,
};

fn options(with_model: bool) -> impl Strategy<Value = ModelOptions> {
    (
        (
            any::<bool>(),
            proptest::option::of(0u32..=65536),
            proptest::option::of(prop_oneof![
                (0u32..=99).prop_map(GpuLayers::Count),
                Just(GpuLayers::Keyword(GpuLayersKeyword::All)),
                Just(GpuLayers::Keyword(GpuLayersKeyword::Auto))
            ]),
            proptest::option::of(1u32..=8),
            proptest::option::of(prop::sample::select(FlashAttn::ALL)),
            proptest::option::of(prop::sample::select(CacheType::ALL)),
        ),
        (
            proptest::option::of(prop::collection::btree_map(
                "[A-Z_]{1,8}",
                "[ -~]{0,12}",
                0..3,
            )),
            proptest::option::of(prop::collection::vec("--[a-z-]{1,10}", 0..3)),
            proptest::option::of(
                (1u64..=600).prop_map(|s| HumanDuration(std::time::Duration::from_secs(s))),
            ),
            proptest::option::of(prop::sample::select(SwapStrategy::ALL)),
            proptest::option::of(any::<bool>()),
            proptest::option::of("[ -~]{0,20}"),
        ),
    )
        .prop_map(
            move |((model, ctx, ngl, par, fa, ctk), (env, extra, ready, swap, enabled, tmpl))| {
                ModelOptions {
                    model: (with_model || model)
                        .then(|| PathBuf::from("m.gguf"))
                        .filter(|_| with_model),
                    ctx_size: ctx,
                    gpu_layers: ngl,
                    parallel: par,
                    flash_attn: fa,
                    cache_type_k: ctk,
                    env,
                    extra_args: extra,
                    ready_timeout: ready,
                    swap,
                    enabled,
                    chat_template: tmpl,
                    ..ModelOptions::default()
                }
            },
        )
}

fn spec_file() -> impl Strategy<Value = SpecFile> {
    (
        options(false),
        prop::collection::btree_map("[a-z][a-z0-9-]{0,8}", options(true), 1..5),
        proptest::option::of("127\\.0\\.0\\.1:[1-9][0-9]{3}"),
    )
        .prop_map(|(defaults, models, listen)| SpecFile {
            listen,
            defaults,
            models,
            ..SpecFile::default()
        })
}

fn parse(text: &str) -> Result<SpecFile, String> {
    let tree = tree::parse(text).map_err(|e| e.to_string())?;
    let decoded = decode::decode(&tree);
    if decoded.problems.is_empty() {
        Ok(decoded.spec)
    } else {
        Err(format!("{:?}", decoded.problems))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn parse_serialize_parse_gives_the_same_spec(spec in spec_file()) {
        let yaml = serde_saphyr::to_string(&spec).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let once = parse(&yaml).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(&once, &spec, "yaml:\n{}", yaml);
        let again = serde_saphyr::to_string(&once).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parse(&again).map_err(TestCaseError::fail)?, once);
    }

    #[test]
    fn planning_after_applying_a_plan_has_nothing_to_do(
        before in spec_file(),
        after in spec_file(),
        crashed in prop::collection::vec(any::<bool>(), 8),
    ) {
        let before = common::desired(&serde_saphyr::to_string(&before).map_err(|e| TestCaseError::fail(e.to_string()))?);
        let after = common::desired(&serde_saphyr::to_string(&after).map_err(|e| TestCaseError::fail(e.to_string()))?);
        // What runs: `before`'s instances, less some that crashed.
        let mut running: Vec<(String, plan::LaunchId)> = desired_launches(&before)
            .into_iter()
            .zip(crashed.iter().cycle())
            .filter(|(_, crashed)| !**crashed)
            .map(|((name, launch), _)| (name, launch.identity()))
            .collect();
        let wanted: BTreeMap<String, plan::LaunchId> = desired_launches(&after).into_iter().map(|(n, l)| (n, l.identity())).collect();
        let observed: Observed = running.iter().cloned().collect();
        for action in plan::plan(&after, &observed) {
            match action.kind {
                ActionKind::Stop => running.retain(|(n, _)| *n != action.model),
                ActionKind::Restart => {
                    running.retain(|(n, _)| *n != action.model);
                    running.push((action.model.clone(), wanted[&action.model].clone()));
                }
                ActionKind::Start | ActionKind::Standby => running.push((action.model.clone(), wanted[&action.model].clone())),
                ActionKind::Keep => {}
            }
            // Never two instances of one model.
            let mut names: Vec<&String> = running.iter().map(|(n, _)| n).collect();
            names.sort();
            let before_dedup = names.len();
            names.dedup();
            prop_assert_eq!(before_dedup, names.len(), "two instances of one model after {}", action);
        }
        let observed: Observed = running.into_iter().collect();
        let again = plan::plan(&after, &observed);
        prop_assert!(plan::is_noop(&again), "second plan not empty: {:?}", again);
    }
}
