//! One sign-in's state between the broker's redirect to the provider and the provider's
//! redirect back, and what the broker makes of the person's claims.
//!
//! The callback is a cross-site navigation, so the `SameSite=Strict` session cookie could not
//! carry anything on it. The flow's state therefore rides in its own short-lived cookie
//! (`SameSite=Lax`, sent on that top-level navigation; `HttpOnly`, `Secure`, path
//! `/auth/callback`), sealed with the store's key ([`crate::secrets::SecretBox`]): the browser
//! can neither read nor forge it, any node of a cluster can open it, nothing is kept on the
//! server. The callback's `state` must equal the sealed one (so a callback URL made in another
//! browser, the "login CSRF", fails), and the ID token's `nonce` the sealed nonce. PKCE (S256)
//! ties the code to the verifier sealed here. A flow lives [`FLOW_TTL_MS`].

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use passerelle_proto::api::Role;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::secrets::{SecretBox, ct_eq, random_token};
use crate::store::TenantId;

/// How long a sign-in may take, from the broker's redirect to the callback.
pub(crate) const FLOW_TTL_MS: i64 = 10 * 60 * 1000;
/// The longest flow cookie accepted (a sealed flow is about 300 bytes).
pub(crate) const MAX_FLOW_COOKIE: usize = 2048;

/// A sign-in in progress.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Flow {
    #[serde(rename = "t")]
    pub(crate) tenant_id: TenantId,
    #[serde(rename = "s")]
    pub(crate) state: String,
    #[serde(rename = "n")]
    pub(crate) nonce: String,
    /// The PKCE code verifier.
    #[serde(rename = "v")]
    pub(crate) verifier: String,
    /// ms since the epoch.
    #[serde(rename = "e")]
    pub(crate) expires_at: i64,
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow")
            .field("tenant_id", &self.tenant_id)
            .finish_non_exhaustive()
    }
}

/// Why a callback does not continue a flow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FlowError {
    #[error(
        "no sign-in is in progress in this browser (start again from the console; a sign-in \
         must finish in the browser that started it, within 10 minutes)"
    )]
    Missing,
    #[error("this sign-in took longer than 10 minutes; start again from the console")]
    Expired,
    #[error(
        "the provider's answer does not belong to this browser's sign-in (state mismatch); \
         start again from the console"
    )]
    BadState,
}

impl FlowError {
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Missing => "no_flow",
            Self::Expired => "flow_expired",
            Self::BadState => "bad_state",
        }
    }
}

impl Flow {
    /// A fresh flow for `tenant_id`, started at `now` (ms).
    pub(crate) fn start(tenant_id: TenantId, now: i64) -> Self {
        Self {
            tenant_id,
            state: random_token(),
            nonce: random_token(),
            verifier: random_token(),
            expires_at: now + FLOW_TTL_MS,
        }
    }

    /// The PKCE S256 challenge of the verifier.
    pub(crate) fn challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.verifier.as_bytes()))
    }

    /// The cookie's value.
    pub(crate) fn seal(&self, sealer: &SecretBox) -> String {
        // Serializing a struct of strings and integers does not fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(sealer.seal(&json))
    }

    /// The flow a callback continues: its cookie opened, unexpired, with the callback's state.
    pub(crate) fn resume(
        cookie: Option<&str>,
        state: &str,
        sealer: &SecretBox,
        now: i64,
    ) -> Result<Self, (Option<TenantId>, FlowError)> {
        let flow = cookie
            .filter(|c| c.len() <= MAX_FLOW_COOKIE)
            .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
            .and_then(|sealed| sealer.open(&sealed))
            .and_then(|json| serde_json::from_slice::<Self>(&json).ok())
            .ok_or((None, FlowError::Missing))?;
        if flow.expires_at <= now {
            return Err((Some(flow.tenant_id), FlowError::Expired));
        }
        if !ct_eq(flow.state.as_bytes(), state.as_bytes()) {
            return Err((Some(flow.tenant_id), FlowError::BadState));
        }
        Ok(flow)
    }
}

/// The strongest role the claim's values map to: `claims[claim]` is a string or an array of
/// strings (other shapes map to nothing).
pub(crate) fn role_of(claims: &Value, claim: &str, roles: &BTreeMap<String, Role>) -> Option<Role> {
    let values: Vec<&str> = match claims.get(claim) {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    values
        .into_iter()
        .filter_map(|v| roles.get(v))
        .max()
        .copied()
}

/// The name recorded as the operator: `name`, else `preferred_username`, else `email`, else the
/// subject; control characters dropped, at most 128 characters (the audit's operator field).
pub(crate) fn person_name(claims: &Value) -> String {
    let pick = ["name", "preferred_username", "email", "sub"]
        .iter()
        .filter_map(|k| claims.get(*k).and_then(Value::as_str))
        .map(|s| {
            s.chars()
                .filter(|c| !c.is_control())
                .take(128)
                .collect::<String>()
        })
        .find(|s| !s.trim().is_empty());
    pick.unwrap_or_else(|| "unnamed".to_owned())
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sealer() -> (tempfile::TempDir, SecretBox) {
        let dir = tempfile::tempdir().unwrap();
        let b = SecretBox::load_or_create(&dir.path().join("k")).unwrap();
        (dir, b)
    }

    #[test]
    fn a_flow_resumes_only_with_its_state_in_time() {
        let (_d, sealer) = sealer();
        let flow = Flow::start(7, 1_000);
        let cookie = flow.seal(&sealer);
        assert!(cookie.len() < MAX_FLOW_COOKIE);
        assert!(!cookie.contains(&flow.state) && !cookie.contains(&flow.verifier));
        let back = Flow::resume(Some(&cookie), &flow.state, &sealer, 2_000).unwrap();
        assert_eq!((back.tenant_id, back.nonce), (7, flow.nonce.clone()));
        assert_eq!(
            Flow::resume(Some(&cookie), "forged", &sealer, 2_000).unwrap_err(),
            (Some(7), FlowError::BadState)
        );
        assert_eq!(
            Flow::resume(Some(&cookie), &flow.state, &sealer, 1_000 + FLOW_TTL_MS).unwrap_err(),
            (Some(7), FlowError::Expired)
        );
        assert_eq!(
            Flow::resume(None, &flow.state, &sealer, 2_000).unwrap_err(),
            (None, FlowError::Missing)
        );
        // Another broker's key, a tampered cookie, an oversized one: no flow.
        let (_d2, other) = self::sealer();
        assert_eq!(
            Flow::resume(Some(&cookie), &flow.state, &other, 2_000).unwrap_err(),
            (None, FlowError::Missing)
        );
        let mut tampered = cookie.clone().into_bytes();
        tampered[20] = if tampered[20] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(Flow::resume(Some(&tampered), &flow.state, &sealer, 2_000).is_err());
        let huge = "A".repeat(MAX_FLOW_COOKIE + 1);
        assert!(Flow::resume(Some(&huge), &flow.state, &sealer, 2_000).is_err());
    }

    #[test]
    fn pkce_challenge_is_rfc7636_s256() {
        // RFC 7636, appendix B.
        let mut flow = Flow::start(1, 0);
        flow.verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into();
        assert_eq!(
            flow.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn roles_map_to_the_strongest_and_names_fall_back() {
        let map = BTreeMap::from([
            ("it".to_owned(), Role::Helpdesk),
            ("audit".to_owned(), Role::Auditor),
            ("ops".to_owned(), Role::Admin),
        ]);
        let c = json!({"groups": ["audit", "it", "sales"], "role": "ops", "n": 3});
        assert_eq!(role_of(&c, "groups", &map), Some(Role::Helpdesk));
        assert_eq!(role_of(&c, "role", &map), Some(Role::Admin));
        assert_eq!(role_of(&c, "n", &map), None);
        assert_eq!(role_of(&c, "absent", &map), None);
        assert_eq!(role_of(&json!({"groups": ["sales"]}), "groups", &map), None);
        assert_eq!(
            person_name(&json!({"name": "Alice\u{7}", "sub": "a"})),
            "Alice"
        );
        assert_eq!(
            person_name(&json!({"name": " ", "email": "a@x", "sub": "a"})),
            "a@x"
        );
        assert_eq!(person_name(&json!({"sub": "s-1"})), "s-1");
        assert_eq!(person_name(&json!({"name": "x".repeat(300)})).len(), 128);
    }
}
