//! Live sessions: their tokens, their legacy ports, their end.
//!
//! This module knows nothing of SSH or WebSocket types. A session is created by the API, admitted
//! viewers through [`Sessions::admit`], and ends exactly once through [`Sessions::end`], which
//! cancels its [`LiveSession::ended`] token so every bridge of the session closes, then writes
//! the audit row once the bridges have let go (bounded wait).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use passerelle_proto::close::{self, CloseCode, EndReason};
use passerelle_proto::ids::{AgentId, ServiceName};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::registry::AgentConn;
use crate::secrets;
use crate::store::TenantId;

/// What a token may open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// One connection, then spent.
    Viewer,
    /// Any number of connections while the session lasts (desktop helper).
    Launch,
}

struct TokenEntry {
    session: String,
    kind: TokenKind,
    expires_at: Instant,
    used: bool,
}

/// Where a legacy session's agent forward is, once the agent has connected.
#[derive(Clone)]
pub struct LegacyLink {
    pub conn: Arc<AgentConn>,
    pub address: String,
    pub port: u32,
}

/// The in-memory half of a session.
pub struct LiveSession {
    pub id: String,
    pub tenant_id: TenantId,
    pub agent: AgentId,
    pub service: ServiceName,
    pub operator: String,
    pub view_only: bool,
    /// Whether the session is recorded.
    pub record: bool,
    /// The recording, once the first viewer is bridged.
    pub recording: std::sync::OnceLock<Arc<crate::recorder::Recording>>,
    pub legacy_port: Option<u16>,
    pub expires_at: Instant,
    /// Cancelled when the session ends.
    pub ended: CancellationToken,
    end: Mutex<Option<(EndReason, String)>>,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    connections: AtomicUsize,
    idle: Notify,
    started: AtomicBool,
    legacy: watch::Sender<Option<LegacyLink>>,
}

impl std::fmt::Debug for LiveSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSession")
            .field("id", &self.id)
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

/// Parameters of a new session.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub tenant_id: TenantId,
    pub agent: AgentId,
    pub service: ServiceName,
    pub operator: String,
    pub view_only: bool,
    pub record: bool,
    pub legacy: bool,
    pub ttl: Duration,
}

impl LiveSession {
    /// Why and by whom it ended, once it has.
    pub fn end_state(&self) -> Option<(EndReason, String)> {
        self.end.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The close code and human reason for viewers of an ended session.
    pub fn close_reason(&self) -> (CloseCode, String) {
        match self.end_state() {
            Some((EndReason::Stopped, by)) => (close::STOPPED, format!("session stopped by {by}")),
            Some((reason, _)) => (reason.close_code(), reason.close_code().reason.to_owned()),
            None => (close::SESSION_ENDED, close::SESSION_ENDED.reason.to_owned()),
        }
    }

    /// Marks the first bridged connection; true the first time only.
    pub fn mark_started(&self) -> bool {
        !self.started.swap(true, Ordering::AcqRel)
    }

    /// Whether a viewer has ever been bridged.
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Counts a bridged connection until the guard drops.
    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.clone())
    }

    /// Waits (bounded) until no connection is bridged.
    pub async fn wait_idle(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.idle.notified();
            if self.connections.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// Legacy flow: waits until the agent's forward is there, or `limit` passes.
    pub async fn legacy_link(&self, limit: Duration) -> Option<LegacyLink> {
        let mut rx = self.legacy.subscribe();
        let wait = rx.wait_for(|l| l.as_ref().is_some_and(|l| !l.conn.gone.is_cancelled()));
        tokio::select! {
            r = tokio::time::timeout(limit, wait) => r.ok()?.ok().and_then(|l| l.clone()),
            () = self.ended.cancelled() => None,
        }
    }
}

/// Decrements a session's connection count when dropped.
pub struct ConnectionGuard(Arc<LiveSession>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Why a viewer was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: CloseCode,
    pub reason: String,
    /// The token was never issued for this session: what guessing looks like (as opposed to
    /// a real token that expired, was spent, or outlived its session).
    pub unknown: bool,
}

impl Refusal {
    fn new(code: CloseCode) -> Self {
        Self {
            code,
            reason: code.reason.to_owned(),
            unknown: false,
        }
    }

    fn unknown() -> Self {
        Self {
            unknown: true,
            ..Self::new(close::TOKEN_INVALID)
        }
    }
}

#[derive(Default)]
struct Inner {
    live: HashMap<String, Arc<LiveSession>>,
    /// Sessions that ended recently: their tokens still answer "session has ended".
    ended: HashMap<String, (Instant, String)>,
    tokens: HashMap<[u8; 32], TokenEntry>,
    legacy_ports: HashMap<u16, String>,
}

/// Every live session.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sessions({} live)", self.inner().live.len())
    }
}

/// Legacy ports are drawn from this range.
const LEGACY_PORTS: std::ops::Range<u16> = 20000..60000;

impl Sessions {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a live session with a fresh id (and a legacy port when asked).
    pub fn create(&self, new: NewSession) -> Arc<LiveSession> {
        let mut inner = self.inner();
        let legacy_port = new.legacy.then(|| {
            loop {
                let port = rand::random_range(LEGACY_PORTS);
                if !inner.legacy_ports.contains_key(&port) {
                    break port;
                }
            }
        });
        let id = new_session_id();
        let session = Arc::new(LiveSession {
            id: id.clone(),
            tenant_id: new.tenant_id,
            agent: new.agent,
            service: new.service,
            operator: new.operator,
            view_only: new.view_only,
            record: new.record,
            recording: std::sync::OnceLock::new(),
            legacy_port,
            expires_at: Instant::now() + new.ttl,
            ended: CancellationToken::new(),
            end: Mutex::new(None),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            idle: Notify::new(),
            started: AtomicBool::new(false),
            legacy: watch::Sender::new(None),
        });
        if let Some(port) = legacy_port {
            inner.legacy_ports.insert(port, id.clone());
        }
        inner.live.insert(id, session.clone());
        session
    }

    /// Issues a token for a live session; returns the secret text.
    pub fn issue_token(&self, session: &LiveSession, kind: TokenKind, ttl: Duration) -> String {
        let token = secrets::random_token();
        let entry = TokenEntry {
            session: session.id.clone(),
            kind,
            expires_at: Instant::now() + ttl,
            used: false,
        };
        self.inner().tokens.insert(secrets::hash(&token), entry);
        token
    }

    /// A live session by id.
    pub fn get(&self, id: &str) -> Option<Arc<LiveSession>> {
        self.inner().live.get(id).cloned()
    }

    /// Every live session.
    pub fn all(&self) -> Vec<Arc<LiveSession>> {
        self.inner().live.values().cloned().collect()
    }

    /// How many sessions are live.
    pub fn len(&self) -> usize {
        self.inner().live.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks a viewer's token for session `id`, spending it if it is a viewer token.
    pub fn admit(&self, id: &str, token: &str) -> Result<(Arc<LiveSession>, TokenKind), Refusal> {
        let hash = secrets::hash(token);
        let mut inner = self.inner();
        let Some(entry) = inner.tokens.get_mut(&hash) else {
            return Err(Refusal::unknown());
        };
        if !secrets::ct_eq(entry.session.as_bytes(), id.as_bytes()) {
            return Err(Refusal::unknown());
        }
        let kind = entry.kind;
        let first_use = !entry.used;
        if kind == TokenKind::Viewer && !first_use {
            return Err(Refusal {
                code: close::TOKEN_INVALID,
                reason: "token already used".into(),
                unknown: false,
            });
        }
        if first_use && Instant::now() >= entry.expires_at {
            return Err(Refusal::new(close::TOKEN_EXPIRED));
        }
        entry.used = true;
        let Some(session) = inner.live.get(id).cloned() else {
            let reason = match inner.ended.get(id) {
                Some((_, why)) => format!("session has ended ({why})"),
                None => close::SESSION_ENDED.reason.to_owned(),
            };
            return Err(Refusal {
                code: close::SESSION_ENDED,
                reason,
                unknown: false,
            });
        };
        if session.ended.is_cancelled() {
            let (code, reason) = session.close_reason();
            return Err(Refusal {
                code: close::SESSION_ENDED,
                reason: format!("session has ended ({reason}, code {})", code.code),
                unknown: false,
            });
        }
        Ok((session, kind))
    }

    /// Legacy flow: the pending session waiting on `port`, checked against the agent.
    pub fn legacy_claim(
        &self,
        port: u32,
        tenant_id: TenantId,
        agent: &AgentId,
    ) -> Result<Arc<LiveSession>, String> {
        let inner = self.inner();
        let session = u16::try_from(port)
            .ok()
            .and_then(|p| inner.legacy_ports.get(&p))
            .and_then(|id| inner.live.get(id))
            .ok_or_else(|| format!("no pending legacy session uses port {port}"))?;
        if session.tenant_id != tenant_id || &session.agent != agent {
            return Err(format!("port {port} belongs to another agent"));
        }
        Ok(session.clone())
    }

    /// Legacy flow: the agent's forward for the session is up.
    pub fn legacy_attach(&self, session: &LiveSession, link: LegacyLink) {
        session.legacy.send_replace(Some(link));
    }

    /// Ends a session once: records why and by whom, cancels its bridges. Returns false if it
    /// had already ended. The caller then calls [`Sessions::forget`] after persisting.
    pub fn end(&self, session: &LiveSession, reason: EndReason, by: &str) -> bool {
        {
            let mut end = session.end.lock().unwrap_or_else(|p| p.into_inner());
            if end.is_some() {
                return false;
            }
            *end = Some((reason, by.to_owned()));
        }
        session.ended.cancel();
        let mut inner = self.inner();
        if let Some(port) = session.legacy_port {
            inner.legacy_ports.remove(&port);
        }
        true
    }

    /// Drops an ended session from the live ones; its tokens answer "session has ended" until
    /// [`Sessions::sweep`] forgets them.
    pub fn forget(&self, id: &str) {
        let mut inner = self.inner();
        if let Some(session) = inner.live.remove(id) {
            let why = session.close_reason().1;
            inner.ended.insert(id.to_owned(), (Instant::now(), why));
        }
    }

    /// Forgets sessions ended more than `older_than` ago with their tokens, and tokens that
    /// expired unused as long ago.
    pub fn sweep(&self, older_than: Duration) {
        let now = Instant::now();
        let mut inner = self.inner();
        inner.ended.retain(|_, (at, _)| *at + older_than > now);
        let Inner {
            live,
            ended,
            tokens,
            ..
        } = &mut *inner;
        tokens.retain(|_, t| {
            let session_known = live.contains_key(&t.session) || ended.contains_key(&t.session);
            let unused_expired = !t.used && t.expires_at + older_than <= now;
            session_known && !unused_expired
        });
    }
}

fn new_session_id() -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn new_session(sessions: &Sessions, legacy: bool) -> Arc<LiveSession> {
        sessions.create(NewSession {
            tenant_id: 1,
            agent: AgentId::new("pc1").unwrap(),
            service: ServiceName::new("vnc").unwrap(),
            operator: "alice".into(),
            view_only: false,
            record: false,
            legacy,
            ttl: Duration::from_secs(60),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn viewer_tokens_open_once_and_expire() {
        let sessions = Sessions::default();
        let s = new_session(&sessions, false);
        let t = sessions.issue_token(&s, TokenKind::Viewer, Duration::from_secs(60));
        assert!(sessions.admit(&s.id, "wrong").unwrap_err().unknown);
        let other = new_session(&sessions, false);
        let foreign = sessions.admit(&other.id, &t).unwrap_err();
        assert_eq!(foreign.code, close::TOKEN_INVALID);
        assert!(
            foreign.unknown,
            "a token of another session is a guess here"
        );
        assert!(sessions.admit(&s.id, &t).is_ok());
        let again = sessions.admit(&s.id, &t).unwrap_err();
        assert!(!again.unknown, "a spent token is no guess");
        assert_eq!(
            (again.code, again.reason.as_str()),
            (close::TOKEN_INVALID, "token already used")
        );
        let late = sessions.issue_token(&s, TokenKind::Viewer, Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(
            sessions.admit(&s.id, &late).unwrap_err().code,
            close::TOKEN_EXPIRED
        );
    }

    #[tokio::test(start_paused = true)]
    async fn launch_tokens_reopen_until_the_session_ends() {
        let sessions = Sessions::default();
        let s = new_session(&sessions, false);
        let t = sessions.issue_token(&s, TokenKind::Launch, Duration::from_secs(60));
        assert_eq!(sessions.admit(&s.id, &t).unwrap().1, TokenKind::Launch);
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(
            sessions.admit(&s.id, &t).is_ok(),
            "used launch tokens outlive their first-use window"
        );
        assert!(sessions.end(&s, EndReason::Stopped, "bob"));
        assert!(
            !sessions.end(&s, EndReason::ViewerClosed, "x"),
            "a session ends once"
        );
        assert_eq!(
            sessions.admit(&s.id, &t).unwrap_err().code,
            close::SESSION_ENDED
        );
        assert_eq!(
            s.close_reason(),
            (close::STOPPED, "session stopped by bob".into())
        );
        sessions.forget(&s.id);
        let late = sessions.admit(&s.id, &t).unwrap_err();
        assert_eq!(
            late.code,
            close::SESSION_ENDED,
            "an ended session's tokens say so"
        );
        assert!(late.reason.contains("stopped by bob"), "{late:?}");
        tokio::time::advance(Duration::from_secs(601)).await;
        sessions.sweep(Duration::from_secs(600));
        assert_eq!(
            sessions.admit(&s.id, &t).unwrap_err().code,
            close::TOKEN_INVALID
        );
        assert_eq!(
            sessions.admit(&s.id, &t).unwrap_err().code,
            close::TOKEN_INVALID
        );
    }

    #[test]
    fn legacy_ports_belong_to_their_agent() {
        let sessions = Sessions::default();
        let s = new_session(&sessions, true);
        let port = u32::from(s.legacy_port.unwrap());
        assert!(
            sessions
                .legacy_claim(port, 1, &AgentId::new("pc1").unwrap())
                .is_ok()
        );
        let err = sessions
            .legacy_claim(port, 1, &AgentId::new("pc2").unwrap())
            .unwrap_err();
        assert!(err.contains("another agent"));
        assert!(
            sessions
                .legacy_claim(port, 2, &AgentId::new("pc1").unwrap())
                .is_err()
        );
        assert!(
            sessions
                .legacy_claim(1, 1, &AgentId::new("pc1").unwrap())
                .is_err()
        );
        sessions.end(&s, EndReason::AgentTimeout, "broker");
        assert!(
            sessions
                .legacy_claim(port, 1, &AgentId::new("pc1").unwrap())
                .is_err()
        );
    }
}
