//! The console's browser session on the HTTP side: its cookies, the [`Caller`] a session cookie
//! makes, and the cross-site request check for cookie callers.
//!
//! The session cookie is `passerelle_session=pcs_<id>_<secret>; Path=/; HttpOnly; Secure;
//! SameSite=Strict` (see [`crate::store::ConsoleSession`]): scripts cannot read it, no cross-site
//! request carries it. As defence in depth, a cookie call that changes something (any method
//! but GET, HEAD, OPTIONS) must also carry an `Origin` header naming this broker (its public
//! URL, or the `Host` the request was sent to); otherwise 403. API keys are unaffected: a
//! request with `Authorization` is judged by its key alone and its cookies are ignored.

use std::net::SocketAddr;

use axum::http::{HeaderMap, Method, header};
use passerelle_proto::api::Role;

use super::auth::Caller;
use super::{ApiError, App};

/// The session cookie's name.
pub(super) const SESSION_COOKIE: &str = "passerelle_session";
/// The sign-in flow's cookie (see [`crate::oidc::flow`]).
pub(super) const FLOW_COOKIE: &str = "passerelle_oidc_flow";
/// The longest session cookie value looked at (`pcs_` + 12 + `_` + 43).
const MAX_SESSION_COOKIE: usize = 128;

/// The value of cookie `name` in the request, if any.
pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// `Set-Cookie` for the session cookie, living `max_age` seconds (0 deletes it).
pub(super) fn session_cookie(value: &str, max_age: u64) -> String {
    format!(
        "{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
    )
}

/// `Set-Cookie` for the flow cookie, living `max_age` seconds (0 deletes it).
pub(super) fn flow_cookie(value: &str, max_age: u64) -> String {
    format!(
        "{FLOW_COOKIE}={value}; Path=/auth/callback; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax"
    )
}

/// Whether the request's `Origin` is this broker: its public URL, or the host it was sent to.
pub(super) fn same_origin(headers: &HeaderMap, base: &str) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if origin == base.trim_end_matches('/') {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    matches!((authority, host), (Some(a), Some(h)) if !a.is_empty() && a == h)
}

/// The caller a session cookie makes (the request has no `Authorization` header).
pub(super) async fn caller(
    headers: &HeaderMap,
    method: &Method,
    peer: Option<SocketAddr>,
    app: &App,
    value: &str,
) -> Result<Caller, ApiError> {
    if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        && !same_origin(headers, &app.urls.base)
    {
        return Err(ApiError::forbidden(
            "a signed-in console's changes must come from the console's own page \
             (the Origin header names another site, or none)",
        ));
    }
    let text = value.to_owned();
    let found = if text.len() <= MAX_SESSION_COOKIE {
        app.db.run(move |s| s.console_session(&text)).await?
    } else {
        None
    };
    let Some(session) = found else {
        if let Some(peer) = peer {
            app.guard
                .failed(peer, None, "an unknown or ended console session cookie");
        }
        return Err(ApiError::unauthorized(
            "your console sign-in has ended (signed out or expired): sign in again",
        ));
    };
    Ok(Caller {
        tenant_id: session.tenant_id,
        key_id: format!("session:{}", session.id),
        role: session.role,
        operator: Some(session.name.clone()),
        console: Some(session),
    })
}

/// What a console caller's refusal says.
pub(super) fn role_refusal(role: Role) -> ApiError {
    ApiError::forbidden(format!("your role ({}) may not do this", role.as_str()))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; passerelle_session=pcs_x_y"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("pcs_x_y"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "passerelle"), None);
        let set = session_cookie("v", 60);
        for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/;"] {
            assert!(set.contains(attr), "{set}");
        }
        assert!(flow_cookie("v", 600).contains("SameSite=Lax"));
    }

    #[test]
    fn only_this_brokers_origin_passes() {
        let base = "https://broker.example:8443";
        let with = |origin: Option<&'static str>, host: &'static str| {
            let mut h = HeaderMap::new();
            if let Some(o) = origin {
                h.insert(header::ORIGIN, HeaderValue::from_static(o));
            }
            h.insert(header::HOST, HeaderValue::from_static(host));
            same_origin(&h, base)
        };
        assert!(with(Some("https://broker.example:8443"), "x"));
        assert!(with(Some("http://10.0.0.5:8080"), "10.0.0.5:8080"));
        assert!(!with(Some("https://evil.example"), "broker.example:8443"));
        assert!(!with(Some("null"), "broker.example:8443"));
        assert!(!with(None, "broker.example:8443"));
    }
}
