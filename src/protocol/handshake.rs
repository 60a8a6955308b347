//! The first bytes of a connection: which role the client asks for, and in which mode.
//!
//! Seed mode is the original protocol: the handshake is the client's first write,
//! exactly `viewer` or `name:NAME`, with no terminator. Line mode is ours: the
//! handshake is a line ending in `\n` (or `\r\n`), may arrive in any number of pieces,
//! and may carry options after the role.
//!
//! The two can only be confused when the first read is exactly a seed handshake: a
//! line-mode client may still be about to send its `\n` (or the rest of its name). The
//! [`HandshakeReader`] reports that as [`Step::SeedCandidate`]; the transport then waits
//! a short grace period and calls [`HandshakeReader::conclude_seed`] if no newline came.
//! The reader itself knows no clock and performs no I/O.

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::room::Role;
use crate::room::name::{self, NameError};

/// How a connection is framed, chosen by its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The original protocol: no terminators in either direction.
    Seed,
    /// Newline-framed in both directions.
    Line,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Seed => "seed",
            Self::Line => "line",
        })
    }
}

/// Extras a line-mode client may ask for after its role, separated by spaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// `heartbeat`: the server sends `*** ping` after a quiet interval, so the client
    /// can tell a silent room from a dead server.
    pub heartbeat: bool,
    /// `goodbye`: the server sends `*** bye: ...` before it closes the connection
    /// because it is shutting down.
    pub goodbye: bool,
    /// `tags`: every event line carries `@seq=N;time=T[;id=TOKEN] `, the welcome
    /// carries `@seq=N`, senders get a `*** token: SECRET` and may send `@id=TOKEN `.
    pub tags: bool,
    /// `history=N`: the last N events of the log after the welcome.
    pub history: Option<u64>,
    /// `since=SEQ`: every event after SEQ after the welcome (wins over `history`).
    pub since: Option<u64>,
    /// `token=SECRET`: take the name over from the connection that holds it.
    pub token: Option<String>,
    /// `members`: the names in the room, after the welcome.
    pub members: bool,
    /// `pass=PASSWORD`: the server's password, where it asks for one.
    pub pass: Option<String>,
}

/// Words an option may be (a bare word, or a `key=` followed by its value).
const OPTIONS: [&str; 8] = [
    "heartbeat",
    "goodbye",
    "tags",
    "members",
    "history=",
    "since=",
    "token=",
    "pass=",
];

impl Options {
    /// Sets the option `word`.
    ///
    /// # Errors
    /// [`HandshakeError::UnknownOption`] or [`HandshakeError::BadOption`].
    fn set(&mut self, word: &str) -> Result<(), HandshakeError> {
        let bad = |why: &str| HandshakeError::BadOption(format!("{word:?}: {why}"));
        let number = |value: &str| {
            value
                .parse::<u64>()
                .map_err(|_| bad("expected a whole number"))
        };
        match word.split_once('=') {
            None if word == "heartbeat" => self.heartbeat = true,
            None if word == "goodbye" => self.goodbye = true,
            None if word == "tags" => self.tags = true,
            None if word == "members" => self.members = true,
            Some(("history", value)) => self.history = Some(number(value)?),
            Some(("since", value)) => self.since = Some(number(value)?),
            // Not echoed: whatever was sent as a secret stays out of replies and logs.
            Some(("token", value)) if value.is_empty() || value.len() > MAX_TOKEN_CHARS => {
                return Err(HandshakeError::BadOption(
                    "token=...: a token is 1 to 64 characters".to_owned(),
                ));
            }
            Some(("token", value)) => self.token = Some(value.to_owned()),
            Some(("pass", value)) if value.is_empty() || value.len() > MAX_PASSWORD_BYTES => {
                return Err(HandshakeError::BadOption(format!(
                    "pass=...: a password is 1 to {MAX_PASSWORD_BYTES} bytes"
                )));
            }
            Some(("pass", value)) => self.pass = Some(value.to_owned()),
            _ => return Err(HandshakeError::UnknownOption(word.to_owned())),
        }
        Ok(())
    }

    /// The options as handshake words (without the role), each preceded by a space.
    pub fn to_words(&self) -> String {
        let mut words = String::new();
        for (wanted, word) in [
            (self.heartbeat, "heartbeat"),
            (self.goodbye, "goodbye"),
            (self.tags, "tags"),
            (self.members, "members"),
        ] {
            if wanted {
                words.push(' ');
                words.push_str(word);
            }
        }
        for (value, key) in [(self.history, "history"), (self.since, "since")] {
            if let Some(value) = value {
                words.push_str(&format!(" {key}={value}"));
            }
        }
        if let Some(token) = &self.token {
            words.push_str(&format!(" token={token}"));
        }
        if let Some(pass) = &self.pass {
            words.push_str(&format!(" pass={pass}"));
        }
        words
    }
}

/// Longest `pass=` value.
const MAX_PASSWORD_BYTES: usize = 128;

/// Longest `token=` value.
const MAX_TOKEN_CHARS: usize = 64;

/// A successful handshake: what the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Framing for the rest of the connection.
    pub mode: Mode,
    /// What the client asked to be.
    pub role: Role,
    /// The messenger's or chatter's name (already checked by [`name::validate`]).
    pub name: Option<String>,
    /// Line-mode extras; always empty in seed mode.
    pub options: Options,
}

/// Why a handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// Neither `viewer`, `name:NAME` nor `chat:NAME`.
    #[error("expected \"viewer\", \"name:NAME\" or \"chat:NAME\"")]
    Unknown,
    /// The handshake is longer than the limit.
    #[error("a handshake is limited to {max_bytes} bytes")]
    TooLong {
        /// The limit, in bytes.
        max_bytes: usize,
    },
    /// The name breaks a rule.
    #[error(transparent)]
    BadName(#[from] NameError),
    /// An option this server does not know.
    #[error(
        "unknown option {0:?} (known: heartbeat, goodbye, tags, members, history=N, since=SEQ, token=SECRET)"
    )]
    UnknownOption(String),
    /// A known option with a value it cannot take.
    #[error("bad option {0}")]
    BadOption(String),
    /// The handshake is not UTF-8.
    #[error("a handshake must be UTF-8 text")]
    NotUtf8,
    /// The client did not finish its handshake in time.
    #[error("no handshake received in time")]
    TimedOut,
}

impl HandshakeError {
    /// The stable code that line-mode error notices carry.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown-handshake",
            Self::TooLong { .. } => "handshake-too-long",
            Self::BadName(NameError::Empty) => "name-empty",
            Self::BadName(NameError::TooLong { .. }) => "name-too-long",
            Self::BadName(NameError::Forbidden(_)) => "name-invalid",
            Self::UnknownOption(_) => "unknown-option",
            Self::BadOption(_) => "bad-option",
            Self::NotUtf8 => "not-utf8",
            Self::TimedOut => "handshake-timeout",
        }
    }
}

/// The end of a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The client is accepted as `hello` says, pending the room's own rules
    /// (a taken name is the room's call, not the protocol's).
    Hello {
        /// What was asked for.
        hello: Hello,
        /// Bytes that came after the handshake: in line mode one chunk to frame as
        /// usual; in seed mode one message per read, as the original saw them.
        rest: Vec<Bytes>,
    },
    /// The client is refused; in line mode it should be told why.
    Refused {
        /// Whether to send an error line (line mode) or close silently (seed mode).
        mode: Mode,
        /// What was wrong.
        error: HandshakeError,
    },
}

/// What to do after feeding bytes to a [`HandshakeReader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Read more bytes.
    NeedMore,
    /// The first read is exactly a seed-mode handshake. Returned once. Start the seed
    /// grace timer; call [`HandshakeReader::conclude_seed`] when it elapses or the peer
    /// closes, unless a later push returns [`Step::Done`] first. `name` is the name a
    /// seed messenger asked for, when it is valid, so the transport can hold it at once.
    SeedCandidate {
        /// The role asked for.
        role: Role,
        /// The name, if any and valid.
        name: Option<String>,
    },
    /// Finished.
    Done(Outcome),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing received yet.
    Start,
    /// Known to be line mode; waiting for `\n`.
    Line,
    /// The first read (`first_read` bytes) is a complete seed handshake.
    SeedCandidate { first_read: usize },
    /// An outcome was returned.
    Done,
}

/// Accumulates a connection's first bytes until its handshake is decided.
#[derive(Debug)]
pub struct HandshakeReader {
    buf: BytesMut,
    /// Where each read after the first one began (seed mode posts each as a message).
    read_starts: Vec<usize>,
    state: State,
    max_bytes: usize,
    max_name_chars: usize,
    /// Whether a first read may be taken as a seed handshake.
    seed_allowed: bool,
}

impl HandshakeReader {
    /// A reader for handshakes of at most `max_bytes` with names of at most
    /// `max_name_chars` characters.
    pub fn new(max_bytes: usize, max_name_chars: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            read_starts: Vec::new(),
            state: State::Start,
            max_bytes,
            max_name_chars,
            seed_allowed: true,
        }
    }

    /// A reader for a transport that has no seed clients (TLS: the original clients
    /// cannot speak it): every handshake is a line, and a first read that happens to
    /// look like a seed handshake simply waits for its newline.
    pub fn line_only(max_bytes: usize, max_name_chars: usize) -> Self {
        Self {
            seed_allowed: false,
            ..Self::new(max_bytes, max_name_chars)
        }
    }

    /// Feeds the bytes of one read (never empty: end of stream is not a read).
    pub fn push(&mut self, bytes: &[u8]) -> Step {
        let searched_from = self.buf.len();
        self.buf.extend_from_slice(bytes);
        let newline =
            memchr::memchr(b'\n', &self.buf[searched_from..]).map(|at| at + searched_from);
        if self.state == State::Done {
            return Step::NeedMore;
        }
        if let Some(newline) = newline {
            return self.finish_line(newline);
        }
        match self.state {
            State::Done => Step::NeedMore,
            State::Start => self.first_read(),
            State::Line => self.push_line_in_progress(),
            State::SeedCandidate { .. } => {
                self.read_starts.push(searched_from);
                // Too long for a line handshake: only seed mode remains possible.
                if self.buf.len() > self.max_bytes {
                    Step::Done(self.conclude_seed())
                } else {
                    Step::NeedMore
                }
            }
        }
    }

    /// Decides for seed mode: the grace period elapsed (or the peer closed) with no
    /// newline, so the first read was the whole handshake, as in the original.
    pub fn conclude_seed(&mut self) -> Outcome {
        let State::SeedCandidate { first_read } = self.state else {
            self.state = State::Done;
            return Outcome::Refused {
                mode: Mode::Seed,
                error: HandshakeError::Unknown,
            };
        };
        self.state = State::Done;
        let mut buf = std::mem::take(&mut self.buf);
        let mut rest = Vec::with_capacity(self.read_starts.len());
        for &start in self.read_starts.iter().rev() {
            rest.push(buf.split_off(start).freeze());
        }
        rest.reverse();
        buf.truncate(first_read);
        match parse_seed(&buf, self.max_name_chars) {
            Ok(hello) => Outcome::Hello { hello, rest },
            Err(error) => Outcome::Refused {
                mode: Mode::Seed,
                error,
            },
        }
    }

    /// The outcome when the handshake deadline passes: refused, with an error line
    /// unless the client looks like a seed client.
    pub fn timed_out(&mut self) -> Outcome {
        let mode = match self.state {
            State::SeedCandidate { .. } => Mode::Seed,
            _ => Mode::Line,
        };
        self.state = State::Done;
        Outcome::Refused {
            mode,
            error: HandshakeError::TimedOut,
        }
    }

    /// More of a line handshake without its newline: wait, within the size limit.
    fn push_line_in_progress(&mut self) -> Step {
        if self.buf.len() > self.max_bytes {
            let max_bytes = self.max_bytes;
            return self.refuse(Mode::Line, HandshakeError::TooLong { max_bytes });
        }
        Step::NeedMore
    }

    fn refuse(&mut self, mode: Mode, error: HandshakeError) -> Step {
        self.state = State::Done;
        Step::Done(Outcome::Refused { mode, error })
    }

    fn first_read(&mut self) -> Step {
        if !self.seed_allowed {
            self.state = State::Line;
            return self.push_line_in_progress();
        }
        let classified = classify_first_read(&self.buf, self.max_name_chars);
        if self.buf.len() > self.max_bytes {
            let max_bytes = self.max_bytes;
            let mode = match classified {
                FirstRead::LineInProgress => Mode::Line,
                _ => Mode::Seed,
            };
            return self.refuse(mode, HandshakeError::TooLong { max_bytes });
        }
        match classified {
            FirstRead::Seed { role, name } => {
                self.state = State::SeedCandidate {
                    first_read: self.buf.len(),
                };
                Step::SeedCandidate { role, name }
            }
            FirstRead::LineInProgress => {
                self.state = State::Line;
                Step::NeedMore
            }
            FirstRead::Invalid(error) => self.refuse(Mode::Seed, error),
        }
    }

    fn finish_line(&mut self, newline: usize) -> Step {
        if newline > self.max_bytes {
            let max_bytes = self.max_bytes;
            return self.refuse(Mode::Line, HandshakeError::TooLong { max_bytes });
        }
        let rest = self.buf.split_off(newline + 1).freeze();
        let line = &self.buf[..newline];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let step = match parse_line(line, self.max_name_chars) {
            Ok(hello) => Step::Done(Outcome::Hello {
                hello,
                rest: vec![rest],
            }),
            Err(error) => Step::Done(Outcome::Refused {
                mode: Mode::Line,
                error,
            }),
        };
        self.state = State::Done;
        self.buf = BytesMut::new();
        step
    }
}

enum FirstRead {
    Seed { role: Role, name: Option<String> },
    LineInProgress,
    Invalid(HandshakeError),
}

const VIEWER: &[u8] = b"viewer";
const NAME: &[u8] = b"name:";
const CHAT: &[u8] = b"chat:";

/// Classifies a first read that holds no newline.
fn classify_first_read(bytes: &[u8], max_name_chars: usize) -> FirstRead {
    if bytes == VIEWER {
        return FirstRead::Seed {
            role: Role::Viewer,
            name: None,
        };
    }
    let is_strict_prefix = [VIEWER, NAME, CHAT]
        .iter()
        .any(|keyword| keyword.len() > bytes.len() && keyword.starts_with(bytes));
    let viewer_with_more = bytes.starts_with(VIEWER) && matches!(bytes.get(6), Some(b' ' | b'\r'));
    if is_strict_prefix || viewer_with_more || bytes.starts_with(CHAT) {
        return FirstRead::LineInProgress;
    }
    let Some(rest) = bytes.strip_prefix(NAME) else {
        return FirstRead::Invalid(HandshakeError::Unknown);
    };
    if rest.ends_with(b"\r") {
        return FirstRead::LineInProgress;
    }
    let text = match std::str::from_utf8(rest) {
        Ok(text) => text,
        // A character cut short at the end: more bytes are on the way.
        Err(e) if e.error_len().is_none() => return FirstRead::LineInProgress,
        Err(_) => return FirstRead::Invalid(HandshakeError::NotUtf8),
    };
    if let Some((_, options)) = text.split_once(' ') {
        return if could_be_options(options) {
            FirstRead::LineInProgress
        } else {
            FirstRead::Invalid(NameError::Forbidden(name::ForbiddenChar(' ')).into())
        };
    }
    match name::validate(text, max_name_chars) {
        Ok(()) => FirstRead::Seed {
            role: Role::Messenger,
            name: Some(text.to_owned()),
        },
        // `name:` may yet be followed by `bob\n`: decide after the grace period.
        Err(NameError::Empty) => FirstRead::Seed {
            role: Role::Messenger,
            name: None,
        },
        Err(e) => FirstRead::Invalid(e.into()),
    }
}

/// Whether `text` could be the beginning of a list of options.
fn could_be_options(text: &str) -> bool {
    text.split(' ').all(|word| {
        OPTIONS.iter().any(|option| {
            option.starts_with(word) || (option.ends_with('=') && word.starts_with(option))
        })
    })
}

/// Parses a complete line-mode handshake (without its terminator).
fn parse_line(line: &[u8], max_name_chars: usize) -> Result<Hello, HandshakeError> {
    let line = std::str::from_utf8(line).map_err(|_| HandshakeError::NotUtf8)?;
    let mut words = line.split(' ');
    let head = words.next().unwrap_or_default();
    let (role, name) = if head == "viewer" {
        (Role::Viewer, None)
    } else if let Some(name) = head.strip_prefix("name:") {
        (Role::Messenger, Some(name))
    } else if let Some(name) = head.strip_prefix("chat:") {
        (Role::Chatter, Some(name))
    } else {
        return Err(HandshakeError::Unknown);
    };
    if let Some(name) = name {
        name::validate(name, max_name_chars)?;
    }
    let mut options = Options::default();
    for word in words.filter(|word| !word.is_empty()) {
        match options.set(word) {
            Ok(()) => {}
            // After a name, an unknown word is most likely the rest of a name with a
            // space in it, and that is what the person needs to hear.
            Err(HandshakeError::UnknownOption(_)) if name.is_some() => {
                return Err(NameError::Forbidden(name::ForbiddenChar(' ')).into());
            }
            Err(error) => return Err(error),
        }
    }
    Ok(Hello {
        mode: Mode::Line,
        role,
        name: name.map(str::to_owned),
        options,
    })
}

/// Parses a seed-mode handshake: the whole first read.
fn parse_seed(bytes: &[u8], max_name_chars: usize) -> Result<Hello, HandshakeError> {
    let (role, name) = if bytes == VIEWER {
        (Role::Viewer, None)
    } else if let Some(name) = bytes.strip_prefix(NAME) {
        let name = std::str::from_utf8(name).map_err(|_| HandshakeError::NotUtf8)?;
        name::validate(name, max_name_chars)?;
        (Role::Messenger, Some(name.to_owned()))
    } else {
        return Err(HandshakeError::Unknown);
    };
    Ok(Hello {
        mode: Mode::Seed,
        role,
        name,
        options: Options::default(),
    })
}

/// The line a client sends to ask for `role` (with `name` for messengers and
/// chatters) and `options`, in line mode.
pub fn encode_line_handshake(role: Role, name: Option<&str>, options: &Options) -> String {
    let mut line = match (role, name) {
        (Role::Viewer, _) => "viewer".to_owned(),
        (Role::Messenger, name) => format!("name:{}", name.unwrap_or_default()),
        (Role::Chatter, name) => format!("chat:{}", name.unwrap_or_default()),
    };
    line.push_str(&options.to_words());
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 64;

    fn reader() -> HandshakeReader {
        HandshakeReader::new(MAX, 16)
    }

    fn line_hello(role: Role, name: Option<&str>, options: Options) -> Hello {
        Hello {
            mode: Mode::Line,
            role,
            name: name.map(str::to_owned),
            options,
        }
    }

    fn accepted(hello: Hello, rest: &[&'static [u8]]) -> Step {
        Step::Done(Outcome::Hello {
            hello,
            rest: rest.iter().map(|r| Bytes::from_static(r)).collect(),
        })
    }

    fn refused(mode: Mode, error: HandshakeError) -> Step {
        Step::Done(Outcome::Refused { mode, error })
    }

    /// Pushes `pieces` one read at a time and returns the last step.
    fn feed(pieces: &[&[u8]]) -> Step {
        let mut reader = reader();
        let mut step = Step::NeedMore;
        for piece in pieces {
            step = reader.push(piece);
            if matches!(step, Step::Done(_)) {
                break;
            }
        }
        step
    }

    #[test]
    fn line_handshakes_are_understood() {
        let none = Options::default();
        let table: &[(&[u8], Step)] = &[
            (
                b"viewer\n",
                accepted(line_hello(Role::Viewer, None, none.clone()), &[b""]),
            ),
            (
                b"viewer\r\n",
                accepted(line_hello(Role::Viewer, None, none.clone()), &[b""]),
            ),
            (
                b"name:alice\nhello\n",
                accepted(
                    line_hello(Role::Messenger, Some("alice"), none.clone()),
                    &[b"hello\n"],
                ),
            ),
            (
                b"chat:bob heartbeat goodbye\r\n",
                accepted(
                    line_hello(
                        Role::Chatter,
                        Some("bob"),
                        Options {
                            heartbeat: true,
                            goodbye: true,
                            ..Options::default()
                        },
                    ),
                    &[b""],
                ),
            ),
            (
                b"chat:bob tags since=1200 token=Ab-9 history=20\n",
                accepted(
                    line_hello(
                        Role::Chatter,
                        Some("bob"),
                        Options {
                            tags: true,
                            since: Some(1200),
                            history: Some(20),
                            token: Some("Ab-9".into()),
                            ..Options::default()
                        },
                    ),
                    &[b""],
                ),
            ),
        ];
        for (input, want) in table {
            assert_eq!(
                &feed(&[input]),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn line_refusals_say_why() {
        let table: &[(&[u8], HandshakeError)] = &[
            (b"hello\n", HandshakeError::Unknown),
            (b"VIEWER\n", HandshakeError::Unknown),
            (b"name:\n", NameError::Empty.into()),
            (
                b"name:John Smith\n",
                NameError::Forbidden(name::ForbiddenChar(' ')).into(),
            ),
            (
                b"name:bob heartbeat goodbye typo\n",
                NameError::Forbidden(name::ForbiddenChar(' ')).into(),
            ),
            (
                b"name:a:b\n",
                NameError::Forbidden(name::ForbiddenChar(':')).into(),
            ),
            (
                b"name:abcdefghijklmnopq\n",
                NameError::TooLong { max_chars: 16 }.into(),
            ),
            (
                b"viewer loud\n",
                HandshakeError::UnknownOption("loud".to_owned()),
            ),
            (b"name:\xff\n", HandshakeError::NotUtf8),
        ];
        for (input, error) in table {
            assert_eq!(
                feed(&[input]),
                refused(Mode::Line, error.clone()),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn an_exact_seed_handshake_is_a_candidate_until_concluded() {
        let mut r = reader();
        assert_eq!(
            r.push(b"viewer"),
            Step::SeedCandidate {
                role: Role::Viewer,
                name: None
            }
        );
        assert_eq!(
            r.conclude_seed(),
            Outcome::Hello {
                hello: Hello {
                    mode: Mode::Seed,
                    role: Role::Viewer,
                    name: None,
                    options: Options::default()
                },
                rest: vec![]
            }
        );

        let mut r = reader();
        assert_eq!(
            r.push(b"name:alice"),
            Step::SeedCandidate {
                role: Role::Messenger,
                name: Some("alice".to_owned())
            }
        );
        // Later reads are seed messages, one per read, as the original saw them.
        assert_eq!(r.push(b"hello"), Step::NeedMore);
        assert_eq!(r.push(b"world"), Step::NeedMore);
        let Outcome::Hello { hello, rest } = r.conclude_seed() else {
            panic!("refused")
        };
        assert_eq!(hello.mode, Mode::Seed);
        assert_eq!(hello.name.as_deref(), Some("alice"));
        assert_eq!(rest, vec![Bytes::from("hello"), Bytes::from("world")]);
    }

    #[test]
    fn a_newline_after_a_seed_candidate_makes_it_line_mode() {
        let none = Options::default();
        assert_eq!(
            feed(&[b"viewer", b"\n"]),
            accepted(line_hello(Role::Viewer, None, none.clone()), &[b""])
        );
        assert_eq!(
            feed(&[b"name:al", b"ice\r\n", b"hi\n"]),
            accepted(
                line_hello(Role::Messenger, Some("alice"), none.clone()),
                &[b""]
            )
        );
        assert_eq!(
            feed(&[b"name:", b"bob\n"]),
            accepted(
                line_hello(Role::Messenger, Some("bob"), none.clone()),
                &[b""]
            )
        );
    }

    #[test]
    fn a_seed_candidate_with_an_empty_name_is_refused_silently() {
        let mut r = reader();
        assert_eq!(
            r.push(b"name:"),
            Step::SeedCandidate {
                role: Role::Messenger,
                name: None
            }
        );
        assert_eq!(
            r.conclude_seed(),
            Outcome::Refused {
                mode: Mode::Seed,
                error: NameError::Empty.into()
            }
        );
    }

    #[test]
    fn seed_refusals_are_immediate_and_silent() {
        let table: &[(&[u8], HandshakeError)] = &[
            (b"hello", HandshakeError::Unknown),
            (b"viewers", HandshakeError::Unknown),
            (
                b"name:John Smith",
                NameError::Forbidden(name::ForbiddenChar(' ')).into(),
            ),
            (
                b"name:a\x1bb",
                NameError::Forbidden(name::ForbiddenChar('\u{1b}')).into(),
            ),
            (
                b"name:abcdefghijklmnopq",
                NameError::TooLong { max_chars: 16 }.into(),
            ),
            (b"name:\xff", HandshakeError::NotUtf8),
        ];
        for (input, error) in table {
            assert_eq!(
                feed(&[input]),
                refused(Mode::Seed, error.clone()),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn partial_first_reads_wait_for_the_line() {
        for partial in [
            &b"v"[..],
            b"view",
            b"n",
            b"name",
            b"chat:bo",
            b"viewer ",
            b"viewer\r",
            b"viewer heart",
            b"name:al\r",
            b"name:al good",
            b"name:\xc3",
        ] {
            assert_eq!(feed(&[partial]), Step::NeedMore, "{partial:?}");
        }
    }

    #[test]
    fn size_limit_holds_at_the_bound() {
        let at = format!("viewer{}\n", " ".repeat(MAX - 6));
        assert!(matches!(
            feed(&[at.as_bytes()]),
            Step::Done(Outcome::Hello { .. })
        ));
        let past = format!("viewer{}\n", " ".repeat(MAX - 5));
        let too_long = HandshakeError::TooLong { max_bytes: MAX };
        assert_eq!(
            feed(&[past.as_bytes()]),
            refused(Mode::Line, too_long.clone())
        );
        // Without its newline, a long first read is refused in the mode it looks like.
        let line_ish = &past.as_bytes()[..MAX + 1];
        assert_eq!(feed(&[line_ish]), refused(Mode::Line, too_long.clone()));
        let seed_ish = format!("name:{}", "x".repeat(MAX));
        assert_eq!(
            feed(&[seed_ish.as_bytes()]),
            refused(Mode::Seed, too_long.clone())
        );
        // In pieces: refused as soon as the limit is passed, without a newline.
        let pieces: Vec<&[u8]> = past.as_bytes()[..MAX + 1].chunks(5).collect();
        assert_eq!(feed(&pieces), refused(Mode::Line, too_long));
    }

    #[test]
    fn a_long_seed_message_during_the_grace_concludes_seed_mode() {
        let mut r = reader();
        assert!(matches!(r.push(b"name:amy"), Step::SeedCandidate { .. }));
        let long = [b'x'; MAX];
        let Step::Done(Outcome::Hello { hello, rest }) = r.push(&long) else {
            panic!("not concluded")
        };
        assert_eq!(hello.mode, Mode::Seed);
        assert_eq!(rest, vec![Bytes::copy_from_slice(&long)]);
    }

    #[test]
    fn a_line_only_reader_never_takes_a_first_read_for_a_seed_handshake() {
        let mut r = HandshakeReader::line_only(MAX, 16);
        assert_eq!(r.push(b"viewer"), Step::NeedMore);
        assert_eq!(
            r.push(b"\n"),
            accepted(line_hello(Role::Viewer, None, Options::default()), &[b""])
        );
        let mut r = HandshakeReader::line_only(MAX, 16);
        assert_eq!(r.push(b"name:amy"), Step::NeedMore);
        assert_eq!(
            r.timed_out(),
            Outcome::Refused {
                mode: Mode::Line,
                error: HandshakeError::TimedOut
            }
        );
        // Garbage is refused with an error line once its line is complete.
        let mut r = HandshakeReader::line_only(MAX, 16);
        assert_eq!(r.push(b"hello"), Step::NeedMore);
        assert_eq!(r.push(b"\n"), refused(Mode::Line, HandshakeError::Unknown));
        let mut r = HandshakeReader::line_only(MAX, 16);
        assert_eq!(
            r.push(&[b'x'; MAX + 1]),
            refused(Mode::Line, HandshakeError::TooLong { max_bytes: MAX })
        );
    }

    #[test]
    fn timeouts_tell_line_clients_and_spare_seed_clients() {
        let mut silent = reader();
        assert_eq!(
            silent.timed_out(),
            Outcome::Refused {
                mode: Mode::Line,
                error: HandshakeError::TimedOut
            }
        );
        let mut seed = reader();
        seed.push(b"viewer");
        assert!(matches!(
            seed.timed_out(),
            Outcome::Refused {
                mode: Mode::Seed,
                ..
            }
        ));
    }

    #[test]
    fn client_handshakes_round_trip() {
        let options = Options {
            heartbeat: true,
            tags: true,
            since: Some(7),
            token: Some("t0k".into()),
            ..Options::default()
        };
        let line = encode_line_handshake(Role::Chatter, Some("zoë"), &options);
        assert_eq!(line, "chat:zoë heartbeat tags since=7 token=t0k\n");
        assert_eq!(
            feed(&[line.as_bytes()]),
            accepted(line_hello(Role::Chatter, Some("zoë"), options), &[b""])
        );
    }

    proptest! {
        /// A line handshake gives the same outcome however it is split, as long as
        /// its first read is not itself an exact seed handshake.
        #[test]
        fn any_split_of_a_line_handshake_agrees(
            line in prop_oneof![
                Just(b"viewer\n".to_vec()),
                Just(b"name:alice\r\nhi\n".to_vec()),
                Just(b"chat:bob goodbye\n".to_vec()),
                Just(b"name:a b\n".to_vec()),
                proptest::collection::vec(any::<u8>(), 1..80),
            ],
            cut in 1usize..80,
        ) {
            let cut = cut.min(line.len());
            let whole = reader().push(&line);
            let (first, second) = line.split_at(cut);
            let mut split_reader = reader();
            let mut split = split_reader.push(first);
            if matches!(split, Step::SeedCandidate { .. }) {
                return Ok(());
            }
            if let Step::Done(Outcome::Hello { rest, .. }) = &mut split {
                // What arrives after the handshake is the transport's to frame.
                rest.push(Bytes::copy_from_slice(second));
            } else if split == Step::NeedMore && !second.is_empty() {
                split = split_reader.push(second);
            }
            // Refusals of a first read are decided before later pieces arrive; only
            // accepted outcomes must match, up to how `rest` was cut.
            if let Step::Done(Outcome::Hello { hello, rest }) = whole {
                let Step::Done(Outcome::Hello { hello: split_hello, rest: split_rest }) = split else {
                    return Err(TestCaseError::fail(format!("{split:?}")));
                };
                prop_assert_eq!(split_hello, hello);
                prop_assert_eq!(split_rest.concat(), rest.concat());
            }
        }
    }
}
