//! The browser pages: `/view/{id}` (the noVNC viewer, the xterm.js terminal of an `ssh`
//! session, or IronRDP's client for an `rdp` session), `/replay/{id}`, `/console`, and their
//! static files, embedded in the binary at build time. No page may be framed by another site,
//! except the viewer (noVNC, terminal or RDP) by the origins its session's tenant lists
//! ([`super::headers`]).

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::App;
use crate::store::Db;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/assets.rs"));
}

/// Content security policy of every page: our own scripts only, WebSockets to ourselves.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; \
                   style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'";

/// The RDP page's policy: IronRDP's client is WebAssembly, inlined as a `data:` URL that it
/// fetches and compiles (`'wasm-unsafe-eval'`, `connect-src data:`); its web component styles
/// itself inline and draws the remote cursor from `data:` images. Nothing else is allowed.
const RDP_CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
                       connect-src 'self' data:; img-src 'self' data: blob:; \
                       style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; \
                       form-action 'none'";

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
    respond_framed(path, bytes, CSP, &[])
}

/// [`respond`] with the policy `csp`, framable by `frame_ancestors` (none when empty).
fn respond_framed(
    path: &str,
    bytes: &'static [u8],
    csp: &str,
    frame_ancestors: &[String],
) -> Response {
    let mut res = bytes.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime(path)));
    super::headers::set_frame_policy(h, csp, frame_ancestors);
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

/// The session's service, as the store has it: its pages follow it.
async fn service_of(db: &Db, id: String) -> Option<String> {
    db.run(move |s| s.session_service(&id)).await.ok().flatten()
}

/// Whether the session is an `ssh` one (its pages are the terminal's).
async fn is_terminal(db: &Db, id: String) -> bool {
    service_of(db, id).await.as_deref() == Some("ssh")
}

/// A terminal page, framable by `frame_ancestors` (none when empty).
fn terminal_page(name: &str, frame_ancestors: &[String]) -> Response {
    if !embedded::HAS_XTERM || !embedded::HAS_XTERM_FIT {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this broker was built without xterm.js (npm was missing at build time); install npm and rebuild",
        )
            .into_response();
    }
    match asset(name) {
        Some(bytes) => respond_framed(name, bytes, CSP, frame_ancestors),
        None => (StatusCode::NOT_FOUND, "page not built").into_response(),
    }
}

/// The origins the session's tenant lets frame its viewer; an unknown session, none.
async fn frame_ancestors_of(db: &Db, id: String) -> Vec<String> {
    db.run(move |s| {
        Ok(match s.session_with_tenant(&id)? {
            Some((_, tenant)) => s.frame_ancestors(tenant)?,
            None => Vec::new(),
        })
    })
    .await
    .unwrap_or_default()
}

/// IronRDP's web client, with its own policy ([`RDP_CSP`]), framable by `frame_ancestors`.
fn rdp_page(frame_ancestors: &[String]) -> Response {
    if !(embedded::HAS_IRONRDP && embedded::HAS_IRONRDP_RDP) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this broker was built without IronRDP's web client (npm was missing at build time); install npm and rebuild",
        )
            .into_response();
    }
    match asset("rdp.html") {
        Some(bytes) => respond_framed("rdp.html", bytes, RDP_CSP, frame_ancestors),
        None => (StatusCode::NOT_FOUND, "page not built").into_response(),
    }
}

pub(super) async fn view(State(app): State<App>, Path(id): Path<String>) -> Response {
    // The session's tenant decides who may frame its viewer.
    let allowed = frame_ancestors_of(&app.db, id.clone()).await;
    match service_of(&app.db, id).await.as_deref() {
        Some("ssh") => return terminal_page("terminal.html", &allowed),
        Some("rdp") => return rdp_page(&allowed),
        _ => {}
    }
    if !embedded::HAS_NOVNC {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this broker was built without noVNC (npm was missing at build time); install npm and rebuild",
        )
            .into_response();
    }
    match asset("viewer.html") {
        Some(bytes) => respond_framed("viewer.html", bytes, CSP, &allowed),
        None => (StatusCode::NOT_FOUND, "page not built").into_response(),
    }
}

pub(super) async fn replay(State(db): State<Db>, Path(id): Path<String>) -> Response {
    if is_terminal(&db, id).await {
        return terminal_page("terminal-replay.html", &[]);
    }
    if !embedded::HAS_NOVNC {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this broker was built without noVNC",
        )
            .into_response();
    }
    page("replay.html")
}

pub(super) async fn console() -> Response {
    page("console.html")
}

pub(super) async fn root() -> Redirect {
    Redirect::to("/console")
}

pub(super) async fn static_file(Path(path): Path<String>) -> Response {
    match asset(&path) {
        Some(bytes) => respond(&path, bytes),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}
