//! Shutdown: stop accepting, deliver everything already accepted to every viewer,
//! close every client, return promptly.

use std::time::{Duration, Instant};

use crate::common::*;
use rstest::rstest;
use tokio::io::AsyncReadExt;

/// Under traffic from two senders, every viewer ends with the same complete history
/// (so nothing the room accepted was lost on the way out) and the server stops long
/// before its deadline.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_traffic_delivers_everything_accepted_to_every_viewer(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let mut server = start_server(Config {
        // Far beyond the test's patience: finishing early proves the drain works.
        shutdown_timeout: Duration::from_secs(30),
        ..config()
    })
    .await;
    let mut first = Client::viewer(server.at(transport)).await;
    let second = Client::viewer(server.at(transport)).await;
    let seed = Client::seed_viewer(server.addr).await;
    let mut senders = Vec::new();
    for name in ["ping", "pong"] {
        let mut messenger = Client::messenger(server.at(transport), name).await;
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                use tokio::io::AsyncWriteExt;
                let line = format!("{i}\n");
                if messenger.stream.write_all(line.as_bytes()).await.is_err() {
                    return i;
                }
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            unreachable!()
        }));
    }
    // Let traffic from both senders flow for a while.
    let (mut pings, mut pongs) = (0, 0);
    while pings < 200 || pongs < 200 {
        let line = first.line().await;
        pings += usize::from(line.starts_with("ping: "));
        pongs += usize::from(line.starts_with("pong: "));
    }

    let stopping = Instant::now();
    server.begin_shutdown();
    let mut streams = Vec::new();
    for mut viewer in [first, second, seed] {
        streams.push(
            within(
                "a viewer's stream to end",
                async move { viewer.rest().await },
            )
            .await,
        );
    }
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    for sender in senders {
        let sent = within("a sender to be closed", sender).await.unwrap();
        assert!(sent > 0);
    }
    server.shutdown().await.unwrap();

    // `first` had already read some lines; compare what all three got from there on.
    let [first, second, seed] = <[Vec<u8>; 3]>::try_from(streams).unwrap();
    let second = String::from_utf8(second).unwrap();
    let first = String::from_utf8(first).unwrap();
    let skipped = second.len() - first.len().min(second.len());
    assert_same("first and second viewer", &second[skipped..], &first);
    let as_seed: String = second.lines().collect();
    assert_same(
        "seed and line viewer",
        &String::from_utf8(seed).unwrap(),
        &as_seed,
    );
    // Per sender, every number appears once and in order: nothing lost in between.
    for name in ["ping", "pong"] {
        let prefix = format!("{name}: ");
        let numbers: Vec<u64> = second
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|n| n.parse().unwrap())
            .collect();
        assert!(
            !numbers.is_empty(),
            "nothing from {name} in {} lines",
            second.lines().count()
        );
        for pair in numbers.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "{name} skipped from {}", pair[0]);
        }
    }
}

/// A viewer that never reads cannot hold the server past its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_viewer_cannot_hold_shutdown_past_the_deadline() {
    let server = start_server(Config {
        shutdown_timeout: Duration::from_millis(500),
        viewer_backlog_bytes: 64 << 20,
        ..config()
    })
    .await;
    let mut stalled = Client::viewer(server.addr).await;
    let mut watcher = Client::viewer(server.addr).await;
    let mut talker = Client::messenger(server.addr, "talker").await;
    let line = format!("{}\n", "y".repeat(1000));
    for _ in 0..8 {
        talker.send(line.repeat(1000).as_bytes()).await;
    }
    // Everything reached the watcher, so the stalled viewer is now well behind.
    assert_eq!(watcher.line().await, "talker has joined the chat.");
    for _ in 0..8000 {
        assert_eq!(watcher.line().await.len(), "talker: ".len() + 1000);
    }
    let stopping = Instant::now();
    server.shutdown().await.unwrap();
    // `run` would give up waiting on its own 2 s after the deadline: returning well
    // before that means every connection, the stalled one included, was closed.
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_millis(500 + 1000),
        "shutdown took {took:?}"
    );
    // And the stalled viewer's connection really is closed: once it reads what was
    // sent before the deadline, its stream ends.
    let got = within("the stalled viewer's stream to end", stalled.rest()).await;
    assert!(!got.is_empty());
}

/// Connections in the middle of their handshake are closed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshakes_do_not_delay_shutdown() {
    let server = start_server(config()).await;
    let mut halfway = Client::connect(server.addr).await;
    halfway.send(b"name:sl").await;
    let mut silent = Client::connect(server.addr).await;
    let _viewer = Client::viewer(server.addr).await;
    let stopping = Instant::now();
    server.shutdown().await.unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(3));
    let mut buf = Vec::new();
    within(
        "the silent client to be closed",
        silent.stream.read_to_end(&mut buf),
    )
    .await
    .unwrap();
    within(
        "the halfway client to be closed",
        halfway.stream.read_to_end(&mut buf),
    )
    .await
    .ok();
}

/// Compares two long streams and reports where they part, not the streams themselves.
fn assert_same(what: &str, left: &str, right: &str) {
    if left == right {
        return;
    }
    let at = left
        .bytes()
        .zip(right.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(left.len().min(right.len()));
    let context = |s: &str| {
        s.get(at.saturating_sub(40)..(at + 40).min(s.len()))
            .unwrap_or("")
            .to_owned()
    };
    panic!(
        "{what}: streams differ at byte {at} (lengths {} and {}): {:?} vs {:?}",
        left.len(),
        right.len(),
        context(left),
        context(right)
    );
}

/// The case that matters: at the stop, a viewer is legitimately behind (its socket is
/// full, its backlog is not). Everything the room accepted must still reach it.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_behind_at_shutdown_still_receives_everything_accepted(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    // About 10 MB: more than the kernel buffers between the server and the viewer
    // hold, so most of it is still in the room's backlog when the stop comes.
    const MESSAGES: usize = 100_000;
    let mut server = start_server(Config {
        viewer_backlog_bytes: 64 << 20,
        shutdown_timeout: Duration::from_secs(30),
        ..config()
    })
    .await;
    let mut behind = {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let target = server.at(transport);
        let stream = socket.connect(target.addr).await.unwrap();
        Client::from_stream(over(stream, target.transport).await)
    };
    behind.send(b"viewer\n").await;
    assert_eq!(behind.line().await, WELCOME);
    let mut fast = Client::viewer(server.at(transport)).await;
    let mut talker = Client::messenger(server.at(transport), "talker").await;
    let padding = "p".repeat(90);
    let all: String = (0..MESSAGES).map(|i| format!("{i} {padding}\n")).collect();
    talker.send(all.as_bytes()).await;
    // Every message is in the room: the fast viewer has them all.
    assert_eq!(fast.line().await, "talker has joined the chat.");
    for i in 0..MESSAGES {
        assert_eq!(fast.line().await, format!("talker: {i} {padding}"));
    }

    let stopping = Instant::now();
    server.begin_shutdown();
    let got = within("the lagging viewer's stream to end", behind.rest()).await;
    let got = String::from_utf8(got).unwrap();
    let mut expected = String::from("talker has joined the chat.\n");
    for i in 0..MESSAGES {
        expected.push_str(&format!("talker: {i} {padding}\n"));
    }
    assert_same("the lagging viewer's history", &got, &expected);
    server.shutdown().await.unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(5));
}
