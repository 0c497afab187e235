//! A viewer joining a session: [`Core::join`] admits it (lockout, token, audit, the endpoint's
//! rules, the session's connection cap); [`Joined::serve`] finds the agent, opens a channel to
//! the service, lets the service's adapter finish its handshake, records the connection, runs
//! the bridge on the agent connection's data thread, and decides whether the session ends
//! with the connection. The viewer's end is generic: a WebSocket in production.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use passerelle_proto::close::{self, Closure, EndReason};
use tokio_util::sync::CancellationToken;

use super::connection::Connection;
use super::live::{Actor, ConnectionGuard, LiveSession};
use super::table::{AdmitError, TokenKind};
use super::{Core, session_event};
use crate::ends::{Sink, Source};
use crate::registry::{AgentChannel, AgentConn};
use crate::service::{self, Service};
use crate::store::{AuditKind, NewEvent, now_ms};

/// How long the agent has to accept a channel.
const CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the viewer connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/ws/sessions/{id}`: what the service's adapter serves (RFB for vnc).
    Viewer,
    /// `/ws/sessions/{id}/raw`: the service's bytes as they are.
    Raw,
}

/// An admitted viewer, not bridged yet.
pub struct Joined {
    core: Arc<Core>,
    pub session: Arc<LiveSession>,
    kind: TokenKind,
    peer: SocketAddr,
    service: Service,
    _guard: ConnectionGuard,
}

impl std::fmt::Debug for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joined")
            .field("session", &self.session.id)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// Where the session's service is reached.
struct Target {
    conn: Arc<AgentConn>,
    address: String,
    port: u32,
}

impl Core {
    /// Admits a viewer of session `id` with `token`, or says why not.
    pub async fn join(
        self: &Arc<Self>,
        id: &str,
        token: &str,
        peer: SocketAddr,
        endpoint: Endpoint,
    ) -> Result<Joined, Closure> {
        self.not_locked_out(peer).inspect_err(|_| {
            tracing::info!("viewer refused: its address is locked out");
        })?;
        let (session, kind) = self
            .table
            .admit(id, token)
            .map_err(|refused| self.token_refused(id, peer, &refused))?;
        tracing::Span::current()
            .record("agent", tracing::field::display(&session.agent))
            .record("tenant_id", session.tenant_id);
        let service = Service::of(&session.service, endpoint == Endpoint::Raw);
        if endpoint == Endpoint::Raw {
            let why = if session.view_only {
                Some("a view-only session is served on /ws/sessions/{id} only")
            } else if session.record && service::replayable(&session.service) {
                Some(
                    "a recorded vnc session is served on /ws/sessions/{id} only, where it is recorded replayably",
                )
            } else {
                None
            };
            if let Some(why) = why {
                tracing::info!(%why, "raw stream refused");
                return Err(Closure::refusal(close::RAW_REFUSED, why));
            }
        }
        let limit = self.config.quotas.connections_per_session;
        let Some(guard) = session.admit_connection(limit) else {
            let mut ev = session_event(
                &session,
                AuditKind::RequestRefused,
                format!("connection refused: the session already has {limit} connections"),
            );
            ev.peer_addr = Some(peer.to_string());
            self.db.audit(ev);
            return Err(Closure::refusal(
                close::TOO_MANY_CONNECTIONS,
                &format!("the session already has {limit} connections"),
            ));
        };
        Ok(Joined {
            core: self.clone(),
            session,
            kind,
            peer,
            service,
            _guard: guard,
        })
    }

    /// Trades a viewer page's exchange token for a fresh launch token of its session (the
    /// token is spent). Refusals count toward the address's lockout like a bad viewer token.
    pub async fn exchange(
        &self,
        id: &str,
        token: &str,
        peer: SocketAddr,
    ) -> Result<(Arc<LiveSession>, String), Closure> {
        self.not_locked_out(peer)?;
        let session = match self.table.admit_exchange(id, token) {
            Ok(ok) => ok,
            Err(refused) => {
                if refused.is_guess() {
                    let tenant = self.table.get(id).map(|l| l.tenant_id);
                    self.guard.failed(peer, tenant, "an exchange token");
                }
                return Err(refused.closure());
            }
        };
        let ttl = self.config.token_ttl;
        let launch = self.table.issue_token(&session, TokenKind::Launch, ttl);
        Ok((session, launch))
    }

    /// Counts and audits a refused token (a guess toward the address's lockout); what the
    /// viewer or watcher is told.
    pub(super) fn token_refused(
        &self,
        id: &str,
        peer: SocketAddr,
        refused: &AdmitError,
    ) -> Closure {
        self.metrics
            .token_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let live = self.table.get(id);
        let mut ev = NewEvent::new(AuditKind::TokenRefused, refused.to_string());
        ev.peer_addr = Some(peer.to_string());
        if let Some(live) = &live {
            ev.tenant_id = Some(live.tenant_id);
            ev.session = Some(live.id.clone());
            ev.agent = Some(live.agent.to_string());
        }
        self.db.audit(ev);
        if refused.is_guess() {
            let what = match &live {
                Some(live) => format!("a token for session {}", live.id),
                None => "a token for an unknown session".to_owned(),
            };
            self.guard.failed(peer, live.map(|l| l.tenant_id), &what);
        }
        tracing::info!(reason = %refused, "viewer refused");
        refused.closure()
    }

    /// Refuses an address locked out for guessing tokens, saying when to retry.
    pub(super) fn not_locked_out(&self, peer: SocketAddr) -> Result<(), Closure> {
        self.guard.allowed(peer).map_err(|wait| {
            let message = format!(
                "too many failed token attempts from this address; retry in {}s",
                wait.as_secs().max(1)
            );
            Closure::refusal(close::TOO_MANY_ATTEMPTS, &message)
        })
    }

    /// Finds the agent connection and forward of a session (waiting, bounded, in the legacy
    /// flow).
    async fn locate(&self, session: &LiveSession) -> Result<Target, Closure> {
        if session.legacy_port.is_some() {
            return match session.legacy_link(self.config.legacy_wait).await {
                Some(link) => Ok(Target {
                    conn: link.conn,
                    address: link.address,
                    port: link.port,
                }),
                None if session.ended.is_cancelled() => Err(session.closure()),
                None => Err(Closure::ending_with(
                    EndReason::AgentTimeout,
                    close::AGENT_TIMEOUT,
                    &format!(
                        "agent {} did not connect within {}s",
                        session.agent,
                        self.config.legacy_wait.as_secs()
                    ),
                )),
            };
        }
        let Some(conn) = self.registry.get(session.tenant_id, &session.agent) else {
            return Err(Closure::ending_with(
                EndReason::AgentOffline,
                close::AGENT_OFFLINE,
                &format!("agent {} is offline", session.agent),
            ));
        };
        let Some(port) = conn.service_port(&session.service) else {
            return Err(Closure::ending_with(
                EndReason::ServiceUnavailable,
                close::SERVICE_UNAVAILABLE,
                &format!(
                    "agent {} does not announce the {} service",
                    session.agent, session.service
                ),
            ));
        };
        Ok(Target {
            conn,
            address: session.service.to_string(),
            port,
        })
    }

    /// Opens a channel to the service, unless the session ends first.
    async fn open(
        &self,
        session: &LiveSession,
        target: &Target,
        peer: SocketAddr,
    ) -> Result<AgentChannel, Closure> {
        let opening = target.conn.open(target.address.clone(), target.port, peer);
        let opened = tokio::select! {
            r = tokio::time::timeout(CHANNEL_OPEN_TIMEOUT, opening) => r,
            () = session.ended.cancelled() => return Err(session.closure()),
        };
        let why = match opened {
            Ok(Ok(channel)) => return Ok(channel),
            Err(_) => "the agent did not open the channel in time".to_owned(),
            Ok(Err(e)) => format!(
                "the agent could not reach its {} service ({e})",
                session.service
            ),
        };
        Err(Closure::ending_with(
            EndReason::ServiceUnavailable,
            close::SERVICE_UNAVAILABLE,
            &why,
        ))
    }

    /// Notes a viewer reaching its bridge: the first one starts the session.
    pub(crate) async fn bridged(&self, session: &LiveSession, peer: SocketAddr) -> u32 {
        let number = session.bridge_started();
        if number == 1 {
            let (id, client) = (session.id.clone(), peer.to_string());
            if let Err(e) = self
                .db
                .run(move |s| s.session_started(&id, now_ms(), &client))
                .await
            {
                tracing::error!(error = %e, "could not record the start of a session");
            }
            let mut ev =
                session_event(session, AuditKind::SessionStarted, format!("viewer {peer}"));
            ev.peer_addr = Some(peer.to_string());
            self.db.audit(ev);
        }
        number
    }
}

/// Who ended a session, from how its bridge ended.
fn ended_by(reason: EndReason) -> &'static str {
    match reason {
        EndReason::ViewerClosed | EndReason::ProtocolError | EndReason::ViewerTooSlow => "viewer",
        EndReason::ServiceClosed => "workstation",
        EndReason::AgentDisconnected => "agent",
        _ => "broker",
    }
}

impl Joined {
    /// The admitted session's id.
    pub fn session_id(&self) -> &str {
        &self.session.id
    }

    /// Serves the viewer until its connection ends; returns the viewer's end and why it
    /// ended, for the caller to close it with (`None` when the broker went away with it).
    /// `on_bridge` runs just before the bridge starts (the HTTP adapter moves the viewer's
    /// socket to the agent's data thread then).
    pub async fn serve<VR, VT>(
        self,
        viewer: (VR, VT),
        on_bridge: impl FnOnce() + Send,
    ) -> Option<((VR, VT), Closure)>
    where
        VR: Source + 'static,
        VT: Sink + 'static,
    {
        let (viewer, closure) = match self.connect().await {
            Err(c) => (viewer, c),
            Ok((target, channel)) => {
                let cx = self.context(&target.conn.gone);
                let bridge = Connection {
                    core: self.core.clone(),
                    session: self.session.clone(),
                    peer: self.peer,
                    home: target.conn.home.clone(),
                    agent_gone: target.conn.gone.clone(),
                    on_bridge,
                };
                self.service.serve(&cx, channel, viewer, bridge).await?
            }
        };
        self.finish(&closure);
        Some((viewer, closure))
    }

    /// The agent's connection and a channel to the service on it.
    async fn connect(&self) -> Result<(Target, AgentChannel), Closure> {
        let target = self.core.locate(&self.session).await?;
        let channel = self.core.open(&self.session, &target, self.peer).await?;
        Ok((target, channel))
    }

    /// What the service's adapter knows of the session; `agent_gone` is cancelled when the
    /// agent's connection goes away.
    fn context(&self, agent_gone: &CancellationToken) -> service::Context {
        let s = &self.session;
        let c = &self.core.config;
        let session = s.clone();
        service::Context {
            db: self.core.db.clone(),
            tasks: self.core.tasks.clone(),
            tenant_id: s.tenant_id,
            agent: s.agent.clone(),
            session_id: s.id.clone(),
            operator: s.operator.clone(),
            view_only: s.view_only,
            record: s.record,
            peer: self.peer,
            bridge: (c.session_buffer_bytes, c.viewer_stall),
            ssh_user: s.ssh_user.clone(),
            stop: service::Stop {
                ended: s.ended.clone(),
                agent_gone: agent_gone.clone(),
                why: Arc::new(move || session.closure()),
            },
        }
    }

    /// Ends the session when this connection's end ends it: always for a one-time viewer
    /// token; for a launch token unless the close concerns this connection only.
    fn finish(&self, closure: &Closure) {
        tracing::info!(code = closure.code.code, reason = %closure.reason, "viewer connection ended");
        let Some(reason) = closure.end else { return };
        if self.kind == TokenKind::Launch && closure.connection_only() {
            return;
        }
        self.core
            .end_later(&self.session, reason, Actor::part(ended_by(reason)));
    }
}
