//! The one task that owns the [`Room`], and the handle that lets members in.
//!
//! Members send commands through one bounded inbox; the order in which they leave the
//! inbox is the order of the room. The hub applies them to the room, encodes the
//! resulting events once per wire format in use into a batch, publishes the batch on
//! the shared [`ring::Ring`] and wakes the receivers. It never awaits a member and
//! never touches a socket: a viewer that cannot keep up only falls behind in the ring.
//!
//! Under light load each batch is a single event, published at once; under heavy
//! load everything that queued up while the hub was busy becomes one batch, so each
//! viewer needs one write for many events.
//!
//! Transports never see the inbox: [`Hub::join`] hands them a [`Member`], which posts,
//! receives and leaves for them.

mod command;
pub mod flood;
mod log;
pub mod member;
mod replay;
pub mod replication;
pub mod ring;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::BytesMut;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::config::{Config, MAX_UNCOMMITTED_EVENTS};
use crate::metrics::{Kind, Metrics};
use crate::protocol::wire::{Format, PerFormat};
use crate::room::{ConnId, Credentials, Event, EventKind, JoinError, Joined, Room};
use crate::store::{Recovered, Store, StoreError};
use command::{Admitted, Command};
pub use member::{End, Farewell, JoinRequest, Member, Reservation, Wants};
use member::{Membership, Shared};
use prometheus_client::metrics::counter::Counter;
use replication::{Names, Replication};
use ring::{Publisher, Ring, Subscriber};

/// Why the hub did not let a connection in.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HubError {
    /// The room's rules refused it.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// The hub has stopped: the server is shutting down.
    #[error("the server is shutting down")]
    Stopped,
}

/// What a transport needs to let connections into the room. Cheap to clone; the hub
/// runs until every clone (and every member) is gone.
#[derive(Debug, Clone)]
pub struct Hub {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    /// In a cluster, the names every node's joins claim first.
    names: Option<Arc<dyn Names>>,
}

impl Hub {
    /// Holds `name` for `id` until it joins or the reservation is dropped.
    ///
    /// # Errors
    /// [`HubError`].
    pub async fn reserve(&self, id: ConnId, name: String) -> Result<Reservation, HubError> {
        if let Some(names) = &self.names {
            names.claim(&name, id, None).await?;
        }
        // From here the hub gives the name back when this connection ends.
        let membership = Membership::new(id, self.tx.clone());
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Reserve { id, name, reply })
            .await
            .map_err(|_| HubError::Stopped)?;
        answer.await.map_err(|_| HubError::Stopped)??;
        Ok(Reservation { membership })
    }

    /// Disconnects the member called `name` (the operator's `kick`): it gets
    /// `*** error kicked` and the room its leave. Whether there was one.
    ///
    /// # Errors
    /// [`HubError::Stopped`] at shutdown.
    pub async fn kick(&self, name: &str) -> Result<bool, HubError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Kick {
                name: name.to_owned(),
                reply,
            })
            .await
            .map_err(|_| HubError::Stopped)?;
        Ok(answer.await.map_err(|_| HubError::Stopped)?.is_some())
    }

    /// Takes what a reload may change from `config`, for members joining from now on:
    /// the chat name, flood control, the heartbeat, the longest name, and how many
    /// events the log keeps.
    ///
    /// # Errors
    /// [`HubError::Stopped`] at shutdown.
    pub async fn reconfigure(&self, config: &Config) -> Result<(), HubError> {
        self.shared.reconfigure(config);
        if let Some(store) = self.shared.store() {
            store.set_max_events(config.history_max_events);
        }
        self.tx
            .send(Command::Reconfigure {
                max_name_chars: config.max_name_chars,
            })
            .await
            .map_err(|_| HubError::Stopped)
    }

    /// The names in the room (the operator's `who`).
    ///
    /// # Errors
    /// [`HubError::Stopped`] at shutdown.
    pub async fn who(&self) -> Result<Vec<Arc<str>>, HubError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Who { reply })
            .await
            .map_err(|_| HubError::Stopped)?;
        answer.await.map_err(|_| HubError::Stopped)
    }

    /// Lets a connection in as `request` says.
    ///
    /// # Errors
    /// [`HubError::Join`] when the room's rules refuse it (a taken name, say), with
    /// the reservation (if any) released; [`HubError::Stopped`] at shutdown.
    pub async fn join(&self, mut request: JoinRequest) -> Result<Member, HubError> {
        let waker = Arc::new(Subscriber::default());
        // Armed before the question is asked: whatever happens from here on, the
        // room hears of this connection's end.
        let reserved = request.reservation.is_some();
        let membership = match request.reservation.take() {
            Some(reservation) => reservation.membership,
            None => Membership::new(request.id, self.tx.clone()),
        };
        // A cluster's name is claimed first (a reservation claimed it already); the
        // hub gives it back when the member leaves.
        let mut adopted = false;
        if let (Some(names), Some(name), false) = (&self.names, &request.name, reserved) {
            adopted = names
                .claim(name, request.id, request.options.token.as_deref())
                .await?;
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Join {
                id: request.id,
                role: request.role,
                name: request.name.clone(),
                format: request.format,
                tagged: request.options.tags,
                token: request.options.token.clone(),
                members: request.options.members,
                adopted,
                waker: waker.clone(),
                reply,
            })
            .await
            .map_err(|_| HubError::Stopped)?;
        let admitted = answer.await.map_err(|_| HubError::Stopped)??;
        Ok(Member::new(
            &request,
            self.shared.clone(),
            waker,
            membership,
            self.tx.clone(),
            admitted,
        ))
    }

    /// Begins shutdown: every member is woken, sees it, and drains. The hub stops
    /// once every sender has handed over what it had and let go.
    pub fn begin_shutdown(&self) {
        self.shared.begin_shutdown();
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.shared.stop.is_cancelled()
    }

    /// A future that completes when shutdown begins.
    pub fn stopping(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.shared.stop.clone().cancelled_owned()
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The hub's counters, readable without keeping the hub running.
    pub fn stats(&self) -> HubStats {
        HubStats(self.shared.clone())
    }

    /// A handle that does not keep the hub running, for a listener that lives on
    /// past the start of shutdown (HTTP, whose WebSocket upgrades join the room).
    pub fn downgrade(&self) -> WeakHub {
        WeakHub {
            tx: self.tx.downgrade(),
            shared: self.shared.clone(),
            names: self.names.clone(),
        }
    }
}

/// A [`Hub`] that does not keep the hub running: [`WeakHub::upgrade`] gives a `Hub`
/// while the hub still takes members.
#[derive(Debug, Clone)]
pub struct WeakHub {
    tx: mpsc::WeakSender<Command>,
    shared: Arc<Shared>,
    names: Option<Arc<dyn Names>>,
}

impl WeakHub {
    /// The hub, unless it is shutting down or stopped.
    pub fn upgrade(&self) -> Option<Hub> {
        if self.shared.stop.is_cancelled() {
            return None;
        }
        Some(Hub {
            tx: self.tx.upgrade()?,
            shared: self.shared.clone(),
            names: self.names.clone(),
        })
    }

    /// The hub's counters.
    pub fn stats(&self) -> HubStats {
        HubStats(self.shared.clone())
    }
}

/// The hub's counters. Unlike a [`Hub`], holding this does not keep the hub running.
#[derive(Debug, Clone)]
pub struct HubStats(Arc<Shared>);

impl HubStats {
    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }

    /// The number of the last event published to members.
    pub fn published_seq(&self) -> u64 {
        self.0
            .published_seq
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the room's log is being written (or there is none).
    pub fn log_is_healthy(&self) -> bool {
        !self
            .0
            .log_failing
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The room's log, if it keeps one.
    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.0.store()
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.0.stop.is_cancelled()
    }

    /// A future that completes when shutdown begins.
    pub fn stopping(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.0.stop.clone().cancelled_owned()
    }

    /// Viewers disconnected so far because they fell too far behind.
    pub fn slow_viewers(&self) -> u64 {
        self.0.slow_viewers()
    }
}

/// Most commands taken from the inbox per turn.
const COMMANDS_PER_TURN: usize = 512;

/// Starts the hub task without a log (`--history off`): events go to viewers as
/// soon as they happen, and are kept nowhere.
///
/// When shutdown begins ([`Hub::begin_shutdown`]) it wakes every member, so each can
/// see it; it runs until every [`Hub`] clone is dropped, then publishes what it still
/// has, closes the ring and wakes every viewer.
pub fn spawn(config: &Config) -> (Hub, tokio::task::JoinHandle<()>) {
    start(config, None, &Recovered::default(), Metrics::shared(), None)
}

/// Starts the hub task, on the log `store` if there is one (the room goes on from
/// where the log ends, and every event is in the log before any viewer sees it),
/// counting into `metrics`.
///
/// # Errors
/// [`StoreError`] if the log cannot be read.
pub fn spawn_with(
    config: &Config,
    store: Option<Arc<dyn Store>>,
    metrics: Arc<Metrics>,
) -> Result<(Hub, tokio::task::JoinHandle<()>), StoreError> {
    let Some(store) = store else {
        return Ok(start(config, None, &Recovered::default(), metrics, None));
    };
    let recovered = store.recover()?;
    if !recovered.present.is_empty() {
        info!(
            members = recovered.present.len(),
            "the log shows members of the previous run in the room; announcing their leave"
        );
    }
    Ok(start(config, Some(store), &recovered, metrics, None))
}

/// Starts the hub task of a cluster node: its room is a replica of the cluster's
/// stream (see [`replication`]), and its log `store` is this node's copy of the
/// stream, kept as the stream's events come back. `recovered` is what that copy
/// held at start.
pub fn spawn_replica(
    config: &Config,
    store: Option<Arc<dyn Store>>,
    recovered: &Recovered,
    metrics: Arc<Metrics>,
    replication: Replication,
) -> (Hub, tokio::task::JoinHandle<()>) {
    start(config, store, recovered, metrics, Some(replication))
}

fn start(
    config: &Config,
    store: Option<Arc<dyn Store>>,
    recovered: &Recovered,
    metrics: Arc<Metrics>,
    replication: Option<Replication>,
) -> (Hub, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(config.hub_inbox.max(1));
    let ring = Arc::new(Ring::new(crate::config::backlog_batches(
        config.viewer_backlog_bytes,
    )));
    let shared = Arc::new(Shared::new(
        config,
        ring.clone(),
        store.clone(),
        metrics.clone(),
    ));
    shared
        .published_seq
        .store(recovered.last_seq, std::sync::atomic::Ordering::Release);
    let event_counters = crate::metrics::EVENT_KINDS.map(|kind| {
        metrics
            .events
            .get_or_create(&Kind {
                kind: kind.to_owned(),
            })
            .clone()
    });
    let mut room = if replication.is_some() {
        Room::replica(config.max_name_chars, recovered.last_seq)
    } else {
        Room::resume(config.max_name_chars, recovered.last_seq)
    };
    for (name, id) in &recovered.recent_ids {
        room.remember_id(name, id);
    }
    let (outgoing, applied, unacked, names, present) = match replication {
        Some(replication) => (
            Some(replication.outgoing),
            Some(replication.applied),
            Some(replication.unacked),
            Some(replication.names),
            Some(replication.present),
        ),
        None => (None, None, None, None, None),
    };
    let mut owner = Owner {
        room,
        outgoing,
        unacked,
        present,
        origin: ConnId(0),
        leaving: HashMap::new(),
        publisher: Publisher::new(ring, config.viewer_backlog_bytes),
        receivers: Subscribers::default(),
        senders: Subscribers::default(),
        events: Vec::new(),
        staged: Vec::new(),
        mark: None,
        log: store.map(|store| {
            log::Writer::start(store, metrics.log_commit_seconds.clone(), shared.clone())
        }),
        event_counters,
        inbox_depth: metrics.hub_inbox_depth.clone(),
        unpublished: metrics.cluster_unpublished.clone(),
        committed: VecDeque::new(),
        in_flight: 0,
        published_seq: recovered.last_seq,
        published_shared: shared.published_seq.clone(),
        goodbyes: VecDeque::new(),
        batch: PerFormat::default(),
        batch_events: 0,
        batch_last_seq: 0,
        max_batch_bytes: config.max_batch_bytes.max(1),
        published: 0,
    };
    if owner.outgoing.is_none() {
        // The previous run ended without telling the room who left: the log says so
        // first, so that nobody is shown as present who is not. (In a cluster, the
        // other nodes announce a node's members once it is gone.)
        for name in &recovered.present {
            owner.room.farewell(name, &mut owner.events);
        }
    } else {
        for name in &recovered.present {
            if let Some(present) = &owner.present
                && let Ok(mut present) = present.lock()
            {
                present.insert(name.clone());
            }
            owner.room.apply(&Event::new(
                recovered.last_seq,
                crate::room::EventKind::Joined {
                    name: Arc::from(name.as_str()),
                },
            ));
        }
    }
    owner.take_events();
    owner.hand_over();
    let task = tokio::spawn(owner.run(rx, applied, shared.clone()));
    (Hub { tx, shared, names }, task)
}

/// The hub task's state: the room, the events on their way to the log, and the
/// batch being built.
struct Owner {
    room: Room,
    /// In a cluster: where the room's proposals go.
    outgoing: Option<mpsc::UnboundedSender<Vec<replication::Outgoing>>>,
    /// In a cluster: proposals not yet in the stream.
    unacked: Option<Arc<std::sync::atomic::AtomicUsize>>,
    /// In a cluster: who is in the room, as applied, for the name claims.
    present: Option<Arc<std::sync::Mutex<std::collections::HashSet<String>>>>,
    /// The member whose command is being handled (the origin of its proposals).
    origin: ConnId,
    /// In a cluster: leaving chatters waiting for their leave to come back from the
    /// stream (then they wait for it to be published, as in `goodbyes`).
    leaving: HashMap<ConnId, oneshot::Sender<u64>>,
    publisher: Publisher,
    /// Woken after every publish; counted per format.
    receivers: Subscribers,
    /// Messengers: woken only when shutdown begins (or replaced).
    senders: Subscribers,
    /// Events of the command being handled (kept to reuse its allocation).
    events: Vec<Event>,
    /// Events taken into the room this turn, stamped, not yet handed to the log.
    staged: Vec<Event>,
    /// In a cluster: where the staged events leave this node's copy of the stream.
    mark: Option<crate::store::StreamMark>,
    /// The log writer; `None` with history off.
    log: Option<log::Writer>,
    /// Events back from the log, to publish.
    committed: VecDeque<Event>,
    /// Events published, by kind (join, message, leave).
    event_counters: [Counter; 3],
    inbox_depth: prometheus_client::metrics::gauge::Gauge,
    unpublished: prometheus_client::metrics::gauge::Gauge,
    /// Events handed to the log writer and not yet published.
    in_flight: usize,
    /// The last event published to the ring: what every viewer may see.
    published_seq: u64,
    /// The same, for [`HubStats::published_seq`].
    published_shared: Arc<std::sync::atomic::AtomicU64>,
    /// Leaving chatters waiting for their leave (by seq) to be published.
    goodbyes: VecDeque<(u64, oneshot::Sender<u64>)>,
    /// The batch being built, in every format in use.
    batch: PerFormat<BytesMut>,
    /// Events in the batch being built.
    batch_events: usize,
    batch_last_seq: u64,
    max_batch_bytes: usize,
    /// Batches published so far.
    published: u64,
}

impl Owner {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Command>,
        mut applied: Option<mpsc::Receiver<Vec<replication::Applied>>>,
        shared: Arc<Shared>,
    ) {
        let stop = shared.stop.clone();
        drop(shared);
        // Taken from the inbox in order, kept reversed so that a turn can stop early.
        let mut commands = Vec::with_capacity(COMMANDS_PER_TURN);
        let mut stopping = false;
        let mut inbox_open = true;
        loop {
            if !inbox_open && self.in_flight == 0 && commands.is_empty() {
                break;
            }
            self.inbox_depth
                .set(i64::try_from(inbox.len()).unwrap_or(i64::MAX));
            let published = self.published;
            // What the log has committed goes out a batch per turn, so that under a
            // flood the viewers get to write between batches instead of finding
            // themselves megabytes behind when they first run.
            self.take_committed();
            self.publish_committed();
            // In a cluster, what the stream has taken meanwhile, without waiting.
            if let Some(stream) = &mut applied {
                while let Ok(events) = stream.try_recv() {
                    self.apply(events);
                }
                self.hand_over();
            }
            // While the log is far behind (a failing disk), or in a cluster the
            // stream (NATS is away), the room takes nothing new: members wait, as
            // they would for a full inbox.
            let unacked = self
                .unacked
                .as_ref()
                .map_or(0, |n| n.load(std::sync::atomic::Ordering::Acquire));
            if self.unacked.is_some() {
                self.unpublished
                    .set(i64::try_from(unacked).unwrap_or(i64::MAX));
            }
            let taking = inbox_open
                && self.in_flight < MAX_UNCOMMITTED_EVENTS
                && unacked < MAX_UNCOMMITTED_EVENTS;
            if commands.is_empty() && taking && self.committed.is_empty() {
                let received = tokio::select! {
                    biased;
                    Some(events) = log::committed(&mut self.log) => {
                        self.committed.extend(events);
                        continue;
                    }
                    Some(events) = from_stream(&mut applied) => {
                        self.apply(events);
                        self.hand_over();
                        continue;
                    }
                    received = inbox.recv_many(&mut commands, COMMANDS_PER_TURN) => received,
                    () = stop.cancelled(), if !stopping => {
                        // Members hold no waiter of their own for this: tell them all.
                        stopping = true;
                        self.wake_all();
                        self.wake_senders();
                        continue;
                    }
                };
                if received == 0 {
                    inbox_open = false;
                    continue;
                }
                commands.reverse();
            } else if commands.is_empty() && taking {
                // Batches are waiting to go out: take what is there, without waiting.
                while commands.len() < COMMANDS_PER_TURN {
                    match inbox.try_recv() {
                        Ok(command) => commands.push(command),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            inbox_open = false;
                            break;
                        }
                    }
                }
                commands.reverse();
            } else if commands.is_empty() && self.committed.is_empty() {
                // Not taking (the inbox is closed, or the log is far behind): wait
                // for the log, if anything is on its way there (in a cluster, for
                // the stream too).
                if self.in_flight == 0 && (applied.is_none() || !inbox_open) {
                    continue;
                }
                tokio::select! {
                    committed = log::committed(&mut self.log) => match committed {
                        Some(events) => self.committed.extend(events),
                        None => break,
                    },
                    Some(events) = from_stream(&mut applied) => {
                        self.apply(events);
                        self.hand_over();
                    }
                    () = stop.cancelled(), if !stopping => {
                        stopping = true;
                        self.wake_all();
                        self.wake_senders();
                    }
                }
                continue;
            }
            let before = self.published;
            while let Some(command) = commands.pop() {
                self.handle(command);
                if self.published != before || self.staged.len() >= COMMANDS_PER_TURN * 4 {
                    break;
                }
            }
            self.hand_over();
            self.flush();
            if self.published != published {
                tokio::task::yield_now().await;
            }
        }
        // The room closes with the server: its log says who left, and when, as for
        // any departure, so that the next start has nobody to announce and a replay
        // shows the leave when it happened. Live members are told `bye` instead (the
        // leaves are not published). A cluster node's members are announced through
        // the stream; after a crash, the next start announces them.
        let closing_from = (self.outgoing.is_none() && self.log.is_some()).then(|| {
            let from = self.room.last_seq() + 1;
            self.room.close(&mut self.events);
            self.take_events();
            from
        });
        self.hand_over();
        self.flush();
        // Whatever is on its way to the log is published once it is there.
        if let Some(log) = self.log.take() {
            let mut acks = log.finish();
            while let Some(events) = acks.recv().await {
                self.committed.extend(events);
            }
        }
        if let Some(from) = closing_from {
            let before = self.committed.len();
            self.committed.retain(|event| event.seq < from);
            self.in_flight -= before - self.committed.len();
        }
        while !self.committed.is_empty() {
            self.publish_committed();
        }
        self.publisher.close();
        self.wake_all();
        debug!(last_seq = self.room.last_seq(), "hub stopped");
    }

    fn handle(&mut self, command: Command) {
        self.origin = match &command {
            Command::Reserve { id, .. }
            | Command::Join { id, .. }
            | Command::Post { id, .. }
            | Command::Leave { id, .. }
            | Command::Release { id } => *id,
            Command::Kick { .. } | Command::Who { .. } | Command::Reconfigure { .. } => ConnId(0),
        };
        match command {
            Command::Reserve { id, name, reply } => {
                let result = self.room.reserve(id, &name);
                if let Err(error) = &result {
                    // Claimed in the cluster, refused here: give the claim back.
                    if !matches!(error, JoinError::NameTaken(_)) {
                        self.release(name.clone());
                    }
                }
                if reply.send(result).is_err() {
                    self.leave_quietly(id);
                }
            }
            Command::Join {
                id,
                role,
                name,
                format,
                tagged,
                token,
                members,
                adopted,
                waker,
                reply,
            } => {
                if role.receives() && self.log.is_none() {
                    // The batch being built was encoded only for the formats in use
                    // so far: publish it before this viewer can need it in another.
                    self.flush();
                }
                let new_token = (tagged && role.sends()).then(new_secret).flatten();
                let credentials = Credentials {
                    tagged,
                    token: token.as_deref(),
                    new_token: new_token.clone(),
                    adopted,
                };
                let result =
                    self.room
                        .join_with(id, role, name.as_deref(), credentials, &mut self.events);
                let joined = result.as_ref().ok().copied();
                // Refused for a name another member here holds: that claim is theirs.
                let theirs = matches!(result, Err(JoinError::NameTaken(_)));
                let present = (members && joined.is_some()).then(|| self.room.present());
                let secret = new_token.clone();
                let answer = result.map(|_| Admitted {
                    cursor: self.publisher.ring().cursor(),
                    last_seq: self.published_seq,
                    token: new_token,
                    members: present,
                });
                if joined.is_none()
                    && !theirs
                    && let Some(name) = &name
                    && self.room.name_of(id).is_none()
                {
                    // Claimed in the cluster, refused here: give the claim back.
                    self.release(name.clone());
                }
                if reply.send(answer).is_err() {
                    // The connection is gone before it heard the answer: undo.
                    if joined.is_some() {
                        self.leave_quietly(id);
                    }
                } else if let Some(joined) = joined {
                    // In a cluster, the secret is what lets any node hand the name
                    // over.
                    if let (Some(outgoing), Some(secret), Some(name)) =
                        (&self.outgoing, &secret, &name)
                    {
                        let _ = outgoing.send(vec![replication::Outgoing::Secret {
                            name: name.clone(),
                            secret: secret.clone(),
                        }]);
                    }
                    if let Joined::Reclaimed { from } = joined {
                        self.replace(from);
                    }
                    if role.receives() {
                        self.receivers.add(id, waker, format);
                    } else {
                        self.senders.add(id, waker, format);
                    }
                }
                self.take_events();
            }
            Command::Post { id, bytes } => {
                if let Err(e) = self.room.post(id, &bytes, &mut self.events) {
                    // A member replaced by a new connection may still have had posts
                    // on their way; the new connection resends what did not land.
                    debug!(conn = %id, error = %e, "post refused");
                }
                self.take_events();
            }
            Command::Leave { id, published } => {
                self.leave_quietly(id);
                self.senders.remove(id);
                match published {
                    // In a cluster the leave's number comes from the stream.
                    Some(published) if self.outgoing.is_some() => {
                        self.leaving.insert(id, published);
                    }
                    // A chatter saying goodbye still reads the room up to its own
                    // leave: it stays a receiver (its format stays encoded and kept
                    // in the ring) until it releases its place.
                    Some(published) => {
                        let seq = self.room.last_seq();
                        if seq <= self.published_seq {
                            self.flush();
                            let _ = published.send(self.publisher.ring().cursor().index);
                        } else {
                            self.goodbyes.push_back((seq, published));
                        }
                    }
                    None => self.receivers.remove(id),
                }
            }
            Command::Release { id } => self.receivers.remove(id),
            Command::Kick { name, reply } => {
                // Only a member that is in: a name merely reserved (a seed client's
                // handshake) has nobody to disconnect yet.
                let kicked = self.room.holder(&name).filter(|id| {
                    let subscriber = self.receivers.get(*id).or_else(|| self.senders.get(*id));
                    subscriber.inspect(|s| s.kick()).is_some()
                });
                let _ = reply.send(kicked);
            }
            Command::Who { reply } => {
                let _ = reply.send(self.room.present());
            }
            Command::Reconfigure { max_name_chars } => self.room.set_max_name_chars(max_name_chars),
        }
    }

    /// Tells the member `from`, whose name a new connection took over, that it is
    /// done.
    fn replace(&mut self, from: ConnId) {
        let subscriber = self.receivers.get(from).or_else(|| self.senders.get(from));
        if let Some(subscriber) = subscriber {
            subscriber.replace();
        }
    }

    /// Takes `id` out of the room, with its leave if it was announced; in a
    /// cluster, a name it held without announcing is given back.
    fn leave_quietly(&mut self, id: ConnId) {
        let name = self.room.name_of(id).map(str::to_owned);
        let before = self.events.len();
        self.room.leave(id, &mut self.events);
        if self.events.len() == before
            && let Some(name) = name
        {
            self.release(name);
        }
        self.take_events();
    }

    /// In a cluster, gives a claimed name back (after whatever was proposed before).
    fn release(&mut self, name: String) {
        if let Some(outgoing) = &self.outgoing {
            let _ = outgoing.send(vec![replication::Outgoing::Release { name }]);
        }
    }

    /// Takes the stream's events (a cluster node): the room applies them in the
    /// stream's order, and they go to the log and then to viewers like a single
    /// server's own.
    fn apply(&mut self, applied: Vec<replication::Applied>) {
        for incoming in applied {
            let (event, ours) = match incoming {
                replication::Applied::Event { event, ours, mark } => {
                    if mark.is_some() {
                        self.mark = mark;
                    }
                    (event, ours)
                }
                replication::Applied::HandedOver { name } => {
                    if let Some(id) = self.room.holder(&name) {
                        info!(conn = %id, name, "its name was taken over on another node");
                        self.room.forget(id);
                        self.replace(id);
                    }
                    continue;
                }
            };
            self.room.apply(&event);
            if let (Some(present), EventKind::Joined { name } | EventKind::Left { name }) =
                (&self.present, &event.kind)
                && let Ok(mut present) = present.lock()
            {
                if self.room.is_present(name) {
                    present.insert(name.to_string());
                } else {
                    present.remove(&**name);
                }
            }
            if let (crate::room::EventKind::Left { .. }, Some(conn)) = (&event.kind, ours)
                && let Some(published) = self.leaving.remove(&conn)
            {
                self.goodbyes.push_back((event.seq, published));
            }
            debug!(seq = event.seq, event = ?event.kind, "event from the stream");
            self.staged.push(event);
        }
        if self.log.is_none() {
            let staged = std::mem::take(&mut self.staged);
            self.encode(&staged);
            self.staged = staged;
            self.staged.clear();
        }
    }

    /// Stamps the events the room just made with the time and stages them for the
    /// log; with no log, encodes them at once. In a cluster, they are proposals for
    /// the stream instead.
    fn take_events(&mut self) {
        if self.events.is_empty() {
            return;
        }
        if let Some(outgoing) = &self.outgoing {
            let conn = self.origin;
            let proposals: Vec<replication::Outgoing> = self
                .events
                .drain(..)
                .map(|event| replication::Outgoing::Propose { event, conn })
                .collect();
            if let Some(unacked) = &self.unacked {
                unacked.fetch_add(proposals.len(), std::sync::atomic::Ordering::AcqRel);
            }
            let _ = outgoing.send(proposals);
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        for mut event in self.events.drain(..) {
            event.time_ms = now;
            debug!(seq = event.seq, event = ?event.kind, "event");
            self.staged.push(event);
        }
        if self.log.is_none() {
            let staged = std::mem::take(&mut self.staged);
            self.encode(&staged);
            self.staged = staged;
            self.staged.clear();
        }
    }

    /// Hands what this turn staged to the log writer.
    fn hand_over(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        if let Some(log) = &self.log {
            let events = std::mem::take(&mut self.staged);
            self.in_flight += events.len();
            log.append(events, self.mark.take());
        }
    }

    /// Takes what the log has committed since the last look, without waiting.
    fn take_committed(&mut self) {
        if let Some(log) = &mut self.log {
            while let Some(events) = log.try_committed() {
                self.committed.extend(events);
            }
        }
    }

    /// Publishes committed events, up to one full batch: now everyone may see them.
    fn publish_committed(&mut self) {
        let published = self.published;
        while self.published == published
            && let Some(event) = self.committed.pop_front()
        {
            self.in_flight -= 1;
            self.encode(std::slice::from_ref(&event));
        }
        self.flush();
    }

    /// Encodes `events` into the batch, once per format someone receives, publishing
    /// each time the batch is full.
    fn encode(&mut self, events: &[Event]) {
        for event in events {
            for (format, out) in self.batch.iter_mut() {
                if self.receivers.per_format[format] > 0 {
                    format.encode(event, out);
                }
            }
            self.batch_events += 1;
            self.batch_last_seq = event.seq;
            self.event_counters[match event.kind {
                crate::room::EventKind::Joined { .. } => 0,
                crate::room::EventKind::Posted { .. } => 1,
                crate::room::EventKind::Left { .. } => 2,
            }]
            .inc();
            if self
                .batch
                .iter()
                .any(|(_, out)| out.len() >= self.max_batch_bytes)
            {
                self.flush();
            }
        }
    }

    /// Publishes the batch being built, if any, and wakes every viewer.
    fn flush(&mut self) {
        if self.batch_events == 0 {
            return;
        }
        let bytes = PerFormat::from_fn(|format| self.batch[format].split().freeze());
        let in_use = PerFormat::from_fn(|format| self.receivers.per_format[format] > 0);
        let events = u32::try_from(self.batch_events).unwrap_or(u32::MAX);
        self.publisher
            .publish(self.batch_last_seq, events, bytes, &in_use);
        self.published_seq = self.batch_last_seq;
        self.published_shared
            .store(self.published_seq, std::sync::atomic::Ordering::Release);
        self.batch_events = 0;
        self.published += 1;
        let head = self.publisher.ring().cursor().index;
        while let Some((seq, _)) = self.goodbyes.front()
            && *seq <= self.published_seq
        {
            if let Some((_, published)) = self.goodbyes.pop_front() {
                let _ = published.send(head);
            }
        }
        self.wake_all();
    }

    fn wake_all(&self) {
        for (_, subscriber, _) in &self.receivers.list {
            subscriber.wake();
        }
    }

    fn wake_senders(&self) {
        for (_, subscriber, _) in &self.senders.list {
            subscriber.wake();
        }
    }
}

/// A fresh secret for a name: 128 random bits, in hex. `None` (and the member gets
/// no secret, so its name cannot be taken over) only if the system has no randomness
/// to give, which is logged.
fn new_secret() -> Option<String> {
    let mut bytes = [0u8; 16];
    match getrandom::fill(&mut bytes) {
        Ok(()) => Some(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        Err(error) => {
            warn!(%error, "no randomness for a name's secret; this member gets none");
            None
        }
    }
}

/// The members to wake: a dense list to walk after every publish, with an index so
/// that a leave costs O(1) even with tens of thousands of viewers, and how many of
/// them receive each format.
#[derive(Default)]
struct Subscribers {
    list: Vec<(ConnId, Arc<Subscriber>, Format)>,
    position: HashMap<ConnId, usize>,
    per_format: PerFormat<usize>,
}

impl Subscribers {
    fn add(&mut self, id: ConnId, subscriber: Arc<Subscriber>, format: Format) {
        self.position.insert(id, self.list.len());
        self.list.push((id, subscriber, format));
        self.per_format[format] += 1;
    }

    fn get(&self, id: ConnId) -> Option<&Arc<Subscriber>> {
        let at = *self.position.get(&id)?;
        self.list.get(at).map(|(_, subscriber, _)| subscriber)
    }

    fn remove(&mut self, id: ConnId) {
        let Some(at) = self.position.remove(&id) else {
            return;
        };
        let (_, _, format) = self.list.swap_remove(at);
        self.per_format[format] -= 1;
        if let Some((moved, _, _)) = self.list.get(at) {
            self.position.insert(*moved, at);
        }
    }
}

/// The next events from the cluster's stream, if this hub has one (never, if not).
async fn from_stream(
    applied: &mut Option<mpsc::Receiver<Vec<replication::Applied>>>,
) -> Option<Vec<replication::Applied>> {
    match applied {
        Some(stream) => stream.recv().await,
        None => std::future::pending().await,
    }
}
