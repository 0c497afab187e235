//! Session rows: the durable half of a session (the live half is [`crate::sessions`]).

use passerelle_proto::api::{SessionInfo, SessionState};
use passerelle_proto::close::EndReason;
use passerelle_proto::ids::{AgentId, ServiceName};

use super::sql::{self, Exec as _, OptionalExtension as _, Row, Value, params};

use super::{AuditFilter, Store, TenantId, parse_rfc3339, rfc3339};

const COLUMNS: &str =
    "s.id, t.name, s.agent, s.service, s.operator, s.state, s.record, s.view_only,
    s.legacy, s.legacy_port, s.created_at, s.started_at, s.ended_at, s.expires_at, s.end_reason,
    s.ended_by, s.client_addr, s.bytes_up, s.bytes_down, s.tenant_id";

fn from_row(r: &Row) -> sql::Result<(SessionInfo, TenantId)> {
    let bad = |i: usize, what: &str| sql::Error::conversion(i, format!("not a valid {what}"));
    let text = |i: usize| r.get::<String>(i);
    let opt_time = |i: usize| r.get::<Option<i64>>(i).map(|t| t.map(rfc3339));
    let info = SessionInfo {
        id: text(0)?,
        tenant: text(1)?.parse().map_err(|_| bad(1, "tenant"))?,
        agent: AgentId::new(text(2)?).map_err(|_| bad(2, "agent"))?,
        service: ServiceName::new(text(3)?).map_err(|_| bad(3, "service"))?,
        operator: text(4)?,
        state: SessionState::parse(&text(5)?).ok_or_else(|| bad(5, "state"))?,
        record: r.get(6)?,
        view_only: r.get(7)?,
        legacy: r.get(8)?,
        legacy_port: r.get(9)?,
        created_at: rfc3339(r.get(10)?),
        started_at: opt_time(11)?,
        ended_at: opt_time(12)?,
        expires_at: rfc3339(r.get(13)?),
        end_reason: r
            .get::<Option<String>>(14)?
            .map(|s| EndReason::parse(&s).ok_or_else(|| bad(14, "end_reason")))
            .transpose()?,
        ended_by: r.get(15)?,
        client_addr: r.get(16)?,
        bytes_up: r.get::<i64>(17)?.try_into().unwrap_or(0),
        bytes_down: r.get::<i64>(18)?.try_into().unwrap_or(0),
    };
    Ok((info, r.get(19)?))
}

fn ms(rfc: &str) -> i64 {
    parse_rfc3339(rfc).unwrap_or(0)
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Stores a new session.
    pub fn insert_session(&self, tenant_id: TenantId, s: &SessionInfo) -> anyhow::Result<()> {
        self.conn()?.execute(
            "INSERT INTO sessions (id, tenant_id, agent, service, operator, state, record, view_only,
                legacy, legacy_port, created_at, expires_at, node)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                s.id,
                tenant_id,
                s.agent.as_str(),
                s.service.as_str(),
                s.operator,
                s.state.as_str(),
                s.record,
                s.view_only,
                s.legacy,
                s.legacy_port,
                ms(&s.created_at),
                ms(&s.expires_at),
                self.node.as_str()
            ],
        )?;
        Ok(())
    }

    /// Marks a session active (first viewer bridged).
    pub fn session_started(&self, id: &str, at: i64, client_addr: &str) -> anyhow::Result<()> {
        self.conn()?.execute(
            "UPDATE sessions SET state = 'active', started_at = ?2, client_addr = ?3
             WHERE id = ?1 AND state = 'pending'",
            params![id, at, client_addr],
        )?;
        Ok(())
    }

    /// Records a session's end; a session ends once (later calls change nothing).
    pub fn session_ended(
        &self,
        id: &str,
        at: i64,
        reason: EndReason,
        ended_by: &str,
        bytes_up: u64,
        bytes_down: u64,
    ) -> anyhow::Result<bool> {
        let n = self.conn()?.execute(
            "UPDATE sessions SET state = 'ended', ended_at = ?2, end_reason = ?3, ended_by = ?4,
                bytes_up = ?5, bytes_down = ?6 WHERE id = ?1 AND state != 'ended'",
            params![
                id,
                at,
                reason.as_str(),
                ended_by,
                clamp_i64(bytes_up),
                clamp_i64(bytes_down)
            ],
        )?;
        Ok(n > 0)
    }

    /// Ends every session a previous run of this node left open (it stopped without ending
    /// them); other nodes' sessions are theirs. Returns their ids.
    pub fn end_orphans(&self, at: i64) -> anyhow::Result<Vec<String>> {
        let node = self.node.as_str();
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let ids = tx.query_map(
            "SELECT id FROM sessions WHERE state != 'ended' AND node = ?1",
            [node],
            |r| r.get::<String>(0),
        )?;
        tx.execute(
            "UPDATE sessions SET state = 'ended', ended_at = ?1, end_reason = 'broker_crash',
                ended_by = 'broker' WHERE state != 'ended' AND node = ?2",
            params![at, node],
        )?;
        tx.commit()?;
        Ok(ids)
    }

    /// One session, whatever its tenant (for internal use and tests).
    pub fn session(&self, id: &str) -> anyhow::Result<Option<SessionInfo>> {
        Ok(self.session_with_tenant(id)?.map(|(s, _)| s))
    }

    /// One session and its tenant id.
    pub fn session_with_tenant(&self, id: &str) -> anyhow::Result<Option<(SessionInfo, TenantId)>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM sessions s JOIN tenants t ON t.id = s.tenant_id WHERE s.id = ?1"
        );
        Ok(self.conn()?.query_row(&sql, [id], from_row).optional()?)
    }

    /// A tenant's sessions, newest first, optionally in one state.
    pub fn sessions(
        &self,
        tenant_id: TenantId,
        state: Option<SessionState>,
        limit: u32,
    ) -> anyhow::Result<Vec<SessionInfo>> {
        let f = AuditFilter::default();
        let mut rows = self.sessions_matching_state(tenant_id, &f, state, i64::from(limit))?;
        rows.truncate(limit as usize);
        Ok(rows)
    }

    pub(super) fn sessions_matching(
        &self,
        tenant_id: TenantId,
        f: &AuditFilter,
        limit: i64,
    ) -> anyhow::Result<Vec<SessionInfo>> {
        self.sessions_matching_state(tenant_id, f, None, limit)
    }

    fn sessions_matching_state(
        &self,
        tenant_id: TenantId,
        f: &AuditFilter,
        state: Option<SessionState>,
        limit: i64,
    ) -> anyhow::Result<Vec<SessionInfo>> {
        let mut clauses = vec!["s.tenant_id = ?".to_owned()];
        let mut args: Vec<Value> = vec![Value::Integer(tenant_id)];
        let mut add = |clause: &str, v: Option<Value>| {
            if let Some(v) = v {
                clauses.push(clause.to_owned());
                args.push(v);
            }
        };
        add(
            "s.state = ?",
            state.map(|s| Value::Text(s.as_str().to_owned())),
        );
        add("s.agent = ?", f.agent.clone().map(Value::Text));
        add("s.operator = ?", f.operator.clone().map(Value::Text));
        add("s.id = ?", f.session.clone().map(Value::Text));
        add("s.created_at >= ?", f.since.map(Value::Integer));
        add("s.created_at <= ?", f.until.map(Value::Integer));
        // A session's duration: from its start to its end, or to now while it lasts. Sessions
        // that never started have none and match no duration filter.
        let duration = "s.started_at IS NOT NULL AND COALESCE(s.ended_at, ?) - s.started_at";
        for (op, bound) in [(">=", f.min_duration_ms), ("<=", f.max_duration_ms)] {
            if let Some(ms) = bound {
                clauses.push(format!("{duration} {op} ?"));
                args.push(Value::Integer(super::now_ms()));
                args.push(Value::Integer(ms));
            }
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM sessions s JOIN tenants t ON t.id = s.tenant_id
             WHERE {} ORDER BY s.created_at DESC LIMIT {limit}",
            clauses.join(" AND ")
        );
        let rows = self.conn()?.query_map(&sql, args, from_row)?;
        Ok(rows.into_iter().map(|(s, _)| s).collect())
    }
}
