//! [`JsonBody`]: a request body that must be a JSON object. axum's `Json` lets serde read a
//! struct from an array too, field by field (`[null, null]` was a valid `PATCH /api/v1/tenant`
//! and `["pc-2", "<key>"]` registered an agent; found by schemathesis), so the body's first
//! token is checked before the same `Json` parsing as before (same limits, same errors, a
//! duplicate field still refused).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use super::ApiError;

/// A JSON object body read into `T`; every refusal is an [`ApiError`] (400, 413 or 415).
#[derive(Debug)]
pub(super) struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::unsupported_media_type());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large()
            } else {
                ApiError::bad_request(r.body_text())
            }
        })?;
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let Json(value) = Json::<T>::from_bytes(&bytes)?;
        Ok(JsonBody(value))
    }
}

/// `application/json` or `application/<something>+json`, parameters aside (what axum's `Json`
/// accepts).
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence
        .strip_prefix("application/")
        .is_some_and(|sub| sub == "json" || sub.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use passerelle_proto::api::PatchTenant;

    async fn read(content_type: &str, body: &str) -> Result<JsonBody<PatchTenant>, ApiError> {
        let req = Request::builder()
            .header("content-type", content_type)
            .body(axum::body::Body::from(body.to_owned()))
            .expect("request");
        JsonBody::<PatchTenant>::from_request(req, &()).await
    }

    #[tokio::test]
    async fn only_an_object_is_a_body() {
        let json = "application/json; charset=utf-8";
        let ok = read(json, " {\"retention_days\": 7}")
            .await
            .expect("an object");
        assert_eq!(ok.0.retention_days, Some(7));
        let bad = [
            "[null, null]",
            "[]",
            "null",
            "7",
            "",
            r#"{"retention_dayz": 7}"#,
            r#"{"retention_days": 7, "retention_days": 8}"#,
            "{",
        ];
        for body in bad {
            let e = read(json, body).await.expect_err(body);
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "bad_request"),
                "{body}"
            );
        }
        let e = read("text/plain", "{}").await.expect_err("text/plain");
        assert_eq!(e.code, "unsupported_media_type");
        assert!(read("application/merge-patch+json", "{}").await.is_ok());
    }
}
