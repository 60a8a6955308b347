//! WebSocket (RFC 6455) framing, as pure functions: the upgrade's accept key, the
//! server's frames (written), and the client's frames (read).
//!
//! A WebSocket member speaks line mode with one line per text frame, in both
//! directions. The server's frames are never masked, so a frame's bytes are the same
//! for every receiver: the room's events are framed once per format
//! ([`super::wire::Format`]), like every other format, and shared by every WebSocket
//! viewer. That is why the framing is written here rather than taken from a
//! WebSocket crate, which would frame (and copy) every message once per connection;
//! what a server must check of a client's frames is small and is checked here, by
//! unit tests and by the fuzz invariants.
//!
//! Not supported, and refused by a plain upgrade (no header for them is answered):
//! extensions (compression) and subprotocols.

use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use sha1::{Digest, Sha1};

/// Frame opcodes.
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The final-fragment bit of a frame's first byte.
const FIN: u8 = 0x80;

/// Most bytes a control frame's payload may have.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Close codes the server sends.
pub mod close {
    /// The peer closed, or the server ends the connection for no fault.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A binary frame: this endpoint takes text only.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text message that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Refused by a rule of the server (a taken name, too slow, replaced, ...).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The server could not serve the request (its log cannot be read).
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// The `Sec-WebSocket-Accept` answer to a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Appends the header of an unmasked, final frame of `opcode` with `len` bytes of
/// payload.
fn put_header(out: &mut BytesMut, opcode: u8, len: usize) {
    out.put_u8(FIN | opcode);
    if len < 126 {
        // Fits in seven bits.
        out.put_u8(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.put_u8(126);
        out.put_u16(len);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// Appends one text frame carrying `payload`.
pub fn put_text(out: &mut BytesMut, payload: &[u8]) {
    out.reserve(payload.len() + 10);
    put_header(out, TEXT, payload.len());
    out.put_slice(payload);
}

/// One text frame per line of `lines` (each ending in `\n`, which the frame drops).
pub fn text_frames(lines: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(lines.len() + 8);
    for line in lines.split_inclusive(|&b| b == b'\n') {
        put_text(&mut out, line.strip_suffix(b"\n").unwrap_or(line));
    }
    out.freeze()
}

/// In `bytes`, whole server frames from its start, the end of the frame that holds
/// offset `at` (`at` itself when a frame starts there; `bytes.len()` at most).
pub fn frame_end(bytes: &[u8], at: usize) -> usize {
    let mut start = 0;
    while start < at {
        let Some((header, len)) = server_frame_size(&bytes[start..]) else {
            return bytes.len();
        };
        start = start.saturating_add(header).saturating_add(len);
    }
    start.min(bytes.len())
}

/// The header size and payload length of the (unmasked) frame at the front of
/// `bytes`, if its header is all there.
fn server_frame_size(bytes: &[u8]) -> Option<(usize, usize)> {
    let [_, second, ..] = *bytes else {
        return None;
    };
    match second & 0x7F {
        126 => {
            let b = bytes.get(2..4)?;
            Some((4, usize::from(u16::from_be_bytes([b[0], b[1]]))))
        }
        127 => {
            let b: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
            Some((
                10,
                usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX),
            ))
        }
        short => Some((2, usize::from(short))),
    }
}

/// A ping with no payload.
pub const PING_FRAME: [u8; 2] = [FIN | PING, 0];

/// The pong answering a ping that carried `payload` (at most 125 bytes, as checked
/// when the ping was read).
pub fn pong(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 2);
    put_header(&mut out, PONG, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// A close frame with `code` and `reason` (cut to what a control frame holds, at a
/// character boundary).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut out = BytesMut::with_capacity(reason.len() + 4);
    put_header(&mut out, CLOSE, reason.len() + 2);
    out.put_u16(code);
    out.put_slice(reason);
    out.freeze()
}

/// What a client's frames amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A whole text message (its fragments joined), valid UTF-8.
    Text(Bytes),
    /// A ping, with the payload the pong must echo.
    Ping(Bytes),
    /// A pong (the answer to the server's ping).
    Pong,
    /// The client closes, with its code if it gave one.
    Close(Option<u16>),
}

/// A client's frame that ends the connection, with the close code it gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct FrameError {
    /// The close code the server answers with.
    pub close_code: u16,
    /// The stable code of the `*** error` line sent before the close.
    pub code: &'static str,
    /// What was wrong, for the error line and the log.
    pub reason: String,
}

impl FrameError {
    fn protocol(reason: impl Into<String>) -> Self {
        Self {
            close_code: close::PROTOCOL_ERROR,
            code: "bad-frame",
            reason: reason.into(),
        }
    }
}

/// Reads a client's frames off the front of a buffer: checks them, unmasks them,
/// joins fragments, answers with whole messages and control frames.
#[derive(Debug, Clone)]
pub struct FrameReader {
    /// Most bytes a text message may have (all its fragments together).
    max_message_bytes: usize,
    /// The fragments of a message in progress (after a non-final text frame).
    partial: Option<BytesMut>,
}

impl FrameReader {
    /// A reader taking text messages of at most `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            max_message_bytes,
            partial: None,
        }
    }

    /// The next complete frame's meaning, taken off the front of `buf`; `Ok(None)`
    /// when more bytes are needed (a fragment only adds to the message in progress).
    ///
    /// # Errors
    /// [`FrameError`] when the client broke the protocol, sent binary data, or sent a
    /// message over the limit; the connection should be closed with its code. A
    /// message over the limit is refused as soon as its header says so, before its
    /// payload arrives.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            let Some(header) = Header::parse(buf)? else {
                return Ok(None);
            };
            let control = header.opcode & 0x8 != 0;
            if control {
                if !header.fin {
                    return Err(FrameError::protocol("a fragmented control frame"));
                }
                if header.len > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(FrameError::protocol("a control frame over 125 bytes"));
                }
            } else {
                self.check_data(&header)?;
            }
            // Checked above against limits that fit in memory.
            let len = header.len as usize;
            if buf.len() < header.size + len {
                buf.reserve(header.size + len - buf.len());
                return Ok(None);
            }
            buf.advance(header.size);
            let mut payload = buf.split_to(len);
            unmask(&mut payload, header.mask);
            match header.opcode {
                PING => return Ok(Some(Frame::Ping(payload.freeze()))),
                PONG => return Ok(Some(Frame::Pong)),
                CLOSE => return close_code(&payload).map(|code| Some(Frame::Close(code))),
                _ => {}
            }
            let message = match self.partial.take() {
                None if header.fin => payload,
                None => {
                    self.partial = Some(payload);
                    continue;
                }
                Some(mut partial) => {
                    partial.unsplit(payload);
                    if !header.fin {
                        self.partial = Some(partial);
                        continue;
                    }
                    partial
                }
            };
            if std::str::from_utf8(&message).is_err() {
                return Err(FrameError {
                    close_code: close::INVALID_PAYLOAD,
                    code: "not-utf8",
                    reason: "a text message that is not UTF-8".to_owned(),
                });
            }
            return Ok(Some(Frame::Text(message.freeze())));
        }
    }

    /// The rules for a data frame (text, binary, continuation) given its header.
    fn check_data(&self, header: &Header) -> Result<(), FrameError> {
        match (header.opcode, &self.partial) {
            (TEXT, None) | (CONTINUATION, Some(_)) => {}
            (BINARY, _) => {
                return Err(FrameError {
                    close_code: close::UNSUPPORTED_DATA,
                    code: "binary-frame",
                    reason: "binary frames are not taken: send each line as a text frame"
                        .to_owned(),
                });
            }
            (TEXT, Some(_)) => {
                return Err(FrameError::protocol(
                    "a new message before the last one's final fragment",
                ));
            }
            (CONTINUATION, None) => {
                return Err(FrameError::protocol("a continuation with no message"));
            }
            (opcode, _) => {
                return Err(FrameError::protocol(format!("unknown opcode {opcode:#x}")));
            }
        }
        let so_far = self.partial.as_ref().map_or(0, BytesMut::len) as u64;
        if so_far.saturating_add(header.len) > self.max_message_bytes as u64 {
            return Err(FrameError {
                close_code: close::TOO_BIG,
                code: "message-too-long",
                // The same words as line mode's.
                reason: super::line::LineTooLong {
                    max_bytes: self.max_message_bytes,
                }
                .to_string(),
            });
        }
        Ok(())
    }
}

/// A frame's header, as read.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    len: u64,
    /// Bytes of the header itself.
    size: usize,
}

impl Header {
    /// The header at the front of `buf`, if all of it is there.
    fn parse(buf: &[u8]) -> Result<Option<Self>, FrameError> {
        let [first, second, ..] = *buf else {
            return Ok(None);
        };
        if first & 0x70 != 0 {
            return Err(FrameError::protocol(
                "reserved bits set (no extension was agreed)",
            ));
        }
        if second & 0x80 == 0 {
            return Err(FrameError::protocol("a client frame that is not masked"));
        }
        let (len, at) = match second & 0x7F {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                Some(b) => (u64::from_be_bytes(b), 10),
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        let Some(mask) = buf
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
        else {
            return Ok(None);
        };
        Ok(Some(Self {
            fin: first & FIN != 0,
            opcode: first & 0x0F,
            mask,
            len,
            size: at + 4,
        }))
    }
}

/// XORs `payload` with the client's mask.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// The code in a close frame's payload (none, or two bytes and UTF-8 text).
fn close_code(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::protocol(
            "a close frame with a one-byte payload",
        )),
        [high, low, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return Err(FrameError::protocol("a close reason that is not UTF-8"));
            }
            Ok(Some(u16::from_be_bytes([*high, *low])))
        }
    }
}

/// A client's frame, masked, as a client would write it (for tests and tools).
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(if fin { FIN } else { 0 } | opcode);
    let len = payload.len();
    if len < 126 {
        out.put_u8(0x80 | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.put_u8(0x80 | 126);
        out.put_u16(len);
    } else {
        out.put_u8(0x80 | 127);
        out.put_u64(len as u64);
    }
    out.put_slice(&mask);
    let mut body = payload.to_vec();
    unmask(&mut body, mask);
    out.put_slice(&body);
    out.to_vec()
}

/// The opcodes, for [`client_frame`].
pub mod opcode {
    /// A continuation of a fragmented message.
    pub const CONTINUATION: u8 = super::CONTINUATION;
    /// Text.
    pub const TEXT: u8 = super::TEXT;
    /// Binary.
    pub const BINARY: u8 = super::BINARY;
    /// Close.
    pub const CLOSE: u8 = super::CLOSE;
    /// Ping.
    pub const PING: u8 = super::PING;
    /// Pong.
    pub const PONG: u8 = super::PONG;
}

/// Reads the server's (unmasked) frames: `(opcode, payload)` pairs, for tests and
/// tools. Stops at the first incomplete frame, which stays in `buf`.
pub fn read_server_frames(buf: &mut BytesMut) -> Vec<(u8, Bytes)> {
    let mut frames = Vec::new();
    while let Some((header, len)) = server_frame_size(buf) {
        if buf.len() < header.saturating_add(len) {
            break;
        }
        let opcode = buf[0] & 0x0F;
        buf.advance(header);
        frames.push((opcode, buf.split_to(len).freeze()));
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn read_all(reader: &mut FrameReader, bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = reader.next(&mut buf)? {
            frames.push(frame);
        }
        Ok(frames)
    }

    #[test]
    fn accept_key_matches_the_rfc_example() {
        // RFC 6455, section 1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn server_frames_use_the_shortest_length() {
        let mut out = BytesMut::new();
        put_text(&mut out, b"Hello");
        assert_eq!(&out[..], b"\x81\x05Hello");
        for (len, header) in [(125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let mut out = BytesMut::new();
            put_text(&mut out, &vec![b'a'; len]);
            assert_eq!(out.len(), len + header, "{len}");
            let frames = read_server_frames(&mut out);
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].1.len(), len);
        }
    }

    #[test]
    fn frame_end_finds_the_frame_holding_an_offset() {
        let mut out = BytesMut::new();
        put_text(&mut out, b"abc"); // 0..5
        put_text(&mut out, &[b'x'; 200]); // 5..209
        put_text(&mut out, b"z"); // 209..212
        assert_eq!(frame_end(&out, 0), 0);
        assert_eq!(frame_end(&out, 1), 5);
        assert_eq!(frame_end(&out, 5), 5);
        assert_eq!(frame_end(&out, 6), 209);
        assert_eq!(frame_end(&out, 208), 209);
        assert_eq!(frame_end(&out, 210), 212);
        assert_eq!(frame_end(&out, 212), 212);
    }

    #[test]
    fn lines_become_one_frame_each() {
        let mut framed = BytesMut::from(&text_frames(b"*** members 2: a b\n*** members 2:\n")[..]);
        let frames = read_server_frames(&mut framed);
        assert_eq!(
            frames,
            vec![
                (opcode::TEXT, Bytes::from_static(b"*** members 2: a b")),
                (opcode::TEXT, Bytes::from_static(b"*** members 2:")),
            ]
        );
    }

    #[test]
    fn close_frames_carry_code_and_a_cut_reason() {
        let mut framed = BytesMut::from(&close_frame(1008, &"é".repeat(100))[..]);
        let frames = read_server_frames(&mut framed);
        let (op, payload) = &frames[0];
        assert_eq!(*op, opcode::CLOSE);
        assert!(payload.len() <= 125);
        assert_eq!(&payload[..2], &1008u16.to_be_bytes());
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }

    #[test]
    fn masked_text_in_any_pieces() {
        let mut bytes = client_frame(TEXT, true, b"hello", MASK);
        bytes.extend(client_frame(TEXT, true, &[b'x'; 300], MASK));
        let mut reader = FrameReader::new(4096);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in bytes {
            buf.put_u8(byte);
            while let Some(frame) = reader.next(&mut buf).expect("valid") {
                got.push(frame);
            }
        }
        assert_eq!(
            got,
            vec![
                Frame::Text(Bytes::from_static(b"hello")),
                Frame::Text(Bytes::from(vec![b'x'; 300])),
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn fragments_are_joined_around_control_frames() {
        let mut bytes = client_frame(TEXT, false, b"hel", MASK);
        bytes.extend(client_frame(PING, true, b"p", MASK));
        bytes.extend(client_frame(CONTINUATION, false, b"l", MASK));
        bytes.extend(client_frame(CONTINUATION, true, b"o", MASK));
        let frames = read_all(&mut FrameReader::new(16), &bytes).expect("valid");
        assert_eq!(
            frames,
            vec![
                Frame::Ping(Bytes::from_static(b"p")),
                Frame::Text(Bytes::from_static(b"hello")),
            ]
        );
    }

    #[test]
    fn oversized_messages_are_refused_from_the_header() {
        let mut reader = FrameReader::new(10);
        // Only the header has arrived: refused already.
        let header = &client_frame(TEXT, true, &[b'a'; 11], MASK)[..6];
        let error = read_all(&mut reader, header).expect_err("too big");
        assert_eq!((error.close_code, error.code), (1009, "message-too-long"));
        // Fragments count together.
        let mut bytes = client_frame(TEXT, false, &[b'a'; 6], MASK);
        bytes.extend(client_frame(CONTINUATION, true, &[b'a'; 5], MASK));
        let error = read_all(&mut FrameReader::new(10), &bytes).expect_err("too big");
        assert_eq!(error.close_code, 1009);
        // At the limit is fine.
        let ok = read_all(
            &mut FrameReader::new(10),
            &client_frame(TEXT, true, &[b'a'; 10], MASK),
        );
        assert_eq!(ok.map(|f| f.len()), Ok(1));
        // A 64-bit length that fits no memory.
        let mut huge = vec![0x81, 0xFF];
        huge.extend(u64::MAX.to_be_bytes());
        huge.extend(MASK);
        let error = read_all(&mut FrameReader::new(10), &huge).expect_err("too big");
        assert_eq!(error.close_code, 1009);
    }

    #[test]
    fn violations_get_their_close_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (client_frame(BINARY, true, b"x", MASK), 1003),
            (client_frame(TEXT, true, &[0xff, 0xfe], MASK), 1007),
            (client_frame(CONTINUATION, true, b"x", MASK), 1002),
            (client_frame(0x3, true, b"x", MASK), 1002),
            (client_frame(PING, false, b"x", MASK), 1002),
            (client_frame(PING, true, &[0; 126], MASK), 1002),
            (client_frame(CLOSE, true, &[3], MASK), 1002),
            ([0xC1u8, 0x80, 0, 0, 0, 0].to_vec(), 1002), // RSV1
            (b"\x81\x05hello".to_vec(), 1002),           // unmasked
            (
                [
                    client_frame(TEXT, false, b"a", MASK),
                    client_frame(TEXT, true, b"b", MASK),
                ]
                .concat(),
                1002,
            ),
        ];
        for (bytes, code) in cases {
            let error = read_all(&mut FrameReader::new(100), &bytes).expect_err("refused");
            assert_eq!(error.close_code, code, "{bytes:x?}: {error}");
        }
    }

    proptest::proptest! {
        /// Valid frames, cut anywhere, with a broken one here and there.
        #[test]
        fn frame_streams_keep_the_invariants(
            frames in proptest::collection::vec(
                (0u8..12, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), proptest::prelude::any::<bool>()),
                0..8,
            ),
            limit in proptest::prelude::any::<u8>(),
            plan in proptest::prelude::any::<u8>(),
        ) {
            let mut data = vec![limit, plan];
            for (op, payload, fin) in frames {
                data.extend(client_frame(op, fin, &payload, MASK));
            }
            crate::protocol::invariants::check_websocket_frames(&data);
        }
    }

    #[test]
    fn close_and_pong() {
        let mut bytes = client_frame(PONG, true, b"", MASK);
        bytes.extend(client_frame(CLOSE, true, &1000u16.to_be_bytes(), MASK));
        bytes.extend(client_frame(CLOSE, true, b"", MASK));
        let frames = read_all(&mut FrameReader::new(100), &bytes).expect("valid");
        assert_eq!(
            frames,
            vec![Frame::Pong, Frame::Close(Some(1000)), Frame::Close(None)]
        );
        assert_eq!(&pong(b"abc")[..], b"\x8a\x03abc");
    }
}
