//! Validated names: tenants, agents and services.
//!
//! Agent ids become SSH user names and appear in URLs and logs, so they are restricted to a small
//! alphabet that needs no escaping anywhere: ASCII letters, digits, `.`, `_` and `-`, 1 to 64
//! characters, not starting with a dot or a dash.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest identifier accepted.
pub const MAX_ID_LEN: usize = 64;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {MAX_ID_LEN} characters")]
    TooLong { kind: &'static str },
    #[error(
        "{kind} may only contain ASCII letters, digits, '.', '_' and '-', and may not start with '.' or '-'"
    )]
    BadCharacter { kind: &'static str },
}

fn check(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { kind });
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !s.chars().all(ok_char) || s.starts_with(['.', '-']) {
        return Err(IdError::BadCharacter { kind });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Checks `s` and wraps it.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check($kind, &s)?;
                Ok(Self(s))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A tenant's name, e.g. `default`.
    TenantName,
    "tenant name"
);
name_type!(
    /// An agent's id: also its SSH user name.
    AgentId,
    "agent id"
);
name_type!(
    /// A service an agent announces, e.g. `vnc`: the bind address of its `ssh -R` forward.
    ServiceName,
    "service name"
);

/// The services every tenant allows.
pub const BUILTIN_SERVICES: [&str; 3] = ["vnc", "rdp", "ssh"];

/// A built-in service: what the broker knows how to serve in the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    Vnc,
    Rdp,
    Ssh,
}

impl ServiceKind {
    /// Its name, as agents announce it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vnc => "vnc",
            Self::Rdp => "rdp",
            Self::Ssh => "ssh",
        }
    }

    /// The workstation port it conventionally runs on (the legacy numeric flow).
    pub fn default_port(self) -> u16 {
        match self {
            Self::Vnc => 5900,
            Self::Rdp => 3389,
            Self::Ssh => 22,
        }
    }
}

impl ServiceName {
    /// Which built-in service this is, if any.
    pub fn kind(&self) -> Option<ServiceKind> {
        match self.0.as_str() {
            "vnc" => Some(ServiceKind::Vnc),
            "rdp" => Some(ServiceKind::Rdp),
            "ssh" => Some(ServiceKind::Ssh),
            _ => None,
        }
    }

    /// Whether this is one of `vnc`, `rdp`, `ssh`.
    pub fn is_builtin(&self) -> bool {
        self.kind().is_some()
    }

    /// The workstation port a service conventionally runs on, for the legacy numeric flow.
    pub fn default_port(&self) -> Option<u16> {
        self.kind().map(ServiceKind::default_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for ok in ["pc-042", "a", "WS_17.example", "0abc"] {
            assert!(AgentId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_bad_ids() {
        assert_eq!(AgentId::new(""), Err(IdError::Empty { kind: "agent id" }));
        assert!(matches!(
            AgentId::new("x".repeat(65)),
            Err(IdError::TooLong { .. })
        ));
        for bad in ["-rf", ".hidden", "a b", "a/b", "é", "a:b", "a\nb", "a@b"] {
            assert!(
                matches!(AgentId::new(bad), Err(IdError::BadCharacter { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn deserialising_validates() {
        let err = serde_json::from_str::<ServiceName>("\"bad name\"").unwrap_err();
        assert!(err.to_string().contains("service name may only contain"));
        let ok: ServiceName = serde_json::from_str("\"vnc\"").unwrap();
        assert!(ok.is_builtin());
        assert_eq!(ok.default_port(), Some(5900));
    }
}
