//! Fleet enrolment: the bodies of `/api/v1/enrollment-tokens` and `/api/v1/enroll`, their size
//! bounds, and [`IdPattern`], the glob an enrolment token restricts agent ids with.
//!
//! A pattern is a simple glob over agent ids: `*` matches any run of characters (empty
//! included), `?` exactly one, every other character itself (case-sensitive). `pc-*` admits
//! `pc-042` and `pc-` but not `PC-1` or `lab-pc-1`. No character classes, no escapes: agent ids
//! never contain `*` or `?`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, MAX_ID_LEN, TenantName};

/// The longest token name.
pub const MAX_TOKEN_NAME: usize = 128;
/// The longest id pattern.
pub const MAX_ID_PATTERN: usize = 128;
/// The longest public key line accepted by `/api/v1/enroll` (an RSA 16384-bit key fits).
pub const MAX_PUBLIC_KEY: usize = 8192;
/// The longest enrolment token text (they are 61 characters; anything longer is no token).
pub const MAX_TOKEN_TEXT: usize = 128;
/// The most uses one token may have.
pub const MAX_USES: u32 = 1_000_000;

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("id_pattern is empty")]
    Empty,
    #[error("id_pattern is longer than {MAX_ID_PATTERN} characters")]
    TooLong,
    #[error(
        "id_pattern may only contain what agent ids contain (ASCII letters, digits, '.', '_', '-') and the wildcards '*' and '?'"
    )]
    BadCharacter,
}

/// A glob over agent ids (see the module's header).
#[derive(Clone, PartialEq, Eq)]
pub struct IdPattern(String);

impl IdPattern {
    /// Checks and wraps a pattern.
    pub fn new(s: impl Into<String>) -> Result<Self, PatternError> {
        let s = s.into();
        if s.is_empty() {
            return Err(PatternError::Empty);
        }
        if s.len() > MAX_ID_PATTERN {
            return Err(PatternError::TooLong);
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*' | '?');
        if !s.chars().all(ok) {
            return Err(PatternError::BadCharacter);
        }
        Ok(Self(s))
    }

    /// The pattern as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `id` matches. Linear in the lengths (the classic two-pointer glob with one
    /// backtrack point), so a hostile pattern cannot make it slow.
    pub fn matches(&self, id: &AgentId) -> bool {
        let (p, s) = (self.0.as_bytes(), id.as_str().as_bytes());
        let (mut pi, mut si) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            match p.get(pi) {
                Some(b'*') => {
                    star = Some((pi, si));
                    pi += 1;
                }
                Some(&c) if c == b'?' || c == s[si] => {
                    pi += 1;
                    si += 1;
                }
                _ => match star {
                    Some((sp, ss)) => {
                        pi = sp + 1;
                        si = ss + 1;
                        star = Some((sp, ss + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

impl fmt::Display for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::str::FromStr for IdPattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, PatternError> {
        Self::new(s)
    }
}

impl Serialize for IdPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for IdPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// `POST /api/v1/enrollment-tokens` (admin).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateEnrollmentToken {
    /// For people: what the token is for, e.g. `GPO 2026-12 accounting`.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 128))]
    pub name: String,
    /// How many agents it may enrol (default 1, at most [`MAX_USES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1_000_000))]
    pub uses: Option<u32>,
    /// RFC 3339; none = valid until spent or revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Only ids matching this glob may enrol (default: any id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_pattern: Option<IdPattern>,
    /// An id already registered in the tenant may enrol again: its key is replaced and its
    /// connection ended (default false: such an id is refused).
    #[serde(default)]
    pub reenrol: bool,
}

impl CreateEnrollmentToken {
    /// Checks the bounds serde does not: name length, uses.
    pub fn check(&self) -> Result<(), String> {
        let name = self.name.trim();
        if name.is_empty() || name.len() > MAX_TOKEN_NAME || name.chars().any(char::is_control) {
            return Err(format!(
                "name must be 1 to {MAX_TOKEN_NAME} bytes without control characters"
            ));
        }
        if self.uses.is_some_and(|u| u == 0 || u > MAX_USES) {
            return Err(format!("uses must be 1 to {MAX_USES}"));
        }
        Ok(())
    }
}

/// An enrolment token as the API lists it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollmentTokenInfo {
    /// Public id (12 hex digits); names the token in the audit and in `DELETE`.
    pub id: String,
    pub name: String,
    /// Uses allowed.
    pub uses: u32,
    /// Uses spent.
    pub used: u32,
    pub expires_at: Option<String>,
    pub id_pattern: Option<IdPattern>,
    pub reenrol: bool,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// The answer to `POST /api/v1/enrollment-tokens` (201): the token's secret, shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedEnrollmentToken {
    /// The secret workstations present (`pet_<id>_<secret>`); only its hash is kept.
    pub token: String,
    #[serde(flatten)]
    pub info: EnrollmentTokenInfo,
}

/// `POST /api/v1/enroll` (no API key: the token is the credential).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Enroll {
    pub token: String,
    /// The agent id to register (the SSH user name it will log in as).
    pub id: AgentId,
    /// The workstation's OpenSSH public key line.
    pub public_key: String,
}

impl fmt::Debug for Enroll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enroll")
            .field("token", &"<redacted>")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Enroll {
    /// Checks the sizes serde does not.
    pub fn check(&self) -> Result<(), String> {
        if self.token.len() > MAX_TOKEN_TEXT {
            return Err("token is not an enrolment token".into());
        }
        if self.public_key.len() > MAX_PUBLIC_KEY {
            return Err(format!("public_key is longer than {MAX_PUBLIC_KEY} bytes"));
        }
        Ok(())
    }
}

/// The answer to `POST /api/v1/enroll` (201 new agent, 200 re-enrolled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Enrolled {
    pub id: AgentId,
    pub tenant: TenantName,
    /// SHA256 fingerprint of the registered key.
    pub key_fingerprint: String,
    /// Whether an existing registration's key was replaced.
    pub reenrolled: bool,
}

const _: () = assert!(MAX_ID_LEN <= MAX_ID_PATTERN);

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, id: &str) -> bool {
        IdPattern::new(p)
            .unwrap()
            .matches(&AgentId::new(id).unwrap())
    }

    #[test]
    fn globs_match_like_a_shell() {
        assert!(m("pc-*", "pc-042") && m("pc-*", "pc-") && !m("pc-*", "PC-1"));
        assert!(!m("pc-*", "lab-pc-1") && m("*pc-*", "lab-pc-1"));
        assert!(m("pc-???", "pc-042") && !m("pc-???", "pc-0421"));
        assert!(m("*", "anything") && m("a*b*c", "a-x-b-y-c") && !m("a*b*c", "a-x-c-b"));
        assert!(m("exact", "exact") && !m("exact", "exact2"));
        assert!(m("*-*-*-*", "a-b-c-d") && !m("*-*-*-*-*", "a-b-c-d"));
        // Backtracking stays linear: a pathological pattern answers at once.
        let long = format!("{}b", "a".repeat(63));
        let p = IdPattern::new("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*c").unwrap();
        assert!(!p.matches(&AgentId::new(long).unwrap()));
    }

    #[test]
    fn patterns_and_bodies_are_bounded() {
        assert_eq!(IdPattern::new(""), Err(PatternError::Empty));
        assert_eq!(IdPattern::new("x".repeat(129)), Err(PatternError::TooLong));
        for bad in ["pc/*", "pc-[0-9]", "a b", "é*"] {
            assert_eq!(
                IdPattern::new(bad),
                Err(PatternError::BadCharacter),
                "{bad}"
            );
        }
        let typo = serde_json::from_str::<CreateEnrollmentToken>(r#"{"name":"a","usess":3}"#);
        assert!(typo.unwrap_err().to_string().contains("unknown field"));
        let bad: CreateEnrollmentToken = serde_json::from_str(r#"{"name":"a","uses":0}"#).unwrap();
        assert!(bad.check().is_err());
        let long: CreateEnrollmentToken =
            serde_json::from_str(&format!(r#"{{"name":"{}"}}"#, "n".repeat(200))).unwrap();
        assert!(long.check().is_err());
        let e: Enroll = serde_json::from_str(&format!(
            r#"{{"token":"t","id":"pc-1","public_key":"{}"}}"#,
            "k".repeat(MAX_PUBLIC_KEY + 1)
        ))
        .unwrap();
        assert!(e.check().is_err());
        assert!(!format!("{e:?}").contains("\"t\""), "the token is redacted");
        assert!(
            serde_json::from_str::<Enroll>(r#"{"token":"t","id":"../x","public_key":"k"}"#)
                .is_err()
        );
    }
}
