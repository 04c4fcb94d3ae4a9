//! The memory scheduler in the running daemon (docs/scheduler.md): real
//! daemon, real llama-server, tiny models and a small declared budget.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, pretty};

const MIB: u64 = 1 << 20;

/// A `memory:` block and on-demand models of `footprint` each, with a
/// context of `ctx_size`.
fn budgeted(
    d: &Daemon,
    ram_mib: u64,
    fairness: &str,
    ctx_size: u32,
    models: &[(&str, u64)],
) -> String {
    let mut body = String::new();
    for (m, footprint) in models {
        body.push_str(&format!(
            "  {m}:\n    model: {m}.gguf\n    on_demand: true\n    memory: {footprint}MiB\n    ctx_size: {ctx_size}\n"
        ));
    }
    with_budget(d, &format!("{ram_mib}MiB"), fairness, &body)
}

/// What six clients saw sending requests of `max_tokens` to three
/// on-demand models of 40 MiB in a 100 MiB ram budget for 25 s, checked
/// all along: never a failed request, never more reserved than the budget,
/// never more than two llama-servers, never a cut request.
struct Churn {
    served: usize,
    samples: usize,
    most_running: usize,
    most_reserved: u64,
    counters: rocm_llm::schedule::arbiter::Counters,
}

fn three_models_churn(ctx_size: u32, max_tokens: u32) -> Option<Churn> {
    let d = Daemon::start(&["a", "b", "c"], "")?;
    common::daemon::write_by_rename(
        &d.spec,
        &budgeted(&d, 100, "1s", ctx_size, &[("a", 40), ("b", 40), ("c", 40)]),
    );
    d.wait_status("the budget applied", |s| {
        s.scheduler
            .devices
            .iter()
            .any(|b| b.device == "CPU" && b.budget_bytes == 100 * MIB)
            && s.models.len() == 3
    });

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
            let listen = d.listen.clone();
            let spec = d.spec.clone();
            std::thread::spawn(move || {
                // A view of the daemon for this thread: only the endpoint.
                let models = ["a", "b", "c"];
                let mut n = i;
                while !stop.load(Ordering::SeqCst) {
                    let model = models[n % 3];
                    n += 1 + i % 2;
                    let line = chat_at(&listen, model, max_tokens);
                    if line.contains(" 200 ") {
                        served.fetch_add(1, Ordering::SeqCst);
                    } else {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{model}: {line} ({})", spec.display()));
                    }
                }
            })
        })
        .collect();

    // Sample the ledger and the processes really running while they work.
    let until = Instant::now() + Duration::from_secs(25);
    let (mut samples, mut most_running, mut most_reserved) = (0, 0, 0u64);
    while Instant::now() < until {
        let s = d.status();
        let running = d.children();
        let cpu = cpu_budget(&s);
        assert!(
            cpu.reserved_bytes <= cpu.budget_bytes,
            "reserved {} over the budget {}: {}",
            cpu.reserved_bytes,
            cpu.budget_bytes,
            pretty(&s)
        );
        // Every running llama-server is covered by a reservation: at most
        // two of 40 MiB fit in 100 MiB.
        assert!(
            running.len() <= 2,
            "{} running: {}",
            running.len(),
            pretty(&s)
        );
        most_running = most_running.max(running.len());
        most_reserved = most_reserved.max(cpu.reserved_bytes);
        samples += 1;
        // The pace of the sampling, not a wait for anything.
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let s = d.status();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "failed requests: {failures:?}\n{}",
        d.log()
    );
    for m in ["a", "b", "c"] {
        assert_eq!(s.models[m].cut, 0, "{m} cut a request");
    }
    let churn = Churn {
        served: served.load(Ordering::SeqCst),
        samples,
        most_running,
        most_reserved,
        counters: s.scheduler.counters,
    };
    eprintln!(
        "{} requests of {max_tokens} tokens in 25 s over {} samples; counters {:?}",
        churn.served, churn.samples, churn.counters
    );
    Some(churn)
}

#[test]
fn three_on_demand_models_any_two_fit_share_the_budget_without_a_failed_request() {
    let Some(c) = three_models_churn(256, 8) else {
        return;
    };
    assert!(c.served > 30, "only {} requests served", c.served);
    assert_eq!(c.most_running, 2, "two models ran at once at some point");
    assert_eq!(c.most_reserved, 80 * MIB);
    assert!(
        c.counters.swaps > 0 && c.counters.waits > 0,
        "the third model had to wait for room: {:?}",
        c.counters
    );
    assert_eq!(c.counters.refused, 0);
}

/// Requests long enough that the models are never idle: the waiting one
/// gets its turn by a yield, and still no request fails or is cut.
#[test]
fn three_busy_on_demand_models_take_turns_by_yielding_without_a_failed_request() {
    let Some(c) = three_models_churn(2048, 1000) else {
        return;
    };
    assert!(c.served > 6, "only {} requests served", c.served);
    assert!(
        c.counters.yields > 0,
        "no model yielded its turn: {:?}",
        c.counters
    );
    assert!(c.counters.swaps > 0, "{:?}", c.counters);
    assert_eq!(c.counters.refused, 0);
}

/// A chat completion of `max_tokens` tokens (EOS ignored): the status
/// line of a 200, else the whole answer.
fn chat_at(listen: &str, model: &str, max_tokens: u32) -> String {
    use std::io::Write;
    let body = format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":{max_tokens},"ignore_eos":true}}"#
    );
    let Ok(mut c) = std::net::TcpStream::connect(listen) else {
        return "cannot connect".into();
    };
    let _ = write!(
        c,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    if answer.contains(" 200 ") {
        answer.lines().next().unwrap_or("").to_owned()
    } else {
        answer
    }
}

/// What a streaming chat completion got.
#[derive(Debug, Default)]
struct Streamed {
    status: u16,
    /// `data:` lines other than `[DONE]`.
    chunks: usize,
    done: bool,
    finish_reason: Option<String>,
    /// Seconds since the Unix epoch (the daemon's launch records' clock).
    first_chunk_at: f64,
    ended_at: f64,
    error: Option<String>,
}

fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Streams a chat completion for `model` of `max_tokens` tokens, EOS
/// ignored, on a thread of its own; `chunks_seen` counts as they come.
fn stream_chat(
    listen: &str,
    model: &str,
    max_tokens: u32,
    chunks_seen: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Streamed> {
    let url = format!("http://{listen}/v1/chat/completions");
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "ignore_eos": true,
        "stream": true,
    });
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut out = Streamed::default();
            let mut resp = match reqwest::Client::new().post(&url).json(&body).send().await {
                Ok(r) => r,
                Err(e) => {
                    out.error = Some(e.to_string());
                    return out;
                }
            };
            out.status = resp.status().as_u16();
            let mut pending = String::new();
            loop {
                match resp.chunk().await {
                    Ok(Some(bytes)) => {
                        pending.push_str(&String::from_utf8_lossy(&bytes));
                        while let Some(end) = pending.find('\n') {
                            let line: String = pending.drain(..=end).collect();
                            let Some(data) = line.trim_end().strip_prefix("data: ") else {
                                continue;
                            };
                            if data == "[DONE]" {
                                out.done = true;
                                continue;
                            }
                            if out.chunks == 0 {
                                out.first_chunk_at = epoch_now();
                            }
                            out.chunks += 1;
                            chunks_seen.fetch_add(1, Ordering::SeqCst);
                            let v: serde_json::Value =
                                serde_json::from_str(data).unwrap_or_default();
                            if let Some(r) = v["choices"][0]["finish_reason"].as_str() {
                                out.finish_reason = Some(r.to_owned());
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        out.error = Some(e.to_string());
                        break;
                    }
                }
            }
            out.ended_at = epoch_now();
            out
        })
    })
}

/// `memory:` with a ram budget, then `models` (indented by two).
fn with_budget(d: &Daemon, ram: &str, fairness: &str, models: &str) -> String {
    d.spec_text(models).replace(
        "models:\n",
        &format!(
            "memory:\n  ram: {{ total: {ram}, reserve: 0B }}\n  fairness: {fairness}\nmodels:\n"
        ),
    )
}

/// The CPU budget as the status shows it.
fn cpu_budget(
    s: &rocm_llm::daemon::status::StatusReport,
) -> rocm_llm::schedule::arbiter::DeviceBudget {
    s.scheduler
        .devices
        .iter()
        .find(|b| b.device == "CPU")
        .cloned()
        .unwrap_or_else(|| panic!("no CPU budget: {}", pretty(s)))
}

/// Tokens A streams: about 2000 take 2-3 s here, and the time grows
/// faster than the count (attention over the whole context): 4000 took
/// 6-16 s here, several times a 1 s fairness bound even on a fast machine.
const LONG_STREAM_TOKENS: u32 = 4000;

/// What happened while A streamed and B waited for A's memory.
struct Contest {
    d: Daemon,
    stream: Streamed,
    /// When B was asked for, and answered (epoch seconds).
    b_asked_at: f64,
    b_answered_at: f64,
    b_line: String,
    /// Every `memory.waiting_for` B showed while it waited.
    b_waited_for: Vec<Vec<String>>,
    /// Whether the yield counter moved while A's stream still ran.
    yielded_mid_stream: bool,
    /// Whether A's owner had given its memory up (stopped taking requests,
    /// to stop once they finish) while its stream still ran.
    a_gave_way_mid_stream: bool,
    /// The last status.
    last: rocm_llm::daemon::status::StatusReport,
}

/// Two on-demand models of 60 MiB declared in a 100 MiB ram budget: a
/// long stream on A, and, while it runs, a request for B.
fn long_stream_on_a_while_b_waits(fairness: &str) -> Option<Contest> {
    let d = Daemon::start(&["a", "b"], "")?;
    // A context of 4096 for A's long stream (the default tiny model trains
    // on 2048, which llama-server would cap the context at).
    rocm_llm::gguf::write_tiny_llama(
        &d.dir.path().join("a.gguf"),
        &rocm_llm::gguf::TinyModel {
            n_ctx_train: 4096,
            ..rocm_llm::gguf::TinyModel::with_seed(1, "a")
        },
    )
    .unwrap();
    common::daemon::write_by_rename(
        &d.spec,
        &with_budget(
            &d,
            "100MiB",
            fairness,
            "  a:\n    model: a.gguf\n    on_demand: true\n    memory: 60MiB\n    ctx_size: 4096\n  b:\n    model: b.gguf\n    on_demand: true\n    memory: 60MiB\n    wait_timeout: 5m\n",
        ),
    );
    d.wait_status("the budget applied", |s| {
        s.scheduler
            .devices
            .iter()
            .any(|b| b.device == "CPU" && b.budget_bytes == 100 * MIB)
            && s.models.len() == 2
    });

    let chunks = Arc::new(AtomicUsize::new(0));
    let stream = stream_chat(&d.listen, "a", LONG_STREAM_TOKENS, chunks.clone());
    common::eventually(common::PATIENCE, "A streams", || {
        chunks.load(Ordering::SeqCst) > 0 || stream.is_finished()
    });
    assert!(
        !stream.is_finished(),
        "A's stream ended at once: {:?}",
        stream.join().unwrap()
    );

    let b_asked_at = epoch_now();
    let listen = d.listen.clone();
    let b = std::thread::spawn(move || {
        let line = chat_at(&listen, "b", 8);
        (line, epoch_now())
    });
    let (mut b_waited_for, mut yielded_mid_stream, mut a_gave_way_mid_stream) =
        (Vec::new(), false, false);
    // Samples the status until B is answered.
    common::eventually(common::PATIENCE * 2, "B is answered", || {
        let s = d.status();
        if let Some(w) = &s.models["b"].memory.waiting_for {
            b_waited_for.push(w.clone());
        }
        if !stream.is_finished() {
            yielded_mid_stream |= s.scheduler.counters.yields > 0;
            a_gave_way_mid_stream |= s.models["a"].memory.made_room > 0;
        }
        b.is_finished()
    });
    let (b_line, b_answered_at) = b.join().unwrap();
    let stream = stream.join().unwrap();
    let last = d.status();
    Some(Contest {
        d,
        stream,
        b_asked_at,
        b_answered_at,
        b_line,
        b_waited_for,
        yielded_mid_stream,
        a_gave_way_mid_stream,
        last,
    })
}

/// What both fairness bounds must show: A's stream whole, B served after
/// it on a process started after A's exited, and B seen waiting for A.
fn assert_a_finished_then_b_served(c: &Contest) {
    let (d, s, st) = (&c.d, &c.last, &c.stream);
    assert_eq!(st.error, None, "A's stream broke: {st:?}\n{}", d.log());
    assert_eq!(st.status, 200, "{st:?}");
    assert!(
        st.done,
        "A's stream did not reach data: [DONE]: {st:?}\n{}",
        d.log()
    );
    assert_eq!(st.finish_reason.as_deref(), Some("length"), "{st:?}");
    assert!(
        st.chunks >= LONG_STREAM_TOKENS as usize,
        "A streamed {} chunks of {LONG_STREAM_TOKENS} tokens",
        st.chunks
    );
    assert_eq!(s.models["a"].cut, 0, "A's request was cut: {}", pretty(s));
    assert!(c.b_line.contains(" 200 "), "B: {}\n{}", c.b_line, d.log());
    assert!(
        c.b_answered_at > st.ended_at,
        "B answered at {} before A's stream ended at {}",
        c.b_answered_at,
        st.ended_at
    );
    assert!(
        !c.b_waited_for.is_empty(),
        "B was never seen waiting for memory"
    );
    assert!(
        c.b_waited_for.iter().all(|w| w == &["a".to_owned()]),
        "B waited for {:?}",
        c.b_waited_for
    );
    // The daemon's own records: B's llama-server started after A's exited.
    let a_exit = s.models["a"]
        .launches
        .last()
        .and_then(|l| l.exited_at)
        .unwrap_or_else(|| panic!("A has not exited: {}", pretty(s)));
    let b_spawn = s.models["b"]
        .launches
        .last()
        .unwrap_or_else(|| panic!("B never started: {}", pretty(s)))
        .spawned_at;
    assert!(
        b_spawn >= a_exit,
        "B spawned at {b_spawn}, before A exited at {a_exit}: {}",
        pretty(s)
    );
    assert_eq!(s.models["a"].launches.len(), 1, "{}", pretty(s));
    assert_eq!(s.models["b"].launches.len(), 1, "{}", pretty(s));
    let cpu = cpu_budget(s);
    assert!(cpu.reserved_bytes <= cpu.budget_bytes, "{}", pretty(s));
    eprintln!(
        "A streamed {} chunks in {:.1} s; B asked {:.1} s after A's first chunk, waited {:.1} s (A's stream ended {:.1} s after B was asked); counters {:?}",
        st.chunks,
        st.ended_at - st.first_chunk_at,
        c.b_asked_at - st.first_chunk_at,
        c.b_answered_at - c.b_asked_at,
        st.ended_at - c.b_asked_at,
        s.scheduler.counters
    );
}

#[test]
fn a_long_stream_whose_turn_is_over_yields_to_the_waiting_model_and_finishes_uncut() {
    let Some(c) = long_stream_on_a_while_b_waits("1s") else {
        return;
    };
    assert_a_finished_then_b_served(&c);
    let counters = c.last.scheduler.counters;
    assert!(
        c.yielded_mid_stream,
        "A was not asked to yield while it streamed: {counters:?}\n{}",
        c.d.log()
    );
    assert!(
        c.a_gave_way_mid_stream,
        "A's owner did not give way while it streamed: {}",
        pretty(&c.last)
    );
    assert_eq!(counters.yields, 1, "{counters:?}");
    assert_eq!(
        counters.evictions, 0,
        "A was busy, never idle: {counters:?}"
    );
    assert_eq!(counters.swaps, 1, "{counters:?}");
    assert_eq!(counters.refused, 0, "{counters:?}");
    assert_eq!(c.last.models["a"].memory.made_room, 1);
    assert!(
        c.d.log().contains("its turn is over"),
        "the log says A yielded:\n{}",
        c.d.log()
    );
}

#[test]
fn a_long_stream_within_its_turn_keeps_the_memory_until_it_is_idle() {
    let Some(c) = long_stream_on_a_while_b_waits("60s") else {
        return;
    };
    assert_a_finished_then_b_served(&c);
    let counters = c.last.scheduler.counters;
    assert!(!c.yielded_mid_stream && !c.a_gave_way_mid_stream);
    assert_eq!(counters.yields, 0, "A's turn was not over: {counters:?}");
    assert_eq!(
        counters.evictions, 1,
        "A was evicted once idle: {counters:?}"
    );
    assert_eq!(counters.swaps, 1, "{counters:?}");
    assert_eq!(c.last.models["a"].memory.made_room, 1);
}

/// `rocm-llm plan --json` on `spec_text`: each model's CPU figure in `.fit`.
fn planned_cpu_bytes(d: &Daemon, spec_text: &str) -> std::collections::BTreeMap<String, u64> {
    let path = d.dir.path().join("plan.yaml");
    std::fs::write(&path, spec_text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
        .args(["plan", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "plan --json: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["fit"]["models"]
        .as_object()
        .unwrap_or_else(|| panic!("no .fit.models in {v:#}"))
        .iter()
        .map(|(m, f)| {
            let cpu = f["devices"]["CPU"]
                .as_u64()
                .unwrap_or_else(|| panic!("{m} has no CPU figure: {f:#}"));
            (m.clone(), cpu)
        })
        .collect()
}

fn read_measured(d: &Daemon) -> serde_json::Value {
    std::fs::read(d.dir.path().join("state/measured.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The CPU bytes `model` has in `measured.json` under its current launch,
/// once they are there, and what its llama-server's log says it holds.
fn wait_measured(d: &Daemon, model: &str) -> (u64, u64) {
    common::eventually(
        common::PATIENCE,
        &format!("{model}'s figure is remembered"),
        || {
            let s = d.status();
            let m = &s.models[model];
            let logged = m.memory.log_devices.get("CPU").map(|p| p.total());
            let stored = read_measured(d)[&m.launch_id]["CPU"].as_u64();
            match (stored, logged) {
                (Some(stored), Some(logged)) => Ok((stored, logged)),
                _ => Err(format!(
                    "measured.json: {}\nstatus: {}",
                    read_measured(d),
                    pretty(&s)
                )),
            }
        },
    )
}

#[test]
fn a_model_whose_measured_size_grew_past_the_room_is_refused_at_once_and_evicts_nothing() {
    let Some(d) = Daemon::start(&["a", "big"], "") else {
        return;
    };
    // Estimate-based footprints (no `memory:`); big's wait is long, so a
    // refusal that waited for it would show.
    let models = "  a:\n    model: a.gguf\n  big:\n    model: big.gguf\n    on_demand: true\n    wait_timeout: 60s\n";
    let planned = planned_cpu_bytes(&d, &d.spec_text(models));
    // Room for both as estimated, and a MiB.
    let budget = planned["a"] + planned["big"] + MIB;
    common::daemon::write_by_rename(
        &d.spec,
        &with_budget(&d, &format!("{budget}B"), "1s", models),
    );
    let s = d.wait_status("the budget applied and a ready", |s| {
        s.scheduler
            .devices
            .iter()
            .any(|b| b.device == "CPU" && b.budget_bytes == budget)
            && common::daemon::state(s, "a") == Some(rocm_llm::supervisor::State::Ready)
            && s.models.contains_key("big")
    });
    let a_pid = Daemon::pid(&s, "a");

    // The figure a's load measured is remembered under its launch, and it
    // is what its llama-server's log says.
    let (stored, logged) = wait_measured(&d, "a");
    assert_eq!(stored, logged);
    let s = d.status();
    let a_reserved = s.scheduler.models["a"].reserved["CPU"];
    assert_eq!(a_reserved, logged, "a's reservation is its measured figure");

    // big's last start "measured" more than is left beside a.
    let big_launch = s.models["big"].target_launch_id.clone();
    let grown = budget - a_reserved + MIB;
    let mut measured = read_measured(&d);
    measured[&big_launch] = serde_json::json!({ "CPU": grown });
    std::fs::write(
        d.dir.path().join("state/measured.json"),
        serde_json::to_vec(&measured).unwrap(),
    )
    .unwrap();

    let asked = Instant::now();
    let answer = chat_at(&d.listen, "big", 8);
    let took = asked.elapsed();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    assert!(head.starts_with("HTTP/1.1 503 "), "{answer}\n{}", d.log());
    assert!(
        head.lines()
            .any(|l| l.to_ascii_lowercase().starts_with("retry-after:")),
        "no Retry-After: {head}"
    );
    let error: serde_json::Value =
        serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(error["error"]["code"], "insufficient_memory", "{error:#}");
    assert!(
        took < Duration::from_secs(60),
        "the refusal waited {took:?}, as long as big's wait_timeout"
    );

    let s = d.status();
    assert_eq!(
        common::daemon::state(&s, "a"),
        Some(rocm_llm::supervisor::State::Ready)
    );
    assert_eq!(Daemon::pid(&s, "a"), a_pid, "a was not touched");
    let c = s.scheduler.counters;
    assert_eq!((c.refused, c.evictions, c.yields), (1, 0, 0), "{c:?}");
    let why = s.models["big"]
        .memory
        .refused
        .clone()
        .unwrap_or_else(|| panic!("no refusal shown: {}", pretty(&s)));
    assert!(
        why.contains("does not fit") && why.contains("CPU"),
        "memory.refused: {why}"
    );
    assert!(
        s.models["big"].launches.is_empty(),
        "big was started: {}",
        pretty(&s)
    );

    // Forgotten, big is the estimate again: it fits beside a.
    std::fs::remove_file(d.dir.path().join("state/measured.json")).unwrap();
    let line = chat_at(&d.listen, "big", 8);
    assert!(line.contains(" 200 "), "{line}\n{}", d.log());
    let s = d.status();
    assert_eq!(Daemon::pid(&s, "a"), a_pid, "a was not touched");
    assert_eq!(s.models["big"].memory.refused, None, "{}", pretty(&s));
    assert_eq!(s.scheduler.counters.refused, 1);
    let (stored, logged) = wait_measured(&d, "big");
    assert_eq!(stored, logged);
    eprintln!(
        "planned a {} B, big {} B, budget {budget} B; a reserved {a_reserved} B; big's grown figure {grown} B refused in {took:?}; big measured {stored} B",
        planned["a"], planned["big"]
    );
}

/// An always-on model with `swap: blue_green`, 60 MiB declared, in a ram
/// budget of `ram_mib`: its ctx_size is edited; returns the last status.
fn blue_green_edit(ram_mib: u64) -> Option<(Daemon, rocm_llm::daemon::status::StatusReport)> {
    let d = Daemon::start(&["a"], "")?;
    let model = |ctx: u32| {
        format!(
            "  a:\n    model: a.gguf\n    swap: blue_green\n    memory: 60MiB\n    ctx_size: {ctx}\n"
        )
    };
    common::daemon::write_by_rename(
        &d.spec,
        &with_budget(&d, &format!("{ram_mib}MiB"), "1s", &model(256)),
    );
    let first = d.wait_ready(&["a"]).models["a"].launch_id.clone();
    common::daemon::write_by_rename(
        &d.spec,
        &with_budget(&d, &format!("{ram_mib}MiB"), "1s", &model(512)),
    );
    let s = d.wait_status(
        "the replacement serves and the first process is gone",
        |s| {
            let a = &s.models["a"];
            a.state == rocm_llm::supervisor::State::Ready
                && a.launch_id != first
                && a.launches.len() == 2
                && a.launches[0].exited_at.is_some()
        },
    );
    Some((d, s))
}

#[test]
fn a_blue_green_swap_that_does_not_fit_twice_is_done_stop_first() {
    let Some((d, s)) = blue_green_edit(100) else {
        return;
    };
    let a = &s.models["a"];
    let (old, new) = (&a.launches[0], &a.launches[1]);
    assert!(
        new.spawned_at >= old.exited_at.unwrap(),
        "the two overlapped: {:?}",
        a.launches
    );
    let why = a
        .memory
        .swap_fallback
        .clone()
        .unwrap_or_else(|| panic!("no swap_fallback: {}", pretty(&s)));
    assert!(why.contains("does not fit beside"), "swap_fallback: {why}");
    assert_eq!(
        s.scheduler.counters.fallbacks, 1,
        "{:?}",
        s.scheduler.counters
    );
    assert!(
        d.log().contains("blue_green swap done stop_first"),
        "the log says why:\n{}",
        d.log()
    );
    let cpu = cpu_budget(&s);
    assert_eq!(cpu.reserved_bytes, 60 * MIB, "{}", pretty(&s));
}

#[test]
fn a_blue_green_swap_that_fits_twice_overlaps() {
    let Some((d, s)) = blue_green_edit(150) else {
        return;
    };
    let a = &s.models["a"];
    let (old, new) = (&a.launches[0], &a.launches[1]);
    assert!(
        new.spawned_at < old.exited_at.unwrap(),
        "the replacement started after the old one exited: {:?}\n{}",
        a.launches,
        d.log()
    );
    assert_eq!(a.memory.swap_fallback, None, "{}", pretty(&s));
    assert_eq!(
        s.scheduler.counters.fallbacks, 0,
        "{:?}",
        s.scheduler.counters
    );
}
