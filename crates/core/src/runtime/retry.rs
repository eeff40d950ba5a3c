//! Task retries: how many, and how long to wait before each.
//!
//! Only errors that a new attempt can fix are retried (see [`Error::is_retryable`]):
//! an unreachable endpoint, a server error or throttling that outlasted the object
//! store's own request retries, a timeout, a corrupt checkpoint (invalidated, so the
//! next attempt recomputes it), and errors a task marks with [`Error::retryable`]. Bad
//! data, bad code and bad settings fail at once.
//!
//! [`Error::is_retryable`]: crate::Error::is_retryable
//! [`Error::retryable`]: crate::Error::retryable

use std::time::Duration;

/// How often a failed task is tried again: `retries` more attempts, each after a
/// delay. Like Prefect's `retries` and `retry_delay_seconds`.
///
/// ```
/// use std::time::Duration;
/// use sluice_core::{Retry, RetryDelay};
/// let retry = Retry::new(3).with_delay(RetryDelay::exponential(Duration::from_millis(100)));
/// assert_eq!(retry.retries(), 3);
/// let fixed = Retry::new(2).with_delay(RetryDelay::Fixed(Duration::from_secs(1)));
/// assert_eq!(fixed.delay_before(1), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    retries: u32,
    delay: RetryDelay,
}

/// The wait before a retry.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RetryDelay {
    /// The same delay before every retry.
    Fixed(Duration),
    /// The n-th retry waits the n-th delay; the last one repeats (Prefect's list of
    /// `retry_delay_seconds`).
    List(Vec<Duration>),
    /// `base · factorⁿ⁻¹` before the n-th retry, at most `max`, then scattered by up to
    /// ±`jitter` (a fraction: 0.2 is ±20%) so that many runs failing together do not
    /// retry together.
    Exponential {
        /// The first delay.
        base: Duration,
        /// The growth per retry.
        factor: f64,
        /// The largest delay.
        max: Duration,
        /// The relative jitter, from 0 to 1.
        jitter: f64,
    },
}

impl RetryDelay {
    /// Exponential backoff from `base`, doubling, at most 60 s, with ±20% jitter.
    pub fn exponential(base: Duration) -> Self {
        RetryDelay::Exponential {
            base,
            factor: 2.0,
            max: Duration::from_secs(60),
            jitter: 0.2,
        }
    }
}

impl Default for RetryDelay {
    /// No wait (Prefect's default `retry_delay_seconds=0`).
    fn default() -> Self {
        RetryDelay::Fixed(Duration::ZERO)
    }
}

impl Retry {
    /// `retries` more attempts after the first, with no delay between them.
    pub fn new(retries: u32) -> Self {
        Self {
            retries,
            delay: RetryDelay::default(),
        }
    }

    /// The delay before each retry.
    pub fn with_delay(mut self, delay: RetryDelay) -> Self {
        self.delay = delay;
        self
    }

    /// Attempts after the first.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The wait before retry `n` (1 for the first retry).
    pub fn delay_before(&self, n: u32) -> Duration {
        let n = n.max(1);
        match &self.delay {
            RetryDelay::Fixed(delay) => *delay,
            RetryDelay::List(delays) => delays
                .get(n as usize - 1)
                .or(delays.last())
                .copied()
                .unwrap_or_default(),
            RetryDelay::Exponential {
                base,
                factor,
                max,
                jitter,
            } => {
                let grown = base.as_secs_f64() * factor.max(1.0).powi(n as i32 - 1);
                let capped = grown.min(max.as_secs_f64());
                let jitter = jitter.clamp(0.0, 1.0);
                // Uniform in [1 - jitter, 1 + jitter], from a random u64.
                let unit = (uuid::Uuid::new_v4().as_u128() as u64 as f64) / (u64::MAX as f64);
                Duration::from_secs_f64((capped * (1.0 - jitter + 2.0 * jitter * unit)).max(0.0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_the_policy() {
        let ms = Duration::from_millis;
        let list = Retry::new(4).with_delay(RetryDelay::List(vec![ms(10), ms(20)]));
        assert_eq!(list.delay_before(1), ms(10));
        assert_eq!(list.delay_before(2), ms(20));
        assert_eq!(list.delay_before(3), ms(20), "the last delay repeats");
        let exp = Retry::new(5).with_delay(RetryDelay::Exponential {
            base: ms(100),
            factor: 2.0,
            max: ms(500),
            jitter: 0.0,
        });
        let delays: Vec<_> = (1..=5).map(|n| exp.delay_before(n)).collect();
        assert_eq!(delays, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        let jittered = Retry::new(1).with_delay(RetryDelay::exponential(ms(1000)));
        for _ in 0..100 {
            let d = jittered.delay_before(1);
            assert!(d >= ms(800) && d <= ms(1200), "{d:?}");
        }
        assert_eq!(Retry::new(1).delay_before(1), Duration::ZERO);
    }
}
