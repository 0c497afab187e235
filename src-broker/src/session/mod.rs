//! The session core: creating a session, a viewer joining it, and its end, whatever the
//! transport. It knows nothing of HTTP: the API and the WebSocket endpoints are thin adapters
//! over [`Core::create`], [`Core::join`] (then [`Joined::serve`]) and [`Core::end`].
//!
//! A viewer's bytes go: the HTTP listener (`crate::http::server`) → the WebSocket endpoint
//! (`crate::http::ws`, a viewer end) → [`Core::join`] (lockout, token, audit) →
//! [`Joined::serve`] (the agent's connection from `crate::registry`, a channel on it, the
//! service's adapter from `crate::service`, the recording) → `crate::bridge` on the agent
//! connection's data thread (`crate::shards`) → the agent's channel (`crate::ssh`).
//!
//! A session ends exactly once ([`Core::end`]): the end cancels [`LiveSession::ended`] so every
//! bridge of the session closes, waits (bounded) for them to let go, finishes the recordings,
//! and writes the session's row and audit event.

mod connection;
mod create;
mod join;
mod live;
pub(crate) mod recording;
mod table;
#[cfg(test)]
pub(crate) mod tests;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use passerelle_proto::close::EndReason;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::recording::SigningKey;
use crate::registry::Registry;
use crate::store::{AuditKind, Db, NewEvent, TenantId, now_ms};
use crate::throttle::Guard;

pub(crate) use create::{CreateError, NewSession, Tokens};
pub(crate) use join::Endpoint;
pub(crate) use live::{Actor, LegacyLink, LiveSession};
pub(crate) use table::Table;

/// How long an end waits for the session's connections to let go.
const IDLE_WAIT: Duration = Duration::from_secs(2);

/// Everything a session needs, shared by the API, the viewers' endpoints and the agents'
/// listener.
pub struct Core {
    pub(crate) config: Arc<Config>,
    pub(crate) db: Db,
    pub(crate) registry: Arc<Registry>,
    pub(crate) table: Table,
    pub(crate) metrics: Arc<Metrics>,
    /// Failed credentials per client address.
    pub(crate) guard: Arc<Guard>,
    /// Signs recordings.
    pub(crate) recording_key: Arc<SigningKey>,
    /// The threads that write recordings.
    pub(crate) writers: Arc<crate::recording::Writers>,
    /// Every task the core spawns, so that shutdown waits for them.
    pub(crate) tasks: TaskTracker,
    pub(crate) shutdown: CancellationToken,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// A new session id (UUID-shaped, random).
pub(crate) fn new_session_id() -> String {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The audit event of something that happened to a session.
pub(crate) fn session_event(session: &LiveSession, kind: AuditKind, detail: String) -> NewEvent {
    let mut ev = NewEvent::new(kind, detail);
    ev.tenant_id = Some(session.tenant_id);
    ev.agent = Some(session.agent.to_string());
    ev.session = Some(session.id.clone());
    ev.operator = Some(session.operator.clone());
    ev
}

impl Core {
    /// The live sessions.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Ends a session once: every bridge of it closes, its recordings are finished, and its
    /// row and audit event say why and by whom. Returns false if it had already ended.
    pub async fn end(&self, session: &Arc<LiveSession>, reason: EndReason, by: &Actor) -> bool {
        if !session.mark_ended(reason, by) {
            return false;
        }
        session.wait_idle(IDLE_WAIT).await;
        // Connections finish their own recordings; these outlived the wait.
        for rec in session.open_recordings() {
            self.finish_recording(session, &rec, &session.bytes, reason)
                .await;
        }
        let (up, down) = session.bytes.get();
        let (id, name) = (session.id.clone(), by.name.clone());
        let persisted = self
            .db
            .run(move |s| s.session_ended(&id, now_ms(), reason, &name, up, down))
            .await;
        if let Err(e) = persisted {
            tracing::error!(session = %session.id, error = %e, "could not record the end of a session");
        }
        self.metrics.session_ended(reason);
        let mut ev = session_event(
            session,
            AuditKind::SessionEnded,
            format!("{reason} ({}); {up} bytes up, {down} bytes down", by.name),
        );
        ev.api_key.clone_from(&by.api_key);
        self.db.audit(ev);
        tracing::info!(session = %session.id, %reason, by = %by.name, up, down, "session ended");
        self.table.forget(session);
        true
    }

    /// [`Core::end`] in a tracked task, for callers that must not wait.
    pub fn end_later(self: &Arc<Self>, session: &Arc<LiveSession>, reason: EndReason, by: Actor) {
        let (core, session) = (self.clone(), session.clone());
        self.tasks.spawn(async move {
            core.end(&session, reason, &by).await;
        });
    }

    /// Ends the live sessions of an agent (revoked, or its key changed).
    pub async fn end_agent_sessions(
        &self,
        tenant_id: TenantId,
        agent: &passerelle_proto::ids::AgentId,
        reason: EndReason,
        by: &Actor,
    ) {
        let live: Vec<_> = self
            .table
            .all()
            .into_iter()
            .filter(|s| s.tenant_id == tenant_id && &s.agent == agent)
            .collect();
        futures_util::future::join_all(live.iter().map(|s| self.end(s, reason, by))).await;
    }

    /// Ends every live session (`broker_shutdown`).
    pub async fn end_all(&self, reason: EndReason) {
        let all = self.table.all();
        let broker = Actor::broker();
        futures_util::future::join_all(all.iter().map(|s| self.end(s, reason, &broker))).await;
    }

    /// Ends a session when its TTL passes, or when nobody joined within the grace period.
    fn watch(self: &Arc<Self>, session: &Arc<LiveSession>) {
        let (core, session) = (self.clone(), session.clone());
        let grace = self.config.join_grace;
        self.tasks.spawn(async move {
            let join_deadline = tokio::time::sleep(grace);
            tokio::pin!(join_deadline);
            let mut join_checked = false;
            loop {
                tokio::select! {
                    () = session.ended.cancelled() => return,
                    () = core.shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(session.expires_at) => {
                        core.end(&session, EndReason::TtlExpired, &Actor::broker()).await;
                        return;
                    }
                    () = &mut join_deadline, if !join_checked => {
                        join_checked = true;
                        if !session.is_started() {
                            core.end(&session, EndReason::NotJoined, &Actor::broker()).await;
                            return;
                        }
                    }
                }
            }
        });
    }

    /// Periodic upkeep: forgets old tokens and ended sessions.
    pub fn sweep(&self) {
        self.table.sweep(Duration::from_secs(600));
        self.guard.sweep();
    }
}
