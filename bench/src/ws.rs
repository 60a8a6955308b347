//! A WebSocket client (RFC 6455), written for the load generator, over any byte
//! stream: what its clients of tcpchat's `/ws` and of NATS's websocket listener
//! speak.
//!
//! - [`upgrade`]: the HTTP/1.1 upgrade (`GET PATH`, a fresh `Sec-WebSocket-Key`, no
//!   `Origin`, no extensions, so never compression); it checks the `101` and its
//!   `Sec-WebSocket-Accept`.
//! - [`WsStream`]: reads and writes through frames, so that the rest of the bench
//!   reads and writes bytes as it does over TCP, in one of two [`Framing`]s:
//!   tcpchat's, where a text frame is a line, and NATS's, where binary frames carry
//!   one byte stream (a NATS message may span frames, a frame may hold several).
//!
//! Client frames are masked, a new key for every frame; server frames must not be.
//! Pings are answered with pongs, a close with a close, after which reading ends as
//! at EOF. Server frames go through a streaming decoder: a data frame's payload is
//! passed on as it arrives, whatever the reads' boundaries; only a header and a
//! control frame (at most 125 bytes) are waited for whole. It costs one copy of the
//! payload beyond a plain read (from the socket's buffer here to the reader's).
//!
//! A fan-out viewer of tcpchat, which receives millions of lines a second, reads
//! instead with [`WsStream::poll_fill`] and [`WsStream::drain_lines`]: every whole
//! line is handed over where it lies in the read buffer, with no copy, as the
//! line-mode viewer reads lines in its own buffer.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker, ready};

use base64::Engine as _;
use sha1::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// How a connection's bytes map to frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// tcpchat: every frame one line. Read, a text frame is its payload and `\n`;
    /// written, every line (up to its `\n`, which is not sent) is one text frame.
    Lines,
    /// NATS: the frames' payloads are one byte stream. Read, payloads are passed on
    /// as they come; written, every write is one binary frame.
    Stream,
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;

/// The longest payload of a control frame (RFC 6455, 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Bytes read from the socket at once: as much as a line-mode viewer reads.
const READ_BUFFER: usize = 256 * 1024;

/// Bytes of frames that may wait to be written before a write waits for them to go.
const WRITE_BUFFER: usize = 64 * 1024;

/// The longest response head to the upgrade accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// What the server appends to the key before hashing it (RFC 6455, 1.3).
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Upgrades `inner`, a connection to `host`, to a WebSocket on `path`.
///
/// # Errors
/// When the connection fails or closes, or the server does not answer with a valid
/// `101 Switching Protocols` (the error quotes its status line).
pub async fn upgrade<S>(
    mut inner: S,
    host: SocketAddr,
    path: &str,
    framing: Framing,
) -> io::Result<WsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut masks = MaskKeys::new();
    let mut nonce = [0u8; 16];
    for chunk in nonce.chunks_mut(4) {
        chunk.copy_from_slice(&masks.next_key());
    }
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    inner.write_all(request.as_bytes()).await?;
    inner.flush().await?;
    let mut rx = vec![0u8; READ_BUFFER].into_boxed_slice();
    let mut end = 0;
    let head = loop {
        if let Some(at) = memchr::memmem::find(&rx[..end], b"\r\n\r\n") {
            break at + 4;
        }
        if end >= MAX_RESPONSE_HEAD {
            return Err(invalid("the upgrade's response head is too long"));
        }
        let read = inner.read(&mut rx[end..MAX_RESPONSE_HEAD + 4]).await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during the WebSocket upgrade",
            ));
        }
        end += read;
    };
    check_response(&rx[..head], &accept_for(&key))?;
    // Whatever came after the head (NATS sends its INFO at once) is the first frames.
    Ok(WsStream {
        inner,
        framing,
        rx,
        rx_start: head,
        rx_end: end,
        payload_left: 0,
        final_frame: false,
        newline_due: false,
        closed: false,
        collecting: false,
        fragments: Vec::new(),
        tx: Vec::with_capacity(4096),
        tx_sent: 0,
        masks,
        waiting_writer: None,
    })
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with.
fn accept_for(key: &str) -> String {
    let digest = sha1::Sha1::digest(format!("{key}{ACCEPT_GUID}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// Checks the upgrade's response head (status line and headers, up to the blank line).
fn check_response(head: &[u8], accept: &str) -> io::Result<()> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101") {
        return Err(invalid(&format!(
            "the server refused the WebSocket upgrade: {status}"
        )));
    }
    let (mut upgrade, mut connection, mut accepted) = (false, false, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade = value.eq_ignore_ascii_case("websocket"),
            "connection" => {
                connection = value
                    .split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
            }
            "sec-websocket-accept" => accepted = value == accept,
            "sec-websocket-extensions" => {
                return Err(invalid(&format!(
                    "the server chose an extension nobody asked for: {value}"
                )));
            }
            _ => {}
        }
    }
    if !(upgrade && connection && accepted) {
        return Err(invalid(&format!(
            "the server's 101 lacks a valid Upgrade, Connection or Sec-WebSocket-Accept:\n{head}"
        )));
    }
    Ok(())
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Masking keys: xorshift32, seeded differently for every connection. RFC 6455 asks
/// for unpredictable keys against proxies' cache poisoning; between the bench and a
/// server on loopback there is nobody to poison.
#[derive(Debug)]
struct MaskKeys(u32);

impl MaskKeys {
    fn new() -> Self {
        static CONNECTIONS: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        Self((nanos ^ n.wrapping_mul(0x9e37_79b9)) | 1)
    }

    fn next_key(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x.to_be_bytes()
    }
}

/// A frame's header, as the server sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    /// Its length in bytes (2, 4 or 10: servers do not mask).
    len: usize,
    payload_len: u64,
}

impl Header {
    /// The header at the start of `bytes`, `None` if it is not all there yet.
    fn parse(bytes: &[u8]) -> io::Result<Option<Self>> {
        let [b0, b1, ..] = *bytes else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(invalid(
                "a frame with RSV bits, and no extension was agreed",
            ));
        }
        if b1 & 0x80 != 0 {
            return Err(invalid("a masked frame from the server"));
        }
        let (len, payload_len) = match b1 & 0x7f {
            126 => match bytes.get(2..4) {
                Some(&[a, b]) => (4, u64::from(u16::from_be_bytes([a, b]))),
                _ => return Ok(None),
            },
            127 => match bytes.get(2..10) {
                Some(ext) => {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(ext);
                    let n = u64::from_be_bytes(be);
                    if n >> 63 != 0 {
                        return Err(invalid("a frame length with its top bit set"));
                    }
                    (10, n)
                }
                None => return Ok(None),
            },
            n => (2, u64::from(n)),
        };
        let header = Self {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0f,
            len,
            payload_len,
        };
        if header.opcode >= OP_CLOSE
            && (!header.fin || header.payload_len > MAX_CONTROL_PAYLOAD as u64)
        {
            return Err(invalid("a fragmented or oversized control frame"));
        }
        Ok(Some(header))
    }
}

/// A WebSocket over `S`, read and written as bytes in its [`Framing`]. See the
/// module documentation.
#[derive(Debug)]
pub struct WsStream<S> {
    inner: S,
    framing: Framing,
    /// Bytes read from `inner`, not yet decoded: `rx[rx_start..rx_end]`.
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    /// Payload bytes still to come of the data frame being read.
    payload_left: u64,
    /// Whether that frame is its message's last (in `Lines`, the end of a line).
    final_frame: bool,
    /// A line's `\n` is owed to the reader (its frame ended as its buffer filled).
    newline_due: bool,
    /// The server closed (and was answered): reading is over.
    closed: bool,
    /// With [`Self::drain_lines`]: the frame being read is collected into
    /// `fragments` (a fragmented message, or one bigger than `rx`), not dropped.
    collecting: bool,
    fragments: Vec<u8>,
    /// Encoded frames to write: `tx[tx_sent..]`.
    tx: Vec<u8>,
    tx_sent: usize,
    masks: MaskKeys,
    /// A writer waiting for `tx` to drain. A split stream's reader may drain it (to
    /// send a pong) and take over the socket's write-readiness wake-up (tokio keeps
    /// one per direction): it wakes the writer when it has.
    waiting_writer: Option<Waker>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Appends one masked frame to `tx`.
    fn queue_frame(&mut self, opcode: u8, payload: &[u8]) {
        let tx = &mut self.tx;
        tx.push(0x80 | opcode);
        let len = payload.len();
        if len < 126 {
            tx.push(0x80 | len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            tx.push(0x80 | 126);
            tx.extend_from_slice(&len.to_be_bytes());
        } else {
            tx.push(0x80 | 127);
            tx.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let key = self.masks.next_key();
        tx.extend_from_slice(&key);
        let start = tx.len();
        tx.extend_from_slice(payload);
        for (i, byte) in tx[start..].iter_mut().enumerate() {
            *byte ^= key[i & 3];
        }
    }

    /// How its bytes map to frames.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Encodes what the bench writes as frames, in the stream's framing.
    fn encode(&mut self, bytes: &[u8]) {
        match self.framing {
            Framing::Stream => self.queue_frame(OP_BINARY, bytes),
            Framing::Lines => {
                // The bench writes whole lines; a last piece without `\n` goes as a
                // line too. Empty lines are nothing, as in line mode.
                for line in bytes.split(|&b| b == b'\n') {
                    if !line.is_empty() {
                        self.queue_frame(OP_TEXT, line);
                    }
                }
            }
        }
    }

    /// Writes `tx` out; ready once all of it is written.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tx_sent < self.tx.len() {
            let written =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.tx[self.tx_sent..]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tx_sent += written;
        }
        self.tx.clear();
        self.tx_sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Ends the data frame just read: in `Lines`, a final frame ends a line.
    fn end_frame(&mut self) {
        if self.final_frame && self.framing == Framing::Lines {
            self.newline_due = true;
        }
    }

    /// Decodes the frames in `rx` into `out` as far as both allow: data frames'
    /// payloads (and `\n`s in `Lines`) into `out`, control frames answered into `tx`.
    fn decode(&mut self, out: &mut ReadBuf<'_>) -> io::Result<()> {
        loop {
            if self.newline_due {
                if out.remaining() == 0 {
                    return Ok(());
                }
                out.put_slice(b"\n");
                self.newline_due = false;
            }
            if self.payload_left > 0 {
                let available = self.rx_end - self.rx_start;
                let n = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(available)
                    .min(out.remaining());
                if n == 0 {
                    return Ok(());
                }
                out.put_slice(&self.rx[self.rx_start..self.rx_start + n]);
                self.rx_start += n;
                self.payload_left -= n as u64;
                if self.payload_left == 0 {
                    self.end_frame();
                }
                continue;
            }
            let Some(header) = Header::parse(&self.rx[self.rx_start..self.rx_end])? else {
                return Ok(());
            };
            match header.opcode {
                OP_CONTINUATION | OP_TEXT | OP_BINARY => {
                    self.rx_start += header.len;
                    self.payload_left = header.payload_len;
                    self.final_frame = header.fin;
                    if header.payload_len == 0 {
                        self.end_frame();
                    }
                }
                OP_CLOSE | OP_PING | OP_PONG => {
                    if !self.control(header) || self.closed {
                        return Ok(());
                    }
                }
                opcode => return Err(invalid(&format!("a frame with opcode {opcode:#x}"))),
            }
        }
    }

    /// Answers the control frame at the start of `rx` (its header is `header`), if
    /// it is all there: a ping with a pong, a close with a close. Returns whether it
    /// was (and consumed).
    fn control(&mut self, header: Header) -> bool {
        // At most 125 bytes (checked by the parser).
        let payload_len = header.payload_len as usize;
        let frame = header.len + payload_len;
        if self.rx_end - self.rx_start < frame {
            return false;
        }
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        let from = self.rx_start + header.len;
        payload[..payload_len].copy_from_slice(&self.rx[from..from + payload_len]);
        self.rx_start += frame;
        match header.opcode {
            OP_PING => self.queue_frame(OP_PONG, &payload[..payload_len]),
            OP_CLOSE => {
                // Answered with its status code, if it had one.
                let code = payload_len.min(2);
                self.queue_frame(OP_CLOSE, &payload[..code]);
                self.closed = true;
            }
            _ => {}
        }
        true
    }

    /// Reads more of what the server sent into the read buffer, after answering
    /// what control frames wait, for [`Self::drain_lines`]. Ready with the bytes
    /// read: 0 at the end (the connection's, or the server's close).
    ///
    /// # Errors
    /// When the connection fails.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.answer(cx)?;
        if self.closed {
            return Poll::Ready(Ok(0));
        }
        // What is left is a piece of one frame that fits the buffer: to the front.
        self.rx.copy_within(self.rx_start..self.rx_end, 0);
        self.rx_end -= self.rx_start;
        self.rx_start = 0;
        let mut raw = ReadBuf::new(&mut self.rx[self.rx_end..]);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut raw))?;
        let read = raw.filled().len();
        self.rx_end += read;
        Poll::Ready(Ok(read))
    }

    /// For the `Lines` framing: calls `line` with every whole message read so far
    /// (a line, without `\n`) where it lies in the read buffer, and answers control
    /// frames as reading does. A fragmented message, or one bigger than the buffer,
    /// is collected first. What `poll_read` left of a frame begun is dropped: read
    /// with one or the other, not both in turn.
    ///
    /// # Errors
    /// When a frame breaks the protocol.
    pub fn drain_lines(&mut self, mut line: impl FnMut(&[u8])) -> io::Result<()> {
        self.newline_due = false;
        while !self.closed {
            let available = self.rx_end - self.rx_start;
            if self.payload_left > 0 {
                let n = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(available);
                if self.collecting {
                    self.fragments
                        .extend_from_slice(&self.rx[self.rx_start..self.rx_start + n]);
                }
                self.rx_start += n;
                self.payload_left -= n as u64;
                if self.payload_left > 0 {
                    return Ok(());
                }
                if self.collecting && self.final_frame {
                    line(&self.fragments);
                    self.fragments.clear();
                    self.collecting = false;
                }
                continue;
            }
            let Some(header) = Header::parse(&self.rx[self.rx_start..self.rx_end])? else {
                return Ok(());
            };
            match header.opcode {
                OP_CONTINUATION | OP_TEXT | OP_BINARY => {
                    let whole = header.len as u64 + header.payload_len;
                    let unfragmented =
                        header.fin && header.opcode != OP_CONTINUATION && !self.collecting;
                    if unfragmented && whole <= available as u64 {
                        let from = self.rx_start + header.len;
                        let to = self.rx_start + whole as usize;
                        line(&self.rx[from..to]);
                        self.rx_start = to;
                        continue;
                    }
                    if unfragmented && whole <= self.rx.len() as u64 {
                        // The rest comes with the next read.
                        return Ok(());
                    }
                    self.collecting = true;
                    self.final_frame = header.fin;
                    self.rx_start += header.len;
                    self.payload_left = header.payload_len;
                    if header.payload_len == 0 && header.fin {
                        line(&self.fragments);
                        self.fragments.clear();
                        self.collecting = false;
                    }
                }
                OP_CLOSE | OP_PING | OP_PONG => {
                    if !self.control(header) {
                        return Ok(());
                    }
                }
                opcode => return Err(invalid(&format!("a frame with opcode {opcode:#x}"))),
            }
        }
        Ok(())
    }

    /// Sends what control frames wait, from the reading side; never waits for it.
    fn answer(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.tx.is_empty() {
            return Ok(());
        }
        match self.poll_send(cx) {
            Poll::Ready(Ok(())) => {
                if let Some(writer) = self.waiting_writer.take() {
                    writer.wake();
                }
                Ok(())
            }
            Poll::Ready(Err(error)) => Err(error),
            // The socket will say when it can take more: this task is woken then.
            Poll::Pending => Ok(()),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let before = out.filled().len();
            this.decode(out)?;
            // Pongs and the close's answer go out as soon as they are decoded.
            this.answer(cx)?;
            if out.filled().len() > before || this.closed || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Nothing decodable is left but a piece of a header or of a control
            // frame (at most 135 bytes): to the front, and read after it.
            this.rx.copy_within(this.rx_start..this.rx_end, 0);
            this.rx_end -= this.rx_start;
            this.rx_start = 0;
            let mut raw = ReadBuf::new(&mut this.rx[this.rx_end..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut raw))?;
            let read = raw.filled().len();
            if read == 0 {
                if this.payload_left > 0 || this.rx_end > 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed in the middle of a frame",
                    )));
                }
                return Poll::Ready(Ok(()));
            }
            this.rx_end += read;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.tx.len() - this.tx_sent >= WRITE_BUFFER {
            match this.poll_send(cx) {
                Poll::Ready(result) => result?,
                Poll::Pending => {
                    this.waiting_writer = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
        this.encode(bytes);
        // Sent now if the socket takes it; a flush waits for the rest.
        if let Poll::Ready(Err(error)) = this.poll_send(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_send(cx).is_pending() {
            this.waiting_writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame (unmasked) with `payload`.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    /// Client frames in `bytes`, unmasked: (opcode, payload) each, checking that
    /// every one is final and masked.
    fn client_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(bytes[0] & 0xf0, 0x80, "final, no RSV bits");
            assert_eq!(bytes[1] & 0x80, 0x80, "masked");
            let (len, at) = match bytes[1] & 0x7f {
                126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
                127 => (
                    u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (usize::from(n), 2),
            };
            let key = &bytes[at..at + 4];
            let payload = bytes[at + 4..at + 4 + len]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            frames.push((bytes[0] & 0x0f, payload));
            bytes = &bytes[at + 4 + len..];
        }
        frames
    }

    /// A `WsStream` over one end of an in-memory pipe, past the upgrade (`rx` holds
    /// `first`), and the other end.
    fn pair(framing: Framing, first: &[u8]) -> (WsStream<tokio::io::DuplexStream>, Peer) {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let mut rx = vec![0u8; READ_BUFFER].into_boxed_slice();
        rx[..first.len()].copy_from_slice(first);
        let stream = WsStream {
            inner: ours,
            framing,
            rx,
            rx_start: 0,
            rx_end: first.len(),
            payload_left: 0,
            final_frame: false,
            newline_due: false,
            closed: false,
            collecting: false,
            fragments: Vec::new(),
            tx: Vec::new(),
            tx_sent: 0,
            masks: MaskKeys::new(),
            waiting_writer: None,
        };
        (stream, Peer(theirs))
    }

    struct Peer(tokio::io::DuplexStream);

    impl Peer {
        /// Writes `bytes` in pieces of `chunk` bytes, each flushed on its own.
        async fn send_in_pieces(&mut self, bytes: &[u8], chunk: usize) {
            for piece in bytes.chunks(chunk.max(1)) {
                self.0.write_all(piece).await.unwrap();
                self.0.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        }

        /// What the client has written so far, as frames.
        async fn frames(&mut self) -> Vec<(u8, Vec<u8>)> {
            let mut bytes = vec![0u8; 1 << 16];
            let n =
                tokio::time::timeout(std::time::Duration::from_secs(5), self.0.read(&mut bytes))
                    .await
                    .expect("the client wrote nothing")
                    .unwrap();
            client_frames(&bytes[..n])
        }
    }

    /// Reads everything until EOF through a small buffer, as many reads as it takes.
    async fn read_all(stream: &mut WsStream<tokio::io::DuplexStream>, buffer: usize) -> Vec<u8> {
        let mut all = Vec::new();
        let mut buf = vec![0u8; buffer];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                return all;
            }
            all.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn the_accept_key_is_the_rfc_s() {
        // RFC 6455, section 1.3.
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn only_a_complete_101_is_an_upgrade() {
        let accept = accept_for("x");
        let good = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        check_response(good.as_bytes(), &accept).unwrap();
        let error = check_response(b"HTTP/1.1 404 Not Found\r\n\r\n", &accept).unwrap_err();
        assert!(error.to_string().contains("404 Not Found"), "{error}");
        let wrong = good.replace(&accept, "AAAA");
        assert!(check_response(wrong.as_bytes(), &accept).is_err());
        let deflate = good.replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        );
        assert!(check_response(deflate.as_bytes(), &accept).is_err());
    }

    /// Frames of every length encoding, fragmented ones and control frames between
    /// them read the same in any split, through any size of buffer.
    #[tokio::test]
    async fn lines_mode_reads_one_line_per_message_in_every_split() {
        let long = vec![b'a'; 300];
        let huge = vec![b'b'; 70_000];
        let mut wire = Vec::new();
        wire.extend(frame(true, OP_TEXT, b"Welcome"));
        wire.extend(frame(true, OP_TEXT, &long));
        wire.extend(frame(false, OP_TEXT, b"bob: he"));
        wire.extend(frame(true, OP_PING, b"are you there"));
        wire.extend(frame(true, OP_CONTINUATION, b"llo"));
        wire.extend(frame(true, OP_TEXT, b""));
        wire.extend(frame(true, OP_TEXT, &huge));
        wire.extend(frame(true, OP_PONG, b""));
        wire.extend(frame(true, OP_CLOSE, &[0x03, 0xe8, b'b', b'y', b'e']));
        let mut expected = b"Welcome\n".to_vec();
        expected.extend(&long);
        expected.extend(b"\nbob: hello\n\n");
        expected.extend(&huge);
        expected.push(b'\n');
        for (chunk, buffer) in [(wire.len(), 1 << 20), (1, 7), (3, 1), (4096, 100)] {
            let (mut stream, mut peer) = pair(Framing::Lines, &[]);
            let wire = wire.clone();
            let reading = async { read_all(&mut stream, buffer).await };
            let (read, ()) = tokio::join!(reading, peer.send_in_pieces(&wire, chunk));
            assert!(read == expected, "chunk {chunk}, buffer {buffer}");
            // The ping answered with its payload, the close with its code.
            let frames = peer.frames().await;
            assert_eq!(
                frames,
                [
                    (OP_PONG, b"are you there".to_vec()),
                    (OP_CLOSE, vec![0x03, 0xe8])
                ]
            );
        }
    }

    /// The viewer's way: the same lines, whole, in any split, with a message
    /// fragmented and one bigger than the read buffer among them.
    #[tokio::test]
    async fn drained_lines_are_the_same_in_every_split() {
        let huge = vec![b'h'; READ_BUFFER + 10];
        let mut wire = Vec::new();
        wire.extend(frame(true, OP_TEXT, b"Welcome"));
        wire.extend(frame(false, OP_TEXT, b"bob: he"));
        wire.extend(frame(true, OP_PING, b"?"));
        wire.extend(frame(true, OP_CONTINUATION, b"llo"));
        wire.extend(frame(true, OP_TEXT, &huge));
        wire.extend(frame(true, OP_TEXT, b""));
        wire.extend(frame(true, OP_TEXT, b"last"));
        wire.extend(frame(true, OP_CLOSE, &[0x03, 0xe8]));
        for chunk in [wire.len(), 1, 5, 4096] {
            let (mut stream, mut peer) = pair(Framing::Lines, &[]);
            let wire = wire.clone();
            let reading = async {
                let mut lines = Vec::new();
                loop {
                    let read = std::future::poll_fn(|cx| stream.poll_fill(cx))
                        .await
                        .unwrap();
                    stream.drain_lines(|l| lines.push(l.to_vec())).unwrap();
                    if read == 0 {
                        return lines;
                    }
                }
            };
            let (lines, ()) = tokio::join!(reading, peer.send_in_pieces(&wire, chunk));
            assert_eq!(lines.len(), 5, "chunk {chunk}");
            assert_eq!(lines[0], b"Welcome");
            assert_eq!(lines[1], b"bob: hello");
            assert!(lines[2] == huge, "chunk {chunk}");
            assert_eq!(lines[3], b"");
            assert_eq!(lines[4], b"last");
            assert_eq!(
                peer.frames().await,
                [(OP_PONG, b"?".to_vec()), (OP_CLOSE, vec![0x03, 0xe8])]
            );
        }
    }

    #[tokio::test]
    async fn stream_mode_joins_payloads_across_frames() {
        let mut wire = frame(true, OP_BINARY, b"INFO {}\r\nMSG bench 1 5\r\nhel");
        wire.extend(frame(true, OP_BINARY, b"lo\r\nMSG bench 1 2\r\nhi\r\n"));
        wire.extend(frame(true, OP_CLOSE, b""));
        let (mut stream, _peer) = pair(Framing::Stream, &wire);
        assert_eq!(
            read_all(&mut stream, 10).await,
            b"INFO {}\r\nMSG bench 1 5\r\nhello\r\nMSG bench 1 2\r\nhi\r\n"
        );
    }

    #[tokio::test]
    async fn writes_are_masked_frames_one_per_line_or_one_per_write() {
        let (mut lines, mut peer) = pair(Framing::Lines, &[]);
        let long = vec![b'c'; 1000];
        let mut text = b"name:bob\n\nhello\n".to_vec();
        text.extend(&long);
        text.push(b'\n');
        lines.write_all(&text).await.unwrap();
        lines.flush().await.unwrap();
        assert_eq!(
            peer.frames().await,
            [
                (OP_TEXT, b"name:bob".to_vec()),
                (OP_TEXT, b"hello".to_vec()),
                (OP_TEXT, long.clone()),
            ]
        );
        let (mut binary, mut peer) = pair(Framing::Stream, &[]);
        binary.write_all(b"PUB bench 2\r\nhi\r\n").await.unwrap();
        binary.flush().await.unwrap();
        assert_eq!(
            peer.frames().await,
            [(OP_BINARY, b"PUB bench 2\r\nhi\r\n".to_vec())]
        );
    }

    #[tokio::test]
    async fn broken_frames_are_errors() {
        for wire in [
            vec![0x81, 0x85, 1, 2, 3, 4, 0, 0, 0, 0, 0], // masked by the server
            vec![0xc1, 0x00],                            // RSV1: compressed, unasked
            vec![0x09, 0x00],                            // a fragmented ping
            vec![0x83, 0x00],                            // opcode 3
        ] {
            let (mut stream, _peer) = pair(Framing::Lines, &wire);
            let mut buf = [0u8; 16];
            assert!(stream.read(&mut buf).await.is_err(), "{wire:?}");
        }
        // Closed halfway through a frame.
        let (mut stream, peer) = pair(Framing::Lines, &[0x81, 0x05, b'a']);
        drop(peer);
        let mut buf = [0u8; 16];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 1);
        assert!(stream.read(&mut buf).await.is_err());
    }

    /// The whole upgrade against a minimal server: what it sends right after its 101
    /// is the first frames.
    #[tokio::test]
    async fn upgrade_checks_the_answer_and_keeps_what_follows() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
            }
            let request = String::from_utf8(request).unwrap();
            let key = request
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap()
                .to_owned();
            let mut answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                accept_for(&key)
            )
            .into_bytes();
            answer.extend(frame(true, OP_TEXT, b"Welcome"));
            socket.write_all(&answer).await.unwrap();
            request
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut ws = upgrade(tcp, addr, "/ws", Framing::Lines).await.unwrap();
        let mut buf = [0u8; 64];
        let n = ws.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"Welcome\n");
        let request = server.await.unwrap();
        assert!(request.starts_with("GET /ws HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(!request.to_ascii_lowercase().contains("origin"));
    }
}
