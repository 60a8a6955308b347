//! One member's connection after its handshake: the loop that moves bytes between
//! its socket and the hub, until the connection ends.
//!
//! The loop is a hand-written `poll` rather than a `select!` over futures: it holds
//! no future per event source, only the socket's own readiness registration, the
//! member's waker (woken by the hub after each publish and at shutdown) and, when
//! in use, boxed timers. An idle viewer's whole state is a few hundred bytes.
//!
//! - Receiving roles take batches from the shared ring and hand the socket as many as
//!   it takes in one vectored write, trying at once and waiting for writability only
//!   when the socket is full.
//! - Sending roles read the socket, frame messages and post them through the hub's
//!   bounded inbox, reading no further while a post waits for room or for flood
//!   control.
//! - Every role keeps reading, so a FIN or a reset is noticed at once.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep, sleep};
use tokio_util::sync::PollSender;
use tracing::{debug, info, warn};

use super::Shared;
use super::accept::Admission;
use super::limits::TokenBucket;
use super::tcp::{LINGER, Membership, close_gracefully};
use crate::hub::Command;
use crate::hub::ring::{self, Batch, Fetch, Ring, Subscriber};
use crate::protocol::line::{LineFramer, LineTooLong, take_seed_message};
use crate::protocol::text;
use crate::protocol::wire::Notice;
use crate::protocol::{Hello, Mode};
use crate::room::Role;

/// How long a viewer disconnected as too slow has to read its way to the notice
/// that says why: its socket buffers are full of chat it has not read yet.
const SLOW_VIEWER_LINGER: Duration = Duration::from_secs(10);

/// Reads of a viewer's (ignored) input per wake-up, so a viewer that floods cannot
/// keep its task busy forever.
const VIEWER_READS_PER_WAKE: usize = 8;

/// Most batches handed to the socket in one vectored write.
const BATCHES_PER_WRITE: usize = 16;

/// Rounds of the loop per wake-up before yielding to other tasks.
const ROUNDS_PER_WAKE: usize = 32;

/// A receiving member's position in the shared ring (which lives in [`Shared`]).
pub(super) struct Feed {
    /// Index of the next batch to take from the ring.
    pub(super) next: u64,
    /// Log offset of the next byte to hand to the socket.
    pub(super) delivered: u64,
    /// The batch index this member is delivered up to: [`u64::MAX`] until a chatter
    /// says goodbye, then just past its own leave.
    pub(super) until: u64,
}

impl Feed {
    fn behind(&self, ring: &Ring, mode: Mode) -> u64 {
        ring.end(mode).saturating_sub(self.delivered)
    }

    /// The slow-viewer policy: `Err` once this member is past its backlog.
    fn check(&self, ring: &Ring, mode: Mode, backlog: usize) -> Result<(), End> {
        let behind = self.behind(ring, mode);
        if ring::is_too_far_behind(behind, backlog as u64) {
            Err(End::TooSlow { behind })
        } else {
            Ok(())
        }
    }

    /// The batch at `index`, if it is ready and still due to this member.
    fn batch(&self, ring: &Ring, index: u64, mode: Mode) -> Result<Option<Arc<Batch>>, End> {
        if index >= self.until {
            return Ok(None);
        }
        match ring.fetch(index) {
            Fetch::Ready(batch) => Ok(Some(batch)),
            Fetch::Pending | Fetch::Closed => Ok(None),
            Fetch::Gone => Err(End::TooSlow {
                behind: self.behind(ring, mode),
            }),
        }
    }

    fn is_saying_goodbye(&self) -> bool {
        self.until != u64::MAX
    }
}

/// A sending member's input side. Boxed in the session: viewers do not carry it.
pub(super) struct Input {
    /// `None` in seed mode, where every read is a message.
    framer: Option<LineFramer>,
    /// Bytes read but not yet framed. Empty (no allocation) while idle.
    buf: BytesMut,
    /// Framed messages waiting for room in the hub's inbox (or for flood control).
    posts: VecDeque<Bytes>,
    /// The hub's inbox; closed once shutdown began (nothing more is read then).
    sender: PollSender<Command>,
    /// Flood control; `None` for exempt (loopback) clients.
    bucket: Option<TokenBucket>,
    /// Set while flood control holds the next post back.
    throttle: Option<Pin<Box<Sleep>>>,
    read_size: usize,
    eof: bool,
    /// A chatter's goodbye, to send once its posts are out.
    leave: Option<oneshot::Sender<u64>>,
    /// The hub's answer to that goodbye: where its announcement ends in the ring.
    left: Option<oneshot::Receiver<u64>>,
}

/// How a session ended.
pub(super) enum End {
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

/// What the room let in, ready to run.
pub(super) struct Joined {
    pub(super) hello: Hello,
    /// Bytes received after the handshake.
    pub(super) rest: Vec<Bytes>,
    /// For receiving roles.
    pub(super) feed: Option<Feed>,
    /// Flood control, for sending roles that are not exempt.
    pub(super) bucket: Option<TokenBucket>,
    /// Woken by the hub after each publish (receivers) and at shutdown (everyone).
    pub(super) waker: Arc<Subscriber>,
}

pub(super) struct Session {
    stream: TcpStream,
    mode: Mode,
    goodbye: bool,
    shared: Arc<Shared>,
    waker: Arc<Subscriber>,
    membership: Membership,
    feed: Option<Feed>,
    input: Option<Box<Input>>,
    /// Bytes being written; empty when there is nothing to write.
    out: Bytes,
    /// Whether `out` comes from the ring (and counts as delivered when written).
    out_from_feed: bool,
    /// The last byte written, to start a closing notice on a fresh line.
    last_byte: Option<u8>,
    heartbeat: Option<Pin<Box<Heartbeat>>>,
    /// Set when shutdown begins.
    drain_deadline: Option<Pin<Box<Sleep>>>,
    /// The connection's place under the server's limits, given back at the end.
    _admission: Admission,
}

impl Session {
    pub(super) fn new(
        stream: TcpStream,
        joined: Joined,
        tx: tokio::sync::mpsc::Sender<Command>,
        membership: Membership,
        shared: Arc<Shared>,
        admission: Admission,
    ) -> Self {
        let Joined {
            hello,
            rest,
            feed,
            bucket,
            waker,
        } = joined;
        let mode = hello.mode;
        let config = &shared.config;
        let out = match (hello.role, mode) {
            (Role::Viewer | Role::Chatter, _) => shared.welcome(mode),
            (Role::Messenger, Mode::Line) => Notice::Ok {
                name: hello.name.clone().unwrap_or_default(),
            }
            .to_line(),
            (Role::Messenger, Mode::Seed) => Bytes::new(),
        };
        let input = hello.role.sends().then(|| {
            let mut input = Box::new(Input {
                framer: (mode == Mode::Line).then(|| LineFramer::new(config.max_message_bytes)),
                buf: BytesMut::new(),
                posts: VecDeque::new(),
                sender: PollSender::new(tx),
                bucket,
                throttle: None,
                // Seed mode: one read is one message, so it is also the size limit.
                read_size: match mode {
                    Mode::Seed => config.max_message_bytes,
                    Mode::Line => config.max_message_bytes.max(16 * 1024),
                },
                eof: false,
                leave: None,
                left: None,
            });
            match mode {
                Mode::Seed => input.posts.extend(rest),
                Mode::Line => rest.iter().for_each(|r| input.buf.extend_from_slice(r)),
            }
            input
        });
        let heartbeat = (mode == Mode::Line && hello.options.heartbeat).then(|| {
            let interval = config.heartbeat_interval;
            Box::pin(Heartbeat {
                interval,
                timer: sleep(interval),
            })
        });
        Self {
            stream,
            mode,
            goodbye: hello.options.goodbye,
            shared,
            waker,
            membership,
            feed,
            input,
            out,
            out_from_feed: false,
            last_byte: None,
            heartbeat,
            drain_deadline: None,
            _admission: admission,
        }
    }

    /// Runs until the connection ends; returns how.
    pub(super) async fn run(&mut self) -> End {
        if let Err(end) = self.frame() {
            return end;
        }
        poll_fn(|cx| self.poll(cx)).await
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        // Registered first: a publish or a shutdown after this point wakes us.
        self.waker.register(cx);
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
        let mut progress = false;
        if self.drain_deadline.is_none() && self.shared.is_stopping() {
            self.begin_drain();
            progress = true;
        }
        if let Some(deadline) = &mut self.drain_deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Err(End::Deadline);
        }
        progress |= self.poll_posts(cx)?;
        progress |= self.poll_read(cx)?;
        if self.out.is_empty()
            && let Some(heartbeat) = &mut self.heartbeat
            && heartbeat.as_mut().poll_due(cx)
        {
            self.out = Notice::Ping.to_line();
            self.out_from_feed = false;
        }
        // Last, so that whatever became ready above goes out in this same round.
        self.write_now()?;
        if !self.out.is_empty() {
            match self.stream.poll_write_ready(cx) {
                // Room again since the last attempt: go round once more.
                Poll::Ready(Ok(())) => progress = true,
                Poll::Ready(Err(error)) => return Err(End::PeerError(error)),
                Poll::Pending => {}
            }
            if let Some(feed) = &self.feed {
                feed.check(
                    &self.shared.ring,
                    self.mode,
                    self.shared.config.viewer_backlog_bytes,
                )?;
            }
        }
        if self.is_done() {
            return Err(End::ShutDown);
        }
        self.check_goodbye(cx)?;
        Ok(progress)
    }

    /// Sends what waits for the hub's inbox, as flood control allows.
    fn poll_posts(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        let id = self.membership.id();
        let Some(input) = &mut self.input else {
            return Ok(false);
        };
        let mut progress = false;
        if let Some(throttle) = &mut input.throttle {
            if throttle.as_mut().poll(cx).is_pending() {
                return Ok(false);
            }
            input.throttle = None;
            progress = true;
        }
        while !input.posts.is_empty() || (input.eof && input.leave.is_some()) {
            match input.sender.poll_reserve(cx) {
                Poll::Pending => break,
                // The hub has stopped: the server is shutting down.
                Poll::Ready(Err(_)) => return Err(End::ShutDown),
                Poll::Ready(Ok(())) => {}
            }
            progress = true;
            let command = match input.posts.pop_front() {
                Some(bytes) => input.limit(bytes).map(|bytes| Command::Post { id, bytes }),
                None => input.leave.take().map(|published| Command::Leave {
                    id,
                    published: Some(published),
                }),
            };
            match command {
                Some(command) => {
                    // Only fails if the hub stopped since the reservation.
                    let _ = input.sender.send_item(command);
                }
                None => {
                    input.sender.abort_send();
                }
            }
            if input.throttle.is_some() {
                break;
            }
        }
        if input.posts.is_empty() {
            let frame = Self::frame_input(input, self.drain_deadline.is_some());
            if frame? {
                progress = true;
            }
        }
        Ok(progress)
    }

    /// Reads what the socket has, if this member is reading now.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        if !self.wants_read() {
            return Ok(false);
        }
        match self.stream.poll_read_ready(cx) {
            Poll::Pending => Ok(false),
            Poll::Ready(Err(error)) => Err(End::PeerError(error)),
            Poll::Ready(Ok(())) => {
                self.read_now()?;
                Ok(true)
            }
        }
    }

    fn wants_read(&self) -> bool {
        match &self.input {
            // Viewers are read only to notice their departure.
            None => true,
            Some(input) => {
                !input.eof
                    && input.posts.is_empty()
                    && input.throttle.is_none()
                    && !input.sender.is_closed()
            }
        }
    }

    /// A sender whose peer has closed: a messenger is done; a chatter first sends its
    /// goodbye and still receives the room up to its own leave.
    fn check_goodbye(&mut self, cx: &mut Context<'_>) -> Result<(), End> {
        let Some(input) = &mut self.input else {
            return Ok(());
        };
        if !input.eof || !input.posts.is_empty() {
            return Ok(());
        }
        let Some(feed) = &mut self.feed else {
            return Err(End::PeerClosed);
        };
        if !feed.is_saying_goodbye() && input.left.is_none() && input.leave.is_none() {
            let (published, left) = oneshot::channel();
            input.leave = Some(published);
            input.left = Some(left);
            // The leave goes out through the inbox; the room hears of it once.
            self.membership.forget();
            cx.waker().wake_by_ref();
            return Ok(());
        }
        if let Some(left) = &mut input.left {
            match Pin::new(left).poll(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(until) => {
                    feed.until = until.unwrap_or(0);
                    input.left = None;
                    cx.waker().wake_by_ref();
                }
            }
        }
        if self.out.is_empty() && feed.next >= feed.until {
            return Err(End::PeerClosed);
        }
        Ok(())
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
            input.leave = None;
            if let Some(framer) = &mut input.framer {
                while let Ok(Some(chunk)) = framer.next_chunk(&mut input.buf) {
                    input.posts.push_back(chunk);
                }
            }
            if input.posts.is_empty() {
                input.sender.close();
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
            .is_none_or(|f| matches!(self.shared.ring.fetch(f.next), Fetch::Closed));
        posted && fed
    }

    /// Writes as much as the socket takes right now: what is pending, then the ring's
    /// ready batches after it, in one vectored write per round. Returns whether
    /// anything was written.
    fn write_now(&mut self) -> Result<bool, End> {
        let mut wrote = false;
        loop {
            let mut batches: [Option<Arc<Batch>>; BATCHES_PER_WRITE] = Default::default();
            let mut gathered = 0;
            if let Some(feed) = &self.feed {
                let ring = &self.shared.ring;
                if self.out.is_empty() {
                    feed.check(ring, self.mode, self.shared.config.viewer_backlog_bytes)?;
                }
                while gathered < BATCHES_PER_WRITE {
                    match feed.batch(ring, feed.next + gathered as u64, self.mode)? {
                        Some(batch) => {
                            batches[gathered] = Some(batch);
                            gathered += 1;
                        }
                        None => break,
                    }
                }
            }
            if self.out.is_empty() && gathered == 0 {
                return Ok(wrote);
            }
            let mut slices = [IoSlice::new(&[]); BATCHES_PER_WRITE + 1];
            let mut used = 0;
            for bytes in std::iter::once(&self.out)
                .chain(batches.iter().flatten().map(|b| b.bytes(self.mode)))
                .filter(|bytes| !bytes.is_empty())
            {
                slices[used] = IoSlice::new(bytes);
                used += 1;
            }
            // One buffer (the usual case at low rates) goes out with a plain write,
            // which costs the kernel less than a vector.
            let attempt = match used {
                1 => self.stream.try_write(&slices[0]),
                _ => self.stream.try_write_vectored(&slices[..used]),
            };
            let written = match attempt {
                Ok(written) => written,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(wrote),
                Err(error) => return Err(End::PeerError(error)),
            };
            wrote = true;
            self.consume(written, &batches[..gathered]);
            if let Some(heartbeat) = &mut self.heartbeat {
                heartbeat.as_mut().restart();
            }
            if self.out.is_empty() && gathered < BATCHES_PER_WRITE {
                // Everything that was ready went out; a later publish wakes us.
                return Ok(true);
            }
        }
    }

    /// Accounts for `written` bytes of `out` followed by `batches`.
    fn consume(&mut self, mut written: usize, batches: &[Option<Arc<Batch>>]) {
        let from_out = written.min(self.out.len());
        if from_out > 0 {
            self.last_byte = Some(self.out[from_out - 1]);
            self.out.advance(from_out);
            if self.out_from_feed
                && let Some(feed) = &mut self.feed
            {
                feed.delivered += from_out as u64;
            }
            written -= from_out;
        }
        let Some(feed) = &mut self.feed else {
            return;
        };
        for batch in batches.iter().flatten() {
            let bytes = batch.bytes(self.mode);
            if written == 0 || bytes.is_empty() {
                break;
            }
            let taken = written.min(bytes.len());
            self.last_byte = Some(bytes[taken - 1]);
            feed.delivered += taken as u64;
            feed.next += 1;
            written -= taken;
            if taken < bytes.len() {
                self.out = bytes.slice(taken..);
                self.out_from_feed = true;
            }
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
            Ok(_) => Self::frame_input(input, self.drain_deadline.is_some()).map(|_| ()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(End::PeerError(error)),
        }
    }

    /// Frames buffered input into the next post (see [`Self::frame_input`]).
    fn frame(&mut self) -> Result<(), End> {
        let draining = self.drain_deadline.is_some();
        match &mut self.input {
            Some(input) => Self::frame_input(input, draining).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Frames buffered input into the next post, one at a time so that a full inbox
    /// stops the reading. Returns whether a post was made.
    fn frame_input(input: &mut Input, draining: bool) -> Result<bool, End> {
        let mut framed = false;
        if input.posts.is_empty() && !input.buf.is_empty() {
            let post = match &mut input.framer {
                Some(framer) => framer.next_chunk(&mut input.buf).map_err(End::TooLong)?,
                None => take_seed_message(&mut input.buf),
            };
            framed = post.is_some();
            input.posts.extend(post);
        }
        if input.buf.is_empty() {
            // Let go of the read buffer: an idle connection holds no memory.
            input.buf = BytesMut::new();
        }
        if draining && input.posts.is_empty() {
            input.sender.close();
        }
        Ok(framed)
    }

    /// Logs the end, tells the room, and closes the connection as the end requires.
    pub(super) async fn finish(mut self, end: End) {
        // Whatever was still to be written is abandoned: let go of it (and of the
        // ring) before lingering, so a closing connection holds no chat.
        self.out = Bytes::new();
        self.feed = None;
        self.input = None;
        let id = self.membership.id();
        let linger = match end {
            End::TooSlow { .. } => SLOW_VIEWER_LINGER,
            // Shutdown's deadline has passed: close now.
            End::Deadline => Duration::ZERO,
            _ => LINGER,
        };
        let notice = match end {
            End::PeerClosed => {
                info!(conn = %id, "left");
                None
            }
            End::PeerError(error) => {
                info!(conn = %id, %error, "left: connection lost");
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
                    conn = %id,
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
                info!(conn = %id, %error, "closed: message too long");
                Some(Notice::error("message-too-long", error))
            }
            End::ShutDown => {
                debug!(conn = %id, "closed: server shutdown");
                self.goodbye.then(|| Notice::Bye {
                    text: "the server is shutting down".to_owned(),
                })
            }
            End::Deadline => {
                info!(conn = %id, "closed: shutdown deadline passed");
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

pin_project_lite::pin_project! {
    /// The opt-in heartbeat: due after `interval` without output.
    struct Heartbeat {
        interval: Duration,
        #[pin]
        timer: Sleep,
    }
}

impl Heartbeat {
    /// Whether a ping is due (registering for the next deadline if not).
    fn poll_due(self: Pin<&mut Self>, cx: &mut Context<'_>) -> bool {
        let mut this = self.project();
        if this.timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        this.timer.reset(Instant::now() + *this.interval);
        true
    }

    /// Output was written: the next ping is due a full interval from now.
    fn restart(self: Pin<&mut Self>) {
        let this = self.project();
        this.timer.reset(Instant::now() + *this.interval);
    }
}

impl Input {
    /// As much of `bytes` as flood control allows now; the rest goes back to wait.
    fn limit(&mut self, mut bytes: Bytes) -> Option<Bytes> {
        if let Some(bucket) = &mut self.bucket {
            let now = std::time::Instant::now();
            let wanted = text::lines(&bytes).count();
            let granted = bucket.take(wanted, now);
            if granted < wanted {
                let rest = bytes.split_off(text::end_of_lines(&bytes, granted));
                self.posts.push_front(rest);
                self.throttle = Some(Box::pin(sleep(bucket.next_token_in(now))));
                debug!(wanted, granted, "flood control: slowing the sender");
            }
        }
        (!bytes.is_empty()).then_some(bytes)
    }
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
