//! Console sign-in with the tenant's OpenID provider: `GET /console/signin?tenant=NAME` sends
//! the browser to the provider (authorization code flow, PKCE S256, `state`, `nonce`),
//! `GET /auth/callback` redeems the code, checks the ID token ([`crate::oidc`]), maps the
//! person's claim to a role and opens a browser session (a cookie, see [`super::oidc_cookie`]);
//! `POST /console/signout` ends it; `GET /api/v1/console/me` says who the console acts as.
//!
//! A refused sign-in answers a small page that says why (with a stable `data-code`) and writes
//! a `console_sign_in_refused` audit event; the flow cookie is deleted either way, so a callback
//! URL works at most once per sign-in started.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use passerelle_proto::ids::TenantName;
use passerelle_proto::oidc::Me;

use super::auth::Caller;
use super::oidc_cookie::{FLOW_COOKIE, SESSION_COOKIE, cookie, flow_cookie, session_cookie};
use super::{ApiError, App};
use crate::oidc::{self, Expect, Flow, Redeem, provider};
use crate::store::{AuditKind, NewEvent, OidcSettings, TenantId, now_ms, rfc3339};

/// The routes, merged into the router.
pub(super) fn routes() -> axum::Router<App> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/console/signin", get(signin))
        .route("/auth/callback", get(callback))
        .route("/console/signout", post(signout))
        .route("/api/v1/console/me", get(me))
        .route(
            "/api/v1/tenant/oidc",
            get(super::oidc_api::get)
                .put(super::oidc_api::put)
                .delete(super::oidc_api::delete),
        )
}

/// Where the provider sends the browser back.
pub(super) fn redirect_uri(app: &App) -> String {
    format!("{}/auth/callback", app.urls.base.trim_end_matches('/'))
}

/// A refusal: what the page says, its stable code, its status.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The page of a refused sign-in; it also deletes the flow cookie.
fn refused_page(r: &Refusal) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"referrer\" content=\"no-referrer\"><title>Sign-in refused</title>\
         <link rel=\"stylesheet\" href=\"/static/style.css\"></head><body><main class=\"console\">\
         <h1>Sign-in refused</h1><p id=\"signin-error\" class=\"error\" data-code=\"{}\">{}</p>\
         <p><a href=\"/console\">Back to the console</a></p></main></body></html>",
        r.code,
        escape(&r.message)
    );
    let mut res = (r.status, body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    no_store(h);
    if let Ok(v) = HeaderValue::from_str(&flow_cookie("", 0)) {
        h.append(header::SET_COOKIE, v);
    }
    res
}

fn no_store(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// Audits a refusal (in the tenant when known) and answers its page.
fn refuse(app: &App, tenant: Option<TenantId>, r: &Refusal) -> Response {
    tracing::info!(code = r.code, "console sign-in refused: {}", r.message);
    let mut ev = NewEvent::new(
        AuditKind::ConsoleSignInRefused,
        format!("{}: {}", r.code, r.message),
    );
    ev.tenant_id = tenant;
    app.db.audit(ev);
    refused_page(r)
}

fn unusable(e: &provider::ProviderError) -> Refusal {
    match e {
        provider::ProviderError::Unusable(_) => {
            Refusal::new(StatusCode::BAD_GATEWAY, "provider_unusable", e.to_string())
        }
        provider::ProviderError::Refused { .. } => {
            Refusal::new(StatusCode::BAD_REQUEST, "code_refused", e.to_string())
        }
    }
}

/// The tenant named and its settings, if it has sign-in.
async fn settings_of(
    app: &App,
    name: TenantName,
) -> Result<Option<(TenantId, OidcSettings)>, ApiError> {
    Ok(app
        .db
        .run(move |s| {
            Ok(match s.tenant_id(&name)? {
                Some(id) => s.oidc_settings(id)?.map(|st| (id, st)),
                None => None,
            })
        })
        .await?)
}

/// `GET /console/signin?tenant=NAME`: 303 to the provider's authorization endpoint.
async fn signin(State(app): State<App>, Query(q): Query<HashMap<String, String>>) -> Response {
    let name = q.get("tenant").map_or("default", String::as_str);
    let not_configured = || {
        Refusal::new(
            StatusCode::NOT_FOUND,
            "not_configured",
            format!(
                "tenant {name:?} has no OpenID Connect sign-in (an admin sets it up with \
                 PUT /api/v1/tenant/oidc); use an API key instead"
            ),
        )
    };
    let Ok(tenant) = TenantName::new(name) else {
        return refused_page(&not_configured());
    };
    let (tenant_id, settings) = match settings_of(&app, tenant).await {
        Ok(Some(found)) => found,
        Ok(None) => return refused_page(&not_configured()),
        Err(e) => return e.into_response(),
    };
    let discovery = match provider::discover(&settings.issuer).await {
        Ok(d) => d,
        Err(e) => return refuse(&app, Some(tenant_id), &unusable(&e)),
    };
    let flow = Flow::start(tenant_id, now_ms());
    let sealing = flow.clone();
    let sealed = match app.db.run(move |s| Ok(sealing.seal(s.secret_box()))).await {
        Ok(sealed) => sealed,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (redirect, challenge) = (redirect_uri(&app), flow.challenge());
    let params: [(&str, &str); 8] = [
        ("response_type", "code"),
        ("client_id", &settings.client_id),
        ("redirect_uri", &redirect),
        ("scope", "openid profile email"),
        ("state", &flow.state),
        ("nonce", &flow.nonce),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ];
    let params = params
        .iter()
        // Spaces as %20 in a URL (form encoding's `+` is not read as a space everywhere).
        .map(|(k, v)| format!("{k}={}", provider::form_encode(v).replace('+', "%20")))
        .collect::<Vec<_>>()
        .join("&");
    let sep = if discovery.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    let location = format!("{}{sep}{params}", discovery.authorization_endpoint);
    let mut res = StatusCode::SEE_OTHER.into_response();
    let h = res.headers_mut();
    no_store(h);
    let ttl = u64::try_from(oidc::flow::FLOW_TTL_MS / 1000).unwrap_or(600);
    match (
        HeaderValue::from_str(&location),
        HeaderValue::from_str(&flow_cookie(&sealed, ttl)),
    ) {
        (Ok(loc), Ok(set)) => {
            h.insert(header::LOCATION, loc);
            h.append(header::SET_COOKIE, set);
            res
        }
        _ => refuse(
            &app,
            Some(tenant_id),
            &Refusal::new(
                StatusCode::BAD_GATEWAY,
                "provider_unusable",
                "the provider's authorization endpoint is not a usable URL",
            ),
        ),
    }
}

/// `GET /auth/callback?code=…&state=…` (or `error=…`): opens the browser session, 303 to
/// `/console`.
async fn callback(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let sealed = cookie(&headers, FLOW_COOKIE).map(str::to_owned);
    let state = q.get("state").cloned().unwrap_or_default();
    let now = now_ms();
    let resumed = app
        .db
        .run(move |s| Ok(Flow::resume(sealed.as_deref(), &state, s.secret_box(), now)))
        .await;
    let flow = match resumed {
        Ok(Ok(flow)) => flow,
        Ok(Err((tenant, e))) => {
            let r = Refusal::new(StatusCode::BAD_REQUEST, e.code(), e.to_string());
            return refuse(&app, tenant, &r);
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    let tenant = flow.tenant_id;
    if let Some(error) = q.get("error") {
        let detail = q
            .get("error_description")
            .map(|d| {
                format!(
                    ": {}",
                    d.chars()
                        .filter(|c| !c.is_control())
                        .take(200)
                        .collect::<String>()
                )
            })
            .unwrap_or_default();
        let error: String = error.chars().filter(|c| !c.is_control()).take(64).collect();
        let r = Refusal::new(
            StatusCode::FORBIDDEN,
            "provider_error",
            format!("the sign-in provider did not sign you in ({error}{detail})"),
        );
        return refuse(&app, Some(tenant), &r);
    }
    let Some(code) = q.get("code").filter(|c| !c.is_empty() && c.len() <= 2048) else {
        let r = Refusal::new(
            StatusCode::BAD_REQUEST,
            "no_code",
            "the provider's answer carries no code",
        );
        return refuse(&app, Some(tenant), &r);
    };
    let settings = match app.db.run(move |s| s.oidc_settings(tenant)).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            let r = Refusal::new(
                StatusCode::NOT_FOUND,
                "not_configured",
                "this tenant's OpenID Connect sign-in was removed",
            );
            return refuse(&app, Some(tenant), &r);
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    // RFC 9207: a provider that names itself on the way back must be this tenant's (a mix-up
    // with another provider's answer is refused before its code goes anywhere).
    if q.get("iss").is_some_and(|iss| *iss != settings.issuer) {
        let r = Refusal::new(
            StatusCode::BAD_REQUEST,
            "issuer",
            format!(
                "the answer comes from another provider than this tenant's issuer {}",
                settings.issuer
            ),
        );
        return refuse(&app, Some(tenant), &r);
    }
    let redirect = redirect_uri(&app);
    let checked = async {
        let d = provider::discover(&settings.issuer)
            .await
            .map_err(|e| unusable(&e))?;
        let id_token = provider::redeem(
            &d,
            &Redeem {
                code,
                redirect_uri: &redirect,
                verifier: &flow.verifier,
                client_id: &settings.client_id,
                client_secret: &settings.client_secret,
            },
        )
        .await
        .map_err(|e| unusable(&e))?;
        let jwks = provider::keys(&d).await.map_err(|e| unusable(&e))?;
        let expect = Expect {
            issuer: &settings.issuer,
            client_id: &settings.client_id,
            nonce: &flow.nonce,
        };
        oidc::idtoken::verify(&id_token, &jwks, &expect)
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))
    };
    let claims = match checked.await {
        Ok(claims) => claims,
        Err(r) => return refuse(&app, Some(tenant), &r),
    };
    let name = oidc::person_name(&claims);
    let subject = claims
        .get("sub")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let Some(role) = oidc::role_of(&claims, &settings.role_claim, &settings.roles) else {
        let r = Refusal::new(
            StatusCode::FORBIDDEN,
            "no_role",
            format!(
                "{name}: your account has no Passerelle role here (its claim {:?} has none of the \
                 values this tenant maps to a role); ask an admin",
                settings.role_claim
            ),
        );
        return refuse(&app, Some(tenant), &r);
    };
    let ttl = app.config.console_session_ttl;
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let (n, sub) = (name.clone(), subject.clone());
    let opened = app
        .db
        .run(move |s| s.create_console_session(tenant, &sub, &n, role, ttl_ms))
        .await;
    let (session, secret) = match opened {
        Ok(opened) => opened,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut ev = NewEvent::new(
        AuditKind::ConsoleSignIn,
        format!(
            "{name} (subject {subject:?} at {}) signed in to the console as {}; session {} until {}",
            settings.issuer,
            role.as_str(),
            session.id,
            rfc3339(session.expires_at)
        ),
    );
    ev.tenant_id = Some(tenant);
    ev.operator = Some(name);
    ev.api_key = Some(format!("session:{}", session.id));
    app.db.audit(ev);
    let mut res = StatusCode::SEE_OTHER.into_response();
    let h = res.headers_mut();
    no_store(h);
    h.insert(header::LOCATION, HeaderValue::from_static("/console"));
    for set in [session_cookie(&secret, ttl.as_secs()), flow_cookie("", 0)] {
        if let Ok(v) = HeaderValue::from_str(&set) {
            h.append(header::SET_COOKIE, v);
        }
    }
    res
}

/// `POST /console/signout`: ends the browser session (from this broker's own page only) and
/// deletes its cookie; 204 whether or not one was live.
async fn signout(State(app): State<App>, headers: HeaderMap) -> Response {
    if !super::oidc_cookie::same_origin(&headers, &app.urls.base) {
        return ApiError::forbidden("sign out from the console's own page (Origin)")
            .into_response();
    }
    if let Some(text) = cookie(&headers, SESSION_COOKIE).map(str::to_owned) {
        match app.db.run(move |s| s.end_console_session(&text)).await {
            Ok(Some(session)) => {
                let mut ev = NewEvent::new(
                    AuditKind::ConsoleSignOut,
                    format!(
                        "{} signed out of the console; session {}",
                        session.name, session.id
                    ),
                );
                ev.tenant_id = Some(session.tenant_id);
                ev.operator = Some(session.name);
                ev.api_key = Some(format!("session:{}", session.id));
                app.db.audit(ev);
            }
            Ok(None) => {}
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    let mut res = StatusCode::NO_CONTENT.into_response();
    no_store(res.headers_mut());
    if let Ok(v) = HeaderValue::from_str(&session_cookie("", 0)) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

/// `GET /api/v1/console/me`: who the console acts as.
#[utoipa::path(get, path = "/api/v1/console/me", tag = "console",
    description = "Who the caller is: the signed-in person (browser session cookie) or the API key's role. Roles: any.",
    security(("api_key" = []), ("console_session" = [])),
    responses(
        (status = 200, description = "The caller", body = Me),
        (status = 401, description = "`unauthorized`: no API key, no live session", body = passerelle_proto::api::ErrorBody),
    ))]
pub(super) async fn me(caller: Caller, State(app): State<App>) -> Result<Json<Me>, ApiError> {
    let tenant_id = caller.tenant_id;
    let tenant = app.db.run(move |s| s.tenant_name(tenant_id)).await?;
    Ok(Json(match &caller.console {
        Some(s) => Me {
            via: "session".into(),
            tenant: tenant.to_string(),
            role: s.role,
            name: Some(s.name.clone()),
            subject: Some(s.subject.clone()),
            expires_at: Some(rfc3339(s.expires_at)),
        },
        None => Me {
            via: "api_key".into(),
            tenant: tenant.to_string(),
            role: caller.role,
            name: None,
            subject: None,
            expires_at: None,
        },
    }))
}
