//! How the load generator's clients reach a server: plain TCP, or TLS 1.3 over it.
//!
//! - [`Certificate`]: a self-signed certificate for `127.0.0.1` and `localhost`,
//!   generated once per run into a temporary directory, for the server to present.
//! - [`Connector`]: opens connections from a chosen loopback address and, for TLS,
//!   completes the handshake trusting exactly the certificates it was given; for
//!   WebSocket, the upgrade ([`crate::ws`]).
//! - [`Stream`]: one connection, plain, TLS or WebSocket, so that every reader and
//!   writer of the bench is written once for all three.
//!
//! The TLS client is the same for every server: TLS 1.3 only, rustls's default
//! cipher suites and key exchanges (ring), no session resumption, so that every
//! connection costs each server one full handshake.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::ws::{self, Framing, WsStream};

/// How a run's clients speak to the server, as the results record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS 1.3 over TCP.
    Tls,
    /// WebSocket (RFC 6455) over TCP, no extensions.
    Ws,
}

/// A directory under the system's temporary directory, removed with everything in
/// it when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a new, empty directory whose name starts with `prefix`.
    ///
    /// # Errors
    /// When no directory can be created.
    pub fn new(prefix: &str) -> io::Result<Self> {
        let base = std::env::temp_dir();
        let pid = std::process::id();
        let mut last_error = None;
        // A name already taken (a leftover of a killed run) just moves on to the next.
        for attempt in 0..100u32 {
            let path = base.join(format!("{prefix}-{pid}-{attempt}"));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Self(path)),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no temporary directory")))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate and its key, as PEM files for a server to load.
#[derive(Debug)]
pub struct Certificate {
    /// The certificate, PEM.
    pub cert_file: PathBuf,
    /// Its private key, PEM (PKCS #8).
    pub key_file: PathBuf,
    der: CertificateDer<'static>,
    _dir: TempDir,
}

impl Certificate {
    /// A new ECDSA P-256 certificate valid for `127.0.0.1` and `localhost`.
    ///
    /// # Errors
    /// When it cannot be generated or written.
    pub fn generate() -> anyhow::Result<Self> {
        let generated = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .context("cannot generate a certificate")?;
        let dir =
            TempDir::new("tcpchat-bench-tls").context("cannot create a temporary directory")?;
        let cert_file = dir.path().join("cert.pem");
        let key_file = dir.path().join("key.pem");
        std::fs::write(&cert_file, generated.cert.pem())
            .with_context(|| format!("cannot write {}", cert_file.display()))?;
        std::fs::write(&key_file, generated.signing_key.serialize_pem())
            .with_context(|| format!("cannot write {}", key_file.display()))?;
        Ok(Self {
            cert_file,
            key_file,
            der: generated.cert.der().clone(),
            _dir: dir,
        })
    }

    /// The certificate itself, for a client to trust.
    pub fn der(&self) -> CertificateDer<'static> {
        self.der.clone()
    }
}

/// Reads every certificate in a PEM file (a server's own, or the CA that signed it).
///
/// # Errors
/// When the file cannot be read or holds no certificate.
pub fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not PEM", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

/// Opens the run's connections. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    tls: Option<TlsConnector>,
    ws: Option<WebSocket>,
}

/// Where and how a WebSocket connector upgrades its connections.
#[derive(Debug, Clone, Copy)]
struct WebSocket {
    path: &'static str,
    framing: Framing,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("transport", &self.transport())
            .finish()
    }
}

impl Connector {
    /// Plain TCP.
    pub fn plain() -> Self {
        Self {
            tls: None,
            ws: None,
        }
    }

    /// WebSocket over plain TCP: every connection upgraded on `path`, then read and
    /// written in `framing`.
    pub fn websocket(path: &'static str, framing: Framing) -> Self {
        Self {
            tls: None,
            ws: Some(WebSocket { path, framing }),
        }
    }

    /// TLS 1.3, trusting exactly `roots`.
    ///
    /// # Errors
    /// When a root is not a usable certificate.
    pub fn tls(roots: Vec<CertificateDer<'static>>) -> anyhow::Result<Self> {
        let mut store = rustls::RootCertStore::empty();
        for root in roots {
            store
                .add(root)
                .context("a certificate to trust is not usable")?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 is not available")?
            .with_root_certificates(store)
            .with_no_client_auth();
        // Every connection a full handshake, whatever tickets a server hands out: the
        // same work for every server, and no client-side cache shared by thousands.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Self {
            tls: Some(TlsConnector::from(Arc::new(config))),
            ws: None,
        })
    }

    /// Which transport its connections use.
    pub fn transport(&self) -> Transport {
        match (&self.tls, &self.ws) {
            (Some(_), _) => Transport::Tls,
            (None, Some(_)) => Transport::Ws,
            (None, None) => Transport::Tcp,
        }
    }

    /// Opens a connection to `addr` from `source` (a loopback address, so that tens
    /// of thousands of connections do not run out of ephemeral ports), with Nagle's
    /// algorithm off, and completes the TLS handshake or the WebSocket upgrade if
    /// any. The server's name for TLS is its IP address, which the certificate names.
    ///
    /// # Errors
    /// When the connection, the handshake or the upgrade fails.
    pub async fn connect(&self, addr: SocketAddr, source: Option<IpAddr>) -> io::Result<Stream> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(source) = source {
            socket.bind(SocketAddr::new(source, 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        match (&self.tls, self.ws) {
            (Some(tls), _) => {
                let name = ServerName::IpAddress(addr.ip().into());
                let stream = tls.connect(name, stream).await?;
                Ok(Stream::Tls(Box::new(stream)))
            }
            (None, Some(WebSocket { path, framing })) => Ok(Stream::Ws(Box::new(
                ws::upgrade(stream, addr, path, framing).await?,
            ))),
            (None, None) => Ok(Stream::Tcp(stream)),
        }
    }
}

/// One client connection: plain TCP, TLS or WebSocket (these two boxed: a TLS
/// session, a WebSocket's buffers are far bigger than a socket).
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
    /// WebSocket over TCP.
    Ws(Box<WsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Ws(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_write(cx, bytes),
            Self::Tls(stream) => Pin::new(stream).poll_write(cx, bytes),
            Self::Ws(stream) => Pin::new(stream).poll_write(cx, bytes),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream).poll_flush(cx),
            Self::Ws(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Ws(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// What the bench asks of a connection besides reading and writing.
pub(crate) trait BenchStream {
    /// The TLS version and cipher suite negotiated, for the results (`None` in plain).
    fn tls_parameters(&self) -> Option<String>;

    /// Writes all of `bytes` and flushes them: a TLS session may keep encrypted
    /// bytes it could not write at once until the next write or flush, and a message
    /// must not wait for one.
    ///
    /// # Errors
    /// When the connection fails.
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()>;
}

impl BenchStream for Stream {
    fn tls_parameters(&self) -> Option<String> {
        match self {
            Stream::Tcp(_) | Stream::Ws(_) => None,
            Stream::Tls(stream) => {
                let session = stream.get_ref().1;
                Some(format!(
                    "{:?} {:?}",
                    session.protocol_version()?,
                    session.negotiated_cipher_suite()?.suite()
                ))
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes).await?;
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A TLS 1.3 server on loopback with `cert`, echoing one line back.
    async fn echo_server(cert: &Certificate) -> SocketAddr {
        use rustls::pki_types::PrivateKeyDer;
        let key = PrivateKeyDer::from_pem_slice(&std::fs::read(&cert.key_file).unwrap()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A client that refuses the certificate ends the handshake: nothing to echo.
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let mut line = [0u8; 6];
            tls.read_exact(&mut line).await?;
            tls.write_all(&line).await?;
            tls.flush().await
        });
        addr
    }

    #[tokio::test]
    async fn a_tls_client_trusts_the_generated_certificate_and_no_other() {
        let cert = Certificate::generate().unwrap();
        let addr = echo_server(&cert).await;
        let connector = Connector::tls(read_certificates(&cert.cert_file).unwrap()).unwrap();
        assert_eq!(connector.transport(), Transport::Tls);
        let mut stream = connector.connect(addr, None).await.unwrap();
        assert!(
            stream
                .tls_parameters()
                .unwrap()
                .starts_with("TLSv1_3 TLS13_"),
            "{:?}",
            stream.tls_parameters()
        );
        stream.send(b"hello\n").await.unwrap();
        let mut back = [0u8; 6];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello\n");

        // A client trusting another certificate refuses this server.
        let other = Certificate::generate().unwrap();
        let addr = echo_server(&cert).await;
        let stranger = Connector::tls(vec![other.der()]).unwrap();
        assert!(stranger.connect(addr, None).await.is_err());
    }

    #[test]
    fn temporary_directories_are_removed() {
        let dir = TempDir::new("tcpchat-bench-test").unwrap();
        let path = dir.path().to_owned();
        std::fs::write(path.join("file"), "x").unwrap();
        let second = TempDir::new("tcpchat-bench-test").unwrap();
        assert_ne!(second.path(), path);
        drop(dir);
        assert!(!path.exists());
    }
}
