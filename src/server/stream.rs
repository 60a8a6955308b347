//! The byte-stream transport: one session loop for every connection that is a
//! stream of bytes (plain TCP, TLS over TCP), in seed mode, line mode, or line mode
//! in WebSocket frames (after an HTTP upgrade, on the same TCP or TLS stream).
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
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, sleep, sleep_until};
use tracing::{debug, info};

use super::admission::Admission;
use crate::config::{Config, LINE_READ_BYTES, LINGER, LINGER_BYTES};
use crate::hub::{End, Farewell, Hub, HubError, JoinRequest, Member, Reservation, Wants};
use crate::protocol::handshake::{HandshakeReader, Outcome, Step};
use crate::protocol::line::{LineFramer, take_seed_message};
use crate::protocol::websocket::{self, Frame, FrameError, FrameReader, close};
use crate::protocol::wire::{Format, Notice};
use crate::protocol::{Hello, Mode};
use crate::room::{ConnId, Role};
use crate::socket;

/// The close code of a refusal.
const POLICY_VIOLATION: u16 = close::POLICY_VIOLATION;

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

    /// How WebSocket over it is named in logs.
    const WEBSOCKET: &'static str;

    /// Whether a write may leave bytes buffered in the stream (TLS records) that
    /// only a flush sends on.
    const BUFFERS_WRITES: bool;

    /// The TCP socket underneath.
    fn tcp(&self) -> &TcpStream;
}

impl ByteStream for TcpStream {
    const TRANSPORT: &'static str = "tcp";
    const WEBSOCKET: &'static str = "ws";
    const BUFFERS_WRITES: bool = false;

    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl ByteStream for tokio_rustls::server::TlsStream<TcpStream> {
    const TRANSPORT: &'static str = "tls";
    const WEBSOCKET: &'static str = "wss";
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
    /// The server's password, if it has one.
    pub(super) password: Arc<super::password::Password>,
    /// The operator's bans.
    pub(super) bans: Arc<super::bans::Bans>,
    /// When the handshake must be done (the TLS handshake counts against it too).
    pub(super) deadline: Instant,
    pub(super) framing: Framing,
}

/// How a connection's bytes are framed.
pub(super) enum Framing {
    /// Lines (or the seed protocol's reads).
    Stream {
        /// Whether a seed handshake is possible (not over TLS: the original clients
        /// have none).
        seed_allowed: bool,
    },
    /// WebSocket frames, one line each, after an HTTP upgrade.
    WebSocket {
        /// What the HTTP side read past the upgrade request.
        pre_read: Bytes,
    },
}

impl Framing {
    fn is_websocket(&self) -> bool {
        matches!(self, Self::WebSocket { .. })
    }
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
        // Polled here rather than through an `async fn`, whose state would be kept
        // in every connection's task beside the session.
        let end = poll_fn(|cx| session.poll(cx)).await;
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
        password,
        bans,
        deadline,
        framing,
    } = arrival;
    let websocket = framing.is_websocket();
    let transport = if websocket {
        S::WEBSOCKET
    } else {
        S::TRANSPORT
    };
    let mut reservation = None;
    let mut handshake = Handshake {
        stream: &mut stream,
        id,
        hub: &hub,
        config: &config,
        reservation: &mut reservation,
    };
    let handshaken = match framing {
        Framing::Stream { seed_allowed } => handshake.run(deadline, seed_allowed).await,
        Framing::WebSocket { pre_read } => handshake.run_websocket(deadline, pre_read).await,
    };
    let handshaken = match handshaken {
        Handshaken::Hello { hello, rest } => match async {
            bans.check(peer.ip(), &hello)?;
            // Within the handshake's deadline, however many guesses wait for a check.
            tokio::time::timeout_at(deadline, password.check(peer.ip(), &hello))
                .await
                .unwrap_or_else(|_| {
                    Err((
                        "handshake-timeout",
                        "the password could not be checked in time; try again".to_owned(),
                    ))
                })
        }
        .await
        {
            Ok(()) => Handshaken::Hello { hello, rest },
            Err((code, reason)) => Handshaken::Refused {
                mode: hello.mode,
                code,
                reason,
            },
        },
        other => other,
    };
    drop((password, bans));
    let (hello, rest) = match handshaken {
        Handshaken::Hello { hello, rest } => (hello, rest),
        Handshaken::Refused { mode, code, reason } => {
            info!(conn = %id, %peer, %transport, %mode, reason = %code, error = %reason, "refused");
            hub.metrics().refused(code);
            if code == "handshake-timeout" {
                hub.metrics().handshake_timeouts.inc();
            }
            drop(reservation);
            let format = format_for(websocket, mode, false);
            refuse(&mut stream, format, code, &reason).await;
            return None;
        }
        Handshaken::Closed => return None,
    };

    let format = format_for(websocket, hello.mode, hello.options.tags);
    let request = JoinRequest {
        id,
        peer,
        transport,
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
            info!(
                conn = %id,
                %peer,
                %transport,
                role = %hello.role,
                name = hello.name.as_deref(),
                mode = %hello.mode,
                reason = %error.code(),
                %error,
                "refused"
            );
            hub.metrics().refused(error.code());
            refuse(&mut stream, format, error.code(), &error.to_string()).await;
            return None;
        }
        Err(HubError::Stopped) => return None,
    };
    info!(
        conn = %id,
        %peer,
        %transport,
        role = %hello.role,
        name = hello.name.as_deref(),
        mode = %hello.mode,
        "joined"
    );

    // WebSocket viewers read too: their frames (pongs, a close) must be understood.
    let reader = (hello.role.sends() || websocket).then(|| {
        let framer = match hello.mode {
            _ if websocket => Framer::WebSocket(Box::new(WebSocketInput {
                frames: FrameReader::new(config.max_message_bytes),
                last_heard: Instant::now(),
                dead_after: config.dead_peer_timeout,
                pong: None,
                closed: false,
                failed: None,
            })),
            Mode::Seed => Framer::Seed,
            Mode::Line => Framer::Line(LineFramer::new(config.max_message_bytes)),
        };
        let mut reader = Box::new(Reader {
            buf: BytesMut::new(),
            framer,
            // Seed mode: one read is one message, so it is also the size limit.
            read_size: match hello.mode {
                Mode::Seed => config.max_message_bytes.max(1),
                Mode::Line => config.max_message_bytes.max(LINE_READ_BYTES),
            },
        });
        match reader.framer {
            // What a seed client wrote during the grace: one message per read.
            Framer::Seed => rest.into_iter().for_each(|message| member.post(message)),
            Framer::Line(_) | Framer::WebSocket(_) => {
                rest.iter().for_each(|r| reader.buf.extend_from_slice(r));
            }
        }
        reader
    });
    let open = Open::new(
        hub.metrics(),
        transport,
        hello.role,
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

/// The wire format of a connection: WebSocket frames, or the handshake's mode.
fn format_for(websocket: bool, mode: Mode, tags: bool) -> Format {
    if websocket {
        Format::websocket(tags)
    } else {
        Format::of(mode, tags)
    }
}

/// Tells a connection refused at its handshake why (an error line, then for
/// WebSocket a close frame with the code), and closes it.
async fn refuse<S: ByteStream>(stream: &mut S, format: Format, code: &'static str, reason: &str) {
    let notice = format.notice(&Notice::error(code, reason));
    let close = format.is_framed().then_some((POLICY_VIOLATION, code));
    let farewell = Farewell {
        last_words: websocket_close(notice, close),
        flush_within: LINGER,
        linger: LINGER,
    };
    close_gracefully(stream, farewell).await;
}

/// A connection counted as open (`tcpchat_connections_open`, and the members of its
/// role) for as long as it is.
struct Open([Gauge; 2]);

impl Open {
    fn new(metrics: &crate::metrics::Metrics, transport: &str, role: Role, mode: &str) -> Self {
        let gauge = metrics
            .connections_open
            .get_or_create(&crate::metrics::Connection {
                transport: transport.to_owned(),
                role: role.to_string(),
                mode: mode.to_owned(),
            })
            .clone();
        let gauges = [gauge, metrics.members(role).clone()];
        gauges.iter().for_each(|gauge| {
            gauge.inc();
        });
        Self(gauges)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.iter().for_each(|gauge| {
            gauge.dec();
        });
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

impl<S: ByteStream> Handshake<'_, S> {
    /// A WebSocket client's handshake: its first text frame, one line-mode
    /// handshake line without the `\n`.
    async fn run_websocket(&mut self, deadline: Instant, pre_read: Bytes) -> Handshaken {
        let config = self.config;
        let mut reader =
            HandshakeReader::line_only(config.max_handshake_bytes, config.max_name_chars);
        let mut frames = FrameReader::new(config.max_handshake_bytes);
        let mut buf = BytesMut::from(pre_read);
        let deadline = sleep_until(deadline);
        let stopping = self.hub.stopping();
        tokio::pin!(deadline, stopping);
        let refused = |code, reason: String| Handshaken::Refused {
            mode: Mode::Line,
            code,
            reason,
        };
        let line = loop {
            match frames.next(&mut buf) {
                Ok(Some(Frame::Text(line))) => break line,
                // Answered once the client is in; before, nothing is due.
                Ok(Some(Frame::Ping(_) | Frame::Pong)) => continue,
                Ok(Some(Frame::Close(_))) => return Handshaken::Closed,
                Ok(None) => {}
                Err(error) => return refused(error.code, error.reason),
            }
            tokio::select! {
                () = &mut stopping => return Handshaken::Closed,
                () = &mut deadline => {
                    return match reader.timed_out() {
                        Outcome::Refused { mode, error } => Handshaken::Refused {
                            mode,
                            code: error.code(),
                            reason: error.to_string(),
                        },
                        Outcome::Hello { .. } => Handshaken::Closed,
                    };
                }
                read = self.stream.read_buf(&mut buf) => match read {
                    Ok(0) => return Handshaken::Closed,
                    Ok(_) => {}
                    Err(error) => {
                        debug!(conn = %self.id, %error, "gone during the handshake");
                        return Handshaken::Closed;
                    }
                },
            }
        };
        if line.contains(&b'\n') {
            return refused(
                "bad-handshake",
                "the handshake is one line: one text frame without a line break".to_owned(),
            );
        }
        let mut handshake_line = BytesMut::with_capacity(line.len() + 1);
        handshake_line.extend_from_slice(&line);
        handshake_line.put_u8(b'\n');
        match reader.push(&handshake_line) {
            Step::Done(Outcome::Hello { hello, .. }) => Handshaken::Hello {
                hello,
                // The frames that came after the handshake, for the reader.
                rest: vec![buf.freeze()],
            },
            Step::Done(Outcome::Refused { mode, error }) => Handshaken::Refused {
                mode,
                code: error.code(),
                reason: error.to_string(),
            },
            // A line-only reader given a whole line decides.
            Step::NeedMore | Step::SeedCandidate { .. } => refused(
                "bad-handshake",
                "the handshake frame was not understood".to_owned(),
            ),
        }
    }
}

async fn elapsed(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// A sender's input (and a WebSocket viewer's): what was read and not yet framed.
/// Boxed: plain viewers do not carry it.
struct Reader {
    /// Empty (no allocation) while idle.
    buf: BytesMut,
    framer: Framer,
    /// Most bytes taken from the stream in one round.
    read_size: usize,
}

/// How a sender's bytes become messages.
enum Framer {
    /// Every read is a message.
    Seed,
    /// Lines.
    Line(LineFramer),
    /// WebSocket text frames.
    WebSocket(Box<WebSocketInput>),
}

/// A WebSocket client's side of the conversation besides its messages.
struct WebSocketInput {
    frames: FrameReader,
    /// When the client was last heard from (any bytes at all).
    last_heard: Instant,
    /// How long it may stay silent while pinged.
    dead_after: Duration,
    /// The answer to its latest ping, to be written.
    pong: Option<Bytes>,
    /// Whether it sent its close frame (its input has ended).
    closed: bool,
    /// A bad frame that came after messages still to be posted.
    failed: Option<FrameError>,
}

impl WebSocketInput {
    /// The text messages complete in `buf`, as one chunk of lines (as line mode hands
    /// over all the lines of a read at once, so that a busy sender's lines are
    /// published together), answering control frames on the way.
    fn next_messages(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, End> {
        if let Some(error) = self.failed.take() {
            return Err(End::BadFrame(error));
        }
        let mut first: Option<Bytes> = None;
        let mut joined: Option<BytesMut> = None;
        while !self.closed {
            let frame = match self.frames.next(buf) {
                Ok(frame) => frame,
                // What came before the bad frame is still posted.
                Err(error) if first.is_some() => {
                    self.failed = Some(error);
                    break;
                }
                Err(error) => return Err(End::BadFrame(error)),
            };
            match frame {
                Some(Frame::Text(message)) => match (&first, &mut joined) {
                    (None, _) => first = Some(message),
                    (Some(one), None) => {
                        let mut lines = BytesMut::with_capacity(2 * (one.len() + message.len()));
                        lines.extend_from_slice(one);
                        lines.put_u8(b'\n');
                        lines.extend_from_slice(&message);
                        joined = Some(lines);
                    }
                    (Some(_), Some(lines)) => {
                        lines.put_u8(b'\n');
                        lines.extend_from_slice(&message);
                    }
                },
                Some(Frame::Ping(payload)) => self.pong = Some(websocket::pong(&payload)),
                Some(Frame::Pong) => {}
                Some(Frame::Close(_)) => self.closed = true,
                None => break,
            }
        }
        Ok(joined.map(BytesMut::freeze).or(first))
    }
}

impl Reader {
    /// The next message from what is buffered, if a whole one is there.
    fn frame(&mut self) -> Result<Option<Bytes>, End> {
        let message = match &mut self.framer {
            Framer::Line(framer) => framer.next_chunk(&mut self.buf).map_err(End::TooLong)?,
            Framer::Seed => take_seed_message(&mut self.buf),
            Framer::WebSocket(input) => input.next_messages(&mut self.buf)?,
        };
        if self.buf.is_empty() {
            // Let go of the read buffer: an idle connection holds no memory.
            self.buf = BytesMut::new();
        }
        Ok(message)
    }

    fn websocket(&mut self) -> Option<&mut WebSocketInput> {
        match &mut self.framer {
            Framer::WebSocket(input) => Some(input),
            Framer::Seed | Framer::Line(_) => None,
        }
    }

    /// Reads what the stream has, up to `read_size`. `Ok(0)` at the end of the stream.
    fn poll_fill<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut S,
    ) -> Poll<io::Result<usize>> {
        let filled = ready!(self.poll_fill_inner(cx, stream));
        if let (Ok(1..), Some(input)) = (&filled, self.websocket()) {
            input.last_heard = Instant::now();
        }
        Poll::Ready(filled)
    }

    fn poll_fill_inner<S: AsyncRead + Unpin>(
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
    /// For senders, and WebSocket members (whose framer says they are).
    reader: Option<Box<Reader>>,
    /// The connection's places under the server's limits, given back at the end.
    _admission: Admission,
    _open: Open,
}

impl<S: ByteStream> Session<S> {
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
        if let Some(input) = self.reader.as_mut().and_then(|r| r.websocket())
            && let Some(pong) = input.pong.take()
        {
            self.member.send_between(pong);
        }
        // Last, so that whatever became ready above goes out in this same round. Not
        // progress: it writes until nothing is ready or the stream is full (and then
        // the stream wakes us), so another round would find nothing new to write.
        self.poll_output(cx)?;
        if self.member.take_pinged() {
            self.check_alive()?;
        }
        self.member.poll_end(cx)?;
        Ok(progress)
    }

    /// At each ping: a WebSocket client silent for longer than the dead-peer timeout
    /// (browsers answer pings by themselves) is gone. Not while flood control holds
    /// its input back, which is not read then.
    fn check_alive(&mut self) -> Result<(), End> {
        let held_back = self.member.is_held_back();
        if let Some(input) = self.reader.as_mut().and_then(|r| r.websocket())
            && !held_back
            && input.last_heard.elapsed() > input.dead_after
        {
            return Err(End::PeerError(io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer to pings",
            )));
        }
        Ok(())
    }

    /// Gives the member what it wants from the stream.
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        match self.member.wants() {
            Wants::Nothing => self.discard_input(cx),
            Wants::Message => self.read_message(cx),
            Wants::Buffered => {
                if let Some(reader) = &mut self.reader
                    && !matches!(reader.framer, Framer::Seed)
                {
                    while let Ok(Some(message)) = reader.frame() {
                        self.member.post(message);
                    }
                }
                self.member.end_of_input();
                Ok(true)
            }
            Wants::Wait => {
                if self.member.is_held_back() && socket::is_peer_gone(self.stream.tcp()) {
                    // A reset leaves its error on the socket; a close leaves none.
                    let error = self.stream.tcp().take_error().ok().flatten();
                    return Err(End::LeftWhileHeldBack { error });
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
        if reader.websocket().is_some_and(|input| input.closed) {
            // Its close frame: its input has ended.
            self.member.end_of_input();
            return Ok(true);
        }
        match reader.poll_fill(cx, &mut self.stream) {
            Poll::Pending => Ok(false),
            Poll::Ready(Err(error)) => Err(End::PeerError(error)),
            Poll::Ready(Ok(0)) => {
                // The peer closed: its last line needs no `\n` to be complete (a
                // WebSocket frame cut short is nothing).
                let rest = std::mem::take(&mut reader.buf).freeze();
                if reader.websocket().is_none() {
                    self.member.post(rest);
                }
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
        if let Some(reader) = &mut self.reader {
            // A WebSocket viewer: its frames are read, and its messages dropped.
            for _ in 0..VIEWER_READS_PER_ROUND {
                while reader.frame()?.is_some() {}
                if reader.websocket().is_some_and(|input| input.closed) {
                    return Err(End::PeerClosed);
                }
                match reader.poll_fill(cx, &mut self.stream) {
                    Poll::Pending => return Ok(false),
                    Poll::Ready(Err(error)) => return Err(End::PeerError(error)),
                    Poll::Ready(Ok(0)) => return Err(End::PeerClosed),
                    Poll::Ready(Ok(_)) => {}
                }
            }
            return Ok(true);
        }
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
            mut reader,
            ..
        } = self;
        let websocket = reader.as_mut().is_some_and(|r| r.websocket().is_some());
        drop(reader);
        let close = websocket.then(|| close_code(&end)).flatten();
        let mut farewell = member.finish(end).await;
        farewell.last_words = websocket_close(farewell.last_words, close);
        close_gracefully(&mut stream, farewell).await;
    }
}

/// The close frame's code and reason for a WebSocket member that ended so, if one
/// is due (not to a peer whose connection failed).
fn close_code(end: &End) -> Option<(u16, &'static str)> {
    Some(match end {
        End::PeerClosed => (close::NORMAL, ""),
        End::LeftWhileHeldBack { .. } | End::PeerError(_) => return None,
        End::TooSlow { .. } => (POLICY_VIOLATION, "too-slow"),
        End::TooLong(_) => (close::TOO_BIG, "message-too-long"),
        End::Replaced => (POLICY_VIOLATION, "replaced"),
        End::Kicked => (POLICY_VIOLATION, "kicked"),
        End::HistoryUnavailable(_) => (close::INTERNAL_ERROR, "history-unavailable"),
        End::ShutDown | End::Deadline => (close::GOING_AWAY, "shutting down"),
        End::BadFrame(error) => (error.close_code, error.code),
    })
}

/// `last_words`, followed by a close frame when one is given.
fn websocket_close(last_words: Option<Bytes>, close: Option<(u16, &str)>) -> Option<Bytes> {
    let Some((code, reason)) = close else {
        return last_words;
    };
    let frame = websocket::close_frame(code, reason);
    Some(match last_words {
        Some(words) => [words, frame].concat().into(),
        None => frame,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `serve` returns, from its type alone.
    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(TcpStream, Arrival) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// An idle connection costs mostly its task, which tokio allocates in steps of
    /// 128 bytes (its tasks are aligned to cache lines): the future, plus the task
    /// tracker's token, plus tokio's header, ids, trailer and the stage's tag (104
    /// bytes in tokio 1.54 on 64-bit targets: measured, a 280-byte future took 512).
    /// Crossing from 384 to 512 bytes once cost every idle connection 128 bytes,
    /// unnoticed until the benchmark's `conns` was run again. A debug build (as
    /// `cargo test` makes) lays the future out 8 bytes larger than a release build, so
    /// the test errs on the safe side.
    #[test]
    fn a_connections_task_fits_in_384_bytes() {
        let future = future_size(serve::<TcpStream>);
        let task = future + 8 + 104;
        assert!(
            task <= 384,
            "a connection's task is {task} bytes (its future {future}): past 384, every \
             connection costs 128 bytes more; box what idle connections do not use"
        );
    }
}
