//! The TCP server: the accept loop, one task per connection, and orderly shutdown.
//!
//! [`run`] is the seam tests and `main` share: it takes a bound listener, the
//! configuration and a shutdown future, and returns when the server has stopped.

mod accept;
pub mod limits;
mod session;
mod tcp;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use bytes::Bytes;

use crate::config::Config;
use crate::hub;
use crate::hub::ring::Ring;
use crate::protocol::{Mode, wire};

/// Counters a person running the server may want to see in the logs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Viewers disconnected because they fell too far behind.
    pub slow_viewers: AtomicU64,
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    config: Config,
    /// Cancelled when shutdown begins (for futures that wait for it).
    stop: CancellationToken,
    /// Set when shutdown begins, before anyone is woken to see it: sessions check it
    /// on every wake-up, and the token's own check takes a lock.
    stopping: AtomicBool,
    stats: Stats,
    /// The welcome line, encoded once per mode.
    welcome: [Bytes; 2],
    /// The room's shared backlog, read by every viewer.
    ring: Arc<Ring>,
}

impl Shared {
    fn new(config: Config, stop: CancellationToken, ring: Arc<Ring>) -> Self {
        let welcome = [
            wire::welcome(&config.chat_name, Mode::Seed),
            wire::welcome(&config.chat_name, Mode::Line),
        ];
        Self {
            config,
            stop,
            stopping: AtomicBool::new(false),
            stats: Stats::default(),
            welcome,
            ring,
        }
    }

    /// Whether shutdown has begun. Cheap: one atomic load.
    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The welcome line in `mode` (a cheap clone).
    fn welcome(&self, mode: Mode) -> Bytes {
        match mode {
            Mode::Seed => self.welcome[0].clone(),
            Mode::Line => self.welcome[1].clone(),
        }
    }
}

/// Serves the chat on `listener` until `shutdown` completes, then shuts down in
/// order: stop accepting; stop reading messengers and let the room finish what it
/// already accepted; let every viewer receive all of it (within
/// [`Config::shutdown_timeout`]); close every connection.
///
/// # Errors
/// Only if the server cannot run at all; a failing connection ends that connection.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let max_connections = accept::max_connections(&config);
    let stop = CancellationToken::new();
    let (hub, hub_task) = hub::spawn(&config, stop.clone());
    let shared = Arc::new(Shared::new(config, stop, hub.ring().clone()));
    let tracker = TaskTracker::new();
    if let Ok(address) = listener.local_addr() {
        info!(
            %address,
            transport = %"tcp",
            chat = %shared.config.chat_name,
            max_connections,
            "listening"
        );
    }

    tokio::select! {
        () = shutdown => {}
        () = accept::run(listener, hub, shared.clone(), tracker.clone(), max_connections) => {}
    }

    info!(connections = tracker.len(), "shutting down");
    shared.stopping.store(true, Ordering::Release);
    shared.stop.cancel();
    tracker.close();
    let timeout = shared.config.shutdown_timeout;
    // Each connection stops itself at the deadline; the margin covers its last close.
    let margin = std::time::Duration::from_secs(2);
    if tokio::time::timeout(timeout + margin, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            connections = tracker.len(),
            "connections still open after the deadline"
        );
    }
    match tokio::time::timeout(margin, hub_task).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "the hub task failed"),
        Err(_) => warn!("the hub did not stop in time"),
    }
    info!(
        slow_viewers = shared.stats.slow_viewers.load(Ordering::Relaxed),
        "stopped"
    );
    Ok(())
}
