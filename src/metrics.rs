//! The server's counters, in the Prometheus text format (`GET /metrics`).
//!
//! One [`Metrics`] per server, shared by reference. Everything on the fan-out path is
//! counted per write or per batch with relaxed atomic adds, never per delivery and
//! never under a lock; label families (a lock each) are touched only per connection.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::room::Role;

/// The kinds of events the room publishes, as the `kind` label says them.
pub const EVENT_KINDS: [&str; 3] = ["join", "message", "leave"];

/// Labels of an open connection.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Connection {
    /// `tcp` or `tls`.
    pub transport: String,
    /// `viewer`, `messenger` or `chatter`.
    pub role: String,
    /// `seed` or `line`.
    pub mode: String,
}

/// One label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Transport {
    /// `tcp` or `tls`.
    pub transport: String,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// A stable code: `connection-limit`, `address-limit`, or the error code the
    /// client was told (`name-taken`, `handshake-timeout`, ...).
    pub reason: String,
}

/// An event's kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// `join`, `message` or `leave`.
    pub kind: String,
}

/// How something ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok` or `failed`.
    pub result: String,
}

/// Every counter of the server. See the module documentation.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Connections in the room now.
    pub connections_open: Family<Connection, Gauge>,
    /// Connections accepted by a listener.
    pub connections_accepted: Family<Transport, Counter>,
    /// Connections refused, by reason.
    pub connections_refused: Family<Reason, Counter>,
    /// Handshakes not finished in time.
    pub handshake_timeouts: Counter,
    /// Events the room published, by kind.
    pub events: Family<Kind, Counter>,
    /// Events handed to receivers' sockets (one per event per receiver).
    pub deliveries: Counter,
    /// Bytes written to receivers, notices included.
    pub written_bytes: Counter,
    /// Receivers dropped because they fell too far behind.
    pub slow_viewers_dropped: Counter,
    /// Times flood control held a sender back.
    pub flood_pauses: Counter,
    /// Commands waiting in the hub's inbox, at the hub's last turn.
    pub hub_inbox_depth: Gauge,
    /// In a cluster: this node's events not yet in the cluster's stream, at the hub's
    /// last turn.
    pub cluster_unpublished: Gauge,
    /// How long each commit of the room's log took.
    pub log_commit_seconds: Histogram,
    /// Replays of the log served (`history=N`, `since=SEQ`).
    pub replays: Counter,
    /// TLS certificate reloads, by result.
    pub tls_reloads: Family<Outcome, Counter>,
    /// Connections in the room now by role alone (`connections_open` summed over
    /// transports and modes), for the log's summary line. Not exported.
    members: [Gauge; 3],
}

/// The server's totals at one moment, for the log's summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Viewers in the room.
    pub viewers: i64,
    /// Messengers in the room.
    pub messengers: i64,
    /// Chatters in the room.
    pub chatters: i64,
    /// Events the room has published, of every kind.
    pub events: u64,
    /// Events handed to receivers' sockets.
    pub deliveries: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tcpchat");
        let metrics = Self {
            connections_open: Family::default(),
            connections_accepted: Family::default(),
            connections_refused: Family::default(),
            handshake_timeouts: Counter::default(),
            events: Family::default(),
            deliveries: Counter::default(),
            written_bytes: Counter::default(),
            slow_viewers_dropped: Counter::default(),
            flood_pauses: Counter::default(),
            hub_inbox_depth: Gauge::default(),
            cluster_unpublished: Gauge::default(),
            // 50 us to about 1.6 s.
            log_commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            replays: Counter::default(),
            tls_reloads: Family::default(),
            members: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections_open",
            "Connections in the room now, by transport, role and mode",
            metrics.connections_open.clone(),
        );
        registry.register(
            "connections_accepted",
            "Connections accepted by a listener",
            metrics.connections_accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused, by reason",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "handshake_timeouts",
            "Handshakes not finished within --handshake-timeout",
            metrics.handshake_timeouts.clone(),
        );
        registry.register(
            "events",
            "Events the room published, by kind",
            metrics.events.clone(),
        );
        registry.register(
            "deliveries",
            "Events written to receivers (one per event and receiver)",
            metrics.deliveries.clone(),
        );
        registry.register(
            "written_bytes",
            "Bytes written to receivers, notices included",
            metrics.written_bytes.clone(),
        );
        registry.register(
            "slow_viewers_dropped",
            "Receivers disconnected because they fell too far behind",
            metrics.slow_viewers_dropped.clone(),
        );
        registry.register(
            "flood_pauses",
            "Times flood control held a sender's lines back",
            metrics.flood_pauses.clone(),
        );
        registry.register(
            "hub_inbox_depth",
            "Commands waiting for the room at its last turn",
            metrics.hub_inbox_depth.clone(),
        );
        registry.register(
            "cluster_unpublished",
            "In a cluster: this node's joins, posts and leaves not yet in the stream, at the room's last turn",
            metrics.cluster_unpublished.clone(),
        );
        registry.register(
            "log_commit_seconds",
            "Time each commit of the room's log took",
            metrics.log_commit_seconds.clone(),
        );
        registry.register(
            "replays",
            "Replays of the room's log served (history=N, since=SEQ)",
            metrics.replays.clone(),
        );
        registry.register(
            "tls_reloads",
            "TLS certificate reloads (SIGHUP), by result",
            metrics.tls_reloads.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// A fresh set, shared.
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Everything, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// The gauge of members in `role`: raised while a connection of that role is in
    /// the room.
    pub fn members(&self, role: Role) -> &Gauge {
        &self.members[match role {
            Role::Viewer => 0,
            Role::Messenger => 1,
            Role::Chatter => 2,
        }]
    }

    /// The totals now.
    pub fn totals(&self) -> Totals {
        Totals {
            viewers: self.members(Role::Viewer).get(),
            messengers: self.members(Role::Messenger).get(),
            chatters: self.members(Role::Chatter).get(),
            events: EVENT_KINDS
                .iter()
                .filter_map(|kind| {
                    let kind = Kind {
                        kind: (*kind).to_owned(),
                    };
                    self.events.get(&kind).map(|counter| counter.get())
                })
                .sum(),
            deliveries: self.deliveries.get(),
        }
    }

    /// Counts a refusal.
    pub fn refused(&self, reason: &str) {
        self.connections_refused
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
