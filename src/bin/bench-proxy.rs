//! `bench-proxy`: what rocm-llm's proxy costs, measured side by side in one
//! run against the same llama-server binary and the same tiny model:
//!
//! - `direct`: llama-server itself;
//! - `router`: llama-server's own router mode (`--models-preset`), which
//!   proxies to a child llama-server like rocm-llm does;
//! - `rocm-llm`: `rocm-llm serve` in front of its child llama-server.
//!
//! For each workload and concurrency it reports latency and time to first
//! byte (p50, p99), throughput, and the ratios against `direct`. Targets are
//! measured one after the other in interleaved rounds, so drift on the
//! machine hits all three alike.
//!
//!     cargo run --release --features bench-tools --bin bench-proxy -- --llama-server "$(scripts/llama-server.sh)"
//!
//! See docs/proxy.md for the figures.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rocm_llm::gguf::{TinyModel, write_tiny_llama};
use tokio::process::{Child, Command};
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(
    about = "Benchmark rocm-llm's proxy against direct llama-server and llama-server's router mode"
)]
struct Args {
    /// The llama-server binary (all three targets use it).
    #[arg(long, env = "ROCM_LLM_LLAMA_SERVER")]
    llama_server: PathBuf,
    /// The rocm-llm binary; default: the one beside this benchmark.
    #[arg(long)]
    rocm_llm: Option<PathBuf>,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 16, 64])]
    concurrency: Vec<usize>,
    /// Workloads: `chat` (streamed chat completion of --max-tokens tokens)
    /// and `tokenize` (a request that does almost no work upstream, so the
    /// proxy's own cost shows).
    #[arg(long, value_delimiter = ',', default_values_t = vec!["tokenize".to_owned(), "chat".to_owned()])]
    workload: Vec<String>,
    /// Measured requests per target, workload and concurrency, per round.
    #[arg(long, default_value_t = 400)]
    requests: usize,
    /// Interleaved rounds (direct, router, rocm-llm, direct, ...).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 8)]
    max_tokens: u32,
    /// llama-server's --threads.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// llama-server's --parallel (slots).
    #[arg(long, default_value_t = 16)]
    parallel: u32,
    /// llama-server's --threads-http, for every target: its HTTP layer holds
    /// one thread per kept-alive connection, and with fewer threads than
    /// connections requests stall for its 5 s keep-alive timeout.
    #[arg(long, default_value_t = 128)]
    threads_http: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Direct,
    Router,
    RocmLlm,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Router => "router",
            Target::RocmLlm => "rocm-llm",
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.start_kill();
        }
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    cmd.spawn().with_context(|| format!("spawn {cmd:?}"))
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(4))
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(1024)
        .build(c)
}

/// One request: (time to first body byte, total), or an error.
async fn once(
    client: &HttpClient,
    url: &str,
    body: &Bytes,
    close: bool,
) -> anyhow::Result<(Duration, Duration)> {
    let start = Instant::now();
    let mut req = Request::post(url).header("content-type", "application/json");
    if close {
        req = req.header("connection", "close");
    }
    let req = req.body(Full::new(body.clone()))?;
    let resp = client.request(req).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut ttfb = None;
    let mut text = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(d) = frame.data_ref() {
            ttfb.get_or_insert_with(|| start.elapsed());
            text.extend_from_slice(d);
        }
    }
    let total = start.elapsed();
    if !status.is_success() {
        bail!("{status}: {}", String::from_utf8_lossy(&text));
    }
    Ok((ttfb.unwrap_or(total), total))
}

async fn wait_until(
    what: &str,
    client: &HttpClient,
    url: &str,
    body: &Bytes,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match once(client, url, body, false).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => bail!("{what} never answered: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[derive(Default)]
struct Samples {
    ttfb: Vec<Duration>,
    total: Vec<Duration>,
    wall: Duration,
    errors: usize,
    first_error: Option<String>,
}

async fn run_level(
    client: &HttpClient,
    url: &str,
    body: &Bytes,
    close: bool,
    concurrency: usize,
    requests: usize,
    into: &mut Samples,
) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, body, next) = (
            client.clone(),
            url.to_owned(),
            body.clone(),
            Arc::clone(&next),
        );
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                mine.push(
                    once(&client, &url, &body, close)
                        .await
                        .map_err(|e| format!("{e:#}")),
                );
            }
            mine
        }));
    }
    for t in tasks {
        if let Ok(results) = t.await {
            for r in results {
                match r {
                    Ok((ttfb, total)) => {
                        into.ttfb.push(ttfb);
                        into.total.push(total);
                    }
                    Err(e) => {
                        into.errors += 1;
                        into.first_error.get_or_insert(e);
                    }
                }
            }
        }
    }
    into.wall += start.elapsed();
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Summary {
    p50: Duration,
    p99: Duration,
    ttfb50: Duration,
    ttfb99: Duration,
    rps: f64,
    errors: usize,
}

fn summarize(s: &mut Samples) -> Summary {
    s.total.sort();
    s.ttfb.sort();
    Summary {
        p50: pct(&s.total, 0.5),
        p99: pct(&s.total, 0.99),
        ttfb50: pct(&s.ttfb, 0.5),
        ttfb99: pct(&s.ttfb, 0.99),
        rps: s.total.len() as f64 / s.wall.as_secs_f64().max(1e-9),
        errors: s.errors,
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn signed_us(a: Duration, b: Duration) -> String {
    format!("{:+.0} µs", us(a) - us(b))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rocm_llm = match &args.rocm_llm {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("rocm-llm"),
    };
    if !rocm_llm.exists() {
        bail!(
            "{} does not exist: build it (cargo build --release) or pass --rocm-llm",
            rocm_llm.display()
        );
    }
    let dir = TempDir(std::env::temp_dir().join(format!("bench-proxy-{}", std::process::id())));
    std::fs::create_dir_all(dir.path())?;
    let model = dir.path().join("tiny.gguf");
    write_tiny_llama(&model, &TinyModel::with_seed(1, "tiny"))?;
    let ctx = (args.parallel * 256).max(256);
    let common = [
        "--threads".to_owned(),
        args.threads.to_string(),
        "--ctx-size".into(),
        ctx.to_string(),
        "--parallel".into(),
        args.parallel.to_string(),
        "--threads-http".into(),
        args.threads_http.to_string(),
    ];

    let (p_direct, p_router, p_rocm, p_control) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let mut procs = Procs(Vec::new());

    let mut direct = Command::new(&args.llama_server);
    direct.args(["--model"]).arg(&model).args(&common).args([
        "--host",
        "127.0.0.1",
        "--port",
        &p_direct.to_string(),
    ]);
    procs
        .0
        .push(spawn(&mut direct, &dir.path().join("direct.log"))?);

    let preset = dir.path().join("models.ini");
    std::fs::write(
        &preset,
        format!(
            "version = 1\n\n[tiny]\nmodel = {}\nthreads = {}\nctx-size = {ctx}\nparallel = {}\nthreads-http = {}\nload-on-startup = true\n",
            model.display(),
            args.threads,
            args.parallel,
            args.threads_http
        ),
    )?;
    let mut router = Command::new(&args.llama_server);
    router
        .arg("--models-preset")
        .arg(&preset)
        .args(["--threads-http", &args.threads_http.to_string()])
        .args(["--host", "127.0.0.1", "--port", &p_router.to_string()]);
    procs
        .0
        .push(spawn(&mut router, &dir.path().join("router.log"))?);

    let spec = dir.path().join("models.yaml");
    std::fs::write(
        &spec,
        format!(
            "listen: 127.0.0.1:{p_rocm}\ncontrol: 127.0.0.1:{p_control}\nllama_server: {}\nmodels:\n  tiny:\n    model: {}\n    threads: {}\n    ctx_size: {ctx}\n    parallel: {}\n    extra_args: [--threads-http, \"{}\"]\n",
            args.llama_server.display(),
            model.display(),
            args.threads,
            args.parallel,
            args.threads_http
        ),
    )?;
    let mut rocm = Command::new(&rocm_llm);
    rocm.arg("serve")
        .arg("--spec")
        .arg(&spec)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("RUST_LOG", "warn");
    procs
        .0
        .push(spawn(&mut rocm, &dir.path().join("rocm-llm.log"))?);

    let client = client();
    let targets = [
        (Target::Direct, format!("http://127.0.0.1:{p_direct}")),
        (Target::Router, format!("http://127.0.0.1:{p_router}")),
        (Target::RocmLlm, format!("http://127.0.0.1:{p_rocm}")),
    ];
    let body_for = |workload: &str| -> Bytes {
        let v = match workload {
            "tokenize" => {
                serde_json::json!({"model": "tiny", "content": "hello world, how are you today?"})
            }
            _ => serde_json::json!({
                "model": "tiny",
                "messages": [{"role": "user", "content": "hello"}],
                "max_tokens": args.max_tokens,
                "stream": true,
            }),
        };
        Bytes::from(v.to_string())
    };
    let path_for = |workload: &str| {
        if workload == "tokenize" {
            "/tokenize"
        } else {
            "/v1/chat/completions"
        }
    };
    for (t, base) in &targets {
        wait_until(
            t.name(),
            &client,
            &format!("{base}/tokenize"),
            &body_for("tokenize"),
        )
        .await?;
    }

    println!(
        "bench-proxy: tiny model, llama-server {} (--threads {} --parallel {} --threads-http {}), {} requests x {} rounds per cell; {} CPUs",
        args.llama_server.display(),
        args.threads,
        args.parallel,
        args.threads_http,
        args.requests,
        args.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for workload in &args.workload {
        let body = body_for(workload);
        let path = path_for(workload);
        // llama-server closes the connection after a streamed response
        // without saying so: a client reusing it fails. Every target gets
        // a new connection per stream (rocm-llm does the same upstream).
        let close = workload == "chat";
        println!(
            "\n## {workload} ({path}{})",
            if workload == "chat" {
                format!(", stream, max_tokens {}", args.max_tokens)
            } else {
                String::new()
            }
        );
        println!(
            "{:>4} {:<9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>6} | {:>11} {:>11} {:>8}",
            "conc",
            "target",
            "p50",
            "p99",
            "ttfb p50",
            "ttfb p99",
            "req/s",
            "errors",
            "+p50",
            "+p99",
            "thr"
        );
        for &c in &args.concurrency {
            let mut samples: Vec<Samples> = targets.iter().map(|_| Samples::default()).collect();
            for (_, base) in &targets {
                // Warm up the pools and the model's caches.
                let mut warm = Samples::default();
                run_level(
                    &client,
                    &format!("{base}{path}"),
                    &body,
                    close,
                    c,
                    c * 4,
                    &mut warm,
                )
                .await;
            }
            for _ in 0..args.rounds {
                for (i, (_, base)) in targets.iter().enumerate() {
                    run_level(
                        &client,
                        &format!("{base}{path}"),
                        &body,
                        close,
                        c,
                        args.requests,
                        &mut samples[i],
                    )
                    .await;
                }
            }
            let sums: Vec<Summary> = samples.iter_mut().map(summarize).collect();
            let d = &sums[0];
            for (i, (t, _)) in targets.iter().enumerate() {
                let s = &sums[i];
                let (added50, added99, thr) = if i == 0 {
                    ("-".to_owned(), "-".to_owned(), "-".to_owned())
                } else {
                    (
                        signed_us(s.p50, d.p50),
                        signed_us(s.p99, d.p99),
                        format!("{:.1}%", 100.0 * s.rps / d.rps),
                    )
                };
                println!(
                    "{c:>4} {:<9} {:>7.0} µs {:>7.0} µs {:>7.0} µs {:>7.0} µs {:>9.1} {:>6} | {added50:>11} {added99:>11} {thr:>8}",
                    t.name(),
                    us(s.p50),
                    us(s.p99),
                    us(s.ttfb50),
                    us(s.ttfb99),
                    s.rps,
                    s.errors
                );
                if let Some(e) = &samples[i].first_error {
                    println!("     first error from {}: {e}", t.name());
                }
            }
            let (r, x) = (&sums[1], &sums[2]);
            println!(
                "     rocm-llm vs router: p50 {}, throughput {:.1}%",
                signed_us(x.p50, r.p50),
                100.0 * x.rps / r.rps.max(1e-9)
            );
        }
    }
    drop(procs);
    Ok(())
}
