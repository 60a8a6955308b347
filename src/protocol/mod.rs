//! The wire protocol as pure functions: bytes in, values out.
//!
//! Nothing here touches a socket, a runtime or a clock, so every rule can be tested
//! byte by byte. The server's transports and the clients both use these functions;
//! neither re-implements the wire.
//!
//! - [`handshake`]: a connection's first bytes -> role, mode and options.
//! - [`mod@line`]: a messenger's stream -> messages (line framing, or seed reads).
//! - [`wire`]: events and notices -> bytes, once per wire format.
//! - [`websocket`]: WebSocket frames: the server's, written once and shared; the
//!   client's, checked and unmasked.
//!
//! The rules for names and text belong to the room ([`crate::room::name`],
//! [`crate::room::text`]): the room enforces them on every transport, and this module
//! uses them, never the reverse.

pub mod handshake;
#[doc(hidden)]
pub mod invariants;
pub mod line;
pub mod websocket;
pub mod wire;

pub use handshake::{Hello, Mode, Options};
