//! Bans the operator sets (`tcpchat admin ban`): an address, or a name, kept out for
//! a while. Checked at each handshake, beside the password; kept in memory only (a
//! restart forgets them).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::protocol::handshake::Hello;

use super::password::{Refusal, key_of};

/// What is banned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ban {
    /// Connections from an address (IPv6: its /64).
    Address(IpAddr),
    /// Joins under a name.
    Name(String),
}

impl Ban {
    /// An address if `text` is one, else a name.
    pub fn parse(text: &str) -> Self {
        match text.parse::<IpAddr>() {
            Ok(ip) => Self::Address(key_of(ip)),
            Err(_) => Self::Name(text.to_owned()),
        }
    }
}

impl std::fmt::Display for Ban {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Address(IpAddr::V6(v6)) => write!(f, "{v6}/64"),
            Self::Address(v4) => write!(f, "{v4}"),
            Self::Name(name) => write!(f, "{name}"),
        }
    }
}

/// The bans in force, each with when it ends.
#[derive(Debug, Default)]
pub struct Bans {
    until: Mutex<HashMap<Ban, Instant>>,
}

impl Bans {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Ban, Instant>> {
        let mut entries = self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        entries.retain(|_, until| *until > now);
        entries
    }

    /// Bans `ban` for `how_long` (from now, replacing an earlier ban of it).
    pub fn add(&self, ban: Ban, how_long: Duration) {
        self.entries().insert(ban, Instant::now() + how_long);
    }

    /// Lifts `ban`; whether it was in force.
    pub fn remove(&self, ban: &Ban) -> bool {
        self.entries().remove(ban).is_some()
    }

    /// The bans in force and the time each has left, in order.
    pub fn list(&self) -> Vec<(Ban, Duration)> {
        let now = Instant::now();
        let mut bans: Vec<(Ban, Duration)> = self
            .entries()
            .iter()
            .map(|(ban, until)| (ban.clone(), until.saturating_duration_since(now)))
            .collect();
        bans.sort();
        bans
    }

    /// Whether `hello`, from `ip`, may come in.
    ///
    /// # Errors
    /// The [`Refusal`] (`banned`), saying for how long.
    pub fn check(&self, ip: IpAddr, hello: &Hello) -> Result<(), Refusal> {
        let entries = self.entries();
        if entries.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let left = |ban: &Ban| {
            entries
                .get(ban)
                .map(|until| until.saturating_duration_since(now))
        };
        if let Some(left) = left(&Ban::Address(key_of(ip))) {
            return Err((
                "banned",
                format!("this address is banned for {} more", rounded(left)),
            ));
        }
        if let Some(name) = &hello.name
            && let Some(left) = left(&Ban::Name(name.clone()))
        {
            return Err((
                "banned",
                format!("the name \"{name}\" is banned for {} more", rounded(left)),
            ));
        }
        Ok(())
    }
}

/// `duration` to the second, as people read it (`59m 3s`).
pub fn rounded(duration: Duration) -> String {
    humantime::format_duration(Duration::from_secs(duration.as_secs().max(1))).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::handshake::{Mode, Options};
    use crate::room::Role;

    fn hello(name: Option<&str>) -> Hello {
        Hello {
            mode: Mode::Line,
            role: if name.is_some() {
                Role::Messenger
            } else {
                Role::Viewer
            },
            name: name.map(str::to_owned),
            options: Options::default(),
        }
    }

    #[test]
    fn bans_keep_out_an_address_or_a_name_until_they_end_or_are_lifted() {
        let bans = Bans::default();
        let home: IpAddr = "192.0.2.7".parse().expect("an address");
        let other: IpAddr = "198.51.100.1".parse().expect("an address");
        assert_eq!(bans.check(home, &hello(Some("alice"))), Ok(()));
        bans.add(Ban::parse("192.0.2.7"), Duration::from_secs(3600));
        bans.add(Ban::parse("mallory"), Duration::from_secs(60));
        let refused = bans.check(home, &hello(None)).expect_err("banned address");
        assert_eq!(refused.0, "banned");
        assert!(
            refused.1.starts_with("this address is banned for 59m"),
            "{}",
            refused.1
        );
        assert_eq!(bans.check(other, &hello(Some("alice"))), Ok(()));
        let refused = bans
            .check(other, &hello(Some("mallory")))
            .expect_err("banned name");
        assert!(
            refused.1.starts_with("the name \"mallory\" is banned for"),
            "{}",
            refused.1
        );
        assert_eq!(
            bans.list()
                .iter()
                .map(|(ban, _)| ban.to_string())
                .collect::<Vec<_>>(),
            ["192.0.2.7", "mallory"]
        );
        assert!(bans.remove(&Ban::parse("mallory")));
        assert!(!bans.remove(&Ban::parse("mallory")));
        assert_eq!(bans.check(other, &hello(Some("mallory"))), Ok(()));
        bans.add(Ban::parse("192.0.2.7"), Duration::ZERO);
        assert_eq!(bans.check(home, &hello(None)), Ok(()), "a ban that ended");
    }

    #[test]
    fn an_ipv6_ban_covers_its_64() {
        let bans = Bans::default();
        bans.add(Ban::parse("2001:db8:1:2::1"), Duration::from_secs(60));
        let neighbour: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("an address");
        assert!(bans.check(neighbour, &hello(None)).is_err());
        assert_eq!(bans.list()[0].0.to_string(), "2001:db8:1:2::/64");
    }
}
