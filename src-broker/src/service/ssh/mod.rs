//! The `ssh` adapter, the browser terminal of `ssh` sessions: the broker is the SSH client of
//! the workstation's sshd, over the channel it opened on the agent's `ssh` forward. It logs in
//! with a credential the operator never sees (the tenant's key pair, else the agent's stored
//! password) or, when none works, with a user name and password typed in the page (never
//! stored); it checks the workstation's host key against the agent's pin; it opens an
//! `xterm-256color` PTY at the page's size and a shell. The result is a [`Terminal`]: a
//! [`TerminalSource`] and a [`TerminalSink`] that the session core's bridge carries to and from
//! the viewer (binary frames = terminal bytes, text frames = JSON control, see
//! `passerelle_proto::terminal`), recorded as a terminal (`Content::Terminal`).
//!
//! - [`pipe`]: the agent's channel as a stream, always drained (one slow viewer never freezes
//!   the agent's connection).
//! - `login`: handshake, authentication, PTY and shell, each step bounded.
//! - [`terminal`]: the two ends; back-pressure is the bridge not polling the source.
//! - `filter`: what the bridge drops (a view-only viewer's keys) and records (output, input
//!   when the tenant says so, resizes and the exit as events).
//! - [`error`]: what can fail before the shell, as the viewer's [`Closure`].
//! - `adapter`: the session around it (credentials, pin and audit through [`Context`]).

mod adapter;
pub(crate) mod error;
mod filter;
mod login;
pub(crate) mod pipe;
pub(crate) mod terminal;

use std::sync::Arc;
use std::time::Duration;

use passerelle_proto::close::Closure;
use passerelle_proto::recording::Content;
use passerelle_proto::terminal::Password;
use russh::keys::{PrivateKey, PublicKey};
use tokio::io::{AsyncRead, AsyncWrite};

pub(crate) use error::SshError;
pub(crate) use login::WINDOW;
pub(crate) use terminal::{TerminalSink, TerminalSource};

use super::{Bridge, Context};
use crate::ends::{Sink, Source};
use crate::registry::AgentChannel;

/// The most bytes of the agent's channel that [`pipe::drain`] may hold for one terminal: the
/// client's window and a few packets (the workstation may not send more).
pub(crate) const PIPE_LIMIT: usize = 2 * WINDOW as usize + 256 * 1024;

/// What the broker logs in with, tried in this order: `key`, then `password`, then a user name
/// and password typed in the page.
#[derive(Default, Clone)]
pub(crate) struct Credentials {
    /// The login name (the session's `ssh_user`, else the agent's, else the tenant's); `None`
    /// lets the page type one.
    pub(crate) user: Option<String>,
    /// The tenant's key pair.
    pub(crate) key: Option<Arc<PrivateKey>>,
    /// The agent's stored password.
    pub(crate) password: Option<Password>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("password", &self.password)
            .finish()
    }
}

/// Bounds on each step before the shell runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// SSH version exchange and key exchange.
    pub(crate) handshake: Duration,
    /// One authentication request's answer.
    pub(crate) auth: Duration,
    /// The operator typing a user name and password (all attempts).
    pub(crate) typed: Duration,
    /// The session channel, the PTY and the shell, each.
    pub(crate) shell: Duration,
    /// The page's first size after login, if it has not sent one (80x24 then).
    pub(crate) first_size: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(15),
            auth: Duration::from_secs(15),
            typed: Duration::from_secs(120),
            shell: Duration::from_secs(15),
            first_size: Duration::from_secs(5),
        }
    }
}

/// How to open a terminal.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    pub(crate) credentials: Credentials,
    /// The agent's pinned host key; `None` accepts any (first use: the caller pins
    /// [`Terminal::host_key`]).
    pub(crate) host_key: Option<PublicKey>,
    pub(crate) timeouts: Timeouts,
}

/// How the broker logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthMethod {
    TenantKey,
    StoredPassword,
    TypedPassword,
}

impl AuthMethod {
    /// For the audit.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::TenantKey => "the tenant's SSH key",
            Self::StoredPassword => "the agent's stored password",
            Self::TypedPassword => "a password typed by the operator",
        }
    }
}

/// A running shell.
#[derive(Debug)]
pub(crate) struct Terminal {
    pub(crate) source: TerminalSource,
    pub(crate) sink: TerminalSink,
    /// Logged in as.
    pub(crate) user: String,
    /// The key the workstation presented (equal to the pin, if there was one).
    pub(crate) host_key: PublicKey,
    pub(crate) auth: AuthMethod,
    /// The PTY's size at the start.
    pub(crate) size: (u16, u16),
}

/// Serves one viewer of an `ssh` session over `channel`: the login ([`open`], with what the
/// store holds and what the page types), then the bridge between the viewer and the terminal.
/// The viewer's close says how the shell ended. `None` when the broker went away with the
/// viewer's end.
pub(super) async fn serve<VR, VT>(
    cx: &Context,
    channel: AgentChannel,
    mut viewer: (VR, VT),
    bridge: impl Bridge,
) -> Option<((VR, VT), Closure)>
where
    VR: Source + 'static,
    VT: Sink + 'static,
{
    let opened = cx
        .interruptible(adapter::open(cx, channel, &mut viewer))
        .await;
    let (terminal, opts) = match opened {
        Ok(opened) => opened,
        Err(closure) => return Some((viewer, closure)),
    };
    let (viewer, terminal, closure) = bridge
        .run(viewer, terminal, opts, Content::Terminal)
        .await?;
    let closure = terminal.0.closure(closure);
    cx.tasks.spawn(terminal::finish(terminal));
    Some((viewer, closure))
}

/// Logs in to the workstation's sshd over `stream` (the agent's channel, through
/// [`pipe::drain`]) and opens a shell. The viewer's ends are used for the login only: the page's
/// size (`resize`), and a `login` request answered by `credentials` when no stored credential
/// works. Every step is bounded by `opts.timeouts`.
pub(crate) async fn open<S, V, W>(
    stream: S,
    opts: Options,
    viewer_rx: &mut V,
    viewer_tx: &mut W,
) -> Result<Terminal, SshError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    V: Source,
    W: Sink,
{
    login::open(stream, opts, viewer_rx, viewer_tx).await
}

#[cfg(test)]
mod tests;
