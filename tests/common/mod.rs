//! Shared helpers for the integration tests: an in-process server on an ephemeral
//! loopback port, and a raw test client whose every wait has a timeout, so a bug
//! fails a test in seconds instead of hanging it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use tcpchat::Config;

/// Longest any single expectation may wait.
pub const WAIT: Duration = Duration::from_secs(5);

/// The welcome line of the default chat name.
pub const WELCOME: &str = "Welcome to the \"Bad IRC\" Chat Server!";

/// A server running in this test's runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// The default configuration with a short seed grace, so seed clients join quickly.
pub fn config() -> Config {
    Config {
        seed_grace: Duration::from_millis(50),
        ..Config::default()
    }
}

/// Starts a server on 127.0.0.1 with an ephemeral port.
pub async fn start_server(config: Config) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(tcpchat::server::run(listener, config, async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        stop: Some(stop),
        task,
    }
}

impl TestServer {
    /// Asks the server to shut down (as SIGINT would) without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts the server down and waits for `run` to return.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("server did not stop within 15 s")
            .expect("server task panicked")
    }
}

/// A raw client: it writes exactly what the test says, in one write per call.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn from_stream(stream: TcpStream) -> Self {
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// A line-mode viewer, welcomed.
    pub async fn viewer(addr: SocketAddr) -> Self {
        let mut client = Self::connect(addr).await;
        client.send(b"viewer\n").await;
        assert_eq!(client.line().await, WELCOME);
        client
    }

    /// A seed-mode viewer, welcomed (the welcome has no terminator).
    pub async fn seed_viewer(addr: SocketAddr) -> Self {
        let mut client = Self::connect(addr).await;
        client.send(b"viewer").await;
        client.expect_bytes(WELCOME.as_bytes()).await;
        client
    }

    /// A line-mode messenger, acknowledged.
    pub async fn messenger(addr: SocketAddr, name: &str) -> Self {
        let mut client = Self::connect(addr).await;
        client.send(format!("name:{name}\n").as_bytes()).await;
        assert_eq!(client.line().await, format!("*** ok: joined as {name}"));
        client
    }

    /// Writes `bytes` in one write, as the original clients did.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads more bytes into the buffer; returns false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "nothing more within {WAIT:?}; so far: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next line, without its `\n`.
    pub async fn line(&mut self) -> String {
        match self.try_line().await {
            Some(line) => line,
            None => panic!(
                "stream ended before a full line; got {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// The next line, or `None` if the server closes the connection first.
    pub async fn try_line(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=at).collect();
                return Some(String::from_utf8_lossy(&line[..at]).into_owned());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Exactly `expected` next on the stream (seed mode has no terminators).
    pub async fn expect_bytes(&mut self, expected: &[u8]) {
        while self.buf.len() < expected.len() {
            if !self.fill().await {
                break;
            }
        }
        let got: Vec<u8> = self
            .buf
            .drain(..expected.len().min(self.buf.len()))
            .collect();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected),
            "stream bytes differ"
        );
    }

    /// The server closes the connection without sending anything more.
    pub async fn expect_closed(&mut self) {
        let more = self.fill().await;
        assert!(
            !more && self.buf.is_empty(),
            "expected the connection to close, got {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    /// Everything until the server closes the connection.
    pub async fn rest(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// Nothing has arrived that was not read yet (checked without waiting).
    pub fn assert_nothing_buffered(&mut self) {
        let mut chunk = [0u8; 256];
        match self.stream.try_read(&mut chunk) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("unexpected input: {other:?} {:?}", &chunk[..16]),
        }
        assert!(self.buf.is_empty(), "unexpected input {:?}", self.buf);
    }

    /// Closes with a reset instead of a FIN.
    pub fn reset(self) {
        let std = self.stream.into_std().expect("into std");
        socket2::SockRef::from(&std)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(std);
    }
}

/// Awaits `future` for at most [`WAIT`].
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"))
}
