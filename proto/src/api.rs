//! The HTTP API's JSON bodies (`/api/v1/...`), shared by the broker, the desktop helper and the
//! tests. Request bodies refuse unknown fields so that a typo is an error, not a silent default.

use serde::{Deserialize, Serialize};

use crate::close::EndReason;
use crate::ids::{AgentId, ServiceName, TenantName};

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// Reads the audit and plays recordings.
    Auditor,
    /// Opens and stops sessions, reads presence.
    Helpdesk,
    /// Everything in its tenant: agents, keys, sessions, settings.
    Admin,
}

impl Role {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auditor => "auditor",
            Self::Helpdesk => "helpdesk",
            Self::Admin => "admin",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Auditor, Self::Helpdesk, Self::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// `POST /api/v1/sessions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateSession {
    /// The agent whose service to open.
    pub agent: AgentId,
    /// The service, e.g. `vnc`.
    pub service: ServiceName,
    /// The human operator's login, as the console knows it; recorded in the audit.
    pub operator: String,
    /// Record the session (defaults to the tenant's setting).
    #[serde(default)]
    pub record: Option<bool>,
    /// Drop the viewer's input (VNC and RDP).
    #[serde(default)]
    pub view_only: bool,
    /// Legacy flow: the agent will connect later with a numeric `-R PORT:...` forward.
    #[serde(default)]
    pub legacy: bool,
    /// The session's maximum lifetime in seconds.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// `ssh` sessions in the browser: the login name on the workstation (else the agent's
    /// `ssh_username`, else the tenant's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<String>,
}

/// A session's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SessionState {
    /// Created; no viewer has connected yet.
    Pending,
    /// At least one viewer connection has been bridged.
    Active,
    /// Over; `end_reason` says why.
    Ended,
}

impl SessionState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Ended => "ended",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Active, Self::Ended]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// A session as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionInfo {
    pub id: String,
    pub tenant: TenantName,
    pub agent: AgentId,
    pub service: ServiceName,
    pub operator: String,
    pub state: SessionState,
    pub record: bool,
    pub view_only: bool,
    pub legacy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legacy_port: Option<u16>,
    /// RFC 3339 times.
    pub created_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub expires_at: String,
    pub end_reason: Option<EndReason>,
    /// Who or what ended it: an operator for `stopped`, otherwise the broker.
    pub ended_by: Option<String>,
    pub client_addr: Option<String>,
    /// Bytes from the viewer to the workstation.
    pub bytes_up: u64,
    /// Bytes from the workstation to the viewer.
    pub bytes_down: u64,
}

/// The answer to `POST /api/v1/sessions` (201).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedSession {
    pub id: String,
    pub state: SessionState,
    /// A one-time viewer token.
    pub token: String,
    pub token_expires_at: String,
    pub viewer_url: String,
    pub ws_url: String,
    pub raw_ws_url: String,
    pub launch_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legacy_port: Option<u16>,
}

/// The answer to `POST /api/v1/sessions/{id}/tokens` (201).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IssuedToken {
    pub token: String,
    pub token_expires_at: String,
    pub viewer_url: String,
    pub ws_url: String,
    pub raw_ws_url: String,
    pub launch_url: String,
}

/// `POST /api/v1/agents`.
// Its `Debug`, written by hand, shows whether each password is set, never the password.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterAgent {
    pub id: AgentId,
    /// An OpenSSH public key line, e.g. `ssh-ed25519 AAAA... comment`.
    pub public_key: String,
    /// Write-only: the workstation's VNC password.
    #[serde(default)]
    pub vnc_password: Option<String>,
    /// The login name for `ssh` sessions in the browser (else the tenant's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_username: Option<String>,
    /// Write-only: the password of that login, used when the tenant's SSH key is not installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_password: Option<String>,
    /// The login the broker injects into RDP sessions over TLS (`DOMAIN\\user`,
    /// `user@domain` or `user`); an empty string clears it.
    #[serde(default)]
    pub rdp_username: Option<String>,
    /// Write-only: the password injected with `rdp_username`; an empty string clears it.
    #[serde(default)]
    pub rdp_password: Option<String>,
}

impl RegisterAgent {
    /// An agent with its id and key only (the tenant's VNC, SSH and RDP settings apply).
    pub fn with_key(id: AgentId, public_key: impl Into<String>) -> Self {
        Self {
            id,
            public_key: public_key.into(),
            vnc_password: None,
            ssh_username: None,
            ssh_password: None,
            rdp_username: None,
            rdp_password: None,
        }
    }
}

/// A write-only secret as `Debug` shows it: whether it is set.
fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

impl std::fmt::Debug for RegisterAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterAgent")
            .field("id", &self.id)
            .field("public_key", &self.public_key)
            .field("vnc_password", &redacted(&self.vnc_password))
            .field("ssh_username", &self.ssh_username)
            .field("ssh_password", &redacted(&self.ssh_password))
            .field("rdp_username", &self.rdp_username)
            .field("rdp_password", &redacted(&self.rdp_password))
            .finish()
    }
}

impl std::fmt::Debug for PatchAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatchAgent")
            .field("public_key", &self.public_key)
            .field("vnc_password", &redacted(&self.vnc_password))
            .field("ssh_username", &self.ssh_username)
            .field("ssh_password", &redacted(&self.ssh_password))
            .field("rdp_username", &self.rdp_username)
            .field("rdp_password", &redacted(&self.rdp_password))
            .finish()
    }
}

/// `PATCH /api/v1/agents/{id}`.
// Its `Debug`, written by hand, shows whether each password is set, never the password.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PatchAgent {
    #[serde(default)]
    pub public_key: Option<String>,
    /// `Some(None)` is not expressible in JSON here: an empty string clears the password.
    #[serde(default)]
    pub vnc_password: Option<String>,
    /// An empty string clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_username: Option<String>,
    /// Write-only; an empty string clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_password: Option<String>,
    /// The login the broker injects into RDP sessions over TLS (`DOMAIN\\user`,
    /// `user@domain` or `user`); an empty string clears it.
    #[serde(default)]
    pub rdp_username: Option<String>,
    /// Write-only: the password injected with `rdp_username`; an empty string clears it.
    #[serde(default)]
    pub rdp_password: Option<String>,
}

/// One announced service of a connected agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentService {
    pub name: ServiceName,
    /// The port number the broker told the agent (a placeholder: nothing listens on it).
    pub port: u32,
}

/// An agent as the API shows it (presence included). Secrets never appear.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentInfo {
    pub id: AgentId,
    /// SHA256 fingerprint of its public key, as `ssh-keygen -l` prints it.
    pub key_fingerprint: String,
    pub has_vnc_password: bool,
    /// The login name of `ssh` sessions in the browser, if the agent has its own.
    #[serde(default)]
    pub ssh_username: Option<String>,
    #[serde(default)]
    pub has_ssh_password: bool,
    /// SHA256 fingerprint of the workstation's SSH host key, pinned at the first `ssh` session
    /// in the browser (reset with `DELETE /api/v1/agents/{id}/ssh-host-key`).
    #[serde(default)]
    pub ssh_host_key: Option<String>,
    /// The login injected into RDP sessions (the agent's own; the tenant's applies otherwise).
    #[serde(default)]
    pub rdp_username: Option<String>,
    #[serde(default)]
    pub has_rdp_password: bool,
    /// SHA-256 (hex) of the RDP server certificate pinned on first use; a change is refused
    /// until an admin resets it (`DELETE /api/v1/agents/{id}/rdp-certificate`).
    #[serde(default)]
    pub rdp_certificate_sha256: Option<String>,
    /// When it was pinned (RFC 3339).
    #[serde(default)]
    pub rdp_certificate_pinned_at: Option<String>,
    pub online: bool,
    pub services: Vec<AgentService>,
    pub connected_since: Option<String>,
    /// Online: its last traffic. Offline: when its last connection ended (none if it never
    /// connected since the broker kept this).
    pub last_seen: Option<String>,
    pub peer_addr: Option<String>,
    pub created_at: String,
    /// The enrolment token it registered itself with, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_by: Option<String>,
    /// Certificate-based (registered by its first connection with a certificate): the SHA256
    /// fingerprint of the tenant's CA that signed it. It signs in with certificates only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_ca: Option<String>,
}

/// `GET /api/v1/agents` pages: the body stays a JSON array of [`AgentInfo`] (what clients of
/// the unpaged list parse), and the cursor of the next page, when there is one, comes alongside
/// in this response header (and in a `Link: <...>; rel="next"` header). The cursor is opaque:
/// pass it back as `?cursor=`.
pub const NEXT_CURSOR_HEADER: &str = "x-next-cursor";
/// Agents per page when `limit` is not given.
pub const AGENTS_DEFAULT_LIMIT: usize = 100;
/// The largest `limit` of `GET /api/v1/agents`.
pub const AGENTS_MAX_LIMIT: usize = 1000;

/// `GET /api/v1/tenant`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantInfo {
    pub name: TenantName,
    pub has_vnc_password: bool,
    /// The default login injected into RDP sessions of agents without their own.
    #[serde(default)]
    pub rdp_username: Option<String>,
    #[serde(default)]
    pub has_rdp_password: bool,
    pub record_by_default: bool,
    pub recording_policy: RecordingPolicy,
    pub retention_days: u32,
    /// The default login name of `ssh` sessions in the browser.
    #[serde(default)]
    pub ssh_username: Option<String>,
    /// The tenant's SSH public key (OpenSSH line) that the broker logs in with; install it on
    /// workstations as `from="127.0.0.1,::1" <key>` in `authorized_keys`.
    #[serde(default)]
    pub ssh_public_key: Option<String>,
    /// Record what operators type in `ssh` terminals (off by default: input holds passwords).
    #[serde(default)]
    pub record_terminal_input: bool,
    /// Every session of the tenant is recorded: `"record": false` is refused (403).
    #[serde(default)]
    pub recording_required: bool,
    /// Origins allowed to embed the viewer pages (`/view/...`) in a frame; empty: none.
    #[serde(default)]
    pub frame_ancestors: Vec<String>,
}

/// What to do when a recording cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RecordingPolicy {
    /// End the session (the default for audit).
    FailClosed,
    /// Continue unrecorded, audited as such.
    FailOpen,
}

/// `PATCH /api/v1/tenant`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PatchTenant {
    #[serde(default)]
    pub vnc_password: Option<String>,
    #[serde(default)]
    pub record_by_default: Option<bool>,
    #[serde(default)]
    pub recording_policy: Option<RecordingPolicy>,
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// An empty string clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_terminal_input: Option<bool>,
    #[serde(default)]
    pub recording_required: Option<bool>,
    /// Replaces the origins allowed to embed the viewer (`scheme://host[:port]` each, at most
    /// 16; `[]` allows none again). See [`crate::origin`].
    #[serde(default)]
    pub frame_ancestors: Option<Vec<String>>,
    /// The tenant's default login the broker injects into RDP sessions over TLS (`DOMAIN\\user`,
    /// `user@domain` or `user`); an empty string clears it.
    #[serde(default)]
    pub rdp_username: Option<String>,
    /// Write-only: the password injected with `rdp_username`; an empty string clears it.
    #[serde(default)]
    pub rdp_password: Option<String>,
}

/// One row of `GET /api/v1/audit`: a security or session event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEvent {
    pub id: i64,
    pub at: String,
    /// e.g. `agent_connected`, `auth_failed`, `request_refused`, `token_refused`,
    /// `session_created`, `session_started`, `session_ended`.
    pub kind: String,
    pub tenant: Option<TenantName>,
    pub agent: Option<String>,
    pub session: Option<String>,
    pub operator: Option<String>,
    pub peer_addr: Option<String>,
    /// The id of the API key that made the call (events of API calls), next to the operator
    /// the console named.
    #[serde(default)]
    pub api_key: Option<String>,
    pub detail: String,
}

/// `GET /api/v1/audit`: sessions and events that match the filters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditPage {
    pub sessions: Vec<SessionInfo>,
    pub events: Vec<AuditEvent>,
}

/// `GET /api/v1/audit/search?q=`: the terminal sessions whose transcript holds the text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TerminalSearch {
    pub sessions: Vec<TerminalSearchHit>,
}

/// One session that matched, with its matching lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TerminalSearchHit {
    pub session: String,
    pub agent: AgentId,
    pub operator: String,
    /// RFC 3339.
    pub started_at: Option<String>,
    /// The replay page, opening at the first match (`/replay/{id}#connection=N&t=SECONDS`).
    pub replay_url: String,
    pub matches: Vec<TerminalSearchLine>,
}

/// A matching line of a terminal transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TerminalSearchLine {
    /// The connection it was typed or shown in (its recording segment, from 1).
    #[serde(default = "first_segment")]
    pub segment: u32,
    /// Seconds since that connection's recording started.
    pub t: f64,
    /// `true` for a typed line (recorded input), `false` for output.
    pub input: bool,
    pub text: String,
}

fn first_segment() -> u32 {
    1
}

/// `POST /api/v1/sessions/{id}/launch`: a launch URL for the desktop helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LaunchAnswer {
    pub launch_url: String,
}

/// One recorded connection of a session (`GET /api/v1/recordings/{id}/segments`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecordingSegment {
    /// From 1, in the order the connections were bridged.
    pub segment: u32,
    /// RFC 3339, from the file's header (none when the header is unreadable).
    pub started_at: Option<String>,
    pub content: Option<crate::recording::Content>,
    /// The file's size.
    pub bytes: u64,
}

/// Every error body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable, snake_case: what a program branches on.
    pub code: String,
    /// For people.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_bodies_never_show_their_passwords_in_debug() {
        let register: RegisterAgent = serde_json::from_str(
            r#"{"id":"pc1","public_key":"k","vnc_password":"v-s3cret","ssh_username":"u",
                "ssh_password":"s-s3cret","rdp_password":"r-s3cret"}"#,
        )
        .unwrap();
        let patch: PatchAgent =
            serde_json::from_str(r#"{"vnc_password":"v-s3cret","rdp_password":"r-s3cret"}"#)
                .unwrap();
        for shown in [format!("{register:?}"), format!("{patch:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(
                shown.contains(r#"vnc_password: Some("<redacted>")"#),
                "{shown}"
            );
        }
        assert!(format!("{register:?}").contains(r#"ssh_username: Some("u")"#));
        assert!(format!("{patch:?}").contains("ssh_password: None"));
    }

    #[test]
    fn create_session_refuses_unknown_fields_and_bad_ids() {
        let ok: CreateSession =
            serde_json::from_str(r#"{"agent":"pc1","service":"vnc","operator":"alice"}"#).unwrap();
        assert!(!ok.legacy && !ok.view_only && ok.record.is_none());
        let typo = serde_json::from_str::<CreateSession>(
            r#"{"agent":"pc1","service":"vnc","operator":"alice","legcy":true}"#,
        );
        assert!(
            typo.unwrap_err()
                .to_string()
                .contains("unknown field `legcy`")
        );
        let bad = serde_json::from_str::<CreateSession>(
            r#"{"agent":"../etc","service":"vnc","operator":"alice"}"#,
        );
        assert!(bad.is_err());
    }

    #[test]
    fn roles_and_states_parse() {
        for r in [Role::Auditor, Role::Helpdesk, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        for s in [
            SessionState::Pending,
            SessionState::Active,
            SessionState::Ended,
        ] {
            assert_eq!(SessionState::parse(s.as_str()), Some(s));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
