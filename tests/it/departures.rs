//! Departures: a messenger that closes (FIN) or resets (RST) is announced at once,
//! without waiting for any I/O of ours, and its name is free again.

use std::time::{Duration, Instant};

use crate::common::*;
use rstest::rstest;

/// The bound: leaves are announced within a second.
const ANNOUNCED_WITHIN: Duration = Duration::from_secs(1);

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fin_is_announced_within_a_second(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(config()).await;
    let mut viewer = Client::viewer(server.at(transport)).await;
    let ann = Client::messenger(server.at(transport), "ann").await;
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

/// A sender under flood control is not read while its lines wait for tokens. If it
/// pastes far more than its burst and closes, its departure must still be noticed
/// within a second (not once the rate has worked through the paste, which would take
/// half an hour), and the lines it sent beyond its rate are dropped, not delivered.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paster_under_flood_control_that_closes_is_announced_within_a_second(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(Config {
        no_loopback_exemption: true,
        ..config()
    })
    .await;
    let mut viewer = Client::viewer(server.at(transport)).await;
    let mut paster = Client::messenger(server.at(transport), "paster").await;
    assert_eq!(viewer.line().await, "paster has joined the chat.");
    let paste: String = (0..8000).map(|i| format!("{}\n", i % 10)).collect();
    paster.send(paste.as_bytes()).await;
    // The burst comes through at once: the server has read the paste and is now
    // holding the rest back.
    for i in 0..20 {
        assert_eq!(viewer.line().await, format!("paster: {}", i % 10));
    }
    paster.finish_sending().await;
    let closed = Instant::now();
    let mut delivered = 20;
    loop {
        let line = viewer.line().await;
        if line == "paster has left the chat" {
            break;
        }
        assert_eq!(line, format!("paster: {}", delivered % 10), "out of order");
        delivered += 1;
        assert!(
            closed.elapsed() < ANNOUNCED_WITHIN,
            "still delivering the paste {:?} after the close ({delivered} lines)",
            closed.elapsed()
        );
    }
    let noticed = closed.elapsed();
    assert!(noticed < ANNOUNCED_WITHIN, "noticed after {noticed:?}");
    // At 5 lines a second, a second's worth at most came through meanwhile.
    assert!(delivered < 30, "{delivered} lines delivered of 8000");
    // The name is free again at once.
    let _again = Client::messenger(server.at(transport), "paster").await;
}
