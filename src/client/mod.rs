//! The client programs. All speak line mode and reuse [`crate::protocol`] for the
//! handshake and the framing.
//!
//! - [`viewer`]: shows the room.
//! - [`messenger`]: sends typed lines, like the original Messenger.
//! - [`chat`]: both at once over one connection, without garbling the typed line.
//!
//! Each returns `Ok` when the user leaves and a [`conn::ClientError`] that says in
//! words what went wrong otherwise.

pub mod chat;
pub mod conn;
pub mod messenger;
pub mod terminal;
pub mod viewer;
