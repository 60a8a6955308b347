//! The HTTP listener: health checks and metrics for operators.
//!
//! - `GET /healthz`: 200 while the process serves at all.
//! - `GET /readyz`: 200 when the server takes connections and its log can be
//!   written; 503, with the reason in the body, while it is shutting down or its log
//!   fails.
//! - `GET /metrics`: every counter in the Prometheus text format.
//!
//! Built on axum (on hyper): routing, HTTP/1.1 and graceful shutdown are solved
//! problems, and the chat's own transports stay hand-written where it pays.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::warn;

use crate::hub::HubStats;

/// Serves `listener` until shutdown begins.
pub(super) async fn run(listener: TcpListener, hub: HubStats) {
    let stopping = hub.stopping();
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(hub);
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(stopping)
        .await;
    if let Err(error) = served {
        warn!(%error, "the HTTP listener failed");
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
