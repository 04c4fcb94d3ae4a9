//! The anti-thrash benchmark through the real daemon: the 8-agent
//! alternating workload of `benches/anti_thrash.rs`, sent to `rocm-llm
//! serve` with two tiny on-demand models that cannot both fit its declared
//! RAM budget, once per policy in one run: FIFO (`memory.fairness: 0s`,
//! swap at each request for the other model, as llama-swap and Ollama do)
//! against ours (a fairness bound).
//!
//! Run: `cargo bench --bench anti_thrash_daemon` (llama-server from
//! `ROCM_LLM_LLAMA_SERVER`, else `scripts/llama-server.sh --check`);
//! docs/scheduler.md has the figures and why the bounds are what they are.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::Rng;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Requests measured per policy (after one warm-up request per model).
const REQUESTS: usize = 600;
const AGENTS: usize = 8;
const SEED: u64 = 7;
/// The pure benchmark's think time (0.5-2 s), request length (2-6 s),
/// heavy open arrivals (a 6 s mean gap) and fairness bound (the default
/// 40 s), all scaled by its swap cost (8 s load + 1 s stop) to the tiny
/// models' swap here (about 40 ms, printed by every run): 1/225.
const THINK_MS: (f64, f64) = (2.2, 8.9);
/// Tokens per request (`ignore_eos`): 9-27 ms at the tiny model's ~5000
/// tokens/s through the daemon here.
const TOKENS: (f64, f64) = (45.0, 135.0);
const OPEN_GAP_MS: f64 = 27.0;
/// The policies, as `memory.fairness`: FIFO, ours with the default bound
/// scaled like the workload, and ours with the default itself.
const POLICIES: [(&str, &str); 3] = [
    ("FIFO", "0s"),
    ("ours, bound 180 ms (40 s scaled)", "180ms"),
    ("ours, bound 40 s (the default, unscaled)", "40s"),
];

#[derive(Clone, Copy)]
enum Workload {
    /// [`AGENTS`] agents in a closed loop, each sending its next request to
    /// the other model [`THINK_MS`] after its answer.
    Agents,
    /// Open arrivals (Poisson, this mean gap) whose models alternate.
    Open { mean_gap_ms: f64 },
}

fn send(
    listen: &str,
    model: &str,
    tokens: u32,
    answers: &Mutex<Vec<Answer>>,
    failed: &Mutex<Vec<String>>,
) {
    match chat(listen, model, tokens) {
        Ok(a) => answers.lock().unwrap().push(a),
        Err(e) => failed.lock().unwrap().push(format!("{model}: {e}")),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The llama-server to run: `ROCM_LLM_LLAMA_SERVER`, else the one
/// scripts/llama-server.sh has cached (`--check` builds nothing).
fn llama_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ROCM_LLM_LLAMA_SERVER").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/llama-server.sh"))
        .arg("--check")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && path.is_file()).then_some(path)
}

/// One answered request.
struct Answer {
    /// Request sent to its first streamed token: the wait for the model
    /// (swaps, queue) plus the prompt and one token.
    wait: f64,
    /// First token to the end of the stream.
    generation: f64,
    tokens: usize,
}

/// A streamed chat completion of `tokens` tokens for `model`, or why not.
fn chat(listen: &str, model: &str, tokens: u32) -> Result<Answer, String> {
    let body = format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":{tokens},"ignore_eos":true,"stream":true}}"#
    );
    let sent = Instant::now();
    let mut c = TcpStream::connect(listen).map_err(|e| format!("connect: {e}"))?;
    write!(
        c,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut r = BufReader::new(c);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    if !line.contains(" 200 ") {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut r, &mut rest);
        return Err(format!("{}{rest}", line.trim_end()));
    }
    let (mut first, mut tokens) = (None, 0);
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        if line.starts_with("data: {") {
            first.get_or_insert_with(Instant::now);
            tokens += 1;
        }
    }
    let first = first.ok_or("no token streamed")?;
    Ok(Answer {
        wait: (first - sent).as_secs_f64(),
        generation: first.elapsed().as_secs_f64(),
        tokens,
    })
}

/// A daemon on a spec of its own, stopped on drop.
struct Daemon {
    child: Child,
    listen: String,
    control: String,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, server: &Path, name: &str, fairness: &str) -> Daemon {
        let listen = format!("127.0.0.1:{}", free_port());
        let control = format!("127.0.0.1:{}", free_port());
        // 60 MiB declared each in a 100 MiB budget: one at a time. No
        // request is turned away (queue, wait), so a policy that falls
        // behind shows it in its waits.
        let spec = format!(
            "listen: {listen}\ncontrol: {control}\nllama_server: {}\n\
             defaults:\n  threads: 1\n  ctx_size: 1024\n  parallel: 1\n  stop_grace: 5s\n  queue_length: 100000\n  wait_timeout: 1h\n\
             memory:\n  ram: {{ total: 100MiB, reserve: 0B }}\n  fairness: {fairness}\n\
             models:\n  a:\n    model: a.gguf\n    on_demand: true\n    memory: 60MiB\n\
             \x20 b:\n    model: b.gguf\n    on_demand: true\n    memory: 60MiB\n",
            server.display()
        );
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, spec).expect("write the spec");
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
            .arg("serve")
            .arg("--spec")
            .arg(&path)
            .arg("--state-dir")
            .arg(dir.join(format!("state-{name}")))
            .args(["--log", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn rocm-llm serve");
        let d = Daemon {
            child,
            listen,
            control,
            log,
        };
        let until = Instant::now() + Duration::from_secs(60);
        while rocm_llm::daemon::client::get(&d.control, "/healthz", None).is_err() {
            assert!(
                Instant::now() < until,
                "the daemon did not answer: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// What the status API showed while the workload ran.
#[derive(Default)]
struct Seen {
    /// Every llama-server started, by (model, pid, spawn time).
    spawns: BTreeMap<(String, i32), f64>,
    /// Spawn to ready of each, in ms.
    ready_ms: BTreeMap<(String, i32), f64>,
    counters: rocm_llm::schedule::arbiter::Counters,
}

fn look(control: &str, seen: &Mutex<Seen>) {
    let Ok(s) = rocm_llm::daemon::client::status(control, None) else {
        return;
    };
    let mut seen = seen.lock().unwrap();
    for (m, st) in &s.models {
        for l in &st.launches {
            seen.spawns.insert((m.clone(), l.pid), l.spawned_at);
        }
        if let (Some(pid), Some(ms)) = (st.pid, st.ready_ms) {
            seen.ready_ms.insert((m.clone(), pid), ms);
        }
    }
    seen.counters = s.scheduler.counters;
}

struct Row {
    served: usize,
    failed: Vec<String>,
    swaps: usize,
    waits: Vec<f64>,
    generation: f64,
    tokens: f64,
    elapsed: f64,
    ready_ms: f64,
    counters: rocm_llm::schedule::arbiter::Counters,
}

impl Row {
    fn swaps_per_100(&self) -> f64 {
        self.swaps as f64 * 100.0 / self.served.max(1) as f64
    }
    fn mean(&self) -> f64 {
        self.waits.iter().sum::<f64>() / self.waits.len().max(1) as f64
    }
    fn p99(&self) -> f64 {
        let n = self.waits.len();
        if n == 0 {
            return f64::NAN;
        }
        self.waits[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1]
    }
    fn per_minute(&self) -> f64 {
        self.served as f64 / self.elapsed * 60.0
    }
}

fn run(dir: &Path, server: &Path, index: usize, workload: Workload, fairness: &str) -> Row {
    let d = Daemon::start(dir, server, &format!("policy{index}"), fairness);
    // Warm-up, not measured: each model loads once.
    for m in ["a", "b"] {
        if let Err(e) = chat(&d.listen, m, 1) {
            panic!("warm-up request for {m}: {e}\n{}", d.log());
        }
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    look(&d.control, &seen);
    let before = seen.lock().unwrap().counters;
    let started_epoch = epoch_now();
    let started = Instant::now();
    let issued = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let monitor = {
        let (control, seen, done) = (d.control.clone(), seen.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                look(&control, &seen);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let senders: Vec<_> = match workload {
        Workload::Agents => (0..AGENTS)
            .map(|agent| {
                let (listen, issued) = (d.listen.clone(), issued.clone());
                let (answers, failed) = (answers.clone(), failed.clone());
                std::thread::spawn(move || {
                    let mut rng = Rng(SEED.wrapping_mul(1000) + agent as u64 + 1);
                    let mut model = agent % 2;
                    while issued.fetch_add(1, Ordering::SeqCst) < REQUESTS {
                        std::thread::sleep(Duration::from_secs_f64(rng.uniform(THINK_MS) / 1000.0));
                        let tokens = rng.uniform(TOKENS) as u32;
                        send(&listen, ["a", "b"][model], tokens, &answers, &failed);
                        model = 1 - model;
                    }
                })
            })
            .collect(),
        Workload::Open { mean_gap_ms } => {
            // One thread per request, sent at seeded exponential gaps.
            let mut rng = Rng(SEED);
            let mut at = Instant::now();
            (0..REQUESTS)
                .map(|i| {
                    at += Duration::from_secs_f64(rng.exp(mean_gap_ms) / 1000.0);
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    let tokens = rng.uniform(TOKENS) as u32;
                    let listen = d.listen.clone();
                    let (answers, failed) = (answers.clone(), failed.clone());
                    std::thread::spawn(move || {
                        send(&listen, ["a", "b"][i % 2], tokens, &answers, &failed);
                    })
                })
                .collect()
        }
    };
    for s in senders {
        s.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    monitor.join().unwrap();
    look(&d.control, &seen);
    let seen = seen.lock().unwrap();
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let mut waits: Vec<f64> = answers.iter().map(|a| a.wait).collect();
    waits.sort_by(f64::total_cmp);
    let n = answers.len().max(1) as f64;
    let c = seen.counters;
    let spawned: Vec<_> = seen
        .spawns
        .iter()
        .filter(|(_, at)| **at >= started_epoch)
        .map(|(k, _)| k)
        .collect();
    let ready: Vec<f64> = spawned
        .iter()
        .filter_map(|k| seen.ready_ms.get(*k).copied())
        .collect();
    let failed = failed.lock().unwrap().clone();
    Row {
        served: answers.len(),
        failed,
        swaps: spawned.len(),
        waits,
        generation: answers.iter().map(|a| a.generation).sum::<f64>() / n,
        tokens: answers.iter().map(|a| a.tokens as f64).sum::<f64>() / n,
        elapsed,
        ready_ms: ready.iter().sum::<f64>() / ready.len().max(1) as f64,
        counters: rocm_llm::schedule::arbiter::Counters {
            evictions: c.evictions - before.evictions,
            yields: c.yields - before.yields,
            refused: c.refused - before.refused,
            waits: c.waits - before.waits,
            swaps: c.swaps - before.swaps,
            fallbacks: c.fallbacks - before.fallbacks,
            free_timeouts: c.free_timeouts - before.free_timeouts,
        },
    }
}

/// The cost of one swap here: the median wait of a one-token request for
/// the model not loaded, one at a time (stop, memory seen free, load).
fn swap_cost(dir: &Path, server: &Path) -> f64 {
    let d = Daemon::start(dir, server, "swap-cost", "0s");
    let mut waits: Vec<f64> = (0..12)
        .map(|i| {
            chat(&d.listen, ["a", "b"][i % 2], 1)
                .unwrap_or_else(|e| panic!("{e}\n{}", d.log()))
                .wait
        })
        .skip(2)
        .collect();
    waits.sort_by(f64::total_cmp);
    waits[waits.len() / 2]
}

fn main() {
    let Some(server) = llama_server() else {
        eprintln!(
            "no llama-server: set ROCM_LLM_LLAMA_SERVER, or build the pinned one with scripts/llama-server.sh"
        );
        std::process::exit(2);
    };
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, m) in ["a", "b"].iter().enumerate() {
        rocm_llm::gguf::write_tiny_llama(
            &dir.path().join(format!("{m}.gguf")),
            &rocm_llm::gguf::TinyModel::with_seed(i as u64 + 1, *m),
        )
        .expect("tiny model");
    }
    let swap = swap_cost(dir.path(), &server);
    println!(
        "anti-thrash through the daemon: {}-{} tokens per request (ignore_eos), {REQUESTS} requests per run, seed {SEED}; \
         two tiny on-demand models of 60 MiB declared in a 100 MiB RAM budget, one slot each; \
         one swap (stop, memory free, load, one token) costs {:.0} ms here (median of 10)\n",
        TOKENS.0,
        TOKENS.1,
        swap * 1000.0
    );
    println!(
        "| workload | policy (`memory.fairness`) | swaps/100 req | mean wait ms | p99 wait ms | req/min | swaps vs FIFO | p99 vs FIFO | goal (<= 0.25, <= 1.5) | yields | evictions | load ms | gen ms | tokens | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let workloads = [
        (
            format!(
                "{AGENTS} agents alternating a/b, think {}-{} ms",
                THINK_MS.0, THINK_MS.1
            ),
            Workload::Agents,
        ),
        (
            format!("open arrivals alternating a/b, mean gap {OPEN_GAP_MS} ms"),
            Workload::Open {
                mean_gap_ms: OPEN_GAP_MS,
            },
        ),
    ];
    let mut index = 0;
    for (workload_name, workload) in &workloads {
        let mut fifo: Option<Row> = None;
        for (name, fairness) in POLICIES {
            index += 1;
            let row = run(dir.path(), &server, index, *workload, fairness);
            let (swap_ratio, p99_ratio) = fifo.as_ref().map_or((1.0, 1.0), |f| {
                (row.swaps_per_100() / f.swaps_per_100(), row.p99() / f.p99())
            });
            let goal = match &fifo {
                None => "",
                Some(_) if swap_ratio <= 0.25 && p99_ratio <= 1.5 => "met",
                Some(_) => "not met",
            };
            println!(
                "| {workload_name} | {name} (`{fairness}`) | {:.1} | {:.0} | {:.0} | {:.0} | {swap_ratio:.2} | {p99_ratio:.2} | {goal} | {} | {} | {:.0} | {:.0} | {:.0} | {} |",
                row.swaps_per_100(),
                row.mean() * 1000.0,
                row.p99() * 1000.0,
                row.per_minute(),
                row.counters.yields,
                row.counters.evictions,
                row.ready_ms,
                row.generation * 1000.0,
                row.tokens,
                row.failed.len(),
            );
            for f in row.failed.iter().take(3) {
                eprintln!("  failed: {f}");
            }
            if fifo.is_none() {
                fifo = Some(row);
            }
        }
    }
    println!(
        "\nwait: request sent to its first streamed token; swaps: llama-servers spawned while the workload ran (the status API's launches)"
    );
}
