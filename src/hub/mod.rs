//! The one task that owns the [`Room`].
//!
//! Connections send [`Command`]s through one bounded inbox; the order in which they
//! leave the inbox is the order of the room. The hub applies them to the room, encodes
//! the resulting events once per wire format into a batch, publishes the batch on the
//! shared [`ring::Ring`] and wakes the viewers. It never awaits a viewer and never
//! touches a socket: a viewer that cannot keep up only falls behind in the ring.
//!
//! Under light load each batch is a single event, published at once; under heavy
//! load everything that queued up while the hub was busy becomes one batch, so each
//! viewer needs one write for many events.

pub mod ring;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Config;
use crate::protocol::{Mode, wire};
use crate::room::{ConnId, Event, JoinError, Role, Room};
use ring::{Cursor, Publisher, Ring, Subscriber};

/// A request to the hub.
#[derive(Debug)]
pub enum Command {
    /// Hold a name for a connection whose handshake is not decided yet.
    Reserve {
        /// Who.
        id: ConnId,
        /// The name to hold.
        name: String,
        /// Whether it is held.
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    /// Become a member.
    Join {
        /// Who.
        id: ConnId,
        /// As what.
        role: Role,
        /// The name, for messengers and chatters.
        name: Option<String>,
        /// The member's waker: called after each publish for roles that receive,
        /// and for everyone when shutdown begins.
        waker: Arc<Subscriber>,
        /// Where to start reading the ring, or why not.
        reply: oneshot::Sender<Result<Cursor, JoinError>>,
    },
    /// One or more messages from a member (split into lines by the room).
    Post {
        /// Who.
        id: ConnId,
        /// The bytes as framed by the transport.
        bytes: Bytes,
    },
    /// A member is gone.
    Leave {
        /// Who.
        id: ConnId,
        /// If given, told the ring index just past the batch that announces the
        /// leave, so a leaving chatter can receive the room up to its own departure.
        published: Option<oneshot::Sender<u64>>,
    },
}

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

/// What a connection needs to talk to the hub. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HubHandle {
    tx: mpsc::Sender<Command>,
    ring: Arc<Ring>,
}

impl HubHandle {
    /// The shared backlog viewers read.
    pub fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }

    /// The inbox, for posts and leaves.
    pub fn sender(&self) -> &mpsc::Sender<Command> {
        &self.tx
    }

    /// Holds `name` for `id` until it joins or leaves.
    ///
    /// # Errors
    /// [`HubError`].
    pub async fn reserve(&self, id: ConnId, name: String) -> Result<(), HubError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Reserve { id, name, reply })
            .await
            .map_err(|_| HubError::Stopped)?;
        Ok(answer.await.map_err(|_| HubError::Stopped)??)
    }

    /// Joins `id` as `role`. Returns where a receiving role starts in the ring.
    ///
    /// # Errors
    /// [`HubError`].
    pub async fn join(
        &self,
        id: ConnId,
        role: Role,
        name: Option<String>,
        waker: Arc<Subscriber>,
    ) -> Result<Cursor, HubError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Join {
                id,
                role,
                name,
                waker,
                reply,
            })
            .await
            .map_err(|_| HubError::Stopped)?;
        Ok(answer.await.map_err(|_| HubError::Stopped)??)
    }
}

/// Most commands taken from the inbox per turn.
const COMMANDS_PER_TURN: usize = 512;

/// Starts the hub task. When `stop` is cancelled it wakes every member, so each can
/// see that shutdown has begun; it runs until every [`HubHandle`] clone is dropped,
/// then publishes what it still has, closes the ring and wakes every viewer.
pub fn spawn(config: &Config, stop: CancellationToken) -> (HubHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(config.hub_inbox.max(1));
    // Each batch held costs about 128 bytes besides its text; one slot per 256
    // bytes of backlog keeps that overhead to half the backlog at most. Under load
    // batches are large and the byte bound binds; when events trickle in one per
    // batch, the slot bound does (4096 events behind, by default).
    let slots = (config.viewer_backlog_bytes / 256).clamp(1024, 1 << 16);
    let ring = Arc::new(Ring::new(slots));
    let hub = Hub {
        room: Room::new(config.max_name_chars),
        publisher: Publisher::new(ring.clone(), config.viewer_backlog_bytes),
        receivers: Subscribers::default(),
        senders: Subscribers::default(),
        events: Vec::new(),
        seed: BytesMut::new(),
        line: BytesMut::new(),
        batch_last_seq: 0,
        max_batch_bytes: config.max_batch_bytes.max(1),
        published: 0,
    };
    let task = tokio::spawn(hub.run(rx, stop));
    (HubHandle { tx, ring }, task)
}

struct Hub {
    room: Room,
    publisher: Publisher,
    /// Woken after every publish.
    receivers: Subscribers,
    /// Messengers: woken only when shutdown begins.
    senders: Subscribers,
    /// Events of the command being handled (kept to reuse its allocation).
    events: Vec<Event>,
    /// The batch being built, once per wire format.
    seed: BytesMut,
    line: BytesMut,
    batch_last_seq: u64,
    max_batch_bytes: usize,
    /// Batches published so far.
    published: u64,
}

impl Hub {
    async fn run(mut self, mut inbox: mpsc::Receiver<Command>, stop: CancellationToken) {
        // Taken from the inbox in order, kept reversed so that a turn can stop early.
        let mut commands = Vec::with_capacity(COMMANDS_PER_TURN);
        let mut stopping = false;
        loop {
            if commands.is_empty() {
                let received = tokio::select! {
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
                    break;
                }
                commands.reverse();
            }
            // A turn ends once it has published a full batch, so that under a flood
            // the viewers get to write between batches instead of finding themselves
            // megabytes behind when they first run.
            let published = self.published;
            while let Some(command) = commands.pop() {
                self.handle(command);
                if self.published != published {
                    break;
                }
            }
            self.flush();
            if self.published != published {
                tokio::task::yield_now().await;
            }
        }
        self.flush();
        self.publisher.close();
        self.wake_all();
        debug!(last_seq = self.room.last_seq(), "hub stopped");
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Reserve { id, name, reply } => {
                let result = self.room.reserve(id, &name);
                if reply.send(result).is_err() {
                    self.room.leave(id, &mut self.events);
                }
            }
            Command::Join {
                id,
                role,
                name,
                waker,
                reply,
            } => {
                if role.receives() {
                    // A viewer sees what happens after it joins, and nothing before.
                    self.flush();
                }
                let result = self.room.join(id, role, name.as_deref(), &mut self.events);
                let joined = result.is_ok();
                let reply_result = result.map(|()| self.publisher.ring().cursor());
                if reply.send(reply_result).is_err() {
                    // The connection is gone before it heard the answer: undo.
                    if joined {
                        self.room.leave(id, &mut self.events);
                    }
                } else if joined && role.receives() {
                    self.receivers.add(id, waker);
                } else if joined {
                    self.senders.add(id, waker);
                }
                self.encode_events();
            }
            Command::Post { id, bytes } => {
                if let Err(e) = self.room.post(id, &bytes, &mut self.events) {
                    warn!(conn = %id, error = %e, "post refused");
                }
                self.encode_events();
            }
            Command::Leave { id, published } => {
                self.room.leave(id, &mut self.events);
                self.receivers.remove(id);
                self.senders.remove(id);
                self.encode_events();
                if let Some(published) = published {
                    self.flush();
                    let _ = published.send(self.publisher.ring().cursor().index);
                }
            }
        }
    }

    /// Encodes pending events into the batch; publishes it once it is full.
    fn encode_events(&mut self) {
        for event in self.events.drain(..) {
            wire::encode(&event, Mode::Seed, &mut self.seed);
            wire::encode(&event, Mode::Line, &mut self.line);
            self.batch_last_seq = event.seq;
            debug!(seq = event.seq, event = ?event.kind, "event");
        }
        if self.line.len() >= self.max_batch_bytes {
            self.flush();
        }
    }

    /// Publishes the batch being built, if any, and wakes every viewer.
    fn flush(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let seed = self.seed.split().freeze();
        let line = self.line.split().freeze();
        self.publisher.publish(self.batch_last_seq, seed, line);
        self.published += 1;
        self.wake_all();
    }

    fn wake_all(&self) {
        for (_, subscriber) in &self.receivers.list {
            subscriber.wake();
        }
    }

    fn wake_senders(&self) {
        for (_, subscriber) in &self.senders.list {
            subscriber.wake();
        }
    }
}

/// The viewers to wake: a dense list to walk after every publish, with an index so
/// that a leave costs O(1) even with tens of thousands of viewers.
#[derive(Default)]
struct Subscribers {
    list: Vec<(ConnId, Arc<Subscriber>)>,
    position: HashMap<ConnId, usize>,
}

impl Subscribers {
    fn add(&mut self, id: ConnId, subscriber: Arc<Subscriber>) {
        self.position.insert(id, self.list.len());
        self.list.push((id, subscriber));
    }

    fn remove(&mut self, id: ConnId) {
        let Some(at) = self.position.remove(&id) else {
            return;
        };
        self.list.swap_remove(at);
        if let Some((moved, _)) = self.list.get(at) {
            self.position.insert(*moved, at);
        }
    }
}
