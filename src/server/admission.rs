//! Admission: who may open a connection at all, whatever the transport.
//!
//! Every listener asks [`Gate::admit`] before it spends anything on a new connection:
//! a place under the connection limit, a place under the per-address limit (loopback
//! exempt unless configured otherwise), and whether the connection's posts go through
//! flood control. The [`Admission`] it hands out gives both places back when the
//! connection ends. Touched when a connection opens or closes, never per message.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::info;

use crate::config::{Config, RESERVED_FDS};
use crate::room::ConnId;

/// The effective connection limit: the configured one, or what the open-file limit
/// allows.
pub fn max_connections(config: &Config) -> usize {
    config.max_connections.unwrap_or_else(|| {
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
        usize::try_from(soft.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX)
    })
}

/// The limits every listener shares.
#[derive(Debug)]
pub struct Gate {
    permits: Arc<Semaphore>,
    max_connections: usize,
    per_address: PerAddress,
    loopback_exempt: std::sync::atomic::AtomicBool,
    password: Arc<super::password::Password>,
    bans: Arc<super::bans::Bans>,
}

impl Gate {
    /// The gate for `config`.
    pub fn new(config: &Config) -> Self {
        let max_connections = max_connections(config);
        Self {
            permits: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            per_address: PerAddress::new(config.max_connections_per_ip),
            loopback_exempt: std::sync::atomic::AtomicBool::new(!config.no_loopback_exemption),
            password: Arc::new(super::password::Password::new(config)),
            bans: Arc::default(),
        }
    }

    /// The operator's bans, which every connection's handshake is checked against.
    pub fn bans(&self) -> Arc<super::bans::Bans> {
        self.bans.clone()
    }

    /// The server's password, which every connection's handshake is checked against.
    pub fn password(&self) -> Arc<super::password::Password> {
        self.password.clone()
    }

    /// Takes what a reload may change from `config`: the per-address limit, the
    /// loopback exemption, the password; for connections from now on.
    pub fn reconfigure(&self, config: &Config) {
        self.per_address.max.store(
            config.max_connections_per_ip,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.loopback_exempt.store(
            !config.no_loopback_exemption,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.password.reconfigure(config);
    }

    /// The connection limit in force.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Lets connection `id` from `peer` (come by `transport`) in, or says why not (in
    /// the log) and returns `None`: the caller then closes it at once, sending nothing.
    ///
    /// # Errors
    /// The reason, as a stable code (`connection-limit`, `address-limit`).
    pub fn admit(
        &self,
        id: ConnId,
        peer: SocketAddr,
        transport: &str,
    ) -> Result<Admission, &'static str> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let reason = "connection-limit";
            info!(conn = %id, %peer, %transport, %reason, max_connections = self.max_connections, "refused");
            return Err(reason);
        };
        // Loopback clients are the operator's own, unless told otherwise.
        let limited = !(self
            .loopback_exempt
            .load(std::sync::atomic::Ordering::Relaxed)
            && peer.ip().is_loopback());
        let address = if limited {
            let Some(slot) = self.per_address.try_acquire(peer.ip()) else {
                let reason = "address-limit";
                info!(
                    conn = %id,
                    %peer,
                    %transport,
                    %reason,
                    max_connections_per_ip = self.per_address.max(),
                    "refused"
                );
                return Err(reason);
            };
            Some(slot)
        } else {
            None
        };
        Ok(Admission {
            _permit: permit,
            address,
        })
    }
}

/// What a connection holds for being let in: its places under the limits, given
/// back when it is dropped.
///
/// Kept small, since every connection holds one for its whole life: the address is
/// counted under an 8-byte key, and whether flood control applies is whether the
/// address was counted (both follow from the loopback exemption).
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    address: Option<AddressSlot>,
}

impl Admission {
    /// Whether its posts go through flood control.
    pub fn is_flood_controlled(&self) -> bool {
        self.address.is_some()
    }
}

/// The key one address is counted under: IPv4 addresses one by one, IPv6 by /64
/// (what one site is usually given), IPv4-mapped IPv6 as the IPv4 address it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AddressKey {
    V4(u32),
    V6Prefix(u64),
}

fn address_key(ip: IpAddr) -> AddressKey {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => AddressKey::V4(v4.to_bits()),
            None => AddressKey::V6Prefix((v6.to_bits() >> 64) as u64),
        },
        IpAddr::V4(v4) => AddressKey::V4(v4.to_bits()),
    }
}

/// Open connections per address.
#[derive(Debug, Clone)]
pub struct PerAddress {
    counts: Arc<Mutex<HashMap<AddressKey, usize>>>,
    max: Arc<std::sync::atomic::AtomicUsize>,
}

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
pub struct AddressSlot {
    counts: Arc<Mutex<HashMap<AddressKey, usize>>>,
    key: AddressKey,
}

impl PerAddress {
    /// At most `max` connections per address.
    pub fn new(max: usize) -> Self {
        Self {
            counts: Arc::default(),
            max: Arc::new(std::sync::atomic::AtomicUsize::new(max)),
        }
    }

    /// The limit now.
    pub fn max(&self) -> usize {
        self.max.load(std::sync::atomic::Ordering::Relaxed)
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
        if *count >= self.max() {
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
