//! The hub's side of a cluster: what a node proposes to the cluster's stream, what
//! comes back from it, and the names the cluster holds.
//!
//! In a cluster the room's order is the stream's, not the hub's: the hub's room is a
//! replica ([`Room::replica`](crate::room::Room::replica)) whose joins, posts and
//! leaves are proposals, handed to whatever publishes them (`crate::cluster`), and
//! the stream's events come back, numbered and timed by the stream, to be applied,
//! logged and published like any node's own. The hub knows nothing of NATS: only of
//! these channels and of [`Names`].

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio::sync::mpsc;

use crate::room::{ConnId, Event, JoinError};
use crate::store::StreamMark;

/// What the hub hands to the cluster's publisher, in order.
#[derive(Debug)]
pub enum Outgoing {
    /// An event to append to the stream (numbered 0 until the stream numbers it),
    /// from the member `conn`.
    Propose {
        /// The event.
        event: Event,
        /// The member it comes from.
        conn: ConnId,
    },
    /// A name this node held without announcing it (a reservation, a refused join),
    /// to give back.
    Release {
        /// The name.
        name: String,
    },
    /// The secret that now lets a connection on any node take `name` over.
    Secret {
        /// The name.
        name: String,
        /// Its holder's secret (kept in the cluster only as a hash).
        secret: String,
    },
}

/// What the cluster tells the hub, in order.
#[derive(Debug)]
pub enum Applied {
    /// An event of the cluster's stream, numbered and timed by it.
    Event {
        /// The event.
        event: Event,
        /// The member of this node it came from, if it came from this node.
        ours: Option<ConnId>,
        /// Set on the last event of each stream message: where the node's log stands
        /// once it holds this event (kept with it, for a restart).
        mark: Option<StreamMark>,
    },
    /// A member of another node took over `name`, which a member of this node held,
    /// with its secret: that member is done, and the room (which still has the
    /// name) hears nothing of it.
    HandedOver {
        /// The name.
        name: String,
    },
}

/// Names held across the cluster: a join must claim its name first.
pub trait Names: Send + Sync + Debug {
    /// Claims `name` for the member `conn` of this node; with the holder's `token`,
    /// from a member of another node. `Ok(true)` when it was handed over so (the
    /// room already has the member: no join is announced).
    ///
    /// # Errors
    /// [`JoinError::NameTaken`] when another node holds it (and `token` is not its
    /// secret).
    fn claim<'a>(
        &'a self,
        name: &'a str,
        conn: ConnId,
        token: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = Result<bool, JoinError>> + Send + 'a>>;
}

/// A hub's link to its cluster.
#[derive(Debug)]
pub struct Replication {
    /// Where proposals go.
    pub outgoing: mpsc::UnboundedSender<Vec<Outgoing>>,
    /// The stream's events, in its order.
    pub applied: mpsc::Receiver<Vec<Applied>>,
    /// Proposals not yet in the stream (decreased by the publisher): the room takes
    /// no more commands past a bound, so a node that lost NATS slows its senders.
    pub unacked: Arc<AtomicUsize>,
    /// The cluster's names.
    pub names: Arc<dyn Names>,
    /// Who is in the room as this node has applied it (kept by the hub), so that a
    /// claim can tell a name whose holder left (its release is on its way) from one
    /// that is held.
    pub present: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}
