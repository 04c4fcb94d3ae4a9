//! Spawning one llama-server child, capturing its output, observing its exit
//! and stopping it.
//!
//! Ownership: [`spawn`] moves the [`tokio::process::Child`] into a *reaper*
//! task, the only code that ever waits on it. The reaper publishes the exit
//! status on a `watch` channel, so any number of observers ([`RunningProcess`]
//! is `Clone`) can [`wait`](RunningProcess::wait) for the exit concurrently
//! and cancellation-safely, while any of them can [`stop`](RunningProcess::stop)
//! it. Signals are sent *by the reaper* while the child is known not to have
//! been reaped yet, so a signal can never hit a recycled pid.
//!
//! Each child runs in its own process group (`setpgid(0, 0)`), and signals go
//! to the whole group: whatever llama-server starts dies with it. When the
//! group leader has exited, any stragglers left in its group are SIGKILLed,
//! so a group never outlives its leader.
//!
//! If the daemon dies (even by SIGKILL), the kernel sends each child SIGTERM
//! (`PR_SET_PDEATHSIG`); see [`spawn`] for the thread pitfall this implies.

use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustix::io::Errno;
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::logs::{LogSink, LogStream};
use crate::plan::launch::Launch;

/// How long [`RunningProcess::stop`] waits for the group to die after SIGKILL
/// before giving up with [`StopOutcome::Unreaped`]. (A SIGKILLed process that
/// is stuck in the GPU driver can take a long time to actually exit.)
pub const KILL_WAIT: Duration = Duration::from_secs(10);

/// After the child exits, how long the reaper waits for its stdout/stderr
/// readers to drain before publishing the exit (so the last lines, usually
/// the reason it died, are in the [`LogSink`] when the exit is observed).
const READER_DRAIN: Duration = Duration::from_millis(500);

/// What went wrong starting a child.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("could not start {}: {}", program.display(), explain_spawn(program, source))]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the child of {program} has no usable pid ({pid:?})", program = program.display())]
    NoPid { program: PathBuf, pid: Option<u32> },
    #[error("could not read /proc/{pid}/stat of the new child: {source}")]
    ProcStat {
        pid: i32,
        #[source]
        source: io::Error,
    },
}

/// What a failed exec means for the user: where the program was looked for.
fn explain_spawn(program: &std::path::Path, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound if crate::spec::validate::is_bare_name(program) => format!(
            "it is not on PATH ({}); set `llama_server` in the spec or $ROCM_LLM_LLAMA_SERVER to its path",
            std::env::var("PATH").unwrap_or_default()
        ),
        io::ErrorKind::NotFound => "the file does not exist".into(),
        io::ErrorKind::PermissionDenied => {
            "permission denied: it is not executable by this user".into()
        }
        _ => e.to_string(),
    }
}

/// How [`RunningProcess::stop`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// It had already exited before the stop was asked for.
    AlreadyExited(ExitStatus),
    /// It exited within the grace period after SIGTERM.
    Graceful(ExitStatus),
    /// The grace period ran out; SIGKILL was sent to the group and it died.
    Killed(ExitStatus),
    /// Even after SIGKILL it did not exit within [`KILL_WAIT`] (e.g. stuck in
    /// the kernel/GPU driver). The reaper keeps waiting and publishes the exit
    /// when it finally happens; [`RunningProcess::wait`] still works.
    Unreaped,
}

impl StopOutcome {
    /// The exit status, unless it was [`StopOutcome::Unreaped`].
    pub fn status(&self) -> Option<ExitStatus> {
        match *self {
            StopOutcome::AlreadyExited(s) | StopOutcome::Graceful(s) | StopOutcome::Killed(s) => {
                Some(s)
            }
            StopOutcome::Unreaped => None,
        }
    }

    /// Whether SIGKILL was needed.
    pub fn was_killed(&self) -> bool {
        matches!(self, StopOutcome::Killed(_) | StopOutcome::Unreaped)
    }
}

/// The environment variable naming the model of each child the daemon
/// starts; only processes that carry it are reaped as leftovers.
pub const MODEL_MARK: &str = "ROCM_LLM_MODEL";

/// A handle on a spawned llama-server. Cheap to clone; every clone observes
/// the same exit and may stop the process. Dropping all handles does **not**
/// kill the child (the reaper task keeps running until it exits); stop it
/// explicitly.
#[derive(Clone, Debug)]
pub struct RunningProcess {
    pid: i32,
    start_time: u64,
    port: u16,
    started_at: Instant,
    logs: LogSink,
    exit: watch::Receiver<Option<ExitStatus>>,
    signals: mpsc::UnboundedSender<Signal>,
    upstream_key: Arc<str>,
}

/// Starts `launch` listening on `127.0.0.1:<port>`.
///
/// The argv is `launch.args` followed by `--host 127.0.0.1 --port <port>`;
/// no shell is involved. The environment is the daemon's, minus
/// `NOTIFY_SOCKET` (only the daemon talks to systemd), plus `launch.env`.
/// stdin is `/dev/null`; stdout and stderr are read line by line into
/// `tracing` events (target `llama_server`, fields `model`, `pid`, `stream`)
/// and into `logs`. The child gets its own process group, and
/// `PR_SET_PDEATHSIG(SIGTERM)` so it is told to quit if the daemon dies.
///
/// **Call this from async code running on a tokio runtime thread, never from
/// `spawn_blocking`.** Linux delivers the parent-death signal when the
/// *thread* that forked the child exits, not the process: tokio's blocking
/// pool threads exit after being idle for a while (10 s by default), which
/// would SIGTERM a perfectly healthy llama-server. Runtime worker threads
/// (and the `current_thread` runtime's thread) live as long as the runtime.
/// For the same reason do not call it from inside `block_in_place`.
///
/// Panics if called outside a tokio runtime (as `tokio::spawn` does).
pub fn spawn(launch: &Launch, port: u16, logs: LogSink) -> Result<RunningProcess, SpawnError> {
    let program = launch.program.clone();
    let upstream_key = random_key();
    let mut cmd = tokio::process::Command::new(&launch.program);
    if !launch.working_dir.as_os_str().is_empty() {
        cmd.current_dir(&launch.working_dir);
    }
    cmd.args(&launch.args)
        .arg("--host")
        .arg("127.0.0.1")
        .arg("--port")
        .arg(port.to_string())
        .env_remove("NOTIFY_SOCKET")
        .envs(&launch.env)
        // A key only the daemon knows, so that nobody reaches the model
        // past the proxy (and its API key and browser rules) by connecting
        // to the child's loopback port. In the environment, not argv: other
        // users can read /proc/<pid>/cmdline but not /proc/<pid>/environ.
        .env("LLAMA_API_KEY", &*upstream_key)
        // Marks the child as ours, for leftover reaping after a crash.
        .env(MODEL_MARK, logs.model())
        // The daemon's own secrets are not the child's business.
        .env_remove("ROCM_LLM_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let parent = rustix::process::getpid();
    #[allow(unsafe_code)]
    // SAFETY: `pre_exec` runs in the forked child before exec, where only
    // async-signal-safe operations are allowed. `child_setup` makes two raw
    // syscalls (prctl, getppid), compares integers and builds an io::Error
    // from an errno, which does not allocate; it touches no locks and no
    // memory shared with other threads.
    unsafe {
        cmd.pre_exec(move || child_setup(parent));
    }
    let mut child = cmd.spawn().map_err(|source| SpawnError::Spawn {
        program: program.clone(),
        source,
    })?;

    let raw = child.id();
    let Some(pid) = raw.and_then(|p| i32::try_from(p).ok()).and_then(to_pid) else {
        // Cannot happen for a freshly spawned child; tokio reaps a dropped
        // child in the background.
        let _ = child.start_kill();
        return Err(SpawnError::NoPid { program, pid: raw });
    };
    let pid_raw = pid.as_raw_nonzero().get();
    let start_time = match read_proc_stat(pid_raw) {
        Ok(stat) => stat.start_time,
        Err(source) => {
            // The child is not reaped yet, so the group id cannot be recycled.
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
            return Err(SpawnError::ProcStat {
                pid: pid_raw,
                source,
            });
        }
    };

    logs.begin_run();
    logs.push(
        LogStream::Daemon,
        &format!(
            "started pid {pid_raw} on port {port}: {}",
            launch.shell_line()
        ),
    );
    tracing::info!(model = %logs.model(), pid = pid_raw, port, "started llama-server");

    let mut readers = Vec::with_capacity(2);
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(pump(
            out,
            LogStream::Stdout,
            logs.clone(),
            pid_raw,
        )));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(pump(
            err,
            LogStream::Stderr,
            logs.clone(),
            pid_raw,
        )));
    }

    let (exit_tx, exit_rx) = watch::channel(None);
    let (sig_tx, sig_rx) = mpsc::unbounded_channel();
    tokio::spawn(reap(child, pid, sig_rx, exit_tx, readers, logs.clone()));

    Ok(RunningProcess {
        pid: pid_raw,
        start_time,
        port,
        started_at: Instant::now(),
        logs,
        exit: exit_rx,
        signals: sig_tx,
        upstream_key,
    })
}

/// 256 random bits as hex: the bearer key one child accepts.
fn random_key() -> Arc<str> {
    let bytes: [u8; 32] = rand::random();
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into()
}

/// Runs in the forked child (see the SAFETY note in [`spawn`]).
fn child_setup(parent: Pid) -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(Signal::TERM))?;
    // If the parent died between fork and prctl, the signal will never come:
    // refuse to exec rather than linger as an orphan (spawn then fails).
    if rustix::process::getppid() != Some(parent) {
        return Err(io::Error::from_raw_os_error(Errno::SRCH.raw_os_error()));
    }
    Ok(())
}

/// The reaper: the only owner of `child`. Sends requested signals to the
/// group while the child is unreaped, then publishes the exit status.
async fn reap(
    mut child: tokio::process::Child,
    pid: Pid,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    exit_tx: watch::Sender<Option<ExitStatus>>,
    readers: Vec<JoinHandle<()>>,
    logs: LogSink,
) {
    let pid_raw = pid.as_raw_nonzero().get();
    let waited = {
        let mut wait = std::pin::pin!(child.wait());
        let mut signals_open = true;
        loop {
            tokio::select! {
                biased;
                r = &mut wait => break r,
                // `wait` was just polled and is pending, so the child is not
                // reaped: its pid (and group id) cannot have been recycled.
                sig = signals.recv(), if signals_open => match sig {
                    Some(sig) => signal_group(pid, sig, &logs),
                    None => signals_open = false,
                },
            }
        }
    };
    let status = match waited {
        Ok(status) => status,
        Err(e) => {
            tracing::error!(model = %logs.model(), pid = pid_raw, error = %e,
                "waiting for llama-server failed; reporting exit code 255");
            unknown_status()
        }
    };

    // Stragglers in the group (llama-server itself starts none) must not
    // outlive it. The group id stays reserved while any member lives.
    match rustix::process::kill_process_group(pid, Signal::KILL) {
        Ok(()) => tracing::warn!(model = %logs.model(), pgid = pid_raw,
            "killed processes left in the exited llama-server's process group"),
        Err(Errno::SRCH) => {}
        Err(e) => tracing::warn!(model = %logs.model(), pgid = pid_raw, error = %e,
            "could not kill leftovers in the process group"),
    }

    let deadline = Instant::now() + READER_DRAIN;
    for mut reader in readers {
        if tokio::time::timeout_at(deadline, &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
    }

    logs.push(
        LogStream::Daemon,
        &format!("pid {pid_raw} exited: {status}"),
    );
    tracing::info!(model = %logs.model(), pid = pid_raw, %status, "llama-server exited");
    exit_tx.send_replace(Some(status));
}

fn signal_group(pgid: Pid, sig: Signal, logs: &LogSink) {
    let pgid_raw = pgid.as_raw_nonzero().get();
    tracing::debug!(model = %logs.model(), pgid = pgid_raw, signal = ?sig, "signalling process group");
    if let Err(e) = rustix::process::kill_process_group(pgid, sig)
        && e != Errno::SRCH
    {
        tracing::warn!(model = %logs.model(), pgid = pgid_raw, signal = ?sig, error = %e,
            "could not signal the process group");
    }
}

/// Exit code 255: stands in for a status that could not be observed.
fn unknown_status() -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    ExitStatus::from_raw(255 << 8)
}

/// Copies one output stream into `logs` and `tracing`, line by line.
async fn pump<R: AsyncRead + Unpin>(reader: R, stream: LogStream, logs: LogSink, pid: i32) {
    let mut reader = BufReader::with_capacity(8 * 1024, reader);
    // One byte over the cap, so the sink sees the line is too long and
    // marks it truncated.
    let cap = logs.max_line_bytes().saturating_add(1);
    let mut buf = Vec::with_capacity(256);
    loop {
        match read_capped_line(&mut reader, &mut buf, cap).await {
            Ok(true) => {
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
                let text = String::from_utf8_lossy(&buf);
                tracing::info!(target: "llama_server", model = %logs.model(), pid,
                    stream = stream.as_str(), "{text}");
                logs.push(stream, &text);
            }
            Ok(false) => break,
            Err(e) => {
                tracing::warn!(model = %logs.model(), pid, stream = stream.as_str(), error = %e,
                    "reading llama-server output failed");
                break;
            }
        }
    }
}

/// Reads one line (without its `\n`) into `buf`, keeping at most `cap` bytes
/// of it and discarding the rest of the line. `Ok(false)` at end of input.
async fn read_capped_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    cap: usize,
) -> io::Result<bool> {
    buf.clear();
    let mut any = false;
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(any);
        }
        any = true;
        let (chunk, used, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        let room = cap.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        r.consume(used);
        if done {
            return Ok(true);
        }
    }
}

impl RunningProcess {
    /// The key the child requires (`LLAMA_API_KEY`) on all but `/health`.
    pub fn upstream_key(&self) -> &Arc<str> {
        &self.upstream_key
    }

    /// The child's pid (also its process group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its start time from `/proc/<pid>/stat` (field 22, clock ticks since
    /// boot): with the pid, identifies this process across daemon restarts.
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// The port it was told to listen on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The model's log buffer this process writes into.
    pub fn logs(&self) -> &LogSink {
        &self.logs
    }

    /// The exit status if it has exited (and been reaped), without waiting.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits for the exit. Cancellation-safe and callable from any number of
    /// clones at once; returns at once if it already exited.
    pub async fn wait(&self) -> ExitStatus {
        let mut rx = self.exit.clone();
        let status = match rx.wait_for(Option::is_some).await {
            Ok(status) => *status,
            Err(_) => None, // the reaper is gone: only at runtime shutdown
        };
        status.unwrap_or_else(unknown_status)
    }

    /// A receiver of the exit status (`None` while running), for `select!`
    /// loops that prefer `changed()`.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exit.clone()
    }

    /// Sends `sig` to the process group, unless it has already exited.
    /// Returns whether the request was handed to the reaper.
    pub fn signal(&self, sig: Signal) -> bool {
        self.exit_status().is_none() && self.signals.send(sig).is_ok()
    }

    /// Stops the process group: SIGTERM, up to `grace` for it to exit, then
    /// SIGKILL and up to [`KILL_WAIT`] more. Never waits longer than
    /// `grace + KILL_WAIT`. Safe to call concurrently and repeatedly.
    pub async fn stop(&self, grace: Duration) -> StopOutcome {
        if let Some(status) = self.exit_status() {
            return StopOutcome::AlreadyExited(status);
        }
        tracing::info!(model = %self.logs.model(), pid = self.pid, ?grace, "stopping llama-server");
        self.signal(Signal::TERM);
        // A stopped (SIGSTOP, or hung in a debugger) process acts on SIGTERM
        // only once it runs again; to a running one SIGCONT is harmless.
        self.signal(Signal::CONT);
        if let Ok(status) = tokio::time::timeout(grace, self.wait()).await {
            return StopOutcome::Graceful(status);
        }
        tracing::warn!(model = %self.logs.model(), pid = self.pid, ?grace,
            "llama-server did not exit within its stop grace; sending SIGKILL");
        self.logs.push(
            LogStream::Daemon,
            &format!(
                "pid {} did not exit within {grace:?} of SIGTERM; SIGKILL",
                self.pid
            ),
        );
        self.signal(Signal::KILL);
        match tokio::time::timeout(KILL_WAIT, self.wait()).await {
            Ok(status) => StopOutcome::Killed(status),
            Err(_) => {
                tracing::error!(model = %self.logs.model(), pid = self.pid,
                    "llama-server still has not exited {KILL_WAIT:?} after SIGKILL");
                StopOutcome::Unreaped
            }
        }
    }

    /// [`super::readiness::wait_ready`] on this process's port, ending early
    /// if it exits; an exit error carries the last 20 log lines. The
    /// returned duration is measured from the spawn.
    pub async fn wait_ready(
        &self,
        timeout: Duration,
    ) -> Result<Duration, super::readiness::ReadyError> {
        match super::readiness::wait_ready(self.port, timeout, self.wait()).await {
            Ok(_) => Ok(self.started_at.elapsed()),
            Err(super::readiness::ReadyError::ExitedBeforeReady { status, .. }) => {
                Err(super::readiness::ReadyError::ExitedBeforeReady {
                    status,
                    last_lines: self.logs.tail_text(20),
                })
            }
            Err(e) => Err(e),
        }
    }
}

/// A positive pid as a rustix [`Pid`]; `None` for 0 and negatives.
pub(crate) fn to_pid(raw: i32) -> Option<Pid> {
    if raw > 0 { Pid::from_raw(raw) } else { None }
}

/// The fields of `/proc/<pid>/stat` the supervisor needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), ...
    pub state: char,
    /// Field 5: the process group id.
    pub pgrp: i32,
    /// Field 22: start time in clock ticks since boot.
    pub start_time: u64,
    /// Fields 14 + 15: CPU time used so far (user + system), in clock ticks.
    pub cpu_ticks: u64,
}

/// Reads `/proc/<pid>/stat`. `ErrorKind::NotFound` when no such process.
pub fn read_proc_stat(pid: i32) -> io::Result<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_proc_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat: {text:?}"),
        )
    })
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so fields are
/// counted from the *last* `)`.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3.
    let state = fields.first()?.chars().next()?;
    let pgrp = fields.get(5 - 3)?.parse().ok()?;
    let start_time = fields.get(22 - 3)?.parse().ok()?;
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(ProcStat {
        state,
        pgrp,
        start_time,
        cpu_ticks: utime + stime,
    })
}

/// The start time (clock ticks since boot) of a live process.
pub fn process_start_time(pid: i32) -> io::Result<u64> {
    read_proc_stat(pid).map(|s| s.start_time)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_odd_command_names() {
        let line = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        let s = parse_proc_stat(line).unwrap();
        assert_eq!(
            s,
            ProcStat {
                state: 'S',
                pgrp: 1234,
                start_time: 987654,
                cpu_ticks: 1 + 2,
            }
        );
        assert!(parse_proc_stat("garbage").is_none());
        assert!(parse_proc_stat("1 (x) S 1").is_none());
    }

    #[test]
    fn reads_own_proc_stat() {
        let me = i32::try_from(std::process::id()).unwrap();
        let s = read_proc_stat(me).unwrap();
        assert!(s.start_time > 0);
        assert_eq!(process_start_time(me).unwrap(), s.start_time);
        assert_eq!(
            read_proc_stat(i32::MAX).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn to_pid_refuses_non_positive() {
        assert!(to_pid(0).is_none());
        assert!(to_pid(-5).is_none());
        assert_eq!(to_pid(7).map(|p| p.as_raw_nonzero().get()), Some(7));
    }

    #[tokio::test]
    async fn capped_lines() {
        let input: &[u8] = b"short\r\nabcdefghij\n\nlast-without-newline";
        let mut r = BufReader::with_capacity(3, input); // tiny buffer: lines span fills
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        while read_capped_line(&mut r, &mut buf, 6).await.unwrap() {
            lines.push(String::from_utf8_lossy(&buf).into_owned());
        }
        assert_eq!(lines, ["short\r", "abcdef", "", "last-w"]);
    }

    #[test]
    fn stop_outcome_accessors() {
        let s = unknown_status();
        assert_eq!(s.code(), Some(255));
        assert!(StopOutcome::Killed(s).was_killed());
        assert!(!StopOutcome::Graceful(s).was_killed());
        assert_eq!(StopOutcome::Unreaped.status(), None);
    }
}
