//! Checks of the protocol's invariants on arbitrary input, shared by the fuzz targets
//! (`fuzz/`) and the test that replays their corpus (`tests/fuzz_corpus.rs`).
//!
//! Each function takes any bytes, drives the pure protocol code with them, and panics
//! if an invariant breaks. The first byte or two choose limits and how the input is
//! cut into reads, so the fuzzer explores splits as well as contents.

use bytes::{Bytes, BytesMut};

use super::handshake::{HandshakeReader, Mode, Outcome, Step};
use super::line::LineFramer;
use super::wire::{Format, Notice};
use crate::room::{ConnId, EventKind, Role, Room, name, text};

const MAX_HANDSHAKE: usize = 64;
const MAX_NAME: usize = 16;

/// Cuts `data` into pieces whose lengths follow from `plan` (1 to 8 bytes each).
fn pieces(data: &[u8], plan: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = usize::from(plan);
    while at < data.len() {
        let len = 1 + (i * 7 + usize::from(plan >> 3)) % 8;
        out.push(&data[at..(at + len).min(data.len())]);
        at += len;
        i += 1;
    }
    out
}

/// The handshake reader on any input, cut into reads by the first byte.
///
/// # Panics
/// When an invariant breaks: the outcome of a line handshake depends on how it was
/// cut, bytes after the handshake are lost, a name that breaks the rules is accepted,
/// or more than the limit is buffered without a decision.
pub fn check_handshake(data: &[u8]) {
    let Some((&plan, input)) = data.split_first() else {
        return;
    };
    let mut reader = HandshakeReader::new(MAX_HANDSHAKE, MAX_NAME);
    let mut fed = 0;
    let mut candidate = false;
    let mut outcome = None;
    for piece in pieces(input, plan) {
        fed += piece.len();
        match reader.push(piece) {
            Step::NeedMore => {
                if !candidate {
                    assert!(fed <= MAX_HANDSHAKE, "{fed} bytes buffered undecided");
                }
            }
            Step::SeedCandidate { name, .. } => {
                assert!(!candidate, "seed candidate reported twice");
                candidate = true;
                if let Some(name) = name {
                    assert!(name::validate(&name, MAX_NAME).is_ok(), "{name:?}");
                }
            }
            Step::Done(done) => {
                outcome = Some(done);
                break;
            }
        }
    }
    let outcome = outcome.unwrap_or_else(|| {
        if candidate {
            reader.conclude_seed()
        } else {
            reader.timed_out()
        }
    });
    match outcome {
        Outcome::Hello { hello, rest } => {
            if let Some(name) = &hello.name {
                assert!(name::validate(name, MAX_NAME).is_ok(), "accepted {name:?}");
            }
            assert_eq!(hello.role.sends(), hello.name.is_some());
            if hello.mode == Mode::Line {
                // Whatever the cut, the same hello, and nothing after it lost.
                let newline = input.iter().position(|&b| b == b'\n');
                let newline = newline.unwrap_or_else(|| panic!("line mode without a newline"));
                let rest: Vec<u8> = rest.concat();
                let consumed = fed - rest.len();
                assert_eq!(&input[consumed..fed], &rest[..]);
                assert_eq!(
                    consumed,
                    newline + 1,
                    "the handshake line ends at its newline"
                );
                let mut whole = HandshakeReader::new(MAX_HANDSHAKE, MAX_NAME);
                if let Step::Done(Outcome::Hello { hello: again, .. }) =
                    whole.push(&input[..=newline])
                {
                    assert_eq!(again, hello);
                }
            } else {
                assert_eq!(hello.options, Default::default());
                assert!(hello.role != Role::Chatter, "chat is line mode only");
            }
        }
        Outcome::Refused { error, .. } => {
            assert!(!error.code().is_empty());
            assert!(!error.to_string().is_empty());
        }
    }
}

/// The line framer on any input, with a limit and cuts chosen by the first two bytes.
///
/// # Panics
/// When an invariant breaks: the result depends on the cut, a chunk does not end in
/// `\n`, a line over the limit is returned, bytes are invented or reordered, the
/// buffer grows past the limit, or an error is raised with no overlong line.
pub fn check_line_framer(data: &[u8]) {
    let [limit, plan, input @ ..] = data else {
        return;
    };
    let max = 1 + usize::from(*limit % 64);
    let run = |pieces: Vec<&[u8]>| {
        let mut framer = LineFramer::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match framer.next_chunk(&mut buf) {
                    Ok(Some(chunk)) => {
                        assert_eq!(chunk.last(), Some(&b'\n'), "a chunk must end a line");
                        for line in chunk[..chunk.len() - 1].split(|&b| b == b'\n') {
                            assert!(line.len() <= max, "a line of {} > {max}", line.len());
                        }
                        out.extend_from_slice(&chunk);
                    }
                    Ok(None) => {
                        assert!(
                            buf.len() <= max,
                            "{} bytes buffered, limit {max}",
                            buf.len()
                        );
                        break;
                    }
                    Err(_) => return (out, true),
                }
            }
        }
        (out, false)
    };
    let whole = run(vec![input]);
    let cut = run(pieces(input, *plan));
    assert_eq!(whole, cut, "framing depends on how the stream was cut");
    let (out, failed) = whole;
    assert!(
        input.starts_with(&out),
        "output is not a prefix of the input"
    );
    if failed {
        let next = &input[out.len()..];
        let line = next.split(|&b| b == b'\n').next().unwrap_or_default();
        assert!(
            line.len() > max,
            "refused a line of {} <= {max}",
            line.len()
        );
    }
}

/// A client's WebSocket frames, any bytes, with a limit and cuts chosen by the first
/// two bytes.
///
/// # Panics
/// When an invariant breaks: the result depends on the cut, a message over the limit
/// or not UTF-8 is returned, a control payload is over 125 bytes, or the buffer holds
/// more than one frame's worth (the limit plus a header) without a result.
pub fn check_websocket_frames(data: &[u8]) {
    use super::websocket::{Frame, FrameReader};
    let [limit, plan, input @ ..] = data else {
        return;
    };
    let max = usize::from(*limit) * 4;
    let run = |pieces: Vec<&[u8]>| {
        let mut reader = FrameReader::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match reader.next(&mut buf) {
                    Ok(Some(frame)) => {
                        match &frame {
                            Frame::Text(text) => {
                                assert!(text.len() <= max, "a message of {} > {max}", text.len());
                                assert!(std::str::from_utf8(text).is_ok(), "not UTF-8");
                            }
                            Frame::Ping(payload) => assert!(payload.len() <= 125),
                            Frame::Pong | Frame::Close(_) => {}
                        }
                        out.push(frame);
                    }
                    Ok(None) => {
                        // One frame's header and payload at most, waiting for the rest.
                        assert!(
                            buf.len() <= max.max(125) + 14,
                            "{} bytes buffered",
                            buf.len()
                        );
                        break;
                    }
                    Err(error) => {
                        assert!(matches!(error.close_code, 1002 | 1003 | 1007 | 1009));
                        return (out, Some(error));
                    }
                }
            }
        }
        (out, None)
    };
    let whole = run(vec![input]);
    let cut = run(pieces(input, *plan));
    assert_eq!(whole, cut, "frames depend on how the stream was cut");
}

/// A room post of any bytes, encoded in both formats.
///
/// # Panics
/// When an invariant breaks: a line does not carry its sender's name, looks like a
/// server notice, holds a control character, or the two formats disagree.
pub fn check_post(data: &[u8]) {
    let mut room = Room::new(MAX_NAME);
    let mut events = Vec::new();
    let sender = ConnId(1);
    let joined = room.join(sender, Role::Messenger, Some("mallory"), &mut events);
    assert!(joined.is_ok());
    events.clear();
    let posted = room.post(sender, data, &mut events);
    assert_eq!(posted, Ok(text::lines(data).count()));
    let (mut seed, mut line) = (BytesMut::new(), BytesMut::new());
    for event in &events {
        assert!(matches!(&event.kind, EventKind::Posted { name, .. } if &**name == "mallory"));
        Format::Seed.encode(event, &mut seed);
        Format::Line.encode(event, &mut line);
    }
    let line = Bytes::from(line);
    let text = std::str::from_utf8(&line).unwrap_or_else(|e| panic!("not UTF-8: {e}"));
    let mut rebuilt = String::new();
    for out in text.lines() {
        assert!(out.starts_with("mallory: "), "{out:?}");
        assert!(Notice::parse(out).is_none(), "{out:?}");
        assert!(!out.chars().any(|c| c.is_control() && c != '\t'), "{out:?}");
        rebuilt.push_str(out);
    }
    assert_eq!(text.lines().count(), events.len());
    assert_eq!(
        rebuilt.as_bytes(),
        &seed[..],
        "seed and line formats disagree"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checks_pass_on_ordinary_input() {
        for (plan, input) in [
            (0u8, &b"viewer\n"[..]),
            (3, b"name:alice\r\nhello\n"),
            (9, b"name:al"),
            (1, b"viewer"),
            (200, b"chat:bob goodbye heartbeat\n"),
            (7, b"GET / HTTP/1.1\r\n\r\n"),
        ] {
            let mut data = vec![plan];
            data.extend_from_slice(input);
            check_handshake(&data);
        }
        check_line_framer(b"\x08\x03one\ntwo\r\n\nthree is too long\n");
        check_post(b"hi\nalice: \x1b[2Jfake\r\n\rmore");
    }

    #[test]
    fn cut_plans_cover_the_input_exactly() {
        let data: Vec<u8> = (0..100).collect();
        for plan in [0, 1, 77, 255] {
            assert_eq!(pieces(&data, plan).concat(), data);
        }
    }
}
