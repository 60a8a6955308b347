//! The TCP transport, seed and line mode: accepting a connection into the room.
//!
//! A connection first runs its handshake, under its own timeout and with the seed
//! grace period when its first read is exactly a seed handshake, then joins the room
//! and hands over to its [`Session`](super::session::Session) for the rest of its
//! life, and finally closes in good order. The handshake, the join and the close are
//! boxed: only the session's small state stays in every connection's task.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Sleep, sleep};
use tracing::{debug, info};

use super::Shared;
use super::accept::Admission;
use super::limits::TokenBucket;
use super::session::{Feed, Joined, Session};
use crate::hub::ring::Subscriber;
use crate::hub::{Command, HubError, HubHandle};
use crate::protocol::handshake::{HandshakeReader, Outcome, Step};
use crate::protocol::wire::Notice;
use crate::protocol::{Hello, Mode};
use crate::room::ConnId;
use crate::socket;

/// How long a refused or closing client gets to read its last line and close its end.
pub(super) const LINGER: Duration = Duration::from_secs(1);

/// How much of a closing client's input is read and dropped while it lingers. A
/// client still flooding past this is cut off with a reset.
const LINGER_BYTES: usize = 64 * 1024;

/// Serves one connection from accept to close.
///
/// Not an `async fn`: its arguments would stay in the task for its whole life. They
/// move into the boxed admission instead, and only the session stays.
pub(super) fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    id: ConnId,
    hub: HubHandle,
    shared: Arc<Shared>,
    admission: Admission,
) -> impl Future<Output = ()> + Send {
    let admitted = Box::pin(admit(stream, peer, id, hub, shared, admission));
    async move {
        let Some(mut session) = admitted.await else {
            return;
        };
        let end = session.run().await;
        // Boxed: the close's state is needed once, not kept in every connection.
        Box::pin(session.finish(end)).await;
    }
}

/// The handshake and the join: a running session, or `None` if the connection was
/// refused (and closed) or went away.
async fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    id: ConnId,
    hub: HubHandle,
    shared: Arc<Shared>,
    admission: Admission,
) -> Option<Session> {
    if let Err(error) = socket::configure(&stream, shared.config.dead_peer_timeout) {
        debug!(conn = %id, %error, "could not set socket options");
    }
    let mut membership = Membership::new(id);
    let (hello, rest) = match handshake(&stream, id, &hub, &shared, &mut membership).await {
        Handshaken::Hello { hello, rest } => (hello, rest),
        Handshaken::Refused { mode, code, reason } => {
            info!(conn = %id, %peer, %reason, %mode, "refused");
            membership.leave().await;
            let notice = (mode == Mode::Line).then(|| Notice::error(code, &reason).to_line());
            close_gracefully(&stream, notice, LINGER).await;
            return None;
        }
        Handshaken::Closed => {
            membership.leave().await;
            return None;
        }
    };

    let waker = Arc::new(Subscriber::default());
    let cursor = match hub
        .join(id, hello.role, hello.name.clone(), waker.clone())
        .await
    {
        Ok(cursor) => cursor,
        Err(HubError::Join(error)) => {
            info!(conn = %id, %peer, reason = %error, mode = %hello.mode, "refused");
            let notice =
                (hello.mode == Mode::Line).then(|| Notice::error(error.code(), &error).to_line());
            close_gracefully(&stream, notice, LINGER).await;
            return None;
        }
        Err(HubError::Stopped) => return None,
    };
    membership.arm(hub.sender().clone());
    match &hello.name {
        Some(name) => {
            info!(conn = %id, %peer, role = %hello.role, name, mode = %hello.mode, "joined")
        }
        None => info!(conn = %id, %peer, role = %hello.role, mode = %hello.mode, "joined"),
    }

    let feed = hello.role.receives().then(|| Feed {
        next: cursor.index,
        delivered: cursor.offset(hello.mode),
        until: u64::MAX,
    });
    let bucket = (admission.flood_controlled && hello.role.sends()).then(|| {
        TokenBucket::new(
            shared.config.flood_rate,
            shared.config.flood_burst,
            std::time::Instant::now(),
        )
    });
    let joined = Joined {
        hello,
        rest,
        feed,
        bucket,
        waker,
    };
    // The session takes the hub's inbox only if it posts: at shutdown the hub stops
    // once every sender is gone, and a viewer must not keep it waiting.
    let tx = hub.sender().clone();
    Some(Session::new(
        stream, joined, tx, membership, shared, admission,
    ))
}

enum Handshaken {
    Hello {
        hello: Hello,
        rest: Vec<Bytes>,
    },
    Refused {
        mode: Mode,
        code: &'static str,
        reason: String,
    },
    /// The peer went away, or the server is stopping.
    Closed,
}

async fn handshake(
    stream: &TcpStream,
    id: ConnId,
    hub: &HubHandle,
    shared: &Shared,
    membership: &mut Membership,
) -> Handshaken {
    let config = &shared.config;
    let mut reader = HandshakeReader::new(config.max_handshake_bytes, config.max_name_chars);
    let deadline = sleep(config.handshake_timeout);
    tokio::pin!(deadline);
    let mut grace: Option<Pin<Box<Sleep>>> = None;
    let mut buf = [0u8; 512];
    let outcome = loop {
        tokio::select! {
            () = shared.stop.cancelled() => return Handshaken::Closed,
            () = &mut deadline => break reader.timed_out(),
            () = elapsed(&mut grace) => break reader.conclude_seed(),
            ready = stream.readable() => {
                if let Err(error) = ready {
                    debug!(%error, "gone during the handshake");
                    return Handshaken::Closed;
                }
                let n = match stream.try_read(&mut buf) {
                    // A seed client may send its handshake and a message, then close.
                    Ok(0) if grace.is_some() => break reader.conclude_seed(),
                    Ok(0) => {
                        debug!("closed during the handshake");
                        return Handshaken::Closed;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(error) => {
                        debug!(%error, "gone during the handshake");
                        return Handshaken::Closed;
                    }
                };
                match reader.push(&buf[..n]) {
                    Step::NeedMore => {}
                    Step::Done(outcome) => break outcome,
                    Step::SeedCandidate { name, .. } => {
                        grace = Some(Box::pin(sleep(config.seed_grace)));
                        // Hold the name now, so an original Messenger, which takes
                        // "still connected after 10 ms" as accepted, is refused in time.
                        if let Some(name) = name {
                            match hub.reserve(id, name).await {
                                Ok(()) => membership.arm(hub.sender().clone()),
                                Err(HubError::Join(error)) => {
                                    return Handshaken::Refused {
                                        mode: Mode::Seed,
                                        code: error.code(),
                                        reason: error.to_string(),
                                    };
                                }
                                Err(HubError::Stopped) => return Handshaken::Closed,
                            }
                        }
                    }
                }
            }
        }
    };
    match outcome {
        Outcome::Hello { hello, rest } => Handshaken::Hello { hello, rest },
        Outcome::Refused { mode, error } => Handshaken::Refused {
            mode,
            code: error.code(),
            reason: error.to_string(),
        },
    }
}

/// Tells the hub that a member is gone, exactly once, however its task ends.
pub(super) struct Membership {
    id: ConnId,
    tx: Option<mpsc::Sender<Command>>,
}

impl Membership {
    fn new(id: ConnId) -> Self {
        Self { id, tx: None }
    }

    /// The member.
    pub(super) fn id(&self) -> ConnId {
        self.id
    }

    /// From now on, the end of this connection is a departure from the room.
    fn arm(&mut self, tx: mpsc::Sender<Command>) {
        self.tx = Some(tx);
    }

    pub(super) async fn leave(&mut self) {
        if let Some(tx) = self.tx.take() {
            // Fails only if the hub has stopped, and then the room is gone anyway.
            let _ = tx
                .send(Command::Leave {
                    id: self.id,
                    published: None,
                })
                .await;
        }
    }

    /// At shutdown the room ends with the server: nobody is announced as leaving,
    /// and the hub may stop once every connection has let go of its inbox.
    pub(super) fn forget(&mut self) {
        self.tx = None;
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        // Only reached when a task ends without `leave` (cancelled, or a bug): the
        // name must still be freed.
        if let Err(mpsc::error::TrySendError::Full(leave)) = tx.try_send(Command::Leave {
            id: self.id,
            published: None,
        }) && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = tx.send(leave).await;
            });
        }
    }
}

async fn elapsed(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Writes `bytes`, waiting for the socket as needed.
async fn write_all(stream: &TcpStream, mut bytes: Bytes) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(&bytes) {
            Ok(n) => bytes.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `last_words`, then FIN, then reads until the peer closes too, so data it
/// sent meanwhile does not turn the close into a reset that could destroy the last
/// words. Gives up after `within`, or after [`LINGER_BYTES`] of further input.
pub(super) async fn close_gracefully(
    stream: &TcpStream,
    last_words: Option<Bytes>,
    within: Duration,
) {
    let closing = async {
        if let Some(bytes) = last_words {
            write_all(stream, bytes).await?;
        }
        SockRef::from(stream).shutdown(std::net::Shutdown::Write)?;
        let mut scratch = [0u8; 512];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            stream.readable().await?;
            match stream.try_read(&mut scratch) {
                Ok(0) => return Ok(()),
                Ok(n) => drained += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let result: Result<io::Result<()>, _> = tokio::time::timeout(within, closing).await;
    if let Ok(Err(error)) = result {
        debug!(%error, "unclean close");
    }
}
