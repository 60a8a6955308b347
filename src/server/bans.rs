//! Bans the operator sets (`tcpchat admin ban`): an address, or a name, kept out for
//! a while. Checked at each handshake, beside the password. With the room's log on,
//! they are also kept in the data directory's `bans` file, rewritten whole (and
//! synced) at every change, so that a restart keeps them; with history off they live
//! in memory only.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;

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
    /// Where they are kept across restarts, if anywhere.
    file: Option<PathBuf>,
    /// Held while a change is written out, so that writes keep the order of the
    /// changes, while `until` (which every handshake checks) is never held across
    /// the disk.
    saving: Mutex<()>,
}

/// The longest ban: a century (a later end could not be written as a date).
pub const MAX_BAN: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

/// The first line of a bans file.
const HEADER: &str = "# tcpchat bans, written by `tcpchat admin ban`: kind, what, until (UTC)";

impl Bans {
    /// The bans kept in `file` (none if it does not exist yet), which every change
    /// from now on rewrites. Bans that ended meanwhile are dropped.
    ///
    /// # Errors
    /// When the file cannot be read, or a line of it is not a ban (naming the line):
    /// a server that forgot its bans would let in whom the operator kept out.
    pub fn open(file: PathBuf) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => {
                return Err(anyhow::Error::new(error))
                    .with_context(|| format!("cannot read the bans in {}", file.display()));
            }
        };
        let now = (Instant::now(), SystemTime::now());
        let mut until = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (ban, ends) = parse_line(line).with_context(|| {
                format!(
                    "{}:{}: not a ban (kind, what, until, tab-separated): {line:?}",
                    file.display(),
                    number + 1
                )
            })?;
            if let Ok(left) = ends.duration_since(now.1) {
                until.insert(ban, now.0 + left.min(MAX_BAN));
            }
        }
        Ok(Self {
            until: Mutex::new(until),
            file: Some(file),
            saving: Mutex::default(),
        })
    }

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
    ///
    /// # Errors
    /// When the bans file cannot be written: the ban is in force, but only until
    /// the server stops.
    /// Also when `how_long` is over [`MAX_BAN`]: then nothing is banned.
    pub fn add(&self, ban: Ban, how_long: Duration) -> std::io::Result<()> {
        if how_long > MAX_BAN {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a ban lasts at most 100 years",
            ));
        }
        let _saving = self.saving();
        let text = {
            let mut entries = self.entries();
            entries.insert(ban, Instant::now() + how_long);
            self.render(&entries)
        };
        self.write(text)
    }

    /// Lifts `ban`; whether it was in force.
    ///
    /// # Errors
    /// When the bans file cannot be written: the ban is lifted, but comes back if
    /// the server restarts before it ends.
    pub fn remove(&self, ban: &Ban) -> std::io::Result<bool> {
        let _saving = self.saving();
        let text = {
            let mut entries = self.entries();
            if entries.remove(ban).is_none() {
                return Ok(false);
            }
            self.render(&entries)
        };
        self.write(text)?;
        Ok(true)
    }

    fn saving(&self) -> std::sync::MutexGuard<'_, ()> {
        self.saving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `text` (from [`Self::render`]) as the bans file, if there is one: a
    /// new file, synced, then renamed over the old one, so that a crash leaves one
    /// or the other whole.
    fn write(&self, text: Option<String>) -> std::io::Result<()> {
        match (&self.file, text) {
            (Some(file), Some(text)) => write_synced(file, text.as_bytes()),
            _ => Ok(()),
        }
    }

    /// The bans file's text for `entries` (`None` when they are not kept in one).
    fn render(&self, entries: &HashMap<Ban, Instant>) -> Option<String> {
        self.file.as_ref()?;
        let now = (Instant::now(), SystemTime::now());
        let mut sorted: Vec<(&Ban, &Instant)> = entries.iter().collect();
        sorted.sort();
        let mut text = format!("{HEADER}\n");
        for (ban, until) in sorted {
            let left = until.saturating_duration_since(now.0).min(MAX_BAN);
            let ends = humantime::format_rfc3339_seconds(now.1 + left);
            let (kind, what) = match ban {
                Ban::Address(ip) => ("address", ip.to_string()),
                Ban::Name(name) => ("name", name.clone()),
            };
            text.push_str(&format!("{kind}\t{what}\t{ends}\n"));
        }
        Some(text)
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

/// One line of a bans file: `kind\twhat\tuntil`.
fn parse_line(line: &str) -> Option<(Ban, SystemTime)> {
    let mut fields = line.split('\t');
    let (kind, what, until) = (fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() || what.is_empty() {
        return None;
    }
    let ban = match kind {
        "address" => Ban::Address(key_of(what.parse().ok()?)),
        "name" => Ban::Name(what.to_owned()),
        _ => return None,
    };
    Some((ban, humantime::parse_rfc3339(until).ok()?))
}

/// Writes `bytes` to `file` through a synced temporary file renamed over it, then
/// syncs the directory (so the rename itself survives a crash).
fn write_synced(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = file.with_extension("new");
    let mut out = std::fs::File::create(&temporary)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&temporary, file)?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
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

    /// What is banned, as `bans` lists it.
    fn banned(bans: &Bans) -> Vec<String> {
        bans.list().iter().map(|(ban, _)| ban.to_string()).collect()
    }

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
        bans.add(Ban::parse("192.0.2.7"), Duration::from_secs(3600))
            .expect("kept in memory");
        bans.add(Ban::parse("mallory"), Duration::from_secs(60))
            .expect("kept in memory");
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
        assert_eq!(banned(&bans), ["192.0.2.7", "mallory"]);
        assert!(bans.remove(&Ban::parse("mallory")).expect("in memory"));
        assert!(!bans.remove(&Ban::parse("mallory")).expect("in memory"));
        assert_eq!(bans.check(other, &hello(Some("mallory"))), Ok(()));
        bans.add(Ban::parse("192.0.2.7"), Duration::ZERO)
            .expect("in memory");
        assert_eq!(bans.check(home, &hello(None)), Ok(()), "a ban that ended");
    }

    #[test]
    fn an_ipv6_ban_covers_its_64() {
        let bans = Bans::default();
        bans.add(Ban::parse("2001:db8:1:2::1"), Duration::from_secs(60))
            .expect("in memory");
        let neighbour: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("an address");
        assert!(bans.check(neighbour, &hello(None)).is_err());
        assert_eq!(bans.list()[0].0.to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn bans_outlive_a_restart_in_their_file_and_ended_ones_are_dropped() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("bans");
        let bans = Bans::open(file.clone()).expect("no file yet is no bans");
        bans.add(Ban::parse("mallory"), Duration::from_secs(3600))
            .expect("saved");
        bans.add(Ban::parse("2001:db8:1:2::1"), Duration::from_secs(600))
            .expect("saved");
        bans.add(Ban::parse("eve"), Duration::from_secs(60))
            .expect("saved");
        assert!(bans.remove(&Ban::parse("eve")).expect("saved"));
        drop(bans);
        let text = std::fs::read_to_string(&file).expect("the file");
        assert!(text.starts_with("# tcpchat bans"), "{text}");
        assert!(text.contains("address\t2001:db8:1:2::\t"), "{text}");

        let again = Bans::open(file.clone()).expect("read back");
        let listed: Vec<(String, u64)> = again
            .list()
            .into_iter()
            .map(|(ban, left)| (ban.to_string(), left.as_secs()))
            .collect();
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert_eq!(listed[0].0, "2001:db8:1:2::/64");
        assert!((590..=600).contains(&listed[0].1), "{listed:?}");
        assert_eq!(listed[1].0, "mallory");
        assert!((3590..=3600).contains(&listed[1].1), "{listed:?}");

        // A ban that ended while the server was down is not brought back.
        std::fs::write(
            &file,
            "name\told\t2000-01-01T00:00:00Z\nname\tnew\t2999-01-01T00:00:00Z\n",
        )
        .expect("written");
        assert_eq!(banned(&Bans::open(file).expect("read")), ["new"]);
    }

    #[test]
    fn a_ban_longer_than_a_century_is_refused_and_spoils_nothing() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("bans");
        let bans = Bans::open(file.clone()).expect("no file yet");
        let error = bans
            .add(Ban::parse("mallory"), Duration::from_secs(u64::MAX))
            .expect_err("too long");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
        assert!(bans.list().is_empty(), "nothing was banned");
        bans.add(Ban::parse("eve"), MAX_BAN)
            .expect("a century is saved");
        assert_eq!(banned(&Bans::open(file).expect("read back")), ["eve"]);
    }

    #[test]
    fn a_broken_bans_file_is_an_error_naming_its_line() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("bans");
        std::fs::write(
            &file,
            "# comment\nname\tok\t2999-01-01T00:00:00Z\nbogus line\n",
        )
        .expect("written");
        let error = format!("{:#}", Bans::open(file).expect_err("line 3 is not a ban"));
        assert!(error.contains("bans:3: not a ban"), "{error}");
    }

    #[test]
    fn a_ban_that_cannot_be_saved_is_in_force_and_says_so() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // The file's directory is gone: nothing can be written there.
        let file = dir.path().join("gone").join("bans");
        let bans = Bans::open(file).expect("no file yet");
        assert!(
            bans.add(Ban::parse("mallory"), Duration::from_secs(60))
                .is_err()
        );
        let home: IpAddr = "192.0.2.7".parse().expect("an address");
        assert!(bans.check(home, &hello(Some("mallory"))).is_err());
    }
}
