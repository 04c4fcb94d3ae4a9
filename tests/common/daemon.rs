//! The daemon harness: the real `rocm-llm serve` binary against a real
//! llama-server, in a temporary directory of its own.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rocm_llm::daemon::status::StatusReport;
use rocm_llm::supervisor::State;

pub use super::{PATIENCE, eventually, fake_llama_server, free_port};

/// A daemon in a temporary directory of its own.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub spec: PathBuf,
    pub control: String,
    pub listen: String,
    pub child: Option<Child>,
    /// The real llama-server the spec names.
    pub llama_server: PathBuf,
    env: Vec<(String, std::ffi::OsString)>,
    /// More arguments for `rocm-llm serve` (e.g. `--sys-root`).
    args: Vec<std::ffi::OsString>,
}

impl Daemon {
    /// Writes the tiny models `names` (seeded by position) and `models`
    /// (the `models:` section, indented by two) into a spec, and starts the
    /// daemon on it; `None` after [`super::skip`] without a llama-server.
    pub fn start(model_files: &[&str], models: &str) -> Option<Daemon> {
        Daemon::start_with_env(model_files, models, &[])
    }

    pub fn start_with_env(
        model_files: &[&str],
        models: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Option<Daemon> {
        Some(Daemon::start_on(
            super::llama_server()?,
            model_files,
            models,
            env,
            &[],
        ))
    }

    /// [`Daemon::start_with_env`] with the spec naming `llama_server` and
    /// `args` added to `rocm-llm serve`.
    pub fn start_on(
        llama_server: PathBuf,
        model_files: &[&str],
        models: &str,
        env: &[(&str, &std::ffi::OsStr)],
        args: &[&std::ffi::OsStr],
    ) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        super::write_tiny_models(dir.path(), model_files);
        let listen = format!("127.0.0.1:{}", free_port());
        let control = format!("127.0.0.1:{}", free_port());
        let spec = dir.path().join("models.yaml");
        let mut d = Daemon {
            dir,
            spec,
            control,
            listen,
            child: None,
            llama_server,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_os_string()))
                .collect(),
            args: args.iter().map(|a| a.to_os_string()).collect(),
        };
        d.write_spec(models);
        d.spawn();
        d
    }

    /// The full spec text for a `models:` section.
    pub fn spec_text(&self, models: &str) -> String {
        format!(
            "listen: {}\ncontrol: {}\nllama_server: {}\ndefaults:\n  threads: 1\n  ctx_size: 256\n  parallel: 1\n  stop_grace: 5s\nmodels:\n{models}",
            self.listen,
            self.control,
            self.llama_server.display()
        )
    }

    /// A llama-server that is the fake for models whose `env` sets
    /// FAKE_LLAMA_MODE and the real one otherwise (the spec names one binary
    /// for all models).
    pub fn fake_or_real_server(&self) -> PathBuf {
        let wrapper = self.dir.path().join("llama-server-or-fake");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nif [ -n \"$FAKE_LLAMA_MODE\" ]; then exec {} \"$@\"; fi\nexec {} \"$@\"\n",
                fake_llama_server().display(),
                self.llama_server.display()
            ),
        )
        .expect("write wrapper");
        let ok = Command::new("chmod")
            .arg("+x")
            .arg(&wrapper)
            .status()
            .expect("chmod")
            .success();
        assert!(ok, "chmod +x {}", wrapper.display());
        wrapper
    }

    /// [`Daemon::spec_text`] with another llama-server binary.
    pub fn spec_text_with_server(&self, models: &str, server: &Path) -> String {
        self.spec_text(models).replace(
            &format!("llama_server: {}", self.llama_server.display()),
            &format!("llama_server: {}", server.display()),
        )
    }

    pub fn write_spec(&self, models: &str) {
        write_by_rename(&self.spec, &self.spec_text(models));
    }

    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("daemon.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_rocm-llm"))
            .arg("serve")
            .arg("--spec")
            .arg(&self.spec)
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--log")
            .arg("info,llama_server=warn")
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn rocm-llm serve");
        self.child = Some(child);
        eventually(PATIENCE, "the status API answers", || {
            get(&self.control, "/healthz")
        });
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// `GET /status`, typed.
    pub fn status(&self) -> StatusReport {
        rocm_llm::daemon::client::status(&self.control, None)
            .unwrap_or_else(|e| panic!("GET /status: {e}\n{}", self.log()))
    }

    /// `GET /status` as the wire has it, for checks of the JSON itself.
    pub fn status_json(&self) -> serde_json::Value {
        let body = get(&self.control, "/status")
            .unwrap_or_else(|e| panic!("GET /status: {e}\n{}", self.log()));
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Waits until `cond` holds for the status, returning that status.
    pub fn wait_status(&self, what: &str, cond: impl Fn(&StatusReport) -> bool) -> StatusReport {
        eventually(PATIENCE, what, || {
            let s = self.status();
            if cond(&s) {
                Ok(s)
            } else {
                Err(format!("status:\n{}\nlog:\n{}", pretty(&s), self.log()))
            }
        })
    }

    pub fn wait_ready(&self, models: &[&str]) -> StatusReport {
        self.wait_status(&format!("{models:?} ready"), |s| {
            models.iter().all(|m| state(s, m) == Some(State::Ready))
        })
    }

    pub fn pid(status: &StatusReport, model: &str) -> i32 {
        pid(status, model)
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        kill(sig, i64::from(pid));
    }

    /// Sends a chat completion for `model` on a raw connection and returns
    /// the connection, so a test can read the answer or hang up.
    pub fn send_chat(&self, model: &str) -> TcpStream {
        let body = format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":2}}"#
        );
        let mut client = TcpStream::connect(&self.listen).expect("connect to the endpoint");
        write!(
            client,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("send the request");
        client
    }

    /// Waits for the daemon to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("running");
        let log = self.dir.path().join("daemon.log");
        let status = eventually(timeout, "the daemon exits", || {
            child
                .try_wait()
                .expect("try_wait")
                .ok_or_else(|| std::fs::read_to_string(&log).unwrap_or_default())
        });
        self.child = None;
        status.code()
    }

    /// Live (not zombie) processes whose command line mentions this
    /// daemon's directory: its llama-servers.
    pub fn children(&self) -> Vec<i32> {
        processes_mentioning(&self.dir.path().display().to_string())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            // Cleanup polls for the exit without `eventually`: a drop must
            // not panic (the test may be unwinding already), so it gives up
            // quietly and SIGKILLs.
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in self.children() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// `kill -SIG pid`, which must succeed.
pub fn kill(sig: &str, pid: impl Into<i64>) {
    let pid: i64 = pid.into();
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Saves the way most editors do: write a temporary file, rename it over.
pub fn write_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp~");
    std::fs::write(&tmp, text).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Saves the way some editors do: truncate in place, then write in pieces,
/// so a reader can see an empty or partial (yet valid) file.
pub fn write_by_truncate(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .expect("open");
    let (head, tail) = text.split_at(text.len() / 2);
    f.write_all(head.as_bytes()).expect("write");
    f.flush().expect("flush");
    // The behaviour under test: a reader may see the half-written file.
    std::thread::sleep(Duration::from_millis(20));
    f.write_all(tail.as_bytes()).expect("write");
}

pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    let me = std::process::id() as i32;
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains(needle) || !cmdline.contains("llama-server") {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if matches!(state, Some('Z' | 'X') | None) {
            continue; // dead; only not yet reaped
        }
        found.push(pid);
    }
    found
}

pub fn pid_alive(pid: impl Into<i64>) -> bool {
    let pid: i64 = pid.into();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    matches!(stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()), Some(c) if c != 'Z' && c != 'X')
}

/// A plain GET that must answer 200.
pub fn get(addr: &str, path: &str) -> Result<String, String> {
    rocm_llm::daemon::client::get(addr, path, None).map_err(|e| e.to_string())
}

/// A model's state in `status`; `None` while the model is not listed.
pub fn state(status: &StatusReport, model: &str) -> Option<State> {
    status.models.get(model).map(|m| m.state)
}

/// A model's pid, which it must have.
pub fn pid(status: &StatusReport, model: &str) -> i32 {
    status
        .models
        .get(model)
        .and_then(|m| m.pid)
        .unwrap_or_else(|| panic!("{model} has no pid: {}", pretty(status)))
}

/// The report as the wire has it, for messages.
pub fn pretty(status: &StatusReport) -> String {
    serde_json::to_string_pretty(status).unwrap_or_else(|e| e.to_string())
}
