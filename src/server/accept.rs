//! The accept loop: connection limit, one task per connection.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use super::{Shared, tcp};
use crate::config::Config;
use crate::hub::HubHandle;
use crate::room::ConnId;

/// File descriptors kept back from the connection limit for the listener, the
/// standard streams, the runtime and logging.
const RESERVED_FDS: u64 = 64;

/// The effective connection limit: the configured one, or what the open-file limit
/// allows.
pub(super) fn max_connections(config: &Config) -> usize {
    config.max_connections.unwrap_or_else(|| {
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
        usize::try_from(soft.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX)
    })
}

/// Accepts connections until the task is dropped (when shutdown begins).
pub(super) async fn run(
    listener: TcpListener,
    hub: HubHandle,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    max_connections: usize,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut next_id = 0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                backoff(&e).await;
                continue;
            }
        };
        next_id += 1;
        let id = ConnId(next_id);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            info!(conn = %id, %peer, max_connections, "refused: connection limit reached");
            continue;
        };
        let span = info_span!("conn", id = next_id, %peer);
        let connection = tcp::serve(stream, id, hub.clone(), shared.clone(), permit);
        tracker.spawn(connection.instrument(span));
    }
}

/// Waits after an accept error, so a persistent one (out of file descriptors) does
/// not spin the loop; connection-specific ones are retried at once.
async fn backoff(error: &io::Error) {
    match error.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted => {}
        _ => {
            warn!(%error, "accept failed; retrying shortly");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
