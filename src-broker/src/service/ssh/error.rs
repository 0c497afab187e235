//! Why a browser terminal could not be opened, as the [`Closure`] the viewer gets (close code,
//! reason, the session's end reason) and the text the audit keeps (never a secret).

use passerelle_proto::close::{self, Closure, EndReason};

use crate::ends::EndError;

/// A failure before the shell runs.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SshError {
    /// The SSH connection to the workstation's sshd did not come up (not SSH, no common
    /// algorithm, no answer in time, the agent's channel closed).
    #[error("the SSH connection to the workstation failed: {0}")]
    Handshake(String),
    /// The workstation presented another host key than the one pinned for its agent.
    #[error(
        "the workstation's SSH host key has changed (pinned {pinned}, presented {presented}); an administrator can reset the pin if this is expected"
    )]
    HostKeyChanged { pinned: String, presented: String },
    /// Every credential was refused (or none could be tried).
    #[error("SSH authentication failed: {0}")]
    Auth(String),
    /// The workstation refused the terminal or the shell.
    #[error("the workstation refused a terminal: {0}")]
    Shell(String),
    /// The viewer went away, or sent what the protocol does not allow, during the login.
    #[error("the viewer: {0}")]
    Viewer(#[from] EndError),
}

impl SshError {
    /// The session's end reason.
    pub(crate) fn end_reason(&self) -> EndReason {
        match self {
            Self::Handshake(_) => EndReason::SshHandshakeFailed,
            Self::HostKeyChanged { .. } => EndReason::SshHostKeyChanged,
            Self::Auth(_) => EndReason::SshAuthFailed,
            Self::Shell(_) => EndReason::SshShellFailed,
            Self::Viewer(EndError::Closed | EndError::Io(_)) => EndReason::ViewerClosed,
            Self::Viewer(EndError::TooBig | EndError::Protocol(_)) => EndReason::ProtocolError,
        }
    }

    /// What the viewer is told (the audit gets the whole text, [`std::fmt::Display`]): the
    /// presented host key rather than both.
    fn viewer_message(&self) -> String {
        match self {
            Self::HostKeyChanged { presented, .. } => {
                format!("the workstation's SSH host key changed to {presented}")
            }
            other => other.to_string(),
        }
    }
}

impl From<&SshError> for Closure {
    fn from(e: &SshError) -> Self {
        let code = match e {
            SshError::Viewer(EndError::TooBig) => close::MESSAGE_TOO_BIG,
            other => other.end_reason().close_code(),
        };
        Closure::ending_with(e.end_reason(), code, &e.viewer_message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewer_messages_fit_a_close_frame() {
        let fp = format!("SHA256:{}", "A".repeat(43));
        let e = SshError::HostKeyChanged {
            pinned: fp.clone(),
            presented: fp.replace('A', "B"),
        };
        assert!(e.to_string().contains(&fp), "the audit has both");
        let c = Closure::from(&e);
        assert!(
            c.reason.len() <= close::MAX_REASON_BYTES && c.reason.ends_with(&fp.replace('A', "B")),
            "{c:?}"
        );
        let long = SshError::Handshake("é".repeat(200));
        let c = Closure::from(&long);
        assert!(
            c.reason.len() <= close::MAX_REASON_BYTES && c.reason.ends_with('…'),
            "{c:?}"
        );
    }

    #[test]
    fn each_failure_has_its_code_and_reason() {
        let cases = [
            (
                SshError::Handshake("x".into()),
                4060,
                "ssh_handshake_failed",
            ),
            (
                SshError::HostKeyChanged {
                    pinned: "a".into(),
                    presented: "b".into(),
                },
                4061,
                "ssh_host_key_changed",
            ),
            (SshError::Auth("x".into()), 4062, "ssh_auth_failed"),
            (SshError::Shell("x".into()), 4063, "ssh_shell_failed"),
            (SshError::Viewer(EndError::Closed), 4000, "viewer_closed"),
            (
                SshError::Viewer(EndError::Protocol("x".into())),
                4030,
                "protocol_error",
            ),
            (SshError::Viewer(EndError::TooBig), 1009, "protocol_error"),
        ];
        for (e, code, reason) in cases {
            let c = Closure::from(&e);
            assert_eq!(c.code.code, code, "{e}");
            assert_eq!(c.end.map(|r| r.as_str()), Some(reason), "{e}");
        }
    }
}
