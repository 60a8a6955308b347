//! What every transport holds for one member of the room: the member core.
//!
//! A [`Member`] is handed out by [`Hub::join`](super::Hub::join). It does, once for
//! every transport, everything a member does that is not moving bytes:
//!
//! - posting: messages the transport has framed wait in the member's queue until the
//!   hub's bounded inbox has room and flood control allows them, and meanwhile the
//!   member asks for no more input ([`Wants::Wait`]), so a flood is slowed by the
//!   transport's own backpressure instead of being buffered;
//! - receiving: the room's batches come from the shared ring at the member's own
//!   cursor, in its own [`Format`], under the slow-viewer rule; the transport is given
//!   byte slices to write and says how many it wrote;
//! - the welcome, the acknowledgement, heartbeats and the last words, as its format
//!   writes them;
//! - leaving: exactly once, however the connection ends, also when the transport's
//!   task is dropped; a chatter that closes its end first receives the room up to its
//!   own leave;
//! - shutdown: a member stops taking input, hands the hub what it already has, lets
//!   the room finish, and writes everything up to the end within the deadline.
//!
//! It knows no socket and no transport: a transport is a loop that calls
//! [`Member::poll_duties`], reads when [`Member::wants`] says so, hands over what it
//! framed with [`Member::post`], writes through [`Member::poll_write`], and ends with
//! [`Member::finish`]. Every method is non-blocking and must be called from the
//! member's own task.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep, sleep};
use tokio_util::sync::{CancellationToken, PollSender};

use super::command::{Admitted, Command};
use super::flood::TokenBucket;
use super::replay::{Replay, ReplayCache};
use super::ring::{self, Batch, Fetch, Ring, Subscriber};
use crate::config::{Config, HELD_BACK_DEPARTURE_CHECK, LINGER, SLOW_VIEWER_LINGER};
use crate::protocol::handshake::Options;
use crate::protocol::line::LineTooLong;
use crate::protocol::websocket::{self, FrameError};
use crate::protocol::wire::{Format, Notice, PerFormat};
use crate::room::{ConnId, Role, text};
use crate::store::{Store, StoreError};

/// Logs an event at `$level` about `$member` (a [`Member`]), with the fields every
/// line about a member carries first: `conn`, `peer`, `transport`, `role`, `name`
/// (for roles that have one) and `mode`; then the given fields and message.
macro_rules! log_member {
    ($level:ident, $member:expr, $($rest:tt)+) => {
        tracing::$level!(
            conn = %$member.membership.id,
            peer = %$member.who.peer,
            transport = %$member.who.transport(),
            role = %$member.role,
            name = $member.who.name.as_deref(),
            mode = %$member.format.mode(),
            $($rest)+
        )
    };
}

/// Most batches handed to the transport in one (vectored) write.
const BATCHES_PER_WRITE: usize = 16;

/// What every member shares, fixed when the hub starts.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(super) ring: Arc<Ring>,
    /// Set when shutdown begins, before anyone is woken to see it: members check it
    /// on every wake-up (one atomic load; a token's check takes a lock).
    stopping: AtomicBool,
    /// Cancelled when shutdown begins, for the hub task, which waits for it.
    pub(super) stop: CancellationToken,
    /// What a reload (SIGHUP) may change, read when a member joins.
    live: std::sync::RwLock<Arc<Live>>,
    /// The log, for replays; `None` with history off.
    store: Option<Arc<dyn Store>>,
    /// Encoded parts of the log that concurrent replays share.
    replays: Arc<ReplayCache>,
    viewer_backlog_bytes: usize,
    shutdown_timeout: Duration,
    slow_viewers: AtomicU64,
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    /// Set by the log writer while an append fails.
    pub(super) log_failing: AtomicBool,
    /// The last event published: what a member joining now is welcomed at.
    pub(super) published_seq: Arc<AtomicU64>,
}

impl Shared {
    pub(super) fn new(
        config: &Config,
        ring: Arc<Ring>,
        store: Option<Arc<dyn Store>>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            ring,
            stopping: AtomicBool::new(false),
            stop: CancellationToken::new(),
            live: std::sync::RwLock::new(Arc::new(Live::of(config))),
            store,
            replays: Arc::new(ReplayCache::default()),
            viewer_backlog_bytes: config.viewer_backlog_bytes,
            shutdown_timeout: config.shutdown_timeout,
            slow_viewers: AtomicU64::new(0),
            metrics,
            log_failing: AtomicBool::new(false),
            published_seq: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The room's log, if it keeps one.
    pub(super) fn store(&self) -> Option<&Arc<dyn Store>> {
        self.store.as_ref()
    }

    pub(super) fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop.cancel();
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// What members joining now get.
    pub(super) fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Takes `config`'s chat name, flood control and heartbeat for members joining
    /// from now on (a reload).
    pub(super) fn reconfigure(&self, config: &Config) {
        *self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(Live::of(config));
    }

    /// The welcome a receiver in `format` gets when the room's last event is
    /// `last_seq`.
    fn welcome(&self, format: Format, last_seq: u64) -> Bytes {
        let live = self.live();
        match format {
            Format::Tagged | Format::TaggedWebSocket => format.welcome(&live.chat_name, last_seq),
            Format::Seed | Format::Line | Format::WebSocket => live.welcome[format].clone(),
        }
    }

    /// Viewers disconnected so far because they fell too far behind.
    pub(super) fn slow_viewers(&self) -> u64 {
        self.slow_viewers.load(Ordering::Relaxed)
    }
}

/// The settings a reload changes for members joining from then on.
#[derive(Debug)]
pub(super) struct Live {
    chat_name: String,
    /// The welcome in the formats whose welcome is the same for everyone.
    welcome: PerFormat<Bytes>,
    heartbeat_interval: Duration,
    flood_rate: f64,
    flood_burst: u32,
}

impl Live {
    fn of(config: &Config) -> Self {
        Self {
            chat_name: config.chat_name.clone(),
            welcome: PerFormat::from_fn(|format| format.welcome(&config.chat_name, 0)),
            heartbeat_interval: config.heartbeat_interval,
            flood_rate: config.flood_rate,
            flood_burst: config.flood_burst,
        }
    }
}

/// Tells the hub that a connection is gone, exactly once, however its task ends.
#[derive(Debug)]
pub(super) struct Membership {
    id: ConnId,
    tx: Option<mpsc::Sender<Command>>,
    /// The leave was already announced (a chatter's goodbye): only the member's place
    /// among the receivers is left to give back.
    announced: bool,
}

impl Membership {
    pub(super) fn new(id: ConnId, tx: mpsc::Sender<Command>) -> Self {
        Self {
            id,
            tx: Some(tx),
            announced: false,
        }
    }

    /// What the hub must still be told.
    fn last_command(&self) -> Command {
        if self.announced {
            Command::Release { id: self.id }
        } else {
            Command::Leave {
                id: self.id,
                published: None,
            }
        }
    }

    async fn leave(&mut self) {
        let command = self.last_command();
        if let Some(tx) = self.tx.take() {
            // Fails only if the hub has stopped, and then the room is gone anyway.
            let _ = tx.send(command).await;
        }
    }

    /// The leave went out (a chatter's goodbye, through the member's own inbox
    /// sender): from now on the end of the connection only releases its place.
    fn announce(&mut self) {
        self.announced = true;
    }

    /// The hub hears of this departure not at all: at shutdown the room ends with the
    /// server, and the hub may stop once every connection has let go of its inbox.
    fn forget(&mut self) {
        self.tx = None;
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let command = self.last_command();
        let Some(tx) = self.tx.take() else {
            return;
        };
        // Reached when a task ends without `finish` (dropped, cancelled): the name
        // must still be freed and the leave announced.
        if let Err(mpsc::error::TrySendError::Full(command)) = tx.try_send(command)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = tx.send(command).await;
            });
        }
    }
}

/// A name held for a connection whose handshake is not decided yet (a seed
/// messenger during the seed grace). Dropping it releases the name silently; passing
/// it to [`Hub::join`](super::Hub::join) turns it into the membership.
#[derive(Debug)]
pub struct Reservation {
    pub(super) membership: Membership,
}

/// What a transport asks the hub for, once the handshake is done.
#[derive(Debug)]
pub struct JoinRequest {
    /// The connection.
    pub id: ConnId,
    /// The address it connects from, for its log lines.
    pub peer: SocketAddr,
    /// The transport it came by, as logs and metrics name it (`tcp`, `tls`, `ws`,
    /// `wss`).
    pub transport: &'static str,
    /// What it asked to be.
    pub role: Role,
    /// Its name, for roles that send.
    pub name: Option<String>,
    /// How it receives the room (and its notices).
    pub format: Format,
    /// Extras it asked for.
    pub options: Options,
    /// Whether its posts go through flood control.
    pub flood_controlled: bool,
    /// The name it already holds, if any.
    pub reservation: Option<Reservation>,
}

/// What the member wants from its transport's input now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wants {
    /// Nothing: read what the peer sends and drop it, so that its departure is
    /// noticed at once (viewers).
    Nothing,
    /// The next message: frame one from what is buffered, or read more.
    Message,
    /// Shutdown began: hand over every complete message already buffered, then call
    /// [`Member::end_of_input`]. Read nothing more.
    Buffered,
    /// Read nothing now: posts wait for room in the inbox or for flood control.
    /// While [`Member::is_held_back`], check the peer for departure without reading.
    Wait,
    /// Nothing more, ever.
    Done,
}

/// How a member's connection ended.
#[derive(Debug)]
pub enum End {
    /// The peer closed its end (FIN) and everything it sent was handled.
    PeerClosed,
    /// The peer closed or reset its connection while flood control held some of its
    /// lines back; those lines are dropped.
    LeftWhileHeldBack {
        /// The socket's pending error (a reset), if any; `None` for a close.
        error: Option<io::Error>,
    },
    /// The connection failed (reset, dead-peer timeout).
    PeerError(io::Error),
    /// The operator disconnected it (`tcpchat admin kick`).
    Kicked,
    /// A receiver fell further behind than its backlog allows.
    TooSlow {
        /// Bytes of its own format published and not yet written.
        behind: u64,
    },
    /// A line-mode sender sent a line over the limit.
    TooLong(LineTooLong),
    /// A new connection took this member's name over with its secret.
    Replaced,
    /// The log could not be read for this member's replay.
    HistoryUnavailable(StoreError),
    /// The server shut down and everything was delivered.
    ShutDown,
    /// The server shut down and the deadline passed first.
    Deadline,
    /// A WebSocket client's frame broke the protocol, was binary, or was too big.
    BadFrame(FrameError),
}

impl End {
    /// Why the connection ended, as its departure line says: one word of a small,
    /// fixed vocabulary (docs/RELIABILITY.md lists it). Where the client was told an
    /// error, it is that error's code.
    pub fn reason(&self) -> &'static str {
        match self {
            End::PeerClosed | End::LeftWhileHeldBack { error: None } => "closed",
            End::LeftWhileHeldBack { error: Some(error) } | End::PeerError(error) => {
                peer_error_reason(error)
            }
            End::TooSlow { .. } => "too-slow",
            End::TooLong(_) => "message-too-long",
            End::Replaced => "replaced",
            End::Kicked => "kicked",
            End::HistoryUnavailable(_) => "history-unavailable",
            End::ShutDown => "shutdown",
            End::Deadline => "shutdown-deadline",
            End::BadFrame(error) => error.code,
        }
    }
}

/// The departure reason for a failed connection.
fn peer_error_reason(error: &io::Error) -> &'static str {
    use io::ErrorKind;
    match error.kind() {
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            "reset"
        }
        // Keepalive probes or TCP_USER_TIMEOUT gave up, a WebSocket client stopped
        // answering pings, or the network says the peer cannot be reached.
        ErrorKind::TimedOut | ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
            "dead-peer"
        }
        // A TLS peer that closed its TCP connection without `close_notify`.
        ErrorKind::UnexpectedEof => "closed",
        _ => "network-error",
    }
}

/// How the transport should close the connection.
#[derive(Debug)]
pub struct Farewell {
    /// A last line to write before closing, in the member's format. In a framed
    /// format, it ends with whole frames (finishing any frame the last write cut
    /// short), so a transport may add a closing frame after it.
    pub last_words: Option<Bytes>,
    /// How long writing what is left (the last words, and whatever the transport
    /// still holds, such as TLS records) may take.
    pub flush_within: Duration,
    /// How long the peer then gets to close its end.
    pub linger: Duration,
}

/// A receiving member's position in the shared ring.
#[derive(Debug)]
struct Feed {
    /// Index of the next batch to take from the ring.
    next: u64,
    /// Log offset (in the member's format) of the next byte to hand to the transport.
    delivered: u64,
    /// The batch index this member is delivered up to: [`u64::MAX`] until a chatter
    /// says goodbye, then just past its own leave.
    until: u64,
}

impl Feed {
    fn behind(&self, ring: &Ring, format: Format) -> u64 {
        ring.end(format).saturating_sub(self.delivered)
    }

    /// The slow-viewer policy: `Err` once this member is past its backlog.
    fn check(&self, ring: &Ring, format: Format, backlog: usize) -> Result<(), End> {
        let behind = self.behind(ring, format);
        if ring::is_too_far_behind(behind, backlog as u64) {
            Err(End::TooSlow { behind })
        } else {
            Ok(())
        }
    }

    /// The batch at `index`, if it is ready and still due to this member.
    fn batch(&self, ring: &Ring, index: u64, format: Format) -> Result<Option<Arc<Batch>>, End> {
        if index >= self.until {
            return Ok(None);
        }
        match ring.fetch(index) {
            Fetch::Ready(batch) => Ok(Some(batch)),
            Fetch::Pending | Fetch::Closed => Ok(None),
            Fetch::Gone => Err(End::TooSlow {
                behind: self.behind(ring, format),
            }),
        }
    }

    fn is_saying_goodbye(&self) -> bool {
        self.until != u64::MAX
    }
}

/// Names per `*** members` line.
const MEMBERS_PER_LINE: usize = 64;

/// The `*** members N: ...` lines for `names`, at least one (`*** members 0:` in an
/// empty room); none in a format without notices.
fn members_lines(format: Format, names: &[Arc<str>]) -> BytesMut {
    let mut out = BytesMut::new();
    let chunks: Vec<&[Arc<str>]> = if names.is_empty() {
        vec![names]
    } else {
        names.chunks(MEMBERS_PER_LINE).collect()
    };
    for chunk in chunks {
        let notice = Notice::Members {
            total: names.len(),
            names: chunk.iter().map(|name| name.to_string()).collect(),
        };
        if let Some(line) = format.notice(&notice) {
            out.extend_from_slice(&line);
        }
    }
    out
}

/// Where a sender's input stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputState {
    /// Taking messages.
    Open,
    /// Shutdown began: waiting for the transport to hand over what it buffered.
    Draining,
    /// No more messages: the peer closed, or the transport handed over the rest.
    Ended,
}

/// A sending member's input side. Boxed in the member: viewers do not carry it.
#[derive(Debug)]
struct Input {
    /// Framed messages waiting for room in the hub's inbox (or for flood control).
    posts: VecDeque<Bytes>,
    /// The hub's inbox; closed once shutdown began and everything was handed over.
    sender: PollSender<Command>,
    /// Flood control; `None` for exempt (loopback) clients.
    bucket: Option<TokenBucket>,
    /// Set while flood control holds the next post back.
    throttle: Option<Pin<Box<Sleep>>>,
    state: InputState,
    /// A chatter's goodbye, to send once its posts are out.
    leave: Option<oneshot::Sender<u64>>,
    /// The hub's answer to that goodbye: where its announcement ends in the ring.
    left: Option<oneshot::Receiver<u64>>,
}

impl Input {
    /// As much of `bytes` as flood control allows now; the rest goes back to wait.
    fn limit(&mut self, mut bytes: Bytes) -> Option<Bytes> {
        if let Some(bucket) = &mut self.bucket {
            let now = Instant::now();
            let wanted = text::lines(&bytes).count();
            let granted = bucket.take(wanted, now);
            if granted < wanted {
                let rest = bytes.split_off(text::end_of_lines(&bytes, granted));
                self.posts.push_front(rest);
                // Woken at least this often, so the transport can check whether the
                // peer is still there while its input is not read.
                let wait = bucket.next_token_in(now).min(HELD_BACK_DEPARTURE_CHECK);
                self.throttle = Some(Box::pin(sleep(wait)));
            }
        }
        (!bytes.is_empty()).then_some(bytes)
    }
}

pin_project_lite::pin_project! {
    /// The heartbeat (opt-in, and always on for WebSocket members): due after
    /// `interval` without output. It also keeps what only pinged members need, so
    /// that the rest do not carry it in their task.
    #[derive(Debug)]
    struct Heartbeat {
        interval: Duration,
        #[pin]
        timer: Sleep,
        // Whether the client asked for `heartbeat` (else it is pinged as a WebSocket
        // member, with frames only).
        asked: bool,
        // Whether a ping went out since the transport last asked.
        pinged: bool,
        // A transport's own message (a WebSocket pong), written at the next boundary.
        between: Option<Bytes>,
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

/// Who a member is, for its log lines only: boxed, so that it costs an idle
/// connection's task nothing but a pointer (the task's size is what an idle
/// connection costs, in jemalloc's size classes).
///
/// Kept to 64 bytes (jemalloc's class): the transport as an index into
/// [`TRANSPORTS`], the join as milliseconds since the process's first join.
#[derive(Debug)]
struct Who {
    peer: SocketAddr,
    name: Option<Box<str>>,
    joined_ms: u64,
    /// Lines it handed to the room.
    messages: u32,
    transport: u8,
}

/// The transports' names, as logs and metrics give them.
const TRANSPORTS: [&str; 5] = ["tcp", "tls", "ws", "wss", "other"];

/// Milliseconds since the first call (the process's first join): a member's join
/// time in 8 bytes rather than an `Instant`'s 16.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Who {
    fn transport(&self) -> &'static str {
        TRANSPORTS
            .get(usize::from(self.transport))
            .copied()
            .unwrap_or("other")
    }
}

const _: () = assert!(std::mem::size_of::<Who>() <= 64);

/// One member of the room. See the module documentation.
#[derive(Debug)]
pub struct Member {
    role: Role,
    format: Format,
    /// Who it is, for its log lines.
    who: Box<Who>,
    /// Whether it asked for `*** bye` at shutdown.
    goodbye: bool,
    shared: Arc<Shared>,
    /// Woken by the hub after each publish (receivers) and at shutdown (everyone).
    waker: Arc<Subscriber>,
    membership: Membership,
    feed: Option<Feed>,
    /// The log's events it asked for, sent before the live feed.
    replay: Option<Box<Replay>>,
    input: Option<Box<Input>>,
    /// Bytes being written; empty when there is nothing to write.
    out: Bytes,
    /// Whether `out` comes from the ring (and counts as delivered when written).
    out_from_feed: bool,
    /// The last byte written, to start a closing notice on a fresh line.
    last_byte: Option<u8>,
    /// Whether the last write stopped inside a buffer (a batch, a notice).
    cut_short: bool,
    /// In a framed format, the bytes at the front of `out` that finish a frame the
    /// last write began (0 when `out` starts with a whole frame).
    frame_rest: usize,
    /// Boxed, and only for members that are pinged: an idle connection's cost is its
    /// task's size, in steps of 128 bytes (tokio aligns tasks to cache lines).
    heartbeat: Option<Pin<Box<Heartbeat>>>,
    /// Set when shutdown begins.
    drain_deadline: Option<Pin<Box<Sleep>>>,
}

impl Member {
    /// A member the hub has just let in, starting at `cursor`. Hub handle only.
    pub(super) fn new(
        request: &JoinRequest,
        shared: Arc<Shared>,
        waker: Arc<Subscriber>,
        membership: Membership,
        tx: mpsc::Sender<Command>,
        admitted: Admitted,
    ) -> Self {
        let format = request.format;
        let cursor = &admitted.cursor;
        let greeting = if request.role.receives() {
            shared.welcome(format, admitted.last_seq)
        } else {
            let ok = Notice::Ok {
                name: request.name.clone().unwrap_or_default(),
            };
            format.notice(&ok).unwrap_or_default()
        };
        let token = admitted
            .token
            .and_then(|secret| format.notice(&Notice::Token { secret }));
        let members = admitted
            .members
            .as_deref()
            .map(|names| members_lines(format, names))
            .unwrap_or_default();
        let out = if token.is_none() && members.is_empty() {
            greeting
        } else {
            let mut out = BytesMut::with_capacity(greeting.len() + members.len() + 64);
            out.extend_from_slice(&greeting);
            out.extend_from_slice(&token.unwrap_or_default());
            out.extend_from_slice(&members);
            out.freeze()
        };
        let replay = if request.role.receives() && format.has_notices() {
            Replay::asked(&request.options, admitted.last_seq).map(Box::new)
        } else {
            None
        };
        if replay.is_some() {
            shared.metrics.replays.inc();
        }
        let feed = request.role.receives().then(|| Feed {
            next: cursor.index,
            delivered: cursor.offset(format),
            until: u64::MAX,
        });
        // Only senders hold the inbox: at shutdown the hub stops once every sender
        // is gone, and a viewer must not keep it waiting.
        let input = request.role.sends().then(|| {
            let bucket = request.flood_controlled.then(|| {
                let live = shared.live();
                TokenBucket::new(live.flood_rate, live.flood_burst, Instant::now())
            });
            Box::new(Input {
                posts: VecDeque::new(),
                sender: PollSender::new(tx),
                bucket,
                throttle: None,
                state: InputState::Open,
                leave: None,
                left: None,
            })
        });
        // WebSocket clients are always pinged: their answers tell a live peer.
        let heartbeat = ((request.options.heartbeat || format.is_framed()) && format.has_notices())
            .then(|| {
                let interval = shared.live().heartbeat_interval;
                Box::pin(Heartbeat {
                    interval,
                    timer: sleep(interval),
                    asked: request.options.heartbeat,
                    pinged: false,
                    between: None,
                })
            });
        Self {
            role: request.role,
            format,
            who: Box::new(Who {
                peer: request.peer,
                name: request.name.as_deref().map(Box::from),
                joined_ms: now_ms(),
                messages: 0,
                transport: TRANSPORTS
                    .iter()
                    .position(|name| *name == request.transport)
                    .and_then(|i| u8::try_from(i).ok())
                    .unwrap_or(4),
            }),
            goodbye: request.options.goodbye,
            shared,
            waker,
            membership,
            feed,
            replay,
            input,
            out,
            out_from_feed: false,
            last_byte: None,
            cut_short: false,
            frame_rest: 0,
            heartbeat,
            drain_deadline: None,
        }
    }

    /// Who this member is.
    pub fn id(&self) -> ConnId {
        self.membership.id
    }

    /// Its role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The format it receives in.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Registers the current task to be woken by the hub (after each publish for
    /// receivers, and at shutdown for everyone). Call first in every poll.
    pub fn register(&self, cx: &Context<'_>) {
        self.waker.register(cx);
    }

    /// The member's own work for this turn: noticing shutdown, its deadline, posting
    /// what waits (as the inbox and flood control allow). Returns whether anything
    /// happened.
    ///
    /// # Errors
    /// The [`End`] of the connection, when it has come.
    pub fn poll_duties(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        let mut progress = false;
        if self.waker.is_replaced() {
            return Err(End::Replaced);
        }
        if self.waker.is_kicked() {
            return Err(End::Kicked);
        }
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
        Ok(progress)
    }

    /// What the member wants from the transport's input now.
    pub fn wants(&self) -> Wants {
        let Some(input) = &self.input else {
            return Wants::Nothing;
        };
        match input.state {
            _ if input.sender.is_closed() => Wants::Done,
            InputState::Ended => Wants::Done,
            InputState::Draining => Wants::Buffered,
            InputState::Open if !input.posts.is_empty() || input.throttle.is_some() => Wants::Wait,
            InputState::Open => Wants::Message,
        }
    }

    /// Whether flood control is holding this sender's input back. The transport does
    /// not read meanwhile, so it checks the peer for departure without reading; the
    /// member is woken at least every [`HELD_BACK_DEPARTURE_CHECK`] while this holds.
    pub fn is_held_back(&self) -> bool {
        self.input.as_ref().is_some_and(|i| i.throttle.is_some())
    }

    /// Queues one framed message (one or more lines, or one seed read). Call only
    /// when [`Self::wants`] said [`Wants::Message`] or [`Wants::Buffered`].
    pub fn post(&mut self, message: Bytes) {
        if let Some(input) = &mut self.input
            && !message.is_empty()
        {
            input.posts.push_back(message);
        }
    }

    /// The peer has closed its end (after the transport posted its last message), or
    /// at shutdown the transport has handed over everything it had buffered.
    pub fn end_of_input(&mut self) {
        if let Some(input) = &mut self.input {
            input.state = InputState::Ended;
        }
    }

    /// Writes what is due (pending output, then the room's batches, and a ping when the
    /// heartbeat comes due on a quiet connection) through `write`,
    /// which writes slices as one (vectored) write and returns how many bytes it took,
    /// or `Pending` when the transport is full (having arranged to be woken). Returns
    /// whether anything was written.
    ///
    /// # Errors
    /// [`End::PeerError`] when `write` fails, [`End::TooSlow`] under the slow-viewer
    /// rule.
    pub fn poll_write<W>(&mut self, cx: &mut Context<'_>, mut write: W) -> Result<bool, End>
    where
        W: FnMut(&mut Context<'_>, &[IoSlice<'_>]) -> Poll<io::Result<usize>>,
    {
        let mut wrote = false;
        loop {
            // The replay first, a chunk at a time, and the live feed once it is done.
            if self.out.is_empty() && self.replay.is_some() {
                self.check_feed()?;
            }
            if self.out.is_empty()
                && let Some(replay) = &mut self.replay
            {
                let store = self.shared.store.as_ref();
                match replay.poll_chunk(cx, store, &self.shared.replays, self.format) {
                    Poll::Pending => return Ok(wrote),
                    Poll::Ready(Err(error)) => return Err(End::HistoryUnavailable(error)),
                    Poll::Ready(Ok(Some(chunk))) => {
                        self.out = chunk;
                        self.out_from_feed = false;
                    }
                    Poll::Ready(Ok(None)) => self.replay = None,
                }
            }
            let mut batches: [Option<Arc<Batch>>; BATCHES_PER_WRITE] = Default::default();
            let mut gathered = 0;
            if self.replay.is_some() {
                // Only the replay's chunk (or what came before it) goes out now.
            } else if let Some(feed) = &self.feed {
                let ring = &self.shared.ring;
                if self.out.is_empty() {
                    feed.check(ring, self.format, self.shared.viewer_backlog_bytes)?;
                }
                while gathered < BATCHES_PER_WRITE {
                    match feed.batch(ring, feed.next + gathered as u64, self.format)? {
                        Some(batch) => {
                            batches[gathered] = Some(batch);
                            gathered += 1;
                        }
                        None => break,
                    }
                }
            }
            if self.out.is_empty() && gathered == 0 {
                if self.replay.is_some() {
                    // An empty chunk: read the next one.
                    continue;
                }
                // Polled last, after any write restarted it, so its timer is armed.
                if self.poll_ping(cx) {
                    continue;
                }
                return Ok(wrote);
            }
            let mut slices = [IoSlice::new(&[]); BATCHES_PER_WRITE + 1];
            let mut used = 0;
            for bytes in std::iter::once(&self.out)
                .chain(batches.iter().flatten().map(|b| b.bytes(self.format)))
                .filter(|bytes| !bytes.is_empty())
            {
                slices[used] = IoSlice::new(bytes);
                used += 1;
            }
            let written = if used == 0 {
                // Only batches with nothing in this format: step over them.
                0
            } else {
                match write(cx, &slices[..used]) {
                    Poll::Ready(Ok(0)) => {
                        return Err(End::PeerError(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(written)) => written,
                    Poll::Ready(Err(error)) => return Err(End::PeerError(error)),
                    Poll::Pending => {
                        self.check_feed()?;
                        return Ok(wrote);
                    }
                }
            };
            wrote |= written > 0;
            self.consume(written, &batches[..gathered]);
            if written > 0
                && let Some(heartbeat) = &mut self.heartbeat
            {
                heartbeat.as_mut().restart();
            }
            if self.out.is_empty()
                && self.replay.is_none()
                && gathered < BATCHES_PER_WRITE
                && !self.poll_ping(cx)
            {
                // Everything that was ready went out; a later publish wakes us.
                return Ok(wrote);
            }
        }
    }

    /// The slow-viewer rule, for a receiver: `Err` once it is past its backlog.
    fn check_feed(&self) -> Result<(), End> {
        match &self.feed {
            Some(feed) => feed.check(
                &self.shared.ring,
                self.format,
                self.shared.viewer_backlog_bytes,
            ),
            None => Ok(()),
        }
    }

    /// Queues a ping if the heartbeat is due (registering for its next deadline if
    /// not). Only on a connection with nothing else to write.
    fn poll_ping(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.out.is_empty() {
            return false;
        }
        let Some(heartbeat) = &mut self.heartbeat else {
            return false;
        };
        if let Some(between) = heartbeat.as_mut().project().between.take() {
            self.out = between;
            self.out_from_feed = false;
            return true;
        }
        if !heartbeat.as_mut().poll_due(cx) {
            return false;
        }
        let heartbeat = heartbeat.as_mut().project();
        self.out = self.format.ping(*heartbeat.asked);
        self.out_from_feed = false;
        *heartbeat.pinged = true;
        true
    }

    /// Queues the transport's own `bytes` (a WebSocket pong) to be written once
    /// everything ready now is written, never inside another unit of output. A second
    /// call before then replaces the first (a pong answers the latest ping only).
    /// Only WebSocket members have such messages, and they are always pinged.
    pub fn send_between(&mut self, bytes: Bytes) {
        if let Some(heartbeat) = &mut self.heartbeat {
            *heartbeat.as_mut().project().between = Some(bytes);
        }
        // Written by the next `poll_write`; the transport polls it in this round.
    }

    /// Whether the heartbeat has sent a ping since the last call: the moment for a
    /// transport that expects an answer to check it has heard from its peer lately.
    pub fn take_pinged(&mut self) -> bool {
        self.heartbeat
            .as_mut()
            .is_some_and(|heartbeat| std::mem::take(heartbeat.as_mut().project().pinged))
    }

    /// Whether the member is done, as a sender that closed (after its goodbye, for a
    /// chatter) or at the end of shutdown.
    ///
    /// # Errors
    /// The [`End`], once it has come.
    pub fn poll_end(&mut self, cx: &mut Context<'_>) -> Result<(), End> {
        if self.is_drained() {
            return Err(End::ShutDown);
        }
        self.poll_goodbye(cx)
    }

    /// Logs the end, tells the room, and says how the transport should close.
    pub async fn finish(mut self, end: End) -> Farewell {
        let held_back = self.input.as_ref().map_or(0, |input| {
            input.posts.iter().map(|p| text::lines(p).count()).sum()
        });
        // A frame cut short is finished first (its rest is in `out`), so that the
        // closing frames can follow it.
        let unfinished = if self.format.is_framed() && self.cut_short {
            self.out.slice(..self.frame_rest.min(self.out.len()))
        } else {
            Bytes::new()
        };
        // Whatever was still to be written is abandoned: let go of it (and of the
        // ring) before lingering, so a closing connection holds no chat.
        self.out = Bytes::new();
        self.feed = None;
        self.replay = None;
        self.input = None;
        let (flush_within, linger) = match end {
            // Its socket is full of chat it has not read: it gets time to read its
            // way to the notice.
            End::TooSlow { .. } => (SLOW_VIEWER_LINGER, LINGER),
            // Shutdown's deadline has passed: close now.
            End::Deadline => (Duration::ZERO, Duration::ZERO),
            // What the transport still holds (a TLS session's records) goes out within
            // what is left of the drain deadline.
            End::ShutDown => {
                let left = self.drain_deadline.as_ref().map_or(LINGER, |deadline| {
                    deadline
                        .deadline()
                        .saturating_duration_since(Instant::now())
                });
                (left.max(LINGER), LINGER)
            }
            _ => (LINGER, LINGER),
        };
        // One line per departure, whatever ended it: who, for how long, how many
        // messages, and why (a word of `End::reason`'s vocabulary), with the detail
        // of that end.
        let reason = end.reason();
        let duration_s = now_ms().saturating_sub(self.who.joined_ms) as f64 / 1000.0;
        let messages = self.who.messages;
        macro_rules! left {
            ($level:ident $(, $($detail:tt)+)?) => {
                log_member!($level, self, reason = %reason, duration_s, messages, $($($detail)+,)? "left")
            };
        }
        let notice = match end {
            End::PeerClosed => {
                left!(info);
                None
            }
            End::LeftWhileHeldBack { error } => {
                // What flood control held back was never handed to the room.
                match error {
                    Some(error) => left!(info, dropped_lines = held_back, %error),
                    None => left!(info, dropped_lines = held_back),
                }
                None
            }
            End::PeerError(error) => {
                left!(info, %error);
                None
            }
            End::TooSlow { behind } => {
                let total = self.shared.slow_viewers.fetch_add(1, Ordering::Relaxed) + 1;
                self.shared.metrics.slow_viewers_dropped.inc();
                left!(
                    warn,
                    behind,
                    backlog = self.shared.viewer_backlog_bytes,
                    slow_viewers = total
                );
                Some(Notice::error(
                    "too-slow",
                    format!(
                        "you fell more than {} bytes or {} events behind the room",
                        self.shared.viewer_backlog_bytes,
                        self.shared.ring.capacity()
                    ),
                ))
            }
            End::TooLong(error) => {
                left!(info, %error);
                Some(Notice::error("message-too-long", error))
            }
            End::Kicked => {
                left!(info);
                Some(Notice::error("kicked", "disconnected by the operator"))
            }
            End::Replaced => {
                left!(info);
                Some(Notice::error(
                    "replaced",
                    "a new connection took this name over with its secret",
                ))
            }
            End::HistoryUnavailable(error) => {
                left!(warn, %error);
                Some(Notice::error(
                    "history-unavailable",
                    "the server cannot read its log right now; try again",
                ))
            }
            End::ShutDown => {
                left!(info);
                self.goodbye.then(|| Notice::Bye {
                    text: "the server is shutting down".to_owned(),
                })
            }
            End::Deadline => {
                left!(info);
                None
            }
            End::BadFrame(error) => {
                left!(info, %error);
                Some(Notice::error(error.code, &error.reason))
            }
        };
        self.membership.leave().await;
        let last_words = notice.and_then(|notice| {
            let line = self.format.notice(&notice)?;
            if !unfinished.is_empty() {
                return Some([unfinished.clone(), line].concat().into());
            }
            if !self.format.is_framed() && self.last_byte.is_some_and(|b| b != b'\n') {
                // A batch was cut short mid-line: start the notice on its own line.
                let mut fresh = BytesMut::with_capacity(line.len() + 1);
                fresh.extend_from_slice(b"\n");
                fresh.extend_from_slice(&line);
                Some(fresh.freeze())
            } else {
                Some(line)
            }
        });
        let last_words = match last_words {
            None if !unfinished.is_empty() => Some(unfinished),
            other => other,
        };
        Farewell {
            last_words,
            flush_within,
            linger,
        }
    }

    /// Sends what waits for the hub's inbox, as flood control allows. Every timer it
    /// sets is polled before it returns, so the member is woken when it fires.
    fn poll_posts(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        let id = self.membership.id;
        let draining = self.drain_deadline.is_some();
        let Some(input) = &mut self.input else {
            return Ok(false);
        };
        let mut progress = false;
        let ended = input.state == InputState::Ended;
        loop {
            if let Some(throttle) = &mut input.throttle {
                if throttle.as_mut().poll(cx).is_pending() {
                    break;
                }
                input.throttle = None;
                progress = true;
            }
            if input.posts.is_empty() && !(ended && input.leave.is_some()) {
                break;
            }
            match input.sender.poll_reserve(cx) {
                Poll::Pending => break,
                // The hub has stopped: the server is shutting down.
                Poll::Ready(Err(_)) => return Err(End::ShutDown),
                Poll::Ready(Ok(())) => {}
            }
            progress = true;
            let mut lines = 0;
            let command = match input.posts.pop_front() {
                Some(bytes) => {
                    let limited = input.limit(bytes);
                    if input.throttle.is_some() {
                        self.shared.metrics.flood_pauses.inc();
                        log_member!(debug, self, "flood control: holding lines back");
                    }
                    limited.map(|bytes| {
                        lines = text::lines(&bytes).count() as u64;
                        Command::Post { id, bytes }
                    })
                }
                None => input.leave.take().map(|published| Command::Leave {
                    id,
                    published: Some(published),
                }),
            };
            match command {
                Some(command) => {
                    let goodbye = matches!(command, Command::Leave { .. });
                    // Fails only if the hub stopped since the reservation.
                    if input.sender.send_item(command).is_ok() {
                        self.who.messages = self
                            .who
                            .messages
                            .saturating_add(u32::try_from(lines).unwrap_or(u32::MAX));
                        if goodbye {
                            self.membership.announce();
                        }
                    }
                }
                None => {
                    input.sender.abort_send();
                }
            }
        }
        if draining && ended && input.posts.is_empty() && !input.sender.is_closed() {
            // Everything read before shutdown is with the hub: let go of its inbox.
            input.sender.close();
            progress = true;
        }
        Ok(progress)
    }

    /// Shutdown began: accept nothing more, hand the hub what was already read,
    /// then let go of its inbox so it can finish.
    fn begin_drain(&mut self) {
        self.drain_deadline = Some(Box::pin(sleep(self.shared.shutdown_timeout)));
        self.membership.forget();
        if let Some(input) = &mut self.input {
            // What was already read is delivered at once: the server is closing anyway.
            input.bucket = None;
            input.throttle = None;
            input.leave = None;
            if input.state == InputState::Open {
                input.state = InputState::Draining;
            }
        }
    }

    /// Whether a draining member has nothing left to do.
    fn is_drained(&self) -> bool {
        if self.drain_deadline.is_none() || !self.out.is_empty() || self.replay.is_some() {
            return false;
        }
        let posted = self.input.as_ref().is_none_or(|i| {
            i.posts.is_empty() && (i.state == InputState::Ended || i.sender.is_closed())
        });
        // A chatter that said goodbye is fed once it has its own leave.
        let fed = self.feed.as_ref().is_none_or(|f| {
            f.next >= f.until || matches!(self.shared.ring.fetch(f.next), Fetch::Closed)
        });
        posted && fed
    }

    /// A sender whose peer has closed: a messenger is done; a chatter first sends its
    /// goodbye and still receives the room up to its own leave.
    fn poll_goodbye(&mut self, cx: &mut Context<'_>) -> Result<(), End> {
        if self.drain_deadline.is_some() {
            return Ok(());
        }
        let Some(input) = &mut self.input else {
            return Ok(());
        };
        if input.state != InputState::Ended || !input.posts.is_empty() {
            return Ok(());
        }
        let Some(feed) = &mut self.feed else {
            return Err(End::PeerClosed);
        };
        if !feed.is_saying_goodbye() && input.left.is_none() && input.leave.is_none() {
            let (published, left) = oneshot::channel();
            // The leave goes out through the inbox after the last post, and the room
            // hears of it once: until it is sent, the membership still owes it.
            input.leave = Some(published);
            input.left = Some(left);
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

    /// Accounts for `written` bytes of `out` followed by `batches`.
    fn consume(&mut self, written: usize, batches: &[Option<Arc<Batch>>]) {
        // Also with nothing written: batches with nothing in this format are stepped over.
        self.take_written(written, batches);
        if written > 0 {
            // A write that left bytes in `out` stopped inside a buffer.
            self.cut_short = !self.out.is_empty();
        }
        if self.out.is_empty() {
            self.frame_rest = 0;
        }
    }

    /// The bookkeeping of [`Member::consume`] for `written > 0`.
    fn take_written(&mut self, mut written: usize, batches: &[Option<Arc<Batch>>]) {
        let metrics = &self.shared.metrics;
        metrics.written_bytes.inc_by(written as u64);
        let from_out = written.min(self.out.len());
        if from_out > 0 {
            self.last_byte = Some(self.out[from_out - 1]);
            if self.format.is_framed() {
                self.frame_rest = if from_out < self.frame_rest {
                    self.frame_rest - from_out
                } else {
                    // `out` holds whole frames from `frame_rest` on.
                    let whole = &self.out[self.frame_rest..];
                    websocket::frame_end(whole, from_out - self.frame_rest) + self.frame_rest
                        - from_out
                };
            }
            self.out.advance(from_out);
            if self.out_from_feed
                && let Some(feed) = &mut self.feed
            {
                feed.delivered += from_out as u64;
            }
            written -= from_out;
        }
        if !self.out.is_empty() {
            return;
        }
        let Some(feed) = &mut self.feed else {
            return;
        };
        for batch in batches.iter().flatten() {
            let bytes = batch.bytes(self.format);
            if bytes.is_empty() {
                feed.next += 1;
                continue;
            }
            if written == 0 {
                break;
            }
            let taken = written.min(bytes.len());
            self.last_byte = Some(bytes[taken - 1]);
            feed.delivered += taken as u64;
            feed.next += 1;
            metrics.deliveries.inc_by(u64::from(batch.events));
            written -= taken;
            if taken < bytes.len() {
                if self.format.is_framed() {
                    self.frame_rest = websocket::frame_end(bytes, taken) - taken;
                }
                self.out = bytes.slice(taken..);
                self.out_from_feed = true;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;
    use crate::hub;

    fn request(id: u64, role: Role, name: Option<&str>, flood_controlled: bool) -> JoinRequest {
        JoinRequest {
            id: ConnId(id),
            peer: SocketAddr::from(([127, 0, 0, 1], 40_000)),
            transport: "tcp",
            role,
            name: name.map(str::to_owned),
            format: Format::Line,
            options: Options::default(),
            flood_controlled,
            reservation: None,
        }
    }

    /// A transport that takes every byte it is given at once.
    fn take_all(member: &mut Member, cx: &mut Context<'_>, out: &mut Vec<u8>) -> bool {
        member
            .poll_write(cx, |_, slices| {
                let mut n = 0;
                for slice in slices {
                    out.extend_from_slice(slice);
                    n += slice.len();
                }
                Poll::Ready(Ok(n))
            })
            .unwrap()
    }

    /// Flood control runs on tokio's clock, so on paused time its pacing is exact: a
    /// burst at once, then one line per 1/rate seconds, nothing lost or reordered.
    #[tokio::test(start_paused = true)]
    async fn flood_control_paces_a_paste_on_tokio_time() {
        let config = Config {
            flood_rate: 20.0,
            flood_burst: 5,
            ..Config::default()
        };
        let (hub, _task) = hub::spawn(&config);
        let mut viewer = hub
            .join(request(1, Role::Viewer, None, false))
            .await
            .unwrap();
        let mut sender = hub
            .join(request(2, Role::Messenger, Some("flood"), true))
            .await
            .unwrap();
        let paste: String = (0..45).map(|i| format!("{i}\n")).collect();
        sender.post(Bytes::from(paste));
        let start = Instant::now();
        let mut arrivals: Vec<(Duration, String)> = Vec::new();
        let mut pending = Vec::new();
        bounded(poll_fn(|cx| {
            viewer.register(cx);
            sender.register(cx);
            loop {
                let mut progress = sender.poll_duties(cx).unwrap();
                progress |= take_all(&mut viewer, cx, &mut pending);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line[..end]).into_owned();
                    arrivals.push((start.elapsed(), line));
                }
                if arrivals.len() == 2 + 45 {
                    return Poll::Ready(());
                }
                if !progress {
                    return Poll::Pending;
                }
            }
        }))
        .await;
        assert_eq!(arrivals[1].1, "flood has joined the chat.");
        for (i, (at, line)) in arrivals[2..].iter().enumerate() {
            assert_eq!(*line, format!("flood: {i}"));
            // The burst at once, then one line every 50 ms.
            let due = Duration::from_millis(50 * i.saturating_sub(4) as u64);
            assert!(
                *at >= due.saturating_sub(Duration::from_millis(1))
                    && *at <= due + Duration::from_millis(2),
                "line {i} at {at:?}, due at {due:?}"
            );
        }
    }

    /// While flood control holds a sender back for a long time (a token every 10 s),
    /// its task is still woken at least every [`HELD_BACK_DEPARTURE_CHECK`], so its
    /// transport can notice the peer leaving.
    #[tokio::test(start_paused = true)]
    async fn a_held_back_sender_is_woken_at_least_every_departure_check() {
        let config = Config {
            flood_rate: 0.1,
            flood_burst: 1,
            ..Config::default()
        };
        let (hub, _task) = hub::spawn(&config);
        let mut sender = hub
            .join(request(1, Role::Messenger, Some("slow"), true))
            .await
            .unwrap();
        sender.post(Bytes::from_static(b"a\nb\nc\n"));
        let start = Instant::now();
        let mut wakes = Vec::new();
        bounded(poll_fn(|cx| {
            sender.register(cx);
            while sender.poll_duties(cx).unwrap() {}
            assert!(sender.is_held_back(), "at {:?}", start.elapsed());
            assert_eq!(sender.wants(), Wants::Wait);
            wakes.push(start.elapsed());
            if wakes.len() == 4 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }))
        .await;
        for pair in wakes.windows(2) {
            assert!(
                pair[1] - pair[0] <= HELD_BACK_DEPARTURE_CHECK,
                "woken at {wakes:?}"
            );
        }
    }

    /// Gives `member` one turn as a transport would (duties, writes through `write`,
    /// the end check), until nothing more happens. `Some` once it has ended.
    fn turn(
        member: &mut Member,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&[IoSlice<'_>]) -> Poll<io::Result<usize>>,
    ) -> Option<End> {
        member.register(cx);
        loop {
            let result = member.poll_duties(cx).and_then(|progress| {
                member.poll_write(cx, |_, slices| write(slices))?;
                member.poll_end(cx)?;
                Ok(progress)
            });
            match result {
                Err(end) => return Some(end),
                Ok(false) => return None,
                Ok(true) => {}
            }
        }
    }

    /// A transport that takes everything into `out`.
    fn into(out: &mut Vec<u8>) -> impl FnMut(&[IoSlice<'_>]) -> Poll<io::Result<usize>> + '_ {
        |slices| {
            let mut n = 0;
            for slice in slices {
                out.extend_from_slice(slice);
                n += slice.len();
            }
            Poll::Ready(Ok(n))
        }
    }

    /// Awaits `future` for at most a minute of (paused) time: a member that is never
    /// woken again fails the test instead of hanging it.
    async fn bounded<T>(future: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), future)
            .await
            .expect("never finished: a waker was lost")
    }

    /// A chatter alone in the room says goodbye while its socket is full. Its leave is
    /// published when nobody else receives its format; it must still get every line
    /// up to that leave, not be dropped as too slow because the ring let go of them.
    #[tokio::test(start_paused = true)]
    async fn a_chatter_alone_gets_the_room_up_to_its_leave_even_from_behind() {
        let config = Config {
            max_batch_bytes: 64,
            ..Config::default()
        };
        let (hub, _task) = hub::spawn(&config);
        let mut kit = hub
            .join(request(1, Role::Chatter, Some("kit"), false))
            .await
            .unwrap();
        let lines: String = (0..200).map(|i| format!("{i}\n")).collect();
        kit.post(Bytes::from(lines));
        kit.end_of_input();
        // The socket is full until the hub has answered the goodbye.
        bounded(poll_fn(|cx| {
            assert!(turn(&mut kit, cx, |_| Poll::Pending).is_none());
            if kit.feed.as_ref().unwrap().is_saying_goodbye() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }))
        .await;
        let mut out = Vec::new();
        let end = bounded(poll_fn(|cx| match turn(&mut kit, cx, into(&mut out)) {
            Some(end) => Poll::Ready(end),
            None => Poll::Pending,
        }))
        .await;
        assert!(matches!(end, End::PeerClosed), "{end:?}");
        let mut expected =
            String::from("Welcome to the \"Bad IRC\" Chat Server!\nkit has joined the chat.\n");
        for i in 0..200 {
            expected.push_str(&format!("kit: {i}\n"));
        }
        expected.push_str("kit has left the chat\n");
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    /// A chatter's goodbye is queued behind a full inbox when its connection fails:
    /// its leave must still reach the room, and its name must be free again.
    #[tokio::test(start_paused = true)]
    async fn a_goodbye_that_never_left_the_member_is_still_a_leave() {
        let config = Config {
            hub_inbox: 1,
            ..Config::default()
        };
        let (hub, _task) = hub::spawn(&config);
        let mut kit = hub
            .join(request(1, Role::Chatter, Some("kit"), false))
            .await
            .unwrap();
        kit.post(Bytes::from_static(b"one\n"));
        kit.end_of_input();
        // Two turns, without letting the hub run: the post fills the inbox, then the
        // goodbye is due and waits behind it.
        poll_fn(|cx| {
            assert!(turn(&mut kit, cx, |_| Poll::Pending).is_none());
            assert!(turn(&mut kit, cx, |_| Poll::Pending).is_none());
            Poll::Ready(())
        })
        .await;
        assert!(
            kit.input.as_ref().unwrap().leave.is_some(),
            "the goodbye is due"
        );
        let farewell = kit.finish(End::PeerError(io::ErrorKind::ConnectionReset.into()));
        bounded(farewell).await;
        let again = bounded(hub.join(request(2, Role::Chatter, Some("kit"), false))).await;
        assert!(again.is_ok(), "the name was never freed: {:?}", again.err());
    }

    /// At shutdown, a chatter that said goodbye is done once it has written the room up
    /// to its own leave, though others posted after it left: it does not wait for
    /// the deadline.
    #[tokio::test(start_paused = true)]
    async fn a_chatter_that_said_goodbye_is_done_at_shutdown_without_the_deadline() {
        let (hub, _task) = hub::spawn(&Config::default());
        let mut kit = hub
            .join(request(1, Role::Chatter, Some("kit"), false))
            .await
            .unwrap();
        let mut other = hub
            .join(request(2, Role::Messenger, Some("other"), false))
            .await
            .unwrap();
        kit.end_of_input();
        // Its socket is full while the hub answers its goodbye.
        bounded(poll_fn(|cx| {
            assert!(turn(&mut kit, cx, |_| Poll::Pending).is_none());
            if kit.feed.as_ref().unwrap().is_saying_goodbye() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }))
        .await;
        other.post(Bytes::from_static(b"after kit left\n"));
        bounded(poll_fn(|cx| {
            other.register(cx);
            while other.poll_duties(cx).unwrap() {}
            if other.input.as_ref().unwrap().posts.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }))
        .await;
        hub.begin_shutdown();
        let started = Instant::now();
        let mut out = Vec::new();
        let end = bounded(poll_fn(|cx| match turn(&mut kit, cx, into(&mut out)) {
            Some(end) => Poll::Ready(end),
            None => Poll::Pending,
        }))
        .await;
        assert!(
            matches!(end, End::ShutDown),
            "{end:?} after {:?}",
            started.elapsed()
        );
        assert!(started.elapsed() < Config::default().shutdown_timeout);
    }
}
