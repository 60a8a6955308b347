//! The client programs. All speak line mode and reuse [`crate::protocol`] for the
//! handshake and the framing.
//!
//! - [`viewer`]: shows the room.
//! - [`messenger`]: sends typed lines, like the original Messenger.
//! - [`chat`]: both at once over one connection, without garbling the typed line.
//! - [`history`]: prints the room's recent events and exits.
//!
//! `chat` and `viewer` run a [`session::Session`]: history on joining, and
//! reconnection that resumes exactly where it left off ([`tags`] reads the events'
//! seqs, [`outbox`] keeps typed lines until they land, [`backoff`] spaces out the
//! attempts). [`display`] shows events with their local time.
//!
//! Each returns `Ok` when the user leaves and a [`conn::ClientError`] that says in
//! words what went wrong otherwise.

pub mod backoff;
pub mod chat;
pub mod conn;
pub mod display;
pub mod history;
pub mod messenger;
pub mod outbox;
pub mod session;
pub mod tags;
pub mod terminal;
pub mod viewer;
