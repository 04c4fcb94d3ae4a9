//! `rocm-llm serve`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use rocm_llm::daemon::{self, ServeOptions, watch::WatchTiming};
use rocm_llm::supervisor::BackoffPolicy;
use tokio_util::sync::CancellationToken;

pub fn run(
    spec: PathBuf,
    state_dir: Option<PathBuf>,
    debounce: Duration,
    log: &str,
    sys_root: PathBuf,
) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_new(log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, not for journald or files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    let spec = std::path::absolute(&spec).unwrap_or(spec);
    let options = ServeOptions {
        spec_path: spec,
        state_dir: state_dir.unwrap_or_else(daemon::default_state_dir),
        default_llama_server: super::default_llama_server(),
        watch: WatchTiming {
            debounce,
            ..WatchTiming::default()
        },
        leftover_grace: Duration::from_secs(30),
        backoff: BackoffPolicy::default(),
        probe_roots: rocm_llm::memory::probe::ProbeRoots {
            sys: sys_root,
            ..Default::default()
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(super::EXIT_FAILURE);
        }
    };
    match runtime.block_on(daemon::serve(options, CancellationToken::new())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(super::EXIT_FAILURE)
        }
    }
}
