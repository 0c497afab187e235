//! [`JsonBody`]: a request body that must be a JSON object. axum's `Json` lets serde read a
//! struct from an array too (`[null, null]` was a valid `PATCH /api/v1/tenant`, found by
//! schemathesis), so that a body the document says is an object would be taken positionally.

use axum::Json;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ApiError;

/// A JSON object body read into `T`; every refusal is an [`ApiError`] (400, 413 or 415).
#[derive(Debug)]
pub(super) struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<Value>::from_request(req, state).await?;
        if !value.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        serde_json::from_value(value)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use passerelle_proto::api::PatchTenant;

    async fn read(body: &str) -> Result<JsonBody<PatchTenant>, ApiError> {
        let req = Request::builder()
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_owned()))
            .expect("request");
        JsonBody::<PatchTenant>::from_request(req, &()).await
    }

    #[tokio::test]
    async fn only_an_object_is_a_body() {
        let ok = read(r#"{"retention_days": 7}"#).await.expect("an object");
        assert_eq!(ok.0.retention_days, Some(7));
        for bad in [
            "[null, null]",
            "[]",
            "null",
            "7",
            r#"{"retention_dayz": 7}"#,
            "{",
        ] {
            let e = read(bad).await.expect_err(bad);
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "bad_request"),
                "{bad}"
            );
        }
    }
}
