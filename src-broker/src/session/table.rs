//! Every live session, their tokens and their legacy ports. Tokens are kept hashed; a token
//! check spends a viewer token, and tells a guess (a token never issued for the session) from
//! a real token that expired, was spent, or outlived its session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use passerelle_proto::close::{self, Closure};
use passerelle_proto::ids::AgentId;
use tokio::time::Instant;

use super::live::LiveSession;
use crate::secrets;
use crate::store::TenantId;

/// What a token may open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// One connection, then spent.
    Viewer,
    /// Any number of connections while the session lasts (desktop helper).
    Launch,
    /// Once, for the viewer page to fetch a launch URL (so that `viewer_url` never carries the
    /// reusable launch token); opens no connection.
    Exchange,
}

struct TokenEntry {
    session: String,
    kind: TokenKind,
    expires_at: Instant,
    used: bool,
}

/// Why a token opened nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// Never issued for this session: what guessing looks like.
    #[error("token invalid")]
    Unknown,
    #[error("token already used")]
    Spent,
    #[error("token expired")]
    Expired,
    /// The session ended (why, for people).
    #[error("session has ended ({0})")]
    Ended(String),
}

impl AdmitError {
    /// Whether this counts as a guess toward the address's lockout.
    pub fn is_guess(&self) -> bool {
        matches!(self, Self::Unknown)
    }

    /// What the viewer is told.
    pub fn closure(&self) -> Closure {
        match self {
            Self::Unknown => Closure::refusal(close::TOKEN_INVALID, close::TOKEN_INVALID.reason),
            Self::Spent => Closure::refusal(close::TOKEN_INVALID, "token already used"),
            Self::Expired => Closure::refusal(close::TOKEN_EXPIRED, close::TOKEN_EXPIRED.reason),
            Self::Ended(_) => Closure::refusal(close::SESSION_ENDED, &self.to_string()),
        }
    }
}

/// No legacy port is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("every legacy port is taken")]
pub struct NoLegacyPort;

#[derive(Default)]
struct Inner {
    live: HashMap<String, Arc<LiveSession>>,
    /// Sessions that ended recently: their tokens still answer "session has ended".
    ended: HashMap<String, (Instant, String)>,
    tokens: HashMap<[u8; 32], TokenEntry>,
}

/// Legacy ports are drawn from this range.
const LEGACY_PORTS: std::ops::Range<u16> = 20000..60000;
/// Random draws before a legacy port is searched for in order.
const LEGACY_DRAWS: usize = 32;

/// The live sessions.
#[derive(Default)]
pub struct Table {
    inner: Mutex<Inner>,
    /// Legacy port -> pending session id, under its own lock.
    legacy: Mutex<HashMap<u16, String>>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Table({} live)", self.len())
    }
}

impl Table {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn legacy(&self) -> std::sync::MutexGuard<'_, HashMap<u16, String>> {
        self.legacy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves a free legacy port for `session`: a few random draws, then one bounded pass
    /// over the range from a random point. Holds only the legacy ports' own lock, briefly.
    pub fn reserve_legacy_port(&self, session: &str) -> Result<u16, NoLegacyPort> {
        let mut ports = self.legacy();
        let (lo, hi) = (LEGACY_PORTS.start, LEGACY_PORTS.end);
        let draws = (0..LEGACY_DRAWS).map(|_| rand::random_range(LEGACY_PORTS));
        let start = rand::random_range(LEGACY_PORTS);
        let scan = (start..hi).chain(lo..start);
        let port = draws
            .chain(scan)
            .find(|p| !ports.contains_key(p))
            .ok_or(NoLegacyPort)?;
        ports.insert(port, session.to_owned());
        Ok(port)
    }

    /// Gives a legacy port back.
    pub fn release_legacy_port(&self, port: u16) {
        self.legacy().remove(&port);
    }

    /// Adds a live session.
    pub fn insert(&self, session: Arc<LiveSession>) {
        self.inner().live.insert(session.id.clone(), session);
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

    /// A tenant's live sessions: (all, of which nobody joined yet).
    pub fn count(&self, tenant_id: TenantId) -> (usize, usize) {
        let inner = self.inner();
        let mine = inner.live.values().filter(|s| s.tenant_id == tenant_id);
        mine.fold((0, 0), |(all, pending), s| {
            (all + 1, pending + usize::from(!s.is_started()))
        })
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
    pub fn admit(
        &self,
        id: &str,
        token: &str,
    ) -> Result<(Arc<LiveSession>, TokenKind), AdmitError> {
        self.admit_kind(id, token, |k| k != TokenKind::Exchange)
    }

    /// Like [`Self::admit`] for an exchange token, the only kind it takes.
    pub fn admit_exchange(&self, id: &str, token: &str) -> Result<Arc<LiveSession>, AdmitError> {
        self.admit_kind(id, token, |k| k == TokenKind::Exchange)
            .map(|(session, _)| session)
    }

    /// Like [`Self::admit`] for a watch of the session, which only a launch token may keep.
    pub fn admit_watch(&self, id: &str, token: &str) -> Result<Arc<LiveSession>, AdmitError> {
        self.admit_kind(id, token, |k| k == TokenKind::Launch)
            .map(|(session, _)| session)
    }

    /// A token of the wrong purpose (an exchange token on a WebSocket, a viewer token traded
    /// for a launch URL or kept as a watch) is unknown there, and stays unused.
    fn admit_kind(
        &self,
        id: &str,
        token: &str,
        accepts: impl Fn(TokenKind) -> bool,
    ) -> Result<(Arc<LiveSession>, TokenKind), AdmitError> {
        let hash = secrets::hash(token);
        let mut inner = self.inner();
        let entry = inner.tokens.get_mut(&hash).ok_or(AdmitError::Unknown)?;
        if !secrets::ct_eq(entry.session.as_bytes(), id.as_bytes()) {
            return Err(AdmitError::Unknown);
        }
        let kind = entry.kind;
        if !accepts(kind) {
            return Err(AdmitError::Unknown);
        }
        if kind != TokenKind::Launch && entry.used {
            return Err(AdmitError::Spent);
        }
        if !entry.used && Instant::now() >= entry.expires_at {
            return Err(AdmitError::Expired);
        }
        entry.used = true;
        let Some(session) = inner.live.get(id).cloned() else {
            let why = inner.ended.get(id).map_or("", |(_, why)| why.as_str());
            return Err(AdmitError::Ended(why.to_owned()));
        };
        if session.ended.is_cancelled() {
            return Err(AdmitError::Ended(session.closure().reason));
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
        let id = u16::try_from(port)
            .ok()
            .and_then(|p| self.legacy().get(&p).cloned());
        let session = id
            .and_then(|id| self.get(&id))
            .ok_or_else(|| format!("no pending legacy session uses port {port}"))?;
        if session.tenant_id != tenant_id || &session.agent != agent {
            return Err(format!("port {port} belongs to another agent"));
        }
        Ok(session)
    }

    /// Drops an ended session from the live ones (and gives its legacy port back); its tokens
    /// answer "session has ended" until [`Table::sweep`] forgets them.
    pub fn forget(&self, session: &LiveSession) {
        if let Some(port) = session.legacy_port {
            self.release_legacy_port(port);
        }
        let mut inner = self.inner();
        if inner.live.remove(&session.id).is_some() {
            let why = session.closure().reason;
            inner
                .ended
                .insert(session.id.clone(), (Instant::now(), why));
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
        } = &mut *inner;
        tokens.retain(|_, t| {
            let session_known = live.contains_key(&t.session) || ended.contains_key(&t.session);
            let unused_expired = !t.used && t.expires_at + older_than <= now;
            session_known && !unused_expired
        });
    }
}

#[cfg(test)]
mod tests {
    use passerelle_proto::close::EndReason;
    use passerelle_proto::ids::ServiceName;

    use super::super::live::{Actor, Spec};
    use super::*;

    fn new_session(table: &Table, legacy: bool) -> Arc<LiveSession> {
        let id = super::super::new_session_id();
        let legacy_port = legacy.then(|| table.reserve_legacy_port(&id).unwrap());
        let session = Arc::new(LiveSession::new(Spec {
            id,
            tenant_id: 1,
            agent: AgentId::new("pc1").unwrap(),
            service: ServiceName::new("vnc").unwrap(),
            operator: "alice".into(),
            view_only: false,
            record: false,
            legacy_port,
            ttl: Duration::from_secs(60),
            ssh_user: None,
        }));
        table.insert(session.clone());
        session
    }

    #[tokio::test(start_paused = true)]
    async fn viewer_tokens_open_once_and_expire() {
        let table = Table::default();
        let s = new_session(&table, false);
        let t = table.issue_token(&s, TokenKind::Viewer, Duration::from_secs(60));
        assert!(table.admit(&s.id, "wrong").unwrap_err().is_guess());
        let other = new_session(&table, false);
        let foreign = table.admit(&other.id, &t).unwrap_err();
        assert!(
            foreign.is_guess(),
            "a token of another session is a guess here"
        );
        assert_eq!(foreign.closure().code, close::TOKEN_INVALID);
        assert!(table.admit(&s.id, &t).is_ok());
        let again = table.admit(&s.id, &t).unwrap_err();
        assert!(!again.is_guess(), "a spent token is no guess");
        let c = again.closure();
        assert_eq!(
            (c.code, c.reason.as_str(), c.end),
            (close::TOKEN_INVALID, "token already used", None)
        );
        let late = table.issue_token(&s, TokenKind::Viewer, Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(table.admit(&s.id, &late).unwrap_err(), AdmitError::Expired);
    }

    #[tokio::test(start_paused = true)]
    async fn exchange_tokens_trade_once_and_are_spent_nowhere_else() {
        let table = Table::default();
        let s = new_session(&table, false);
        let ttl = Duration::from_secs(60);
        let viewer = table.issue_token(&s, TokenKind::Viewer, ttl);
        let exchange = table.issue_token(&s, TokenKind::Exchange, ttl);
        assert_eq!(
            table.admit(&s.id, &exchange).unwrap_err(),
            AdmitError::Unknown,
            "an exchange token opens no connection"
        );
        assert_eq!(
            table.admit_exchange(&s.id, &viewer).unwrap_err(),
            AdmitError::Unknown,
            "a viewer token buys no launch URL"
        );
        assert!(table.admit(&s.id, &viewer).is_ok(), "and stays unspent");
        assert!(table.admit_exchange(&s.id, &exchange).is_ok());
        assert_eq!(
            table.admit_exchange(&s.id, &exchange).unwrap_err(),
            AdmitError::Spent
        );
    }

    #[tokio::test(start_paused = true)]
    async fn launch_tokens_reopen_until_the_session_ends() {
        let table = Table::default();
        let s = new_session(&table, false);
        let t = table.issue_token(&s, TokenKind::Launch, Duration::from_secs(60));
        assert_eq!(table.admit(&s.id, &t).unwrap().1, TokenKind::Launch);
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(
            table.admit(&s.id, &t).is_ok(),
            "used launch tokens outlive their first-use window"
        );
        let bob = Actor::part("bob");
        assert!(s.mark_ended(EndReason::Stopped, &bob));
        assert!(
            !s.mark_ended(EndReason::ViewerClosed, &bob),
            "a session ends once"
        );
        assert_eq!(
            table.admit(&s.id, &t).unwrap_err().closure().code,
            close::SESSION_ENDED
        );
        assert_eq!(s.closure().code, close::STOPPED);
        assert_eq!(s.closure().reason, "session stopped by bob");
        table.forget(&s);
        let late = table.admit(&s.id, &t).unwrap_err();
        assert_eq!(late.closure().code, close::SESSION_ENDED);
        assert!(late.to_string().contains("stopped by bob"), "{late:?}");
        tokio::time::advance(Duration::from_secs(601)).await;
        table.sweep(Duration::from_secs(600));
        assert_eq!(table.admit(&s.id, &t).unwrap_err(), AdmitError::Unknown);
    }

    #[test]
    fn legacy_ports_belong_to_their_agent_and_run_out_cleanly() {
        let table = Table::default();
        let s = new_session(&table, true);
        let port = u32::from(s.legacy_port.unwrap());
        let pc1 = AgentId::new("pc1").unwrap();
        assert!(table.legacy_claim(port, 1, &pc1).is_ok());
        let err = table
            .legacy_claim(port, 1, &AgentId::new("pc2").unwrap())
            .unwrap_err();
        assert!(err.contains("another agent"));
        assert!(table.legacy_claim(port, 2, &pc1).is_err());
        assert!(table.legacy_claim(1, 1, &pc1).is_err());
        table.forget(&s);
        assert!(table.legacy_claim(port, 1, &pc1).is_err());
        // Every port taken: the next reservation fails at once instead of spinning.
        let all = usize::from(LEGACY_PORTS.end - LEGACY_PORTS.start);
        for i in 0..all {
            table.reserve_legacy_port(&format!("s{i}")).unwrap();
        }
        assert_eq!(table.reserve_legacy_port("one more"), Err(NoLegacyPort));
        table.release_legacy_port(LEGACY_PORTS.start + 7);
        assert_eq!(
            table.reserve_legacy_port("again"),
            Ok(LEGACY_PORTS.start + 7)
        );
    }
}
