//! The bodies of `/api/v1/tenant/oidc` (a tenant's OpenID Connect sign-in for the console) and
//! `/api/v1/console/me` (who the console acts as). The client secret is write-only: it appears
//! in [`PutOidc`] and in no answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::Role;

/// The longest issuer URL, client id, claim name or claim value, in bytes.
pub const MAX_FIELD_BYTES: usize = 512;
/// The most claim values a tenant may map to roles.
pub const MAX_ROLE_VALUES: usize = 64;

/// `PUT /api/v1/tenant/oidc`: replaces the tenant's provider settings.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PutOidc {
    /// The provider's issuer URL, exactly as its tokens' `iss` says (`https://`; `http://` only
    /// for a provider on the loopback interface). Its discovery document is
    /// `ISSUER/.well-known/openid-configuration`.
    pub issuer: String,
    /// The client id the provider gave the broker.
    pub client_id: String,
    /// The client's secret (write-only: sealed in the store, never answered).
    pub client_secret: String,
    /// The ID token claim that carries the person's groups or roles (a string or an array of
    /// strings), e.g. `groups`.
    pub role_claim: String,
    /// Claim value → role. A person whose values map to several roles gets the strongest;
    /// one whose values map to none is refused.
    pub roles: BTreeMap<String, Role>,
    /// What the sign-in button says, e.g. `Contoso`; the issuer's host when absent.
    #[serde(default)]
    pub display_name: Option<String>,
}

impl std::fmt::Debug for PutOidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutOidc")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("role_claim", &self.role_claim)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// `GET /api/v1/tenant/oidc`: the settings, without the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OidcInfo {
    pub issuer: String,
    pub client_id: String,
    pub role_claim: String,
    pub roles: BTreeMap<String, Role>,
    /// What the sign-in button says.
    pub display_name: String,
    /// Where the provider must send the browser back (register it with the provider).
    pub redirect_uri: String,
    /// When the settings were last replaced (RFC 3339).
    pub updated_at: String,
}

/// `GET /api/v1/console/me`: who the console acts as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Me {
    /// `session` (signed in with OpenID Connect) or `api_key`.
    pub via: String,
    pub tenant: String,
    pub role: Role,
    /// The signed-in person's name, recorded as the operator; absent for API keys.
    #[serde(default)]
    pub name: Option<String>,
    /// The provider's subject for the person; absent for API keys.
    #[serde(default)]
    pub subject: Option<String>,
    /// When the browser session ends (RFC 3339); absent for API keys.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// Checks [`PutOidc`] as far as it can without the network: the issuer's scheme and shape,
/// non-empty, bounded fields without control characters.
pub fn check(put: &PutOidc) -> Result<(), String> {
    check_issuer(&put.issuer)?;
    for (what, v) in [
        ("client_id", put.client_id.as_str()),
        ("client_secret", put.client_secret.as_str()),
        ("role_claim", put.role_claim.as_str()),
    ] {
        check_text(what, v)?;
    }
    if put.roles.is_empty() || put.roles.len() > MAX_ROLE_VALUES {
        return Err(format!(
            "roles must map 1 to {MAX_ROLE_VALUES} claim values to roles"
        ));
    }
    for value in put.roles.keys() {
        check_text("a roles claim value", value)?;
    }
    if let Some(name) = &put.display_name {
        check_text("display_name", name)?;
    }
    Ok(())
}

fn check_text(what: &str, v: &str) -> Result<(), String> {
    if v.trim().is_empty() || v.len() > MAX_FIELD_BYTES || v.chars().any(char::is_control) {
        return Err(format!(
            "{what} must be 1 to {MAX_FIELD_BYTES} bytes of printable characters"
        ));
    }
    Ok(())
}

/// An issuer is `https://host[:port][/path]`, or `http://` for a loopback host (a provider on
/// the same machine, as in tests); no query, no fragment, no trailing slash.
pub fn check_issuer(issuer: &str) -> Result<(), String> {
    check_text("issuer", issuer)?;
    let rest = if let Some(rest) = issuer.strip_prefix("https://") {
        rest
    } else if let Some(rest) = issuer.strip_prefix("http://") {
        let host = rest.split('/').next().unwrap_or_default();
        let host = host
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h);
        if !matches!(host, "localhost" | "127.0.0.1" | "[::1]") {
            return Err("issuer must be an https:// URL (http:// only for a loopback host)".into());
        }
        rest
    } else {
        return Err("issuer must be an https:// URL (http:// only for a loopback host)".into());
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains('@') || rest.contains(['?', '#', ' ']) {
        return Err("issuer must be a URL with a host and no user, query or fragment".into());
    }
    if rest.ends_with('/') {
        return Err("issuer must not end with a slash (write it as the tokens' iss)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_are_https_or_loopback_http() {
        for good in [
            "https://login.example.com",
            "https://login.example.com/realms/x",
            "http://127.0.0.1:4000",
            "http://localhost:8080/oidc",
            "http://[::1]:9000",
        ] {
            assert_eq!(check_issuer(good), Ok(()), "{good}");
        }
        for bad in [
            "http://login.example.com",
            "http://127.0.0.1.evil.example",
            "ftp://x",
            "https://",
            "https://a@b.example",
            "https://login.example.com/",
            "https://login.example.com?x=1",
            "",
        ] {
            assert!(check_issuer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_secret_is_not_in_debug() {
        let put = PutOidc {
            issuer: "https://i".into(),
            client_id: "c".into(),
            client_secret: "hunter2".into(),
            role_claim: "groups".into(),
            roles: BTreeMap::new(),
            display_name: None,
        };
        assert!(!format!("{put:?}").contains("hunter2"));
        assert!(check(&put).unwrap_err().contains("roles"));
    }
}
