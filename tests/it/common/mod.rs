//! Shared helpers for the integration tests: an in-process server on ephemeral
//! loopback ports (plain TCP and TLS), and a raw test client, over either transport,
//! whose every wait has a timeout, so a bug fails a test in seconds instead of
//! hanging it.

#![allow(dead_code)]

pub mod certs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
pub use tokio_util::either::Either;

pub use tcpchat::Config;

/// Longest any single expectation may wait.
pub const WAIT: Duration = Duration::from_secs(5);

/// The welcome line of the default chat name.
pub const WELCOME: &str = "Welcome to the \"Bad IRC\" Chat Server!";

/// How a client reaches the server: the line-mode suites run over both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
}

/// An address and the transport to use there.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub addr: SocketAddr,
    pub transport: Transport,
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Self {
            addr,
            transport: Transport::Tcp,
        }
    }
}

/// A server running in this test's runtime, on a plain and a TLS listener.
pub struct TestServer {
    /// The plain listener (seed and line mode).
    pub addr: SocketAddr,
    /// The TLS listener (line mode), with the test certificate.
    pub tls_addr: SocketAddr,
    /// The HTTP listener (health and metrics).
    pub http_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    /// The server's data directory, when the test did not choose one.
    _data: Option<tempfile::TempDir>,
}

/// The default configuration with a short seed grace, so seed clients join quickly.
pub fn config() -> Config {
    Config {
        seed_grace: Duration::from_millis(50),
        ..Config::default()
    }
}

/// Starts a server on 127.0.0.1 with ephemeral ports, plain and TLS, and (unless
/// `config` names one) a data directory of its own. Its HTTP listener speaks HTTPS,
/// with the TLS certificate.
pub async fn start_server(config: Config) -> TestServer {
    start_server_with(config, true).await
}

/// As [`start_server`], with no TLS at all: plain HTTP, and no TLS listener
/// (`tls_addr` is the plain listener's).
pub async fn start_server_without_tls(config: Config) -> TestServer {
    start_server_with(config, false).await
}

async fn start_server_with(mut config: Config, with_tls: bool) -> TestServer {
    let data = match config.data_dir {
        Some(_) => None,
        None => {
            let dir = tempfile::tempdir().expect("temporary directory");
            config.data_dir = Some(dir.path().to_owned());
            Some(dir)
        }
    };
    let plain = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let tls = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http_addr = http.local_addr().expect("local addr");
    let addr = plain.local_addr().expect("local addr");
    let (tls_addr, tls) = if with_tls {
        let tls_addr = tls.local_addr().expect("local addr");
        (tls_addr, Some((tls, certs::shared().certificates())))
    } else {
        (addr, None)
    };
    let listeners = tcpchat::server::Listeners {
        plain: vec![plain],
        tls: tls.map(|(listener, certificates)| (vec![listener], certificates)),
        http: vec![http],
        admin: None,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    // Ready before the test's first connection: the log is open, the hub runs.
    let prepared = tcpchat::server::prepare(config).expect("server set-up");
    let task = tokio::spawn(prepared.serve(listeners, async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        tls_addr,
        http_addr,
        stop: Some(stop),
        task,
        _data: data,
    }
}

impl TestServer {
    /// Where a client of `transport` connects.
    pub fn at(&self, transport: Transport) -> Target {
        match transport {
            Transport::Tcp => self.addr.into(),
            Transport::Tls => Target {
                addr: self.tls_addr,
                transport,
            },
        }
    }

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

/// A client's byte stream: plain TCP (left) or TLS (right).
pub type Stream = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// The TCP socket underneath a client's stream.
fn into_tcp(stream: Stream) -> TcpStream {
    match stream {
        Either::Left(stream) => stream,
        Either::Right(stream) => stream.into_inner().0,
    }
}

/// Wraps a connected TCP stream in `transport`, trusting the test certificate.
pub async fn over(stream: TcpStream, transport: Transport) -> Stream {
    stream.set_nodelay(true).expect("nodelay");
    match transport {
        Transport::Tcp => Either::Left(stream),
        Transport::Tls => {
            let connector = TlsConnector::from(Arc::new(certs::shared().client_config()));
            let name = "localhost".try_into().expect("server name");
            let tls = tokio::time::timeout(WAIT, connector.connect(name, stream))
                .await
                .expect("TLS handshake timed out")
                .expect("TLS handshake");
            Either::Right(Box::new(tls))
        }
    }
}

/// A raw client: it writes exactly what the test says, in one write per call.
pub struct Client {
    pub stream: Stream,
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(target: impl Into<Target>) -> Self {
        let target = target.into();
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(target.addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        Self::from_stream(over(stream, target.transport).await)
    }

    pub fn from_stream(stream: Stream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// A line-mode viewer, welcomed.
    pub async fn viewer(target: impl Into<Target>) -> Self {
        let mut client = Self::connect(target).await;
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
    pub async fn messenger(target: impl Into<Target>, name: &str) -> Self {
        let mut client = Self::connect(target).await;
        client.send(format!("name:{name}\n").as_bytes()).await;
        assert_eq!(client.line().await, format!("*** ok: joined as {name}"));
        client
    }

    /// Writes `bytes` in one write, as the original clients did.
    pub async fn send(&mut self, bytes: &[u8]) {
        let writing = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(WAIT, writing)
            .await
            .unwrap_or_else(|_| panic!("could not write {} bytes within {WAIT:?}", bytes.len()))
            .expect("write");
    }

    /// Closes our sending side (FIN; over TLS, `close_notify` first), as a client
    /// that says goodbye does.
    pub async fn finish_sending(&mut self) {
        tokio::time::timeout(WAIT, self.stream.shutdown())
            .await
            .expect("shutdown timed out")
            .expect("shutdown");
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
    pub async fn assert_nothing_buffered(&mut self) {
        let mut chunk = [0u8; 256];
        // A read that is not ready at once is abandoned: nothing had arrived.
        if let Ok(read) = tokio::time::timeout(Duration::ZERO, self.stream.read(&mut chunk)).await {
            panic!("unexpected input: {read:?} {:?}", &chunk[..16]);
        }
        assert!(self.buf.is_empty(), "unexpected input {:?}", self.buf);
    }

    /// Closes with a reset instead of a FIN.
    pub fn reset(self) {
        let std = into_tcp(self.stream).into_std().expect("into std");
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

/// A room's log that cannot be written while `broken` is set, as with a full disk.
#[derive(Debug)]
pub struct Breakable {
    inner: Arc<tcpchat::store::sqlite::SqliteStore>,
    broken: Arc<std::sync::atomic::AtomicBool>,
    /// Appends refused so far.
    pub refused: Arc<std::sync::atomic::AtomicU64>,
}

impl Breakable {
    fn check(&self) -> Result<(), tcpchat::store::StoreError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(tcpchat::store::StoreError::Sqlite(
                "database or disk is full".to_owned(),
            ));
        }
        Ok(())
    }
}

impl tcpchat::store::Store for Breakable {
    fn recover(&self) -> Result<tcpchat::store::Recovered, tcpchat::store::StoreError> {
        self.inner.recover()
    }

    fn append(
        &self,
        events: &[tcpchat::room::Event],
        mark: Option<tcpchat::store::StreamMark>,
    ) -> Result<(), tcpchat::store::StoreError> {
        if let Err(error) = self.check() {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(error);
        }
        self.inner.append(events, mark)
    }

    fn read(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<tcpchat::room::Event>, tcpchat::store::StoreError> {
        self.inner.read(after, max)
    }

    fn first_kept(&self) -> Result<Option<u64>, tcpchat::store::StoreError> {
        self.inner.first_kept()
    }

    fn probe(&self) -> Result<(), tcpchat::store::StoreError> {
        self.check()?;
        self.inner.probe()
    }
}

impl Breakable {
    /// A SQLite log in `dir`, broken while `broken` is set.
    pub fn open(dir: &std::path::Path, broken: Arc<std::sync::atomic::AtomicBool>) -> Self {
        Self {
            inner: tcpchat::store::sqlite::SqliteStore::open(
                dir,
                &tcpchat::store::sqlite::Options::new(1000, false),
            )
            .expect("a log"),
            broken,
            refused: Arc::default(),
        }
    }
}

/// Runs `ip ARGS` (iproute2, for the tests that build network namespaces); whether
/// it succeeded.
pub fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
