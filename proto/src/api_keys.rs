//! The bodies of `/api/v1/keys`: API keys as an admin lists, creates and revokes them. The
//! secret appears once, in [`CreatedApiKey`]; no other body ever carries it.

use serde::{Deserialize, Serialize};

use crate::api::Role;

/// The longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// `POST /api/v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateApiKey {
    /// What the key is for, e.g. `helpdesk console` (1 to 64 printable characters).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When it stops working (RFC 3339, in the future); never when absent.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// Checks a key name: 1 to [`MAX_NAME_CHARS`] characters, none of them control characters,
/// not only spaces.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    let n = name.chars().count();
    if name.trim().is_empty() || n > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err("name must be 1 to 64 printable characters");
    }
    Ok(())
}

/// One key as `GET /api/v1/keys` lists it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKeyInfo {
    /// The public id (12 hex digits), the `ID` in `psk_ID_…`; names the key in the audit.
    pub id: String,
    pub name: String,
    pub role: Role,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, when the key expires (or expired).
    pub expires_at: Option<String>,
    /// RFC 3339, when it was revoked.
    pub revoked_at: Option<String>,
    /// Whether it authenticates now: neither revoked nor expired.
    pub active: bool,
}

/// `POST /api/v1/keys` answers the key with its secret, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub info: ApiKeyInfo,
    /// The whole key, `psk_…`, for `Authorization: Bearer`. It cannot be shown again.
    pub key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_refuse_unknown_fields_and_names_are_checked() {
        let ok: CreateApiKey = serde_json::from_str(r#"{"name":"ci","role":"helpdesk"}"#).unwrap();
        assert_eq!((ok.role, ok.expires_at), (Role::Helpdesk, None));
        assert!(serde_json::from_str::<CreateApiKey>(r#"{"name":"ci","role":"root"}"#).is_err());
        assert!(
            serde_json::from_str::<CreateApiKey>(r#"{"name":"ci","role":"admin","secret":"x"}"#)
                .is_err()
        );
        assert!(check_name("helpdesk console").is_ok());
        assert!(check_name(&"é".repeat(64)).is_ok());
        for bad in ["", "   ", "a\nb", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_created_key_is_the_info_and_the_secret() {
        let created = CreatedApiKey {
            info: ApiKeyInfo {
                id: "0123456789ab".into(),
                name: "ci".into(),
                role: Role::Auditor,
                created_at: "2026-01-01T00:00:00.000Z".into(),
                expires_at: None,
                revoked_at: None,
                active: true,
            },
            key: "psk_0123456789ab_x".into(),
        };
        let v = serde_json::to_value(&created).unwrap();
        assert_eq!(v["id"], "0123456789ab");
        assert_eq!(v["key"], "psk_0123456789ab_x");
        let back: CreatedApiKey = serde_json::from_value(v).unwrap();
        assert_eq!(back.info, created.info);
    }
}
