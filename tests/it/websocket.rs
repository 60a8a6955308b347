//! WebSocket members (`GET /ws`): the same room, the same rules, one line per text
//! frame. Most tests use a WebSocket client crate (tokio-tungstenite), which also
//! checks every frame the server writes; the ones about malformed or unanswered
//! frames write raw frames.

use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tcpchat::protocol::websocket::{client_frame, opcode, read_server_frames};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{WebSocketStream, client_async};

use crate::common::*;

type Ws = WebSocketStream<Stream>;

const MASK: [u8; 4] = [1, 2, 3, 4];

/// The transport the test server's HTTP listener speaks (it has a certificate).
fn http_transport(server: &TestServer) -> Transport {
    if server.tls_addr == server.addr {
        Transport::Tcp
    } else {
        Transport::Tls
    }
}

/// A WebSocket connection to `/ws`, upgraded (with `origin`, if given).
async fn connect_with(server: &TestServer, origin: Option<&str>) -> Ws {
    let tcp = TcpStream::connect(server.http_addr).await.expect("connect");
    let stream = over(tcp, http_transport(server)).await;
    let mut request = format!("ws://{}/ws", server.http_addr)
        .into_client_request()
        .expect("request");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().expect("header"));
    }
    let (ws, response) = within("the upgrade", client_async(request, stream))
        .await
        .expect("upgrade");
    assert_eq!(response.status(), 101);
    ws
}

/// A WebSocket member that sent `handshake` as its first frame.
async fn join(server: &TestServer, handshake: &str) -> Ws {
    let mut ws = connect_with(server, None).await;
    send(&mut ws, handshake).await;
    ws
}

async fn send(ws: &mut Ws, text: &str) {
    within("a send", ws.send(Message::text(text)))
        .await
        .expect("send");
}

/// The next text frame (pings are answered by the client crate on the way).
async fn text(ws: &mut Ws) -> String {
    loop {
        match within("a text frame", ws.next()).await {
            Some(Ok(Message::Text(text))) => return text.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The text frames up to the close frame, and the close's code and reason.
async fn until_close(ws: &mut Ws) -> (Vec<String>, u16, String) {
    let mut texts = Vec::new();
    loop {
        match within("the close", ws.next()).await {
            Some(Ok(Message::Text(text))) => texts.push(text.to_string()),
            Some(Ok(Message::Close(Some(frame)))) => {
                return (texts, u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a close frame, got {other:?} after {texts:?}"),
        }
    }
}

/// Strips the tags of a tagged line.
fn untagged(line: &str) -> &str {
    match line.strip_prefix('@') {
        Some(tagged) => tagged.split_once(' ').map_or(line, |(_, text)| text),
        None => line,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_tcp_members_share_one_room_and_see_the_same_lines() {
    let server = start_server(config()).await;
    let mut tcp_viewer = Client::connect(server.addr).await;
    tcp_viewer.send(b"viewer tags\n").await;
    let mut ws_viewer = join(&server, "viewer tags").await;
    let welcome = tcp_viewer.line().await;
    assert_eq!(text(&mut ws_viewer).await, welcome);

    let mut ws_alice = join(&server, "chat:alice").await;
    assert_eq!(text(&mut ws_alice).await, WELCOME);
    let mut bob = Client::messenger(server.addr, "bob").await;
    send(&mut ws_alice, "hello from a browser").await;
    assert_eq!(text(&mut ws_alice).await, "alice has joined the chat.");
    assert_eq!(text(&mut ws_alice).await, "bob has joined the chat.");
    assert_eq!(text(&mut ws_alice).await, "alice: hello from a browser");
    bob.send(b"hello from nc\n").await;
    assert_eq!(text(&mut ws_alice).await, "bob: hello from nc");
    // Multi-byte text and a line that needs the 16-bit length.
    let long = format!("é {}", "x".repeat(300));
    send(&mut ws_alice, &long).await;
    assert_eq!(text(&mut ws_alice).await, format!("alice: {long}"));
    drop(bob);

    let mut tcp_lines = Vec::new();
    let mut ws_lines = Vec::new();
    for _ in 0..6 {
        tcp_lines.push(tcp_viewer.line().await);
        ws_lines.push(text(&mut ws_viewer).await);
    }
    // Byte for byte the same lines, numbers and times included.
    assert_eq!(ws_lines, tcp_lines);
    let texts: Vec<&str> = ws_lines.iter().map(|line| untagged(line)).collect();
    assert_eq!(
        texts,
        [
            "alice has joined the chat.",
            "bob has joined the chat.",
            "alice: hello from a browser",
            "bob: hello from nc",
            &format!("alice: {long}"),
            "bob has left the chat",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_options_history_members_and_a_token_takeover_work_over_websocket() {
    let server = start_server_without_tls(config()).await;
    let mut watcher = Client::viewer(server.addr).await;
    let mut bob = Client::messenger(server.addr, "bob").await;
    for i in 0..5 {
        bob.send(format!("line {i}\n").as_bytes()).await;
    }
    // In the log before alice comes.
    assert_eq!(watcher.line().await, "bob has joined the chat.");
    for i in 0..5 {
        assert_eq!(watcher.line().await, format!("bob: line {i}"));
    }
    let mut alice = join(&server, "chat:alice tags history=3 members").await;
    assert_eq!(
        text(&mut alice).await,
        format!("@seq=6 {WELCOME}"),
        "1 join + 5 lines"
    );
    let token = text(&mut alice).await;
    let secret = token
        .strip_prefix("*** token: ")
        .expect("a token line")
        .to_owned();
    assert_eq!(text(&mut alice).await, "*** members 2: alice bob");
    let replay: Vec<String> = [
        text(&mut alice).await,
        text(&mut alice).await,
        text(&mut alice).await,
    ]
    .into_iter()
    .map(|line| untagged(&line).to_owned())
    .collect();
    assert_eq!(replay, ["bob: line 2", "bob: line 3", "bob: line 4"]);
    assert!(
        text(&mut alice)
            .await
            .ends_with(" alice has joined the chat.")
    );
    send(&mut alice, "@id=m1 first").await;
    let landed = text(&mut alice).await;
    assert!(landed.contains(";id=m1 alice: first"), "{landed}");
    let seq = landed
        .strip_prefix("@seq=")
        .and_then(|rest| rest.split(';').next())
        .expect("a number")
        .to_owned();

    // A second tab takes the name over with the secret, resuming after `first`.
    let mut again = join(
        &server,
        &format!("chat:alice tags since={seq} token={secret}"),
    )
    .await;
    assert!(text(&mut again).await.starts_with("@seq="));
    assert!(text(&mut again).await.starts_with("*** token: "));
    let (lines, code, reason) = until_close(&mut alice).await;
    assert_eq!(
        lines.last().map(String::as_str),
        Some("*** error replaced: a new connection took this name over with its secret")
    );
    assert_eq!((code, reason.as_str()), (1008, "replaced"));
    // The resent line is ignored, a new one lands.
    send(&mut again, "@id=m1 first").await;
    send(&mut again, "@id=m2 second").await;
    let next = text(&mut again).await;
    assert!(next.contains(";id=m2 alice: second"), "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_name_is_refused_with_the_error_line_and_a_policy_close() {
    let server = start_server(config()).await;
    let _bob = Client::messenger(server.addr, "bob").await;
    let mut ws = join(&server, "chat:bob").await;
    let (lines, code, reason) = until_close(&mut ws).await;
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with("*** error name-taken: "), "{lines:?}");
    assert_eq!((code, reason.as_str()), (1008, "name-taken"));
}

/// A raw WebSocket client: the upgrade by hand, then frames as the test writes them.
struct Raw {
    stream: Stream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(server: &TestServer, extra_headers: &str) -> (u16, Self) {
        let tcp = TcpStream::connect(server.http_addr).await.expect("connect");
        Self::upgrade(
            over(tcp, http_transport(server)).await,
            server,
            extra_headers,
        )
        .await
    }

    async fn upgrade(mut stream: Stream, server: &TestServer, extra: &str) -> (u16, Self) {
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n",
            server.http_addr
        );
        stream.write_all(request.as_bytes()).await.expect("request");
        let mut buf = BytesMut::new();
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = within("the upgrade's answer", stream.read_buf(&mut buf))
                .await
                .expect("read");
            assert!(n > 0, "closed before answering: {buf:?}");
        };
        let head = String::from_utf8_lossy(&buf.split_to(head_end)).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("a status");
        if status == 101 {
            assert!(
                head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                    || head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                "{head}"
            );
        }
        (status, Self { stream, buf })
    }

    async fn write(&mut self, bytes: &[u8]) {
        within("a write", self.stream.write_all(bytes))
            .await
            .expect("write");
    }

    async fn text(&mut self, text: &str) {
        self.write(&client_frame(opcode::TEXT, true, text.as_bytes(), MASK))
            .await;
    }

    /// Every frame until the server closes the connection: `(opcode, payload)`.
    /// Within 10 s in all (a peer kept alive by pings would never end otherwise).
    async fn frames_until_eof(&mut self) -> Vec<(u8, String)> {
        let until = tokio::time::Instant::now() + 2 * WAIT;
        loop {
            match tokio::time::timeout_at(until, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => panic!("not closed within {:?}", 2 * WAIT),
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(_)) => {}
            }
        }
        let frames = read_server_frames(&mut self.buf);
        assert!(self.buf.is_empty(), "a frame cut short: {:?}", self.buf);
        frames
            .into_iter()
            .map(|(op, payload)| (op, readable(op, &payload)))
            .collect()
    }

    /// The next whole frame.
    async fn frame(&mut self) -> (u8, String) {
        loop {
            if let Some(frame) = first_frame(&mut self.buf) {
                return frame;
            }
            let n = within("a frame", self.stream.read_buf(&mut self.buf))
                .await
                .expect("read");
            assert!(n > 0, "closed while waiting for a frame");
        }
    }
}

/// The first whole server frame in `buf`, taken off it.
fn first_frame(buf: &mut BytesMut) -> Option<(u8, String)> {
    let [first, second, ..] = buf[..] else {
        return None;
    };
    let (header, len) = match second & 0x7F {
        126 if buf.len() >= 4 => (4, usize::from(u16::from_be_bytes([buf[2], buf[3]]))),
        126 | 127 => return None, // this suite's frames are all shorter
        short => (2, usize::from(short)),
    };
    if buf.len() < header + len {
        return None;
    }
    let frame = buf.split_to(header + len);
    let op = first & 0x0F;
    Some((op, readable(op, &frame[header..])))
}

/// A frame's payload as text; a close frame's as `CODE REASON`.
fn readable(op: u8, payload: &[u8]) -> String {
    match payload {
        [high, low, reason @ ..] if op == opcode::CLOSE => format!(
            "{} {}",
            u16::from_be_bytes([*high, *low]),
            String::from_utf8_lossy(reason)
        ),
        _ => String::from_utf8_lossy(payload).into_owned(),
    }
}

/// The close frame's code in a `(opcode, payload)` pair.
fn close_code(frame: &(u8, String)) -> Option<u16> {
    let (code, _) = frame.1.split_once(' ')?;
    (frame.0 == opcode::CLOSE).then(|| code.parse().ok())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_an_error_line_and_their_close_codes_and_cost_no_one_else_anything() {
    let server = start_server_without_tls(Config {
        max_message_bytes: 64,
        ..config()
    })
    .await;
    let mut viewer = Client::connect(server.addr).await;
    viewer.send(b"viewer\n").await;
    assert_eq!(viewer.line().await, WELCOME);

    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "binary",
            client_frame(opcode::BINARY, true, b"bytes", MASK),
            1003,
            "*** error binary-frame: ",
        ),
        (
            "oversized",
            client_frame(opcode::TEXT, true, &[b'a'; 65], MASK),
            1009,
            "*** error message-too-long: ",
        ),
        (
            "fragments over the limit",
            [
                client_frame(opcode::TEXT, false, &[b'a'; 40], MASK),
                client_frame(opcode::CONTINUATION, true, &[b'a'; 40], MASK),
            ]
            .concat(),
            1009,
            "*** error message-too-long: ",
        ),
        (
            "unmasked",
            b"\x81\x02hi".to_vec(),
            1002,
            "*** error bad-frame: ",
        ),
        (
            "not UTF-8",
            client_frame(opcode::TEXT, true, &[0xC3, 0x28], MASK),
            1007,
            "*** error not-utf8: ",
        ),
    ];
    for (i, (what, bytes, code, error)) in cases.into_iter().enumerate() {
        let (status, mut raw) = Raw::connect(&server, "").await;
        assert_eq!(status, 101);
        let name = format!("c{i}");
        raw.text(&format!("chat:{name}")).await;
        assert_eq!(raw.frame().await, (opcode::TEXT, WELCOME.to_owned()));
        raw.text("fine").await;
        raw.write(&bytes).await;
        let frames = raw.frames_until_eof().await;
        let (last, rest) = frames.split_last().expect("frames");
        assert_eq!(close_code(last), Some(code), "{what}: {frames:?}");
        let error_line = &rest.last().expect("an error line").1;
        assert!(error_line.starts_with(error), "{what}: {error_line}");
        // Its good line made it; everyone else goes on.
        assert_eq!(viewer.line().await, format!("{name} has joined the chat."));
        assert_eq!(viewer.line().await, format!("{name}: fine"));
        assert_eq!(viewer.line().await, format!("{name} has left the chat"));
    }

    // Fragments within the limit, around a ping, make one line; the ping is answered.
    let (_, mut raw) = Raw::connect(&server, "").await;
    raw.text("chat:frag").await;
    assert_eq!(raw.frame().await, (opcode::TEXT, WELCOME.to_owned()));
    let mut bytes = client_frame(opcode::TEXT, false, b"hel", MASK);
    bytes.extend(client_frame(opcode::PING, true, b"are you there", MASK));
    bytes.extend(client_frame(opcode::CONTINUATION, true, b"lo", MASK));
    raw.write(&bytes).await;
    assert_eq!(viewer.line().await, "frag has joined the chat.");
    assert_eq!(viewer.line().await, "frag: hello");
    let mut seen = Vec::new();
    loop {
        let frame = raw.frame().await;
        if frame.0 == opcode::PONG {
            assert_eq!(frame.1, "are you there");
            break;
        }
        seen.push(frame);
    }
    // A clean close is answered with a close.
    raw.write(&client_frame(
        opcode::CLOSE,
        true,
        &1000u16.to_be_bytes(),
        MASK,
    ))
    .await;
    let frames = raw.frames_until_eof().await;
    assert_eq!(frames.last().and_then(close_code), Some(1000));
    assert_eq!(viewer.line().await, "frag has left the chat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_allow_list_is_enforced_on_the_upgrade() {
    let server = start_server_without_tls(Config {
        http_allowed_origins: vec!["https://friend.example".to_owned()],
        ..config()
    })
    .await;
    let own = format!("Origin: http://{}\r\n", server.http_addr);
    for (headers, status) in [
        ("", 101),
        (own.as_str(), 101),
        ("Origin: https://friend.example\r\n", 101),
        ("Origin: https://evil.example\r\n", 403),
        ("Origin: null\r\n", 403),
    ] {
        let (got, _) = Raw::connect(&server, headers).await;
        assert_eq!(got, status, "{headers:?}");
    }
    // Without a list, only the page's own origin.
    let server = start_server_without_tls(config()).await;
    let (got, _) = Raw::connect(&server, "Origin: https://friend.example\r\n").await;
    assert_eq!(got, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_viewer_that_never_reads_is_dropped_while_one_that_does_gets_everything() {
    const BACKLOG: usize = 256 * 1024;
    // Well past what the socket buffers on both sides hold.
    const MESSAGES: usize = 100_000;
    let server = start_server(Config {
        viewer_backlog_bytes: BACKLOG,
        ..config()
    })
    .await;
    let (_, mut fast) = Raw::connect(&server, "").await;
    fast.text("viewer").await;
    assert_eq!(fast.frame().await, (opcode::TEXT, WELCOME.to_owned()));
    // A small receive buffer, and nothing read after the welcome.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("buffer");
    let tcp = socket.connect(server.http_addr).await.expect("connect");
    let (_, mut stalled) = Raw::upgrade(over(tcp, Transport::Tls).await, &server, "").await;
    stalled.text("viewer").await;
    assert_eq!(stalled.frame().await, (opcode::TEXT, WELCOME.to_owned()));

    let mut flood = Client::messenger(server.addr, "flood").await;
    let sending = tokio::spawn(async move {
        for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(100) {
            let mut lines = String::new();
            for i in chunk {
                lines.push_str(&format!("message {i:06} {}\n", "x".repeat(80)));
            }
            flood.send(lines.as_bytes()).await;
        }
        flood
    });
    // The fast viewer reads in big chunks and checks afterwards, so that it really
    // is faster than the flood, however loaded the machine.
    let mut got = Vec::with_capacity(MESSAGES + 1);
    let until = tokio::time::Instant::now() + 6 * WAIT;
    while got.len() < MESSAGES + 1 {
        fast.buf.reserve(256 * 1024);
        let read = tokio::time::timeout_at(until, fast.stream.read_buf(&mut fast.buf)).await;
        assert!(
            matches!(read, Ok(Ok(1..))),
            "the fast viewer's stream ended or stalled"
        );
        got.extend(read_server_frames(&mut fast.buf));
    }
    assert_eq!(&got[0].1[..], b"flood has joined the chat.");
    for (i, (_, line)) in got[1..].iter().enumerate() {
        assert_eq!(
            std::str::from_utf8(line).expect("UTF-8"),
            format!("flood: message {i:06} {}", "x".repeat(80)),
            "the reading viewer misses nothing"
        );
    }
    let _flood = sending.await.expect("sender");
    // The stalled one was dropped: whole frames to the end, then the error line and a
    // policy close (a frame cut short by the full socket is finished first).
    let frames = stalled.frames_until_eof().await;
    let (last, rest) = frames.split_last().expect("frames");
    assert_eq!(
        close_code(last),
        Some(1008),
        "{:?}",
        &frames[frames.len().saturating_sub(3)..]
    );
    assert!(
        rest.last()
            .is_some_and(|(_, line)| line.starts_with("*** error too-slow: ")),
        "{:?}",
        rest.last()
    );
    assert!(rest.len() < MESSAGES, "it was dropped before the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_handshake_times_out_and_a_client_that_never_answers_pings_is_dropped() {
    let server = start_server_without_tls(Config {
        handshake_timeout: Duration::from_millis(300),
        heartbeat_interval: Duration::from_millis(200),
        dead_peer_timeout: Duration::from_millis(500),
        ..config()
    })
    .await;
    let (_, mut silent) = Raw::connect(&server, "").await;
    let frames = silent.frames_until_eof().await;
    assert!(
        frames[0].1.starts_with("*** error handshake-timeout: "),
        "{frames:?}"
    );
    assert_eq!(frames.last().and_then(close_code), Some(1008));

    // A viewer that reads but never answers: pinged, then dropped.
    let (_, mut deaf) = Raw::connect(&server, "").await;
    deaf.text("viewer").await;
    assert_eq!(deaf.frame().await, (opcode::TEXT, WELCOME.to_owned()));
    assert_eq!(deaf.frame().await, (opcode::PING, String::new()));
    let frames = deaf.frames_until_eof().await;
    assert!(
        frames.iter().all(|(op, _)| *op == opcode::PING),
        "only pings, then the end: {frames:?}"
    );

    // One that answers (the client crate does, as browsers do) stays.
    let mut alive = join(&server, "viewer").await;
    assert_eq!(text(&mut alive).await, WELCOME);
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    loop {
        match tokio::time::timeout_at(until, alive.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(other) => panic!("a live client got {other:?}"),
        }
    }
    assert!(pings >= 3, "pinged every 200 ms of silence: {pings}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_asks_for_heartbeat_also_gets_a_ping_line_its_script_can_see() {
    let server = start_server_without_tls(Config {
        heartbeat_interval: Duration::from_millis(200),
        ..config()
    })
    .await;
    let (_, mut raw) = Raw::connect(&server, "").await;
    raw.text("viewer heartbeat").await;
    assert_eq!(raw.frame().await, (opcode::TEXT, WELCOME.to_owned()));
    assert_eq!(raw.frame().await, (opcode::PING, String::new()));
    assert_eq!(raw.frame().await, (opcode::TEXT, "*** ping".to_owned()));
    // Without `heartbeat`, only the WebSocket ping.
    let mut ws = join(&server, "viewer").await;
    assert_eq!(text(&mut ws).await, WELCOME);
    let until = tokio::time::Instant::now() + Duration::from_millis(700);
    while let Ok(message) = tokio::time::timeout_at(until, ws.next()).await {
        assert!(matches!(message, Some(Ok(Message::Ping(_)))), "{message:?}");
    }
}
