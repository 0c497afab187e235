//! Response headers that protect the pages: HSTS on every HTTPS answer, and who may frame a
//! page (`frame-ancestors` and `X-Frame-Options`).
//!
//! No page may be framed by another site (clickjacking of the console's buttons), except that
//! a tenant may list the origins allowed to embed its viewer (`PATCH /api/v1/tenant
//! {frame_ancestors}`, e.g. the platform's own console); the console and the replay page never
//! get that list.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;

use crate::config::{Config, TlsMode};

/// One year, without `includeSubDomains`: the broker's name says nothing of its neighbours.
pub(super) const HSTS: &str = "max-age=31536000";

/// Adds `Strict-Transport-Security` to every answer of an HTTPS listener (a browser ignores it
/// over plain HTTP, and behind a TLS-terminating proxy it is the proxy's to send).
pub(super) async fn hsts(
    State(config): State<Arc<Config>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut res = next.run(req).await;
    if config.tls != TlsMode::Insecure {
        res.headers_mut().insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    res
}

/// The `frame-ancestors` directive for `allowed` origins (already checked by
/// [`passerelle_proto::origin`]): `'none'` when there are none.
pub(super) fn frame_ancestors(allowed: &[String]) -> String {
    if allowed.is_empty() {
        "frame-ancestors 'none'".to_owned()
    } else {
        format!("frame-ancestors {}", allowed.join(" "))
    }
}

/// Sets the page's CSP (`base` plus its `frame-ancestors`) and, when no origin may frame it,
/// `X-Frame-Options: DENY` for browsers that predate CSP's directive. (That header cannot name
/// several origins, so an allowed list relies on CSP alone, as every current browser does.)
pub(super) fn set_frame_policy(headers: &mut HeaderMap, base: &str, allowed: &[String]) {
    let csp = format!("{base}; {}", frame_ancestors(allowed));
    match HeaderValue::from_str(&csp) {
        Ok(v) => {
            headers.insert(header::CONTENT_SECURITY_POLICY, v);
        }
        // Origins are checked when stored, so this cannot happen; deny rather than allow.
        Err(_) => {
            let deny = format!("{base}; frame-ancestors 'none'");
            if let Ok(v) = HeaderValue::from_str(&deny) {
                headers.insert(header::CONTENT_SECURITY_POLICY, v);
            }
        }
    }
    if allowed.is_empty() {
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    } else {
        headers.remove(header::X_FRAME_OPTIONS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_denied_to_frames_unless_origins_are_listed() {
        let mut h = HeaderMap::new();
        set_frame_policy(&mut h, "default-src 'self'", &[]);
        assert_eq!(
            h[header::CONTENT_SECURITY_POLICY],
            "default-src 'self'; frame-ancestors 'none'"
        );
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        let allowed = vec![
            "https://a.example".to_owned(),
            "https://b.example:8443".to_owned(),
        ];
        set_frame_policy(&mut h, "default-src 'self'", &allowed);
        assert_eq!(
            h[header::CONTENT_SECURITY_POLICY],
            "default-src 'self'; frame-ancestors https://a.example https://b.example:8443"
        );
        assert!(h.get(header::X_FRAME_OPTIONS).is_none());
    }
}
