//! tcpchat: a chat server that keeps the protocol of a classic C# tutorial (seed
//! mode, byte for byte) and adds a newline-framed line mode, with clients to match.
//!
//! The map, from the wire inwards:
//! - [`server`]: the transports. One accept loop per listener (plain TCP; TLS for
//!   line mode), admission and its limits, and one session loop for every byte
//!   stream, translating between a connection and its member; orderly shutdown.
//! - [`hub`]: the one task that owns the room, and the member core every transport
//!   holds ([`hub::member`]): posting under flood control, receiving from the shared
//!   ring under the slow-viewer rule, goodbyes and the drain at shutdown. Each batch
//!   of events is encoded once per wire format in use.
//! - [`protocol`]: pure functions. Handshakes, framing, and the wire formats of
//!   events and notices. No I/O, no clock.
//! - [`room`]: the core. Membership, names and their rules, text neutralization, the
//!   order of events and their sequence numbers. A plain struct; imports nothing else
//!   of the crate.
//! - [`cluster`]: several nodes serving one room through NATS JetStream (`serve
//!   --cluster`): the stream that orders the room, names claimed across nodes,
//!   nodes that are gone.
//! - [`tls`]: certificates and keys to rustls configs, reloadable on the server.
//! - [`client`]: the `viewer`, `messenger`, `chat` and `history` programs, and the
//!   reconnecting session behind `chat` and `viewer`.
//! - [`config`]: every default and limit, in one place.
//! - [`logging`]: the server's log (text or JSON) and its periodic summary line.
//! - [`socket`]: socket options shared by the server and the clients.
//!
//! The load generator (`tcpchat-bench`) and the soak (`tcpchat-soak`) are workspace
//! members of their own: they drive a server process from outside, as black boxes.

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![warn(missing_docs)]

pub mod client;
pub mod cluster;
pub mod config;
pub mod config_file;
pub mod hub;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod room;
pub mod server;
pub mod socket;
pub mod store;
pub mod tls;

pub use config::Config;
