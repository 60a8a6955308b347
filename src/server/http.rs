//! The HTTP listener: health checks and metrics for operators.
//!
//! - `GET /healthz`: 200 while the process serves at all.
//! - `GET /readyz`: 200 when the server takes connections and its log can be
//!   written; 503, with the reason in the body, while it is shutting down or its log
//!   fails.
//! - `GET /metrics`: every counter in the Prometheus text format.
//!
//! With the server's TLS certificate, the listener speaks HTTPS only, with the same
//! certificate (and the same SIGHUP reload: each handshake takes the current pair).
//!
//! Built on axum (on hyper): routing, HTTP/1.1 and graceful shutdown are solved
//! problems, and the chat's own transports stay hand-written where it pays.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::hub::HubStats;
use crate::tls::Certificates;

/// How long a client has to finish its TLS handshake and its request's head.
const HTTP_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` (over TLS with `certificates`) until shutdown begins.
pub(super) async fn run(
    listener: TcpListener,
    certificates: Option<Arc<Certificates>>,
    hub: HubStats,
) {
    let stopping = hub.stopping();
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(hub);
    let Some(certificates) = certificates else {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(stopping)
            .await;
        if let Err(error) = served {
            warn!(%error, "the HTTP listener failed");
        }
        return;
    };
    tokio::pin!(stopping);
    loop {
        let accepted = tokio::select! {
            () = &mut stopping => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                debug!(%error, "HTTPS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = TlsAcceptor::from(certificates.current());
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HTTP_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let Ok(Ok(tls)) = handshake.await else {
                return;
            };
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HTTP_HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .await;
            if let Err(error) = served {
                debug!(%error, "HTTPS connection ended with an error");
            }
        });
    }
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
