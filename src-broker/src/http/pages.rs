//! The browser pages: `/view/{id}` (the noVNC viewer), `/console`, and their static files,
//! embedded in the binary at build time. No page may be framed by another site, except the
//! viewer by the origins its session's tenant lists ([`super::headers`]).

use std::sync::Arc;

use axum::extract::{Path, State as AxState};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use crate::broker::State;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/assets.rs"));
}

/// Content security policy of every page: our own scripts only, WebSockets to ourselves.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; \
                   style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'";

fn mime(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn asset(path: &str) -> Option<&'static [u8]> {
    embedded::ASSETS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, bytes)| *bytes)
}

fn respond(path: &str, bytes: &'static [u8]) -> Response {
    respond_framed(path, bytes, &[])
}

/// [`respond`], framable by `frame_ancestors` (none when empty).
fn respond_framed(path: &str, bytes: &'static [u8], frame_ancestors: &[String]) -> Response {
    let mut res = bytes.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime(path)));
    super::headers::set_frame_policy(h, CSP, frame_ancestors);
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

fn page(name: &str) -> Response {
    match asset(name) {
        Some(bytes) => respond(name, bytes),
        None => (StatusCode::NOT_FOUND, "page not built").into_response(),
    }
}

pub async fn view(AxState(state): AxState<Arc<State>>, Path(id): Path<String>) -> Response {
    if !embedded::HAS_NOVNC {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this broker was built without noVNC (npm was missing at build time); install npm and rebuild",
        )
            .into_response();
    }
    // The session's tenant decides who may frame its viewer; an unknown session, nobody.
    let allowed = match state.store.session_with_tenant(&id) {
        Ok(Some((_, tenant))) => state.store.frame_ancestors(tenant).unwrap_or_default(),
        _ => Vec::new(),
    };
    match asset("viewer.html") {
        Some(bytes) => respond_framed("viewer.html", bytes, &allowed),
        None => (StatusCode::NOT_FOUND, "page not built").into_response(),
    }
}

pub async fn replay(Path(_id): Path<String>) -> Response {
    if !embedded::HAS_NOVNC {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this broker was built without noVNC",
        )
            .into_response();
    }
    page("replay.html")
}

pub async fn console() -> Response {
    page("console.html")
}

pub async fn root() -> Redirect {
    Redirect::to("/console")
}

pub async fn static_file(Path(path): Path<String>) -> Response {
    match asset(&path) {
        Some(bytes) => respond(&path, bytes),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}
