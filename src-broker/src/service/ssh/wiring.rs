//! What the broker does around a session's terminal: the credentials and pin from the store,
//! the host key pinned on first use, the audit of each failure, the recording tap, and the
//! search index of the recording once the session has ended.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use passerelle_proto::recording::{Kind, Verdict, verify};
use passerelle_proto::terminal::{Password, RecordedEvent, transcript};
use russh::keys::{HashAlg, PublicKey};

use super::{Credentials, Options, SshError, Tap, Terminal, Timeouts};
use crate::broker::State;
use crate::recorder::Recording;
use crate::sessions::LiveSession;
use crate::store::{AuditKind, NewEvent, Store, TenantId};

fn event(session: &LiveSession, kind: AuditKind, detail: String, peer: Option<String>) -> NewEvent {
    let mut ev = NewEvent::new(kind, detail);
    ev.tenant_id = Some(session.tenant_id);
    ev.agent = Some(session.agent.to_string());
    ev.session = Some(session.id.clone());
    ev.operator = Some(session.operator.clone());
    ev.peer_addr = peer;
    ev
}

/// Records a terminal into a session recording: output always, input only when the tenant
/// asks for it (input holds passwords), resizes and the exit as events.
pub struct RecordingTap {
    pub recording: Arc<Recording>,
    pub input: bool,
}

impl Tap for RecordingTap {
    fn output(&self, data: &Bytes) {
        self.recording.record(Kind::Down, data.clone());
    }

    fn input(&self, data: &Bytes) {
        if self.input {
            self.recording.record(Kind::Up, data.clone());
        }
    }

    fn event(&self, event: &RecordedEvent) {
        self.recording
            .record(Kind::Event, Bytes::from(event.to_json()));
    }
}

impl State {
    /// How to open `session`'s terminal: the login name (the session's `ssh_user`, else the
    /// agent's, else the tenant's), the tenant's key, the agent's password and host key pin.
    pub fn terminal_options(&self, session: &LiveSession) -> anyhow::Result<Options> {
        let (tenant, agent) = (session.tenant_id, &session.agent);
        let agent_ssh = self.store.agent_ssh(tenant, agent)?;
        let user = match self.store.session_ssh_user(&session.id)? {
            Some(user) => Some(user),
            None => match agent_ssh.ssh_username.clone() {
                Some(user) => Some(user),
                None => self.store.tenant_ssh(tenant)?.ssh_username,
            },
        };
        let host_key = agent_ssh
            .host_key
            .as_deref()
            .map(PublicKey::from_openssh)
            .transpose()
            .context("the agent's pinned SSH host key is unreadable")?;
        Ok(Options {
            credentials: Credentials {
                user,
                key: Some(Arc::new(self.store.tenant_ssh_key(tenant)?)),
                password: self
                    .store
                    .agent_ssh_password(tenant, agent)?
                    .map(Password::new),
            },
            host_key,
            view_only: session.view_only,
            timeouts: Timeouts::default(),
        })
    }

    /// A terminal is open: pins the workstation's host key on first use (audited).
    pub fn terminal_opened(&self, session: &LiveSession, terminal: &Terminal) {
        match self
            .store
            .pin_ssh_host_key(session.tenant_id, &session.agent, &terminal.host_key)
        {
            Ok(true) => self.store.audit(event(
                session,
                AuditKind::SshHostKeyPinned,
                format!(
                    "pinned on first use: {}",
                    terminal.host_key.fingerprint(HashAlg::Sha256)
                ),
                None,
            )),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "could not pin an SSH host key"),
        }
        tracing::info!(user = %terminal.user, auth = terminal.auth.as_str(), "terminal open");
    }

    /// A terminal could not open: audited (`ssh_host_key_changed` or `ssh_failed`), unless the
    /// viewer simply left.
    pub fn terminal_failed(&self, session: &LiveSession, error: &SshError, peer: String) {
        let kind = match error {
            SshError::HostKeyChanged { .. } => AuditKind::SshHostKeyChanged,
            SshError::Viewer(crate::ends::EndError::Closed) => return,
            _ => AuditKind::SshFailed,
        };
        self.store
            .audit(event(session, kind, error.to_string(), Some(peer)));
    }

    /// Indexes a finished terminal recording for search, off the async threads.
    pub fn index_terminal_later(&self, tenant_id: TenantId, session: String, path: &Path) {
        let (store, path, key) = (
            self.store.clone(),
            path.to_owned(),
            self.recording_key.public_hex(),
        );
        self.tasks.spawn_blocking(move || {
            match index_recording(&store, tenant_id, &session, &path, &key) {
                Ok(lines) => tracing::debug!(%session, lines, "terminal recording indexed"),
                Err(e) => tracing::warn!(%session, error = %format!("{e:#}"), "could not index a terminal recording"),
            }
        });
    }
}

/// Reads, verifies and indexes one terminal recording; returns the lines indexed.
pub fn index_recording(
    store: &Store,
    tenant_id: TenantId,
    session: &str,
    path: &Path,
    public_hex: &str,
) -> anyhow::Result<usize> {
    let file = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if let Verdict::Tampered(damage) = verify(&file, |m, s| {
        crate::recorder::check_signature(public_hex, m, s)
    }) {
        anyhow::bail!("the recording does not verify: {damage}");
    }
    let t = transcript::of_recording(&file)?;
    let lines = t
        .output
        .iter()
        .map(|l| (l.time_us, false, l.text.as_str()))
        .chain(t.input.iter().map(|l| (l.time_us, true, l.text.as_str())));
    store.index_terminal(tenant_id, session, lines)
}
