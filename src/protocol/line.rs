//! Framing of a messenger's byte stream into messages, once the handshake is done.
//!
//! Line mode: a message is a line ended by `\n`, at most `max_line_bytes` long.
//! Seed mode: nothing is framed; every read is a message, as in the original server.
//! Both framers work on a caller-owned buffer and perform no I/O; the caller reads
//! from the socket into the buffer and hands the returned chunks to the hub.

use bytes::{Bytes, BytesMut};
use thiserror::Error;

/// A line grew past the limit before its `\n` arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("lines are limited to {max_bytes} bytes")]
pub struct LineTooLong {
    /// The limit, in bytes before the `\n`.
    pub max_bytes: usize,
}

/// Cuts complete lines off the front of a buffer.
#[derive(Debug, Clone)]
pub struct LineFramer {
    max_line_bytes: usize,
    /// Bytes at the front of the buffer already known to hold no `\n`.
    scanned: usize,
}

impl LineFramer {
    /// A framer that refuses lines longer than `max_line_bytes` (not counting `\n`).
    pub fn new(max_line_bytes: usize) -> Self {
        Self {
            max_line_bytes,
            scanned: 0,
        }
    }

    /// Removes every complete line from the front of `buf` and returns them as one
    /// chunk that ends with `\n` (split it with [`crate::room::text::lines`]).
    ///
    /// Returns `Ok(None)` when no complete line is buffered yet. A partial line stays
    /// in `buf` for the next call, so the result is the same however the stream was
    /// split into reads.
    ///
    /// # Errors
    /// [`LineTooLong`] when the line at the front of `buf` exceeds the limit, whether
    /// or not its `\n` has arrived; the caller should stop reading this peer. Lines
    /// before an overlong one are still returned first, so nothing valid is lost.
    pub fn next_chunk(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, LineTooLong> {
        let too_long = LineTooLong {
            max_bytes: self.max_line_bytes,
        };
        let mut line_start = 0;
        let mut overlong = false;
        for newline in memchr::memchr_iter(b'\n', &buf[self.scanned..]) {
            let newline = self.scanned + newline;
            if newline - line_start > self.max_line_bytes {
                overlong = true;
                break;
            }
            line_start = newline + 1;
        }
        if line_start > 0 {
            self.scanned = 0;
            return Ok(Some(buf.split_to(line_start).freeze()));
        }
        if overlong || buf.len() > self.max_line_bytes {
            return Err(too_long);
        }
        self.scanned = buf.len();
        Ok(None)
    }
}

/// Takes everything buffered as one seed-mode message, except an incomplete UTF-8
/// character at the very end, which waits for the rest of its bytes (the original
/// would have shown it as two replacement characters).
pub fn take_seed_message(buf: &mut BytesMut) -> Option<Bytes> {
    let complete = buf.len() - incomplete_utf8_tail(buf);
    (complete > 0).then(|| buf.split_to(complete).freeze())
}

/// Length of a UTF-8 sequence cut short at the end of `bytes` (0 to 3).
fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: keep looking for the lead byte
        }
        let needed = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if needed > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `input` in the given pieces and collects every chunk and the outcome.
    fn frame(max: usize, pieces: &[&[u8]]) -> (Vec<u8>, Option<LineTooLong>) {
        let mut framer = LineFramer::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match framer.next_chunk(&mut buf) {
                    Ok(Some(chunk)) => out.extend_from_slice(&chunk),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    }

    #[test]
    fn returns_complete_lines_and_keeps_the_partial_one() {
        let mut framer = LineFramer::new(16);
        let mut buf = BytesMut::from(&b"one\ntwo\nthr"[..]);
        assert_eq!(
            framer.next_chunk(&mut buf),
            Ok(Some(Bytes::from_static(b"one\ntwo\n")))
        );
        assert_eq!(&buf[..], b"thr");
        assert_eq!(framer.next_chunk(&mut buf), Ok(None));
        buf.extend_from_slice(b"ee\r\n");
        assert_eq!(
            framer.next_chunk(&mut buf),
            Ok(Some(Bytes::from_static(b"three\r\n")))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn limit_holds_at_the_bound_and_fails_one_past_it() {
        let at = [b'a'; 8];
        assert_eq!(frame(8, &[&at, b"\n"]), (b"aaaaaaaa\n".to_vec(), None));
        let past = [b'a'; 9];
        let too_long = Some(LineTooLong { max_bytes: 8 });
        assert_eq!(frame(8, &[&past, b"\n"]), (Vec::new(), too_long));
        // Noticed before the newline arrives, so the buffer never grows past the limit.
        assert_eq!(frame(8, &[&past]), (Vec::new(), too_long));
    }

    #[test]
    fn lines_before_an_overlong_line_are_delivered_first() {
        assert_eq!(
            frame(4, &[b"ok\nfine\ntoo long\n"]),
            (b"ok\nfine\n".to_vec(), Some(LineTooLong { max_bytes: 4 }))
        );
    }

    #[test]
    fn seed_messages_wait_only_for_a_split_character() {
        let bytes = "hé".as_bytes();
        let mut buf = BytesMut::from(&bytes[..2]); // "h" and half of "é"
        assert_eq!(take_seed_message(&mut buf), Some(Bytes::from_static(b"h")));
        assert_eq!(&buf[..], &bytes[1..2]);
        buf.extend_from_slice(&bytes[2..]);
        assert_eq!(take_seed_message(&mut buf).as_deref(), Some("é".as_bytes()));
        // Invalid bytes are not held back: they are the sender's problem.
        let mut junk = BytesMut::from(&b"x\xff"[..]);
        assert_eq!(take_seed_message(&mut junk).as_deref(), Some(&b"x\xff"[..]));
        assert_eq!(incomplete_utf8_tail("🦀".as_bytes()), 0);
        assert_eq!(incomplete_utf8_tail(&"🦀".as_bytes()[..3]), 3);
    }

    proptest! {
        /// Any split of the same stream frames identically.
        #[test]
        fn any_split_frames_identically(
            input in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a'), any::<u8>()], 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..20),
        ) {
            let whole = frame(12, &[&input]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (input.len() + 1)).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut from = 0;
            for cut in cuts {
                pieces.push(&input[from..cut]);
                from = cut;
            }
            pieces.push(&input[from..]);
            prop_assert_eq!(frame(12, &pieces), whole.clone());
            let bytewise: Vec<&[u8]> = input.chunks(1).collect();
            prop_assert_eq!(frame(12, &bytewise), whole);
        }
    }
}
