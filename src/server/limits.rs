//! Per-client limits: connections per address, and flood control for senders.
//!
//! [`TokenBucket`] is pure: time comes in as an argument, so it is tested without a
//! clock. [`PerAddress`] is shared by the accept loop and the connection tasks, and
//! touched only when a connection opens or closes, never per message.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
            Duration::from_secs_f64((1.0 - tokens) / self.rate)
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
    }
}

/// The key one address is counted under: IPv4 addresses one by one, IPv6 by /64
/// (what one site is usually given), IPv4-mapped IPv6 as the IPv4 address it is.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
        v4 => v4,
    }
}

/// Open connections per address.
#[derive(Debug, Clone)]
pub struct PerAddress {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: usize,
}

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
pub struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl PerAddress {
    /// At most `max` connections per address.
    pub fn new(max: usize) -> Self {
        Self {
            counts: Arc::default(),
            max,
        }
    }

    /// Counts a new connection from `ip`, or returns `None` if that address is at
    /// its limit.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<AddressSlot> {
        let key = address_key(ip);
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(key).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: self.counts.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
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
    fn addresses_are_counted_up_to_the_limit_and_freed_on_drop() {
        let limit = PerAddress::new(2);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let first = limit.try_acquire(ip).unwrap();
        let _second = limit.try_acquire(ip).unwrap();
        assert!(limit.try_acquire(ip).is_none(), "one past the limit");
        assert!(limit.try_acquire("192.0.2.8".parse().unwrap()).is_some());
        drop(first);
        assert!(limit.try_acquire(ip).is_some());
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let limit = PerAddress::new(1);
        let _a = limit
            .try_acquire("2001:db8:1:2::1".parse().unwrap())
            .unwrap();
        assert!(
            limit
                .try_acquire("2001:db8:1:2:ffff::9".parse().unwrap())
                .is_none()
        );
        assert!(
            limit
                .try_acquire("2001:db8:1:3::1".parse().unwrap())
                .is_some()
        );
        let _v4 = limit.try_acquire("198.51.100.1".parse().unwrap()).unwrap();
        assert!(
            limit
                .try_acquire("::ffff:198.51.100.1".parse().unwrap())
                .is_none()
        );
    }
}
