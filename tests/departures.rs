//! Departures: a messenger that closes (FIN) or resets (RST) is announced at once,
//! without waiting for any I/O of ours, and its name is free again.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The bound: leaves are announced within a second.
const ANNOUNCED_WITHIN: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fin_is_announced_within_a_second() {
    let server = start_server(config()).await;
    let mut viewer = Client::viewer(server.addr).await;
    let ann = Client::messenger(server.addr, "ann").await;
    assert_eq!(viewer.line().await, "ann has joined the chat.");
    let closed = Instant::now();
    drop(ann);
    assert_eq!(viewer.line().await, "ann has left the chat");
    assert!(
        closed.elapsed() < ANNOUNCED_WITHIN,
        "{:?}",
        closed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_is_announced_within_a_second_in_both_modes() {
    let server = start_server(config()).await;
    let mut viewer = Client::viewer(server.addr).await;
    let ben = Client::messenger(server.addr, "ben").await;
    assert_eq!(viewer.line().await, "ben has joined the chat.");
    let reset = Instant::now();
    ben.reset();
    assert_eq!(viewer.line().await, "ben has left the chat");
    assert!(reset.elapsed() < ANNOUNCED_WITHIN, "{:?}", reset.elapsed());

    let mut seed_ben = Client::connect(server.addr).await;
    seed_ben.send(b"name:ben").await;
    assert_eq!(viewer.line().await, "ben has joined the chat.");
    let reset = Instant::now();
    seed_ben.reset();
    assert_eq!(viewer.line().await, "ben has left the chat");
    assert!(reset.elapsed() < ANNOUNCED_WITHIN, "{:?}", reset.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_abrupt_departures_is_announced_in_full() {
    let server = start_server(config()).await;
    let mut viewer = Client::viewer(server.addr).await;
    let mut crowd = Vec::new();
    for i in 0..50 {
        crowd.push(Client::messenger(server.addr, &format!("m{i}")).await);
        assert_eq!(viewer.line().await, format!("m{i} has joined the chat."));
    }
    for (i, client) in crowd.into_iter().enumerate() {
        if i % 2 == 0 {
            client.reset();
        } else {
            drop(client);
        }
    }
    let mut left: Vec<String> = Vec::new();
    for _ in 0..50 {
        left.push(viewer.line().await);
    }
    left.sort();
    let mut expected: Vec<String> = (0..50).map(|i| format!("m{i} has left the chat")).collect();
    expected.sort();
    assert_eq!(left, expected);
    // And the server still serves.
    let mut last = Client::messenger(server.addr, "m0").await;
    last.send(b"still up\n").await;
    assert_eq!(viewer.line().await, "m0 has joined the chat.");
    assert_eq!(viewer.line().await, "m0: still up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_leave_silently() {
    let server = start_server(config()).await;
    let mut watcher = Client::viewer(server.addr).await;
    let other = Client::viewer(server.addr).await;
    other.reset();
    let _seed = Client::seed_viewer(server.addr).await;
    drop(_seed);
    let _cy = Client::messenger(server.addr, "cy").await;
    assert_eq!(watcher.line().await, "cy has joined the chat.");
}
