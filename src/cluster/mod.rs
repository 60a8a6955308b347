//! Several nodes, one room, through NATS JetStream (`serve --cluster`).
//!
//! The room's order is one JetStream stream's: every join, post and leave of every
//! node is appended to it as one message, so the stream's sequence number *is* the
//! room's event number (gap-free: failed publishes take no number, duplicates are
//! dropped by the server before they get one, and nothing else is written to the
//! stream). Every node follows the stream in order and hands its events to its hub,
//! which keeps them in its own log (the node's copy, from which replays are read) and
//! then fans them out, encoded once per format, as on a single server.
//!
//! Names are claimed in a key-value bucket (`create`, atomic across the cluster)
//! before a join is proposed, and given back after the leave is in the stream. Each
//! node keeps a key in a second bucket fresh; a node whose key has not changed for
//! `--cluster-node-timeout` is gone: the first survivor to delete its key (a
//! compare-and-swap, so exactly one) announces the leave of each name that node held
//! and frees the names. A node that finds its own key gone was given up by the others:
//! it stops, so that its clients reconnect and join again.
//!
//! See docs/CLUSTER.md for what is guaranteed and what each failure looks like.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::consumer::{DeliverPolicy, push};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation};
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use async_nats::jetstream::{self, message::PublishMessage};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::hub::replication::{Applied, Names, Outgoing, Replication};
use crate::room::{ConnId, Event, EventKind, JoinError};
use crate::store::{Recovered, StreamMark};

mod numbering;

use numbering::{Anchor, Numbering};

/// Most of the stream's events handed to the hub at once.
const APPLIED_PER_BATCH: usize = 512;

/// Most proposals in one stream message, and about most bytes (NATS refuses
/// messages over its `max_payload`, 1 MiB by default).
const EVENTS_PER_MESSAGE: usize = 512;
const BYTES_PER_MESSAGE: usize = 256 * 1024;

/// Proposals gathered for the next stream message.
#[derive(Debug, Default)]
struct Open {
    records: Vec<Record>,
    /// The names whose leave is among them.
    leaves: Vec<String>,
    bytes: usize,
}

/// A stream message on its way.
struct Sending {
    /// Its acknowledgement to come; `None` if it could not even be sent.
    ack: Option<jetstream::context::PublishAckFuture>,
    payload: Bytes,
    /// Its dedup id; empty for nothing to publish (only names to give back).
    id: String,
    /// The proposals it carries.
    events: usize,
    /// Names to give back once it is in the stream (their leave is in it).
    leaves: Vec<String>,
}

/// First wait before publishing again after a failure; doubled up to 2 s.
const FIRST_RETRY: Duration = Duration::from_millis(50);

/// How long the stream may keep a message id to drop a resend of it.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// A node's connection to the cluster.
#[derive(Debug)]
pub struct Cluster {
    /// This node's id in the cluster: random, new at every start.
    node: String,
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    subject: String,
    names: kv::Store,
    nodes: kv::Store,
    /// The names this node holds, with their revision in the bucket.
    claims: Mutex<HashMap<String, u64>>,
    node_timeout: Duration,
    /// Cancelled when this node must stop (given up by the others, or its stream
    /// is gone).
    expelled: CancellationToken,
    /// The next stream message the follower waits for.
    following: std::sync::atomic::AtomicU64,
    /// Where the follower stands (the last message it numbered, and the room's count
    /// after it), once it knows: the anchor of this node's messages.
    position: Mutex<Option<Anchor>>,
    /// Tells the follower to start over (it stalled: the stream went on without it).
    stalled: tokio::sync::Notify,
    /// Set once the follower has handed the hub what the stream held when this node
    /// started: the room's count then.
    caught_up: tokio::sync::watch::Sender<Option<u64>>,
}

/// A stream message: one event or a batch of them, from one node.
#[derive(Debug, Serialize, Deserialize)]
struct Batch {
    /// The node it came from.
    node: String,
    /// Its publisher's count when it was sent, as `[message, count]`
    /// ([`numbering::Anchor`]): how a node that starts on a trimmed stream finds the
    /// room's numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<(u64, u64)>,
    events: Vec<Record>,
}

/// A room event as a stream message carries it.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// `join`, `post` or `leave`.
    kind: String,
    name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// Its member on the node it came from.
    #[serde(default)]
    conn: u64,
}

/// A message as tcpchat wrote them before it batched: one event, so the stream's
/// sequence number was the room's.
#[derive(Debug, Deserialize)]
struct Single {
    #[serde(flatten)]
    record: Record,
    node: String,
}

impl Record {
    fn of(event: &Event, conn: ConnId) -> Self {
        let (kind, name, text) = match &event.kind {
            EventKind::Joined { name } => ("join", name, String::new()),
            EventKind::Posted { name, text } => ("post", name, text.clone()),
            EventKind::Left { name } => ("leave", name, String::new()),
        };
        Self {
            kind: kind.to_owned(),
            name: name.to_string(),
            text,
            id: event.id.as_deref().map(str::to_owned),
            conn: conn.0,
        }
    }

    /// The event (numbered 0 until [`Numbering`] numbers it); `None` for a kind
    /// tcpchat does not know.
    fn event(self, time_ms: u64) -> Option<Event> {
        let name: Arc<str> = Arc::from(self.name.as_str());
        let kind = match self.kind.as_str() {
            "join" => EventKind::Joined { name },
            "post" => EventKind::Posted {
                name,
                text: self.text,
            },
            "leave" => EventKind::Left { name },
            _ => return None,
        };
        Some(Event {
            seq: 0,
            time_ms,
            id: self.id.map(Arc::from),
            kind,
        })
    }

    fn size(&self) -> usize {
        self.name.len() + self.text.len() + self.id.as_ref().map_or(0, String::len) + 48
    }
}

/// What a stream message says.
#[derive(Debug)]
struct Read {
    /// The node it came from.
    node: String,
    /// Its events, each with its member on that node.
    events: Vec<(Event, u64)>,
    anchor: Option<Anchor>,
}

/// What the stream's message `seq` says; `None` if tcpchat did not write it.
fn read_message(seq: u64, payload: &[u8], time_ms: u64) -> Option<Read> {
    let (node, records, anchor) = match serde_json::from_slice::<Batch>(payload) {
        Ok(batch) => (
            batch.node,
            batch.events,
            batch
                .after
                .map(|(message, count)| Anchor { message, count }),
        ),
        Err(_) => {
            let single: Single = serde_json::from_slice(payload).ok()?;
            // Written when every message was one event: numbered as the stream is.
            let before = seq.saturating_sub(1);
            (
                single.node,
                vec![single.record],
                Some(Anchor {
                    message: before,
                    count: before,
                }),
            )
        }
    };
    let events = records
        .into_iter()
        .filter_map(|record| {
            let conn = record.conn;
            record.event(time_ms).map(|event| (event, conn))
        })
        .collect();
    Some(Read {
        node,
        events,
        anchor,
    })
}

/// The node that holds a name, from its entry's value (`NODE` or `NODE\nHASH`).
fn holder_of(value: &[u8]) -> &[u8] {
    value.split(|&b| b == b'\n').next().unwrap_or_default()
}

/// The hash of a name's secret, from its entry's value.
fn hash_in(value: &[u8]) -> Option<&[u8]> {
    value.split(|&b| b == b'\n').nth(1)
}

/// A secret as the names bucket keeps it: its SHA-256, in hex.
fn secret_hash(secret: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The key of `name` in the names bucket (keys allow few characters).
fn name_key(name: &str) -> String {
    format!(
        "n{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name)
    )
}

fn name_of_key(key: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key.strip_prefix('n')?)
        .ok()?;
    String::from_utf8(bytes).ok()
}

impl Cluster {
    /// Connects to NATS and opens (or creates) the room's stream and buckets.
    ///
    /// # Errors
    /// When NATS cannot be reached, refuses us, or holds a stream of that name made
    /// otherwise than tcpchat makes it.
    pub async fn connect(config: &Config) -> anyhow::Result<Arc<Self>> {
        let urls = config.cluster.as_deref().unwrap_or_default();
        let addresses: Vec<async_nats::ServerAddr> = urls
            .split(',')
            .map(|url| url.trim().parse())
            .collect::<Result<_, _>>()
            .with_context(|| {
                format!("--cluster {}: not a list of NATS addresses", redacted(urls))
            })?;
        let node = format!("{:016x}", random_u64());
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("tcpchat-{node}"))
            // Finds a dead NATS connection in seconds, not minutes.
            .ping_interval(Duration::from_secs(2))
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(5)))
            .max_reconnects(None::<usize>)
            // Back within a second of NATS's return (the default waits up to 4 s).
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100 * attempts.min(10) as u64)
            });
        // A user and password in an address (async-nats does not take them from
        // there by itself).
        if let Some(address) = addresses.iter().find(|a| a.username().is_some()) {
            options = options.user_and_password(
                address.username().unwrap_or_default().to_owned(),
                address.password().unwrap_or_default().to_owned(),
            );
        }
        if let Some(creds) = &config.cluster_creds {
            options = options
                .credentials_file(creds)
                .await
                .with_context(|| format!("--cluster-creds {}: cannot be read", creds.display()))?;
        }
        if let Some(ca) = &config.cluster_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let shown = redacted(urls);
        let client = options
            .connect(addresses)
            .await
            .with_context(|| format!("cannot connect to NATS at {shown}"))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client.clone());
        let room = &config.cluster_room;
        let replicas = usize::from(config.cluster_replicas);
        let subject = format!("tcpchat.{room}.events");
        let wanted = stream::Config {
            name: format!("TCPCHAT_{room}"),
            subjects: vec![subject.clone()],
            max_messages: i64::try_from(config.history_max_events).unwrap_or(i64::MAX),
            discard: DiscardPolicy::Old,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: replicas,
            storage: StorageType::File,
            allow_direct: true,
            // Nothing but the room's own events, and none taken out of the middle:
            // the stream's numbers are the room's.
            deny_delete: true,
            deny_purge: true,
            ..Default::default()
        };
        // JetStream may still be electing its leaders (a cluster just started), or
        // be busy making the stream for another node: asked again, for a while.
        let mut stream = patiently(|| js.get_or_create_stream(wanted.clone()))
            .await
            .with_context(|| format!("cannot open the room's stream {} in NATS", wanted.name))?;
        let info = stream
            .info()
            .await
            .with_context(|| format!("cannot read the stream {}", wanted.name))?;
        check_stream(&wanted, &info.config)?;
        let names = bucket(
            &js,
            &format!("tcpchat_{room}_names"),
            Duration::ZERO,
            replicas,
        )
        .await?;
        let nodes = bucket(
            &js,
            &format!("tcpchat_{room}_nodes"),
            Duration::from_secs(3600),
            replicas,
        )
        .await?;
        info!(%node, stream = %wanted.name, last_seq = info.state.last_sequence, "joined the cluster");
        Ok(Arc::new(Self {
            node,
            client,
            js,
            stream,
            subject,
            names,
            nodes,
            claims: Mutex::new(HashMap::new()),
            node_timeout: config.cluster_node_timeout,
            expelled: CancellationToken::new(),
            following: std::sync::atomic::AtomicU64::new(0),
            position: Mutex::new(None),
            stalled: tokio::sync::Notify::new(),
            caught_up: tokio::sync::watch::Sender::new(None),
        }))
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Once this node has taken in what the stream held when it started: the
    /// number of the room's last event then. Waits at most `within`; `None` if it
    /// could not (a stream trimmed past every message that tells the numbers).
    pub async fn caught_up(&self, within: Duration) -> Option<u64> {
        let mut watch = self.caught_up.subscribe();
        tokio::time::timeout(within, watch.wait_for(Option::is_some))
            .await
            .ok()?
            .ok()
            .and_then(|count| *count)
    }

    /// Cancelled when this node must stop.
    pub fn expelled(&self) -> CancellationToken {
        self.expelled.clone()
    }

    /// The stream's first and last numbers now.
    ///
    /// # Errors
    /// When the stream cannot be read.
    pub async fn bounds(&self) -> anyhow::Result<(u64, u64)> {
        let info = self
            .stream
            .get_info()
            .await
            .context("cannot read the room's stream")?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }

    /// Where this node follows the stream from, with the log `recovered`: after
    /// the message its log's mark names; from the start of the stream for an empty
    /// log.
    ///
    /// # Errors
    /// When the stream cannot be read, or the log is ahead of it (another room's
    /// log, or a stream made anew).
    async fn resume_from(
        &self,
        recovered: &Recovered,
    ) -> anyhow::Result<(u64, Numbering<(Event, Option<ConnId>)>, u64)> {
        let (first, last) = self.bounds().await?;
        let logged = recovered.last_seq;
        let (after, count) = match recovered.mark {
            Some(mark) => (mark.message, mark.last_seq),
            // A log kept before messages were batched: the stream's numbers were
            // the room's.
            None => (logged, logged),
        };
        if after > last {
            bail!(
                "this node's log goes up to the stream's message {after}, the cluster's stream only to {last}: it is another room's log, or the stream was made anew; start this node on an empty --data-dir"
            );
        }
        let next = after + 1;
        if next >= first {
            return Ok((next, Numbering::known(after, count), last));
        }
        if logged > 0 {
            warn!(
                from = next,
                to = first - 1,
                "the stream no longer holds messages this node's log lacks"
            );
        }
        Ok((first, Numbering::unknown(), last))
    }

    /// Starts this node's part: its liveness key, the watch over the others, the
    /// publisher of its proposals and the follower of the stream, from where the
    /// log `recovered` ends. Returns the hub's side of it.
    ///
    /// # Errors
    /// When the stream cannot be read, the log is ahead of it, or the liveness key
    /// cannot be written.
    pub async fn start(self: &Arc<Self>, recovered: &Recovered) -> anyhow::Result<Replication> {
        let (next, numbering, last) = self.resume_from(recovered).await?;
        let revision = self
            .register()
            .await
            .context("cannot register this node in the cluster")?;
        tokio::spawn(self.clone().keep_alive(revision));
        tokio::spawn(self.clone().watch_nodes());
        let (outgoing, proposals) = mpsc::unbounded_channel();
        let unacked = Arc::new(AtomicUsize::new(0));
        tokio::spawn(self.clone().publish(proposals, unacked.clone()));
        let (applied_tx, applied) = mpsc::channel(64);
        tokio::spawn(self.clone().watch_names(applied_tx.clone()));
        tokio::spawn(
            self.clone()
                .follow(next, numbering, (recovered.last_seq, last), applied_tx),
        );
        tokio::spawn(self.clone().watch_stream());
        let present = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let names: Arc<dyn Names> = Arc::new(ClusterNames {
            cluster: self.clone(),
            present: present.clone(),
        });
        Ok(Replication {
            outgoing,
            applied,
            unacked,
            names,
            present,
        })
    }

    /// Creates this node's liveness key; its revision. A bucket just made in a NATS
    /// cluster may not answer at once, and a create that timed out may be in.
    async fn register(&self) -> anyhow::Result<u64> {
        let deadline = Instant::now() + JETSTREAM_PATIENCE;
        loop {
            match self
                .nodes
                .create(&self.node, Bytes::from_static(b"up"))
                .await
            {
                Ok(revision) => return Ok(revision),
                Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
                    if let Some(entry) = self.nodes.entry(&self.node).await? {
                        return Ok(entry.revision);
                    }
                }
                Err(error) if Instant::now() < deadline => {
                    info!(%error, "waiting for NATS JetStream");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Keeps this node's key fresh; stops the node if the others gave it up.
    async fn keep_alive(self: Arc<Self>, mut revision: u64) {
        let every = (self.node_timeout / 5).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if self.expelled.is_cancelled() {
                return;
            }
            match self
                .nodes
                .update(&self.node, Bytes::from_static(b"up"), revision)
                .await
            {
                Ok(next) => revision = next,
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // An update whose answer was lost (NATS went away) may be in:
                    // then the key is still ours, at a later revision.
                    if let Ok(Some(entry)) = self.nodes.entry(&self.node).await
                        && entry.operation == Operation::Put
                    {
                        revision = entry.revision;
                        continue;
                    }
                    error!(
                        node = %self.node,
                        "the cluster gave this node up (it was out of reach for longer than --cluster-node-timeout); stopping, so that its clients reconnect"
                    );
                    self.expelled.cancel();
                    return;
                }
                Err(error) => warn!(%error, "cannot reach the cluster to say this node is alive"),
            }
        }
    }

    /// Watches the names bucket for names of this node's members that a member of
    /// another node took over with their secret, and tells the hub.
    async fn watch_names(self: Arc<Self>, hub: mpsc::Sender<Vec<Applied>>) {
        while !self.expelled.is_cancelled() {
            let mut watch = match self.names.watch_all().await {
                Ok(watch) => watch,
                Err(error) => {
                    warn!(%error, "cannot watch the cluster's names; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { continue };
                if entry.operation != Operation::Put
                    || holder_of(&entry.value) == self.node.as_bytes()
                {
                    continue;
                }
                let Some(name) = name_of_key(&entry.key) else {
                    continue;
                };
                let ours = self
                    .claims
                    .lock()
                    .is_ok_and(|mut claims| claims.remove(&name).is_some());
                if ours && hub.send(vec![Applied::HandedOver { name }]).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Watches the other nodes' keys; the first to see one gone announces its
    /// members' leaves and frees their names.
    async fn watch_nodes(self: Arc<Self>) {
        loop {
            let mut watch = match self.nodes.watch_with_history(">").await {
                Ok(watch) => watch,
                Err(error) => {
                    warn!(%error, "cannot watch the cluster's nodes; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Node -> (its last revision, when this node last saw it change).
            let mut seen: HashMap<String, (u64, Instant)> = HashMap::new();
            let mut check = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    entry = watch.next() => match entry {
                        Some(Ok(entry)) => match entry.operation {
                            Operation::Put => {
                                seen.insert(entry.key, (entry.revision, Instant::now()));
                            }
                            Operation::Delete | Operation::Purge => {
                                // Given up (by this node or another): checked again
                                // later, should the one giving it up die midway.
                                if seen.remove(&entry.key).is_some() && entry.key != self.node {
                                    tokio::spawn(self.clone().finish_give_up(entry.key));
                                }
                            }
                        },
                        Some(Err(error)) => debug!(%error, "the watch of the nodes hiccuped"),
                        None => break,
                    },
                    _ = check.tick() => {
                        // Only silence heard while this node itself hears NATS
                        // counts: after an outage of NATS, every node gets its full
                        // timeout to speak again.
                        if self.client.connection_state() != async_nats::connection::State::Connected {
                            let now = Instant::now();
                            seen.values_mut().for_each(|(_, at)| *at = now);
                            continue;
                        }
                        let gone: Vec<(String, u64)> = seen
                            .iter()
                            .filter(|(node, (_, at))| **node != self.node && at.elapsed() > self.node_timeout)
                            .map(|(node, (revision, _))| (node.clone(), *revision))
                            .collect();
                        for (node, revision) in gone {
                            seen.remove(&node);
                            self.clone().give_up(node, revision).await;
                        }
                    }
                }
            }
        }
    }

    /// Gives up the node `node`, if this node is the first to: announces the leave of
    /// every name it held and frees them.
    async fn give_up(self: Arc<Self>, node: String, revision: u64) {
        if self
            .nodes
            .delete_expect_revision(&node, Some(revision))
            .await
            .is_err()
        {
            // It came back, or another node was first.
            return;
        }
        warn!(%node, "a node was not heard from for --cluster-node-timeout: announcing its members' leave");
        let names = self.announce_gone(&node).await;
        info!(%node, names, "announced the leave of a gone node's members");
    }

    /// After another node gave `node` up: once more, a while later, announces the
    /// leave of any name `node` still holds, in case the node that gave it up died
    /// before it was done. Its announcements have the same ids as the first node's,
    /// so the stream keeps one of each.
    async fn finish_give_up(self: Arc<Self>, node: String) {
        tokio::time::sleep(self.node_timeout).await;
        if self.expelled.is_cancelled() {
            return;
        }
        let names = self.announce_gone(&node).await;
        if names > 0 {
            warn!(
                %node,
                names,
                "finished giving up a node: the node that gave it up stopped before it was done"
            );
        }
    }

    /// Announces the leave of every name the gone node `node` holds, and frees them;
    /// how many it found.
    async fn announce_gone(&self, node: &str) -> usize {
        let keys: Vec<String> = match self.names.keys().await {
            Ok(keys) => {
                keys.filter_map(|key| async { key.ok() })
                    .collect::<Vec<String>>()
                    .await
            }
            Err(error) => {
                error!(%error, %node, "cannot list the names of a node that is gone");
                return 0;
            }
        };
        let mut found = 0;
        for key in keys {
            let Ok(Some(entry)) = self.names.entry(&key).await else {
                continue;
            };
            if entry.operation != Operation::Put || holder_of(&entry.value) != node.as_bytes() {
                continue;
            }
            let Some(name) = name_of_key(&key) else {
                continue;
            };
            let event = Event::new(
                0,
                EventKind::Left {
                    name: Arc::from(name.as_str()),
                },
            );
            let Some(payload) = self.encode(node, vec![Record::of(&event, ConnId(0))]) else {
                return found;
            };
            found += 1;
            let id = format!("gone:{node}:{key}:{}", entry.revision);
            if self.append(payload, &id).await.is_some() {
                let _ = self
                    .names
                    .delete_expect_revision(&key, Some(entry.revision))
                    .await;
            }
        }
        found
    }

    /// A stream message of `records` from `node`, anchored where this node's
    /// follower stands.
    fn encode(&self, node: &str, records: Vec<Record>) -> Option<Bytes> {
        let after = self
            .position
            .lock()
            .ok()
            .and_then(|position| *position)
            .map(|anchor| (anchor.message, anchor.count));
        let batch = Batch {
            node: node.to_owned(),
            after,
            events: records,
        };
        match serde_json::to_vec(&batch) {
            Ok(payload) => Some(Bytes::from(payload)),
            Err(error) => {
                error!(%error, "cannot encode events for the stream");
                None
            }
        }
    }

    /// Publishes `payload` with the dedup `id` until it is in the stream; its number.
    /// `None` if this node stopped meanwhile.
    async fn append(&self, payload: Bytes, id: &str) -> Option<u64> {
        let mut wait = FIRST_RETRY;
        loop {
            let publish = PublishMessage::build()
                .payload(payload.clone())
                .message_id(id);
            let result = match self.js.send_publish(self.subject.clone(), publish).await {
                Ok(ack) => ack.await,
                Err(error) => Err(error),
            };
            match result {
                Ok(ack) if !(ack.duplicate && ack.sequence == 0) => return Some(ack.sequence),
                Ok(_) => debug!("a duplicate not yet stored; publishing again"),
                Err(error) if error.kind() == PublishErrorKind::StreamNotFound => {
                    warn!(%error, "the room's stream is not answering (NATS electing a leader, or the stream is gone)");
                }
                Err(error) => warn!(%error, "cannot append to the room's stream; trying again"),
            }
            if self.expelled.is_cancelled() {
                return None;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    /// Sends a stream message of `records` (the proposals of `open`, or one post)
    /// with the dedup `id`, without waiting for its acknowledgement.
    async fn send(&self, records: Vec<Record>, id: String, leaves: Vec<String>) -> Sending {
        let events = records.len();
        let Some(payload) = self.encode(&self.node, records) else {
            return Sending {
                ack: None,
                payload: Bytes::new(),
                id: String::new(),
                events,
                leaves,
            };
        };
        let ack = self
            .js
            .send_publish(
                self.subject.clone(),
                PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(&id),
            )
            .await
            .ok();
        Sending {
            ack,
            payload,
            id,
            events,
            leaves,
        }
    }

    /// Publishes this node's proposals in order, each until it is in the stream, and
    /// gives names back once their leave is in.
    ///
    /// What queued up while the previous messages were on their way goes into the
    /// stream as one message (JetStream's cost is per message, not per event), except
    /// posts with a client's id: each goes alone, with an id made of the name and
    /// the client's id, so that a resend through any node is dropped by the stream.
    async fn publish(
        self: Arc<Self>,
        mut proposals: mpsc::UnboundedReceiver<Vec<Outgoing>>,
        unacked: Arc<AtomicUsize>,
    ) {
        let mut count: u64 = 0;
        let mut chunks = Vec::new();
        let mut open = Open::default();
        while proposals.recv_many(&mut chunks, 1024).await > 0 {
            // Sent all, then awaited in order: one round trip for a burst.
            let mut sending: Vec<Sending> = Vec::new();
            for outgoing in chunks.drain(..).flatten() {
                match outgoing {
                    Outgoing::Propose { event, conn } => {
                        let record = Record::of(&event, conn);
                        if let (EventKind::Posted { name, .. }, Some(id)) = (&event.kind, &event.id)
                        {
                            let id = format!("id:{}:{id}", name_key(name));
                            if let Some(sent) = self.seal(&mut open, &mut count).await {
                                sending.push(sent);
                            }
                            sending.push(self.send(vec![record], id, Vec::new()).await);
                            continue;
                        }
                        if let EventKind::Left { name } = &event.kind {
                            open.leaves.push(name.to_string());
                        }
                        open.bytes += record.size();
                        open.records.push(record);
                        if (open.records.len() >= EVENTS_PER_MESSAGE
                            || open.bytes >= BYTES_PER_MESSAGE)
                            && let Some(sent) = self.seal(&mut open, &mut count).await
                        {
                            sending.push(sent);
                        }
                    }
                    Outgoing::Secret { name, secret } => self.share_secret(&name, &secret).await,
                    Outgoing::Release { name } => {
                        if let Some(sent) = self.seal(&mut open, &mut count).await {
                            sending.push(sent);
                        }
                        sending.push(Sending {
                            ack: None,
                            payload: Bytes::new(),
                            id: String::new(),
                            events: 0,
                            leaves: vec![name],
                        });
                    }
                }
            }
            if let Some(sent) = self.seal(&mut open, &mut count).await {
                sending.push(sent);
            }
            for sent in sending {
                if !sent.id.is_empty() {
                    let landed = match sent.ack {
                        Some(ack) => {
                            matches!(ack.await, Ok(ack) if !(ack.duplicate && ack.sequence == 0))
                        }
                        None => false,
                    };
                    // Once failed, published again with the same id: the stream keeps
                    // one, whatever reached it before.
                    if !landed && self.append(sent.payload, &sent.id).await.is_none() {
                        return;
                    }
                }
                unacked.fetch_sub(sent.events, Ordering::AcqRel);
                for name in sent.leaves {
                    self.free(&name).await;
                }
            }
        }
    }

    /// Sends the proposals gathered in `open` as one message, if there are any.
    async fn seal(&self, open: &mut Open, count: &mut u64) -> Option<Sending> {
        if open.records.is_empty() {
            return None;
        }
        *count += 1;
        let id = format!("{}:{count}", self.node);
        open.bytes = 0;
        Some(
            self.send(
                std::mem::take(&mut open.records),
                id,
                std::mem::take(&mut open.leaves),
            )
            .await,
        )
    }

    /// Puts the hash of the secret of a name this node holds in the name's entry, so
    /// that a connection on any node can take the name over with it.
    async fn share_secret(&self, name: &str, secret: &str) {
        let revision = self
            .claims
            .lock()
            .ok()
            .and_then(|claims| claims.get(name).copied());
        let Some(revision) = revision else {
            return;
        };
        let value = format!("{}\n{}", self.node, secret_hash(secret));
        match self
            .names
            .update(name_key(name), Bytes::from(value), revision)
            .await
        {
            Ok(next) => {
                if let Ok(mut claims) = self.claims.lock() {
                    claims.insert(name.to_owned(), next);
                }
            }
            Err(error) => {
                debug!(%error, name, "the name's secret was not shared (taken over meanwhile?)")
            }
        }
    }

    /// Gives back a name this node holds.
    async fn free(&self, name: &str) {
        let revision = self
            .claims
            .lock()
            .ok()
            .and_then(|mut claims| claims.remove(name));
        let Some(revision) = revision else {
            return;
        };
        if let Err(error) = self
            .names
            .delete_expect_revision(name_key(name), Some(revision))
            .await
        {
            debug!(%error, name, "a name was not given back (taken over or already free)");
        }
    }

    /// Follows the stream from its message `next`, numbering its events with
    /// `numbering` and handing them to the hub in order, except those numbered up to
    /// `logged` (already in this node's log). Says when it has handed over the
    /// stream up to its message `target` (the last when the node started).
    async fn follow(
        self: Arc<Self>,
        mut next: u64,
        mut numbering: Numbering<(Event, Option<ConnId>)>,
        (logged, target): (u64, u64),
        hub: mpsc::Sender<Vec<Applied>>,
    ) {
        let mut waiting_said = false;
        let mut caught_up = false;
        loop {
            let consumer = self
                .stream
                .create_consumer(push::OrderedConfig {
                    deliver_subject: self.client.new_inbox(),
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: next,
                    },
                    ..Default::default()
                })
                .await;
            let mut messages = match consumer {
                Ok(consumer) => match consumer.messages().await {
                    Ok(messages) => messages,
                    Err(error) => {
                        warn!(%error, "cannot follow the room's stream; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
                Err(error) => {
                    if self.stream_is_gone().await {
                        return;
                    }
                    warn!(%error, "cannot follow the room's stream; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut batch = Vec::new();
            loop {
                self.following.store(next, Ordering::Relaxed);
                if !caught_up
                    && batch.is_empty()
                    && next > target
                    && let Some(position) = numbering.position()
                {
                    caught_up = true;
                    self.caught_up.send_replace(Some(position.count));
                }
                // What is there now, without waiting, goes to the hub together.
                let message = if batch.is_empty() {
                    tokio::select! {
                        message = messages.next() => message,
                        () = self.stalled.notified() => {
                            warn!(next, "following the room's stream again (it went on without this node)");
                            break;
                        }
                    }
                } else {
                    match futures_util::FutureExt::now_or_never(messages.next()) {
                        Some(message) => message,
                        None => {
                            if hub.send(std::mem::take(&mut batch)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                };
                let Some(message) = message else { break };
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        debug!(%error, "the stream's follower hiccuped");
                        continue;
                    }
                };
                let Ok(info) = message.info() else { continue };
                let seq = info.stream_sequence;
                // An ordered consumer that had to start over may begin at the start.
                if seq < next {
                    continue;
                }
                if seq > next {
                    warn!(
                        from = next,
                        to = seq - 1,
                        "messages no longer in the stream were skipped"
                    );
                }
                next = seq + 1;
                let time_ms = u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000)
                    .unwrap_or_default();
                let (events, anchor) = match read_message(seq, &message.payload, time_ms) {
                    Some(Read {
                        node,
                        events,
                        anchor,
                    }) => {
                        let ours = node == self.node;
                        let events = events
                            .into_iter()
                            .map(|(event, conn)| (event, ours.then_some(ConnId(conn))))
                            .collect();
                        (events, anchor)
                    }
                    None => {
                        error!(
                            seq,
                            "a message in the stream that tcpchat did not write; skipped"
                        );
                        (Vec::new(), None)
                    }
                };
                for numbered in numbering.take(seq, events, anchor) {
                    let last = numbered.first_seq + numbered.events.len() as u64;
                    for ((mut event, ours), number) in
                        numbered.events.into_iter().zip(numbered.first_seq..)
                    {
                        if number <= logged {
                            continue;
                        }
                        event.seq = number;
                        let mark = (number + 1 == last).then_some(StreamMark {
                            message: numbered.message,
                            last_seq: number,
                        });
                        batch.push(Applied::Event { event, ours, mark });
                    }
                }
                let position = numbering.position();
                if position.is_none() && !waiting_said {
                    warn!(
                        seq,
                        held = numbering.held(),
                        "the stream was trimmed before this node came: waiting for a message that tells the room's numbers"
                    );
                }
                waiting_said = position.is_none();
                if let Ok(mut shared) = self.position.lock() {
                    *shared = position;
                }
                if batch.len() >= APPLIED_PER_BATCH
                    && hub.send(std::mem::take(&mut batch)).await.is_err()
                {
                    return;
                }
            }
        }
    }

    /// Checks every few seconds that the room's stream is still there: a follower
    /// of a deleted stream would wait silently forever.
    ///
    /// Also the follower's watchdog: an ordered consumer whose NATS server died (the
    /// stream's leader, in a NATS cluster) hears nothing until its heartbeats are
    /// missed (10 s); if the stream has events the follower has not had for two
    /// checks in a row, it starts over at once.
    async fn watch_stream(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut checks: u32 = 0;
        let mut behind_since: Option<u64> = None;
        while !self.expelled.is_cancelled() {
            tick.tick().await;
            checks += 1;
            if checks.is_multiple_of(5) && self.stream_is_gone().await {
                return;
            }
            let Ok(info) = self.stream.get_info().await else {
                continue;
            };
            let next = self.following.load(Ordering::Relaxed);
            if info.state.last_sequence < next {
                behind_since = None;
                continue;
            }
            match behind_since {
                Some(was) if was == next => {
                    self.stalled.notify_one();
                    behind_since = None;
                }
                _ => behind_since = Some(next),
            }
        }
    }

    /// Whether the room's stream is gone (deleted): then this node stops, loudly.
    async fn stream_is_gone(&self) -> bool {
        match self.stream.get_info().await {
            Err(error) if error.to_string().contains("not found") => {
                error!(%error, "the room's stream is gone from NATS (deleted?); stopping");
                self.expelled.cancel();
                true
            }
            _ => false,
        }
    }
}

/// The cluster's names, as the hub claims them.
#[derive(Debug)]
struct ClusterNames {
    cluster: Arc<Cluster>,
    /// Who is in the room, as this node's hub has applied it.
    present: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// How long a claim waits for a name held by someone this node has not seen in the
/// room (a leave whose release is on its way, or a join on its way in).
const CLAIM_PATIENCE: Duration = Duration::from_secs(1);

impl ClusterNames {
    fn is_present(&self, name: &str) -> bool {
        self.present
            .lock()
            .map_or(true, |present| present.contains(name))
    }
}

impl Names for ClusterNames {
    fn claim<'a>(
        &'a self,
        name: &'a str,
        _conn: ConnId,
        token: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<bool, JoinError>> + Send + 'a>> {
        let cluster = &self.cluster;
        Box::pin(async move {
            let key = name_key(name);
            let taken = || JoinError::NameTaken(name.to_owned());
            let deadline = Instant::now() + CLAIM_PATIENCE;
            loop {
                let outcome = match cluster
                    .names
                    .create(&key, Bytes::from(cluster.node.clone()))
                    .await
                {
                    Ok(revision) => {
                        if let Ok(mut claims) = cluster.claims.lock() {
                            claims.insert(name.to_owned(), revision);
                        }
                        Ok(false)
                    }
                    Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
                        match cluster.names.entry(&key).await {
                            // Held here already (another member of this node, or this
                            // very claim, retried): this node's room decides.
                            Ok(Some(entry))
                                if entry.operation == Operation::Put
                                    && holder_of(&entry.value) == cluster.node.as_bytes() =>
                            {
                                Ok(false)
                            }
                            // Held on another node, and this is its secret: handed
                            // over here (compare-and-swap, so once).
                            Ok(Some(entry))
                                if entry.operation == Operation::Put
                                    && token.is_some_and(|token| {
                                        hash_in(&entry.value).is_some_and(|hash| {
                                            bool::from(subtle::ConstantTimeEq::ct_eq(
                                                secret_hash(token).as_bytes(),
                                                hash,
                                            ))
                                        })
                                    }) =>
                            {
                                match cluster
                                    .names
                                    .update(&key, Bytes::from(cluster.node.clone()), entry.revision)
                                    .await
                                {
                                    Ok(revision) => {
                                        if let Ok(mut claims) = cluster.claims.lock() {
                                            claims.insert(name.to_owned(), revision);
                                        }
                                        return Ok(true);
                                    }
                                    Err(_) => Err(taken()),
                                }
                            }
                            _ => Err(taken()),
                        }
                    }
                    Err(error) => {
                        warn!(%error, name, "cannot claim a name in the cluster");
                        Err(JoinError::Unavailable)
                    }
                };
                // Held by someone who is not in the room as this node sees it: they just
                // left (the name is on its way back) or are just joining (their join is
                // on its way in). Asked again until one of the two shows.
                match outcome {
                    Err(JoinError::NameTaken(_))
                        if !self.is_present(name) && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    other => return other,
                }
            }
        })
    }
}

/// Checks that the stream found is the one tcpchat makes.
fn check_stream(wanted: &stream::Config, found: &stream::Config) -> anyhow::Result<()> {
    let mut wrong = Vec::new();
    if found.subjects != wanted.subjects {
        wrong.push(format!(
            "subjects {:?} (tcpchat's: {:?})",
            found.subjects, wanted.subjects
        ));
    }
    if !found.allow_direct {
        wrong.push("allow_direct is off".to_owned());
    }
    if !found.deny_delete || !found.deny_purge {
        wrong.push("messages may be deleted or purged".to_owned());
    }
    if found.discard != DiscardPolicy::Old {
        wrong.push("it discards new messages when full".to_owned());
    }
    if !wrong.is_empty() {
        bail!(
            "the stream {} in NATS is not one tcpchat made ({}); delete it or choose another --cluster-room",
            wanted.name,
            wrong.join("; ")
        );
    }
    Ok(())
}

/// A key-value bucket (made as its stream, as async-nats's own call to make one
/// needs a newer NATS than Debian's 2.9).
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    let config = stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        discard: DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: replicas,
        storage: StorageType::File,
        ..Default::default()
    };
    patiently(|| js.get_or_create_stream(config.clone()))
        .await
        .with_context(|| format!("cannot open the key-value bucket {name} in NATS"))?;
    patiently(|| js.get_key_value(name))
        .await
        .with_context(|| format!("cannot open the key-value bucket {name} in NATS"))
}

/// How long start-up waits for JetStream to answer.
const JETSTREAM_PATIENCE: Duration = Duration::from_secs(30);

/// `request()` until it succeeds or fails for a reason other than a timeout, for at
/// most [`JETSTREAM_PATIENCE`].
async fn patiently<T, E, F, Fut>(mut request: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = Instant::now() + JETSTREAM_PATIENCE;
    loop {
        match request().await {
            Err(error) if error.to_string().contains("timed out") && Instant::now() < deadline => {
                info!(%error, "waiting for NATS JetStream");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

/// `urls` with any password replaced by `***`, for messages and logs.
fn redacted(urls: &str) -> String {
    urls.split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let credentials = &url[scheme + 3..at];
                match credentials.split_once(':') {
                    Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                    None => url.to_owned(),
                }
            }
            _ => url.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Distinct enough: a node id only has to differ from the others'.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return (now as u64) ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redacted("nats://tc:s3cret@n1:4222, tls://n2:4222,nats://u@n3:1"),
            "nats://tc:***@n1:4222, tls://n2:4222,nats://u@n3:1"
        );
    }

    #[test]
    fn name_keys_round_trip_any_name() {
        for name in ["alice", "Zoë", "名前", "a-b_c.d", "<img src=x>"] {
            let key = name_key(name);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{key}"
            );
            assert_eq!(name_of_key(&key).as_deref(), Some(name));
        }
    }

    fn post(name: &str, text: &str, id: Option<&str>) -> Event {
        Event {
            id: id.map(Arc::from),
            ..Event::new(
                0,
                EventKind::Posted {
                    name: Arc::from(name),
                    text: text.to_owned(),
                },
            )
        }
    }

    #[test]
    fn events_round_trip_through_the_stream_s_messages() {
        let events = [
            post("alice", "hello", Some("k7")),
            Event::new(
                0,
                EventKind::Left {
                    name: Arc::from("bob"),
                },
            ),
        ];
        let batch = Batch {
            node: "node1".to_owned(),
            after: Some((41, 77)),
            events: vec![
                Record::of(&events[0], ConnId(9)),
                Record::of(&events[1], ConnId(3)),
            ],
        };
        let json = serde_json::to_vec(&batch).expect("encodes");
        let read = read_message(42, &json, 1_000).expect("tcpchat's");
        assert_eq!(read.node, "node1");
        assert_eq!(
            read.anchor,
            Some(Anchor {
                message: 41,
                count: 77
            })
        );
        let expected: Vec<(Event, u64)> = events
            .into_iter()
            .zip([9, 3])
            .map(|(event, conn)| {
                (
                    Event {
                        time_ms: 1_000,
                        ..event
                    },
                    conn,
                )
            })
            .collect();
        assert_eq!(read.events, expected);
    }

    #[test]
    fn messages_of_one_event_from_before_batching_are_numbered_as_the_stream() {
        let old = br#"{"kind":"post","name":"alice","text":"hi","node":"n0","conn":4}"#;
        let read = read_message(42, old, 5).expect("tcpchat's");
        assert_eq!(read.node, "n0");
        assert_eq!(
            read.events,
            vec![(post("alice", "hi", None), 4)]
                .into_iter()
                .map(|(e, c)| (Event { time_ms: 5, ..e }, c))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            read.anchor,
            Some(Anchor {
                message: 41,
                count: 41
            })
        );
    }

    #[test]
    fn what_tcpchat_did_not_write_is_not_read_and_unknown_kinds_count_nothing() {
        assert!(read_message(1, b"hello", 0).is_none());
        assert!(read_message(1, br#"{"node":"n","events":7}"#, 0).is_none());
        let read = read_message(
            1,
            br#"{"node":"n","events":[{"kind":"dance","name":"a"},{"kind":"join","name":"b"}]}"#,
            0,
        )
        .expect("tcpchat's");
        assert_eq!(read.events.len(), 1);
    }
}
