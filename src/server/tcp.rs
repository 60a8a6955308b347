//! The TCP transport, seed and line mode: one task per connection, translating
//! between its socket and the hub and nothing more.
//!
//! A connection first runs its handshake (under its own timeout, with the seed grace
//! period when its first read is exactly a seed handshake), then joins the room and
//! runs one loop until it ends:
//! - receiving roles take batches from the shared ring and write each with as few
//!   syscalls as the socket allows, trying the write at once and waiting for
//!   writability only when the socket is full;
//! - sending roles read the socket, frame messages and post them through the hub's
//!   bounded inbox, reading no further while a post waits for room;
//! - every role keeps reading, so a FIN or a reset is noticed at once.
//!
//! The loop is one `select!` over the socket's readiness, the inbox, the ring and the
//! timers; it holds no buffer while the connection is idle.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep, sleep};
use tracing::{debug, info, warn};

use super::Shared;
use super::accept::Admission;
use super::limits::TokenBucket;
use crate::hub::ring::{self, Fetch, Ring, Subscriber};
use crate::hub::{Command, HubError, HubHandle};
use crate::protocol::handshake::{HandshakeReader, Outcome, Step};
use crate::protocol::line::{LineFramer, LineTooLong, take_seed_message};
use crate::protocol::text;
use crate::protocol::wire::{self, Notice};
use crate::protocol::{Hello, Mode};
use crate::room::{ConnId, Role};
use crate::socket;

/// How long a refused or closing client gets to read its last line and close its end.
const LINGER: Duration = Duration::from_secs(1);

/// How long a viewer disconnected as too slow has to read its way to the notice
/// that says why: its socket buffers are full of chat it has not read yet.
const SLOW_VIEWER_LINGER: Duration = Duration::from_secs(10);

/// How much of a closing client's input is read and dropped while it lingers. A
/// client still flooding past this is cut off with a reset.
const LINGER_BYTES: usize = 64 * 1024;

/// Reads of a viewer's (ignored) input per wake-up, so a viewer that floods cannot
/// keep its task busy forever.
const VIEWER_READS_PER_WAKE: usize = 8;

/// Serves one connection from accept to close.
pub(super) async fn serve(
    stream: TcpStream,
    id: ConnId,
    hub: HubHandle,
    shared: Arc<Shared>,
    admission: Admission,
) {
    if let Err(error) = socket::configure(&stream, shared.config.dead_peer_timeout) {
        debug!(%error, "could not set socket options");
    }
    let mut membership = Membership::new(id);
    // Boxed so that the handshake's read buffer is freed once it is done, instead of
    // staying in every connection's future.
    let handshaken = Box::pin(handshake(&stream, id, &hub, &shared, &mut membership)).await;
    let (hello, rest) = match handshaken {
        Handshaken::Hello { hello, rest } => (hello, rest),
        Handshaken::Refused { mode, code, reason } => {
            info!(%reason, %mode, "refused");
            membership.leave().await;
            let notice = (mode == Mode::Line).then(|| Notice::error(code, &reason).to_line());
            close_gracefully(&stream, notice, LINGER).await;
            return;
        }
        Handshaken::Closed => {
            membership.leave().await;
            return;
        }
    };

    let subscriber = hello
        .role
        .receives()
        .then(|| Arc::new(Subscriber::default()));
    let cursor = match hub
        .join(id, hello.role, hello.name.clone(), subscriber.clone())
        .await
    {
        Ok(cursor) => cursor,
        Err(HubError::Join(error)) => {
            info!(reason = %error, mode = %hello.mode, "refused");
            let notice =
                (hello.mode == Mode::Line).then(|| Notice::error(error.code(), &error).to_line());
            close_gracefully(&stream, notice, LINGER).await;
            return;
        }
        Err(HubError::Stopped) => return,
    };
    membership.arm(hub.sender().clone());
    match &hello.name {
        Some(name) => info!(role = %hello.role, name, mode = %hello.mode, "joined"),
        None => info!(role = %hello.role, mode = %hello.mode, "joined"),
    }

    let feed = subscriber.map(|subscriber| Feed {
        ring: hub.ring().clone(),
        subscriber,
        next: cursor.index,
        delivered: cursor.offset(hello.mode),
        backlog: shared.config.viewer_backlog_bytes as u64,
        until: None,
    });
    let bucket = admission.flood_controlled.then(|| {
        TokenBucket::new(
            shared.config.flood_rate,
            shared.config.flood_burst,
            std::time::Instant::now(),
        )
    });
    let joined = Joined {
        hello,
        rest,
        feed,
        bucket,
    };
    // The session takes the hub's inbox only if it posts: at shutdown the hub stops
    // once every sender is gone, and a viewer must not keep it waiting.
    let mut session = Session::new(stream, joined, hub, membership, shared);
    let end = session.run().await;
    session.finish(end).await;
    drop(admission);
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

async fn handshake(
    stream: &TcpStream,
    id: ConnId,
    hub: &HubHandle,
    shared: &Shared,
    membership: &mut Membership,
) -> Handshaken {
    let config = &shared.config;
    let mut reader = HandshakeReader::new(config.max_handshake_bytes, config.max_name_chars);
    let deadline = sleep(config.handshake_timeout);
    tokio::pin!(deadline);
    let mut grace: Option<Pin<Box<Sleep>>> = None;
    let mut buf = [0u8; 1024];
    let outcome = loop {
        tokio::select! {
            () = shared.stop.cancelled() => return Handshaken::Closed,
            () = &mut deadline => break reader.timed_out(),
            () = elapsed(&mut grace) => break reader.conclude_seed(),
            ready = stream.readable() => {
                if let Err(error) = ready {
                    debug!(%error, "gone during the handshake");
                    return Handshaken::Closed;
                }
                let n = match stream.try_read(&mut buf) {
                    // A seed client may send its handshake and a message, then close.
                    Ok(0) if grace.is_some() => break reader.conclude_seed(),
                    Ok(0) => {
                        debug!("closed during the handshake");
                        return Handshaken::Closed;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(error) => {
                        debug!(%error, "gone during the handshake");
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
                            match hub.reserve(id, name).await {
                                Ok(()) => membership.arm(hub.sender().clone()),
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

/// Tells the hub that a member is gone, exactly once, however its task ends.
struct Membership {
    id: ConnId,
    tx: Option<mpsc::Sender<Command>>,
}

impl Membership {
    fn new(id: ConnId) -> Self {
        Self { id, tx: None }
    }

    /// From now on, the end of this connection is a departure from the room.
    fn arm(&mut self, tx: mpsc::Sender<Command>) {
        self.tx = Some(tx);
    }

    async fn leave(&mut self) {
        if let Some(tx) = self.tx.take() {
            // Fails only if the hub has stopped, and then the room is gone anyway.
            let _ = tx
                .send(Command::Leave {
                    id: self.id,
                    published: None,
                })
                .await;
        }
    }

    /// Leaves and returns the ring index just past the leave's own announcement
    /// (`None` if the hub has stopped).
    async fn leave_and_wait(&mut self) -> Option<u64> {
        let tx = self.tx.take()?;
        let (published, index) = oneshot::channel();
        let leave = Command::Leave {
            id: self.id,
            published: Some(published),
        };
        tx.send(leave).await.ok()?;
        index.await.ok()
    }

    /// At shutdown the room ends with the server: nobody is announced as leaving,
    /// and the hub may stop once every connection has let go of its inbox.
    fn forget(&mut self) {
        self.tx = None;
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        // Only reached when a task ends without `leave` (cancelled, or a bug): the
        // name must still be freed.
        if let Err(mpsc::error::TrySendError::Full(leave)) = tx.try_send(Command::Leave {
            id: self.id,
            published: None,
        }) && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = tx.send(leave).await;
            });
        }
    }
}

/// What a connection brings to its session once the room has let it in.
struct Joined {
    hello: Hello,
    /// Bytes received after the handshake.
    rest: Vec<Bytes>,
    /// For receiving roles.
    feed: Option<Feed>,
    /// Flood control, for sending roles that are not exempt.
    bucket: Option<TokenBucket>,
}

/// A receiving member's position in the shared ring.
struct Feed {
    ring: Arc<Ring>,
    subscriber: Arc<Subscriber>,
    /// Index of the next batch to take from the ring.
    next: u64,
    /// Log offset of the next byte to hand to the socket.
    delivered: u64,
    /// How far behind the room this member may fall.
    backlog: u64,
    /// Once a chatter has said goodbye: the batch index it is delivered up to.
    until: Option<u64>,
}

impl Feed {
    fn behind(&self, mode: Mode) -> u64 {
        self.ring.end(mode).saturating_sub(self.delivered)
    }

    /// The slow-viewer policy: `Err` once this member is past its backlog.
    fn check(&self, mode: Mode) -> Result<(), End> {
        let behind = self.behind(mode);
        if ring::is_too_far_behind(behind, self.backlog) {
            Err(End::TooSlow { behind })
        } else {
            Ok(())
        }
    }
}

/// A sending member's input side.
struct Input {
    /// `None` in seed mode, where every read is a message.
    framer: Option<LineFramer>,
    /// Bytes read but not yet framed. Empty (no allocation) while idle.
    buf: BytesMut,
    /// Framed messages waiting for room in the hub's inbox (or for flood control).
    posts: VecDeque<Bytes>,
    /// Flood control; `None` for exempt (loopback) clients.
    bucket: Option<TokenBucket>,
    /// Set while flood control holds the next post back.
    throttle: Option<Pin<Box<Sleep>>>,
    read_size: usize,
    eof: bool,
}

/// How a session ended.
enum End {
    /// The peer closed its end (FIN).
    PeerClosed,
    /// The connection failed (reset, dead peer timeout).
    PeerError(io::Error),
    /// A viewer fell further behind than its backlog allows.
    TooSlow { behind: u64 },
    /// A line-mode messenger sent a line over the limit.
    TooLong(LineTooLong),
    /// The server shut down and everything was delivered.
    ShutDown,
    /// The server shut down and the deadline passed first.
    Deadline,
}

enum Wake {
    Deadline,
    Stop,
    Permit(Option<mpsc::OwnedPermit<Command>>),
    Ready(io::Result<tokio::io::Ready>),
    Feed(Result<(), End>),
    Heartbeat,
    /// Flood control lets the next post go.
    Throttled,
}

struct Session {
    id: ConnId,
    stream: TcpStream,
    mode: Mode,
    goodbye: bool,
    shared: Arc<Shared>,
    membership: Membership,
    /// The hub's inbox, for posts; `None` for viewers and once shutdown began.
    tx: Option<mpsc::Sender<Command>>,
    feed: Option<Feed>,
    input: Option<Input>,
    /// Bytes being written; empty when there is nothing to write.
    out: Bytes,
    /// Whether `out` comes from the ring (and counts as delivered when written).
    out_from_feed: bool,
    /// The last byte written, to start a closing notice on a fresh line.
    last_byte: Option<u8>,
    heartbeat: Option<(Duration, Pin<Box<Sleep>>)>,
    /// Set when shutdown begins.
    drain_deadline: Option<Pin<Box<Sleep>>>,
}

impl Session {
    fn new(
        stream: TcpStream,
        joined: Joined,
        hub: HubHandle,
        membership: Membership,
        shared: Arc<Shared>,
    ) -> Self {
        let Joined {
            hello,
            rest,
            feed,
            bucket,
        } = joined;
        let mode = hello.mode;
        let config = &shared.config;
        let out = match (hello.role, mode) {
            (Role::Viewer | Role::Chatter, _) => wire::welcome(&config.chat_name, mode),
            (Role::Messenger, Mode::Line) => Notice::Ok {
                name: hello.name.clone().unwrap_or_default(),
            }
            .to_line(),
            (Role::Messenger, Mode::Seed) => Bytes::new(),
        };
        let input = hello.role.sends().then(|| {
            let mut input = Input {
                framer: (mode == Mode::Line).then(|| LineFramer::new(config.max_message_bytes)),
                buf: BytesMut::new(),
                posts: VecDeque::new(),
                bucket,
                throttle: None,
                // Seed mode: one read is one message, so it is also the size limit.
                read_size: match mode {
                    Mode::Seed => config.max_message_bytes,
                    Mode::Line => config.max_message_bytes.max(16 * 1024),
                },
                eof: false,
            };
            match mode {
                Mode::Seed => input.posts.extend(rest),
                Mode::Line => rest.iter().for_each(|r| input.buf.extend_from_slice(r)),
            }
            input
        });
        let heartbeat = (mode == Mode::Line && hello.options.heartbeat).then(|| {
            let interval = config.heartbeat_interval;
            (interval, Box::pin(sleep(interval)))
        });
        Self {
            id: membership.id,
            tx: hello.role.sends().then(|| hub.sender().clone()),
            stream,
            mode,
            goodbye: hello.options.goodbye,
            membership,
            feed,
            input,
            out,
            out_from_feed: false,
            last_byte: None,
            heartbeat,
            drain_deadline: None,
            shared,
        }
    }

    async fn run(&mut self) -> End {
        if let Err(end) = self.frame() {
            return end;
        }
        loop {
            if let Err(end) = self.write_now() {
                return end;
            }
            if self.is_done() {
                return End::ShutDown;
            }
            if let Some(input) = &self.input
                && input.eof
                && input.posts.is_empty()
            {
                match &mut self.feed {
                    None => return End::PeerClosed,
                    // A chatter said goodbye: it still gets the room up to its own
                    // leave, so it sees its last lines come back.
                    Some(feed) if feed.until.is_none() => {
                        feed.until = Some(self.membership.leave_and_wait().await.unwrap_or(0));
                        continue;
                    }
                    Some(feed) => {
                        if self.out.is_empty() && feed.until.is_some_and(|until| feed.next >= until)
                        {
                            return End::PeerClosed;
                        }
                    }
                }
            }
            let wake = self.wait().await;
            let result = match wake {
                Wake::Deadline => Err(End::Deadline),
                Wake::Stop => {
                    self.begin_drain();
                    Ok(())
                }
                Wake::Permit(Some(permit)) => {
                    self.post(permit);
                    self.frame()
                }
                Wake::Throttled => {
                    if let Some(input) = &mut self.input {
                        input.throttle = None;
                    }
                    Ok(())
                }
                Wake::Permit(None) => Err(End::ShutDown),
                Wake::Ready(Ok(ready)) if ready.is_readable() || ready.is_read_closed() => {
                    self.read_now()
                }
                Wake::Ready(Ok(_)) => Ok(()),
                Wake::Ready(Err(error)) => Err(End::PeerError(error)),
                Wake::Feed(result) => result,
                Wake::Heartbeat => {
                    if self.out.is_empty() {
                        self.out = Notice::Ping.to_line();
                        self.out_from_feed = false;
                    }
                    Ok(())
                }
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    /// Waits for the next thing to do.
    async fn wait(&mut self) -> Wake {
        let writing = !self.out.is_empty();
        let mut interest = if self.wants_read() {
            Some(Interest::READABLE)
        } else {
            None
        };
        if writing {
            interest = Some(interest.map_or(Interest::WRITABLE, |i| i | Interest::WRITABLE));
        }
        let posting = self
            .input
            .as_ref()
            .is_some_and(|i| !i.posts.is_empty() && i.throttle.is_none());
        let throttle = self.input.as_mut().and_then(|i| i.throttle.as_mut());
        let draining = self.drain_deadline.is_some();
        let mode = self.mode;
        let stream = &self.stream;
        let feed = &self.feed;
        let tx = self.tx.as_ref();
        let heartbeat = match &mut self.heartbeat {
            Some((_, timer)) if !writing => Some(timer),
            _ => None,
        };
        tokio::select! {
            biased;
            () = elapsed(&mut self.drain_deadline) => Wake::Deadline,
            () = self.shared.stop.cancelled(), if !draining => Wake::Stop,
            permit = reserve(tx), if posting => Wake::Permit(permit),
            ready = ready(stream, interest) => Wake::Ready(ready),
            result = poll_fn(|cx| poll_feed(feed.as_ref(), mode, writing, cx)) => Wake::Feed(result),
            () = elapsed_pinned(heartbeat) => Wake::Heartbeat,
            () = elapsed_pinned(throttle) => Wake::Throttled,
        }
    }

    fn wants_read(&self) -> bool {
        match &self.input {
            // Viewers are read only to notice their departure.
            None => true,
            Some(input) => !input.eof && input.posts.is_empty() && self.tx.is_some(),
        }
    }

    /// Shutdown began: accept nothing more, hand the hub what was already read,
    /// then let go of its inbox so it can finish.
    fn begin_drain(&mut self) {
        self.drain_deadline = Some(Box::pin(sleep(self.shared.config.shutdown_timeout)));
        self.membership.forget();
        if let Some(input) = &mut self.input {
            // What was already read is delivered at once: the server is closing anyway.
            input.bucket = None;
            input.throttle = None;
            // Nothing more is read once the inbox is let go (see `wants_read`).
            if let Some(framer) = &mut input.framer {
                while let Ok(Some(chunk)) = framer.next_chunk(&mut input.buf) {
                    input.posts.push_back(chunk);
                }
            }
            if input.posts.is_empty() {
                self.tx = None;
            }
        }
    }

    /// Whether a draining session has nothing left to do.
    fn is_done(&self) -> bool {
        if self.drain_deadline.is_none() || !self.out.is_empty() {
            return false;
        }
        let posted = self.input.as_ref().is_none_or(|i| i.posts.is_empty());
        let fed = self
            .feed
            .as_ref()
            .is_none_or(|f| matches!(f.ring.fetch(f.next), Fetch::Closed));
        posted && fed
    }

    /// Writes as much as the socket takes right now, refilling from the ring.
    fn write_now(&mut self) -> Result<(), End> {
        loop {
            if self.out.is_empty() && !self.refill()? {
                return Ok(());
            }
            match self.stream.try_write(&self.out) {
                Ok(n) => {
                    self.last_byte = self.out.get(n.wrapping_sub(1)).copied();
                    self.out.advance(n);
                    if self.out_from_feed
                        && let Some(feed) = &mut self.feed
                    {
                        feed.delivered += n as u64;
                    }
                    if let Some((interval, timer)) = &mut self.heartbeat {
                        timer.as_mut().reset(Instant::now() + *interval);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) => return Err(End::PeerError(error)),
            }
        }
    }

    /// Takes the next batch from the ring into `out`. Returns whether there is one.
    fn refill(&mut self) -> Result<bool, End> {
        let Some(feed) = &mut self.feed else {
            return Ok(false);
        };
        if feed.until.is_some_and(|until| feed.next >= until) {
            return Ok(false);
        }
        match feed.ring.fetch(feed.next) {
            Fetch::Ready(batch) => {
                feed.check(self.mode)?;
                feed.next += 1;
                self.out = batch.bytes(self.mode).clone();
                self.out_from_feed = true;
                Ok(true)
            }
            Fetch::Pending | Fetch::Closed => Ok(false),
            Fetch::Gone => Err(End::TooSlow {
                behind: feed.behind(self.mode),
            }),
        }
    }

    /// Sends the next post, as much of it as flood control allows; the rest waits.
    fn post(&mut self, permit: mpsc::OwnedPermit<Command>) {
        let Some(input) = &mut self.input else {
            return;
        };
        let Some(mut bytes) = input.posts.pop_front() else {
            return;
        };
        if let Some(bucket) = &mut input.bucket {
            let now = std::time::Instant::now();
            let wanted = text::lines(&bytes).count();
            let granted = bucket.take(wanted, now);
            if granted < wanted {
                let rest = bytes.split_off(text::end_of_lines(&bytes, granted));
                input.posts.push_front(rest);
                input.throttle = Some(Box::pin(sleep(bucket.next_token_in(now))));
                debug!(wanted, granted, "flood control: slowing the sender");
            }
        }
        if !bytes.is_empty() {
            permit.send(Command::Post { id: self.id, bytes });
        }
    }

    /// Reads what the socket has.
    fn read_now(&mut self) -> Result<(), End> {
        let Some(input) = &mut self.input else {
            return discard_input(&self.stream);
        };
        input.buf.reserve(input.read_size);
        match self.stream.try_read_buf(&mut input.buf) {
            Ok(0) => {
                input.eof = true;
                // The peer closed: its last line needs no `\n` to be complete.
                if !input.buf.is_empty() {
                    let last = input.buf.split().freeze();
                    input.posts.push_back(last);
                }
                Ok(())
            }
            Ok(_) => self.frame(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(End::PeerError(error)),
        }
    }

    /// Frames buffered input into the next post, one at a time so that a full inbox
    /// stops the reading.
    fn frame(&mut self) -> Result<(), End> {
        let Some(input) = &mut self.input else {
            return Ok(());
        };
        if input.posts.is_empty() && !input.buf.is_empty() {
            let post = match &mut input.framer {
                Some(framer) => framer.next_chunk(&mut input.buf).map_err(End::TooLong)?,
                None => take_seed_message(&mut input.buf),
            };
            input.posts.extend(post);
        }
        if input.buf.is_empty() {
            // Let go of the read buffer: an idle connection holds no memory.
            input.buf = BytesMut::new();
        }
        if self.drain_deadline.is_some() && input.posts.is_empty() {
            self.tx = None;
        }
        Ok(())
    }

    /// Logs the end, tells the room, and closes the connection as the end requires.
    async fn finish(mut self, end: End) {
        // Whatever was still to be written is abandoned: let go of it (and of the
        // ring) before lingering, so a closing connection holds no chat.
        self.out = Bytes::new();
        self.feed = None;
        self.input = None;
        let linger = match end {
            End::TooSlow { .. } => SLOW_VIEWER_LINGER,
            // Shutdown's deadline has passed: close now.
            End::Deadline => Duration::ZERO,
            _ => LINGER,
        };
        let notice = match end {
            End::PeerClosed => {
                info!("left");
                None
            }
            End::PeerError(error) => {
                info!(%error, "left: connection lost");
                None
            }
            End::TooSlow { behind } => {
                let total = self
                    .shared
                    .stats
                    .slow_viewers
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                warn!(
                    behind,
                    backlog = self.shared.config.viewer_backlog_bytes,
                    slow_viewers = total,
                    "closed: too slow"
                );
                Some(Notice::error(
                    "too-slow",
                    format!(
                        "you fell more than {} bytes behind the room",
                        self.shared.config.viewer_backlog_bytes
                    ),
                ))
            }
            End::TooLong(error) => {
                info!(%error, "closed: message too long");
                Some(Notice::error("message-too-long", error))
            }
            End::ShutDown => {
                debug!("closed: server shutdown");
                self.goodbye.then(|| Notice::Bye {
                    text: "the server is shutting down".to_owned(),
                })
            }
            End::Deadline => {
                info!("closed: shutdown deadline passed");
                None
            }
        };
        self.membership.leave().await;
        let last_words = notice.filter(|_| self.mode == Mode::Line).map(|notice| {
            let line = notice.to_line();
            if self.last_byte.is_some_and(|b| b != b'\n') {
                // A batch was cut short mid-line: start the notice on its own line.
                let mut fresh = BytesMut::with_capacity(line.len() + 1);
                fresh.extend_from_slice(b"\n");
                fresh.extend_from_slice(&line);
                fresh.freeze()
            } else {
                line
            }
        });
        close_gracefully(&self.stream, last_words, linger).await;
    }
}

/// What the feed has to say: with nothing being written, whether a batch (or the
/// end) is ready; while a write is pending, whether this member fell too far behind.
/// Registers for the next publish either way.
fn poll_feed(
    feed: Option<&Feed>,
    mode: Mode,
    writing: bool,
    cx: &mut std::task::Context<'_>,
) -> Poll<Result<(), End>> {
    let Some(feed) = feed else {
        return Poll::Pending;
    };
    if writing {
        feed.subscriber.register(cx);
        return match feed.check(mode) {
            Ok(()) => Poll::Pending,
            Err(end) => Poll::Ready(Err(end)),
        };
    }
    feed.ring
        .poll_fetch(feed.next, &feed.subscriber, cx)
        .map(|_| Ok(()))
}

/// Reads and drops what a viewer sends; notices its departure.
fn discard_input(stream: &TcpStream) -> Result<(), End> {
    let mut scratch = [0u8; 512];
    for _ in 0..VIEWER_READS_PER_WAKE {
        match stream.try_read(&mut scratch) {
            Ok(0) => return Err(End::PeerClosed),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(error) => return Err(End::PeerError(error)),
        }
    }
    Ok(())
}

async fn ready(stream: &TcpStream, interest: Option<Interest>) -> io::Result<tokio::io::Ready> {
    match interest {
        Some(interest) => stream.ready(interest).await,
        None => std::future::pending().await,
    }
}

/// Waits for room in the hub's inbox. The permit owns a sender clone, so holding it
/// does not keep the session borrowed.
async fn reserve(tx: Option<&mpsc::Sender<Command>>) -> Option<mpsc::OwnedPermit<Command>> {
    match tx {
        Some(tx) => tx.clone().reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}

async fn elapsed(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn elapsed_pinned(timer: Option<&mut Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Writes `bytes`, waiting for the socket as needed.
async fn write_all(stream: &TcpStream, mut bytes: Bytes) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(&bytes) {
            Ok(n) => bytes.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `last_words`, then FIN, then reads until the peer closes too, so data it
/// sent meanwhile does not turn the close into a reset that could destroy the last
/// words. Gives up after `within`, or after [`LINGER_BYTES`] of further input.
async fn close_gracefully(stream: &TcpStream, last_words: Option<Bytes>, within: Duration) {
    let closing = async {
        if let Some(bytes) = last_words {
            write_all(stream, bytes).await?;
        }
        SockRef::from(stream).shutdown(std::net::Shutdown::Write)?;
        let mut scratch = [0u8; 512];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            stream.readable().await?;
            match stream.try_read(&mut scratch) {
                Ok(0) => return Ok(()),
                Ok(n) => drained += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let result: Result<io::Result<()>, _> = tokio::time::timeout(within, closing).await;
    if let Ok(Err(error)) = result {
        debug!(%error, "unclean close");
    }
}
