//! Liveness of a ready llama-server: is it still answering, or hung?
//!
//! After a process is ready, a probe task asks its `/health` every
//! `liveness_interval`, bounded by `liveness_timeout`, and reports each
//! answer with the process's `/proc/<pid>/stat` to the owner. The owner's
//! [`Tracker`] decides. llama-server answers `/health` from its HTTP threads
//! even while it generates, but a burst of long requests can occupy every
//! HTTP thread, and then a probe waits in line. So a probe that fails while
//! the process is using CPU is *busy*, not dead, and does not count. Only
//! failures while the process is stopped (SIGSTOP, a debugger) or burns no
//! CPU at all (deadlocked, stuck in the driver) count, and `liveness_failures`
//! of them in a row replace it. The price: a process spinning in a loop
//! without answering is never replaced by this check.

use super::process::{ProcStat, RunningProcess, read_proc_stat};
use super::readiness::{ProbeResult, probe_with_timeout};
use crate::spec::Liveness;

/// What one probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Probe {
    /// `None` when `/health` said 200; otherwise what it said instead.
    pub failure: Option<String>,
    /// The process's state and CPU time right after the probe (`None` if it
    /// could not be read, e.g. it just exited).
    pub stat: Option<ProcStat>,
}

/// What the owner should make of the probes so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Alive,
    /// The probe failed while the process worked (used CPU): not counted.
    Busy,
    /// Failed `n` times in a row, fewer than the threshold.
    Suspect(u32),
    /// Replace it, for this reason.
    Dead(String),
}

/// Consecutive failures of one process, judged against its CPU use.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tracker {
    failures: u32,
    last_cpu: Option<u64>,
}

impl Tracker {
    pub(crate) fn observe(&mut self, policy: &Liveness, probe: &Probe) -> Verdict {
        let cpu = probe.stat.map(|s| s.cpu_ticks);
        let progressed = matches!((self.last_cpu, cpu), (Some(before), Some(now)) if now > before);
        if cpu.is_some() {
            self.last_cpu = cpu;
        }
        let Some(why) = &probe.failure else {
            self.failures = 0;
            return Verdict::Alive;
        };
        let stopped = probe.stat.is_some_and(|s| matches!(s.state, 'T' | 't'));
        if progressed && !stopped {
            return Verdict::Busy;
        }
        self.failures += 1;
        if self.failures < policy.failures {
            return Verdict::Suspect(self.failures);
        }
        let condition = if stopped {
            "it is stopped (SIGSTOP or a debugger)"
        } else {
            "it used no CPU meanwhile"
        };
        Verdict::Dead(format!(
            "stopped answering /health: {} probes in a row failed ({why}) and {condition}",
            self.failures
        ))
    }
}

/// Probes `process` until it exits or `report` (which gets each result)
/// returns `false` because the owner is gone.
pub(crate) async fn run(
    process: RunningProcess,
    policy: Liveness,
    report: impl Fn(Probe) -> bool + Send + 'static,
) {
    if policy.failures == 0 {
        return;
    }
    let exited = process.wait();
    tokio::pin!(exited);
    loop {
        tokio::select! {
            _ = &mut exited => return,
            () = tokio::time::sleep(policy.interval) => {}
        }
        let result = tokio::select! {
            _ = &mut exited => return,
            r = probe_with_timeout(process.port(), policy.timeout) => r,
        };
        let failure = match result {
            ProbeResult::Ready => None,
            other => Some(other.to_string()),
        };
        let stat = read_proc_stat(process.pid()).ok();
        if !report(Probe { failure, stat }) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn stat(state: char, cpu: u64) -> Option<ProcStat> {
        Some(ProcStat {
            state,
            pgrp: 1,
            start_time: 1,
            cpu_ticks: cpu,
        })
    }

    /// Feeds probes `(ok, state, cpu)` to a fresh tracker with threshold 3
    /// and compares the verdicts, one letter each: A alive, B busy, S
    /// suspect, D dead.
    fn check(probes: &[(bool, char, u64)], expected: &str) {
        let policy = Liveness {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failures: 3,
        };
        let mut t = Tracker::default();
        let got: String = probes
            .iter()
            .map(|&(ok, state, cpu)| {
                let p = Probe {
                    failure: (!ok).then(|| "no answer within 1s".to_owned()),
                    stat: stat(state, cpu),
                };
                match t.observe(&policy, &p) {
                    Verdict::Alive => 'A',
                    Verdict::Busy => 'B',
                    Verdict::Suspect(_) => 'S',
                    Verdict::Dead(_) => 'D',
                }
            })
            .collect();
        assert_eq!(got, expected, "{probes:?}");
    }

    #[test]
    fn verdicts() {
        // Healthy.
        check(&[(true, 'S', 1), (true, 'S', 1), (true, 'R', 5)], "AAA");
        // Hung with no CPU: three failures replace it.
        check(
            &[
                (true, 'S', 7),
                (false, 'S', 7),
                (false, 'S', 7),
                (false, 'S', 7),
            ],
            "ASSD",
        );
        // SIGSTOPped: counts even though CPU was used since the last probe.
        check(
            &[
                (true, 'S', 1),
                (false, 'T', 9),
                (false, 'T', 9),
                (false, 't', 9),
            ],
            "ASSD",
        );
        // Busy: failing probes while CPU time grows never count.
        check(
            &[
                (true, 'R', 1),
                (false, 'R', 50),
                (false, 'R', 90),
                (false, 'R', 130),
                (false, 'R', 170),
            ],
            "ABBBB",
        );
        // A success resets the count.
        check(
            &[
                (true, 'S', 1),
                (false, 'S', 1),
                (false, 'S', 1),
                (true, 'S', 1),
                (false, 'S', 1),
                (false, 'S', 1),
            ],
            "ASSASS",
        );
        // Busy in between does not reset it: busy, then idle-and-silent.
        check(
            &[
                (true, 'S', 1),
                (false, 'S', 1),
                (false, 'R', 9),
                (false, 'S', 9),
                (false, 'S', 9),
            ],
            "ASBSD",
        );
        // First probe fails with no earlier CPU reading: no progress known.
        check(&[(false, 'S', 4), (false, 'S', 4), (false, 'S', 4)], "SSD");
    }

    #[test]
    fn unreadable_stat_is_not_progress() {
        let policy = Liveness {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failures: 2,
        };
        let mut t = Tracker::default();
        let fail = Probe {
            failure: Some("refused".into()),
            stat: None,
        };
        assert_eq!(t.observe(&policy, &fail), Verdict::Suspect(1));
        assert!(
            matches!(t.observe(&policy, &fail), Verdict::Dead(why) if why.contains("2 probes in a row failed (refused)"))
        );
    }
}
