//! tcpchat: a chat server that keeps the protocol of a classic C# tutorial (seed
//! mode, byte for byte) and adds a newline-framed line mode, with clients to match.
//!
//! The map, from the wire inwards:
//! - [`protocol`]: pure functions. Handshakes, framing, name rules, text
//!   neutralization, and the encoding of events and notices. No I/O, no clock.
//! - [`room`]: the core. Membership, names, the order of events and their sequence
//!   numbers. A plain struct; knows no sockets.
//! - [`hub`]: the one task that owns the room. Takes commands from a bounded inbox,
//!   encodes each batch of events once per wire format and publishes it on a shared
//!   ring that every viewer reads at its own pace.
//! - [`server`]: the TCP transport. Accept loop, limits, one task per connection
//!   translating between its socket and the hub; orderly shutdown.
//! - [`client`]: the `viewer`, `messenger` and `chat` programs.
//! - [`config`]: every default and limit, in one place.
//!
//! The load generator (`tcpchat-bench`) and the soak (`tcpchat-soak`) are workspace
//! members of their own: they drive a server process from outside, as black boxes.

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod hub;
pub mod protocol;
pub mod room;
pub mod server;
pub mod socket;
pub mod tls;

pub use config::Config;
