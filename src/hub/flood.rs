//! Flood control: a token bucket per sender, one token per line.
//!
//! Pure: time comes in as an argument (tokio's [`Instant`], so the member core's
//! timers and the tests' paused clock agree), and nothing here reads a clock.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `burst` tokens at most, refilled at `rate` tokens per second.
/// One token is one line a sender may post.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: rate.max(f64::MIN_POSITIVE),
            burst,
            tokens: burst,
            updated: now,
        }
    }

    /// Takes up to `wanted` tokens and returns how many it got.
    pub fn take(&mut self, wanted: usize, now: Instant) -> usize {
        self.refill(now);
        let granted = (self.tokens.floor().max(0.0) as usize).min(wanted);
        self.tokens -= granted as f64;
        granted
    }

    /// How long from `now` until the next token.
    pub fn next_token_in(&self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        let tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if tokens >= 1.0 {
            Duration::ZERO
        } else {
            // A rate too small for a `Duration` (the flag refuses 0) waits forever.
            Duration::try_from_secs_f64((1.0 - tokens) / self.rate).unwrap_or(Duration::MAX)
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_at_once_then_the_rate_applies() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(5.0, 20, start);
        assert_eq!(bucket.take(10, start), 10, "a paste of ten lines");
        assert_eq!(bucket.take(10, start), 10);
        assert_eq!(bucket.take(1, start), 0, "one past the burst");
        assert_eq!(bucket.next_token_in(start), Duration::from_millis(200));
        let later = start + Duration::from_millis(200);
        assert_eq!(bucket.next_token_in(later), Duration::ZERO);
        assert_eq!(bucket.take(3, later), 1);
        let much_later = later + Duration::from_secs(60);
        assert_eq!(
            bucket.take(100, much_later),
            20,
            "never more than the burst"
        );
    }

    #[test]
    fn the_steady_rate_is_the_configured_one() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(5.0, 1, start);
        let mut sent = 0;
        let mut now = start;
        while now < start + Duration::from_secs(10) {
            sent += bucket.take(usize::MAX, now);
            now += bucket.next_token_in(now).max(Duration::from_millis(1));
        }
        assert!((49..=51).contains(&sent), "{sent} lines in 10 s at 5/s");
    }

    #[test]
    fn a_rate_too_small_for_a_duration_waits_forever_instead_of_panicking() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(f64::MIN_POSITIVE, 1, start);
        assert_eq!(bucket.take(2, start), 1);
        assert_eq!(bucket.next_token_in(start), Duration::MAX);
    }
}
