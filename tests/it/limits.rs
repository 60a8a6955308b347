//! Limits: a client that is silent, slow or too big costs only itself.

use std::time::{Duration, Instant};

use crate::common::*;
use rstest::rstest;

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_at_the_handshake_timeout_and_delays_nobody(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(Config {
        handshake_timeout: Duration::from_millis(500),
        ..config()
    })
    .await;
    let connected = Instant::now();
    let mut silent = Client::connect(server.at(transport)).await;
    let mut half = Client::connect(server.at(transport)).await;
    half.send(b"vie").await;

    // Meanwhile the room works as usual.
    let mut viewer = Client::viewer(server.at(transport)).await;
    let mut amy = Client::messenger(server.at(transport), "amy").await;
    amy.send(b"not waiting for anyone\n").await;
    assert_eq!(viewer.line().await, "amy has joined the chat.");
    assert_eq!(viewer.line().await, "amy: not waiting for anyone");
    assert!(connected.elapsed() < Duration::from_millis(500));

    // Said nothing at all: it may be a person at a telnet prompt, so it is told.
    assert_eq!(
        silent.line().await,
        "*** error handshake-timeout: no handshake received in time"
    );
    silent.expect_closed().await;
    let waited = connected.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(2),
        "closed after {waited:?}"
    );
    assert_eq!(
        half.line().await,
        "*** error handshake-timeout: no handshake received in time"
    );
    half.expect_closed().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_handshake_that_never_ends_is_cut_at_the_size_limit(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(Config {
        max_handshake_bytes: 64,
        ..config()
    })
    .await;
    let mut client = Client::connect(server.at(transport)).await;
    client.send(b"viewer ").await;
    // Apart, so the server reads two pieces and the limit is checked while it waits
    // for the newline (one read of both is refused by the first-read check instead,
    // which the handshake's unit tests cover). Both ways end the same.
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.send(&[b'x'; 60]).await;
    assert_eq!(
        client.line().await,
        "*** error handshake-too-long: a handshake is limited to 64 bytes"
    );
    client.expect_closed().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_at_the_size_limit_passes_and_one_byte_more_closes_the_sender(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(Config {
        max_message_bytes: 100,
        ..config()
    })
    .await;
    let mut viewer = Client::viewer(server.at(transport)).await;
    let mut kim = Client::messenger(server.at(transport), "kim").await;
    assert_eq!(viewer.line().await, "kim has joined the chat.");
    let at_limit = "a".repeat(100);
    kim.send(format!("{at_limit}\nbefore\n{}\nafter\n", "b".repeat(101)).as_bytes())
        .await;
    assert_eq!(viewer.line().await, format!("kim: {at_limit}"));
    assert_eq!(viewer.line().await, "kim: before");
    assert_eq!(viewer.line().await, "kim has left the chat");
    assert_eq!(
        kim.line().await,
        "*** error message-too-long: lines are limited to 100 bytes"
    );
    kim.expect_closed().await;
}

/// A sender that never ends its line is stopped at the limit, without the server
/// buffering the rest of what it sends.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_line_is_stopped_at_the_limit(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(Config {
        max_message_bytes: 1000,
        ..config()
    })
    .await;
    let mut lee = Client::messenger(server.at(transport), "lee").await;
    let flood = vec![b'z'; 64 * 1024];
    let writer = async {
        use tokio::io::AsyncWriteExt;
        for _ in 0..1024 {
            if lee.stream.write_all(&flood).await.is_err() {
                return true;
            }
        }
        false
    };
    let stopped = within("the flood to be cut off", writer).await;
    assert!(stopped, "the server took 64 MiB of one line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_at_once() {
    let server = start_server(Config {
        max_connections: Some(2),
        ..config()
    })
    .await;
    let mut viewer = Client::viewer(server.addr).await;
    let _max = Client::messenger(server.addr, "max").await;
    let mut extra = Client::connect(server.addr).await;
    extra.expect_closed().await;
    // Once one leaves, there is room again (as soon as its socket is closed).
    drop(_max);
    assert_eq!(viewer.line().await, "max has joined the chat.");
    assert_eq!(viewer.line().await, "max has left the chat");
    within("a free slot", async {
        loop {
            let mut next = Client::connect(server.addr).await;
            next.send(b"name:next\n").await;
            if next.try_line().await.is_some() {
                break;
            }
        }
    })
    .await;
    assert_eq!(viewer.line().await, "next has joined the chat.");
}

/// Limits that exempt loopback by default are tested with the exemption removed.
fn limited(config: Config) -> Config {
    Config {
        no_loopback_exemption: true,
        ..config
    }
}

async fn connect_from(source: &str, target: impl Into<Target>) -> Client {
    let target = target.into();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(target.addr).await.unwrap();
    Client::from_stream(over(stream, target.transport).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_limited_at_the_bound() {
    let server = start_server(limited(Config {
        max_connections_per_ip: 2,
        ..config()
    }))
    .await;
    let mut viewer = Client::viewer(server.addr).await;
    let _one = Client::messenger(server.addr, "one").await;
    assert_eq!(viewer.line().await, "one has joined the chat.");
    // One past the bound, from the same address: closed at once.
    let mut third = Client::connect(server.addr).await;
    third.expect_closed().await;
    // Another address has its own count.
    let mut elsewhere = connect_from("127.0.0.2", server.addr).await;
    elsewhere.send(b"name:two\n").await;
    assert_eq!(elsewhere.line().await, "*** ok: joined as two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_is_exempt_from_the_address_limit_by_default() {
    let server = start_server(Config {
        max_connections_per_ip: 2,
        ..config()
    })
    .await;
    let mut viewer = Client::viewer(server.addr).await;
    let mut crowd = Vec::new();
    for i in 0..5 {
        crowd.push(Client::messenger(server.addr, &format!("bot{i}")).await);
        assert_eq!(viewer.line().await, format!("bot{i} has joined the chat."));
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paste_within_the_burst_is_not_slowed(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(limited(config())).await;
    let mut viewer = Client::viewer(server.at(transport)).await;
    let mut paster = Client::messenger(server.at(transport), "paster").await;
    assert_eq!(viewer.line().await, "paster has joined the chat.");
    let sent = Instant::now();
    let paste: String = (0..10).map(|i| format!("line {i}\n")).collect();
    paster.send(paste.as_bytes()).await;
    for i in 0..10 {
        assert_eq!(viewer.line().await, format!("paster: line {i}"));
    }
    assert!(
        sent.elapsed() < Duration::from_millis(500),
        "{:?}",
        sent.elapsed()
    );
}

/// Past the burst, a flood is slowed to the rate: nothing is dropped, nothing is
/// out of order, and the sender's writes are held back by TCP, not buffered.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_slowed_to_the_rate_without_loss(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(limited(Config {
        flood_rate: 20.0,
        flood_burst: 5,
        ..config()
    }))
    .await;
    let mut viewer = Client::viewer(server.at(transport)).await;
    let mut flooder = Client::messenger(server.at(transport), "flooder").await;
    assert_eq!(viewer.line().await, "flooder has joined the chat.");
    let sent = Instant::now();
    let flood: String = (0..45).map(|i| format!("{i}\n")).collect();
    flooder.send(flood.as_bytes()).await;
    for i in 0..45 {
        assert_eq!(viewer.line().await, format!("flooder: {i}"));
        if i == 4 {
            assert!(
                sent.elapsed() < Duration::from_millis(500),
                "the burst was slowed"
            );
        }
    }
    // 40 lines past the burst at 20 per second.
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(4),
        "45 lines took {took:?}"
    );
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_sender_meets_backpressure_and_the_room_goes_on(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(limited(config())).await;
    let mut viewer = Client::viewer(server.at(transport)).await;
    let mut flooder = Client::messenger(server.at(transport), "flooder").await;
    // 64 MiB of lines: far more than socket buffers hold.
    let chunk = "flood\n".repeat(64 * 1024 / 6);
    let writing = async {
        use tokio::io::AsyncWriteExt;
        for _ in 0..1024 {
            flooder.stream.write_all(chunk.as_bytes()).await.unwrap();
        }
    };
    let blocked = tokio::time::timeout(Duration::from_secs(2), writing).await;
    assert!(
        blocked.is_err(),
        "the server took 64 MiB from a rate-limited sender"
    );
    // Everyone else is unaffected.
    let mut calm = connect_from("127.0.0.3", server.at(transport)).await;
    calm.send(b"name:calm\n").await;
    assert_eq!(calm.line().await, "*** ok: joined as calm");
    calm.send(b"still fine\n").await;
    assert_eq!(viewer.line().await, "flooder has joined the chat.");
    let mut saw_calm = false;
    for _ in 0..100 {
        let line = viewer.line().await;
        if line == "calm: still fine" {
            saw_calm = true;
            break;
        }
        assert!(
            line == "flooder: flood" || line == "calm has joined the chat.",
            "{line}"
        );
    }
    assert!(saw_calm);
}
