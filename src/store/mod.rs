//! The room's durable log: every event, with its number and time, kept across
//! restarts.
//!
//! A [`Store`] is what the hub's side calls, and nothing else does: the hub's log
//! writer appends each batch of events in one transaction before any viewer sees
//! them, and members read the log back for replays (`history=N`, `since=SEQ`).
//! Transports never touch it. [`sqlite::SqliteStore`] is the embedded implementation
//! that needs no set-up; the cluster mode adds another.

pub mod sqlite;

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

use crate::room::Event;

/// What the log says about the room when the server starts on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The last event's number (0 for a log that never had one): numbering goes on
    /// from here and never reuses a number.
    pub last_seq: u64,
    /// Names the log shows in the room: members of the previous run, which ended
    /// without announcing their leave (a crash). The hub announces it for them.
    pub present: Vec<String>,
    /// Recent message ids per name, oldest first, so resends stay harmless across a
    /// restart.
    pub recent_ids: Vec<(String, String)>,
    /// In a cluster node's log: where it stands in the cluster's stream.
    pub mark: Option<StreamMark>,
}

/// Where a cluster node's log stands in the cluster's stream (`crate::cluster`):
/// every event of the stream's message `message` is in the log, and the room had
/// `last_seq` events after it. A node restarted on its log follows the stream on from
/// there. Kept in the same transaction as the events it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamMark {
    /// The stream's message number.
    pub message: u64,
    /// The number of the last event in it.
    pub last_seq: u64,
}

/// The log. See the module documentation.
///
/// Implementations are called from blocking threads (the log writer and replays run
/// on threads of their own), never from the hub's task.
pub trait Store: Send + Sync + fmt::Debug {
    /// What the log holds: read once, at start.
    ///
    /// # Errors
    /// [`StoreError`] if the log cannot be read.
    fn recover(&self) -> Result<Recovered, StoreError>;

    /// Appends `events` (numbered, in order, following the last one appended) in one
    /// transaction: all of them are kept, or none, and with them the cluster's
    /// `mark` if there is one (returned by [`Store::recover`]). Returns once they are
    /// as durable as the store promises (a process crash loses none; with `fsync`, a
    /// power cut neither).
    ///
    /// # Errors
    /// [`StoreError`]; then nothing was appended.
    fn append(&self, events: &[Event], mark: Option<StreamMark>) -> Result<(), StoreError>;

    /// Up to `max` events numbered after `after`, in order.
    ///
    /// # Errors
    /// [`StoreError`] if the log cannot be read.
    fn read(&self, after: u64, max: usize) -> Result<Vec<Event>, StoreError>;

    /// The number of the oldest event still kept (older ones fell to retention), or
    /// `None` if the log keeps none.
    ///
    /// # Errors
    /// [`StoreError`] if the log cannot be read.
    fn first_kept(&self) -> Result<Option<u64>, StoreError>;

    /// Keeps `max_events` from the next append on (a reload of
    /// `--history-max-events`). A store without retention ignores it.
    fn set_max_events(&self, _max_events: u64) {}

    /// Checks that the log can be written now (for `/readyz`), without changing
    /// what it holds.
    ///
    /// # Errors
    /// [`StoreError`] saying why it cannot.
    fn probe(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Why the log cannot be used. Each says in words what is wrong and where.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The data directory cannot be created, opened or written.
    #[error("cannot use the data directory {dir}: {reason}")]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another process holds the data directory.
    #[error(
        "the data directory {0} is in use by another tcpchat (each server needs its own --data-dir)"
    )]
    InUse(PathBuf),
    /// The log file is something else.
    #[error("{0} is not a tcpchat log (move it away, or choose another --data-dir)")]
    Foreign(PathBuf),
    /// The log was written by a newer tcpchat.
    #[error("{file} was written by a newer tcpchat (log format {found}, this one reads {known})")]
    TooNew {
        /// The log file.
        file: PathBuf,
        /// Its format version.
        found: i64,
        /// The newest this build reads.
        known: i64,
    },
    /// A stored row is not an event.
    #[error("the log holds a damaged event (seq {seq}): {reason}")]
    Damaged {
        /// Its number.
        seq: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// The database failed.
    #[error("{0}")]
    Sqlite(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Sqlite(error.to_string())
    }
}
