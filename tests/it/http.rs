//! The HTTP listener: health checks and the metrics an operator scrapes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

/// `GET path` over `transport` (HTTPS, trusting the test certificate, for `Tls`):
/// the status code and the body.
async fn get_over(transport: Transport, addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut stream = over(stream, transport).await;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .expect("request");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("response");
        String::from_utf8(response).expect("UTF-8")
    };
    let response = within("an HTTP response", exchange).await;
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}

/// `GET path` over plain HTTP.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    get_over(Transport::Tcp, addr, path).await
}

/// `GET path` from a test server, which has a certificate and so speaks HTTPS.
async fn get_tls(server: &TestServer, path: &str) -> (u16, String) {
    get_over(Transport::Tls, server.http_addr, path).await
}

/// The samples of a scrape, by name with labels: `tcpchat_events_total{kind="join"}`.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(server: &TestServer) -> HashMap<String, f64> {
    let (status, body) = get_tls(server, "/metrics").await;
    assert_eq!(status, 200);
    samples(&body)
}

fn value(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer_over_https_with_the_chat_s_certificate() {
    let server = start_server(config()).await;
    assert_eq!(get_tls(&server, "/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(
        get_tls(&server, "/readyz").await,
        (200, "ready\n".to_owned())
    );
    assert_eq!(get_tls(&server, "/nothing").await.0, 404);
    // With a certificate the listener speaks HTTPS only.
    let mut plain = TcpStream::connect(server.http_addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = within("the refusal", plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counters_move_with_real_traffic() {
    let server = start_server(config()).await;
    let before = scrape(&server).await;
    let viewer_open = r#"tcpchat_connections_open{transport="tcp",role="viewer",mode="line"}"#;
    assert_eq!(value(&before, viewer_open), 0.0);

    let mut viewer = Client::viewer(server.addr).await;
    let mut bob = Client::messenger(server.addr, "bob").await;
    bob.send(b"one\ntwo\nthree\n").await;
    assert_eq!(viewer.line().await, "bob has joined the chat.");
    for text in ["one", "two", "three"] {
        assert_eq!(viewer.line().await, format!("bob: {text}"));
    }
    let mut taken = Client::connect(server.addr).await;
    taken.send(b"name:bob\n").await;
    let _refusal = taken.line().await;
    let (mut late, _) = {
        let mut client = Client::connect(server.addr).await;
        client.send(b"viewer history=2\n").await;
        let welcome = client.line().await;
        (client, welcome)
    };
    let _ = late.line().await;

    let after = scrape(&server).await;
    assert_eq!(value(&after, viewer_open), 2.0, "two viewers in the room");
    assert_eq!(
        value(
            &after,
            r#"tcpchat_connections_open{transport="tcp",role="messenger",mode="line"}"#
        ),
        1.0
    );
    let grew = |name: &str| value(&after, name) - value(&before, name);
    assert_eq!(grew(r#"tcpchat_events_total{kind="message"}"#), 3.0);
    assert_eq!(grew(r#"tcpchat_events_total{kind="join"}"#), 1.0);
    assert!(grew("tcpchat_deliveries_total") >= 4.0, "{after:?}");
    assert!(grew("tcpchat_written_bytes_total") > 50.0);
    assert_eq!(
        grew(r#"tcpchat_connections_refused_total{reason="name-taken"}"#),
        1.0
    );
    assert!(grew(r#"tcpchat_connections_accepted_total{transport="tcp"}"#) >= 4.0);
    assert_eq!(grew("tcpchat_replays_total"), 1.0);
    assert!(grew("tcpchat_log_commit_seconds_count") >= 1.0);

    // A viewer that leaves is no longer counted as open.
    drop(viewer);
    let mut open = 2.0;
    for _ in 0..50 {
        open = value(&scrape(&server).await, viewer_open);
        if open == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_the_log_cannot_be_written() {
    let data = tempfile::tempdir().unwrap();
    let broken = Arc::new(AtomicBool::new(false));
    let store = Breakable::open(data.path(), broken.clone());
    let prepared = tcpchat::server::prepare_with_store(config(), Some(Arc::new(store))).unwrap();
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap();
    let listeners = tcpchat::server::Listeners {
        plain: vec![plain],
        tls: None,
        http: vec![http],
        admin: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(prepared.serve(listeners, async {
        let _ = stopped.await;
    }));
    assert_eq!(get(http_addr, "/readyz").await.0, 200);
    broken.store(true, Ordering::SeqCst);
    let (status, body) = get(http_addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("the room's log cannot be written"), "{body}");
    assert!(body.contains("disk is full"), "{body}");
    assert_eq!(
        get(http_addr, "/healthz").await.0,
        200,
        "alive all the same"
    );
    broken.store(false, Ordering::SeqCst);
    assert_eq!(get(http_addr, "/readyz").await.0, 200);
    let _ = stop.send(());
    within("the server to stop", server).await.unwrap().unwrap();
}
