//! Children of a previous daemon that outlived it.
//!
//! The daemon lists every llama-server it runs in `<state_dir>/instances.json`
//! ([`StateFile`]): model, pid, process start time, launch id and port. If the
//! daemon dies without stopping them (crash, SIGKILL, OOM kill), each child
//! gets SIGTERM from the kernel (parent-death signal), but one that is stuck
//! or ignores it would hold its GPU memory forever. So on start, before
//! spawning anything, the daemon calls [`reap_leftovers`]: every listed
//! process that still exists *with the recorded start time* (so a recycled
//! pid is never touched) gets its process group stopped, SIGTERM then
//! SIGKILL, and the file is cleared.
//!
//! The file is replaced atomically (write a temporary file, rename it over),
//! so a reader sees either the old or the new list, never a torn one. It is
//! not fsynced: its only purpose is to survive the death of the daemon, and
//! a machine crash kills the children too.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustix::io::Errno;
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::process::{read_proc_stat, to_pid};
use crate::plan::launch::LaunchId;

/// The state file's name inside the state directory.
pub const STATE_FILE_NAME: &str = "instances.json";

/// How long [`reap_leftovers`] waits after SIGKILL before giving up.
pub const LEFTOVER_KILL_WAIT: Duration = Duration::from_secs(10);

/// How often [`reap_leftovers`] looks whether the leftovers are gone.
const POLL: Duration = Duration::from_millis(50);

const FORMAT_VERSION: u32 = 1;

/// What went wrong reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum LeftoverError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a valid instance list: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// One running child, as recorded in the state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub model: String,
    pub pid: i32,
    /// `/proc/<pid>/stat` field 22 (clock ticks since boot).
    pub start_time: u64,
    pub launch_id: LaunchId,
    pub port: u16,
}

#[derive(Serialize, Deserialize)]
struct Contents {
    version: u32,
    instances: Vec<InstanceRecord>,
}

/// The daemon's list of its children, mirrored to `<state_dir>/instances.json`
/// on every change. Cheap to clone (shared); changes are serialised, each
/// rewriting the whole (small) file synchronously.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
    entries: Arc<Mutex<Vec<InstanceRecord>>>,
}

impl StateFile {
    /// A state file in `state_dir` that starts out empty: create it after
    /// [`reap_leftovers`] has dealt with the previous daemon's list. The
    /// directory is created on the first write.
    pub fn new(state_dir: &Path) -> StateFile {
        StateFile {
            path: state_dir.join(STATE_FILE_NAME),
            entries: Arc::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current list.
    pub fn entries(&self) -> Vec<InstanceRecord> {
        self.lock().clone()
    }

    /// Adds `record` (replacing any entry with the same pid) and writes the
    /// file. Call right after a successful spawn.
    pub fn record(&self, record: InstanceRecord) -> Result<(), LeftoverError> {
        let mut entries = self.lock();
        entries.retain(|e| e.pid != record.pid);
        entries.push(record);
        write_atomic(&self.path, &entries)
    }

    /// Removes the entry for `pid` (if any) and writes the file. Call once
    /// the process has exited (after `wait`/`stop` returned a status).
    pub fn remove(&self, pid: i32) -> Result<(), LeftoverError> {
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|e| e.pid != pid);
        if entries.len() == before {
            return Ok(());
        }
        write_atomic(&self.path, &entries)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<InstanceRecord>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads a state file. A missing file is an empty list.
pub fn load(path: &Path) -> Result<Vec<InstanceRecord>, LeftoverError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LeftoverError::Io {
                action: "could not read",
                path: path.to_owned(),
                source,
            });
        }
    };
    let contents: Contents =
        serde_json::from_str(&text).map_err(|source| LeftoverError::Corrupt {
            path: path.to_owned(),
            source,
        })?;
    Ok(contents.instances)
}

fn write_atomic(path: &Path, entries: &[InstanceRecord]) -> Result<(), LeftoverError> {
    let io_err = |action, source| LeftoverError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_err("could not create the directory of", e))?;
    }
    let contents = Contents {
        version: FORMAT_VERSION,
        instances: entries.to_vec(),
    };
    let mut json =
        serde_json::to_vec_pretty(&contents).map_err(|source| LeftoverError::Corrupt {
            path: path.to_owned(),
            source,
        })?;
    json.push(b'\n');
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, &json).map_err(|e| io_err("could not write a temporary file for", e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err("could not replace", e)
    })
}

/// What [`reap_leftovers`] found for one recorded process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeftoverOutcome {
    /// Nothing of it (nor of its process group) was left.
    Gone,
    /// The pid now belongs to another process (different start time): left alone.
    Recycled { start_time: u64 },
    /// The record is unusable (pid <= 1 or the daemon's own): ignored.
    Invalid,
    /// The process runs but is not one the daemon started for this model
    /// (its environment lacks the daemon's mark): left alone, so a forged
    /// or stale state file cannot make the daemon stop someone else's
    /// process.
    NotOurs,
    /// It exited within the grace period after SIGTERM.
    Stopped,
    /// It needed SIGKILL.
    Killed,
    /// It was still there after SIGKILL (stuck in the kernel?).
    Survived,
    /// Signalling it failed (e.g. EPERM).
    SignalFailed(String),
}

/// One entry of the previous daemon's state file and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    pub record: InstanceRecord,
    pub outcome: LeftoverOutcome,
}

#[derive(Clone, Copy, Debug)]
enum Target {
    /// The leader (with this start time) and/or members of its group live.
    Group { pgid: Pid, start_time: u64 },
    /// It lives but leads no group of its own: only it is signalled.
    Process { pid: Pid, start_time: u64 },
}

/// Stops whatever the previous daemon listed in `<state_dir>/instances.json`
/// and still runs, then deletes the file. All leftovers are stopped at once:
/// SIGTERM to each process group, up to `grace` for them to exit, SIGKILL to
/// the rest, up to [`LEFTOVER_KILL_WAIT`] more. A missing file means nothing
/// to do; an unreadable or corrupt one is logged and removed. Returns every
/// record with its outcome, for logging.
pub async fn reap_leftovers(state_dir: &Path, grace: Duration) -> Vec<Leftover> {
    let path = state_dir.join(STATE_FILE_NAME);
    let records = match load(&path) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring the previous daemon's instance list");
            Vec::new()
        }
    };
    let mut found: Vec<(Leftover, Option<Target>)> = records
        .into_iter()
        .map(|record| {
            let (outcome, target) = classify(&record);
            (Leftover { record, outcome }, target)
        })
        .collect();

    if found.iter().any(|(_, t)| t.is_some()) {
        signal_all(&mut found, Signal::TERM);
        if wait_gone(&found, grace).await {
            for (l, t) in found.iter_mut() {
                if t.is_some() {
                    l.outcome = LeftoverOutcome::Stopped;
                }
            }
        } else {
            for (l, t) in found.iter_mut() {
                if let Some(target) = t {
                    if alive(target) {
                        l.outcome = LeftoverOutcome::Killed;
                    } else {
                        l.outcome = LeftoverOutcome::Stopped;
                        *t = None;
                    }
                }
            }
            signal_all(&mut found, Signal::KILL);
            wait_gone(&found, LEFTOVER_KILL_WAIT).await;
            for (l, t) in found.iter_mut() {
                if let Some(target) = t
                    && alive(target)
                {
                    l.outcome = LeftoverOutcome::Survived;
                }
            }
        }
    }

    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not remove the old instance list")
        }
    }

    let leftovers: Vec<Leftover> = found.into_iter().map(|(l, _)| l).collect();
    for l in &leftovers {
        let r = &l.record;
        match &l.outcome {
            LeftoverOutcome::Gone | LeftoverOutcome::Recycled { .. } | LeftoverOutcome::Invalid => {
                tracing::debug!(model = %r.model, pid = r.pid, outcome = ?l.outcome, "previous instance")
            }
            LeftoverOutcome::Stopped | LeftoverOutcome::Killed => {
                tracing::warn!(model = %r.model, pid = r.pid, outcome = ?l.outcome,
                    "stopped a llama-server left over from a previous daemon")
            }
            LeftoverOutcome::NotOurs => {
                tracing::warn!(model = %r.model, pid = r.pid,
                    "the state file names a process this daemon did not start (no {} mark); left alone",
                    super::process::MODEL_MARK)
            }
            LeftoverOutcome::Survived | LeftoverOutcome::SignalFailed(_) => {
                tracing::error!(model = %r.model, pid = r.pid, outcome = ?l.outcome,
                    "could not stop a llama-server left over from a previous daemon")
            }
        }
    }
    leftovers
}

fn classify(r: &InstanceRecord) -> (LeftoverOutcome, Option<Target>) {
    let own = i32::try_from(std::process::id()).unwrap_or(0);
    let Some(pid) = to_pid(r.pid).filter(|_| r.pid > 1 && r.pid != own) else {
        return (LeftoverOutcome::Invalid, None);
    };
    match read_proc_stat(r.pid) {
        Ok(stat) if stat.start_time != r.start_time => (
            LeftoverOutcome::Recycled {
                start_time: stat.start_time,
            },
            None,
        ),
        Ok(stat) if stat.state != 'Z' && !carries_mark(r.pid, &r.model) => {
            (LeftoverOutcome::NotOurs, None)
        }
        Ok(stat) if stat.pgrp != r.pid => {
            if stat.state == 'Z' {
                (LeftoverOutcome::Gone, None)
            } else {
                (
                    LeftoverOutcome::Gone,
                    Some(Target::Process {
                        pid,
                        start_time: r.start_time,
                    }),
                )
            }
        }
        // The leader lives (or is a zombie whose group may live on), or it
        // is gone but its group id is not reusable while members remain.
        _ => {
            let target = Target::Group {
                pgid: pid,
                start_time: r.start_time,
            };
            if alive(&target) {
                (LeftoverOutcome::Gone, Some(target))
            } else {
                (LeftoverOutcome::Gone, None)
            }
        }
    }
}

/// Whether a process's environment holds the mark the daemon gives each
/// child (`ROCM_LLM_MODEL=<model>`, see `process::spawn`). An environment we
/// cannot read is not ours.
fn carries_mark(pid: i32, model: &str) -> bool {
    let mark = format!("{}={model}", super::process::MODEL_MARK);
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == mark.as_bytes()))
}

/// Whether the process with this pid and start time runs (not a zombie).
fn leader_alive(pid: Pid, start_time: u64) -> bool {
    matches!(read_proc_stat(pid.as_raw_nonzero().get()),
        Ok(s) if s.start_time == start_time && s.state != 'Z')
}

/// Whether any non-zombie process is in group `pgid`.
fn group_has_live_members(pgid: Pid) -> bool {
    let pgid = pgid.as_raw_nonzero().get();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter_map(|pid| read_proc_stat(pid).ok())
        .any(|s| s.pgrp == pgid && s.state != 'Z')
}

fn alive(target: &Target) -> bool {
    match *target {
        Target::Group { pgid, start_time } => {
            leader_alive(pgid, start_time) || group_has_live_members(pgid)
        }
        Target::Process { pid, start_time } => leader_alive(pid, start_time),
    }
}

fn signal_all(found: &mut [(Leftover, Option<Target>)], sig: Signal) {
    for (l, t) in found.iter_mut() {
        let Some(target) = *t else { continue };
        let r = match target {
            Target::Group { pgid, .. } => rustix::process::kill_process_group(pgid, sig),
            Target::Process { pid, .. } => rustix::process::kill_process(pid, sig),
        };
        match r {
            Ok(()) | Err(Errno::SRCH) => {}
            Err(e) => {
                l.outcome = LeftoverOutcome::SignalFailed(format!("{sig:?}: {e}"));
                *t = None;
            }
        }
    }
}

/// Waits until no target is alive or `limit` passes; true if all are gone.
async fn wait_gone(found: &[(Leftover, Option<Target>)], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !found.iter().filter_map(|(_, t)| t.as_ref()).any(alive) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + POLL)).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn rec(model: &str, pid: i32) -> InstanceRecord {
        InstanceRecord {
            model: model.into(),
            pid,
            start_time: 42,
            launch_id: LaunchId("abcd".into()),
            port: 5000,
        }
    }

    #[test]
    fn record_and_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let sf = StateFile::new(&dir.path().join("sub"));
        assert_eq!(load(sf.path()).unwrap(), vec![]);
        sf.record(rec("a", 10)).unwrap();
        sf.record(rec("b", 11)).unwrap();
        sf.record(InstanceRecord {
            port: 6000,
            ..rec("a2", 10)
        })
        .unwrap();
        let on_disk = load(sf.path()).unwrap();
        assert_eq!(on_disk, sf.entries());
        assert_eq!(on_disk.len(), 2);
        assert_eq!(on_disk[1].model, "a2");
        sf.remove(11).unwrap();
        sf.remove(999).unwrap();
        assert_eq!(
            load(sf.path()).unwrap(),
            vec![InstanceRecord {
                port: 6000,
                ..rec("a2", 10)
            }]
        );
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [STATE_FILE_NAME]);
        let text = std::fs::read_to_string(sf.path()).unwrap();
        assert!(text.contains("\"launch_id\": \"abcd\""), "{text}");
    }

    #[tokio::test]
    async fn missing_and_corrupt_files_are_survived() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            reap_leftovers(dir.path(), Duration::from_millis(10))
                .await
                .is_empty()
        );
        let path = dir.path().join(STATE_FILE_NAME);
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(load(&path), Err(LeftoverError::Corrupt { .. })));
        assert!(
            reap_leftovers(dir.path(), Duration::from_millis(10))
                .await
                .is_empty()
        );
        assert!(!path.exists(), "the corrupt file is cleared");
    }

    #[tokio::test]
    async fn invalid_and_gone_records() {
        let dir = tempfile::tempdir().unwrap();
        let sf = StateFile::new(dir.path());
        let me = i32::try_from(std::process::id()).unwrap();
        sf.record(rec("zero", 0)).unwrap();
        sf.record(rec("neg", -3)).unwrap();
        sf.record(rec("init", 1)).unwrap();
        sf.record(rec("me", me)).unwrap();
        sf.record(rec("gone", i32::MAX)).unwrap();
        let got = reap_leftovers(dir.path(), Duration::from_millis(10)).await;
        let outcomes: Vec<_> = got
            .iter()
            .map(|l| (l.record.model.as_str(), l.outcome.clone()))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("zero", LeftoverOutcome::Invalid),
                ("neg", LeftoverOutcome::Invalid),
                ("init", LeftoverOutcome::Invalid),
                ("me", LeftoverOutcome::Invalid),
                ("gone", LeftoverOutcome::Gone),
            ]
        );
        assert!(!sf.path().exists());
    }
}
