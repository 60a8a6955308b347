//! Socket options shared by the server and the clients.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Prepares a connected socket: no Nagle delay (every write is a complete batch of
/// lines, so holding it back only adds latency), and dead-peer detection.
///
/// A peer that vanishes without FIN or RST is found by TCP keepalive probes while the
/// connection is idle, and by TCP_USER_TIMEOUT while data waits unacknowledged; both
/// give up after about `dead_peer_timeout`. Neither puts a byte into the stream, so a
/// plain `nc` viewer sees nothing of it.
///
/// # Errors
/// When the kernel refuses an option.
pub fn configure(stream: &TcpStream, dead_peer_timeout: Duration) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let socket = SockRef::from(stream);
    // Keepalive works in whole seconds.
    let second = Duration::from_secs(1);
    let keepalive = TcpKeepalive::new()
        .with_time((dead_peer_timeout / 2).max(second))
        .with_interval((dead_peer_timeout / 6).max(second))
        .with_retries(3);
    socket.set_tcp_keepalive(&keepalive)?;
    socket.set_tcp_user_timeout(Some(dead_peer_timeout))?;
    Ok(())
}

/// Whether the peer of `stream` has closed its end (FIN) or reset the connection,
/// found without reading: data it sent before may still wait unread. For a sender
/// whose input the server is holding back, so that its departure is noticed anyway.
pub fn is_peer_gone(stream: &TcpStream) -> bool {
    let mut poll = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: `poll` is a valid pollfd for the duration of the call, the count is 1,
    // and a zero timeout makes the call return at once; the descriptor is owned by
    // `stream`, which is borrowed for the call.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}
