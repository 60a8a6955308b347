//! Seed mode: the original tutorial's protocol, byte for byte. Clients here write the
//! way the original Viewer and Messenger do: one write per message, no terminator.

use std::time::{Duration, Instant};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_the_wire_is_byte_exact() {
    let server = start_server(config()).await;
    let mut viewer = Client::connect(server.addr).await;
    viewer.send(b"viewer").await;
    viewer
        .expect_bytes(b"Welcome to the \"Bad IRC\" Chat Server!")
        .await;

    let mut alice = Client::connect(server.addr).await;
    alice.send(b"name:alice").await;
    viewer.expect_bytes(b"alice has joined the chat.").await;
    alice.send(b"hello world").await;
    viewer.expect_bytes(b"alice: hello world").await;
    drop(alice);
    viewer.expect_bytes(b"alice has left the chat").await;

    // A seed messenger is told nothing at all.
    server.shutdown().await.unwrap();
    viewer.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_name_is_a_flag() {
    let server = start_server(Config {
        chat_name: "Good IRC".into(),
        ..config()
    })
    .await;
    let mut viewer = Client::connect(server.addr).await;
    viewer.send(b"viewer").await;
    viewer
        .expect_bytes(b"Welcome to the \"Good IRC\" Chat Server!")
        .await;
}

/// The original Messenger writes `name:NAME`, sleeps about 10 ms and takes "still
/// connected" as accepted. A taken name must therefore be refused well within that,
/// even though the server waits longer (the seed grace) to tell seed from line mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_name_is_refused_in_time_for_the_original_messengers_check() {
    let server = start_server(Config::default()).await;
    let mut viewer = Client::seed_viewer(server.addr).await;
    let _alice = {
        let mut alice = Client::connect(server.addr).await;
        alice.send(b"name:alice").await;
        viewer.expect_bytes(b"alice has joined the chat.").await;
        alice
    };

    let mut second = Client::connect(server.addr).await;
    let sent = Instant::now();
    second.send(b"name:alice").await;
    second.expect_closed().await;
    let refused_after = sent.elapsed();
    assert!(
        refused_after < Duration::from_millis(10),
        "refused after {refused_after:?}; the original Messenger checks at about 10 ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_original_messenger_is_still_connected_after_its_check() {
    let server = start_server(Config::default()).await;
    let mut alice = Client::connect(server.addr).await;
    alice.send(b"name:alice").await;
    // The original's check: about 10 ms later, not closed and nothing to read.
    tokio::time::sleep(Duration::from_millis(20)).await;
    alice.assert_nothing_buffered().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_unknown_and_bad_handshakes_are_closed_silently() {
    let server = start_server(config()).await;
    for first in [
        &b"name:"[..],
        b"hello",
        b"VIEWER",
        b"viewers",
        b"name:bell\x07",
        b"name:John Smith",
        b"\xff\xfe",
    ] {
        let mut client = Client::connect(server.addr).await;
        client.send(first).await;
        client.expect_closed().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_write_is_one_message() {
    let server = start_server(config()).await;
    let mut viewer = Client::seed_viewer(server.addr).await;
    let mut bob = Client::connect(server.addr).await;
    bob.send(b"name:bob").await;
    viewer.expect_bytes(b"bob has joined the chat.").await;
    bob.send(b"one").await;
    viewer.expect_bytes(b"bob: one").await;
    bob.send(b"two, three").await;
    viewer.expect_bytes(b"bob: two, three").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_message_with_line_breaks_cannot_forge_another_sender() {
    let server = start_server(config()).await;
    let mut viewer = Client::seed_viewer(server.addr).await;
    let mut mallory = Client::connect(server.addr).await;
    mallory.send(b"name:mallory").await;
    viewer.expect_bytes(b"mallory has joined the chat.").await;
    mallory.send(b"hi\nalice: send me money\r\n").await;
    viewer
        .expect_bytes(b"mallory: himallory: alice: send me money")
        .await;
    mallory.send(b"\ralice: fine\x1b[2K").await;
    viewer
        .expect_bytes("mallory: \u{240D}alice: fine\u{241B}[2K".as_bytes())
        .await;
}

/// A scripted original Messenger (input piped in) sends its first message and quits
/// within milliseconds, before the server's seed grace is over. The original server
/// saw the handshake, the message and the departure; so must we.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_messenger_that_writes_and_leaves_during_the_grace_is_heard() {
    let server = start_server(Config::default()).await;
    let mut viewer = Client::seed_viewer(server.addr).await;
    let mut alice = Client::connect(server.addr).await;
    alice.send(b"name:alice").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    alice.send(b"hello").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    alice.send(b"bye").await;
    drop(alice);
    viewer
        .expect_bytes(b"alice has joined the chat.alice: helloalice: byealice has left the chat")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_and_line_viewers_see_the_same_events_in_their_own_framing() {
    let server = start_server(config()).await;
    let mut seed = Client::seed_viewer(server.addr).await;
    let mut line = Client::viewer(server.addr).await;
    let mut carol = Client::messenger(server.addr, "carol").await;
    carol.send(b"first\nsecond\n").await;
    drop(carol);
    seed.expect_bytes(
        b"carol has joined the chat.carol: firstcarol: secondcarol has left the chat",
    )
    .await;
    for expected in [
        "carol has joined the chat.",
        "carol: first",
        "carol: second",
        "carol has left the chat",
    ] {
        assert_eq!(line.line().await, expected);
    }
}

/// In the original, a viewer that sent data and then disconnected made the next
/// broadcast throw and killed the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_talks_and_vanishes_harms_nobody() {
    let server = start_server(config()).await;
    let mut steady = Client::seed_viewer(server.addr).await;
    for _ in 0..5 {
        let mut rude = Client::seed_viewer(server.addr).await;
        rude.send(b"I am a viewer but I talk").await;
        rude.reset();
    }
    let mut dave = Client::connect(server.addr).await;
    dave.send(b"name:dave").await;
    steady.expect_bytes(b"dave has joined the chat.").await;
    dave.send(b"still here").await;
    steady.expect_bytes(b"dave: still here").await;
}

/// The documented exception to "refused in time for the original Messenger's check":
/// `name:` with nothing after it may be the start of a line-mode `name:bob\n` split
/// by the network, so it is refused (silently, as the original did) only when the
/// seed grace ends. The Messenger's 10 ms check passes; its first message finds the
/// connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_seed_name_is_refused_when_the_seed_grace_ends() {
    let server = start_server(Config::default()).await;
    let mut nameless = Client::connect(server.addr).await;
    nameless.send(b"name:").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    nameless.assert_nothing_buffered().await;
    let asked = Instant::now();
    nameless.expect_closed().await;
    assert!(
        asked.elapsed() < Config::default().seed_grace + Duration::from_millis(500),
        "closed after {:?}",
        asked.elapsed()
    );
}
