//! What members ask of the hub, through its one bounded inbox.
//!
//! Private to the hub and its members: transports never see a [`Command`], they hold
//! a [`Member`](super::member::Member) that sends these for them.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::ring::{Cursor, Subscriber};
use crate::protocol::wire::Format;
use crate::room::{ConnId, JoinError, Role};

/// A request to the hub.
#[derive(Debug)]
pub(crate) enum Command {
    /// Hold a name for a connection whose handshake is not decided yet.
    Reserve {
        id: ConnId,
        name: String,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    /// Become a member.
    Join {
        id: ConnId,
        role: Role,
        /// The name, for messengers and chatters.
        name: Option<String>,
        /// The format it receives in (for roles that receive).
        format: Format,
        /// It asked for tags (its posts may carry ids; a sender gets a secret).
        tagged: bool,
        /// The secret it presents to take its name over.
        token: Option<String>,
        /// It asked for the names in the room.
        members: bool,
        /// In a cluster: its name was handed over from another node's member.
        adopted: bool,
        /// The member's waker: called after each publish for roles that receive,
        /// and for everyone when shutdown begins.
        waker: Arc<Subscriber>,
        /// Where it starts, or why not.
        reply: oneshot::Sender<Result<Admitted, JoinError>>,
    },
    /// One or more messages from a member (split into lines by the room).
    Post { id: ConnId, bytes: Bytes },
    /// A chatter whose leave was announced ([`Command::Leave`] with `published`) has
    /// read the room up to it and is gone: it no longer counts as a receiver.
    Release { id: ConnId },
    /// The operator's: disconnect the member called `name`; its connection id, if
    /// there is one.
    Kick {
        name: String,
        reply: oneshot::Sender<Option<ConnId>>,
    },
    /// A reload: names may now be up to this long.
    Reconfigure { max_name_chars: usize },
    /// The operator's: the names in the room.
    Who {
        reply: oneshot::Sender<Vec<Arc<str>>>,
    },
    /// A member is gone.
    Leave {
        id: ConnId,
        /// If given, told the ring index just past the batch that announces the
        /// leave, so a leaving chatter can receive the room up to its own departure.
        published: Option<oneshot::Sender<u64>>,
    },
}

/// The hub's answer to a join it accepted.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// Where to start reading the ring.
    pub(crate) cursor: Cursor,
    /// The last event published before that point: the welcome's `@seq`, and where
    /// a replay ends.
    pub(crate) last_seq: u64,
    /// The member's secret for its name (senders that asked for tags).
    pub(crate) token: Option<String>,
    /// The names in the room, if it asked for them.
    pub(crate) members: Option<Vec<Arc<str>>>,
}
