//! WebSocket close codes the broker sends, and the end reasons recorded in the audit.
//!
//! Codes 4000–4999 are Passerelle's own (RFC 6455 leaves them to applications). Every close
//! frame also carries a human reason, e.g. "session stopped by alice"; the code is what a program
//! branches on, the reason is what a person reads.

use serde::{Deserialize, Serialize};

/// A close code and the fixed part of its human reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode {
    /// The numeric code in the close frame.
    pub code: u16,
    /// A short English description, used when no more specific reason is given.
    pub reason: &'static str,
}

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $reason:literal;)*) => {
        $($(#[$doc])* pub const $name: CloseCode = CloseCode { code: $code, reason: $reason };)*
        /// Every code this module names, for lookups and tests.
        pub const ALL: &[CloseCode] = &[$($name),*];
    };
}

codes! {
    /// The session ended normally (the workstation's service closed its connection).
    SERVICE_CLOSED = 4000, "the workstation's service closed the connection";
    /// The token is unknown, already used, or for another session.
    TOKEN_INVALID = 4001, "token invalid or already used";
    /// The token's lifetime is over.
    TOKEN_EXPIRED = 4002, "token expired";
    /// The session has already ended; no token opens it any more.
    SESSION_ENDED = 4003, "session has ended";
    /// The viewer's address presented too many unknown tokens or API keys and is refused for
    /// a while, even with a valid token (the reason says how long).
    TOO_MANY_ATTEMPTS = 4004, "too many failed token attempts from this address; try again later";
    /// The session already has as many connections as a session may have.
    TOO_MANY_CONNECTIONS = 4005, "the session has too many connections";
    /// The agent is not connected.
    AGENT_OFFLINE = 4010, "agent offline";
    /// The agent is connected but does not offer the service, or refused the channel.
    SERVICE_UNAVAILABLE = 4011, "the workstation's service is not available";
    /// Legacy flow: the agent did not connect in time.
    AGENT_TIMEOUT = 4012, "the agent did not connect in time";
    /// The agent's SSH connection went away during the session.
    AGENT_DISCONNECTED = 4013, "the agent disconnected";
    /// Someone stopped the session through the API.
    STOPPED = 4020, "session stopped";
    /// The session reached its time-to-live.
    TTL_EXPIRED = 4021, "session time limit reached";
    /// The broker is shutting down.
    BROKER_SHUTDOWN = 4022, "broker shutting down";
    /// The viewer read too slowly and the session's buffer limit was reached.
    VIEWER_TOO_SLOW = 4023, "viewer too slow: buffer limit reached";
    /// The agent was revoked.
    AGENT_REVOKED = 4024, "agent revoked";
    /// The session's recording failed and the tenant's policy is fail_closed.
    RECORDING_FAILED = 4025, "the session's recording failed";
    /// The viewer sent something other than binary frames, or malformed RFB.
    PROTOCOL_ERROR = 4030, "protocol error: binary frames only";
    /// The session's raw stream (`/ws/sessions/{id}/raw`) is not served: the session is
    /// view-only, or recorded in a form that the raw bytes would escape.
    RAW_REFUSED = 4031, "this session is served on its viewer stream only";
    /// The workstation's VNC server refused the broker's password.
    VNC_AUTH_FAILED = 4040, "VNC authentication failed";
    /// The RFB handshake with the workstation's VNC server failed otherwise.
    VNC_HANDSHAKE_FAILED = 4041, "VNC handshake failed";
    /// The connection to the workstation's RDP server failed before TLS (it closed, timed out
    /// or answered something other than an X.224 Connection Confirm).
    RDP_HANDSHAKE_FAILED = 4050, "RDP connection to the workstation failed";
    /// The workstation's RDP server refused the security the viewer asked for (it requires
    /// NLA, or allows no TLS).
    RDP_NEGOTIATION_FAILED = 4051, "the workstation's RDP server refused the requested security";
    /// The TLS handshake with the workstation's RDP server failed.
    RDP_TLS_FAILED = 4052, "TLS with the workstation's RDP server failed";
    /// The workstation's RDP server presented another certificate than the one pinned for the
    /// agent; an administrator resets the pin if the change is expected.
    RDP_CERTIFICATE_CHANGED = 4053, "the workstation's RDP certificate changed";
    /// The viewer's RDCleanPath request was missing, late, malformed or too big.
    RDP_BAD_REQUEST = 4054, "malformed RDP request from the viewer";
    /// The workstation's RDP server ended the connection during NLA (CredSSP) or denied the
    /// logon: the credentials typed were refused.
    RDP_LOGON_FAILED = 4055, "the workstation refused the NLA logon";
    /// The SSH connection to the workstation's sshd failed (not SSH, no common algorithm, no
    /// answer in time).
    SSH_HANDSHAKE_FAILED = 4060, "SSH connection to the workstation failed";
    /// The workstation's SSH host key is not the one pinned for this agent.
    SSH_HOST_KEY_CHANGED = 4061, "the workstation's SSH host key has changed";
    /// The workstation refused every credential (stored key, stored password, typed password).
    SSH_AUTH_FAILED = 4062, "SSH authentication failed";
    /// The workstation refused a terminal or a shell.
    SSH_SHELL_FAILED = 4063, "the workstation refused to open a terminal";
    /// A frame or message over the size limit (RFC 6455's own code).
    MESSAGE_TOO_BIG = 1009, "message too big";
}

/// Looks a code up by number.
pub fn by_code(code: u16) -> Option<CloseCode> {
    ALL.iter().copied().find(|c| c.code == code)
}

/// The closes that end one connection of a session and not the session: the workstation's
/// service or the viewer closed, or the agent could not serve this one connection. The desktop
/// helper's launch token may open another connection after them (native clients reconnect); any
/// other close of a launch-token connection ends the session, on the broker as in the helper.
pub const CONNECTION_ONLY: &[CloseCode] = &[
    SERVICE_CLOSED,
    AGENT_OFFLINE,
    SERVICE_UNAVAILABLE,
    AGENT_TIMEOUT,
];

/// Whether a close with `code` ends only its connection (see [`CONNECTION_ONLY`]).
pub fn ends_only_the_connection(code: u16) -> bool {
    CONNECTION_ONLY.iter().any(|c| c.code == code)
}

/// The longest reason a close frame can carry: RFC 6455 leaves 125 bytes of payload, 2 of
/// which are the code.
pub const MAX_REASON_BYTES: usize = 123;

/// `text` cut to fit a close frame's reason, on a character boundary, with "…" when cut. A
/// longer reason would make the WebSocket library fail the close (the viewer would see 1006
/// instead of the named code).
pub fn bounded_reason(text: &str) -> String {
    if text.len() <= MAX_REASON_BYTES {
        return text.to_owned();
    }
    const ELLIPSIS: &str = "…";
    let mut end = MAX_REASON_BYTES - ELLIPSIS.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &text[..end])
}

/// Why a viewer was turned away or its connection closed: the close frame it gets, and, when
/// this ends (or would end) the session, the session's end reason. The one type for every
/// refusal and every end, whatever refused or ended it (admission, the agent, a service's
/// handshake, the bridge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closure {
    pub code: CloseCode,
    /// For people; at most [`MAX_REASON_BYTES`].
    pub reason: String,
    /// The session's end reason if this ends it; `None` for a refusal that never ends a session
    /// (a bad token, a locked-out address).
    pub end: Option<EndReason>,
}

impl Closure {
    /// A refusal that leaves the session as it is.
    pub fn refusal(code: CloseCode, reason: &str) -> Self {
        Self {
            code,
            reason: bounded_reason(reason),
            end: None,
        }
    }

    /// An end for `end`, with its code and default reason.
    pub fn ending(end: EndReason) -> Self {
        let code = end.close_code();
        Self {
            code,
            reason: code.reason.to_owned(),
            end: Some(end),
        }
    }

    /// An end for `end` with another code or a more specific reason.
    pub fn ending_with(end: EndReason, code: CloseCode, reason: &str) -> Self {
        Self {
            code,
            reason: bounded_reason(reason),
            end: Some(end),
        }
    }

    /// Whether this closes one connection only (see [`CONNECTION_ONLY`]).
    pub fn connection_only(&self) -> bool {
        ends_only_the_connection(self.code.code)
    }
}

/// Why a session ended, as recorded in the audit and returned by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EndReason {
    /// The viewer closed its connection.
    ViewerClosed,
    /// The workstation's service closed its side.
    ServiceClosed,
    /// Stopped through `DELETE /api/v1/sessions/{id}`; `ended_by` says who.
    Stopped,
    /// The agent was offline or lacked the service when the viewer came.
    AgentOffline,
    /// The agent refused to open the channel (its local service is down, typically).
    ServiceUnavailable,
    /// The agent's connection went away during the session.
    AgentDisconnected,
    /// The agent was revoked during the session.
    AgentRevoked,
    /// Legacy flow: the agent never came.
    AgentTimeout,
    /// No viewer joined before the session's tokens and grace period ran out.
    NotJoined,
    /// The session reached its `ttl_secs`.
    TtlExpired,
    /// A viewer stopped reading and the buffer limit was reached.
    ViewerTooSlow,
    /// The viewer broke the protocol (text frames, oversized frames).
    ProtocolError,
    /// The workstation's VNC server refused the stored password.
    VncAuthFailed,
    /// The RFB handshake with the workstation failed (refusal, unsupported security, bad data).
    VncHandshakeFailed,
    /// The SSH connection to the workstation's sshd failed (`ssh` terminal).
    SshHandshakeFailed,
    /// The workstation's SSH host key is not the one pinned for its agent.
    SshHostKeyChanged,
    /// The workstation refused every credential the broker had or the operator typed.
    SshAuthFailed,
    /// The workstation refused the terminal or the shell.
    SshShellFailed,
    /// Recording failed under the `fail_closed` policy.
    RecordingFailed,
    /// The RDP connection to the workstation failed before TLS.
    RdpHandshakeFailed,
    /// The workstation's RDP server refused the requested security.
    RdpNegotiationFailed,
    /// TLS with the workstation's RDP server failed.
    RdpTlsFailed,
    /// The workstation's RDP certificate is not the pinned one.
    RdpCertificateChanged,
    /// The workstation refused the NLA logon (it closed during CredSSP, or denied access).
    RdpLogonFailed,
    /// The broker was shut down cleanly.
    BrokerShutdown,
    /// The broker stopped without ending the session (found on the next start).
    BrokerCrash,
}

impl EndReason {
    /// The snake_case name used in JSON and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ViewerClosed => "viewer_closed",
            Self::ServiceClosed => "service_closed",
            Self::Stopped => "stopped",
            Self::AgentOffline => "agent_offline",
            Self::ServiceUnavailable => "service_unavailable",
            Self::AgentDisconnected => "agent_disconnected",
            Self::AgentRevoked => "agent_revoked",
            Self::AgentTimeout => "agent_timeout",
            Self::NotJoined => "not_joined",
            Self::TtlExpired => "ttl_expired",
            Self::ViewerTooSlow => "viewer_too_slow",
            Self::ProtocolError => "protocol_error",
            Self::VncAuthFailed => "vnc_auth_failed",
            Self::VncHandshakeFailed => "vnc_handshake_failed",
            Self::SshHandshakeFailed => "ssh_handshake_failed",
            Self::SshHostKeyChanged => "ssh_host_key_changed",
            Self::SshAuthFailed => "ssh_auth_failed",
            Self::SshShellFailed => "ssh_shell_failed",
            Self::RecordingFailed => "recording_failed",
            Self::RdpHandshakeFailed => "rdp_handshake_failed",
            Self::RdpNegotiationFailed => "rdp_negotiation_failed",
            Self::RdpTlsFailed => "rdp_tls_failed",
            Self::RdpCertificateChanged => "rdp_certificate_changed",
            Self::RdpLogonFailed => "rdp_logon_failed",
            Self::BrokerShutdown => "broker_shutdown",
            Self::BrokerCrash => "broker_crash",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        ALL_REASONS.iter().copied().find(|r| r.as_str() == s)
    }

    /// Whether this end concerns one connection only (see [`CONNECTION_ONLY`]).
    pub fn connection_only(self) -> bool {
        ends_only_the_connection(self.close_code().code)
    }

    /// The close code a viewer receives for this end.
    pub fn close_code(self) -> CloseCode {
        match self {
            Self::ViewerClosed | Self::ServiceClosed => SERVICE_CLOSED,
            Self::Stopped => STOPPED,
            Self::AgentOffline => AGENT_OFFLINE,
            Self::ServiceUnavailable => SERVICE_UNAVAILABLE,
            Self::AgentDisconnected => AGENT_DISCONNECTED,
            Self::AgentRevoked => AGENT_REVOKED,
            Self::AgentTimeout => AGENT_TIMEOUT,
            Self::NotJoined | Self::BrokerCrash => SESSION_ENDED,
            Self::TtlExpired => TTL_EXPIRED,
            Self::ViewerTooSlow => VIEWER_TOO_SLOW,
            Self::ProtocolError => PROTOCOL_ERROR,
            Self::VncAuthFailed => VNC_AUTH_FAILED,
            Self::VncHandshakeFailed => VNC_HANDSHAKE_FAILED,
            Self::SshHandshakeFailed => SSH_HANDSHAKE_FAILED,
            Self::SshHostKeyChanged => SSH_HOST_KEY_CHANGED,
            Self::SshAuthFailed => SSH_AUTH_FAILED,
            Self::SshShellFailed => SSH_SHELL_FAILED,
            Self::RecordingFailed => RECORDING_FAILED,
            Self::RdpHandshakeFailed => RDP_HANDSHAKE_FAILED,
            Self::RdpNegotiationFailed => RDP_NEGOTIATION_FAILED,
            Self::RdpTlsFailed => RDP_TLS_FAILED,
            Self::RdpCertificateChanged => RDP_CERTIFICATE_CHANGED,
            Self::RdpLogonFailed => RDP_LOGON_FAILED,
            Self::BrokerShutdown => BROKER_SHUTDOWN,
        }
    }
}

/// Every end reason.
pub const ALL_REASONS: [EndReason; 26] = [
    EndReason::ViewerClosed,
    EndReason::ServiceClosed,
    EndReason::Stopped,
    EndReason::AgentOffline,
    EndReason::ServiceUnavailable,
    EndReason::AgentDisconnected,
    EndReason::AgentRevoked,
    EndReason::AgentTimeout,
    EndReason::NotJoined,
    EndReason::TtlExpired,
    EndReason::ViewerTooSlow,
    EndReason::ProtocolError,
    EndReason::VncAuthFailed,
    EndReason::VncHandshakeFailed,
    EndReason::SshHandshakeFailed,
    EndReason::SshHostKeyChanged,
    EndReason::SshAuthFailed,
    EndReason::SshShellFailed,
    EndReason::RecordingFailed,
    EndReason::RdpHandshakeFailed,
    EndReason::RdpNegotiationFailed,
    EndReason::RdpTlsFailed,
    EndReason::RdpCertificateChanged,
    EndReason::RdpLogonFailed,
    EndReason::BrokerShutdown,
    EndReason::BrokerCrash,
];

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_in_range() {
        for (i, a) in ALL.iter().enumerate() {
            assert!((4000..5000).contains(&a.code) || a.code == 1009, "{a:?}");
            for b in &ALL[i + 1..] {
                assert_ne!(a.code, b.code, "{a:?} and {b:?} share a code");
            }
            assert_eq!(by_code(a.code), Some(*a));
        }
        assert_eq!(by_code(4999), None);
    }

    #[test]
    fn reasons_are_bounded_on_character_boundaries() {
        assert_eq!(
            bounded_reason("session stopped by bob"),
            "session stopped by bob"
        );
        let exact = "a".repeat(MAX_REASON_BYTES);
        assert_eq!(bounded_reason(&exact), exact);
        for filler in ["a", "é", "€", "𝄞"] {
            let long = format!("session stopped by {}", filler.repeat(200));
            let cut = bounded_reason(&long);
            assert!(cut.len() <= MAX_REASON_BYTES, "{} bytes", cut.len());
            assert!(cut.ends_with('…') && long.starts_with(cut.trim_end_matches('…')));
        }
    }

    #[test]
    fn fixed_reasons_fit_and_cuts_are_tight_at_every_offset() {
        // Short reasons pass unchanged; every fixed reason fits.
        assert_eq!(
            bounded_reason("session stopped by alice"),
            "session stopped by alice"
        );
        for c in ALL {
            assert_eq!(bounded_reason(c.reason), c.reason);
        }
        // Exactly at the limit: unchanged.
        let at = "a".repeat(MAX_REASON_BYTES);
        assert_eq!(bounded_reason(&at), at);
        // One byte over: cut, with the ellipsis, within the limit.
        let over = bounded_reason(&"a".repeat(MAX_REASON_BYTES + 1));
        assert_eq!(over.len(), MAX_REASON_BYTES);
        assert!(over.ends_with('\u{2026}'));
        assert!(over.starts_with(&"a".repeat(120)));
        // Multi-byte characters (2, 3 and 4 bytes) are never split, whatever the offset.
        for prefix in 0..4 {
            for ch in ['é', '€', '😀'] {
                let text = format!("{}{}", "x".repeat(prefix), ch.to_string().repeat(80));
                let b = bounded_reason(&text);
                assert!(b.len() <= MAX_REASON_BYTES, "{} bytes", b.len());
                assert!(
                    b.len() > MAX_REASON_BYTES - 3 - ch.len_utf8(),
                    "{} bytes",
                    b.len()
                );
                assert!(b.ends_with('\u{2026}'));
                let body = b.trim_end_matches('\u{2026}');
                assert!(body.chars().skip(prefix).all(|c| c == ch), "{b}");
            }
        }
    }

    #[test]
    fn only_connection_ends_let_a_launch_token_reconnect() {
        assert!(EndReason::ViewerClosed.connection_only());
        assert!(EndReason::ServiceClosed.connection_only());
        assert!(EndReason::AgentOffline.connection_only());
        assert!(!EndReason::Stopped.connection_only());
        assert!(!EndReason::VncAuthFailed.connection_only());
        assert!(!ends_only_the_connection(TOKEN_INVALID.code));
        assert!(ends_only_the_connection(AGENT_TIMEOUT.code));
    }

    #[test]
    fn end_reasons_round_trip_through_text_and_json() {
        for r in ALL_REASONS {
            assert_eq!(EndReason::parse(r.as_str()), Some(r));
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert!(by_code(r.close_code().code).is_some());
        }
        // Every named code but the generic ones is some end reason's code.
        for c in ALL {
            let generic = [
                TOO_MANY_ATTEMPTS,
                TOKEN_INVALID,
                TOKEN_EXPIRED,
                SESSION_ENDED,
                TOO_MANY_CONNECTIONS,
                RAW_REFUSED,
                RDP_BAD_REQUEST,
                MESSAGE_TOO_BIG,
            ];
            assert!(
                generic.contains(c) || ALL_REASONS.iter().any(|r| r.close_code() == *c),
                "{c:?} is no end reason's code"
            );
        }
        // Every reason is listed once.
        for (i, a) in ALL_REASONS.iter().enumerate() {
            assert!(!ALL_REASONS[i + 1..].contains(a), "{a} listed twice");
        }
        assert_eq!(
            EndReason::SshHostKeyChanged.close_code(),
            SSH_HOST_KEY_CHANGED
        );
        assert_eq!(EndReason::parse("nope"), None);
    }
}
