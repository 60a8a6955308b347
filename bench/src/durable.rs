//! How the load generator speaks to servers that keep what they deliver (the durable
//! fan-out, `fanout --durable`, and `catchup`): tcpchat as always (it keeps its rooms'
//! history by default), Redis Streams and NATS JetStream with file storage.
//!
//! - Redis: senders `XADD bench MAXLEN ~ 100000 * p PAYLOAD` (pipelined; the replies,
//!   each entry's ID, are drained); each viewer its own connection looping on
//!   `XREAD BLOCK 0 STREAMS bench LAST-ID` from `0-0` (in [`crate::fanout`]).
//!   redis-server runs with its append-only file on (`appendfsync everysec`).
//! - NATS: one JetStream stream `bench` on subject `bench` with file storage, made
//!   afresh by the run; senders publish with a reply subject, so every message is
//!   acknowledged once stored (`PUB bench _INBOX.ack.N`, pipelined; the acks are
//!   drained); each viewer its own push consumer (ephemeral, `ack_policy none`, from
//!   the stream's start) delivering to a subject it subscribes to, whose deliveries
//!   are read as the core-NATS viewer reads its messages.
//!
//! NATS is spoken by hand as in [`crate::proto`]: JetStream's API is JSON requests
//! on `$JS.API.*` subjects, and its deliveries are ordinary `MSG`s.

use std::io;

use bytes::{BufMut, BytesMut};

use super::proto::{Payload, ROOM, Target, read_until};
use super::resp;
use super::server::Endpoint;
use super::transport::{BenchStream, Stream};

/// The most entries the Redis stream and the JetStream stream keep (Redis trims in
/// whole nodes, `MAXLEN ~`): as many as tcpchat's log keeps by default
/// (`--history-max-events`), a bound on every server's memory or disk. A viewer is
/// never that far behind (the fan-out's window is far smaller), so none loses any.
pub const KEEP: u64 = 100_000;

/// What the JSON results say each target was asked to do in a durable run.
pub fn protocol(target: Target) -> &'static str {
    match target {
        Target::Tcpchat | Target::TcpchatNohistory => "tcpchat line mode, history kept",
        Target::TcpchatFsync => "tcpchat line mode, history kept, --fsync",
        Target::Redis => "Redis Streams: XADD MAXLEN ~, XREAD BLOCK; AOF everysec",
        Target::Nats => "JetStream file storage: PUB with ack reply, push consumers",
        Target::Irc => "none",
    }
}

/// What the JSON results say each target was asked in a catch-up run.
pub fn catchup_protocol(target: Target) -> &'static str {
    match target {
        Target::Tcpchat | Target::TcpchatNohistory | Target::TcpchatFsync => {
            "viewer history=E tags"
        }
        Target::Redis => "XREVRANGE + - COUNT E",
        Target::Nats => "JetStream push consumer by_start_sequence",
        Target::Irc => "none",
    }
}

/// Prepares the room of a durable run: an empty Redis stream, a new JetStream stream
/// (a server given with `--addr` may hold a previous run's); nothing for tcpchat.
///
/// # Errors
/// When the server refuses or closes, or for IRC, which keeps nothing.
pub async fn open_room(endpoint: &Endpoint) -> io::Result<()> {
    match endpoint.target {
        Target::Tcpchat | Target::TcpchatNohistory | Target::TcpchatFsync => Ok(()),
        Target::Irc => Err(io::Error::other("an IRC server keeps no history to read")),
        Target::Redis => {
            let mut stream = endpoint.connector.connect(endpoint.addr, None).await?;
            let mut out = BytesMut::new();
            resp::command(&mut out, &[b"DEL", ROOM.as_bytes()]);
            stream.send(&out).await?;
            read_until(&mut stream, "DEL's reply", |l| l.starts_with(':')).await
        }
        Target::Nats => {
            let mut stream = endpoint.connector.connect(endpoint.addr, None).await?;
            stream
                .send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB _INBOX.setup 1\r\n")
                .await?;
            // "Not found" is as good as deleted.
            let _ = jetstream_request(
                &mut stream,
                &format!("$JS.API.STREAM.DELETE.{ROOM}"),
                "",
                "_INBOX.setup",
            )
            .await?;
            let config = format!(
                "{{\"name\":\"{ROOM}\",\"subjects\":[\"{ROOM}\"],\"storage\":\"file\",\
                 \"retention\":\"limits\",\"discard\":\"old\",\"max_msgs\":{KEEP},\"num_replicas\":1}}"
            );
            let response = jetstream_request(
                &mut stream,
                &format!("$JS.API.STREAM.CREATE.{ROOM}"),
                &config,
                "_INBOX.setup",
            )
            .await?;
            check_response(&response, "creating the stream")
        }
    }
}

/// Publishes `body` to `subject` with reply subject `inbox` (already subscribed to)
/// and returns the JSON response (the line after the `MSG` to `inbox`).
async fn jetstream_request(
    stream: &mut Stream,
    subject: &str,
    body: &str,
    inbox: &str,
) -> io::Result<String> {
    stream
        .send(format!("PUB {subject} {inbox} {}\r\n{body}\r\n", body.len()).as_bytes())
        .await?;
    let mut response = String::new();
    read_until(stream, "JetStream's response", |line| {
        if line.starts_with("{\"type\":\"io.nats.jetstream.api.") {
            line.clone_into(&mut response);
            true
        } else {
            false
        }
    })
    .await?;
    Ok(response)
}

/// An error if JetStream's `response` reports one.
fn check_response(response: &str, what: &str) -> io::Result<()> {
    if response.contains("\"error\":") {
        Err(io::Error::other(format!(
            "JetStream refused {what}: {response}"
        )))
    } else {
        Ok(())
    }
}

/// The request that makes viewer `id`'s push consumer: delivering to `d.ID`,
/// unacknowledged, from stream sequence `start` (from the stream's first message
/// without one).
pub fn consumer_request(id: usize, start: Option<u64>) -> String {
    let from = match start {
        Some(seq) => format!("\"deliver_policy\":\"by_start_sequence\",\"opt_start_seq\":{seq}"),
        None => "\"deliver_policy\":\"all\"".to_owned(),
    };
    let body = format!(
        "{{\"stream_name\":\"{ROOM}\",\"config\":{{\"deliver_subject\":\"d.{id}\",{from},\
         \"ack_policy\":\"none\",\"replay_policy\":\"instant\"}}}}"
    );
    format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB d.{id} 1\r\nSUB _INBOX.c{id} 2\r\n\
         PUB $JS.API.CONSUMER.CREATE.{ROOM} _INBOX.c{id} {}\r\n{body}\r\n",
        body.len()
    )
}

/// Makes `stream` a viewer of a durable run: for NATS, a push consumer of its own,
/// from the stream's start; for Redis nothing (the viewer's loop reads the stream).
///
/// # Errors
/// When the server refuses or closes.
pub async fn subscribe(target: Target, stream: &mut Stream, id: usize) -> io::Result<()> {
    match target {
        Target::Redis => Ok(()),
        Target::Nats => {
            stream.send(consumer_request(id, None).as_bytes()).await?;
            let mut response = String::new();
            read_until(stream, "the consumer", |line| {
                if line.contains("consumer_create_response") {
                    line.clone_into(&mut response);
                    true
                } else {
                    false
                }
            })
            .await?;
            check_response(&response, "the consumer")
        }
        _ => target.subscribe(stream, id).await,
    }
}

/// Makes `stream` a sender of a durable run (NATS: subscribed to its acks).
///
/// # Errors
/// When the server refuses or closes.
pub async fn join_sender(target: Target, stream: &mut Stream, sender: u16) -> io::Result<()> {
    match target {
        Target::Redis => Ok(()),
        Target::Nats => {
            stream
                .send(
                    format!(
                        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\n\
                         SUB _INBOX.ack.{sender} 1\r\nPING\r\n"
                    )
                    .as_bytes(),
                )
                .await?;
            read_until(stream, "PONG", |l| l == "PONG").await
        }
        _ => target.join_sender(stream, sender).await,
    }
}

/// Appends one message carrying `payload` to `out`, as a sender of a durable run
/// sends it.
pub fn encode(target: Target, payload: &Payload, size: usize, out: &mut BytesMut) {
    match target {
        Target::Redis => {
            let mut text = BytesMut::with_capacity(size);
            payload.encode(size, &mut text);
            resp::command(
                out,
                &[
                    b"XADD",
                    ROOM.as_bytes(),
                    b"MAXLEN",
                    b"~",
                    KEEP.to_string().as_bytes(),
                    b"*",
                    b"p",
                    &text,
                ],
            );
        }
        Target::Nats => {
            out.put_slice(
                format!("PUB {ROOM} _INBOX.ack.{} {size}\r\n", payload.sender).as_bytes(),
            );
            payload.encode(size, out);
            out.put_slice(b"\r\n");
        }
        _ => target.encode(payload, size, out),
    }
}

/// Appends the `XREAD` that waits for the entries after `last_id`.
pub fn xread(last_id: &[u8], out: &mut BytesMut) {
    resp::command(
        out,
        &[
            b"XREAD",
            b"BLOCK",
            b"0",
            b"STREAMS",
            ROOM.as_bytes(),
            last_id,
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_senders_end_their_commands_with_the_payload() {
        let payload = Payload {
            sender: 3,
            seq: 77,
            sent_ns: 123,
        };
        for target in [Target::Redis, Target::Nats, Target::Tcpchat] {
            let mut out = BytesMut::new();
            encode(target, &payload, 64, &mut out);
            let text = String::from_utf8(out.to_vec()).unwrap();
            let last = text.trim_end().lines().last().unwrap();
            assert_eq!(Payload::find(last.as_bytes(), 64), Some(payload), "{text}");
        }
        let mut out = BytesMut::new();
        encode(Target::Redis, &payload, 64, &mut out);
        assert!(
            String::from_utf8_lossy(&out).starts_with(
                "*8\r\n$4\r\nXADD\r\n$5\r\nbench\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$6\r\n100000\r\n$1\r\n*\r\n"
            ),
            "{out:?}"
        );
        let mut out = BytesMut::new();
        encode(Target::Nats, &payload, 64, &mut out);
        assert!(out.starts_with(b"PUB bench _INBOX.ack.3 64\r\nP"));
    }

    #[test]
    fn consumer_requests_are_well_formed() {
        let request = consumer_request(7, Some(42));
        let mut lines = request.lines();
        let publish = lines.find(|l| l.starts_with("PUB ")).unwrap();
        let body = lines.next().unwrap();
        assert_eq!(
            publish,
            format!("PUB $JS.API.CONSUMER.CREATE.bench _INBOX.c7 {}", body.len())
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["config"]["deliver_subject"], "d.7");
        assert_eq!(json["config"]["opt_start_seq"], 42);
        assert_eq!(json["config"]["ack_policy"], "none");
        let json: serde_json::Value =
            serde_json::from_str(consumer_request(1, None).lines().last().unwrap()).unwrap();
        assert_eq!(json["config"]["deliver_policy"], "all");
    }
}
