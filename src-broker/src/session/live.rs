//! The in-memory half of a session: what it is, whether and why it ended, its bridged
//! connections and their recordings. No SSH or WebSocket type appears here.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use passerelle_proto::close::{self, Closure, EndReason};
use passerelle_proto::ids::{AgentId, ServiceName};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bridge::Counters;
use crate::recording::Recording;
use crate::registry::AgentConn;
use crate::store::TenantId;

/// Who did something: a person named by the console (with the API key that spoke for them),
/// or a part of the system ("broker", "viewer", "agent", "workstation").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    /// The API key's id, when an API call did it.
    pub api_key: Option<String>,
}

impl Actor {
    /// A part of the system.
    pub fn part(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            api_key: None,
        }
    }

    /// The broker itself (a timer, a failure, a shutdown).
    pub fn broker() -> Self {
        Self::part("broker")
    }
}

/// Where a legacy session's agent forward is, once the agent has connected.
#[derive(Clone)]
pub(crate) struct LegacyLink {
    pub conn: Arc<AgentConn>,
    pub address: String,
    pub port: u32,
}

/// A live session.
pub struct LiveSession {
    pub id: String,
    pub tenant_id: TenantId,
    pub agent: AgentId,
    pub service: ServiceName,
    pub operator: String,
    pub view_only: bool,
    /// Whether every connection is recorded.
    pub record: bool,
    pub legacy_port: Option<u16>,
    /// The login name asked for an `ssh` session's terminal.
    pub ssh_user: Option<String>,
    pub expires_at: Instant,
    /// Cancelled when the session ends.
    pub ended: CancellationToken,
    end: Mutex<Option<(EndReason, Actor)>>,
    /// Bytes carried over all its connections.
    pub bytes: Arc<Counters>,
    /// Connections admitted and not finished (handshaking or bridged).
    connections: AtomicUsize,
    idle: Notify,
    /// Connections bridged so far: numbers them (and their recording segments) from 1.
    bridged: AtomicU32,
    legacy: watch::Sender<Option<LegacyLink>>,
    /// Recordings of connections still open, finished at the session's end at the latest.
    recordings: Mutex<Vec<Arc<Recording>>>,
}

impl std::fmt::Debug for LiveSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSession")
            .field("id", &self.id)
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

/// What a new live session is made of.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub id: String,
    pub tenant_id: TenantId,
    pub agent: AgentId,
    pub service: ServiceName,
    pub operator: String,
    pub view_only: bool,
    pub record: bool,
    pub legacy_port: Option<u16>,
    pub ttl: Duration,
    pub ssh_user: Option<String>,
}

impl LiveSession {
    pub(crate) fn new(spec: Spec) -> Self {
        Self {
            id: spec.id,
            tenant_id: spec.tenant_id,
            agent: spec.agent,
            service: spec.service,
            operator: spec.operator,
            view_only: spec.view_only,
            record: spec.record,
            legacy_port: spec.legacy_port,
            ssh_user: spec.ssh_user,
            expires_at: Instant::now() + spec.ttl,
            ended: CancellationToken::new(),
            end: Mutex::new(None),
            bytes: Arc::default(),
            connections: AtomicUsize::new(0),
            idle: Notify::new(),
            bridged: AtomicU32::new(0),
            legacy: watch::Sender::new(None),
            recordings: Mutex::new(Vec::new()),
        }
    }

    fn end_lock(&self) -> std::sync::MutexGuard<'_, Option<(EndReason, Actor)>> {
        self.end.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the end once and cancels [`LiveSession::ended`]; false if it had already ended.
    pub(crate) fn mark_ended(&self, reason: EndReason, by: &Actor) -> bool {
        {
            let mut end = self.end_lock();
            if end.is_some() {
                return false;
            }
            *end = Some((reason, by.clone()));
        }
        self.ended.cancel();
        true
    }

    /// Why and by whom it ended, once it has.
    pub fn end_state(&self) -> Option<(EndReason, Actor)> {
        self.end_lock().clone()
    }

    /// What viewers of the session are told once it has ended.
    pub fn closure(&self) -> Closure {
        match self.end_state() {
            Some((EndReason::Stopped, by)) => Closure::ending_with(
                EndReason::Stopped,
                close::STOPPED,
                &format!("session stopped by {}", by.name),
            ),
            Some((reason, _)) => Closure::ending(reason),
            None => Closure::refusal(close::SESSION_ENDED, close::SESSION_ENDED.reason),
        }
    }

    /// Counts an admitted connection until the guard drops; `None` when the session already
    /// has `limit` connections.
    pub(crate) fn admit_connection(self: &Arc<Self>, limit: usize) -> Option<ConnectionGuard> {
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(ConnectionGuard(self.clone()))
    }

    /// Notes a connection reaching its bridge; its number (from 1) names its recording segment.
    pub(crate) fn bridge_started(&self) -> u32 {
        self.bridged.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Connections admitted and not finished.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Whether a viewer has ever been bridged.
    pub fn is_started(&self) -> bool {
        self.bridged.load(Ordering::Acquire) > 0
    }

    /// Waits (bounded) until every connection has let go.
    pub(crate) async fn wait_idle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.idle.notified();
            if self.connections() == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Legacy flow: the agent's forward for the session is up.
    pub(crate) fn legacy_attach(&self, link: LegacyLink) {
        self.legacy.send_replace(Some(link));
    }

    /// Legacy flow: waits until the agent's forward is there, or `limit` passes.
    pub(crate) async fn legacy_link(&self, limit: Duration) -> Option<LegacyLink> {
        let mut rx = self.legacy.subscribe();
        let wait = rx.wait_for(|l| l.as_ref().is_some_and(|l| !l.conn.gone.is_cancelled()));
        tokio::select! {
            r = tokio::time::timeout(limit, wait) => r.ok()?.ok().and_then(|l| l.clone()),
            () = self.ended.cancelled() => None,
        }
    }

    fn recordings(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Recording>>> {
        self.recordings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a connection's recording until it is finished.
    pub(crate) fn recording_opened(&self, rec: Arc<Recording>) {
        self.recordings().push(rec);
    }

    /// Forgets a finished recording; true if it was still open here.
    pub(crate) fn recording_closed(&self, rec: &Arc<Recording>) -> bool {
        let mut open = self.recordings();
        let before = open.len();
        open.retain(|r| !Arc::ptr_eq(r, rec));
        open.len() != before
    }

    /// The recordings still open.
    pub(crate) fn open_recordings(&self) -> Vec<Arc<Recording>> {
        self.recordings().clone()
    }
}

/// Counts an admitted connection until dropped.
pub(crate) struct ConnectionGuard(Arc<LiveSession>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
