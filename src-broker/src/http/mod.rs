//! The HTTP side: the JSON API for the console, the WebSocket endpoints for viewers, health and
//! metrics. Plain HTTP or HTTPS (rustls) on one listener, served by [`server`]'s accept loop.

mod agents;
mod agents_import;
mod agents_list;
mod api;
mod auth;
mod body;
mod ca;
mod cluster;
mod cluster_pipe;
mod enroll;
mod error;
mod headers;
mod keys;
mod oidc;
mod oidc_api;
mod oidc_cookie;
mod openapi;
mod pages;
mod rdp;
mod replay;
mod scrape;
mod server;
mod sessions;
mod terminal;
mod viewer;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::recording::SigningKey;
use crate::registry::Registry;
use crate::session::Core;
use crate::store::Db;
use crate::throttle::Guard;

pub(crate) use error::ApiError;
pub(crate) use scrape::{bind as bind_metrics, serve as serve_metrics};
pub(crate) use server::serve;

/// Where the URLs handed out point.
#[derive(Debug, Clone)]
pub struct Urls {
    /// `http(s)://host:port`, the base of every URL handed out.
    pub base: String,
    /// The HTTPS certificate, when serving HTTPS: launch URLs carry the SHA-256 of the one
    /// served at the time (the desktop helper pins it).
    pub tls: Option<Arc<crate::server_cert::ServerCert>>,
}

impl Urls {
    /// Hex SHA-256 of the HTTPS certificate served now.
    pub fn tls_fingerprint(&self) -> Option<String> {
        self.tls.as_ref().map(|t| t.fingerprint())
    }
}

/// What the HTTP side is given; each handler takes the parts it needs (axum's `FromRef`).
#[derive(Clone)]
pub struct App {
    pub core: Arc<Core>,
    pub db: Db,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub guard: Arc<Guard>,
    pub config: Arc<Config>,
    pub urls: Arc<Urls>,
    pub recording_key: Arc<SigningKey>,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// This node's cluster, when it is one node of several.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("urls", &self.urls)
            .finish_non_exhaustive()
    }
}

macro_rules! parts {
    ($($field:ident: $ty:ty),*) => {$(
        impl FromRef<App> for $ty {
            fn from_ref(app: &App) -> Self {
                app.$field.clone()
            }
        }
    )*};
}

parts!(core: Arc<Core>, db: Db, registry: Arc<Registry>, metrics: Arc<Metrics>, config: Arc<Config>, urls: Arc<Urls>);

/// Largest API request body.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// The routes.
pub(crate) fn router(app: App) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(scrape::public))
        .route(
            "/api/v1/sessions",
            post(sessions::create_session).get(sessions::list_sessions),
        )
        .route(
            "/api/v1/sessions/{id}",
            get(sessions::get_session).delete(sessions::stop_session),
        )
        .route("/api/v1/sessions/{id}/tokens", post(sessions::new_token))
        .route("/api/v1/sessions/{id}/launch", post(sessions::launch))
        .route(
            "/api/v1/agents",
            get(agents::list_agents).post(agents::register_agent),
        )
        .route(
            "/api/v1/agents/import",
            post(agents_import::import_agents)
                .layer(DefaultBodyLimit::max(agents_import::MAX_IMPORT_BODY_BYTES))
                .get(agents_import::get_agent_named_import)
                .patch(agents_import::patch_agent_named_import)
                .delete(agents_import::revoke_agent_named_import),
        )
        .route(
            "/api/v1/agents/{id}",
            get(agents::get_agent)
                .patch(agents::patch_agent)
                .delete(agents::revoke_agent),
        )
        .route(
            "/api/v1/agents/{id}/rdp-certificate",
            delete(rdp::reset_certificate),
        )
        .route(
            "/api/v1/agents/{id}/ssh-host-key",
            delete(terminal::reset_host_key),
        )
        .route(
            "/api/v1/enrollment-tokens",
            get(enroll::list_tokens).post(enroll::create_token),
        )
        .route(
            "/api/v1/enrollment-tokens/{id}",
            delete(enroll::revoke_token),
        )
        .route("/api/v1/enroll", post(enroll::enroll))
        .route(openapi::PATH, get(openapi::document))
        .route(
            "/api/v1/tenant",
            get(api::get_tenant).patch(api::patch_tenant),
        )
        .merge(keys::routes())
        .merge(oidc::routes())
        .route("/api/v1/tenant/ssh-ca", get(ca::list).post(ca::add))
        .route(
            "/api/v1/tenant/ssh-ca/revoked",
            get(ca::revoked).post(ca::revoke),
        )
        .route("/api/v1/tenant/ssh-ca/{id}", delete(ca::remove))
        .route("/api/v1/audit", get(api::audit))
        .route("/api/v1/audit/search", get(terminal::search))
        .route(
            "/api/v1/recordings/{id}/asciicast",
            get(terminal::asciicast),
        )
        .route("/api/v1/recordings/{id}", get(api::recording))
        .route("/api/v1/recordings/{id}/segments", get(api::segments))
        .route("/api/v1/recordings/{id}/screen/index", get(replay::index))
        .route("/api/v1/recordings/{id}/screen", get(replay::screen))
        .route("/replay/{id}", get(pages::replay))
        .route("/ws/sessions/{id}", get(ws::viewer))
        .route("/ws/sessions/{id}/raw", get(ws::raw))
        .route("/ws/sessions/{id}/watch", get(ws::watch))
        .route("/", get(pages::root))
        .route("/console", get(pages::console))
        .route("/view/{id}", get(pages::view))
        .route("/static/{*path}", get(pages::static_file))
        .route(crate::cluster::DROP_AGENT_PATH, post(cluster::drop_agent))
        .route(
            crate::cluster::DROP_CERTIFIED_PATH,
            post(cluster::drop_certified),
        )
        .route(
            "/api/{*rest}",
            delete(api::not_found)
                .get(api::not_found)
                .post(api::not_found)
                .patch(api::not_found),
        )
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            cluster::route,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.config.clone(),
            request_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.config.clone(),
            headers::hsts,
        ))
        .with_state(app)
}

/// Answers 408 `request_timeout` (and closes the connection) when a request is not received in
/// full and handled within `http_request_timeout`: a body trickled byte by byte is cut like a
/// slow header. A WebSocket handler returns at once with its upgrade, so bridges are unaffected.
async fn request_deadline(
    State(config): State<Arc<Config>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let limit = config.http_request_timeout;
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
