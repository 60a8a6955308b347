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
pub mod member;
pub mod ring;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::config::Config;
use crate::protocol::wire::{Format, PerFormat};
use crate::room::{ConnId, Event, JoinError, Room};
use command::Command;
pub use member::{End, Farewell, JoinRequest, Member, Reservation, Wants};
use member::{Membership, Shared};
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
}

impl Hub {
    /// Holds `name` for `id` until it joins or the reservation is dropped.
    ///
    /// # Errors
    /// [`HubError`].
    pub async fn reserve(&self, id: ConnId, name: String) -> Result<Reservation, HubError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Reserve { id, name, reply })
            .await
            .map_err(|_| HubError::Stopped)?;
        answer.await.map_err(|_| HubError::Stopped)??;
        Ok(Reservation {
            membership: Membership::new(id, self.tx.clone()),
        })
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
        let membership = match request.reservation.take() {
            Some(reservation) => reservation.membership,
            None => Membership::new(request.id, self.tx.clone()),
        };
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Join {
                id: request.id,
                role: request.role,
                name: request.name.clone(),
                format: request.format,
                waker: waker.clone(),
                reply,
            })
            .await
            .map_err(|_| HubError::Stopped)?;
        let cursor = answer.await.map_err(|_| HubError::Stopped)??;
        Ok(Member::new(
            &request,
            self.shared.clone(),
            waker,
            membership,
            self.tx.clone(),
            &cursor,
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

    /// The hub's counters, readable without keeping the hub running.
    pub fn stats(&self) -> HubStats {
        HubStats(self.shared.clone())
    }
}

/// The hub's counters. Unlike a [`Hub`], holding this does not keep the hub running.
#[derive(Debug, Clone)]
pub struct HubStats(Arc<Shared>);

impl HubStats {
    /// Viewers disconnected so far because they fell too far behind.
    pub fn slow_viewers(&self) -> u64 {
        self.0.slow_viewers()
    }
}

/// Most commands taken from the inbox per turn.
const COMMANDS_PER_TURN: usize = 512;

/// Starts the hub task. When shutdown begins ([`Hub::begin_shutdown`]) it wakes every
/// member, so each can see it; it runs until every [`Hub`] clone is dropped, then
/// publishes what it still has, closes the ring and wakes every viewer.
pub fn spawn(config: &Config) -> (Hub, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(config.hub_inbox.max(1));
    let ring = Arc::new(Ring::new(crate::config::backlog_batches(
        config.viewer_backlog_bytes,
    )));
    let shared = Arc::new(Shared::new(config, ring.clone()));
    let owner = Owner {
        room: Room::new(config.max_name_chars),
        publisher: Publisher::new(ring, config.viewer_backlog_bytes),
        receivers: Subscribers::default(),
        senders: Subscribers::default(),
        events: Vec::new(),
        batch: PerFormat::default(),
        batch_events: 0,
        batch_last_seq: 0,
        max_batch_bytes: config.max_batch_bytes.max(1),
        published: 0,
    };
    let task = tokio::spawn(owner.run(rx, shared.clone()));
    (Hub { tx, shared }, task)
}

/// The hub task's state: the room and the batch being built.
struct Owner {
    room: Room,
    publisher: Publisher,
    /// Woken after every publish; counted per format.
    receivers: Subscribers,
    /// Messengers: woken only when shutdown begins.
    senders: Subscribers,
    /// Events of the command being handled (kept to reuse its allocation).
    events: Vec<Event>,
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
    async fn run(mut self, mut inbox: mpsc::Receiver<Command>, shared: Arc<Shared>) {
        let stop = shared.stop.clone();
        drop(shared);
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
                format,
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
                    self.receivers.add(id, waker, format);
                } else if joined {
                    self.senders.add(id, waker, format);
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
                self.encode_events();
                self.senders.remove(id);
                match published {
                    // A chatter saying goodbye still reads the room up to its own
                    // leave: it stays a receiver (its format stays encoded and kept
                    // in the ring) until it releases its place.
                    Some(published) => {
                        self.flush();
                        let _ = published.send(self.publisher.ring().cursor().index);
                    }
                    None => self.receivers.remove(id),
                }
            }
            Command::Release { id } => self.receivers.remove(id),
        }
    }

    /// Encodes pending events into the batch, once per format someone receives;
    /// publishes it once it is full.
    fn encode_events(&mut self) {
        for event in self.events.drain(..) {
            for (format, out) in self.batch.iter_mut() {
                if self.receivers.per_format[format] > 0 {
                    format.encode(&event, out);
                }
            }
            self.batch_events += 1;
            self.batch_last_seq = event.seq;
            debug!(seq = event.seq, event = ?event.kind, "event");
        }
        if self
            .batch
            .iter()
            .any(|(_, out)| out.len() >= self.max_batch_bytes)
        {
            self.flush();
        }
    }

    /// Publishes the batch being built, if any, and wakes every viewer.
    fn flush(&mut self) {
        if self.batch_events == 0 {
            return;
        }
        let bytes = PerFormat::from_fn(|format| self.batch[format].split().freeze());
        let in_use = PerFormat::from_fn(|format| self.receivers.per_format[format] > 0);
        self.publisher.publish(self.batch_last_seq, bytes, &in_use);
        self.batch_events = 0;
        self.published += 1;
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
