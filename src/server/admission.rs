//! Admission: who may open a connection at all, whatever the transport.
//!
//! Every listener asks [`Gate::admit`] before it spends anything on a new connection:
//! a place under the connection limit, a place under the per-address limit (loopback
//! exempt unless configured otherwise), and whether the connection's posts go through
//! flood control. The [`Admission`] it hands out gives both places back when the
//! connection ends. Touched when a connection opens or closes, never per message.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
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
    counts: Arc<Counts>,
    max_connections: usize,
    max_per_address: AtomicUsize,
    loopback_exempt: AtomicBool,
    password: Arc<super::password::Password>,
    bans: Arc<super::bans::Bans>,
}

impl Gate {
    /// The gate for `config`, keeping out what `bans` say.
    pub fn new(config: &Config, bans: super::bans::Bans) -> Self {
        let max_connections = max_connections(config);
        Self {
            counts: Arc::new(Counts {
                places: Semaphore::new(max_connections),
                per_address: Mutex::default(),
            }),
            max_connections,
            max_per_address: AtomicUsize::new(config.max_connections_per_ip),
            loopback_exempt: AtomicBool::new(!config.no_loopback_exemption),
            password: Arc::new(super::password::Password::new(config)),
            bans: Arc::new(bans),
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
        self.max_per_address
            .store(config.max_connections_per_ip, Ordering::Relaxed);
        self.loopback_exempt
            .store(!config.no_loopback_exemption, Ordering::Relaxed);
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
        let Ok(place) = self.counts.places.try_acquire() else {
            let reason = "connection-limit";
            info!(conn = %id, %peer, %transport, %reason, max_connections = self.max_connections, "refused");
            return Err(reason);
        };
        // From here on the admission gives the place back, whatever happens.
        place.forget();
        let mut admission = Admission {
            counts: self.counts.clone(),
            address: None,
        };
        // Loopback clients are the operator's own, unless told otherwise.
        let limited = !(self.loopback_exempt.load(Ordering::Relaxed) && peer.ip().is_loopback());
        if limited {
            let max = self.max_per_address.load(Ordering::Relaxed);
            let key = address_key(peer.ip());
            if !self.counts.count(key, max) {
                let reason = "address-limit";
                info!(
                    conn = %id,
                    %peer,
                    %transport,
                    %reason,
                    max_connections_per_ip = max,
                    "refused"
                );
                return Err(reason);
            }
            admission.address = Some(key);
        }
        Ok(admission)
    }
}

/// What every admission is counted in, shared by the gate and the admissions.
#[derive(Debug)]
struct Counts {
    /// Places left under the connection limit.
    places: Semaphore,
    /// Open connections per address.
    per_address: Mutex<HashMap<AddressKey, usize>>,
}

impl Counts {
    /// Counts one more connection under `key`, unless it has `max` already.
    fn count(&self, key: AddressKey, max: usize) -> bool {
        let mut counts = self
            .per_address
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(key).or_default();
        if *count >= max {
            if *count == 0 {
                counts.remove(&key);
            }
            return false;
        }
        *count += 1;
        true
    }

    fn uncount(&self, key: AddressKey) {
        let mut counts = self
            .per_address
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&key);
            }
        }
    }
}

/// What a connection holds for being let in: its places under the limits, given
/// back when it is dropped.
///
/// Kept small, since every connection holds one for its whole life (24 bytes: one
/// pointer to the counts and the address's key). Whether flood control applies is
/// whether the address was counted (both follow from the loopback exemption).
#[derive(Debug)]
pub struct Admission {
    counts: Arc<Counts>,
    address: Option<AddressKey>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.counts.places.add_permits(1);
        if let Some(key) = self.address {
            self.counts.uncount(key);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_connections: usize, per_address: usize) -> Gate {
        let config = Config {
            max_connections: Some(max_connections),
            max_connections_per_ip: per_address,
            ..Config::default()
        };
        Gate::new(&config, super::super::bans::Bans::default())
    }

    fn admit(gate: &Gate, ip: &str) -> Result<Admission, &'static str> {
        let peer = SocketAddr::new(ip.parse().unwrap(), 40_000);
        gate.admit(ConnId(1), peer, "tcp")
    }

    #[test]
    fn addresses_are_counted_up_to_the_limit_and_freed_on_drop() {
        let gate = gate(100, 2);
        let first = admit(&gate, "192.0.2.7").unwrap();
        let _second = admit(&gate, "192.0.2.7").unwrap();
        assert_eq!(admit(&gate, "192.0.2.7").err(), Some("address-limit"));
        assert!(admit(&gate, "192.0.2.8").is_ok());
        drop(first);
        assert!(admit(&gate, "192.0.2.7").is_ok());
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let gate = gate(100, 1);
        let _a = admit(&gate, "2001:db8:1:2::1").unwrap();
        assert!(admit(&gate, "2001:db8:1:2:ffff::9").is_err());
        assert!(admit(&gate, "2001:db8:1:3::1").is_ok());
        let _v4 = admit(&gate, "198.51.100.1").unwrap();
        assert!(admit(&gate, "::ffff:198.51.100.1").is_err());
    }

    #[test]
    fn the_connection_limit_counts_every_admission_and_refusals_give_their_place_back() {
        let gate = gate(2, 1);
        let first = admit(&gate, "192.0.2.1").unwrap();
        // Refused for its address after it took a place: the place is given back.
        assert_eq!(admit(&gate, "192.0.2.1").err(), Some("address-limit"));
        let _second = admit(&gate, "192.0.2.2").unwrap();
        assert_eq!(admit(&gate, "192.0.2.3").err(), Some("connection-limit"));
        drop(first);
        let third = admit(&gate, "192.0.2.1").unwrap();
        assert!(third.is_flood_controlled());
    }

    #[test]
    fn loopback_is_exempt_from_the_address_limit_and_from_flood_control() {
        let gate = gate(10, 1);
        let a = admit(&gate, "127.0.0.1").unwrap();
        let b = admit(&gate, "127.0.0.1").unwrap();
        assert!(!a.is_flood_controlled() && !b.is_flood_controlled());
    }
}
