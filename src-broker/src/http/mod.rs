//! The HTTP side: the JSON API for the console, the WebSocket endpoints for viewers, health and
//! metrics. Plain HTTP or HTTPS (rustls) on one listener.

mod api;
mod auth;
mod error;
mod pages;
mod replay;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State as AxState};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};

use crate::broker::State;

pub use error::ApiError;

/// Largest API request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The routes.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/sessions",
            post(api::create_session).get(api::list_sessions),
        )
        .route(
            "/api/v1/sessions/{id}",
            get(api::get_session).delete(api::stop_session),
        )
        .route("/api/v1/sessions/{id}/tokens", post(api::new_token))
        .route(
            "/api/v1/agents",
            get(api::list_agents).post(api::register_agent),
        )
        .route(
            "/api/v1/agents/{id}",
            get(api::get_agent)
                .patch(api::patch_agent)
                .delete(api::revoke_agent),
        )
        .route(
            "/api/v1/tenant",
            get(api::get_tenant).patch(api::patch_tenant),
        )
        .route("/api/v1/audit", get(api::audit))
        .route("/api/v1/recordings/{id}", get(api::recording))
        .route("/api/v1/recordings/{id}/screen/index", get(replay::index))
        .route("/api/v1/recordings/{id}/screen", get(replay::screen))
        .route("/replay/{id}", get(pages::replay))
        .route("/ws/sessions/{id}", get(ws::viewer))
        .route("/ws/sessions/{id}/raw", get(ws::raw))
        .route("/", get(pages::root))
        .route("/console", get(pages::console))
        .route("/view/{id}", get(pages::view))
        .route("/static/{*path}", get(pages::static_file))
        .route(
            "/api/{*rest}",
            delete(api::not_found)
                .get(api::not_found)
                .post(api::not_found)
                .patch(api::not_found),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn metrics(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    let body = state
        .metrics
        .render(state.registry.len(), state.sessions.len());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// Serves until `state.shutdown` is cancelled.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<State>,
) {
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let result = match tls {
        Some(config) => {
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            let shutdown = state.shutdown.clone();
            state.tasks.spawn(async move {
                shutdown.cancelled().await;
                stopper.graceful_shutdown(Some(Duration::from_secs(2)));
            });
            let rustls = axum_server::tls_rustls::RustlsConfig::from_config(config);
            let acceptor = NoDelay(axum_server::tls_rustls::RustlsAcceptor::new(rustls));
            match axum_server::from_tcp(listener) {
                Ok(server) => server.acceptor(acceptor).handle(handle).serve(app).await,
                Err(e) => Err(e),
            }
        }
        None => match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(state.shutdown.clone().cancelled_owned())
                    .await
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "the HTTP listener stopped");
    }
}

/// Sets TCP_NODELAY on each accepted connection before TLS: viewers' small frames (RFB input,
/// the RFB greeting) must not wait for a delayed ACK.
#[derive(Debug, Clone)]
struct NoDelay<A>(A);

impl<A, S> axum_server::accept::Accept<tokio::net::TcpStream, S> for NoDelay<A>
where
    A: axum_server::accept::Accept<tokio::net::TcpStream, S>,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = A::Future;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        let _ = stream.set_nodelay(true);
        self.0.accept(stream, service)
    }
}
