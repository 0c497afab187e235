//! OpenAPI schemas of the validated names, whose serde is hand-written (a checked string), so
//! that the broker's document says what they accept: the alphabet and length [`crate::ids`] and
//! [`crate::enroll::IdPattern`] check. Only with the `openapi` feature.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::enroll::{IdPattern, MAX_ID_PATTERN};
use crate::ids::{AgentId, MAX_ID_LEN, ServiceName, TenantName};

/// What [`crate::ids`] accepts: 1 to 64 of ASCII letters, digits, `.`, `_`, `-`, not starting
/// with `.` or `-`.
pub const ID_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9._-]*$";

fn checked_string(description: &str, pattern: &str, max: usize, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(pattern))
        .examples([example])
        .into()
}

macro_rules! named {
    ($name:ty, $description:literal, $example:literal) => {
        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                checked_string($description, ID_PATTERN, MAX_ID_LEN, $example)
            }
        }
        impl ToSchema for $name {}
    };
}

named!(TenantName, "A tenant's name.", "default");
named!(
    AgentId,
    "An agent's id, also its SSH user name on the broker.",
    "pc-accounting-01"
);
named!(
    ServiceName,
    "A service an agent announces (the bind address of its `ssh -R` forward): `vnc`, `rdp`, \
     `ssh` or one the tenant allows.",
    "vnc"
);

impl PartialSchema for IdPattern {
    fn schema() -> RefOr<Schema> {
        checked_string(
            "A glob over agent ids: their alphabet and the wildcards `*` and `?`.",
            "^[A-Za-z0-9._*?-]+$",
            MAX_ID_PATTERN,
            "pc-accounting-*",
        )
    }
}
impl ToSchema for IdPattern {}

#[cfg(test)]
mod tests {
    use crate::api_keys::{CreateApiKey, MAX_NAME_CHARS};
    use crate::enroll::{CreateEnrollmentToken, MAX_TOKEN_NAME, MAX_USES};

    fn schema<T: utoipa::PartialSchema>() -> serde_json::Value {
        serde_json::to_value(T::schema()).expect("a schema is JSON")
    }

    /// The bounds written as literals in the `schema(...)` attributes are the checked ones.
    #[test]
    fn documented_bounds_are_the_checked_ones() {
        let key = schema::<CreateApiKey>();
        assert_eq!(key["properties"]["name"]["maxLength"], MAX_NAME_CHARS);
        let token = schema::<CreateEnrollmentToken>();
        assert_eq!(token["properties"]["name"]["maxLength"], MAX_TOKEN_NAME);
        let uses = token["properties"]["uses"].to_string();
        assert!(uses.contains(&format!("\"maximum\":{MAX_USES}")), "{uses}");
    }
}
