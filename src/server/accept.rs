//! The accept loop of one listener, plain TCP or TLS: admission, socket options, the
//! handshake deadline, one task per connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::admission::Gate;
use super::stream::{self, Arrival, Framing};
use crate::hub::Hub;
use crate::room::ConnId;
use crate::socket;
use crate::tls::Certificates;

/// What a listener's connections are wrapped in.
#[derive(Debug, Clone)]
pub(super) enum Transport {
    /// Plain TCP: seed mode and line mode.
    Plain,
    /// TLS: line mode only.
    Tls(Arc<Certificates>),
}

impl Transport {
    /// How the transport is named in logs and metrics.
    fn name(&self) -> &'static str {
        match self {
            Self::Plain => "tcp",
            Self::Tls(_) => "tls",
        }
    }
}

/// What every accept loop shares.
#[derive(Debug, Clone)]
pub(super) struct Listening {
    pub(super) hub: Hub,
    /// The settings connections take when they arrive.
    pub(super) settings: Arc<super::Settings>,
    pub(super) gate: Arc<Gate>,
    /// The last connection id handed out, across listeners.
    pub(super) ids: Arc<AtomicU64>,
    pub(super) tracker: TaskTracker,
}

/// Accepts connections until the task is dropped (when shutdown begins).
pub(super) async fn run(listener: TcpListener, transport: Transport, listening: Listening) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                backoff(&e).await;
                continue;
            }
        };
        // An IPv4 client of a dual-stack socket arrives as ::ffff:a.b.c.d: it is
        // logged, limited and banned as the IPv4 address it is.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let id = ConnId(listening.ids.fetch_add(1, Ordering::Relaxed) + 1);
        let metrics = listening.hub.metrics();
        let admission = match listening.gate.admit(id, peer, transport.name()) {
            Ok(admission) => admission,
            Err(reason) => {
                metrics.refused(reason);
                continue;
            }
        };
        metrics
            .connections_accepted
            .get_or_create(&crate::metrics::Transport {
                transport: transport.name().to_owned(),
            })
            .inc();
        let config = &listening.settings.current();
        if let Err(error) = socket::configure(&stream, config.dead_peer_timeout) {
            debug!(conn = %id, %error, "could not set socket options");
        }
        // One deadline for everything before the room: the TLS handshake, then ours.
        let arrival = Arrival {
            peer,
            id,
            hub: listening.hub.clone(),
            config: config.clone(),
            admission,
            password: listening.gate.password(),
            bans: listening.gate.bans(),
            deadline: Instant::now() + config.handshake_timeout,
            framing: Framing::Stream {
                seed_allowed: matches!(transport, Transport::Plain),
            },
        };
        // No span per connection: it would be kept for the connection's whole life, a
        // few hundred bytes each; events carry `conn` (and `peer` at join) instead.
        match &transport {
            Transport::Plain => {
                listening.tracker.spawn(stream::serve(stream, arrival));
            }
            Transport::Tls(certificates) => {
                let acceptor = TlsAcceptor::from(certificates.current());
                listening
                    .tracker
                    .spawn(serve_tls(stream, acceptor, arrival));
            }
        }
    }
}

/// The TLS handshake, under the connection's handshake deadline, then the session.
async fn serve_tls(stream: TcpStream, acceptor: TlsAcceptor, arrival: Arrival) {
    let handshake = Box::pin(tls_handshake(stream, acceptor, &arrival));
    let Some(tls) = handshake.await else {
        return;
    };
    stream::serve(tls, arrival).await;
}

async fn tls_handshake(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    arrival: &Arrival,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let (id, peer) = (arrival.id, arrival.peer);
    tokio::select! {
        () = arrival.hub.stopping() => None,
        accepted = tokio::time::timeout_at(arrival.deadline, acceptor.accept(stream)) => match accepted {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(error)) => {
                let reason = "tls-handshake-failed";
                info!(conn = %id, %peer, transport = %"tls", %reason, %error, "refused");
                arrival.hub.metrics().refused(reason);
                None
            }
            Err(_) => {
                let reason = "handshake-timeout";
                info!(conn = %id, %peer, transport = %"tls", %reason, "refused");
                arrival.hub.metrics().refused(reason);
                arrival.hub.metrics().handshake_timeouts.inc();
                None
            }
        },
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

/// The address a listener serves on, for the log.
pub(super) fn local_address(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
