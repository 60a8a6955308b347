//! The HTTP listener: the chat page and its WebSocket, health checks and metrics.
//!
//! - `GET /`, `/app.js`, `/app.css`: the chat page, embedded in the binary.
//! - `GET /ws`: a WebSocket upgrade; the connection then becomes a member like any
//!   other, served by the byte-stream transport over the same TCP (or TLS) stream
//!   (`stream.rs`), one line per text frame.
//! - `GET /healthz`: 200 while the process serves at all.
//! - `GET /readyz`: 200 when the server takes connections and its log can be
//!   written; 503, with the reason in the body, while it is shutting down or its log
//!   fails.
//! - `GET /metrics`: every counter in the Prometheus text format.
//!
//! With the server's TLS certificate, the listener speaks HTTPS only, with the same
//! certificate (and the same SIGHUP reload: each handshake takes the current pair).
//!
//! Built on axum (on hyper): routing, HTTP/1.1 and the upgrade are solved problems;
//! once upgraded, the connection leaves hyper and is served by our own loop, which
//! writes the room's frames encoded once for every WebSocket member.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::admission::Gate;
use super::stream::{self, Arrival, ByteStream, Framing};
use crate::hub::{HubStats, WeakHub};
use crate::protocol::websocket;
use crate::room::ConnId;
use crate::socket;
use crate::tls::Certificates;

/// How long a client has to finish its TLS handshake and its request's head.
const HTTP_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most HTTP connections open at once that are not (yet) WebSocket members, who
/// count under the chat's own limits instead.
const MAX_HTTP_CONNECTIONS: usize = 512;

/// What the HTTP side needs of the server.
#[derive(Debug, Clone)]
pub(super) struct Web {
    /// Does not keep the hub running: HTTP lives on while shutdown drains.
    pub(super) hub: WeakHub,
    /// The settings connections take when they arrive.
    pub(super) settings: Arc<super::Settings>,
    pub(super) gate: Arc<Gate>,
    /// The last connection id handed out, shared with the chat's listeners.
    pub(super) ids: Arc<AtomicU64>,
    /// The chat's connections, which WebSocket members join.
    pub(super) tracker: TaskTracker,
}

/// The peer of the HTTP connection a request came on.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

/// Serves `listener` (over TLS with `certificates`) until shutdown begins.
pub(super) async fn run(listener: TcpListener, certificates: Option<Arc<Certificates>>, web: Web) {
    let stats = web.hub.stats();
    let stopping = stats.stopping();
    let transport = if certificates.is_some() { "wss" } else { "ws" };
    let router = Router::new()
        .route("/", get(page))
        .route("/app.js", get(script))
        .route("/app.css", get(style))
        .route("/ws", get(upgrade))
        .with_state((Arc::new(web.clone()), transport))
        .merge(
            Router::new()
                .route("/healthz", get(healthz))
                .route("/readyz", get(readyz))
                .route("/metrics", get(metrics))
                .with_state(stats),
        );
    let open = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    tokio::pin!(stopping);
    loop {
        let accepted = tokio::select! {
            () = &mut stopping => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                debug!(%error, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            debug!(%peer, "too many HTTP connections: closed");
            continue;
        };
        if let Err(error) = socket::configure(&tcp, web.settings.current().dead_peer_timeout) {
            debug!(%error, "could not set socket options");
        }
        // An IPv4 client of a dual-stack socket, as the IPv4 address it is.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let service = router.clone().layer(Extension(Peer(peer)));
        let acceptor = certificates
            .as_ref()
            .map(|certificates| TlsAcceptor::from(certificates.current()));
        tokio::spawn(async move {
            match acceptor {
                None => serve_http(tcp, service).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(HTTP_HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    if let Ok(Ok(tls)) = handshake.await {
                        serve_http(tls, service).await;
                    }
                }
            }
            // An upgraded connection is a member now, under the chat's limits.
            drop(permit);
        });
    }
}

/// HTTP/1.1 on one connection, until it closes or is upgraded.
async fn serve_http<S>(io: S, service: Router)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HTTP_HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades()
        .await;
    if let Err(error) = served {
        debug!(%error, "HTTP connection ended with an error");
    }
}

/// `GET /ws`: checks the upgrade and the Origin, admits the connection as the chat's
/// listeners do, and hands it to the byte-stream transport once upgraded.
async fn upgrade(
    State((web, transport)): State<(Arc<Web>, &'static str)>,
    Extension(Peer(peer)): Extension<Peer>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n").into_response();
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::SEC_WEBSOCKET_VERSION, "13")],
            "WebSocket version 13 only\n",
        )
            .into_response();
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return (StatusCode::BAD_REQUEST, "no Sec-WebSocket-Key\n").into_response();
    };
    let accept = websocket::accept_key(key.as_bytes());
    let origin = headers.get(header::ORIGIN);
    // The settings this connection takes, from the moment it arrives.
    let config = web.settings.current();
    if !origin_allowed(
        origin,
        headers.get(header::HOST),
        &config.http_allowed_origins,
    ) {
        let origin = origin.and_then(|o| o.to_str().ok()).unwrap_or("?");
        info!(%peer, %transport, reason = %"origin-not-allowed", %origin, "refused");
        let Some(hub) = web.hub.upgrade() else {
            return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
        };
        hub.metrics().refused("origin-not-allowed");
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    let Some(hub) = web.hub.upgrade() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    };
    let id = ConnId(web.ids.fetch_add(1, Ordering::Relaxed) + 1);
    let admission = match web.gate.admit(id, peer, transport) {
        Ok(admission) => admission,
        Err(reason) => {
            hub.metrics().refused(reason);
            return (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response();
        }
    };
    hub.metrics()
        .connections_accepted
        .get_or_create(&crate::metrics::Transport {
            transport: transport.to_owned(),
        })
        .inc();
    let on_upgrade = hyper::upgrade::on(&mut request);
    let arrival = Arrival {
        peer,
        id,
        hub,
        config: config.clone(),
        admission,
        password: web.gate.password(),
        bans: web.gate.bans(),
        deadline: Instant::now() + config.handshake_timeout,
        framing: Framing::WebSocket {
            pre_read: bytes::Bytes::new(),
        },
    };
    let tracker = web.tracker.clone();
    web.tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve_upgraded(upgraded, arrival, &tracker),
            Err(error) => debug!(conn = %id, %error, "the WebSocket upgrade failed"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::CONNECTION, HeaderValue::from_static("Upgrade")),
            (
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&accept).unwrap_or(HeaderValue::from_static("")),
            ),
        ],
    )
        .into_response()
}

/// Takes the upgraded connection back out of hyper (it is one of our two stream
/// types) and serves it as a member, in a task of its own: a task that could hold
/// either stream would be as big as the bigger (TLS) one, several kilobytes per idle
/// plain WebSocket member.
fn serve_upgraded(upgraded: hyper::upgrade::Upgraded, arrival: Arrival, tracker: &TaskTracker) {
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => serve_member(parts.io.into_inner(), parts.read_buf, arrival, tracker),
        Err(upgraded) => {
            match upgraded.downcast::<TokioIo<tokio_rustls::server::TlsStream<TcpStream>>>() {
                Ok(parts) => {
                    serve_member(parts.io.into_inner(), parts.read_buf, arrival, tracker);
                }
                Err(_) => warn!(conn = %arrival.id, "an upgraded connection of an unknown kind"),
            }
        }
    }
}

fn serve_member<S: ByteStream>(
    stream: S,
    pre_read: bytes::Bytes,
    mut arrival: Arrival,
    tracker: &TaskTracker,
) {
    // Copied: the bytes hyper read past the request are a view of its whole read
    // buffer, which would otherwise stay allocated.
    arrival.framing = Framing::WebSocket {
        pre_read: bytes::Bytes::copy_from_slice(&pre_read),
    };
    drop(pre_read);
    tracker.spawn(stream::serve(stream, arrival));
}

/// Whether a comma-separated header holds `token` (case-insensitively).
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// Whether a browser page from `origin` may open a WebSocket here: no Origin (not a
/// browser), the page's own origin (the host the request was made to), or one of
/// `allowed` (`*`: any).
fn origin_allowed(
    origin: Option<&HeaderValue>,
    host: Option<&HeaderValue>,
    allowed: &[String],
) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin.split_once("://").map(|(_, authority)| authority);
    match (authority, host.and_then(|host| host.to_str().ok())) {
        (Some(authority), Some(host)) => authority.eq_ignore_ascii_case(host),
        _ => false,
    }
}

/// Headers of the page's files: nothing runs but our own script, nothing is framed
/// by other sites, and a new version is fetched at once.
fn page_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    page_file("text/html; charset=utf-8", include_str!("page/index.html"))
}

async fn script() -> Response {
    page_file(
        "text/javascript; charset=utf-8",
        include_str!("page/app.js"),
    )
}

async fn style() -> Response {
    page_file("text/css; charset=utf-8", include_str!("page/app.css"))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(hub): State<HubStats>) -> (StatusCode, String) {
    if hub.is_stopping() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down\n".to_owned(),
        );
    }
    if !hub.log_is_healthy() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the room's log cannot be written\n".to_owned(),
        );
    }
    if let Some(store) = hub.store().cloned() {
        let probe = tokio::task::spawn_blocking(move || store.probe()).await;
        match probe {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the room's log cannot be written: {error}\n"),
                );
            }
            Err(error) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the room's log could not be checked: {error}\n"),
                );
            }
        }
    }
    (StatusCode::OK, "ready\n".to_owned())
}

async fn metrics(State(hub): State<HubStats>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        hub.metrics().encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn origins() {
        let host = Some(value("chat.example.org:6080"));
        let same = value("http://chat.example.org:6080");
        let other = value("https://evil.example");
        // No Origin: not a browser.
        assert!(origin_allowed(None, host.as_ref(), &[]));
        assert!(origin_allowed(Some(&same), host.as_ref(), &[]));
        assert!(origin_allowed(
            Some(&value("http://CHAT.example.org:6080/")),
            host.as_ref(),
            &[]
        ));
        assert!(!origin_allowed(Some(&other), host.as_ref(), &[]));
        assert!(!origin_allowed(Some(&value("null")), host.as_ref(), &[]));
        assert!(!origin_allowed(Some(&same), None, &[]));
        let listed = ["https://evil.example".to_owned()];
        assert!(origin_allowed(Some(&other), host.as_ref(), &listed));
        assert!(origin_allowed(Some(&same), host.as_ref(), &listed));
        assert!(origin_allowed(
            Some(&value("null")),
            host.as_ref(),
            &["*".to_owned()]
        ));
    }
}
