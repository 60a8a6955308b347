//! How the load generator speaks to each target: tcpchat's line mode, Redis pub/sub,
//! NATS and IRC. One room (channel, subject) per run.
//!
//! Every message's payload is `PAYLOAD_LEN`.. bytes at the very end of its line, in
//! every protocol, and starts with `P`: so one parser finds it in any of them.

use std::fmt;
use std::io;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncReadExt;

use super::server::Endpoint;
use super::transport::{BenchStream, Stream};

/// The server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// tcpchat, line mode, with its defaults (the room's history kept, in a fresh
    /// `--data-dir` for each run).
    Tcpchat,
    /// tcpchat, line mode, with `--history off` (nothing kept, no disk).
    #[serde(rename = "tcpchat-nohistory")]
    TcpchatNohistory,
    /// tcpchat, line mode, with its defaults and `--fsync` (the history kept, every
    /// commit of its log waiting for the disk).
    #[serde(rename = "tcpchat-fsync")]
    TcpchatFsync,
    /// redis-server, SUBSCRIBE / PUBLISH.
    Redis,
    /// nats-server, SUB / PUB.
    Nats,
    /// An IRC server (InspIRCd), JOIN / PRIVMSG.
    Irc,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcpchat => "tcpchat",
            Self::TcpchatNohistory => "tcpchat-nohistory",
            Self::TcpchatFsync => "tcpchat-fsync",
            Self::Redis => "redis",
            Self::Nats => "nats",
            Self::Irc => "irc",
        })
    }
}

/// The smallest payload: `P`, 4 hex digits of sender, 8 of sequence, 16 of timestamp.
pub const MIN_PAYLOAD: usize = 29;

/// A message as the load generator encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// Which sender.
    pub sender: u16,
    /// Its position in that sender's stream, from 0.
    pub seq: u32,
    /// When it was sent: nanoseconds since the run's start.
    pub sent_ns: u64,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl Payload {
    /// Appends the payload, padded with `x` to `size` bytes.
    pub fn encode(&self, size: usize, out: &mut BytesMut) {
        out.put_u8(b'P');
        for shift in (0..4).rev() {
            out.put_u8(HEX[usize::from((self.sender >> (shift * 4)) & 0xf)]);
        }
        for shift in (0..8).rev() {
            out.put_u8(HEX[((self.seq >> (shift * 4)) & 0xf) as usize]);
        }
        for shift in (0..16).rev() {
            out.put_u8(HEX[((self.sent_ns >> (shift * 4)) & 0xf) as usize]);
        }
        out.put_bytes(b'x', size.saturating_sub(MIN_PAYLOAD));
    }

    /// Finds the payload at the end of `line` (without its line terminator).
    pub fn find(line: &[u8], size: usize) -> Option<Self> {
        let start = line.len().checked_sub(size)?;
        let payload = &line[start..];
        if payload.first() != Some(&b'P') {
            return None;
        }
        Some(Self {
            sender: u16::try_from(hex(&payload[1..5])?).ok()?,
            seq: u32::try_from(hex(&payload[5..13])?).ok()?,
            sent_ns: hex(&payload[13..29])?,
        })
    }
}

fn hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(v))
    })
}

/// The room every client of a run uses (Redis channel and stream, NATS subject and
/// JetStream stream).
pub const ROOM: &str = "bench";

/// Reads until `done` says the handshake is over, answering pings on the way.
pub async fn read_until(
    stream: &mut Stream,
    what: &str,
    mut done: impl FnMut(&str) -> bool,
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(end + 1);
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end();
            if let Some(token) = line.strip_prefix("PING") {
                stream.send(format!("PONG{token}\r\n").as_bytes()).await?;
            }
            if done(line) {
                return Ok(());
            }
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("closed while waiting for {what}"),
            ));
        }
    }
}

impl Target {
    /// Makes `stream` a member of the room that receives every message.
    ///
    /// # Errors
    /// When the server refuses or closes.
    pub async fn subscribe(self, stream: &mut Stream, id: usize) -> io::Result<()> {
        match self {
            Self::Tcpchat | Self::TcpchatNohistory | Self::TcpchatFsync => {
                stream.send(b"viewer\n").await?;
                read_until(stream, "the welcome", |l| l.starts_with("Welcome")).await
            }
            Self::Redis => {
                stream
                    .send(format!("SUBSCRIBE {ROOM}\r\n").as_bytes())
                    .await?;
                // *3 $9 subscribe $5 bench :1
                read_until(stream, "the subscription", |l| l.starts_with(':')).await
            }
            Self::Nats => {
                stream
                    .send(
                        format!(
                            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {ROOM} 1\r\nPING\r\n"
                        )
                        .as_bytes(),
                    )
                    .await?;
                read_until(stream, "PONG", |l| l == "PONG").await
            }
            Self::Irc => {
                irc_register(stream, &format!("v{id}")).await?;
                stream.send(format!("JOIN #{ROOM}\r\n").as_bytes()).await?;
                // 366: end of the member list.
                read_until(stream, "the join", |l| irc_numeric(l) == Some("366")).await
            }
        }
    }

    /// Makes `stream` a sender. The first IRC sender also makes the channel quiet
    /// about joins (auditorium mode), so a big channel is not a join storm.
    ///
    /// # Errors
    /// When the server refuses or closes.
    pub async fn join_sender(self, stream: &mut Stream, sender: u16) -> io::Result<()> {
        match self {
            Self::Tcpchat | Self::TcpchatNohistory | Self::TcpchatFsync => {
                stream.send(format!("name:b{sender}\n").as_bytes()).await?;
                read_until(stream, "the acknowledgement", |l| l.starts_with("*** ok")).await
            }
            Self::Redis => Ok(()),
            Self::Nats => {
                stream
                    .send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
                    .await?;
                read_until(stream, "PONG", |l| l == "PONG").await
            }
            Self::Irc => {
                irc_register(stream, &format!("s{sender}")).await?;
                stream.send(format!("JOIN #{ROOM}\r\n").as_bytes()).await?;
                read_until(stream, "the join", |l| irc_numeric(l) == Some("366")).await
            }
        }
    }

    /// Prepares the room before anyone joins (IRC: channel modes set by its first
    /// member, who stays).
    ///
    /// # Errors
    /// When the server refuses or closes.
    pub async fn open_room(self, endpoint: &Endpoint) -> io::Result<Option<Stream>> {
        if self != Self::Irc {
            return Ok(None);
        }
        let mut owner = endpoint.connector.connect(endpoint.addr, None).await?;
        irc_register(&mut owner, "owner").await?;
        owner
            .send(format!("JOIN #{ROOM}\r\nMODE #{ROOM} +u\r\n").as_bytes())
            .await?;
        read_until(&mut owner, "the mode change", |l| {
            l.contains(" MODE ") && l.contains("+u")
        })
        .await?;
        Ok(Some(owner))
    }

    /// What the JSON results say this target's clients speak (outside the durable
    /// workloads).
    pub fn protocol(self) -> &'static str {
        match self {
            Self::Tcpchat => "tcpchat line mode, history kept",
            Self::TcpchatNohistory => "tcpchat line mode, --history off",
            Self::TcpchatFsync => "tcpchat line mode, history kept, --fsync",
            Self::Redis => "Redis pub/sub",
            Self::Nats => "core NATS",
            Self::Irc => "IRC",
        }
    }

    /// Whether this is tcpchat (with or without history, with or without fsync):
    /// line mode.
    pub fn is_tcpchat(self) -> bool {
        matches!(
            self,
            Self::Tcpchat | Self::TcpchatNohistory | Self::TcpchatFsync
        )
    }

    /// Appends one message carrying `payload` to `out`, as a sender sends it.
    pub fn encode(self, payload: &Payload, size: usize, out: &mut BytesMut) {
        match self {
            Self::Tcpchat | Self::TcpchatNohistory | Self::TcpchatFsync => {
                payload.encode(size, out);
                out.put_u8(b'\n');
            }
            Self::Redis => {
                out.put_slice(
                    format!("*3\r\n$7\r\nPUBLISH\r\n$5\r\n{ROOM}\r\n${size}\r\n").as_bytes(),
                );
                payload.encode(size, out);
                out.put_slice(b"\r\n");
            }
            Self::Nats => {
                out.put_slice(format!("PUB {ROOM} {size}\r\n").as_bytes());
                payload.encode(size, out);
                out.put_slice(b"\r\n");
            }
            Self::Irc => {
                out.put_slice(format!("PRIVMSG #{ROOM} :").as_bytes());
                payload.encode(size, out);
                out.put_slice(b"\r\n");
            }
        }
    }
}

async fn irc_register(stream: &mut Stream, nick: &str) -> io::Result<()> {
    stream
        .send(format!("NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n").as_bytes())
        .await?;
    // 001: welcome; registration is complete.
    read_until(stream, "registration", |l| irc_numeric(l) == Some("001")).await
}

fn irc_numeric(line: &str) -> Option<&str> {
    let mut words = line.split(' ');
    let first = words.next()?;
    if first.starts_with(':') {
        words.next()
    } else {
        Some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_at_the_end_of_any_protocol_line() {
        let payload = Payload {
            sender: 0xbeef,
            seq: 123_456,
            sent_ns: 9_876_543_210,
        };
        for target in [Target::Tcpchat, Target::Redis, Target::Nats, Target::Irc] {
            let mut out = BytesMut::new();
            target.encode(&payload, 64, &mut out);
            let text = String::from_utf8(out.to_vec()).unwrap();
            let last = text.trim_end().lines().last().unwrap();
            assert_eq!(
                Payload::find(last.as_bytes(), 64),
                Some(payload),
                "{target}"
            );
        }
        // As a viewer sees it from each server.
        let mut p = BytesMut::new();
        payload.encode(64, &mut p);
        let p = String::from_utf8(p.to_vec()).unwrap();
        for line in [
            format!("b7: {p}"),
            p.clone(),
            format!(":s1!s1@127.0.0.1 PRIVMSG #bench :{p}"),
        ] {
            assert_eq!(Payload::find(line.as_bytes(), 64), Some(payload));
        }
        assert_eq!(Payload::find(b"b7 has joined the chat.", 64), None);
    }
}
