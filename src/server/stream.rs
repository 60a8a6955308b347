//! The byte-stream transport: one session loop for every connection that is a
//! stream of bytes (plain TCP, TLS over TCP), in seed mode or line mode.
//!
//! A connection runs its handshake (under the deadline its listener set, with the
//! seed grace when its first read is exactly a seed handshake), joins the room, and
//! then translates between its stream and its [`Member`] until it ends: reading when
//! the member wants input and framing what it reads into messages, writing what the
//! member hands it, and closing as the member's farewell says. It decides no room
//! rule: flood control, the slow-viewer rule, shutdown and goodbyes are the member's.
//!
//! The loop is a hand-written `poll` rather than a `select!` over futures: it holds
//! no future per event source, only the stream's own readiness registration, the
//! member's waker and, when in use, the member's boxed timers. An idle viewer's whole
//! state is a few hundred bytes.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, sleep, sleep_until};
use tracing::{debug, info};

use super::admission::Admission;
use crate::config::{Config, LINE_READ_BYTES, LINGER, LINGER_BYTES};
use crate::hub::{End, Farewell, Hub, HubError, JoinRequest, Member, Reservation, Wants};
use crate::protocol::handshake::{HandshakeReader, Outcome, Step};
use crate::protocol::line::{LineFramer, take_seed_message};
use crate::protocol::wire::{Format, Notice};
use crate::protocol::{Hello, Mode};
use crate::room::ConnId;
use crate::socket;

/// Reads of a viewer's (ignored) input per round, so a viewer that floods cannot
/// keep its task busy forever.
const VIEWER_READS_PER_ROUND: usize = 8;

/// Rounds of the loop per wake-up before yielding to other tasks.
const ROUNDS_PER_WAKE: usize = 32;

/// Bytes read on the stack before a sender's read buffer is allocated: an idle
/// sender polled for nothing allocates nothing.
const FIRST_READ_BYTES: usize = 4096;

/// A byte stream a member can be served over.
pub(super) trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// How the transport is named in logs.
    const TRANSPORT: &'static str;

    /// Whether a write may leave bytes buffered in the stream (TLS records) that
    /// only a flush sends on.
    const BUFFERS_WRITES: bool;

    /// The TCP socket underneath.
    fn tcp(&self) -> &TcpStream;
}

impl ByteStream for TcpStream {
    const TRANSPORT: &'static str = "tcp";
    const BUFFERS_WRITES: bool = false;

    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl ByteStream for tokio_rustls::server::TlsStream<TcpStream> {
    const TRANSPORT: &'static str = "tls";
    const BUFFERS_WRITES: bool = true;

    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// What a connection needs besides its stream.
pub(super) struct Arrival {
    pub(super) peer: SocketAddr,
    pub(super) id: ConnId,
    pub(super) hub: Hub,
    pub(super) config: Arc<Config>,
    pub(super) admission: Admission,
    /// When the handshake must be done (the TLS handshake counts against it too).
    pub(super) deadline: Instant,
    /// Whether a seed handshake is possible (not over TLS: the original clients have
    /// none).
    pub(super) seed_allowed: bool,
}

/// Serves one connection from its handshake to its close.
///
/// Not an `async fn`: its arguments would stay in the task for its whole life. They
/// move into the boxed admission instead, and only the session stays.
pub(super) fn serve<S: ByteStream>(stream: S, arrival: Arrival) -> impl Future<Output = ()> + Send {
    let admitted = Box::pin(admit(stream, arrival));
    async move {
        let Some(mut session) = admitted.await else {
            return;
        };
        let end = session.run().await;
        // Boxed: the close's state is needed once, not kept in every connection.
        Box::pin(session.close(end)).await;
    }
}

/// The handshake and the join: a running session, or `None` if the connection was
/// refused (and closed) or went away.
async fn admit<S: ByteStream>(mut stream: S, arrival: Arrival) -> Option<Session<S>> {
    let Arrival {
        peer,
        id,
        hub,
        config,
        admission,
        deadline,
        seed_allowed,
    } = arrival;
    let mut reservation = None;
    let mut handshake = Handshake {
        stream: &mut stream,
        id,
        hub: &hub,
        config: &config,
        reservation: &mut reservation,
    };
    let (hello, rest) = match handshake.run(deadline, seed_allowed).await {
        Handshaken::Hello { hello, rest } => (hello, rest),
        Handshaken::Refused { mode, code, reason } => {
            info!(conn = %id, %peer, %reason, %mode, transport = %S::TRANSPORT, "refused");
            hub.metrics().refused(code);
            if code == "handshake-timeout" {
                hub.metrics().handshake_timeouts.inc();
            }
            drop(reservation);
            let notice = Format::of(mode, false).notice(&Notice::error(code, &reason));
            let farewell = Farewell {
                last_words: notice,
                flush_within: LINGER,
                linger: LINGER,
            };
            close_gracefully(&mut stream, farewell).await;
            return None;
        }
        Handshaken::Closed => return None,
    };

    let format = Format::of(hello.mode, hello.options.tags);
    let request = JoinRequest {
        id,
        role: hello.role,
        name: hello.name.clone(),
        format,
        options: hello.options,
        flood_controlled: admission.is_flood_controlled(),
        reservation,
    };
    let mut member = match hub.join(request).await {
        Ok(member) => member,
        Err(HubError::Join(error)) => {
            info!(conn = %id, %peer, reason = %error, mode = %hello.mode, transport = %S::TRANSPORT, "refused");
            hub.metrics().refused(error.code());
            let notice = format.notice(&Notice::error(error.code(), &error));
            let farewell = Farewell {
                last_words: notice,
                flush_within: LINGER,
                linger: LINGER,
            };
            close_gracefully(&mut stream, farewell).await;
            return None;
        }
        Err(HubError::Stopped) => return None,
    };
    match &hello.name {
        Some(name) => {
            info!(conn = %id, %peer, role = %hello.role, name, mode = %hello.mode, transport = %S::TRANSPORT, "joined");
        }
        None => {
            info!(conn = %id, %peer, role = %hello.role, mode = %hello.mode, transport = %S::TRANSPORT, "joined");
        }
    }

    let reader = hello.role.sends().then(|| {
        let mut reader = Box::new(Reader {
            buf: BytesMut::new(),
            framer: (hello.mode == Mode::Line).then(|| LineFramer::new(config.max_message_bytes)),
            // Seed mode: one read is one message, so it is also the size limit.
            read_size: match hello.mode {
                Mode::Seed => config.max_message_bytes.max(1),
                Mode::Line => config.max_message_bytes.max(LINE_READ_BYTES),
            },
        });
        match hello.mode {
            // What a seed client wrote during the grace: one message per read.
            Mode::Seed => rest.into_iter().for_each(|message| member.post(message)),
            Mode::Line => rest.iter().for_each(|r| reader.buf.extend_from_slice(r)),
        }
        reader
    });
    let open = Open::new(
        hub.metrics(),
        S::TRANSPORT,
        &hello.role.to_string(),
        &hello.mode.to_string(),
    );
    Some(Session {
        stream,
        member,
        reader,
        _admission: admission,
        _open: open,
    })
}

/// A connection counted as open (`tcpchat_connections_open`) for as long as it is.
struct Open(prometheus_client::metrics::gauge::Gauge);

impl Open {
    fn new(metrics: &crate::metrics::Metrics, transport: &str, role: &str, mode: &str) -> Self {
        let gauge = metrics
            .connections_open
            .get_or_create(&crate::metrics::Connection {
                transport: transport.to_owned(),
                role: role.to_owned(),
                mode: mode.to_owned(),
            })
            .clone();
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

enum Handshaken {
    Hello {
        hello: Hello,
        rest: Vec<Bytes>,
    },
    Refused {
        mode: Mode,
        code: &'static str,
        reason: String,
    },
    /// The peer went away, or the server is stopping.
    Closed,
}

/// A connection's handshake in progress.
struct Handshake<'a, S> {
    stream: &'a mut S,
    id: ConnId,
    hub: &'a Hub,
    config: &'a Config,
    reservation: &'a mut Option<Reservation>,
}

impl<S: ByteStream> Handshake<'_, S> {
    async fn run(&mut self, deadline: Instant, seed_allowed: bool) -> Handshaken {
        let config = self.config;
        let mut reader = if seed_allowed {
            HandshakeReader::new(config.max_handshake_bytes, config.max_name_chars)
        } else {
            HandshakeReader::line_only(config.max_handshake_bytes, config.max_name_chars)
        };
        let deadline = sleep_until(deadline);
        let stopping = self.hub.stopping();
        tokio::pin!(deadline, stopping);
        let mut grace: Option<Pin<Box<Sleep>>> = None;
        let mut buf = [0u8; 512];
        let outcome = loop {
            tokio::select! {
                () = &mut stopping => return Handshaken::Closed,
                () = &mut deadline => break reader.timed_out(),
                () = elapsed(&mut grace) => break reader.conclude_seed(),
                read = self.stream.read(&mut buf) => {
                    let n = match read {
                        // A seed client may send its handshake and a message, then close.
                        Ok(0) if grace.is_some() => break reader.conclude_seed(),
                        Ok(0) => {
                            debug!(conn = %self.id, "closed during the handshake");
                            return Handshaken::Closed;
                        }
                        Ok(n) => n,
                        Err(error) => {
                            debug!(conn = %self.id, %error, "gone during the handshake");
                            return Handshaken::Closed;
                        }
                    };
                    match reader.push(&buf[..n]) {
                        Step::NeedMore => {}
                        Step::Done(outcome) => break outcome,
                        Step::SeedCandidate { name, .. } => {
                            grace = Some(Box::pin(sleep(config.seed_grace)));
                            // Hold the name now, so an original Messenger, which takes
                            // "still connected after 10 ms" as accepted, is refused in time.
                            if let Some(name) = name {
                                match self.hub.reserve(self.id, name).await {
                                    Ok(held) => *self.reservation = Some(held),
                                    Err(HubError::Join(error)) => {
                                        return Handshaken::Refused {
                                            mode: Mode::Seed,
                                            code: error.code(),
                                            reason: error.to_string(),
                                        };
                                    }
                                    Err(HubError::Stopped) => return Handshaken::Closed,
                                }
                            }
                        }
                    }
                }
            }
        };
        match outcome {
            Outcome::Hello { hello, rest } => Handshaken::Hello { hello, rest },
            Outcome::Refused { mode, error } => Handshaken::Refused {
                mode,
                code: error.code(),
                reason: error.to_string(),
            },
        }
    }
}

async fn elapsed(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// A sender's input: what was read and not yet framed. Boxed: viewers do not carry it.
struct Reader {
    /// Empty (no allocation) while idle.
    buf: BytesMut,
    /// `None` in seed mode, where every read is a message.
    framer: Option<LineFramer>,
    /// Most bytes taken from the stream in one round.
    read_size: usize,
}

impl Reader {
    /// The next message from what is buffered, if a whole one is there.
    fn frame(&mut self) -> Result<Option<Bytes>, End> {
        let message = match &mut self.framer {
            Some(framer) => framer.next_chunk(&mut self.buf).map_err(End::TooLong)?,
            None => take_seed_message(&mut self.buf),
        };
        if self.buf.is_empty() {
            // Let go of the read buffer: an idle connection holds no memory.
            self.buf = BytesMut::new();
        }
        Ok(message)
    }

    /// Reads what the stream has, up to `read_size`. `Ok(0)` at the end of the stream.
    fn poll_fill<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut S,
    ) -> Poll<io::Result<usize>> {
        let mut first = [0u8; FIRST_READ_BYTES];
        let limit = self.read_size.min(FIRST_READ_BYTES);
        let mut read = ReadBuf::new(&mut first[..limit]);
        ready!(Pin::new(&mut *stream).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        self.buf.extend_from_slice(read.filled());
        if n < limit || self.read_size <= limit {
            return Poll::Ready(Ok(n));
        }
        // More is waiting: read it straight into the buffer.
        let more = self.read_size - n;
        self.buf.reserve(more);
        let mut rest = (&mut self.buf).limit(more);
        match tokio_util::io::poll_read_buf(Pin::new(stream), cx, &mut rest) {
            Poll::Ready(Ok(m)) => Poll::Ready(Ok(n + m)),
            // What was read is handled first; the error (or the end) comes again.
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Ready(Ok(n)),
        }
    }
}

/// One member's connection after its handshake.
struct Session<S> {
    stream: S,
    member: Member,
    /// For senders.
    reader: Option<Box<Reader>>,
    /// The connection's places under the server's limits, given back at the end.
    _admission: Admission,
    _open: Open,
}

impl<S: ByteStream> Session<S> {
    /// Runs until the connection ends; returns how.
    async fn run(&mut self) -> End {
        poll_fn(|cx| self.poll(cx)).await
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        // Registered first: a publish or a shutdown after this point wakes us.
        self.member.register(cx);
        for _ in 0..ROUNDS_PER_WAKE {
            match self.round(cx) {
                Err(end) => return Poll::Ready(end),
                Ok(false) => return Poll::Pending,
                Ok(true) => {}
            }
        }
        // Busy: let other connections run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// One pass over every source. Returns whether anything happened; when nothing
    /// did, every source has registered to wake us.
    fn round(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        let mut progress = self.member.poll_duties(cx)?;
        progress |= self.poll_input(cx)?;
        // Last, so that whatever became ready above goes out in this same round. Not
        // progress: it writes until nothing is ready or the stream is full (and then
        // the stream wakes us), so another round would find nothing new to write.
        self.poll_output(cx)?;
        self.member.poll_end(cx)?;
        Ok(progress)
    }

    /// Gives the member what it wants from the stream.
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        match self.member.wants() {
            Wants::Nothing => self.discard_input(cx),
            Wants::Message => self.read_message(cx),
            Wants::Buffered => {
                if let Some(reader) = &mut self.reader
                    && let Some(framer) = &mut reader.framer
                {
                    while let Ok(Some(message)) = framer.next_chunk(&mut reader.buf) {
                        self.member.post(message);
                    }
                }
                self.member.end_of_input();
                Ok(true)
            }
            Wants::Wait => {
                if self.member.is_held_back() && socket::is_peer_gone(self.stream.tcp()) {
                    return Err(End::LeftWhileHeldBack);
                }
                Ok(false)
            }
            Wants::Done => Ok(false),
        }
    }

    /// Frames the next message from what is buffered, reading more if needed.
    fn read_message(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        let Some(reader) = &mut self.reader else {
            return Ok(false);
        };
        if let Some(message) = reader.frame()? {
            self.member.post(message);
            return Ok(true);
        }
        match reader.poll_fill(cx, &mut self.stream) {
            Poll::Pending => Ok(false),
            Poll::Ready(Err(error)) => Err(End::PeerError(error)),
            Poll::Ready(Ok(0)) => {
                // The peer closed: its last line needs no `\n` to be complete.
                let rest = std::mem::take(&mut reader.buf).freeze();
                self.member.post(rest);
                self.member.end_of_input();
                Ok(true)
            }
            Poll::Ready(Ok(_)) => {
                if let Some(message) = reader.frame()? {
                    self.member.post(message);
                }
                Ok(true)
            }
        }
    }

    /// Reads and drops what a viewer sends; notices its departure.
    fn discard_input(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        let mut scratch = [0u8; 512];
        for _ in 0..VIEWER_READS_PER_ROUND {
            let mut read = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.stream).poll_read(cx, &mut read) {
                Poll::Pending => return Ok(false),
                Poll::Ready(Err(error)) => return Err(End::PeerError(error)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Err(End::PeerClosed),
                Poll::Ready(Ok(())) => {}
            }
        }
        Ok(true)
    }

    /// Writes what the member has for the stream, and flushes it. Returns whether
    /// anything was written.
    fn poll_output(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        let stream = &mut self.stream;
        let wrote = self.member.poll_write(cx, |cx, slices| match slices {
            // One buffer (the usual case at low rates) goes out with a plain write,
            // which costs the kernel less than a vector.
            [one] => Pin::new(&mut *stream).poll_write(cx, one),
            _ => Pin::new(&mut *stream).poll_write_vectored(cx, slices),
        })?;
        // Every round, not only after a write: a flush that could not finish (the
        // socket was full) must go on once it has room. Cheap when nothing waits.
        if S::BUFFERS_WRITES
            && let Poll::Ready(Err(error)) = Pin::new(&mut self.stream).poll_flush(cx)
        {
            return Err(End::PeerError(error));
        }
        Ok(wrote)
    }

    /// Tells the room and closes the connection as the member's farewell says.
    async fn close(self, end: End) {
        let Self {
            mut stream,
            member,
            reader,
            ..
        } = self;
        drop(reader);
        let farewell = member.finish(end).await;
        close_gracefully(&mut stream, farewell).await;
    }
}

/// Sends the farewell's last words, then closes our end (TLS: `close_notify`, then FIN),
/// within its `flush_within`; then reads until the peer closes too, within its
/// `linger`, so data it sent meanwhile does not turn the close into a reset that could
/// destroy the last words. Gives up reading after [`LINGER_BYTES`] of further input.
async fn close_gracefully<S: ByteStream>(stream: &mut S, farewell: Farewell) {
    let flushing = async {
        if let Some(bytes) = &farewell.last_words {
            stream.write_all(bytes).await?;
        }
        stream.shutdown().await
    };
    match tokio::time::timeout(farewell.flush_within, flushing).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            debug!(%error, "unclean close");
            return;
        }
        Err(_) => return,
    }
    let draining = async {
        let mut scratch = [0u8; 512];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut scratch).await? {
                0 => return Ok(()),
                n => drained += n,
            }
        }
        Ok(())
    };
    let result: Result<io::Result<()>, _> = tokio::time::timeout(farewell.linger, draining).await;
    if let Ok(Err(error)) = result {
        debug!(%error, "unclean close");
    }
}
