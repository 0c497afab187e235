//! One agent connection's SSH handler: public-key and certificate authentication against the
//! store, remote forwards as service announcements (or legacy numeric ports), and the refusal,
//! with a reason and an audit event, of everything else an SSH client may ask.
//!
//! Key offers are answered without a store query (every key may go on to sign; only a signed
//! request, which proves the key is held, costs a lookup): a probe then tells nobody which keys
//! are registered, and a certificate, which russh hands over only once signed, gets its turn.
//! A certificate from a tenant's CA that the broker refuses (wrong principal, revoked, a
//! critical option it cannot honour) is let through authentication only to be disconnected
//! with the reason, so that the agent's `ssh` prints it: SSH has no other message for a
//! refusal. Nothing is registered and no request is served on such a connection.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::FutureExt as _;
use passerelle_proto::ids::{AgentId, ServiceName};
use russh::keys::{Certificate, HashAlg};
use russh::server::{
    Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure};
use tokio::sync::oneshot;

use super::{Killer, Server, certs, guard};
use crate::registry::{AgentConn, AgentLink};
use crate::session::LegacyLink;
use crate::store::{AgentRecord, AuditKind, KeyLogin, NewEvent};

#[path = "cert_auth.rs"]
mod cert_auth;

/// Placeholder ports told to agents for named services start here.
const PLACEHOLDER_PORT_BASE: u32 = 10_000;

/// Boxed: russh keeps the handler inside its connection task's future (and copies of it, see
/// BENCHMARKS.md "Idle agents"), where a pointer costs 8 bytes and the state ~500.
pub(super) struct AgentHandler(Box<HandlerState>);

impl std::ops::Deref for AgentHandler {
    type Target = HandlerState;
    fn deref(&self) -> &HandlerState {
        &self.0
    }
}

impl std::ops::DerefMut for AgentHandler {
    fn deref_mut(&mut self) -> &mut HandlerState {
        &mut self.0
    }
}

pub(super) struct HandlerState {
    state: Arc<Server>,
    peer: SocketAddr,
    killer: Arc<Killer>,
    authed: Option<oneshot::Sender<Arc<AgentConn>>>,
    record: Option<AgentRecord>,
    conn: Option<Arc<AgentConn>>,
    /// The remote forwards in place, as (bind address, port told to the agent).
    forwards: HashSet<(String, u32)>,
    /// The next placeholder port, never reused on this connection.
    next_placeholder: u32,
    /// A trusted CA's certificate the broker refused: the disconnect's text.
    refusal: Option<String>,
    /// The certificate this connection signed in with, if it did.
    certificate: Option<crate::registry::SignedInWith>,
    /// Audited if the connection ends unauthenticated: a certificate-based agent's bare key
    /// was offered (OpenSSH offers it before the certificate, which may still succeed).
    unless_signed_in: Vec<NewEvent>,
    /// The connection's `agent` span: russh calls the handler from a task of its own, outside
    /// it, so the handler's events name it as their parent.
    span: tracing::Span,
}

struct SshLink {
    handle: russh::server::Handle,
    killer: Arc<Killer>,
    tasks: tokio_util::task::TaskTracker,
}

impl AgentLink for SshLink {
    fn open(
        &self,
        address: String,
        port: u32,
        originator: SocketAddr,
    ) -> futures_util::future::BoxFuture<'static, anyhow::Result<crate::registry::AgentChannel>>
    {
        let handle = self.handle.clone();
        async move {
            let channel = handle
                .channel_open_forwarded_tcpip(
                    address,
                    port,
                    originator.ip().to_string(),
                    u32::from(originator.port()),
                )
                .await?;
            Ok(channel)
        }
        .boxed()
    }

    fn disconnect(&self, reason: &str) {
        let handle = self.handle.clone();
        let killer = self.killer.clone();
        let reason = reason.to_owned();
        self.tasks.spawn(async move {
            let send = handle.disconnect(russh::Disconnect::ByApplication, reason, "en".into());
            let _ = tokio::time::timeout(std::time::Duration::from_millis(300), send).await;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            killer.kill();
        });
    }
}

impl AgentHandler {
    pub(super) fn new(
        state: Arc<Server>,
        peer: SocketAddr,
        killer: Arc<Killer>,
        authed: oneshot::Sender<Arc<AgentConn>>,
    ) -> Self {
        Self(Box::new(HandlerState {
            state,
            peer,
            killer,
            authed: Some(authed),
            record: None,
            conn: None,
            forwards: HashSet::new(),
            next_placeholder: PLACEHOLDER_PORT_BASE,
            refusal: None,
            certificate: None,
            unless_signed_in: Vec::new(),
            span: tracing::Span::current(),
        }))
    }

    fn event(&self, kind: AuditKind, detail: String) -> NewEvent {
        let mut ev = NewEvent::new(kind, detail);
        ev.tenant_id = self.record.as_ref().map(|r| r.tenant_id);
        ev.agent = self.record.as_ref().map(|r| r.id.to_string());
        ev.peer_addr = Some(self.peer.to_string());
        ev
    }

    /// Audits and counts a refused request; returns the text to show the agent.
    fn refuse(&self, what: String) -> String {
        self.state
            .metrics
            .refused_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(parent: &self.span, refused = %what, "refused agent request");
        let text = format!("passerelle: refused: {what}");
        self.state
            .db
            .audit(self.event(AuditKind::RequestRefused, what));
        text
    }

    /// Boxed, like every other wait of the handler: see [`AgentHandler`].
    fn refuse_channel(
        &self,
        reply: ChannelOpenHandle,
        what: String,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        let reason = self.refuse(what);
        Box::pin(async move {
            reply
                .reject(ChannelOpenFailure::Other { code: 1, reason })
                .await;
        })
    }

    /// Counts and audits a rejected key (see [`super::guard::Guard::count_rejection`]): for
    /// the first rejection of this (source, id, key) in a window, one store query (on the
    /// blocking pool) and the `auth_failed` events; for the repeats, only a count.
    async fn key_rejected(&self, user: &str, key: &russh::keys::PublicKey) {
        use std::sync::atomic::Ordering::Relaxed;
        let state = &self.state;
        let guard = &state.guard;
        state.metrics.auth_failures.fetch_add(1, Relaxed);
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let user = guard::clean_user(user);
        let rejection = guard.count_rejection(self.peer, &user, &fingerprint);
        for ev in rejection.overflow {
            state.db.audit(ev);
        }
        let events = if rejection.first {
            let (who, fp) = (user.clone(), fingerprint.clone());
            let targets = state
                .db
                .run(move |s| s.offer_targets(&who, &fp))
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(parent: &self.span, error = %e, "could not look up a rejected key's tenants");
                    Vec::new()
                });
            let events = guard::offer_events(&targets, &user, &fingerprint, self.peer);
            tracing::info!(parent: &self.span, %user, key = %fingerprint, "agent authentication failed");
            for ev in &events {
                state.db.audit(ev.clone());
            }
            guard.remember(self.peer, &user, &fingerprint, &events);
            events
        } else {
            rejection.events
        };
        if let Some(lockout) = rejection.lockout {
            state.metrics.auth_lockouts.fetch_add(1, Relaxed);
            tracing::warn!(parent: &self.span, client = %lockout.client, failures = lockout.failures, "ssh key guessing: source locked out");
            let window = state.config.auth_failure_window.as_secs();
            for ev in guard::lockout_events(&lockout, &events, self.peer, window) {
                state.db.audit(ev);
            }
        }
    }

    /// Whether this source is locked out for rejected keys: its offers are then refused
    /// without a store query.
    fn locked_out(&self) -> bool {
        let locked = self.state.guard.key_failures.check(self.peer.ip()).is_err();
        if locked {
            self.state
                .metrics
                .auth_throttled
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        locked
    }

    async fn lookup(&self, user: &str, key: &russh::keys::PublicKey) -> KeyLogin {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let user = user.to_owned();
        let found = self
            .state
            .db
            .run(move |s| s.key_login(&user, &fingerprint))
            .await;
        found.unwrap_or_else(|e| {
            tracing::error!(parent: &self.span, error = %e, "agent lookup failed");
            KeyLogin::Unknown
        })
    }
}

impl Drop for AgentHandler {
    fn drop(&mut self) {
        let this = &mut *self.0;
        for ev in this.unless_signed_in.drain(..) {
            this.state.db.audit(ev);
        }
    }
}

impl Handler for AgentHandler {
    type Error = anyhow::Error;

    /// Every key may sign (see the module's header); the signed request decides.
    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.locked_out() {
            return Ok(Auth::reject());
        }
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.locked_out() {
            return Ok(Auth::reject());
        }
        match Box::pin(self.lookup(user, key.public_key)).await {
            KeyLogin::Agent(record) => {
                self.record = Some(record);
                Ok(Auth::Accept)
            }
            KeyLogin::CertificateOnly(agents) => {
                self.bare_key_of_certificate_agents(agents, key.public_key);
                Ok(Auth::reject())
            }
            KeyLogin::Unknown => {
                Box::pin(self.key_rejected(user, key.public_key)).await;
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        if self.locked_out() {
            return Ok(Auth::reject());
        }
        Box::pin(self.certificate(user, certificate)).await
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        // Signed in, or refused with a reason of its own: the bare key's story is moot.
        self.unless_signed_in.clear();
        if let Some(reason) = self.refusal.take() {
            // Nothing waits for this connection any more; it ends with the reason.
            self.authed = None;
            session.disconnect(russh::Disconnect::ByApplication, &reason, "en")?;
            return Ok(());
        }
        let Some(record) = self.record.clone() else {
            anyhow::bail!("authenticated without a record")
        };
        let link = SshLink {
            handle: session.handle(),
            killer: self.killer.clone(),
            tasks: self.state.tasks.clone(),
        };
        let conn = Arc::new(
            AgentConn::new(
                self.state.next_conn_id(),
                &record,
                self.peer,
                Box::new(link),
            )
            .with_certificate(self.certificate.take()),
        );
        if let Some(old) = self.state.registry.insert(conn.clone()) {
            old.disconnect("replaced by a newer connection of the same agent");
        }
        if let Some(cluster) = &self.state.cluster {
            cluster.agent_signed_in(&conn);
        }
        self.state
            .metrics
            .agent_connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.state
            .db
            .audit(self.event(AuditKind::AgentConnected, "authenticated".into()));
        self.span
            .record("agent", tracing::field::display(&record.id))
            .record("tenant_id", record.tenant_id);
        tracing::info!(parent: &self.span, "agent connected");
        self.conn = Some(conn.clone());
        if let Some(tx) = self.authed.take() {
            let _ = tx.send(conn);
        }
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(conn) = self.conn.clone() else {
            return Ok(false);
        };
        let limit = self.state.config.max_forwards_per_connection;
        let what = if self.forwards.len() >= limit {
            format!("too many forwards (at most {limit} per connection)")
        } else if let Ok(name) = ServiceName::new(address)
            .map_err(|_| ())
            .and_then(|n| if n.is_builtin() { Ok(n) } else { Err(()) })
        {
            if *port == 0 {
                *port = self.next_placeholder;
                self.next_placeholder = self.next_placeholder.saturating_add(1);
            }
            self.forwards.insert((address.to_owned(), *port));
            conn.add_service(name, *port);
            if let Some(cluster) = &self.state.cluster {
                Box::pin(cluster.services_changed(&conn)).await;
            }
            return Ok(true);
        } else if *port == 0 {
            format!(
                "unknown service {address:?} (use vnc, rdp or ssh as the bind address: -R vnc:0:localhost:5900)"
            )
        } else {
            match self
                .state
                .core
                .table()
                .legacy_claim(*port, conn.tenant_id, &conn.agent)
            {
                Ok(live) => {
                    self.forwards.insert((address.to_owned(), *port));
                    live.legacy_attach(LegacyLink {
                        conn: conn.clone(),
                        address: address.to_owned(),
                        port: *port,
                    });
                    return Ok(true);
                }
                Err(why) => why,
            }
        };
        let text = self.refuse(what);
        let _ = session.debug(true, &text, "en");
        Ok(false)
    }

    /// A cancelled forward gives its place back (toward the per-connection limit). OpenSSH
    /// cancels with the port the broker told it, so only a forward in place is cancelled.
    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if !self.forwards.remove(&(address.to_owned(), port)) {
            return Ok(false);
        }
        if let (Some(conn), Ok(name)) = (&self.conn, ServiceName::new(address))
            && conn.service_port(&name) == Some(port)
        {
            conn.remove_service(&name);
            if let Some(cluster) = &self.state.cluster {
                Box::pin(cluster.services_changed(conn)).await;
            }
        }
        Ok(true)
    }

    async fn channel_open_session(
        &mut self,
        _c: Channel<Msg>,
        reply: ChannelOpenHandle,
        _s: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel(reply, "session channel: agents may not run a shell, commands or subsystems; connect with ssh -N".into()).await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _c: Channel<Msg>,
        host: &str,
        port: u32,
        _oa: &str,
        _op: u32,
        reply: ChannelOpenHandle,
        _s: &mut Session,
    ) -> Result<(), Self::Error> {
        let host: String = host.chars().take(255).collect();
        self.refuse_channel(
            reply,
            format!("direct-tcpip to {host}:{port}: the broker is not a proxy"),
        )
        .await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _c: Channel<Msg>,
        _a: &str,
        _p: u32,
        reply: ChannelOpenHandle,
        _s: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel(reply, "x11 channel".into()).await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _c: Channel<Msg>,
        path: &str,
        reply: ChannelOpenHandle,
        _s: &mut Session,
    ) -> Result<(), Self::Error> {
        let path: String = path.chars().take(255).collect();
        self.refuse_channel(reply, format!("direct-streamlocal to {path}"))
            .await;
        Ok(())
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _c: Channel<Msg>,
        _h: &str,
        _p: u32,
        _oa: &str,
        _op: u32,
        reply: ChannelOpenHandle,
        _s: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel(reply, "forwarded-tcpip channel from an agent".into())
            .await;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("shell".into());
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("exec".into());
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let name: String = name.chars().take(64).collect();
        self.refuse(format!("subsystem {name}"));
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse("agent forwarding".into());
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let path: String = path.chars().take(255).collect();
        self.refuse(format!("streamlocal forward {path}"));
        Ok(false)
    }

    async fn data(
        &mut self,
        _channel: ChannelId,
        _data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(conn) = &self.conn {
            conn.touch();
        }
        Ok(())
    }
}
