//! The browser terminal of `ssh` sessions: the broker is the SSH client of the workstation's
//! sshd, over the channel it opened on the agent's `ssh` forward. It logs in with a credential
//! the operator never sees (the tenant's key pair, else the agent's stored password) or, when
//! none works, with a user name and password typed in the page (never stored); it checks the
//! workstation's host key against the agent's pin; it opens an `xterm-256color` PTY at the page's
//! size and a shell. The result is a [`Terminal`]: a [`TerminalSource`] and a [`TerminalSink`]
//! for the session core's bridge (binary frames = terminal bytes, text frames = JSON control,
//! see `passerelle_proto::terminal`).
//!
//! - [`pipe`]: the agent's channel as a stream, always drained (one slow viewer never freezes
//!   the agent's connection).
//! - `login`: handshake, authentication, PTY and shell, each step bounded.
//! - [`terminal`]: the two ends, with back-pressure and the recording tap.
//! - [`error`]: what can fail before the shell, with close codes and end reasons.
//! - [`export`]: `passerelle recording export --text/--asciicast`.
//! - [`wiring`]: the broker around it (store, audit, recording tap, search index).

pub mod error;
pub mod export;
mod login;
pub mod pipe;
pub mod terminal;
pub mod wiring;

use std::sync::Arc;
use std::time::Duration;

use passerelle_proto::terminal::{Password, RecordedEvent};
use russh::keys::{PrivateKey, PublicKey};
use tokio::io::{AsyncRead, AsyncWrite};

pub use error::SshError;
pub use login::{MAX_TYPED_ATTEMPTS, WINDOW};
pub use terminal::{Tap, TerminalSink, TerminalSource};

use crate::ends::{Sink, Source};

/// The most bytes of the agent's channel that [`pipe::drain`] may hold for one terminal: the
/// client's window and a few packets (the workstation may not send more).
pub const PIPE_LIMIT: usize = 2 * WINDOW as usize + 256 * 1024;

/// What the broker logs in with, tried in this order: `key`, then `password`, then a user name
/// and password typed in the page.
#[derive(Default, Clone)]
pub struct Credentials {
    /// The login name (the session's `ssh_user`, else the agent's, else the tenant's); `None`
    /// lets the page type one.
    pub user: Option<String>,
    /// The tenant's key pair.
    pub key: Option<Arc<PrivateKey>>,
    /// The agent's stored password.
    pub password: Option<Password>,
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
pub struct Timeouts {
    /// SSH version exchange and key exchange.
    pub handshake: Duration,
    /// One authentication request's answer.
    pub auth: Duration,
    /// The operator typing a user name and password (all attempts).
    pub typed: Duration,
    /// The session channel, the PTY and the shell, each.
    pub shell: Duration,
    /// The page's first size after login, if it has not sent one (80x24 then).
    pub first_size: Duration,
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
pub struct Options {
    pub credentials: Credentials,
    /// The agent's pinned host key; `None` accepts any (first use: the caller pins
    /// [`Terminal::host_key`]).
    pub host_key: Option<PublicKey>,
    /// Drop the viewer's keys (resizes still apply).
    pub view_only: bool,
    pub timeouts: Timeouts,
}

/// How the broker logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    TenantKey,
    StoredPassword,
    TypedPassword,
}

impl AuthMethod {
    /// For the audit.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TenantKey => "the tenant's SSH key",
            Self::StoredPassword => "the agent's stored password",
            Self::TypedPassword => "a password typed by the operator",
        }
    }
}

/// A running shell.
#[derive(Debug)]
pub struct Terminal {
    pub source: TerminalSource,
    pub sink: TerminalSink,
    /// Logged in as.
    pub user: String,
    /// The key the workstation presented (equal to the pin, if there was one).
    pub host_key: PublicKey,
    pub auth: AuthMethod,
    /// The PTY's size at the start.
    pub size: (u16, u16),
}

impl Terminal {
    /// Records the terminal from now on: its size now, then output, input and resizes.
    pub fn record_to(&mut self, tap: Arc<dyn Tap>) {
        let (cols, rows) = self.size;
        tap.event(&RecordedEvent::Resize { cols, rows });
        self.source.tap = Some(tap.clone());
        self.sink.tap = Some(tap);
    }
}

/// Logs in to the workstation's sshd over `stream` (the agent's channel, through
/// [`pipe::drain`]) and opens a shell. The viewer's ends are used for the login only: the page's
/// size (`resize`), and a `login` request answered by `credentials` when no stored credential
/// works. Every step is bounded by `opts.timeouts`.
pub async fn open<S, V, W>(
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
