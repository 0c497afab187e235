//! The terminal as the session core serves it: the credentials, the login name and the host
//! key pin from the store (through [`Context`], never a blocking call here), the pin on first
//! use, the audit of the login and of each failure, the `ready` message, and the bridge's
//! options (filters, the terminal's first size for the recording).

use std::sync::Arc;

use anyhow::Context as _;
use passerelle_proto::close::{self, Closure, EndReason};
use passerelle_proto::terminal::{Password, RecordedEvent, ToViewer};
use russh::keys::{HashAlg, PublicKey};

use super::filter::{self, Keys, Output};
use super::{Credentials, Options, PIPE_LIMIT, SshError, Terminal, TerminalSink, TerminalSource};
use super::{Timeouts, pipe};
use crate::bridge;
use crate::ends::{EndError, Frame, Sink, Source};
use crate::registry::AgentChannel;
use crate::service::Context;
use crate::store::{AuditKind, Store, TenantId};

/// How to open the session's terminal, and whether the tenant records terminal input.
struct Setup {
    opts: Options,
    record_input: bool,
}

/// Reads the login name (the session's `ssh_user`, else the agent's, else the tenant's), the
/// tenant's key, the agent's password and host key pin, and the tenant's input recording.
fn setup(
    store: &Store,
    tenant: TenantId,
    agent: &passerelle_proto::ids::AgentId,
    ssh_user: Option<String>,
) -> anyhow::Result<Setup> {
    let agent_ssh = store.agent_ssh(tenant, agent)?;
    let tenant_ssh = store.tenant_ssh(tenant)?;
    let user = ssh_user
        .or(agent_ssh.ssh_username)
        .or(tenant_ssh.ssh_username);
    let host_key = agent_ssh
        .host_key
        .as_deref()
        .map(PublicKey::from_openssh)
        .transpose()
        .context("the agent's pinned SSH host key is unreadable")?;
    Ok(Setup {
        opts: Options {
            credentials: Credentials {
                user,
                key: Some(Arc::new(store.tenant_ssh_key(tenant)?)),
                password: store.agent_ssh_password(tenant, agent)?.map(Password::new),
            },
            host_key,
            timeouts: Timeouts::default(),
        },
        record_input: tenant_ssh.record_terminal_input,
    })
}

/// Logs in over `channel` (talking to the viewer for a typed password), tells the viewer the
/// shell is ready, and gives the terminal's ends with the bridge's options. A failure is
/// audited and says how the viewer's connection closes.
pub(super) async fn open<VR: Source, VT: Sink>(
    cx: &Context,
    channel: AgentChannel,
    (viewer_rx, viewer_tx): &mut (VR, VT),
) -> Result<((TerminalSource, TerminalSink), bridge::Options), Closure> {
    let (tenant, agent, user) = (cx.tenant_id, cx.agent.clone(), cx.ssh_user.clone());
    let setup = cx
        .db
        .run(move |s| setup(s, tenant, &agent, user))
        .await
        .map_err(|e| {
            tracing::error!(error = %format!("{e:#}"), "could not read the terminal's credentials");
            Closure::ending_with(
                EndReason::SshAuthFailed,
                close::SSH_AUTH_FAILED,
                "the broker could not read its SSH credentials",
            )
        })?;
    let stream = pipe::drain(channel, PIPE_LIMIT, &cx.tasks);
    let terminal = match super::open(stream, setup.opts, viewer_rx, viewer_tx).await {
        Ok(terminal) => terminal,
        Err(e) => {
            tracing::info!(error = %e, "terminal not opened");
            failed(cx, &e);
            return Err(Closure::from(&e));
        }
    };
    opened(cx, &terminal).await;
    let ready = ToViewer::Ready {
        user: terminal.user.clone(),
    };
    // A viewer gone by now ends the bridge at once.
    if viewer_tx.send(Frame::Text(ready.to_text())).await.is_ok() {
        let _ = viewer_tx.flush().await;
    }
    let keys = Keys {
        view_only: cx.view_only,
        record_input: setup.record_input,
    };
    let opts = bridge_options(cx.plain(), keys, terminal.size);
    Ok(((terminal.source, terminal.sink), opts))
}

/// The bridge's options for a terminal of `(cols, rows)` at the start: `keys` filters the
/// viewer's side, the output's exit is recorded, and the recording starts with the size.
pub(super) fn bridge_options(
    plain: bridge::Options,
    keys: Keys,
    (cols, rows): (u16, u16),
) -> bridge::Options {
    bridge::Options {
        up: Some(Box::new(keys)),
        down: Some(Box::new(Output)),
        first_events: vec![filter::event(&RecordedEvent::Resize { cols, rows })],
        ..plain
    }
}

/// A terminal is open: pins the workstation's host key on first use, audits the login.
async fn opened(cx: &Context, terminal: &Terminal) {
    let (tenant, agent, key) = (cx.tenant_id, cx.agent.clone(), terminal.host_key.clone());
    match cx
        .db
        .run(move |s| s.pin_ssh_host_key(tenant, &agent, &key))
        .await
    {
        Ok(true) => cx.audit(
            AuditKind::SshHostKeyPinned,
            format!(
                "pinned on first use: {}",
                terminal.host_key.fingerprint(HashAlg::Sha256)
            ),
        ),
        Ok(false) => {}
        Err(e) => tracing::error!(error = %format!("{e:#}"), "could not pin an SSH host key"),
    }
    cx.audit(
        AuditKind::SshLogin,
        format!(
            "logged in as {} with {}",
            terminal.user,
            terminal.auth.as_str()
        ),
    );
    tracing::info!(user = %terminal.user, auth = terminal.auth.as_str(), "terminal open");
}

/// A terminal could not open: audited (`ssh_host_key_changed` or `ssh_failed`), unless the
/// viewer simply left.
fn failed(cx: &Context, error: &SshError) {
    let kind = match error {
        SshError::HostKeyChanged { .. } => AuditKind::SshHostKeyChanged,
        SshError::Viewer(EndError::Closed) => return,
        _ => AuditKind::SshFailed,
    };
    cx.audit(kind, error.to_string());
}
