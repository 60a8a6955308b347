//! The integration tests: one test binary, one module per concern. Every test talks
//! to a real server over real sockets on ephemeral loopback ports (or, for `cli`,
//! `chat_terminal`, `logs`, `tls` and `dead_peers`, to the built `tcpchat` binary, under a
//! pseudo-terminal for `chat_terminal`), and waits for what a user
//! would see, each wait bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod admin;
mod browser;
mod chat_terminal;
mod cli;
mod client_resume;
mod cluster;
mod config;
mod crash;
mod dead_peers;
mod departures;
mod fuzz_corpus;
mod history;
mod http;
mod limits;
mod line_mode;
mod logs;
mod names;
mod original_clients;
mod password;
mod reload;
mod seed_mode;
mod service;
mod shutdown;
mod slow_viewer;
mod tls;
mod websocket;
