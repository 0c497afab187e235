//! From the agent's channel to a running shell: the SSH handshake with the host key checked
//! against the agent's pin, authentication (the tenant's key, the agent's stored password, then
//! a password typed in the page), a PTY at the page's size and a shell. Every step is bounded.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use passerelle_proto::terminal::{FromViewer, Password, TERM, ToViewer};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, MethodKind, client};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, timeout, timeout_at};

use super::terminal::{Connection, TerminalSink, TerminalSource};
use super::{AuthMethod, Options, SshError, Terminal};
use crate::ends::{EndError, Frame, Sink, Source};

/// Typed passwords tried before giving up (OpenSSH allows 6 attempts in all by default).
pub(crate) const MAX_TYPED_ATTEMPTS: u32 = 3;
/// The SSH client's window per channel: the most the workstation sends ahead of the viewer.
pub(crate) const WINDOW: u32 = 1 << 20;
/// The largest SSH packet the client accepts.
const MAX_PACKET: u32 = 32 * 1024;

/// The SSH client's handler: checks the host key against the pin, and says what it saw.
pub(super) struct Client {
    pinned: Option<PublicKey>,
    seen: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(cert) => {
                PublicKey::new(cert.public_key().clone(), "")
            }
        };
        let accepted = self
            .pinned
            .as_ref()
            .is_none_or(|pin| pin.key_data() == key.key_data());
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(key);
        Ok(accepted)
    }
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn config() -> client::Config {
    client::Config {
        // The session's own TTL and the agent's keepalives bound an idle terminal.
        inactivity_timeout: None,
        keepalive_interval: Some(std::time::Duration::from_secs(30)),
        keepalive_max: 3,
        window_size: WINDOW,
        maximum_packet_size: MAX_PACKET,
        channel_buffer_size: 16,
        ..client::Config::default()
    }
}

/// The handshake: a connected client whose server key passed the pin.
async fn handshake<S>(
    stream: S,
    opts: &Options,
) -> Result<(client::Handle<Client>, PublicKey), SshError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let seen = Arc::new(Mutex::new(None));
    let handler = Client {
        pinned: opts.host_key.clone(),
        seen: seen.clone(),
    };
    let connected = timeout(
        opts.timeouts.handshake,
        client::connect_stream(Arc::new(config()), stream, handler),
    )
    .await;
    let presented = seen.lock().unwrap_or_else(|p| p.into_inner()).take();
    match (connected, presented) {
        (Ok(Ok(handle)), Some(key)) => Ok((handle, key)),
        (_, Some(key))
            if opts
                .host_key
                .as_ref()
                .is_some_and(|p| p.key_data() != key.key_data()) =>
        {
            Err(SshError::HostKeyChanged {
                pinned: opts.host_key.as_ref().map(fingerprint).unwrap_or_default(),
                presented: fingerprint(&key),
            })
        }
        (Err(_), _) => Err(SshError::Handshake(format!(
            "no SSH handshake within {}s",
            opts.timeouts.handshake.as_secs()
        ))),
        (Ok(Err(e)), _) => Err(SshError::Handshake(e.to_string())),
        (Ok(Ok(_)), None) => Err(SshError::Handshake("no host key was presented".into())),
    }
}

/// What one authentication request gave.
enum Tried {
    Yes,
    No { password_allowed: bool },
}

async fn attempt(
    handle: &mut client::Handle<Client>,
    opts: &Options,
    user: &str,
    how: Attempt<'_>,
) -> Result<Tried, SshError> {
    let request = async {
        match how {
            Attempt::Key(key) => {
                let key = PrivateKeyWithHashAlg::new(key.clone(), None);
                handle.authenticate_publickey(user, key).await
            }
            Attempt::Password(pw) => handle.authenticate_password(user, pw.expose()).await,
        }
    };
    match timeout(opts.timeouts.auth, request).await {
        Ok(Ok(client::AuthResult::Success)) => Ok(Tried::Yes),
        Ok(Ok(client::AuthResult::Failure {
            remaining_methods, ..
        })) => Ok(Tried::No {
            password_allowed: remaining_methods.contains(&MethodKind::Password),
        }),
        Ok(Err(e)) => Err(SshError::Handshake(format!(
            "the connection broke during authentication: {e}"
        ))),
        Err(_) => Err(SshError::Auth(format!(
            "the workstation did not answer within {}s",
            opts.timeouts.auth.as_secs()
        ))),
    }
}

enum Attempt<'a> {
    Key(&'a Arc<russh::keys::PrivateKey>),
    Password(&'a Password),
}

/// Reads the viewer until it sends something other than a resize; remembers the size.
async fn next_from_viewer<V: Source>(
    viewer: &mut V,
    size: &mut Option<(u16, u16)>,
    deadline: Instant,
) -> Result<Option<FromViewer>, SshError> {
    loop {
        let frame = match timeout_at(deadline, viewer.recv()).await {
            Err(_) => return Ok(None),
            Ok(frame) => frame?,
        };
        match frame {
            None => return Err(SshError::Viewer(EndError::Closed)),
            // Keys typed before the shell runs go nowhere.
            Some(Frame::Binary(_)) => {}
            Some(Frame::Text(text)) => match FromViewer::parse(&text) {
                Ok(FromViewer::Resize { cols, rows }) => *size = Some((cols, rows)),
                Ok(other) => return Ok(Some(other)),
                Err(passerelle_proto::terminal::ControlError::TooBig) => {
                    return Err(SshError::Viewer(EndError::TooBig));
                }
                Err(e) => return Err(SshError::Viewer(EndError::Protocol(e.to_string()))),
            },
        }
    }
}

/// Authenticates with what the broker holds, then with what the viewer types.
async fn authenticate<V: Source, W: Sink>(
    handle: &mut client::Handle<Client>,
    opts: &Options,
    viewer_rx: &mut V,
    viewer_tx: &mut W,
    size: &mut Option<(u16, u16)>,
) -> Result<(String, AuthMethod), SshError> {
    let creds = &opts.credentials;
    let mut password_allowed = true;
    let mut message = if creds.user.is_some() {
        "no stored credential for this workstation: type the password"
    } else {
        "no login name is set for this workstation: type a user name and password"
    };
    if let Some(user) = &creds.user {
        if let Some(key) = &creds.key {
            match attempt(handle, opts, user, Attempt::Key(key)).await? {
                Tried::Yes => return Ok((user.clone(), AuthMethod::TenantKey)),
                Tried::No {
                    password_allowed: p,
                } => password_allowed = p,
            }
            message = "the tenant's SSH key is not installed for this user: type the password";
        }
        if let Some(pw) = &creds.password
            && password_allowed
        {
            match attempt(handle, opts, user, Attempt::Password(pw)).await? {
                Tried::Yes => return Ok((user.clone(), AuthMethod::StoredPassword)),
                Tried::No {
                    password_allowed: p,
                } => password_allowed = p,
            }
            message = "the stored password was refused: type the password";
        }
    }
    if !password_allowed {
        return Err(SshError::Auth(format!(
            "the workstation refused the tenant's SSH key for {} and accepts no password",
            creds.user.as_deref().unwrap_or("?")
        )));
    }
    // OpenSSH ends the connection when the user name changes between attempts: once one was
    // tried, it is the only one (the page shows it, not editable).
    let mut fixed = creds.user.clone();
    let deadline = Instant::now() + opts.timeouts.typed;
    let mut message = message.to_owned();
    for attempts in 1..=MAX_TYPED_ATTEMPTS {
        let ask = ToViewer::Login {
            user: fixed.clone(),
            message: message.clone(),
        };
        viewer_tx.send(Frame::Text(ask.to_text())).await?;
        viewer_tx.flush().await?;
        let (user, password) = loop {
            match next_from_viewer(viewer_rx, size, deadline).await? {
                None => {
                    return Err(SshError::Auth(format!(
                        "no user name and password were typed within {}s",
                        opts.timeouts.typed.as_secs()
                    )));
                }
                Some(FromViewer::Credentials { user, password }) => break (user, password),
                Some(FromViewer::Resize { .. }) => {}
            }
        };
        if fixed.as_ref().is_some_and(|f| *f != user) {
            return Err(SshError::Viewer(EndError::Protocol(
                "the user name cannot change on this connection".into(),
            )));
        }
        fixed = Some(user.clone());
        match attempt(handle, opts, &user, Attempt::Password(&password)).await? {
            Tried::Yes => return Ok((user, AuthMethod::TypedPassword)),
            Tried::No { .. } if attempts == MAX_TYPED_ATTEMPTS => {
                return Err(SshError::Auth(format!(
                    "wrong user name or password ({MAX_TYPED_ATTEMPTS} attempts for {user})"
                )));
            }
            Tried::No { .. } => {
                message = format!(
                    "wrong password for {user}: try again (to log in as someone else, open the session again)"
                );
            }
        }
    }
    Err(SshError::Auth("wrong user name or password".into()))
}

/// Waits for a channel request's answer; output that comes first is kept.
async fn reply(
    channel: &mut russh::Channel<client::Msg>,
    opts: &Options,
    what: &str,
    early: &mut VecDeque<Bytes>,
) -> Result<(), SshError> {
    let deadline = Instant::now() + opts.timeouts.shell;
    loop {
        let msg = timeout_at(deadline, channel.wait())
            .await
            .map_err(|_| SshError::Shell(format!("no answer to the {what} request")))?;
        match msg {
            Some(ChannelMsg::Success) => return Ok(()),
            Some(ChannelMsg::Failure) => return Err(SshError::Shell(format!("{what} refused"))),
            Some(ChannelMsg::Data { data }) => early.push_back(data),
            Some(ChannelMsg::Close) | None => {
                return Err(SshError::Shell(format!(
                    "the channel closed before the {what}"
                )));
            }
            Some(_) => {}
        }
    }
}

/// The whole login; see [`super::open`].
pub(super) async fn open<S, V, W>(
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
    let (mut handle, host_key) = handshake(stream, &opts).await?;
    let mut size = None;
    let (user, auth) = authenticate(&mut handle, &opts, viewer_rx, viewer_tx, &mut size).await?;
    if size.is_none() {
        let deadline = Instant::now() + opts.timeouts.first_size;
        if next_from_viewer(viewer_rx, &mut size, deadline)
            .await?
            .is_some()
        {
            return Err(SshError::Viewer(EndError::Protocol(
                "credentials are taken only when the broker asks for them".into(),
            )));
        }
    }
    let (cols, rows) = size.unwrap_or((80, 24));
    let mut channel = timeout(opts.timeouts.shell, handle.channel_open_session())
        .await
        .map_err(|_| SshError::Shell("no session channel in time".into()))?
        .map_err(|e| SshError::Shell(format!("no session channel: {e}")))?;
    let mut early = VecDeque::new();
    channel
        .request_pty(true, TERM, u32::from(cols), u32::from(rows), 0, 0, &[])
        .await
        .map_err(|e| SshError::Shell(e.to_string()))?;
    reply(&mut channel, &opts, "terminal (PTY)", &mut early).await?;
    channel
        .request_shell(true)
        .await
        .map_err(|e| SshError::Shell(e.to_string()))?;
    reply(&mut channel, &opts, "shell", &mut early).await?;
    let (read, write) = channel.split();
    let conn = Arc::new(Connection { handle });
    Ok(Terminal {
        source: TerminalSource {
            read,
            early,
            exit: None,
            _conn: conn.clone(),
        },
        sink: TerminalSink {
            write,
            eof_sent: false,
            conn,
        },
        user,
        host_key,
        auth,
        size: (cols, rows),
    })
}
