//! The helper's error type: one variant per thing a caller (the CLI's exit code, the app's
//! notice) must tell apart. Messages are whole sentences a technician can act on; they never
//! contain the launch token.

use passerelle_proto::close;
use passerelle_proto::launch::LaunchUrlError;

/// What went wrong, for the tunnel and the launchers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The launch URL is malformed or not ours.
    #[error("invalid launch URL: {0}")]
    BadUrl(#[from] LaunchUrlError),
    /// The broker presented a certificate other than the pinned one.
    #[error(
        "the broker's TLS certificate does not match the pinned fingerprint \
         (expected sha256 {expected}, got {actual}): refusing to connect"
    )]
    PinMismatch {
        /// The `fp` of the launch URL.
        expected: String,
        /// SHA-256 of the certificate the broker presented.
        actual: String,
    },
    /// TLS failed for another reason (untrusted certificate, wrong name, handshake error).
    #[error("TLS with the broker failed: {0}")]
    Tls(String),
    /// The broker refused the launch token (unknown, expired, session already over).
    #[error("the broker refused the session token: {reason} (code {code})")]
    TokenRefused {
        /// The close code: 4001, 4002 or 4003.
        code: u16,
        /// The broker's human reason.
        reason: String,
    },
    /// Nothing answered at the broker's address, or not in time.
    #[error("cannot reach the broker at {addr}: {detail}")]
    Unreachable {
        /// `host:port` of the broker.
        addr: String,
        /// What failed.
        detail: String,
    },
    /// The broker's connection dropped without a close frame.
    #[error("the broker went away: {0}")]
    BrokerGone(String),
    /// The broker answered, but not as a Passerelle broker would.
    #[error("unexpected answer from the broker: {0}")]
    Protocol(String),
    /// The local port could not be opened.
    #[error("cannot listen on {addr}: {detail}")]
    Listen {
        /// The address asked for.
        addr: String,
        /// The OS error.
        detail: String,
    },
    /// The helper's configuration file is wrong.
    #[error("configuration {path}: {detail}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong in it.
        detail: String,
    },
    /// No native client for the service is installed and none is configured.
    #[error("no {service} client found: {hint}")]
    NoClient {
        /// The service, e.g. `rdp`.
        service: String,
        /// What to install or configure.
        hint: String,
    },
    /// The native client could not be started.
    #[error("cannot start {program}: {detail}")]
    Launch {
        /// The program.
        program: String,
        /// The OS error.
        detail: String,
    },
}

impl Error {
    /// The process exit code the CLI uses for this error (documented in its `--help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::BadUrl(_) | Self::Config { .. } => 2,
            Self::PinMismatch { .. } | Self::Tls(_) => 3,
            Self::TokenRefused { .. } => 4,
            Self::Unreachable { .. } | Self::BrokerGone(_) | Self::Protocol(_) => 5,
            Self::NoClient { .. } | Self::Launch { .. } => 6,
            Self::Listen { .. } => 1,
        }
    }
}

/// How the broker ended the session, as read from its close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    /// The close code (see `passerelle_proto::close`).
    pub code: u16,
    /// The broker's human reason, e.g. "session stopped by alice".
    pub reason: String,
}

impl SessionEnd {
    /// Whether this is an ordinary end (an operator stopped it, or its time was up), as opposed
    /// to a failure (agent lost, broker shutting down, ...).
    pub fn is_normal(&self) -> bool {
        [
            close::STOPPED.code,
            close::TTL_EXPIRED.code,
            close::SESSION_ENDED.code,
        ]
        .contains(&self.code)
    }
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", human(self.code, &self.reason), self.code)
    }
}

/// The broker's reason, or the code's fixed description when the frame had none.
fn human(code: u16, reason: &str) -> String {
    if reason.is_empty() {
        close::by_code(code)
            .map_or("session ended", |c| c.reason)
            .to_owned()
    } else {
        reason.to_owned()
    }
}

/// What a close frame from the broker means for the tunnel as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseMeaning {
    /// Only this connection is over; the tunnel keeps listening (native clients reconnect).
    Connection,
    /// The launch token was refused: nothing will ever connect.
    Refused(Error),
    /// The session is over.
    SessionEnded(SessionEnd),
}

/// Classifies a close frame. `ever_bridged` says whether an earlier connection of this tunnel
/// got through: then "session has ended" means the session ended while the tunnel was idle,
/// not that the launch URL was stale.
pub fn classify_close(code: u16, reason: &str, ever_bridged: bool) -> CloseMeaning {
    let end = SessionEnd {
        code,
        reason: reason.to_owned(),
    };
    match close::by_code(code) {
        // Reconnectable for a launch token: the broker ends only this connection after these
        // (one rule for both sides, in passerelle_proto::close).
        Some(_) if close::ends_only_the_connection(code) => CloseMeaning::Connection,
        Some(close::SESSION_ENDED) if ever_bridged => CloseMeaning::SessionEnded(end),
        // The broker forgets a session's tokens when it ends: a token that worked before and
        // is now unknown means the session ended while no connection was open.
        Some(close::TOKEN_INVALID) if ever_bridged => CloseMeaning::SessionEnded(SessionEnd {
            code: close::SESSION_ENDED.code,
            reason: format!(
                "{} (the broker no longer knows its token)",
                close::SESSION_ENDED.reason
            ),
        }),
        Some(close::TOKEN_INVALID | close::TOKEN_EXPIRED | close::SESSION_ENDED) => {
            CloseMeaning::Refused(Error::TokenRefused {
                code,
                reason: human(code, reason),
            })
        }
        Some(_) => CloseMeaning::SessionEnded(end),
        // 1000 (normal), 1001 (going away), 1005 (no code) and anything unknown: this
        // connection only.
        None => CloseMeaning::Connection,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_are_classified() {
        assert_eq!(classify_close(4000, "", true), CloseMeaning::Connection);
        assert_eq!(
            classify_close(4010, "agent x is offline", false),
            CloseMeaning::Connection
        );
        assert_eq!(classify_close(1000, "", false), CloseMeaning::Connection);
        assert!(matches!(
            classify_close(4002, "token expired", false),
            CloseMeaning::Refused(Error::TokenRefused { code: 4002, .. })
        ));
        assert!(matches!(
            classify_close(4003, "session has ended", false),
            CloseMeaning::Refused(Error::TokenRefused { code: 4003, .. })
        ));
        let CloseMeaning::SessionEnded(end) = classify_close(4003, "session has ended", true)
        else {
            panic!("4003 after a bridged connection is the end of the session");
        };
        assert!(end.is_normal());
        let CloseMeaning::SessionEnded(end) = classify_close(4001, "token invalid", true) else {
            panic!("4001 after a bridged connection is the end of the session");
        };
        assert_eq!(end.code, 4003);
        let CloseMeaning::SessionEnded(end) = classify_close(4020, "session stopped by bob", true)
        else {
            panic!("4020 ends the session");
        };
        assert!(end.is_normal());
        assert_eq!(end.to_string(), "session stopped by bob (code 4020)");
        let CloseMeaning::SessionEnded(end) = classify_close(4013, "", true) else {
            panic!("4013 ends the session");
        };
        assert!(!end.is_normal());
        assert_eq!(end.to_string(), "the agent disconnected (code 4013)");
    }

    #[test]
    fn token_refusals_read_well() {
        let CloseMeaning::Refused(e) = classify_close(4002, "token expired", false) else {
            panic!("refused");
        };
        assert_eq!(
            e.to_string(),
            "the broker refused the session token: token expired (code 4002)"
        );
        assert_eq!(e.exit_code(), 4);
    }
}
