//! The HTTP side: the JSON API for the console, the WebSocket endpoints for viewers, health and
//! metrics. Plain HTTP or HTTPS (rustls) on one listener, served by [`server`]'s accept loop.

mod api;
mod auth;
mod error;
mod pages;
mod rdp;
mod replay;
mod server;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State as AxState};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};

use crate::broker::State;

pub use error::ApiError;
pub use server::serve;

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
            "/api/v1/agents/{id}/rdp-certificate",
            delete(rdp::reset_certificate),
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
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_deadline,
        ))
        .with_state(state)
}

/// Answers 408 `request_timeout` (and closes the connection) when a request is not received in
/// full and handled within `http_request_timeout`: a body trickled byte by byte is cut like a
/// slow header. A WebSocket handler returns at once with its upgrade, so bridges are unaffected.
async fn request_deadline(
    AxState(state): AxState<Arc<State>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let limit = state.config.http_request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::debug!("request not received and handled within {limit:?}");
            let mut response = ApiError::new(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request was not received in full and answered within {}s",
                    limit.as_secs()
                ),
            )
            .into_response();
            response.headers_mut().insert(
                header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

async fn metrics(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    let body = state
        .metrics
        .render(state.registry.len(), state.sessions.len());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
