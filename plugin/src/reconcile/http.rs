//! `/metrics`, `/healthz` and `/readyz` on the config's `listen` address.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use super::metrics::Metrics;
use super::status::StatusBoard;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct Ops {
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
}

/// The operations endpoint's routes.
pub fn router(metrics: Arc<Metrics>, board: Arc<StatusBoard>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Ops { metrics, board })
}

/// Serves the routes on `listener` until the future is dropped.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, board)).await
}

async fn metrics_text(State(ops): State<Ops>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], ops.metrics.encode())
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    match ops.board.not_ready() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Provision;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let metrics = Arc::new(Metrics::new());
        let board = Arc::new(StatusBoard::new([("kata".to_owned(), Provision::Eager)]));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, metrics.clone(), board.clone()));

        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let unready = get(addr, "/readyz").await;
        assert!(unready.starts_with("HTTP/1.1 503"), "{unready}");
        assert!(unready.contains("not configured"), "{unready}");
        board.update_containerd(|c| c.configured = true);
        board.update_class("kata", |c| {
            c.state = super::super::status::ArtifactState::Ready
        });
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));

        metrics.nri_registrations.inc();
        let text = get(addr, "/metrics").await;
        assert!(text.contains("application/openmetrics-text"), "{text}");
        assert!(
            text.contains("kata_nri_manager_nri_registrations_total 1"),
            "{text}"
        );
        server.abort();
    }
}
