//! The server's password (`--password-hash`): who may come in at all.
//!
//! A line-mode or WebSocket client gives it in its handshake (`pass=...`); a seed
//! client cannot, so with a password it is refused unless `--allow-seed-clients`.
//! The password is kept only as an argon2 hash, and checking one costs tens of
//! milliseconds of CPU by design, so checks run on blocking threads, two at a time,
//! and an address that gets it wrong [`MAX_FAILURES`] times in [`FAILURE_WINDOW`] is
//! refused without a check until the window has passed (whatever it sends
//! meanwhile, the right password included): guessing is slow, and a flood of guesses
//! costs the server two threads, not its CPU.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use tokio::sync::Semaphore;
use tracing::warn;

use crate::config::Config;
use crate::protocol::handshake::{Hello, Mode};

/// Wrong passwords an address may send within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 5;

/// How long failures count against an address.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Password checks running at once.
const CHECKS_AT_ONCE: usize = 2;

/// Addresses tracked at most (past it, those whose failures no longer count go, then
/// the oldest).
const MAX_TRACKED: usize = 64 * 1024;

/// Why a client was not let in: a stable code and words for it.
pub type Refusal = (&'static str, String);

/// The server's password and what it remembers of wrong guesses.
#[derive(Debug)]
pub struct Password {
    /// The hash and whether seed clients may come in (a reload may change them).
    settings: Mutex<(Option<String>, bool)>,
    checks: Arc<Semaphore>,
    /// Per address (IPv6 by /64): wrong guesses, and when the first counted one came.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Password {
    /// The password of `config` (none: everyone comes in).
    pub fn new(config: &Config) -> Self {
        Self {
            settings: Mutex::new((config.password_hash.clone(), config.allow_seed_clients)),
            checks: Arc::new(Semaphore::new(CHECKS_AT_ONCE)),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `hello`, from `ip`, may come in.
    ///
    /// # Errors
    /// The [`Refusal`]: `bad-password` (wrong, missing, or a seed client) or
    /// `too-many-attempts`.
    pub async fn check(&self, ip: IpAddr, hello: &Hello) -> Result<(), Refusal> {
        let (hash, allow_seed) = self
            .settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(hash) = hash else {
            return Ok(());
        };
        if hello.mode == Mode::Seed {
            if allow_seed {
                return Ok(());
            }
            return Err((
                "bad-password",
                "this server asks for a password, which the seed protocol cannot send".to_owned(),
            ));
        }
        let key = key_of(ip);
        let locked_out = || {
            (
                "too-many-attempts",
                format!(
                    "too many wrong passwords from this address; try again in {} s",
                    FAILURE_WINDOW.as_secs()
                ),
            )
        };
        if self.is_locked_out(key) {
            return Err(locked_out());
        }
        let Some(given) = hello.options.pass.clone() else {
            self.failed(key);
            return Err((
                "bad-password",
                "this server asks for a password: add pass=PASSWORD to the handshake".to_owned(),
            ));
        };
        let permit = self.checks.clone().acquire_owned().await;
        // Again once its turn has come: guesses that waited together (up to the
        // per-address limit of connections) must not all be checked once the first
        // few have locked the address out.
        if self.is_locked_out(key) {
            return Err(locked_out());
        }
        let matched = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            verify(&hash, &given)
        })
        .await
        .unwrap_or(false);
        if matched {
            return Ok(());
        }
        self.failed(key);
        Err(("bad-password", "wrong password".to_owned()))
    }

    /// Takes `config`'s password and seed-client rule (a reload).
    pub fn reconfigure(&self, config: &Config) {
        *self
            .settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            (config.password_hash.clone(), config.allow_seed_clients);
    }

    fn is_locked_out(&self, key: IpAddr) -> bool {
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failures.get(&key).is_some_and(|(count, since)| {
            *count >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW
        })
    }

    fn failed(&self, key: IpAddr) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        if failures.len() >= MAX_TRACKED {
            // Every one counts still: the oldest goes, and the lockouts stay.
            let oldest = failures
                .iter()
                .min_by_key(|(_, (_, since))| *since)
                .map(|(key, _)| *key);
            if let Some(oldest) = oldest {
                warn!(
                    "too many addresses guessing the password to track them all; forgetting the oldest"
                );
                failures.remove(&oldest);
            }
        }
        let entry = failures.entry(key).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

/// The address failures count against: IPv4 addresses one by one, IPv6 by /64.
pub(super) fn key_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from_bits(
                v6.to_bits() & !((1u128 << 64) - 1),
            )),
        },
        v4 => v4,
    }
}

/// Whether `password` is the one `hash` was made from. Blocking: tens of ms.
fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|hash| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// The hash of `password` for `--password-hash` (argon2id, a random salt, PHC
/// format): what `tcpchat hash-password` prints.
///
/// # Errors
/// When the password cannot be one (empty, too long, with spaces or control
/// characters: a handshake's `pass=` is one word), or no randomness is available.
pub fn hash(password: &str) -> Result<String, String> {
    if password.is_empty()
        || password.len() > 128
        || password
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(
            "a password is 1 to 128 bytes, without spaces or control characters".to_owned(),
        );
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|error| format!("no randomness for a salt: {error}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|error| error.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::handshake::Options;
    use crate::room::Role;

    fn hello(mode: Mode, pass: Option<&str>) -> Hello {
        Hello {
            mode,
            role: Role::Viewer,
            name: None,
            options: Options {
                pass: pass.map(str::to_owned),
                ..Options::default()
            },
        }
    }

    fn password(hash: Option<String>, allow_seed: bool) -> Password {
        Password::new(&Config {
            password_hash: hash,
            allow_seed_clients: allow_seed,
            ..Config::default()
        })
    }

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[tokio::test]
    async fn the_right_password_lets_in_and_a_wrong_or_missing_one_does_not() {
        let password = password(Some(hash("s3cret").expect("a hash")), false);
        assert_eq!(
            password
                .check(HOME, &hello(Mode::Line, Some("s3cret")))
                .await,
            Ok(())
        );
        let wrong = password
            .check(HOME, &hello(Mode::Line, Some("guess")))
            .await;
        assert_eq!(wrong.map_err(|(code, _)| code), Err("bad-password"));
        let missing = password.check(HOME, &hello(Mode::Line, None)).await;
        assert_eq!(missing.map_err(|(code, _)| code), Err("bad-password"));
        let seed = password.check(HOME, &hello(Mode::Seed, None)).await;
        assert_eq!(seed.map_err(|(code, _)| code), Err("bad-password"));
    }

    #[tokio::test]
    async fn seed_clients_come_in_only_when_allowed_and_anyone_without_a_password() {
        let allowing = password(Some(hash("s3cret").expect("a hash")), true);
        assert_eq!(allowing.check(HOME, &hello(Mode::Seed, None)).await, Ok(()));
        let open = password(None, false);
        assert_eq!(open.check(HOME, &hello(Mode::Line, None)).await, Ok(()));
        assert_eq!(open.check(HOME, &hello(Mode::Seed, None)).await, Ok(()));
    }

    #[tokio::test]
    async fn an_address_that_keeps_guessing_is_locked_out_for_a_while() {
        let password = password(Some(hash("s3cret").expect("a hash")), false);
        for _ in 0..MAX_FAILURES {
            let refused = password
                .check(HOME, &hello(Mode::Line, Some("guess")))
                .await;
            assert_eq!(refused.map_err(|(code, _)| code), Err("bad-password"));
        }
        // Even the right one, now.
        let locked = password
            .check(HOME, &hello(Mode::Line, Some("s3cret")))
            .await;
        assert_eq!(locked.map_err(|(code, _)| code), Err("too-many-attempts"));
        // Another address is not.
        let other = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(
            password
                .check(other, &hello(Mode::Line, Some("s3cret")))
                .await,
            Ok(())
        );
        // Nor is one whose failures are older than the window.
        if let Ok(mut failures) = password.failures.lock()
            && let Some(entry) = failures.get_mut(&HOME)
        {
            entry.1 -= FAILURE_WINDOW;
        }
        assert_eq!(
            password
                .check(HOME, &hello(Mode::Line, Some("s3cret")))
                .await,
            Ok(())
        );
    }

    /// Guesses that arrive together wait for the checks together: only the first few
    /// are checked, the rest find the address locked out when their turn comes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn guesses_that_wait_together_are_not_all_checked() {
        let password = Arc::new(password(Some(hash("s3cret").expect("a hash")), false));
        let guesses: Vec<_> = (0..20)
            .map(|_| {
                let password = password.clone();
                tokio::spawn(async move {
                    password
                        .check(HOME, &hello(Mode::Line, Some("guess")))
                        .await
                        .map_err(|(code, _)| code)
                })
            })
            .collect();
        let mut checked = 0;
        for guess in guesses {
            match guess.await.expect("the check ends") {
                Err("bad-password") => checked += 1,
                Err("too-many-attempts") => {}
                other => panic!("{other:?}"),
            }
        }
        // Up to MAX_FAILURES, plus the checks already running when the last of them
        // failed.
        assert!(
            checked <= MAX_FAILURES as usize + CHECKS_AT_ONCE,
            "{checked} of 20 guesses checked"
        );
    }

    /// With every tracked address still counting, the oldest is forgotten, not every
    /// lockout at once.
    #[test]
    fn a_full_table_forgets_the_oldest_address_only() {
        let password = password(Some(hash("s3cret").expect("a hash")), false);
        for _ in 0..MAX_FAILURES {
            password.failed(HOME);
        }
        for n in 0..MAX_TRACKED as u32 {
            password.failed(IpAddr::V4(std::net::Ipv4Addr::from_bits(0x0a00_0000 + n)));
        }
        let failures = password.failures.lock().expect("the table");
        assert_eq!(failures.len(), MAX_TRACKED);
        assert!(!failures.contains_key(&HOME), "the oldest went");
        assert!(failures.contains_key(&IpAddr::V4(std::net::Ipv4Addr::from_bits(0x0a00_0001))));
    }

    #[test]
    fn a_password_must_be_one_word_and_its_hash_is_argon2id() {
        assert!(hash("two words").is_err());
        assert!(hash("").is_err());
        let made = hash("s3cret").expect("a hash");
        assert!(made.starts_with("$argon2id$"), "{made}");
        assert_ne!(made, hash("s3cret").expect("a hash"), "salted");
        assert!(verify(&made, "s3cret"));
        assert!(!verify(&made, "S3cret"));
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("an address");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("an address");
        assert_eq!(key_of(a), key_of(b));
    }
}
