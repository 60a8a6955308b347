//! The vocabulary of the room: members, roles and the events viewers see.

use std::fmt;
use std::sync::Arc;

/// A connection's identity inside the room, handed out by the server. Names are
/// attributes of members; a `ConnId` is who a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What a member does in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Receives every event, sends nothing, has no name.
    Viewer,
    /// Sends messages under a unique name, receives nothing.
    Messenger,
    /// Both at once over one connection (line mode only): what `tcpchat chat` uses.
    Chatter,
}

impl Role {
    /// Whether members in this role receive the room's events.
    pub fn receives(self) -> bool {
        matches!(self, Self::Viewer | Self::Chatter)
    }

    /// Whether members in this role send messages (and so hold a name).
    pub fn sends(self) -> bool {
        matches!(self, Self::Messenger | Self::Chatter)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Viewer => "viewer",
            Self::Messenger => "messenger",
            Self::Chatter => "chatter",
        })
    }
}

/// Something that happened in the room, numbered in the room's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the room's history: 1, 2, 3, ... with no gaps, never reused.
    pub seq: u64,
    /// When it happened: milliseconds since the Unix epoch, server time. The room
    /// reads no clock: the hub stamps each event as it takes it (0 until then).
    pub time_ms: u64,
    /// The sender's id for a post (`@id=TOKEN`), which makes resending it harmless.
    pub id: Option<Arc<str>>,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// An event as the room makes it: not yet stamped, without an id.
    pub fn new(seq: u64, kind: EventKind) -> Self {
        Self {
            seq,
            time_ms: 0,
            id: None,
            kind,
        }
    }
}

/// The kinds of events viewers are told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A messenger joined.
    Joined {
        /// Its name.
        name: Arc<str>,
    },
    /// A messenger sent one line of text (already split and neutralized).
    Posted {
        /// The sender's name, taken from its membership, never from its text.
        name: Arc<str>,
        /// The line.
        text: String,
    },
    /// A messenger left; its name is free again.
    Left {
        /// Its name.
        name: Arc<str>,
    },
}
