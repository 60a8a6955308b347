//! Line mode: a handshake ending in `\n` selects newline framing both ways. These
//! clients write what `nc` and telnet write.

use std::time::Duration;

use crate::common::*;
use rstest::rstest;

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nc_session(#[values(Transport::Tcp, Transport::Tls)] transport: Transport) {
    let server = start_server(config()).await;
    let mut viewer = Client::viewer(server.at(transport)).await;
    let mut alice = Client::connect(server.at(transport)).await;
    alice.send(b"name:alice\n").await;
    assert_eq!(alice.line().await, "*** ok: joined as alice");
    assert_eq!(viewer.line().await, "alice has joined the chat.");
    alice.send(b"hello\n").await;
    assert_eq!(viewer.line().await, "alice: hello");
    drop(alice);
    assert_eq!(viewer.line().await, "alice has left the chat");
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_is_stripped_and_empty_lines_are_ignored(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(config()).await;
    let mut viewer = Client::viewer(server.at(transport)).await;
    let mut bob = Client::connect(server.at(transport)).await;
    bob.send(b"name:bob\r\n").await;
    assert_eq!(bob.line().await, "*** ok: joined as bob");
    bob.send(b"\r\n\n   \r\nhi there\r\n\n").await;
    assert_eq!(viewer.line().await, "bob has joined the chat.");
    assert_eq!(viewer.line().await, "bob:    ");
    assert_eq!(viewer.line().await, "bob: hi there");
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_in_pieces_is_understood(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    // The real seed grace: the pieces arrive further apart than a packet split.
    let server = start_server(Config::default()).await;
    let mut viewer = Client::connect(server.at(transport)).await;
    viewer.send(b"viewer").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    viewer.send(b"\n").await;
    assert_eq!(viewer.line().await, WELCOME);

    let mut alice = Client::connect(server.at(transport)).await;
    for piece in [&b"na"[..], b"me:al", b"i", b"ce\r", b"\n"] {
        alice.send(piece).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(alice.line().await, "*** ok: joined as alice");
    assert_eq!(viewer.line().await, "alice has joined the chat.");

    // Cut right after the colon: `name:` alone would be an empty seed name.
    let mut bob = Client::connect(server.at(transport)).await;
    bob.send(b"name:").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    bob.send(b"bob\n").await;
    assert_eq!(bob.line().await, "*** ok: joined as bob");
    assert_eq!(viewer.line().await, "bob has joined the chat.");
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_are_framed_however_the_bytes_arrive(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(config()).await;
    let mut viewer = Client::viewer(server.at(transport)).await;
    // Handshake and two messages in one write, then one line over three writes.
    let mut carol = Client::connect(server.at(transport)).await;
    carol.send(b"name:carol\none\ntwo\nthr").await;
    carol.send(b"e").await;
    carol.send(b"e\n").await;
    assert_eq!(carol.line().await, "*** ok: joined as carol");
    for expected in [
        "carol has joined the chat.",
        "carol: one",
        "carol: two",
        "carol: three",
    ] {
        assert_eq!(viewer.line().await, expected);
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_line_needs_no_newline_when_the_sender_closes(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(config()).await;
    let mut viewer = Client::viewer(server.at(transport)).await;
    let mut dan = Client::messenger(server.at(transport), "dan").await;
    dan.send(b"unterminated").await;
    dan.finish_sending().await;
    assert_eq!(viewer.line().await, "dan has joined the chat.");
    assert_eq!(viewer.line().await, "dan: unterminated");
    assert_eq!(viewer.line().await, "dan has left the chat");
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messengers_get_their_acknowledgement_and_no_chat_traffic(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(config()).await;
    let mut viewer = Client::viewer(server.at(transport)).await;
    let mut quiet = Client::messenger(server.at(transport), "quiet").await;
    let mut loud = Client::messenger(server.at(transport), "loud").await;
    loud.send(b"can anyone hear me\n").await;
    assert_eq!(viewer.line().await, "quiet has joined the chat.");
    assert_eq!(viewer.line().await, "loud has joined the chat.");
    assert_eq!(viewer.line().await, "loud: can anyone hear me");
    quiet.assert_nothing_buffered().await;
    loud.assert_nothing_buffered().await;
}

/// A plain line-mode viewer gets the seed's texts with `\n`, and nothing else: no
/// pings, and no goodbye when the server stops (it did not ask for them).
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_viewer_gets_exactly_the_seed_texts_with_newlines(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(Config {
        heartbeat_interval: Duration::from_millis(20),
        ..config()
    })
    .await;
    let mut viewer = Client::viewer(server.at(transport)).await;
    let mut erin = Client::messenger(server.at(transport), "erin").await;
    erin.send(b"hi\n").await;
    assert_eq!(viewer.line().await, "erin has joined the chat.");
    assert_eq!(viewer.line().await, "erin: hi");
    drop(erin);
    assert_eq!(viewer.line().await, "erin has left the chat");
    // Five heartbeat intervals: time in which a ping would have come. An absence
    // cannot be awaited; the closing check below sees anything that did come.
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown().await.unwrap();
    viewer.expect_closed().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_ask_get_heartbeats_and_a_goodbye(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(Config {
        heartbeat_interval: Duration::from_millis(50),
        ..config()
    })
    .await;
    let mut viewer = Client::connect(server.at(transport)).await;
    viewer.send(b"viewer heartbeat goodbye\n").await;
    assert_eq!(viewer.line().await, WELCOME);
    assert_eq!(viewer.line().await, "*** ping");
    assert_eq!(viewer.line().await, "*** ping");
    let mut frank = Client::connect(server.at(transport)).await;
    frank.send(b"name:frank goodbye\n").await;
    assert_eq!(frank.line().await, "*** ok: joined as frank");
    // gus joins once frank's join is out: a receiver sees every event published
    // after the one its welcome stands for, and frank's may still be on its way.
    loop {
        match viewer.line().await.as_str() {
            "*** ping" => {}
            line => {
                assert_eq!(line, "frank has joined the chat.");
                break;
            }
        }
    }
    let mut gus = Client::connect(server.at(transport)).await;
    gus.send(b"chat:gus goodbye\n").await;
    assert_eq!(gus.line().await, WELCOME);
    assert_eq!(gus.line().await, "gus has joined the chat.");
    server.shutdown().await.unwrap();
    assert_eq!(gus.line().await, "*** bye: the server is shutting down");
    gus.expect_closed().await;
    let rest = String::from_utf8(viewer.rest().await).unwrap();
    assert!(
        rest.ends_with("*** bye: the server is shutting down\n"),
        "{rest:?}"
    );
    assert_eq!(frank.line().await, "*** bye: the server is shutting down");
    frank.expect_closed().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatter_sends_and_sees_the_room_including_itself(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(config()).await;
    let mut gina = Client::connect(server.at(transport)).await;
    gina.send(b"chat:gina\n").await;
    assert_eq!(gina.line().await, WELCOME);
    assert_eq!(gina.line().await, "gina has joined the chat.");
    let mut hal = Client::messenger(server.at(transport), "hal").await;
    assert_eq!(gina.line().await, "hal has joined the chat.");
    hal.send(b"hello gina\n").await;
    assert_eq!(gina.line().await, "hal: hello gina");
    gina.send(b"hello hal\n").await;
    assert_eq!(gina.line().await, "gina: hello hal");
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_line_clients_get_one_error_line_then_the_close(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(config()).await;
    let _ivy = Client::messenger(server.at(transport), "ivy").await;
    let cases: &[(&[u8], &str)] = &[
        (
            b"hello\n",
            "*** error unknown-handshake: expected \"viewer\", \"name:NAME\" or \"chat:NAME\"",
        ),
        (
            b"name:ivy\n",
            "*** error name-taken: the name \"ivy\" is already taken",
        ),
        (
            b"chat:ivy\n",
            "*** error name-taken: the name \"ivy\" is already taken",
        ),
        (b"name:\n", "*** error name-empty: a name must not be empty"),
        (
            b"name:a:b\n",
            "*** error name-invalid: a name may not contain ':'",
        ),
        (
            b"name:*** server\n",
            "*** error name-invalid: a name may not contain a leading '*' (reserved for server notices)",
        ),
        (
            b"name:bell\x07\n",
            "*** error name-invalid: a name may not contain the control character U+0007",
        ),
        (
            b"viewer loud\n",
            "*** error unknown-option: unknown option \"loud\" (known: heartbeat, goodbye, tags, members, history=N, since=SEQ, token=SECRET)",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "*** error unknown-handshake: expected \"viewer\", \"name:NAME\" or \"chat:NAME\"",
        ),
    ];
    for (handshake, error) in cases {
        let mut client = Client::connect(server.at(transport)).await;
        client.send(handshake).await;
        assert_eq!(
            client.line().await,
            *error,
            "{:?}",
            String::from_utf8_lossy(handshake)
        );
        client.expect_closed().await;
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewers_own_input_is_ignored(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(config()).await;
    let mut viewer = Client::viewer(server.at(transport)).await;
    viewer.send(b"name:mallory\nI am not a messenger\n").await;
    let mut jo = Client::messenger(server.at(transport), "jo").await;
    jo.send(b"hi\n").await;
    assert_eq!(viewer.line().await, "jo has joined the chat.");
    assert_eq!(viewer.line().await, "jo: hi");
}

/// A chatter that says goodbye (FIN) still receives the room up to its own leave,
/// so it sees its last lines come back.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatter_saying_goodbye_receives_the_room_up_to_its_own_leave(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(config()).await;
    for round in 0..20 {
        let name = format!("kit{round}");
        let mut kit = Client::connect(server.at(transport)).await;
        kit.send(format!("chat:{name}\n").as_bytes()).await;
        assert_eq!(kit.line().await, WELCOME);
        let lines: String = (0..20).map(|i| format!("{i}\n")).collect();
        kit.send(lines.as_bytes()).await;
        kit.finish_sending().await;
        let rest = String::from_utf8(kit.rest().await).unwrap();
        let mut expected = format!("{name} has joined the chat.\n");
        for i in 0..20 {
            expected.push_str(&format!("{name}: {i}\n"));
        }
        expected.push_str(&format!("{name} has left the chat\n"));
        assert_eq!(rest, expected, "round {round}");
    }
}
