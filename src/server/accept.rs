//! The accept loop: connection limit, one task per connection.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::limits::{AddressSlot, PerAddress};
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
    let per_address = PerAddress::new(shared.config.max_connections_per_ip);
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
        // Loopback clients are the operator's own, unless told otherwise.
        let limited = !peer.ip().is_loopback() || shared.config.no_loopback_exemption;
        let address = if limited {
            let Some(slot) = per_address.try_acquire(peer.ip()) else {
                info!(
                    conn = %id,
                    %peer,
                    max_connections_per_ip = shared.config.max_connections_per_ip,
                    "refused: too many connections from this address"
                );
                continue;
            };
            Some(slot)
        } else {
            None
        };
        let admission = Admission {
            _permit: permit,
            _address: address,
            flood_controlled: limited,
        };
        // No span per connection: it would be kept for the connection's whole life, a
        // few hundred bytes each; events carry `conn` (and `peer` at join) instead.
        let connection = tcp::serve(stream, peer, id, hub.clone(), shared.clone(), admission);
        tracker.spawn(connection);
    }
}

/// What a connection holds for being let in: its place under the limits, given back
/// when it ends.
pub(super) struct Admission {
    _permit: OwnedSemaphorePermit,
    _address: Option<AddressSlot>,
    /// Whether its posts go through flood control.
    pub(super) flood_controlled: bool,
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
