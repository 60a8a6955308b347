//! Events and server notices as bytes on the wire, once per format.
//!
//! Seed mode writes the original's texts with no terminator; line mode writes the
//! same texts, each followed by `\n`. Line mode adds notices, lines that start with
//! `*** ` (which no chat line can, since names may not start with `*`). Performs no I/O.

use bytes::{BufMut, Bytes, BytesMut};

use super::handshake::Mode;
use crate::room::{Event, EventKind};

/// Appends the text of `event` to `out`, as `mode` frames it.
pub fn encode(event: &Event, mode: Mode, out: &mut BytesMut) {
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
    if mode == Mode::Line {
        out.put_u8(b'\n');
    }
}

/// The greeting a viewer gets when it joins.
pub fn welcome(chat_name: &str, mode: Mode) -> Bytes {
    let terminator = if mode == Mode::Line { "\n" } else { "" };
    Bytes::from(format!(
        "Welcome to the \"{chat_name}\" Chat Server!{terminator}"
    ))
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
        Event { seq: 1, kind }
    }

    fn encoded(kind: EventKind, mode: Mode) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(&event(kind), mode, &mut out);
        out.to_vec()
    }

    #[test]
    fn seed_texts_are_byte_exact_without_terminators() {
        let name: std::sync::Arc<str> = "alice".into();
        assert_eq!(
            encoded(EventKind::Joined { name: name.clone() }, Mode::Seed),
            b"alice has joined the chat."
        );
        assert_eq!(
            encoded(
                EventKind::Posted {
                    name: name.clone(),
                    text: "hello world".into()
                },
                Mode::Seed
            ),
            b"alice: hello world"
        );
        assert_eq!(
            encoded(EventKind::Left { name }, Mode::Seed),
            b"alice has left the chat"
        );
        assert_eq!(
            &welcome("Bad IRC", Mode::Seed)[..],
            b"Welcome to the \"Bad IRC\" Chat Server!"
        );
    }

    #[test]
    fn line_texts_are_the_seed_texts_plus_a_newline() {
        let name: std::sync::Arc<str> = "bob".into();
        assert_eq!(
            encoded(EventKind::Left { name }, Mode::Line),
            b"bob has left the chat\n"
        );
        assert_eq!(
            &welcome("x", Mode::Line)[..],
            b"Welcome to the \"x\" Chat Server!\n"
        );
    }

    #[test]
    fn notices_round_trip() {
        for notice in [
            Notice::Ok {
                name: "alice".into(),
            },
            Notice::Ping,
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
                encode(event, Mode::Line, &mut out);
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
