//! The cluster's shared state: the nodes and their leases, which node holds which agent
//! (presence), and which node runs which session (`sessions.node`).
//!
//! A node renews its lease every few seconds ([`Store::node_renew`]); a node whose lease is
//! older than [`LEASE_MS`] is dead: its agents are offline for every query here at once, and the
//! first survivor to sweep ([`Store::sweep_dead_nodes`]) ends its open sessions (`broker_crash`,
//! each exactly once) and drops its presence rows. A single broker is the node `local` and
//! writes no presence: its registry in memory is the truth.

use std::sync::LazyLock;

use passerelle_proto::api::{AgentInfo, AgentService};
use passerelle_proto::ids::{AgentId, ServiceName};

use super::sql::{Exec as _, OptionalExtension as _, Params as _, Row, ToValue as _, params};
use super::{Store, TenantId, now_ms, rfc3339};

/// A node whose lease was renewed longer ago than this is dead.
pub const LEASE_MS: i64 = 15_000;

/// Dead nodes are forgotten (and leave `cluster status`) after this.
const FORGET_DEAD_MS: i64 = 24 * 3600 * 1000;

/// Schema: nodes, presence, and the node that runs each session.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE cluster_nodes (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    renewed_at INTEGER NOT NULL
);
CREATE TABLE presence (
    tenant_id INTEGER NOT NULL,
    agent TEXT NOT NULL,
    node TEXT NOT NULL,
    conn_id INTEGER NOT NULL,
    peer TEXT NOT NULL,
    connected_at INTEGER NOT NULL,
    services TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (tenant_id, agent)
);
CREATE INDEX presence_by_node ON presence(node);
ALTER TABLE sessions ADD COLUMN node TEXT NOT NULL DEFAULT 'local';
CREATE INDEX sessions_open_by_node ON sessions(node, state);
"#;

/// Another node, as the node link reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub url: String,
}

/// A node of the cluster and its lease.
#[derive(Debug, Clone)]
pub struct NodeRow {
    pub name: String,
    pub url: String,
    pub started_at: i64,
    pub renewed_at: i64,
    /// Agents it holds.
    pub agents: i64,
    /// Its open sessions.
    pub sessions: i64,
}

impl NodeRow {
    /// Whether its lease holds at `now`.
    pub fn alive(&self, now: i64) -> bool {
        self.renewed_at >= now - LEASE_MS
    }
}

/// An agent held by a live node.
#[derive(Debug, Clone)]
pub struct Holder {
    pub node: Peer,
    pub conn_id: i64,
    pub peer_addr: String,
    pub connected_at: i64,
    pub services: Vec<(ServiceName, u32)>,
}

impl Holder {
    /// Presence fields of the API's agent view, for an agent held by another node.
    pub fn fill(&self, info: &mut AgentInfo) {
        fill_online(
            info,
            self.services.iter().map(|(n, p)| (n, *p)),
            self.connected_at,
            self.peer_addr.clone(),
        );
    }
}

/// The presence fields of the API's agent view that any node knows of a connected agent: online,
/// its services, since when, from where (`AgentConn::fill` adds what only its node knows).
pub fn fill_online<'a>(
    info: &mut AgentInfo,
    services: impl Iterator<Item = (&'a ServiceName, u32)>,
    connected_at: i64,
    peer_addr: String,
) {
    info.online = true;
    info.services = services
        .map(|(name, port)| AgentService {
            name: name.clone(),
            port,
        })
        .collect();
    info.connected_since = Some(rfc3339(connected_at));
    info.peer_addr = Some(peer_addr);
}

/// A session a dead node left open, ended by a survivor.
#[derive(Debug, Clone)]
pub struct Orphan {
    pub id: String,
    pub tenant_id: TenantId,
    pub agent: String,
    pub operator: String,
    pub node: String,
}

fn services_text(services: &[(ServiceName, u32)]) -> String {
    let list: Vec<(&str, u32)> = services.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    serde_json::to_string(&list).unwrap_or_else(|_| "[]".to_owned())
}

fn services_of(text: &str) -> Vec<(ServiceName, u32)> {
    let list: Vec<(String, u32)> = serde_json::from_str(text).unwrap_or_default();
    list.into_iter()
        .filter_map(|(n, p)| Some((ServiceName::new(n).ok()?, p)))
        .collect()
}

fn peer_row(r: &Row) -> super::sql::Result<Peer> {
    Ok(Peer {
        name: r.get(0)?,
        url: r.get(1)?,
    })
}

fn holder_row(r: &Row) -> super::sql::Result<Holder> {
    Ok(Holder {
        node: peer_row(r)?,
        conn_id: r.get(2)?,
        peer_addr: r.get(3)?,
        connected_at: r.get(4)?,
        services: services_of(&r.get::<String>(5)?),
    })
}

/// Notes that the agents of the presence rows `whose` selects (a condition on `p`, the presence
/// row, and `n`, its node, with `?1` = `arg`) were last seen at their node's last renewal: a node
/// that died, or was killed and started again, never wrote their `last_seen` itself, and the
/// console would show the end of an older connection (or nothing). A later time stays.
fn note_last_seen(
    conn: &impl super::sql::Exec,
    whose: &str,
    arg: impl super::sql::ToValue,
) -> super::sql::Result<usize> {
    conn.execute(
        &format!(
            "UPDATE agents SET last_seen = d.renewed_at
             FROM (SELECT p.tenant_id, p.agent, n.renewed_at FROM presence p
                   JOIN cluster_nodes n ON n.name = p.node WHERE {whose}) d
             WHERE agents.tenant_id = d.tenant_id AND agents.id = d.agent
               AND (agents.last_seen IS NULL OR agents.last_seen < d.renewed_at)"
        ),
        [arg.to_value()],
    )
}

/// This node takes an agent's presence row: `?1` tenant, `?2` agent, `?3` node, `?4` connection,
/// `?5` peer address, `?6` since, `?7` services.
const CLAIM_SQL: &str =
    "INSERT INTO presence (tenant_id, agent, node, conn_id, peer, connected_at, services)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
     ON CONFLICT (tenant_id, agent) DO UPDATE SET node = ?3, conn_id = ?4, peer = ?5,
        connected_at = ?6, services = ?7";

impl Store {
    /// This store's node name (`local` unless [`Store::with_node`] named one).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Names the node this store serves (before it is shared).
    #[must_use]
    pub fn with_node(mut self, name: &str) -> Self {
        name.clone_into(&mut self.node);
        self
    }

    /// Announces this node at `url` with a fresh lease. A restarted node held nothing: its
    /// presence rows from before go.
    pub fn node_started(&self, url: &str) -> anyhow::Result<()> {
        let now = now_ms();
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        // A restart after a crash: what this node held was last seen at its last renewal.
        note_last_seen(&tx, "p.node = ?1", self.node.as_str())?;
        tx.execute(
            "INSERT INTO cluster_nodes (name, url, started_at, renewed_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (name) DO UPDATE SET url = ?2, started_at = ?3, renewed_at = ?3",
            params![self.node.as_str(), url, now],
        )?;
        tx.execute(
            "DELETE FROM presence WHERE node = ?1",
            params![self.node.as_str()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Renews this node's lease. False when its row was gone (a survivor forgot it): it is
    /// written again, and the caller re-announces what it holds.
    pub fn node_renew(&self, url: &str) -> anyhow::Result<bool> {
        let now = now_ms();
        let n = self.conn()?.execute(
            "UPDATE cluster_nodes SET renewed_at = ?2 WHERE name = ?1",
            params![self.node.as_str(), now],
        )?;
        if n == 0 {
            self.node_started(url)?;
        }
        Ok(n > 0)
    }

    /// A clean stop: this node holds nothing and leaves the cluster.
    pub fn node_stopped(&self) -> anyhow::Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM presence WHERE node = ?1",
            params![self.node.as_str()],
        )?;
        tx.execute(
            "DELETE FROM cluster_nodes WHERE name = ?1",
            params![self.node.as_str()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// This node now holds the agent (connection `conn_id`). Returns the live node that held it
    /// before, if it was another one: that node must drop its connection.
    pub fn presence_claim(
        &self,
        tenant_id: TenantId,
        agent: &AgentId,
        conn_id: u64,
        peer_addr: &str,
        services: &[(ServiceName, u32)],
    ) -> anyhow::Result<Option<Peer>> {
        let now = now_ms();
        let claim = params![
            tenant_id,
            agent.as_str(),
            self.node.as_str(),
            i64::try_from(conn_id).unwrap_or(i64::MAX),
            peer_addr,
            now,
            services_text(services)
        ]
        .into_values();
        let lease = (now - LEASE_MS).to_value();
        let mut conn = self.conn()?;
        let before = if self.backend() == super::sql::Backend::Postgres {
            // One statement, one round trip (a cluster's sign-in storm makes thousands): the
            // holder read sees the rows as they were before the upsert (a data-modifying WITH
            // runs on the statement's snapshot).
            static SQL: LazyLock<String> = LazyLock::new(|| {
                format!(
                    "WITH before AS (
                        SELECT n.name, n.url FROM presence p JOIN cluster_nodes n ON n.name = p.node
                        WHERE p.tenant_id = ?1 AND p.agent = ?2 AND n.renewed_at >= ?8),
                     claim AS ({CLAIM_SQL})
                     SELECT name, url FROM before"
                )
            });
            let mut values = claim;
            values.push(lease);
            conn.query_row(&SQL, values, peer_row).optional()?
        } else {
            let tx = conn.transaction()?;
            let before = tx
                .query_row(
                    "SELECT n.name, n.url FROM presence p JOIN cluster_nodes n ON n.name = p.node
                     WHERE p.tenant_id = ?1 AND p.agent = ?2 AND n.renewed_at >= ?3",
                    vec![claim[0].clone(), claim[1].clone(), lease],
                    peer_row,
                )
                .optional()?;
            tx.execute(CLAIM_SQL, claim)?;
            tx.commit()?;
            before
        };
        Ok(before.filter(|p| p.name != self.node))
    }

    /// The services the agent's connection announces now.
    pub fn presence_services(
        &self,
        tenant_id: TenantId,
        agent: &AgentId,
        conn_id: u64,
        services: &[(ServiceName, u32)],
    ) -> anyhow::Result<()> {
        self.conn()?.execute(
            "UPDATE presence SET services = ?5
             WHERE tenant_id = ?1 AND agent = ?2 AND node = ?3 AND conn_id = ?4",
            params![
                tenant_id,
                agent.as_str(),
                self.node.as_str(),
                i64::try_from(conn_id).unwrap_or(i64::MAX),
                services_text(services)
            ],
        )?;
        Ok(())
    }

    /// The agent's connection `conn_id` on this node ended (a newer one, here or elsewhere,
    /// keeps its row).
    pub fn presence_release(
        &self,
        tenant_id: TenantId,
        agent: &AgentId,
        conn_id: u64,
    ) -> anyhow::Result<()> {
        self.conn()?.execute(
            "DELETE FROM presence WHERE tenant_id = ?1 AND agent = ?2 AND node = ?3 AND conn_id = ?4",
            params![
                tenant_id,
                agent.as_str(),
                self.node.as_str(),
                i64::try_from(conn_id).unwrap_or(i64::MAX)
            ],
        )?;
        Ok(())
    }

    /// The live node holding the agent, if any.
    pub fn presence_holder(
        &self,
        tenant_id: TenantId,
        agent: &AgentId,
    ) -> anyhow::Result<Option<Holder>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT n.name, n.url, p.conn_id, p.peer, p.connected_at, p.services
                 FROM presence p JOIN cluster_nodes n ON n.name = p.node
                 WHERE p.tenant_id = ?1 AND p.agent = ?2 AND n.renewed_at >= ?3",
                params![tenant_id, agent.as_str(), now_ms() - LEASE_MS],
                holder_row,
            )
            .optional()?)
    }

    /// A tenant's agents held by live nodes other than this one.
    pub fn presence_elsewhere(
        &self,
        tenant_id: TenantId,
    ) -> anyhow::Result<Vec<(AgentId, Holder)>> {
        let rows = self.conn()?.query_map(
            "SELECT n.name, n.url, p.conn_id, p.peer, p.connected_at, p.services, p.agent
             FROM presence p JOIN cluster_nodes n ON n.name = p.node
             WHERE p.tenant_id = ?1 AND p.node != ?2 AND n.renewed_at >= ?3",
            params![tenant_id, self.node.as_str(), now_ms() - LEASE_MS],
            |r| Ok((r.get::<String>(6)?, holder_row(r)?)),
        )?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, h)| Some((AgentId::new(id).ok()?, h)))
            .collect())
    }

    /// The live node running an open session, if it is not this one.
    pub fn session_elsewhere(&self, id: &str) -> anyhow::Result<Option<Peer>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT n.name, n.url FROM sessions s JOIN cluster_nodes n ON n.name = s.node
                 WHERE s.id = ?1 AND s.state != 'ended' AND s.node != ?2 AND n.renewed_at >= ?3",
                params![id, self.node.as_str(), now_ms() - LEASE_MS],
                peer_row,
            )
            .optional()?)
    }

    /// The live node, other than this one, that ran session `id` (and holds its recordings
    /// unless the recordings directory is shared).
    pub fn recorded_elsewhere(&self, id: &str) -> anyhow::Result<Option<Peer>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT n.name, n.url FROM sessions s JOIN cluster_nodes n ON n.name = s.node
                 WHERE s.id = ?1 AND s.node != ?2 AND n.renewed_at >= ?3",
                params![id, self.node.as_str(), now_ms() - LEASE_MS],
                peer_row,
            )
            .optional()?)
    }

    /// The live nodes other than this one (for what every node must hear).
    pub fn live_peers(&self) -> anyhow::Result<Vec<Peer>> {
        Ok(self.conn()?.query_map(
            "SELECT name, url FROM cluster_nodes WHERE name != ?1 AND renewed_at >= ?2",
            params![self.node.as_str(), now_ms() - LEASE_MS],
            peer_row,
        )?)
    }

    /// Ends the open sessions of dead nodes (`broker_crash`; each once, whichever survivor
    /// sweeps first) and drops their presence rows. Returns the sessions this call ended.
    pub fn sweep_dead_nodes(&self) -> anyhow::Result<Vec<Orphan>> {
        let now = now_ms();
        let dead_since = now - LEASE_MS;
        let conn = self.conn()?;
        let open = conn.query_map(
            "SELECT s.id, s.tenant_id, s.agent, s.operator, s.node FROM sessions s
             JOIN cluster_nodes n ON n.name = s.node
             WHERE s.state != 'ended' AND n.renewed_at < ?1",
            params![dead_since],
            |r| {
                Ok(Orphan {
                    id: r.get(0)?,
                    tenant_id: r.get(1)?,
                    agent: r.get(2)?,
                    operator: r.get(3)?,
                    node: r.get(4)?,
                })
            },
        )?;
        let mut ended = Vec::new();
        for o in open {
            let n = conn.execute(
                "UPDATE sessions SET state = 'ended', ended_at = ?2, end_reason = 'broker_crash',
                    ended_by = 'broker' WHERE id = ?1 AND state != 'ended'",
                params![o.id.as_str(), now],
            )?;
            if n > 0 {
                ended.push(o);
            }
        }
        note_last_seen(&conn, "n.renewed_at < ?1", dead_since)?;
        conn.execute(
            "DELETE FROM presence WHERE node IN
                (SELECT name FROM cluster_nodes WHERE renewed_at < ?1)",
            params![dead_since],
        )?;
        conn.execute(
            "DELETE FROM cluster_nodes WHERE renewed_at < ?1",
            params![now - FORGET_DEAD_MS],
        )?;
        Ok(ended)
    }

    /// Every node, with its lease and what it holds (`passerelle cluster status`).
    pub fn cluster_nodes(&self) -> anyhow::Result<Vec<NodeRow>> {
        Ok(self.conn()?.query_map(
            "SELECT n.name, n.url, n.started_at, n.renewed_at,
                (SELECT COUNT(*) FROM presence p WHERE p.node = n.name),
                (SELECT COUNT(*) FROM sessions s WHERE s.node = n.name AND s.state != 'ended')
             FROM cluster_nodes n ORDER BY n.name",
            (),
            |r| {
                Ok(NodeRow {
                    name: r.get(0)?,
                    url: r.get(1)?,
                    started_at: r.get(2)?,
                    renewed_at: r.get(3)?,
                    agents: r.get(4)?,
                    sessions: r.get(5)?,
                })
            },
        )?)
    }
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
