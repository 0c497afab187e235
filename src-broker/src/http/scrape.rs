//! `/metrics` (Prometheus text), which counts every tenant's agents, sessions and failures, so
//! it is not for everyone once the broker is exposed:
//!
//! - `metrics_listen` gives it a listener of its own (plain HTTP, `/metrics` only; e.g. on
//!   loopback or a management network), and the public listener's `/metrics` answers 404;
//! - `metrics_token` makes it require `Authorization: Bearer <token>` (compared in constant
//!   time) wherever it is served; a request without the right token is answered 404, as if
//!   there were no such page, and a wrong token counts toward the address's lockout like an
//!   unknown API key.
//!
//! With neither, the public listener serves it to anyone, as before.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;
use tracing::Instrument as _;

use super::{ApiError, App};

/// Connections the metrics listener serves at once (scrapers are few).
const MAX_CONNECTIONS: usize = 16;
/// How long a scraper may take to send its request header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET /metrics` on the public listener.
pub(super) async fn public(State(app): State<App>, req: axum::extract::Request) -> Response {
    if app.config.metrics_listen.is_some() {
        return ApiError::not_found("route").into_response();
    }
    render(&app, peer_of(&req), req.headers())
}

/// The client's address, as the accept loop recorded it.
fn peer_of(req: &axum::extract::Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// The exposition, if the request may have it.
fn render(app: &App, peer: Option<SocketAddr>, headers: &HeaderMap) -> Response {
    if let Some(token) = &app.config.metrics_token {
        if let Some(peer) = peer
            && let Err(wait) = app.guard.allowed(peer)
        {
            return ApiError::too_many_attempts(wait).into_response();
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(p) if token.matches(p.trim()) => {}
            other => {
                if let (Some(_), Some(peer)) = (other, peer) {
                    app.guard.failed(peer, None, "a wrong /metrics token");
                }
                return ApiError::not_found("route").into_response();
            }
        }
    }
    let mut body = app
        .metrics
        .render(app.registry.len(), app.core.table().len());
    if let Some(cluster) = &app.cluster {
        body = crate::metrics::labelled(&body, "node", &cluster.node);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn separate(State(app): State<App>, req: axum::extract::Request) -> Response {
    render(&app, peer_of(&req), req.headers())
}

async fn nothing_else() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// Binds `metrics_listen`, when configured (at start, so that a taken port stops the broker).
pub(crate) fn bind(state_config: &crate::Config) -> anyhow::Result<Option<std::net::TcpListener>> {
    use anyhow::Context as _;
    let Some(addr) = state_config.metrics_listen else {
        return Ok(None);
    };
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the metrics listener on {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}

/// Serves `/metrics` alone on its own listener until shutdown: HTTP/1.1, a request header
/// within 10 s, at most 16 connections at once (more are closed at once).
pub(crate) async fn serve(listener: std::net::TcpListener, app: App) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!(error = %e, "the metrics listener could not start"),
    };
    let router = Router::new()
        .route("/metrics", axum::routing::get(separate))
        .fallback(nothing_else)
        .with_state(app.clone());
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut acceptor = crate::accept::Acceptor::new(listener, "metrics");
    while let Some((stream, peer)) = acceptor.next(&app.shutdown).await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many metrics connections; closed at once");
            continue;
        };
        let (router, shutdown) = (router.clone(), app.shutdown.clone());
        app.tasks.spawn(
            async move {
                let _slot = slot;
                let service = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(ConnectInfo(peer));
                        router.clone().oneshot(req)
                    },
                );
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        tracing::debug!(error = %e, "metrics connection ended");
                    },
                    () = shutdown.cancelled() => {}
                }
            }
            .instrument(tracing::debug_span!("metrics", %peer)),
        );
    }
}
