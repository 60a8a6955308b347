//! Connecting to a tcpchat server and reading its lines: what every client shares.
//!
//! Clients speak line mode, over plain TCP or TLS, with the handshake from
//! [`handshake::encode_line_handshake`] (what to ask for is a [`Handshake`]) and the
//! server's lines cut by the same [`LineFramer`] the server uses.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls::CertificateError;
use rustls_pki_types::ServerName;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::protocol::handshake::{self, Options};
use crate::protocol::line::LineFramer;
use crate::protocol::wire::Notice;
use crate::room::Role;
use crate::room::text;
use crate::socket;
use crate::tls::{self, TlsError};

/// Where a client connects, and how.
#[derive(Debug, Clone)]
pub struct Server {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `Some` to connect with TLS.
    pub tls: Option<TlsOptions>,
}

/// How a client checks the server's certificate.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Trust only the CA certificates in this PEM file instead of the system's roots.
    pub ca: Option<PathBuf>,
}

/// What the server's lines are read from.
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// Where our lines go.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Longest line a client accepts from a server: a chat line is a name plus a
/// message, and servers limit both far below this.
const MAX_SERVER_LINE: usize = 64 * 1024;

/// How long a client waits for the server's answer to its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a server may stay silent before a client that asked for heartbeats
/// gives it up (the server pings every 15 s by default).
pub const SERVER_SILENCE_LIMIT: Duration = Duration::from_secs(60);

/// Dead-peer bound for the client's own socket (TCP keepalive).
const DEAD_SERVER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a client could not start or had to stop.
#[derive(Debug, Error)]
pub enum ClientError {
    /// No server at that address.
    #[error("cannot connect to {address}: {error}")]
    Unreachable {
        /// host:port as given.
        address: String,
        /// What the system said (not a `source`: it is already in the message).
        error: io::Error,
    },
    /// The client's TLS set-up failed (an unreadable `--ca` file, say).
    #[error(transparent)]
    TlsSetup(#[from] TlsError),
    /// The TLS handshake failed: most often a certificate this client cannot trust.
    #[error("TLS with {address} failed: {reason}")]
    Tls {
        /// host:port as given.
        address: String,
        /// Why, in words.
        reason: String,
    },
    /// The server said no, and why.
    #[error("the server refused us: {text}")]
    Refused {
        /// The stable error code (`name-taken`, ...).
        code: String,
        /// The server's explanation.
        text: String,
    },
    /// The server closed the connection, perhaps saying why.
    #[error("the server closed the connection{}", .reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed {
        /// The server's goodbye or error text, if it sent one.
        reason: Option<String>,
    },
    /// The server stopped answering.
    #[error("the server has been silent for {} s; giving up", .0.as_secs())]
    Silent(Duration),
    /// The connection failed.
    #[error("lost the connection to the server: {0}")]
    Io(#[from] io::Error),
    /// The server sent something no tcpchat server sends.
    #[error("unexpected answer from the server: {0:?}")]
    Unexpected(String),
    /// The user left while typed lines had still not reached the room (the
    /// server stayed unreachable).
    #[error(
        "{lines} typed line{} did not reach the room before leaving",
        if *.lines == 1 { "" } else { "s" }
    )]
    Undelivered {
        /// How many.
        lines: usize,
    },
}

/// What a client asks for in its handshake line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// Viewer, messenger or chatter.
    pub role: Role,
    /// The name, for messengers and chatters.
    pub name: Option<String>,
    /// `heartbeat`: `*** ping` after a quiet interval.
    pub heartbeat: bool,
    /// `goodbye`: `*** bye: ...` before a close at shutdown.
    pub goodbye: bool,
    /// `tags`: events tagged with `@seq=N;time=...;id=...`, the welcome with the
    /// last seq, and a `*** token: SECRET` to reclaim the name with.
    pub tags: bool,
    /// `history=N`: the last N events of the room's log after the welcome.
    pub history: Option<u32>,
    /// `since=SEQ`: every event after SEQ after the welcome (wins over `history`).
    pub since: Option<u64>,
    /// `token=SECRET`: take the name over from a connection holding that secret.
    pub token: Option<String>,
    /// `members`: the names of everyone in the room after the welcome.
    pub members: bool,
}

impl Handshake {
    /// `role` (under `name`) with heartbeats and goodbyes, as every tcpchat client
    /// asks, and nothing else.
    pub fn new(role: Role, name: Option<&str>) -> Self {
        Self {
            role,
            name: name.map(str::to_owned),
            heartbeat: true,
            goodbye: true,
            tags: false,
            history: None,
            since: None,
            token: None,
            members: false,
        }
    }

    /// The handshake line, `\n` included. A token that could not be one word of
    /// the line (the server never sends one) is left out.
    pub fn line(&self) -> String {
        let options = Options {
            heartbeat: self.heartbeat,
            goodbye: self.goodbye,
            tags: self.tags,
            history: self.history.map(u64::from),
            since: self.since,
            token: self.token.clone().filter(|token| is_word(token)),
            members: self.members,
            pass: password(),
        };
        handshake::encode_line_handshake(self.role, self.name.as_deref(), &options)
    }
}

/// The server's password, for a server that asks for one: `TCPCHAT_PASSWORD` (an
/// environment variable, not a flag, so that it is not shown to everyone by `ps`).
fn password() -> Option<String> {
    std::env::var("TCPCHAT_PASSWORD")
        .ok()
        .filter(|password| is_word(password))
}

/// Non-empty, printable, and without whitespace.
fn is_word(text: &str) -> bool {
    !text.is_empty() && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Reads the server's lines.
pub struct LineReader {
    half: ReadHalf,
    buf: BytesMut,
    framer: LineFramer,
    lines: VecDeque<String>,
}

impl LineReader {
    fn new(half: ReadHalf) -> Self {
        Self {
            half,
            buf: BytesMut::new(),
            framer: LineFramer::new(MAX_SERVER_LINE),
            lines: VecDeque::new(),
        }
    }

    /// The next line from the server, without its `\n`. `Ok(None)` when the server
    /// closed the connection.
    ///
    /// # Errors
    /// When the connection fails or the server sends an absurdly long line.
    pub async fn next_line(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(line) = self.lines.pop_front() {
                return Ok(Some(line));
            }
            let chunk = self
                .framer
                .next_chunk(&mut self.buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if let Some(chunk) = chunk {
                // Even a server's text is shown only once neutralized.
                self.lines
                    .extend(text::lines(&chunk).map(|l| text::sanitize(l).into_owned()));
                continue;
            }
            self.buf.reserve(4096);
            if self.half.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The next chat line, skipping pings; a notice that ends the conversation, or
    /// the server closing, becomes the matching [`ClientError`]. With `silence`, a
    /// server quiet for that long counts as gone.
    ///
    /// # Errors
    /// [`ClientError`] when the conversation is over.
    pub async fn next_chat_line(
        &mut self,
        silence: Option<Duration>,
    ) -> Result<String, ClientError> {
        loop {
            let line = match silence {
                Some(limit) => tokio::time::timeout(limit, self.next_line())
                    .await
                    .map_err(|_| ClientError::Silent(limit))??,
                None => self.next_line().await?,
            };
            let Some(line) = line else {
                return Err(ClientError::Closed { reason: None });
            };
            match Notice::parse(&line) {
                None => return Ok(line),
                Some(
                    Notice::Ping
                    | Notice::Ok { .. }
                    | Notice::Token { .. }
                    | Notice::Gap { .. }
                    | Notice::Members { .. },
                ) => {}
                Some(Notice::Bye { text }) => {
                    return Err(ClientError::Closed { reason: Some(text) });
                }
                Some(Notice::Error { text, .. }) => {
                    return Err(ClientError::Closed { reason: Some(text) });
                }
            }
        }
    }
}

/// An open, accepted connection.
pub struct Connection {
    /// The server's lines.
    pub reader: LineReader,
    /// Where our lines go.
    pub writer: WriteHalf,
    /// The server's first line: the welcome for viewers and chatters, the
    /// acknowledgement for messengers.
    pub greeting: String,
}

impl Connection {
    /// Connects to `host:port`, asks for `role` (under `name` for messengers and
    /// chatters) with heartbeats and goodbyes, and waits for the server's answer.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`], [`ClientError::Refused`] (with the server's
    /// reason, such as a taken name), or a failure on the way.
    pub async fn open(
        server: &Server,
        role: Role,
        name: Option<&str>,
    ) -> Result<Self, ClientError> {
        Self::open_with(server, &Handshake::new(role, name)).await
    }

    /// Connects to `host:port`, sends `hello` and waits for the server's answer.
    ///
    /// # Errors
    /// As [`Connection::open`].
    pub async fn open_with(server: &Server, hello: &Handshake) -> Result<Self, ClientError> {
        let role = hello.role;
        let (read, mut writer) = connect(server).await?;
        writer.write_all(hello.line().as_bytes()).await?;
        let mut reader = LineReader::new(read);
        let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next_line())
            .await
            .map_err(|_| ClientError::Silent(HANDSHAKE_TIMEOUT))??;
        let Some(greeting) = first else {
            return Err(ClientError::Closed { reason: None });
        };
        match Notice::parse(&greeting) {
            Some(Notice::Error { code, text }) => Err(ClientError::Refused { code, text }),
            Some(Notice::Ok { .. }) if role == Role::Messenger => Ok(Self {
                reader,
                writer,
                greeting,
            }),
            None if role != Role::Messenger => Ok(Self {
                reader,
                writer,
                greeting,
            }),
            _ => Err(ClientError::Unexpected(greeting)),
        }
    }
}

/// Connects to `server`, with TLS if asked, and splits the stream.
async fn connect(server: &Server) -> Result<(ReadHalf, WriteHalf), ClientError> {
    // host:port as typed, an IPv6 address in brackets.
    let address = if server.host.contains(':') {
        format!("[{}]:{}", server.host, server.port)
    } else {
        format!("{}:{}", server.host, server.port)
    };
    // Set up first: a bad --ca file is reported before anything is sent.
    let connector = match &server.tls {
        Some(options) => Some(TlsConnector::from(Arc::new(tls::client_config(
            options.ca.as_deref(),
        )?))),
        None => None,
    };
    let stream = TcpStream::connect((server.host.as_str(), server.port))
        .await
        .map_err(|error| ClientError::Unreachable {
            address: address.clone(),
            error,
        })?;
    // Without keepalive a vanished server is only noticed when we next write.
    let _ = socket::configure(&stream, DEAD_SERVER_TIMEOUT);
    let Some(connector) = connector else {
        let (read, write) = stream.into_split();
        return Ok((Box::new(read), Box::new(write)));
    };
    let name = ServerName::try_from(server.host.clone()).map_err(|e| ClientError::Tls {
        address: address.clone(),
        reason: format!("{:?} is not a valid server name: {e}", server.host),
    })?;
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream));
    let stream = match handshake.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            return Err(ClientError::Tls {
                reason: tls_failure(&error, &server.host),
                address,
            });
        }
        Err(_) => return Err(ClientError::Silent(HANDSHAKE_TIMEOUT)),
    };
    let (read, write) = tokio::io::split(stream);
    Ok((Box::new(read), Box::new(write)))
}

/// Why a TLS handshake failed, in words a user can act on.
fn tls_failure(error: &io::Error, host: &str) -> String {
    let rustls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls {
        Some(rustls::Error::InvalidCertificate(certificate)) => match certificate {
            CertificateError::UnknownIssuer
            | CertificateError::BadSignature
            | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                "the server's certificate is not signed by a CA \
                this client trusts (for a private CA or a self-signed certificate, give it \
                with --ca FILE)"
                    .to_owned()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("the server's certificate is not valid for {host:?}")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".to_owned()
            }
            CertificateError::Other(other)
                if format!("{other:?}").contains("CaUsedAsEndEntity") =>
            {
                "the server's certificate is a CA certificate, which TLS does not accept as a \
                server's own (make it with basicConstraints CA:FALSE, or sign it with a CA and \
                give that CA with --ca FILE)"
                    .to_owned()
            }
            other => format!("the server's certificate is not acceptable: {other}"),
        },
        Some(rustls::Error::InvalidMessage(_)) => {
            "the server did not answer in TLS (is this its TLS port? tcpchat's is 6001 by \
            default)"
                .to_owned()
        }
        Some(other) => other.to_string(),
        None if error.kind() == io::ErrorKind::UnexpectedEof => {
            "the server closed the connection during the TLS handshake (is this its TLS port?)"
                .to_owned()
        }
        None => error.to_string(),
    }
}

/// Whether a typed line means "leave": `quit` or `exit` in any case, as in the
/// original Messenger (and `/quit`, as chat users expect).
pub fn is_quit(line: &str) -> bool {
    let line = line.trim();
    line.eq_ignore_ascii_case("quit") || line.eq_ignore_ascii_case("exit") || line == "/quit"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_lines_carry_the_options_asked_for() {
        let plain = Handshake::new(Role::Viewer, None);
        assert_eq!(plain.line(), "viewer heartbeat goodbye\n");
        let resume = Handshake {
            tags: true,
            since: Some(1200),
            token: Some("Zx9-_a".into()),
            ..Handshake::new(Role::Chatter, Some("alice"))
        };
        assert_eq!(
            resume.line(),
            "chat:alice heartbeat goodbye tags since=1200 token=Zx9-_a\n"
        );
        let history = Handshake {
            heartbeat: false,
            goodbye: false,
            tags: true,
            history: Some(20),
            ..Handshake::new(Role::Viewer, None)
        };
        assert_eq!(history.line(), "viewer tags history=20\n");
        for bad in ["", "a b", "a\nviewer"] {
            let hello = Handshake {
                token: Some(bad.into()),
                ..Handshake::new(Role::Chatter, Some("bob"))
            };
            assert_eq!(hello.line(), "chat:bob heartbeat goodbye\n", "{bad:?}");
        }
    }

    #[test]
    fn quit_words_match_the_original_messenger() {
        for word in ["quit", "QUIT", "Exit", " exit ", "/quit"] {
            assert!(is_quit(word), "{word}");
        }
        for word in ["quitter", "exit now", "bye", ""] {
            assert!(!is_quit(word), "{word}");
        }
    }
}
