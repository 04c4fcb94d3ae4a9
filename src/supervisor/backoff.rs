//! The restart policy: how long to wait before restarting a model whose
//! llama-server failed (exited, crashed, or was not ready in time).
//!
//! Pure: time is passed in, randomness is injected. Delays grow
//! exponentially from [`BackoffPolicy::base`] by [`BackoffPolicy::factor`]
//! up to [`BackoffPolicy::max`], each scaled by a random factor in
//! `[1 - jitter, 1 + jitter]` (and never above `max`) so that several models
//! failing together do not restart in lock step. After
//! [`BackoffPolicy::failed_after`] failures in a row the model is *failed*
//! (the status shows `failed`), and it keeps being retried at about `max`.
//! Staying ready for [`BackoffPolicy::healthy_reset`] forgets the failures.
//!
//! Use: the owner keeps one [`Backoff`] per model; calls
//! [`Backoff::on_failure`] when a start fails or a ready instance dies
//! unexpectedly and sleeps for the returned delay; calls
//! [`Backoff::on_healthy`] when the instance becomes ready (and, optionally,
//! on later health checks); calls [`Backoff::reset`] on a deliberate stop or
//! a new launch identity (a changed spec deserves a fresh start).

use std::time::Duration;

use tokio::time::Instant;

/// A policy that cannot work.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BackoffError {
    #[error("backoff base must be > 0 and <= max (base {base:?}, max {max:?})")]
    Range { base: Duration, max: Duration },
    #[error("backoff factor must be >= 1 (got {0})")]
    Factor(u32),
    #[error("backoff jitter must be in [0, 1) (got {0})")]
    Jitter(f64),
}

/// The knobs of the restart policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffPolicy {
    /// Delay after the first failure.
    pub base: Duration,
    /// Each further failure multiplies the delay by this.
    pub factor: u32,
    /// Delays never exceed this.
    pub max: Duration,
    /// Being ready this long forgets earlier failures.
    pub healthy_reset: Duration,
    /// This many failures in a row make the model `failed`.
    pub failed_after: u32,
    /// Relative jitter: delays are scaled by a factor in `[1 - j, 1 + j]`.
    pub jitter: f64,
}

impl Default for BackoffPolicy {
    /// 1 s, 2 s, 4 s, ... up to 60 s, ±20 %; failed after 5 in a row; reset
    /// after 60 s ready.
    fn default() -> Self {
        BackoffPolicy {
            base: Duration::from_secs(1),
            factor: 2,
            max: Duration::from_secs(60),
            healthy_reset: Duration::from_secs(60),
            failed_after: 5,
            jitter: 0.2,
        }
    }
}

impl BackoffPolicy {
    pub fn validate(&self) -> Result<(), BackoffError> {
        if self.base.is_zero() || self.base > self.max {
            return Err(BackoffError::Range {
                base: self.base,
                max: self.max,
            });
        }
        if self.factor == 0 {
            return Err(BackoffError::Factor(self.factor));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(BackoffError::Jitter(self.jitter));
        }
        Ok(())
    }

    /// The un-jittered delay before restart number `failures` (1-based).
    pub fn nominal_delay(&self, failures: u32) -> Duration {
        if failures >= self.failed_after {
            return self.max;
        }
        self.factor
            .checked_pow(failures.saturating_sub(1))
            .and_then(|m| self.base.checked_mul(m))
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// What to do after a failure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Decision {
    /// Wait this long, then start again.
    pub delay: Duration,
    /// The model has failed too often in a row: show it as `failed`
    /// (it is still retried after `delay`).
    pub failed: bool,
    /// Failures in a row, this one included.
    pub failures: u32,
}

/// One model's restart state.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    policy: BackoffPolicy,
    failures: u32,
    ready_since: Option<Instant>,
    /// Returns a value in `[0, 1)`; 0.5 means no jitter.
    random: fn() -> f64,
}

impl Backoff {
    /// A backoff with random jitter.
    pub(crate) fn new(policy: BackoffPolicy) -> Result<Backoff, BackoffError> {
        Backoff::with_random(policy, rand::random::<f64>)
    }

    /// A backoff whose jitter comes from `random` (values in `[0, 1)`;
    /// out-of-range values are clamped), for deterministic tests.
    pub(crate) fn with_random(
        policy: BackoffPolicy,
        random: fn() -> f64,
    ) -> Result<Backoff, BackoffError> {
        policy.validate()?;
        Ok(Backoff {
            policy,
            failures: 0,
            ready_since: None,
            random,
        })
    }

    /// Failures in a row so far.
    #[cfg(test)]
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the model currently counts as `failed`.
    pub(crate) fn is_failed(&self) -> bool {
        self.failures >= self.policy.failed_after
    }

    /// The instance is ready (or still ready) at `now`. Once it has been
    /// ready for `healthy_reset`, the failure count is forgotten.
    pub(crate) fn on_healthy(&mut self, now: Instant) {
        let since = *self.ready_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.policy.healthy_reset {
            self.failures = 0;
        }
    }

    /// A start failed, or an instance died unexpectedly, at `now`.
    pub(crate) fn on_failure(&mut self, now: Instant) -> Decision {
        if let Some(since) = self.ready_since.take()
            && now.saturating_duration_since(since) >= self.policy.healthy_reset
        {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        let nominal = self.policy.nominal_delay(self.failures);
        let r = (self.random)();
        let r = if r.is_finite() {
            r.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let scale = 1.0 - self.policy.jitter + 2.0 * self.policy.jitter * r;
        let delay = nominal.mul_f64(scale).min(self.policy.max);
        Decision {
            delay,
            failed: self.is_failed(),
            failures: self.failures,
        }
    }

    /// Forget everything: after a deliberate stop or a new launch identity.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
        self.ready_since = None;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[derive(Clone, Copy, Debug)]
    enum Ev {
        /// A failure at t seconds: expect (delay secs, failed).
        Fail(u64, f64, bool),
        /// Ready at t seconds.
        Ready(u64),
        Reset,
    }
    use Ev::*;

    fn run(policy: BackoffPolicy, random: fn() -> f64, events: &[Ev]) {
        let t0 = Instant::now();
        let mut b = Backoff::with_random(policy, random).unwrap();
        for (i, ev) in events.iter().enumerate() {
            match *ev {
                Fail(t, delay, failed) => {
                    let d = b.on_failure(t0 + S(t));
                    let want = Duration::from_secs_f64(delay);
                    let off = d.delay.abs_diff(want);
                    assert!(
                        off < Duration::from_micros(1),
                        "event {i}: {ev:?}: delay {:?}",
                        d.delay
                    );
                    assert_eq!(d.failed, failed, "event {i}: {ev:?}");
                    assert_eq!(d.failures, b.failures());
                }
                Ready(t) => b.on_healthy(t0 + S(t)),
                Reset => b.reset(),
            }
        }
    }

    fn mid() -> f64 {
        0.5
    }

    /// (name, jitter source, events with expectations)
    type Case = (&'static str, fn() -> f64, &'static [Ev]);

    #[test]
    fn table() {
        let p = BackoffPolicy::default();
        let cases: &[Case] = &[
            (
                "exponential, failed after 5, then max",
                mid,
                &[
                    Fail(0, 1.0, false),
                    Fail(1, 2.0, false),
                    Fail(3, 4.0, false),
                    Fail(7, 8.0, false),
                    Fail(15, 60.0, true),
                    Fail(75, 60.0, true),
                    Fail(135, 60.0, true),
                ],
            ),
            (
                "short ready periods do not reset",
                mid,
                &[
                    Fail(0, 1.0, false),
                    Ready(1),
                    Fail(30, 2.0, false),
                    Ready(32),
                    Fail(91, 4.0, false),
                ],
            ),
            (
                "60 s ready resets, measured at the failure",
                mid,
                &[
                    Fail(0, 1.0, false),
                    Fail(1, 2.0, false),
                    Ready(3),
                    Fail(63, 1.0, false),
                ],
            ),
            (
                "a failed model recovers after 60 s ready",
                mid,
                &[
                    Fail(0, 1.0, false),
                    Fail(1, 2.0, false),
                    Fail(3, 4.0, false),
                    Fail(7, 8.0, false),
                    Fail(15, 60.0, true),
                    Ready(80),
                    Ready(140),
                    Fail(150, 1.0, false),
                ],
            ),
            (
                "reset forgets",
                mid,
                &[
                    Fail(0, 1.0, false),
                    Fail(1, 2.0, false),
                    Reset,
                    Fail(2, 1.0, false),
                ],
            ),
            (
                "lowest jitter: -20 %",
                || 0.0,
                &[Fail(0, 0.8, false), Fail(1, 1.6, false)],
            ),
            (
                "highest jitter: +20 %, capped at max",
                || 1.0,
                &[
                    Fail(0, 1.2, false),
                    Fail(1, 2.4, false),
                    Fail(2, 4.8, false),
                    Fail(3, 9.6, false),
                    Fail(4, 60.0, true),
                ],
            ),
            (
                "nonsense randomness counts as no jitter",
                || f64::NAN,
                &[Fail(0, 1.0, false)],
            ),
        ];
        for (name, random, events) in cases {
            eprintln!("case: {name}");
            run(p, *random, events);
        }
    }

    #[test]
    fn nominal_delays_saturate() {
        let p = BackoffPolicy {
            failed_after: u32::MAX,
            ..BackoffPolicy::default()
        };
        assert_eq!(p.nominal_delay(1), S(1));
        assert_eq!(p.nominal_delay(6), S(32));
        assert_eq!(p.nominal_delay(7), S(60));
        assert_eq!(p.nominal_delay(40), S(60));
        assert_eq!(p.nominal_delay(u32::MAX - 1), S(60));
        let mut b = Backoff::with_random(p, mid).unwrap();
        for _ in 0..100 {
            assert!(b.on_failure(Instant::now()).delay <= S(60));
        }
    }

    #[test]
    fn random_jitter_stays_in_bounds() {
        let mut b = Backoff::new(BackoffPolicy::default()).unwrap();
        let d = b.on_failure(Instant::now()).delay;
        assert!(
            d >= Duration::from_millis(800) && d <= Duration::from_millis(1200),
            "{d:?}"
        );
    }

    #[test]
    fn invalid_policies() {
        let d = BackoffPolicy::default();
        assert!(matches!(
            BackoffPolicy { base: S(0), ..d }.validate(),
            Err(BackoffError::Range { .. })
        ));
        assert!(matches!(
            BackoffPolicy { base: S(61), ..d }.validate(),
            Err(BackoffError::Range { .. })
        ));
        assert_eq!(
            BackoffPolicy { factor: 0, ..d }.validate(),
            Err(BackoffError::Factor(0))
        );
        assert!(BackoffPolicy { jitter: 1.0, ..d }.validate().is_err());
        assert!(d.validate().is_ok());
    }
}
