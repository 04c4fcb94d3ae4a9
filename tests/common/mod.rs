//! Helpers shared by the integration tests: the one skip policy, the one
//! `eventually`, and the daemon harness ([`daemon`] runs the binary,
//! [`in_process`] the library's `serve` for tests that need its options).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod daemon;
pub mod in_process;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rocm_llm::spec::Desired;
use rocm_llm::spec::validate::{self, Context, FileProbe};

/// Bounds every wait in the daemon tests: far beyond what a tiny model
/// needs, short enough that a hang fails the test instead of the suite.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(20);

/// Whether this is CI, where every prerequisite is provided and a skip is
/// a failure.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The running test's name (the test harness names each test's thread).
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned()
}

/// The one skip policy: prints `SKIPPED: test: why`, and fails under CI,
/// where scripts/test.sh provides what every test needs. The caller
/// returns after it.
pub fn skip(why: &str) {
    let test = test_name();
    assert!(
        !in_ci(),
        "{test}: {why}; a skip is a failure in CI (scripts/test.sh provides what this test needs)"
    );
    eprintln!("SKIPPED: {test}: {why}");
}

/// The path the environment variable `name` holds, or `None` after
/// [`skip`]; `what` says what it is and how to get one.
pub fn needs_env(name: &str, what: &str) -> Option<PathBuf> {
    match std::env::var_os(name) {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            skip(&format!("needs {name}=<{what}>"));
            None
        }
    }
}

/// The pinned llama-server (scripts/test.sh builds it and sets the
/// variable), or `None` after [`skip`].
pub fn llama_server() -> Option<PathBuf> {
    needs_env(
        "ROCM_LLM_LLAMA_SERVER",
        "the path of llama-server; ROCM_LLM_LLAMA_SERVER=$(scripts/llama-server.sh --check)",
    )
}

/// The llama-server of `backend` (`rocm`, `vulkan`): the path in
/// `ROCM_LLM_LLAMA_SERVER_<BACKEND>`, else the one scripts/llama-server.sh
/// has cached, else `None` (the caller skips).
pub fn backend_server(backend: &str) -> Option<PathBuf> {
    let var = format!("ROCM_LLM_LLAMA_SERVER_{}", backend.to_uppercase());
    if let Some(p) = std::env::var_os(&var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{var}={} is not a file", p.display());
        return Some(p);
    }
    let out = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/llama-server.sh"))
        .args(["--backend", backend, "--check"])
        .output()
        .expect("run scripts/llama-server.sh --check");
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The fake llama-server, for faults a real one cannot be made to show.
pub fn fake_llama_server() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-llama-server.sh")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Tiny models `name.gguf` in `dir`, seeded by position, as the daemon
/// harnesses' specs name them.
pub fn write_tiny_models(dir: &Path, names: &[&str]) {
    for (i, name) in names.iter().enumerate() {
        rocm_llm::gguf::write_tiny_llama(
            &dir.join(format!("{name}.gguf")),
            &rocm_llm::gguf::TinyModel::with_seed(i as u64 + 1, *name),
        )
        .expect("tiny model");
    }
}

/// What one look of [`eventually`] found: done with a value, or not yet
/// (with what it saw, for the message on timeout).
pub trait Attempt<T> {
    fn into_result(self) -> Result<T, String>;
}

impl<T> Attempt<T> for Result<T, String> {
    fn into_result(self) -> Result<T, String> {
        self
    }
}

impl<T> Attempt<T> for Option<T> {
    fn into_result(self) -> Result<T, String> {
        self.ok_or_else(|| "(not yet)".to_owned())
    }
}

impl Attempt<()> for bool {
    fn into_result(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("(not yet)".to_owned())
        }
    }
}

/// The one wait of the tests: looks with `f` until it is done, for at most
/// `deadline`, then panics naming `what` and the last thing it saw.
pub fn eventually<T, A: Attempt<T>>(deadline: Duration, what: &str, mut f: impl FnMut() -> A) -> T {
    let until = Instant::now() + deadline;
    loop {
        match f().into_result() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= until => {
                panic!("timed out after {deadline:?} waiting until {what}; last:\n{last}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// [`eventually`] for a look that must `.await` (an in-process daemon runs
/// on the test's own runtime, so a blocking poll would stall it).
pub async fn eventually_async<T, A: Attempt<T>, F>(
    deadline: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T
where
    F: std::future::Future<Output = A>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        match f().await.into_result() {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() >= until => {
                panic!("timed out after {deadline:?} waiting until {what}; last:\n{last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Every model file exists: for tests of planning, where files don't matter.
pub struct AnyFile;

impl FileProbe for AnyFile {
    fn check_gguf(&self, _: &Path) -> Result<(), String> {
        Ok(())
    }
    fn check_readable(&self, _: &Path) -> Result<(), String> {
        Ok(())
    }
}

pub fn desired(yaml: &str) -> Desired {
    let ctx = Context {
        spec_path: Path::new("/specs/models.yaml"),
        default_llama_server: PathBuf::from("/bin/llama-server"),
        probe: &AnyFile,
    };
    match validate::load(yaml, &ctx) {
        Ok(d) => d,
        Err(e) => panic!("spec should be valid:\n{e}\n---\n{yaml}"),
    }
}
