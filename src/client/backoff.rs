//! How long a client waits between attempts to reconnect: doubling from a short
//! first wait to a ceiling, each wait drawn at random between half and all of its
//! step, so that clients dropped together by a restart do not come back in step.
//!
//! Pure: the caller sleeps. The randomness is a small generator seeded once.

use std::time::Duration;

/// The first step: a server that restarts at once is back before the user notices.
pub const FIRST_STEP: Duration = Duration::from_millis(200);

/// The ceiling: a server that is down for long is still tried every few seconds.
pub const MAX_STEP: Duration = Duration::from_secs(5);

/// Waits between reconnection attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
    state: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(FIRST_STEP, MAX_STEP)
    }
}

impl Backoff {
    /// Steps from `first`, doubling up to `max`, with a random seed.
    pub fn new(first: Duration, max: Duration) -> Self {
        let mut seed = [0u8; 8];
        let seed = if getrandom::fill(&mut seed).is_ok() {
            u64::from_le_bytes(seed)
        } else {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(std::process::id())
        };
        Self::with_seed(first, max, seed)
    }

    /// The same, with a given seed (tests).
    pub fn with_seed(first: Duration, max: Duration, seed: u64) -> Self {
        let first = first.min(max);
        Self {
            first,
            max,
            step: first,
            state: seed,
        }
    }

    /// The wait before the next attempt; each call doubles the step, up to the
    /// ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        // Between half and all of the step: "equal jitter".
        let fraction = (self.next_random() >> 11) as f64 / (1u64 << 53) as f64;
        step.mul_f64(0.5 + fraction / 2.0)
    }

    /// Back to the first step, after a connection that worked.
    pub fn reset(&mut self) {
        self.step = self.first;
    }

    /// splitmix64: small, fast, and plenty for spreading out reconnections.
    fn next_random(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn steps_double_up_to_the_ceiling_with_jitter_inside_each_step() {
        for seed in 0..200 {
            let mut backoff = Backoff::with_seed(200 * MS, 5000 * MS, seed);
            for step in [200, 400, 800, 1600, 3200, 5000, 5000, 5000] {
                let delay = backoff.next_delay();
                assert!(
                    delay >= step * MS / 2 && delay <= step * MS,
                    "seed {seed}: {delay:?} outside half..all of {step} ms"
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_clients_out() {
        let delays: std::collections::HashSet<Duration> = (0..50)
            .map(|seed| Backoff::with_seed(FIRST_STEP, MAX_STEP, seed).next_delay())
            .collect();
        assert!(delays.len() > 40, "{} distinct delays", delays.len());
    }

    #[test]
    fn a_reset_starts_over() {
        let mut backoff = Backoff::with_seed(200 * MS, 5000 * MS, 7);
        for _ in 0..10 {
            backoff.next_delay();
        }
        backoff.reset();
        assert!(backoff.next_delay() <= 200 * MS);
        assert!(backoff.next_delay() <= 400 * MS);
    }

    #[test]
    fn a_first_step_above_the_ceiling_is_the_ceiling() {
        let mut backoff = Backoff::with_seed(10 * MS * 1000, 1000 * MS, 1);
        assert!(backoff.next_delay() <= 1000 * MS);
        let mut random = Backoff::new(FIRST_STEP, MAX_STEP);
        assert!(random.next_delay() <= FIRST_STEP);
    }
}
