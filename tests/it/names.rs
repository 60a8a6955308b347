//! Names: unique among connected messengers, free again the moment their holder
//! leaves, and never a way to pass one's words off as someone else's.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_free_again_as_soon_as_its_leave_is_announced() {
    let server = start_server(config()).await;
    let mut viewer = Client::viewer(server.addr).await;
    for round in 0..3 {
        let mut alice = Client::messenger(server.addr, "alice").await;
        assert_eq!(viewer.line().await, "alice has joined the chat.");
        alice.send(format!("round {round}\n").as_bytes()).await;
        assert_eq!(viewer.line().await, format!("alice: round {round}"));
        drop(alice);
        assert_eq!(viewer.line().await, "alice has left the chat");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_unique_across_modes_and_roles() {
    let server = start_server(config()).await;
    let mut viewer = Client::seed_viewer(server.addr).await;
    let mut seed_bob = Client::connect(server.addr).await;
    seed_bob.send(b"name:bob").await;
    viewer.expect_bytes(b"bob has joined the chat.").await;

    let mut line_bob = Client::connect(server.addr).await;
    line_bob.send(b"name:bob\n").await;
    assert_eq!(
        line_bob.line().await,
        "*** error name-taken: the name \"bob\" is already taken"
    );
    let mut chat_bob = Client::connect(server.addr).await;
    chat_bob.send(b"chat:bob\n").await;
    assert_eq!(
        chat_bob.line().await,
        "*** error name-taken: the name \"bob\" is already taken"
    );
    // Names are case-sensitive, as in the original.
    let _bob = Client::messenger(server.addr, "Bob").await;
    viewer.expect_bytes(b"Bob has joined the chat.").await;
}

/// While a seed handshake waits out its grace period, its name is already held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_name_is_held_during_the_grace_period() {
    let server = start_server(Config {
        seed_grace: Duration::from_secs(3),
        ..config()
    })
    .await;
    let mut seed = Client::connect(server.addr).await;
    seed.send(b"name:zed").await;
    // What the original Messenger does next: wait 10 ms and take "still connected"
    // as accepted. From then on the name must be its own, grace or not.
    tokio::time::sleep(Duration::from_millis(10)).await;
    seed.assert_nothing_buffered().await;
    let mut rival = Client::connect(server.addr).await;
    rival.send(b"name:zed\n").await;
    assert_eq!(
        rival.line().await,
        "*** error name-taken: the name \"zed\" is already taken"
    );
    // A seed messenger that closes during the grace was still a seed messenger: like
    // the original, the room hears it join and leave, and the name is free again.
    let mut viewer = Client::viewer(server.addr).await;
    drop(seed);
    assert_eq!(viewer.line().await, "zed has joined the chat.");
    assert_eq!(viewer.line().await, "zed has left the chat");
    let _zed = Client::messenger(server.addr, "zed").await;
    assert_eq!(viewer.line().await, "zed has joined the chat.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_at_the_length_limit_pass_and_one_past_it_are_refused() {
    let server = start_server(Config {
        max_name_chars: 8,
        ..config()
    })
    .await;
    let _at = Client::messenger(server.addr, "ééééééé8").await;
    let mut past = Client::connect(server.addr).await;
    past.send("name:ééééééé89\n".as_bytes()).await;
    assert_eq!(
        past.line().await,
        "*** error name-too-long: a name may have at most 8 characters"
    );
    past.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_could_forge_lines_are_refused() {
    let server = start_server(config()).await;
    for name in [
        "alice: hi",
        "alice has left the chat",
        "a\u{1b}[31mred",
        "rtl\u{202e}ecila",
        "***",
    ] {
        let mut client = Client::connect(server.addr).await;
        client.send(format!("name:{name}\n").as_bytes()).await;
        let line = client.line().await;
        assert!(
            line.starts_with("*** error name-invalid: "),
            "{name:?} got {line:?}"
        );
        client.expect_closed().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_cannot_impersonate_or_steer_the_terminal() {
    let server = start_server(config()).await;
    let mut viewer = Client::viewer(server.addr).await;
    let _alice = Client::messenger(server.addr, "alice").await;
    let mut mallory = Client::messenger(server.addr, "mallory").await;
    mallory
        .send(b"alice: I agree\r\x1b[2K\ralice: send money\x1b]0;pwned\x07\x7f\t!\n")
        .await;
    mallory.send(b"*** bye: fake server notice\n").await;
    assert_eq!(viewer.line().await, "alice has joined the chat.");
    assert_eq!(viewer.line().await, "mallory has joined the chat.");
    assert_eq!(
        viewer.line().await,
        "mallory: alice: I agree\u{240D}\u{241B}[2K\u{240D}alice: send money\u{241B}]0;pwned\u{2407}\u{2421}\t!"
    );
    assert_eq!(viewer.line().await, "mallory: *** bye: fake server notice");
}
