//! Socket options shared by the server and the clients.

use std::io;
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
