//! A viewer that cannot keep up meets the slow-viewer policy; nobody else notices.

use std::time::Duration;

use crate::common::*;
use rstest::rstest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const MESSAGES: usize = 100_000;

/// Backlog for these tests: small, so the stalled viewer is dropped soon.
const BACKLOG: usize = 256 * 1024;

fn message(i: usize) -> String {
    format!("message {i:06} {}", "x".repeat(80))
}

/// A viewer with a small receive buffer that reads its welcome (so it is in the room)
/// and then nothing more.
async fn stalled_viewer(target: Target) -> Stream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(target.addr).await.unwrap();
    let mut stream = over(stream, target.transport).await;
    stream.write_all(b"viewer\n").await.unwrap();
    stream.flush().await.unwrap();
    let mut welcome = vec![0; WELCOME.len() + 1];
    within("the welcome", stream.read_exact(&mut welcome))
        .await
        .unwrap();
    assert_eq!(welcome, format!("{WELCOME}\n").as_bytes());
    stream
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_viewer_is_dropped_while_a_fast_one_gets_every_line_in_order(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(Config {
        viewer_backlog_bytes: BACKLOG,
        ..config()
    })
    .await;
    let fast = Client::viewer(server.at(transport)).await;
    let mut stalled = stalled_viewer(server.at(transport)).await;
    let mut flood = Client::messenger(server.at(transport), "flood").await;

    let mut expected = String::from("flood has joined the chat.\n");
    for i in 0..MESSAGES {
        expected.push_str(&format!("flood: {}\n", message(i)));
    }
    // The fast viewer reads in big chunks and checks afterwards, so that it really
    // is faster than the flood.
    let wanted = expected.len();
    let mut fast_stream = fast.stream;
    let reader = tokio::spawn(async move {
        let mut got = Vec::with_capacity(wanted);
        let mut chunk = vec![0u8; 256 * 1024];
        while got.len() < wanted {
            let n = fast_stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "the fast viewer was closed after {} bytes",
                got.len()
            );
            got.extend_from_slice(&chunk[..n]);
        }
        got
    });

    // About 10 MB: more than the stalled viewer's socket buffers (a few MB on
    // loopback) and its backlog together.
    let mut batch = String::new();
    for i in 0..MESSAGES {
        batch.push_str(&message(i));
        batch.push('\n');
        if batch.len() > 32 * 1024 {
            flood.send(batch.as_bytes()).await;
            batch.clear();
        }
    }
    flood.send(batch.as_bytes()).await;
    let got = within("the fast viewer to get everything", reader)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(got).unwrap(),
        expected,
        "the fast viewer missed something"
    );

    // The stalled viewer got an unbroken prefix of the room, then one line saying
    // why it was dropped, then the close.
    let mut received = Vec::new();
    let read_all = stalled.read_to_end(&mut received);
    within("the stalled viewer's stream to end", read_all)
        .await
        .unwrap();
    let received = String::from_utf8(received).unwrap();
    let notice = format!(
        "*** error too-slow: you fell more than {BACKLOG} bytes or {} events behind the room\n",
        tcpchat::config::backlog_batches(BACKLOG)
    );
    assert!(
        received.ends_with(&notice),
        "ends with {:?}",
        &received[received.len().saturating_sub(200)..]
    );
    let chat = received.strip_suffix(&notice).unwrap();
    let chat = chat.strip_suffix('\n').unwrap_or(chat);
    assert!(
        expected.starts_with(chat),
        "not a prefix of the room's history"
    );
    assert!(
        chat.len() < expected.len(),
        "the stalled viewer received the whole history ({} bytes): it was not dropped",
        chat.len()
    );
}

/// A viewer that reads slowly but steadily stays within its backlog and misses nothing.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_keeps_up_within_its_backlog_is_not_dropped(
    #[values(Transport::Tcp, Transport::Tls)] transport: Transport,
) {
    let server = start_server(Config {
        viewer_backlog_bytes: BACKLOG,
        ..config()
    })
    .await;
    let mut leisurely = Client::viewer(server.at(transport)).await;
    let mut talker = Client::messenger(server.at(transport), "talker").await;
    assert_eq!(leisurely.line().await, "talker has joined the chat.");
    for round in 0..20 {
        let mut burst = String::new();
        for i in 0..100 {
            burst.push_str(&format!("{round}-{i}\n"));
        }
        talker.send(burst.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        for i in 0..100 {
            assert_eq!(leisurely.line().await, format!("talker: {round}-{i}"));
        }
    }
}
