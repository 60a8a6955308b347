//! Events and server notices as bytes on the wire, once per [`Format`].
//!
//! A format is data: one variant per way of writing the room's events, and every
//! per-format value the server keeps (the ring's batches, its offsets, the welcome)
//! is a [`PerFormat`] indexed by it. Adding a format is adding a variant and its
//! encoder here; nothing else names the formats one by one.
//!
//! Seed format writes the original's texts with no terminator; line format writes the
//! same texts, each followed by `\n`, and adds notices, lines that start with `*** `
//! (which no chat line can, since names may not start with `*`). Performs no I/O.

use std::ops::{Index, IndexMut};

use bytes::{BufMut, Bytes, BytesMut};

use super::handshake::Mode;
use super::websocket;
use crate::room::{Event, EventKind};

/// How the server writes events to a receiver.
///
/// Separate from [`Mode`], which is how a client's handshake was framed: today each
/// mode has one format, but a format is chosen per receiver (a line-mode client may
/// ask for tagged lines, a WebSocket client gets frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// The original's texts, no terminator, no notices.
    Seed,
    /// The seed texts, each ending in `\n`, plus `*** ` notices.
    Line,
    /// Line format with IRCv3-style tags before each event's text:
    /// `@seq=N;time=T[;id=TOKEN] TEXT\n` (`tags`).
    Tagged,
    /// Line format over WebSocket: each line one text frame, without its `\n`.
    WebSocket,
    /// Tagged line format over WebSocket.
    TaggedWebSocket,
}

impl Format {
    /// Every format, in [`Format::index`] order.
    pub const ALL: [Self; 5] = [
        Self::Seed,
        Self::Line,
        Self::Tagged,
        Self::WebSocket,
        Self::TaggedWebSocket,
    ];

    /// How many formats there are.
    pub const COUNT: usize = Self::ALL.len();

    /// A dense index, for arrays of per-format values.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The format a client of `mode` receives, with tags if it asked for them (line
    /// mode only: a seed client cannot ask).
    pub fn of(mode: Mode, tags: bool) -> Self {
        match mode {
            Mode::Seed => Self::Seed,
            Mode::Line if tags => Self::Tagged,
            Mode::Line => Self::Line,
        }
    }

    /// The mode of the handshake a receiver of this format made (WebSocket clients
    /// make a line-mode one).
    pub fn mode(self) -> Mode {
        match self {
            Self::Seed => Mode::Seed,
            Self::Line | Self::Tagged | Self::WebSocket | Self::TaggedWebSocket => Mode::Line,
        }
    }

    /// The format of a WebSocket client, with tags if it asked for them.
    pub fn websocket(tags: bool) -> Self {
        if tags {
            Self::TaggedWebSocket
        } else {
            Self::WebSocket
        }
    }

    /// Whether this format can carry notices (`*** ok`, `*** error`, ...). Seed
    /// clients never get anything the original server would not have sent.
    pub fn has_notices(self) -> bool {
        self != Self::Seed
    }

    /// Whether the bytes are WebSocket frames, which must be written whole: a
    /// connection cut mid-frame can take no further frame.
    pub fn is_framed(self) -> bool {
        matches!(self, Self::WebSocket | Self::TaggedWebSocket)
    }

    /// The line format a framed format carries, one line per frame.
    fn lines(self) -> Self {
        match self {
            Self::WebSocket => Self::Line,
            Self::TaggedWebSocket => Self::Tagged,
            other => other,
        }
    }

    /// Appends the text of `event` to `out`, as this format writes it.
    pub fn encode(self, event: &Event, out: &mut BytesMut) {
        if self.is_framed() {
            // The line, then its frame: the header holds the length. Once per event
            // and format, so the copy costs nothing next to the writes it feeds.
            let mut line = BytesMut::with_capacity(128);
            self.lines().encode(event, &mut line);
            websocket::put_text(out, line.strip_suffix(b"\n").unwrap_or(&line));
            return;
        }
        if self == Self::Tagged {
            write_tags(event, out);
        }
        match &event.kind {
            EventKind::Joined { name } => {
                out.put_slice(name.as_bytes());
                out.put_slice(b" has joined the chat.");
            }
            EventKind::Posted { name, text } => {
                out.put_slice(name.as_bytes());
                out.put_slice(b": ");
                out.put_slice(text.as_bytes());
            }
            // No final period: the original's text, kept byte for byte.
            EventKind::Left { name } => {
                out.put_slice(name.as_bytes());
                out.put_slice(b" has left the chat");
            }
        }
        if self != Self::Seed {
            out.put_u8(b'\n');
        }
    }

    /// The greeting a receiver gets when it joins. In tagged format it starts with
    /// `@seq=N `, the number of the last event in the room (`last_seq`), so a client
    /// always knows where it stands.
    pub fn welcome(self, chat_name: &str, last_seq: u64) -> Bytes {
        let text = format!("Welcome to the \"{chat_name}\" Chat Server!");
        Bytes::from(match self {
            Self::Seed => text,
            Self::Line => format!("{text}\n"),
            Self::Tagged => format!("@seq={last_seq} {text}\n"),
            Self::WebSocket | Self::TaggedWebSocket => {
                return websocket::text_frames(&self.lines().welcome(chat_name, last_seq));
            }
        })
    }

    /// `notice` as this format writes it, or `None` if the format has no notices.
    pub fn notice(self, notice: &Notice) -> Option<Bytes> {
        if self.is_framed() {
            return Some(websocket::text_frames(&notice.to_line()));
        }
        self.has_notices().then(|| notice.to_line())
    }

    /// What the heartbeat sends on a quiet connection: `*** ping`; over WebSocket a
    /// WebSocket ping, which browsers answer by themselves, followed by `*** ping`
    /// (which a page's script, unlike the ping, sees) if the client `asked` for
    /// heartbeats.
    pub fn ping(self, asked: bool) -> Bytes {
        match (self.is_framed(), asked) {
            (false, _) => Notice::Ping.to_line(),
            (true, false) => Bytes::from_static(&websocket::PING_FRAME),
            (true, true) => {
                let mut both = BytesMut::from(&websocket::PING_FRAME[..]);
                websocket::put_text(&mut both, b"*** ping");
                both.freeze()
            }
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Seed => "seed",
            Self::Line => "line",
            Self::Tagged => "tagged",
            Self::WebSocket => "websocket",
            Self::TaggedWebSocket => "tagged-websocket",
        })
    }
}

/// `@seq=N;time=T[;id=TOKEN] `: T in UTC with milliseconds.
fn write_tags(event: &Event, out: &mut BytesMut) {
    use std::fmt::Write;
    out.put_slice(b"@seq=");
    // Writing into a BytesMut cannot fail.
    let _ = write!(out, "{}", event.seq);
    out.put_slice(b";time=");
    write_time(event.time_ms, out);
    if let Some(id) = &event.id {
        out.put_slice(b";id=");
        out.put_slice(id.as_bytes());
    }
    out.put_u8(b' ');
}

/// `2026-11-29T05:41:07.123Z`. Events come many to a second, so the date and time
/// of the last second written are kept (per thread) and only the milliseconds are
/// written anew: a replay of thousands of lines spends its time on the lines.
fn write_time(time_ms: u64, out: &mut BytesMut) {
    use std::cell::Cell;
    thread_local! {
        static LAST_SECOND: Cell<Option<(u64, [u8; 19])>> = const { Cell::new(None) };
    }
    let (seconds, millis) = (time_ms / 1000, time_ms % 1000);
    let prefix = match LAST_SECOND.get() {
        Some((cached, prefix)) if cached == seconds => prefix,
        _ => {
            let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
            // `2026-11-29T05:41:07Z`: the first 19 bytes are the date and time.
            let text = humantime::format_rfc3339_seconds(time).to_string();
            let mut prefix = [b'0'; 19];
            if let Some(head) = text.as_bytes().get(..19) {
                prefix.copy_from_slice(head);
            }
            LAST_SECOND.set(Some((seconds, prefix)));
            prefix
        }
    };
    out.put_slice(&prefix);
    let millis = [
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ];
    out.put_slice(&millis);
}

/// One value per [`Format`], indexed by it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerFormat<T>([T; Format::COUNT]);

impl<T: Copy> PerFormat<T> {
    /// The same value for every format.
    pub const fn splat(value: T) -> Self {
        Self([value; Format::COUNT])
    }
}

impl<T> PerFormat<T> {
    /// The value `f(format)` for every format.
    pub fn from_fn(mut f: impl FnMut(Format) -> T) -> Self {
        Self(std::array::from_fn(|i| f(Format::ALL[i])))
    }

    /// Every format with its value.
    pub fn iter(&self) -> impl Iterator<Item = (Format, &T)> {
        Format::ALL.into_iter().zip(self.0.iter())
    }

    /// Every format with its value, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Format, &mut T)> {
        Format::ALL.into_iter().zip(self.0.iter_mut())
    }
}

impl<T> Index<Format> for PerFormat<T> {
    type Output = T;

    fn index(&self, format: Format) -> &T {
        &self.0[format.index()]
    }
}

impl<T> IndexMut<Format> for PerFormat<T> {
    fn index_mut(&mut self, format: Format) -> &mut T {
        &mut self.0[format.index()]
    }
}

/// A line-mode server notice: not chat, but news about the connection itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `*** ok: joined as NAME`: a messenger's handshake was accepted.
    Ok {
        /// The name the messenger now holds.
        name: String,
    },
    /// `*** ping`: the connection is alive (only for clients that asked).
    Ping,
    /// `*** token: SECRET`: the secret that lets a new connection take this one's
    /// name over (`token=SECRET`); sent only to clients that asked for tags.
    Token {
        /// The secret.
        secret: String,
    },
    /// `*** members N: NAME NAME ...`: who is in the room (`members`): N names in
    /// all, over as many such lines as they take.
    Members {
        /// How many names in all.
        total: usize,
        /// The names on this line.
        names: Vec<String>,
    },
    /// `*** gap: events FROM to TO are no longer kept`: part of a replay is missing.
    Gap {
        /// The first missing event.
        from: u64,
        /// The last missing event.
        to: u64,
    },
    /// `*** bye: TEXT`: the server is closing the connection in good order.
    Bye {
        /// Why, for people.
        text: String,
    },
    /// `*** error CODE: TEXT`: the server refuses or drops the client.
    Error {
        /// Stable, for programs.
        code: String,
        /// Why, for people.
        text: String,
    },
}

const NOTICE_PREFIX: &str = "*** ";

impl Notice {
    /// A refusal or forced close, with its stable code.
    pub fn error(code: &str, text: impl ToString) -> Self {
        Self::Error {
            code: code.to_owned(),
            text: text.to_string(),
        }
    }

    /// The notice as one line, `\n` included.
    pub fn to_line(&self) -> Bytes {
        let line = match self {
            Self::Ok { name } => format!("{NOTICE_PREFIX}ok: joined as {name}\n"),
            Self::Ping => format!("{NOTICE_PREFIX}ping\n"),
            Self::Token { secret } => format!("{NOTICE_PREFIX}token: {secret}\n"),
            Self::Members { total, names } if names.is_empty() => {
                format!("{NOTICE_PREFIX}members {total}:\n")
            }
            Self::Members { total, names } => {
                format!("{NOTICE_PREFIX}members {total}: {}\n", names.join(" "))
            }
            Self::Gap { from, to } => {
                format!("{NOTICE_PREFIX}gap: events {from} to {to} are no longer kept\n")
            }
            Self::Bye { text } => format!("{NOTICE_PREFIX}bye: {text}\n"),
            Self::Error { code, text } => format!("{NOTICE_PREFIX}error {code}: {text}\n"),
        };
        Bytes::from(line)
    }

    /// Recognizes a notice in a line received from the server (without its `\n`).
    /// Returns `None` for chat lines.
    pub fn parse(line: &str) -> Option<Self> {
        let body = line.strip_prefix(NOTICE_PREFIX)?;
        if body == "ping" {
            return Some(Self::Ping);
        }
        if let Some(name) = body.strip_prefix("ok: joined as ") {
            return Some(Self::Ok {
                name: name.to_owned(),
            });
        }
        if let Some(rest) = body.strip_prefix("members ") {
            let (total, names) = rest.split_once(':')?;
            return Some(Self::Members {
                total: total.parse().ok()?,
                names: names.split_whitespace().map(str::to_owned).collect(),
            });
        }
        if let Some(secret) = body.strip_prefix("token: ") {
            return Some(Self::Token {
                secret: secret.to_owned(),
            });
        }
        if let Some(range) = body
            .strip_prefix("gap: events ")
            .and_then(|rest| rest.strip_suffix(" are no longer kept"))
        {
            let (from, to) = range.split_once(" to ")?;
            return Some(Self::Gap {
                from: from.parse().ok()?,
                to: to.parse().ok()?,
            });
        }
        if let Some(text) = body.strip_prefix("bye: ") {
            return Some(Self::Bye {
                text: text.to_owned(),
            });
        }
        let (code, text) = body.strip_prefix("error ")?.split_once(": ")?;
        Some(Self::error(code, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::{ConnId, Role, Room};
    use proptest::prelude::*;

    fn event(kind: EventKind) -> Event {
        Event::new(1, kind)
    }

    fn encoded(kind: EventKind, format: Format) -> Vec<u8> {
        let mut out = BytesMut::new();
        format.encode(&event(kind), &mut out);
        out.to_vec()
    }

    #[test]
    fn seed_texts_are_byte_exact_without_terminators() {
        let name: std::sync::Arc<str> = "alice".into();
        assert_eq!(
            encoded(EventKind::Joined { name: name.clone() }, Format::Seed),
            b"alice has joined the chat."
        );
        assert_eq!(
            encoded(
                EventKind::Posted {
                    name: name.clone(),
                    text: "hello world".into()
                },
                Format::Seed
            ),
            b"alice: hello world"
        );
        assert_eq!(
            encoded(EventKind::Left { name }, Format::Seed),
            b"alice has left the chat"
        );
        assert_eq!(
            &Format::Seed.welcome("Bad IRC", 7)[..],
            b"Welcome to the \"Bad IRC\" Chat Server!"
        );
    }

    #[test]
    fn line_texts_are_the_seed_texts_plus_a_newline() {
        let name: std::sync::Arc<str> = "bob".into();
        assert_eq!(
            encoded(EventKind::Left { name }, Format::Line),
            b"bob has left the chat\n"
        );
        assert_eq!(
            &Format::Line.welcome("x", 7)[..],
            b"Welcome to the \"x\" Chat Server!\n"
        );
    }

    #[test]
    fn tagged_lines_carry_the_number_the_time_and_the_id() {
        let mut posted = Event::new(
            1234,
            EventKind::Posted {
                name: "alice".into(),
                text: "hello".into(),
            },
        );
        posted.time_ms = 1_795_930_867_123;
        let mut out = BytesMut::new();
        Format::Tagged.encode(&posted, &mut out);
        posted.id = Some("k-1".into());
        posted.seq = 1235;
        Format::Tagged.encode(&posted, &mut out);
        assert_eq!(
            &out[..],
            b"@seq=1234;time=2026-11-29T05:41:07.123Z alice: hello\n\
              @seq=1235;time=2026-11-29T05:41:07.123Z;id=k-1 alice: hello\n"
        );
        // Another millisecond of the same second, and another second.
        let mut out = BytesMut::new();
        posted.time_ms += 877;
        Format::Tagged.encode(&posted, &mut out);
        posted.time_ms += 1;
        Format::Tagged.encode(&posted, &mut out);
        posted.time_ms = 0;
        Format::Tagged.encode(&posted, &mut out);
        assert_eq!(
            &out[..],
            b"@seq=1235;time=2026-11-29T05:41:08.000Z;id=k-1 alice: hello\n\
              @seq=1235;time=2026-11-29T05:41:08.001Z;id=k-1 alice: hello\n\
              @seq=1235;time=1970-01-01T00:00:00.000Z;id=k-1 alice: hello\n"
        );
        assert_eq!(
            &Format::Tagged.welcome("x", 1233)[..],
            b"@seq=1233 Welcome to the \"x\" Chat Server!\n"
        );
        assert_eq!(
            &Format::Tagged.welcome("x", 0)[..],
            b"@seq=0 Welcome to the \"x\" Chat Server!\n"
        );
    }

    #[test]
    fn per_format_values_are_indexed_by_format() {
        let mut values = PerFormat::from_fn(|f| f.index() * 10);
        values[Format::Line] += 1;
        assert_eq!(values[Format::Seed], 0);
        assert_eq!(values[Format::Line], 11);
        let formats: Vec<Format> = values.iter().map(|(f, _)| f).collect();
        assert_eq!(formats, Format::ALL);
        assert!(Format::ALL.iter().enumerate().all(|(i, f)| f.index() == i));
    }

    #[test]
    fn notices_round_trip() {
        for notice in [
            Notice::Ok {
                name: "alice".into(),
            },
            Notice::Ping,
            Notice::Token {
                secret: "s3cr3t".into(),
            },
            Notice::Gap { from: 5, to: 99 },
            Notice::Members {
                total: 3,
                names: vec!["alice".into(), "bob".into()],
            },
            Notice::Bye {
                text: "the server is shutting down".into(),
            },
            Notice::error("name-taken", "the name \"alice\" is already taken"),
        ] {
            let line = notice.to_line();
            let text = std::str::from_utf8(&line).unwrap();
            assert!(text.starts_with("*** ") && text.ends_with('\n'));
            assert_eq!(Notice::parse(text.trim_end_matches('\n')), Some(notice));
        }
        assert_eq!(Notice::parse("alice: *** ping"), None);
        assert_eq!(Format::Seed.notice(&Notice::Ping), None);
        assert_eq!(
            Format::Line.notice(&Notice::Ping).as_deref(),
            Some(&b"*** ping\n"[..])
        );
        assert_eq!(Notice::parse("alice has joined the chat."), None);
    }

    proptest! {
        /// Whatever a sender writes, every line a line-mode viewer receives because
        /// of it starts with the sender's own name, and none looks like a notice.
        #[test]
        fn every_output_line_starts_with_its_sender(
            text in proptest::collection::vec(any::<u8>(), 0..300)
        ) {
            let mut room = Room::new(32);
            let mut events = Vec::new();
            room.join(ConnId(1), Role::Messenger, Some("mallory"), &mut events).unwrap();
            events.clear();
            room.post(ConnId(1), &text, &mut events).unwrap();
            let mut out = BytesMut::new();
            for event in &events {
                Format::Line.encode(event, &mut out);
            }
            let out = String::from_utf8(out.to_vec()).unwrap();
            prop_assert_eq!(out.lines().count(), events.len());
            for line in out.lines() {
                prop_assert!(line.starts_with("mallory: "), "{:?}", line);
                prop_assert!(Notice::parse(line).is_none());
                prop_assert!(!line.contains('\r'));
            }
        }
    }
}
