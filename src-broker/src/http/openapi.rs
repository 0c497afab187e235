//! The OpenAPI 3.1 document of the HTTP API (`GET /api/v1/openapi.json`), assembled from the
//! `#[utoipa::path]` annotations next to the handlers and the `ToSchema` of the API types
//! (passerelle-proto's `openapi` feature), so that it describes what the handlers take and
//! answer.
//!
//! What is common to many operations is added here once, by [`finish`], rather than on each
//! handler: the error answers every authenticated route may give (401, 403, 429), those of any
//! route with input (400, and 413/415 with a body), of every route (408) and of every route that
//! touches the store (500, 507). Each error answer's body is the `ErrorBody` schema narrowed to
//! the `code`s its description lists first (`` `code_a`, `code_b`: why ``), so that a tester
//! checks the codes too. The WebSocket operations' descriptions gain the close codes from
//! [`passerelle_proto::close::ALL`].
//!
//! The committed copy is `docs/openapi.json`; tests/tests/openapi.rs fails when the served
//! document differs from it (`UPDATE_OPENAPI=1` rewrites it).

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use passerelle_proto::api::ErrorBody;
use serde_json::{Map, Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use super::{
    agents, agents_import, api, ca, enroll, keys, oidc, oidc_api, rdp, replay, sessions, terminal,
    ws,
};

/// The path the document is served at.
pub(crate) const PATH: &str = "/api/v1/openapi.json";

/// A body of bytes that is not JSON (recordings, screen streams).
pub(super) struct Binary;

impl PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::Custom("binary".into())))
            .into()
    }
}
impl ToSchema for Binary {}

/// The description of `GET /ws/sessions/{id}` (the close codes are added by [`finish`]).
pub(super) const WS_VIEWER: &str = "A viewer's WebSocket: the session's service as the browser \
viewer speaks it (RFB for `vnc`, RDCleanPath then RDP for `rdp`, the terminal protocol for \
`ssh`), in binary frames. The viewer token is presented as `Authorization: Bearer <token>` \
(native clients), as the subprotocol `passerelle.token.<token>` next to `binary` (browsers; the \
broker answers `binary`), or as `?token=`; an `rdp` viewer may send it in its RDCleanPath \
request instead. The upgrade is always accepted when the request is one: a refused token, an \
ended session or an unavailable agent is told in the close frame, with a code and a reason.";

/// The description of `GET /ws/sessions/{id}/raw`.
pub(super) const WS_RAW: &str = "A raw WebSocket: the workstation service's bytes as they are \
(e.g. for a native VNC client through `passerelle connect`), in binary frames. The token is \
presented as for the viewer endpoint. Refusals are told in the close frame, with a code and a \
reason.";

/// The description of `GET /ws/sessions/{id}/watch`.
pub(super) const WS_WATCH: &str = "A launch token's watch on its session (the desktop helper \
keeps one per tunnel): once admitted the broker sends the text frame `watching`, then nothing \
until the session ends, when it closes with the session's end code. Only a launch token (from \
`launch_url`) watches; other tokens are unknown here and stay unspent. A watched session whose \
agent goes ends `agent_disconnected`. The token is presented as `Authorization: Bearer <token>` \
or `?token=`.";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Passerelle broker API",
        description = "The JSON API of a Passerelle broker: sessions, agents, enrolment, keys, \
            the tenant's settings, the audit and recordings; and the viewers' WebSocket \
            endpoints. Every error answer is `{\"error\": {\"code\", \"message\"}}`: programs \
            branch on `code`, people read `message`."
    ),
    paths(
        document,
        sessions::create_session,
        sessions::list_sessions,
        sessions::get_session,
        sessions::stop_session,
        sessions::new_token,
        sessions::launch,
        agents::list_agents,
        agents::register_agent,
        agents_import::import_agents,
        agents_import::get_agent_named_import,
        agents_import::patch_agent_named_import,
        agents_import::revoke_agent_named_import,
        agents::get_agent,
        agents::patch_agent,
        agents::revoke_agent,
        rdp::reset_certificate,
        terminal::reset_host_key,
        enroll::list_tokens,
        enroll::create_token,
        enroll::revoke_token,
        enroll::enroll,
        api::get_tenant,
        api::patch_tenant,
        keys::list,
        keys::create,
        keys::revoke,
        api::audit,
        terminal::search,
        api::recording,
        api::segments,
        terminal::asciicast,
        replay::index,
        replay::screen,
        ws::viewer,
        ws::raw,
        ws::watch,
        ca::list,
        ca::add,
        ca::remove,
        ca::revoked,
        ca::revoke,
        oidc_api::get,
        oidc_api::put,
        oidc_api::delete,
        oidc::me,
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

/// The ways callers authenticate.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            "api_key",
            bearer(
                "An API key (`psk_...`), made with `passerelle api-key create` or \
                 `POST /api/v1/keys`. Its role (admin, helpdesk or auditor) decides what it may \
                 do: each operation lists the roles it accepts. A console may name the person \
                 behind a call in `X-Passerelle-Operator` (recorded in the audit).",
            ),
        );
        components.add_security_scheme(
            "console_session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "passerelle_session",
                "A person signed in to the console with the tenant's OpenID provider \
                 (`/console/signin`). Every operation accepts it in place of an API key, with \
                 the role the provider's claim maps to; the person's name is the operator. \
                 Calls that change something must come from the broker's own page (`Origin`).",
            ))),
        );
        components.add_security_scheme(
            "exchange_token",
            bearer("A session's one-time exchange token, from its viewer URL's fragment."),
        );
        components.add_security_scheme(
            "viewer_token",
            bearer("A session's viewer token (`token` of a created session or issued token)."),
        );
        components.add_security_scheme(
            "viewer_token_subprotocol",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Sec-WebSocket-Protocol",
                "The viewer token as the subprotocol `passerelle.token.<token>`, offered next \
                 to `binary`.",
            ))),
        );
    }
}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    description = "This document (OpenAPI 3.1). No authentication.",
    security(()),
    responses((status = 200, description = "The document", body = serde_json::Value)))]
pub(super) async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], text()).into_response()
}

/// The document as served: pretty JSON and a final newline, as committed.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    finish(&mut doc);
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
});

/// The document's text.
fn text() -> &'static str {
    DOCUMENT.as_str()
}

/// An error answer added to operations by [`finish`]: status, name under
/// `components/responses`, description.
type Common = (&'static str, &'static str, &'static str);

const BAD_REQUEST: Common = (
    "400",
    "BadRequest",
    "`bad_request`: a malformed or out-of-range body, query or path value (the message says which)",
);
const TOO_LARGE: Common = ("413", "TooLarge", "`too_large`: a request body over 64 KiB");
const UNSUPPORTED_MEDIA_TYPE: Common = (
    "415",
    "UnsupportedMediaType",
    "`unsupported_media_type`: the body is not sent as `Content-Type: application/json`",
);
const UNAUTHORIZED: Common = (
    "401",
    "Unauthorized",
    "`unauthorized`: no `Authorization: Bearer` API key, or an unknown, revoked or expired one",
);
const FORBIDDEN: Common = (
    "403",
    "Forbidden",
    "`forbidden`: the key's role may not do this",
);
const TOO_MANY_ATTEMPTS: Common = (
    "429",
    "TooManyAttempts",
    "`too_many_attempts`: this address presented too many unknown API keys or tokens and is \
     refused for a while (`Retry-After` says how long)",
);
const REQUEST_TIMEOUT: Common = (
    "408",
    "RequestTimeout",
    "`request_timeout`: the request was not received in full and answered in time",
);
const INTERNAL: Common = (
    "500",
    "Internal",
    "`internal`: an unexpected failure (see the broker's log)",
);
const STORAGE_FULL: Common = (
    "507",
    "StorageFull",
    "`storage_full`: the broker's data disk is full; nothing was changed",
);
const ALL_COMMON: [Common; 9] = [
    BAD_REQUEST,
    UNAUTHORIZED,
    FORBIDDEN,
    REQUEST_TIMEOUT,
    TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    TOO_MANY_ATTEMPTS,
    INTERNAL,
    STORAGE_FULL,
];

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Adds the common error answers, narrows every error body to its codes and lists the close
/// codes of the WebSocket operations.
fn finish(doc: &mut Value) {
    unsigned(doc);
    if let Some(components) = doc.get_mut("components").and_then(Value::as_object_mut) {
        let responses: Map<String, Value> = ALL_COMMON
            .iter()
            .map(|(status, name, description)| {
                ((*name).to_owned(), error_response(status, description))
            })
            .collect();
        components.insert("responses".into(), Value::Object(responses));
    }
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        for method in METHODS {
            let Some(op) = item.get_mut(method).and_then(Value::as_object_mut) else {
                continue;
            };
            let mut common = vec![REQUEST_TIMEOUT];
            let secured = op
                .get("security")
                .and_then(Value::as_array)
                .is_some_and(|s| s.iter().any(|r| r.get("api_key").is_some()));
            let has_params = op
                .get("parameters")
                .and_then(Value::as_array)
                .is_some_and(|p| !p.is_empty());
            let has_body = op.contains_key("requestBody");
            if has_params || has_body {
                common.push(BAD_REQUEST);
            }
            if has_body {
                common.extend([TOO_LARGE, UNSUPPORTED_MEDIA_TYPE]);
            }
            if secured {
                common.extend([UNAUTHORIZED, FORBIDDEN, TOO_MANY_ATTEMPTS]);
            }
            if path.starts_with("/api/") && path != PATH {
                common.extend([INTERNAL, STORAGE_FULL]);
            }
            if path.starts_with("/ws/") {
                let text = op.get("description").and_then(Value::as_str).unwrap_or("");
                let described = format!("{text}\n\n{}", close_codes());
                op.insert("description".into(), Value::String(described));
            }
            let responses = op
                .entry("responses")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(responses) = responses.as_object_mut() {
                add_errors(responses, &common);
            }
        }
    }
}

/// Rust's unsigned integers as JSON Schema says them: utoipa's `u-int32` (not a format any
/// validator knows) becomes `minimum: 0` and the type's `maximum`, so that a tester neither
/// takes 2^31 for out of range (the `int32` of the strict mapping) nor sends 2^64.
fn unsigned(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let max = match map.get("format").and_then(Value::as_str) {
                Some("u-int8") => Some(json!(u8::MAX)),
                Some("u-int16") => Some(json!(u16::MAX)),
                Some("u-int32") => Some(json!(u32::MAX)),
                Some("u-int64") => Some(json!(u64::MAX)),
                _ => None,
            };
            if let Some(max) = max {
                map.remove("format");
                map.insert("minimum".into(), json!(0));
                map.entry("maximum").or_insert(max);
            }
            map.values_mut().for_each(unsigned);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned),
        _ => {}
    }
}

/// The close codes a viewer's WebSocket may be closed with, as a Markdown list.
fn close_codes() -> String {
    let mut text = String::from("Close codes (4000-4999 are Passerelle's own):\n");
    for code in passerelle_proto::close::ALL {
        text.push_str(&format!("- {}: {}\n", code.code, code.reason));
    }
    text
}

/// Merges `common` into `responses` (a reference to the shared answer, or its description
/// appended to the operation's own answer of that status) and narrows every error body to the
/// codes it lists.
fn add_errors(responses: &mut Map<String, Value>, common: &[Common]) {
    for (status, name, description) in common {
        match responses.get_mut(*status) {
            Some(existing) => {
                let before = existing
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                // The operation's own answer already says it (e.g. a larger body limit).
                let own = codes_of(before);
                if codes_of(description).iter().all(|c| own.contains(c)) {
                    continue;
                }
                existing["description"] = Value::String(format!("{before}; {description}"));
            }
            None => {
                let shared = format!("#/components/responses/{name}");
                responses.insert((*status).to_owned(), json!({ "$ref": shared }));
            }
        }
    }
    for (status, response) in responses.iter_mut() {
        narrow(status, response);
    }
}

/// A shared error answer.
fn error_response(status: &str, description: &str) -> Value {
    let mut response = json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": ERROR_REF}}},
    });
    narrow(status, &mut response);
    response
}

/// Narrows an error answer's body to the codes its description lists; a 429 gains its
/// `Retry-After` header.
fn narrow(status: &str, response: &mut Value) {
    let codes = codes_of(
        response
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or(""),
    );
    let Some(schema) = response.pointer_mut("/content/application~1json/schema") else {
        return;
    };
    if schema.get("$ref").and_then(Value::as_str) != Some(ERROR_REF) || codes.is_empty() {
        return;
    }
    *schema = json!({"allOf": [
        {"$ref": ERROR_REF},
        {"type": "object", "properties": {"error": {
            "type": "object", "properties": {"code": {"enum": codes}}
        }}},
    ]});
    if status == "429" {
        response["headers"] = json!({"Retry-After": {
            "description": "Seconds to wait (with `too_many_attempts`)",
            "schema": {"type": "integer", "minimum": 1},
        }});
    }
}

const ERROR_REF: &str = "#/components/schemas/ErrorBody";

/// The codes a response's description lists: the backticked words before the `:` of each of
/// its `; `-separated parts.
fn codes_of(description: &str) -> Vec<String> {
    let mut codes = Vec::new();
    for part in description.split("; ") {
        let Some((head, _)) = part.split_once(": ") else {
            continue;
        };
        for word in head.split('`').skip(1).step_by(2) {
            if !word.is_empty() && !codes.iter().any(|c| c == word) {
                codes.push(word.to_owned());
            }
        }
    }
    codes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_read_from_each_part_of_a_description() {
        let d = "`agent_offline`, `service_unavailable`: why (see `x`); `internal`: oops";
        assert_eq!(
            codes_of(d),
            ["agent_offline", "service_unavailable", "internal"]
        );
        assert!(codes_of("Revoked").is_empty());
    }

    #[test]
    fn every_api_operation_has_its_errors_narrowed_and_the_common_ones() {
        let doc: Value = serde_json::from_str(text()).expect("the document is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let op = &doc["paths"]["/api/v1/sessions"]["post"];
        let codes = &op["responses"]["409"]["content"]["application/json"]["schema"]["allOf"][1]["properties"]
            ["error"]["properties"]["code"]["enum"];
        assert_eq!(
            codes,
            &json!(["agent_offline", "service_unavailable", "conflict"])
        );
        let codes_429 = &op["responses"]["429"]["content"]["application/json"]["schema"]["allOf"]
            [1]["properties"]["error"]["properties"]["code"]["enum"];
        assert_eq!(codes_429, &json!(["quota_exceeded", "too_many_attempts"]));
        let codes_403 = &op["responses"]["403"]["content"]["application/json"]["schema"]["allOf"]
            [1]["properties"]["error"]["properties"]["code"]["enum"];
        assert_eq!(codes_403, &json!(["recording_required", "forbidden"]));
        for (status, name) in [
            ("400", "BadRequest"),
            ("401", "Unauthorized"),
            ("408", "RequestTimeout"),
            ("413", "TooLarge"),
            ("415", "UnsupportedMediaType"),
            ("500", "Internal"),
            ("507", "StorageFull"),
        ] {
            let shared = format!("#/components/responses/{name}");
            assert_eq!(op["responses"][status]["$ref"], shared.as_str(), "{status}");
            assert!(doc["components"]["responses"].get(name).is_some(), "{name}");
        }
        // The enrolment route has no API key, so no 401 for a missing one and no 403 for a role.
        let enroll = &doc["paths"]["/api/v1/enroll"]["post"];
        assert_eq!(enroll["security"], json!([{}]));
        assert!(
            enroll["responses"]["401"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("unknown enrolment token") && !d.contains("API key"))
        );
        let ws = doc["paths"]["/ws/sessions/{id}"]["get"]["description"]
            .as_str()
            .unwrap_or("");
        assert!(ws.contains("4001: token invalid or already used"), "{ws}");
        assert!(!text().contains("u-int"), "unsigned formats are bounds");
        let limit = &doc["paths"]["/api/v1/sessions"]["get"]["parameters"][1]["schema"];
        assert_eq!(limit["maximum"], json!(u32::MAX), "{limit}");
    }
}
