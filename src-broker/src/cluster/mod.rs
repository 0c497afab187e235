//! Several brokers as one: nodes on one PostgreSQL store, with one identity (`identity`), a
//! lease each, presence in the store (`crate::store::cluster`) and an authenticated node link
//! (`link`, `client`) over which a node forwards what another node holds: an API call or a
//! viewer's WebSocket for a session that runs there (`crate::http::cluster`), or the order to
//! drop an agent that reconnected elsewhere or was revoked.
//!
//! A session lives on the node that holds its agent: its tokens, bridges and recording are
//! there, so the session core is the single-node one. Other nodes only forward.

pub mod client;
pub mod identity;
pub mod link;

use std::sync::Arc;
use std::time::Duration;

use passerelle_proto::ids::{AgentId, ServiceName};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::registry::{AgentConn, PresenceRow, Registry};
use crate::store::cluster::Peer;
use crate::store::{AuditKind, Db, NewEvent, TenantId, now_ms};

/// How often a node renews its lease and sweeps dead nodes.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// A node that did not answer a link request is not told anything for this long (one lease
/// renewal): either it is back by then, or its lease runs out and nobody asks it any more.
const SKIP_UNREACHABLE_MS: i64 = 5_000;

/// How long after its sign-in an agent's presence row waits for the agent's first service
/// (OpenSSH asks for its forwards at once), so that one statement writes both. An agent that
/// announces nothing is written after this.
const PRESENCE_GRACE: Duration = Duration::from_millis(250);

/// What [`Cluster::write_presence`] writes.
#[derive(Debug, Clone, Copy)]
enum Write {
    /// The claim, if nothing was written yet (the end of [`PRESENCE_GRACE`]).
    IfPending,
    /// The services, or the claim with them if nothing was written yet.
    Services,
    /// The claim, again if need be (the lease had lapsed).
    Claim,
}

/// The link route that drops an agent's connection on the node that holds it.
pub const DROP_AGENT_PATH: &str = "/cluster/v1/drop-agent";

/// The body of [`DROP_AGENT_PATH`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct DropAgent {
    pub tenant_id: TenantId,
    pub agent: String,
    pub reason: String,
}

/// The link route that disconnects the agents whose certificate matches (a CA removed, a
/// serial or key revoked) on every node.
pub const DROP_CERTIFIED_PATH: &str = "/cluster/v1/drop-certified";

/// The body of [`DROP_CERTIFIED_PATH`]: which certificates, in which tenant, and why. Each set
/// field must match.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DropCertified {
    pub tenant_id: TenantId,
    pub ca: Option<String>,
    pub serial: Option<u64>,
    pub key: Option<String>,
    pub why: String,
}

impl DropCertified {
    /// Whether an agent connection of this tenant signed in with such a certificate.
    pub fn matches(&self, c: &crate::registry::SignedInWith) -> bool {
        self.ca.as_ref().is_none_or(|ca| *ca == c.ca)
            && self.serial.is_none_or(|s| s == c.serial)
            && self.key.as_ref().is_none_or(|k| *k == c.key)
            && (self.ca.is_some() || self.serial.is_some() || self.key.is_some())
    }
}

/// This node in its cluster.
pub struct Cluster {
    pub node: String,
    /// Where the other nodes reach this one.
    pub url: String,
    key: link::LinkKey,
    connector: client::Connector,
    db: Db,
    tasks: TaskTracker,
    /// Cancelled when the broker stops: forwarded connections end with it.
    pub stop: CancellationToken,
    /// When each unreachable node was last reported (one warning per node per lease).
    unreachable: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Joins the cluster: announces this node at `url` with a fresh lease. The link to the
    /// other nodes trusts the certificate `tls_pin` names.
    pub(crate) async fn join(
        node: String,
        url: String,
        secret: &[u8],
        tls_pin: crate::pinned::Pin,
        db: Db,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let connector = client::Connector::new(tls_pin, tasks.clone())?;
        let at = url.clone();
        db.run(move |s| s.node_started(&at)).await?;
        tracing::info!(%node, %url, "joined the cluster");
        Ok(Arc::new(Self {
            node,
            url,
            key: link::LinkKey::new(secret),
            connector,
            db,
            tasks,
            stop,
            unreachable: std::sync::Mutex::default(),
        }))
    }

    /// Renews the lease every [`RENEW_EVERY`] and ends dead nodes' sessions, until `stop`.
    pub fn run(self: &Arc<Self>, registry: Arc<Registry>) {
        let (me, stop) = (self.clone(), self.stop.clone());
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(RENEW_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => me.upkeep(&registry).await,
                    () = stop.cancelled() => return,
                }
            }
        });
    }

    async fn upkeep(self: &Arc<Self>, registry: &Registry) {
        let url = self.url.clone();
        match self.db.run(move |s| s.node_renew(&url)).await {
            // A survivor took this node for dead: say again what it holds.
            Ok(false) => {
                tracing::warn!("this node's lease had lapsed; announcing its agents again");
                for conn in registry.all() {
                    self.agent_online(&conn).await;
                }
            }
            Ok(true) => {}
            Err(e) => tracing::error!(error = %format!("{e:#}"), "could not renew the lease"),
        }
        match self.db.run(|s| s.sweep_dead_nodes()).await {
            Ok(orphans) => {
                for o in orphans {
                    tracing::warn!(session = %o.id, node = %o.node, "ended a dead node's session");
                    let mut ev = NewEvent::new(
                        AuditKind::SessionEnded,
                        format!("broker_crash: node {} stopped during the session", o.node),
                    );
                    ev.tenant_id = Some(o.tenant_id);
                    ev.agent = Some(o.agent);
                    ev.operator = Some(o.operator);
                    ev.session = Some(o.id);
                    self.db.audit(ev);
                }
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "could not sweep dead nodes"),
        }
    }

    /// A clean stop: this node leaves the cluster, holding nothing.
    pub async fn leave(&self) {
        if let Err(e) = self.db.run(|s| s.node_stopped()).await {
            tracing::warn!(error = %format!("{e:#}"), "could not leave the cluster cleanly");
        }
    }

    /// An agent signed in here. Its presence row is written with its first service
    /// ([`Self::services_changed`]), or after [`PRESENCE_GRACE`] if none comes: one statement
    /// instead of two for almost every sign-in, which a fleet's reconnection storm makes
    /// thousands of (the row is the cluster's only way to reach the agent, so a moment's delay
    /// before other nodes see it costs nothing a viewer could notice).
    pub fn agent_signed_in(self: &Arc<Self>, conn: &Arc<AgentConn>) {
        let (me, conn) = (self.clone(), conn.clone());
        self.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(PRESENCE_GRACE) => me.write_presence(&conn, Write::IfPending).await,
                () = conn.gone.cancelled() => {}
            }
        });
    }

    /// This node holds the agent (again): its presence row is written now with what it
    /// announces, unless its connection ended.
    pub async fn agent_online(self: &Arc<Self>, conn: &Arc<AgentConn>) {
        self.write_presence(conn, Write::Claim).await;
    }

    /// The agent's connection announces a different set of services.
    pub async fn services_changed(self: &Arc<Self>, conn: &Arc<AgentConn>) {
        self.write_presence(conn, Write::Services).await;
    }

    /// Writes the connection's presence row as `what` says; nothing once the connection ended.
    async fn write_presence(self: &Arc<Self>, conn: &Arc<AgentConn>, what: Write) {
        let mut row = conn.presence.lock().await;
        match (*row, what) {
            (PresenceRow::Released, _) | (PresenceRow::Written, Write::IfPending) => {}
            (PresenceRow::Written, Write::Services) => self.update_services(conn).await,
            (PresenceRow::Pending, _) | (PresenceRow::Written, Write::Claim) => {
                self.claim(conn).await;
                *row = PresenceRow::Written;
            }
        }
    }

    /// This node holds the agent now, and the node that held it before (if another) drops
    /// its connection.
    async fn claim(self: &Arc<Self>, conn: &Arc<AgentConn>) {
        let (tenant, agent, id) = (conn.tenant_id, conn.agent.clone(), conn.conn_id);
        let (peer, services) = (conn.peer.to_string(), conn.service_list());
        let claimed = self
            .db
            .run(move |s| s.presence_claim(tenant, &agent, id, &peer, &services))
            .await;
        match claimed {
            Ok(Some(before)) => {
                // In a task: an unreachable node must not hold up this agent's sign-in.
                let reason = format!(
                    "replaced by a newer connection of the same agent (on node {})",
                    self.node
                );
                let (me, agent) = (self.clone(), conn.agent.clone());
                self.tasks.spawn(async move {
                    me.drop_agent(&before, tenant, &agent, &reason).await;
                });
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %format!("{e:#}"), "could not record presence"),
        }
    }

    async fn update_services(&self, conn: &AgentConn) {
        let (tenant, agent, id) = (conn.tenant_id, conn.agent.clone(), conn.conn_id);
        let services: Vec<(ServiceName, u32)> = conn.service_list();
        if let Err(e) = self
            .db
            .run(move |s| s.presence_services(tenant, &agent, id, &services))
            .await
        {
            tracing::error!(error = %format!("{e:#}"), "could not record an agent's services");
        }
    }

    /// The agent's connection here ended: its row goes, if it was written.
    pub async fn agent_offline(&self, conn: &AgentConn) {
        let mut row = conn.presence.lock().await;
        let written = *row == PresenceRow::Written;
        *row = PresenceRow::Released;
        if !written {
            return;
        }
        let (tenant, agent, id) = (conn.tenant_id, conn.agent.clone(), conn.conn_id);
        if let Err(e) = self
            .db
            .run(move |s| s.presence_release(tenant, &agent, id))
            .await
        {
            tracing::error!(error = %format!("{e:#}"), "could not release presence");
        }
    }

    /// The live node holding an agent, when it is not this one.
    pub async fn holder_elsewhere(&self, tenant: TenantId, agent: &AgentId) -> Option<Peer> {
        let agent = agent.clone();
        let held = self
            .db
            .run(move |s| s.presence_holder(tenant, &agent))
            .await;
        match held {
            Ok(Some(h)) if h.node.name != self.node => Some(h.node),
            Ok(_) => None,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "could not read presence");
                None
            }
        }
    }

    /// Tells `peer` to drop its connection of the agent (reconnected elsewhere, or revoked).
    pub async fn drop_agent(
        &self,
        peer: &Peer,
        tenant_id: TenantId,
        agent: &AgentId,
        reason: &str,
    ) {
        let body = DropAgent {
            tenant_id,
            agent: agent.to_string(),
            reason: reason.to_owned(),
        };
        self.tell(peer, DROP_AGENT_PATH, &body).await;
    }

    /// Tells every other live node to disconnect the agents whose certificate matches.
    pub async fn drop_certified(&self, what: &DropCertified) {
        let peers = match self.db.run(|s| s.live_peers()).await {
            Ok(p) => p,
            Err(e) => {
                return tracing::error!(error = %format!("{e:#}"), "could not list the nodes");
            }
        };
        let told = peers
            .iter()
            .map(|p| self.tell(p, DROP_CERTIFIED_PATH, what));
        futures_util::future::join_all(told).await;
    }

    /// POSTs `body` to `path` on `peer`; a failure is logged once per lease (the peer's lease
    /// decides the rest). A node that could not be reached within [`SKIP_UNREACHABLE_MS`] is
    /// not tried again meanwhile: after a node dies, each of its agents that comes back on this
    /// node would otherwise cost a failed request to it (a connect timeout each, on a real
    /// network) and a warning, thousands at once.
    async fn tell(&self, peer: &Peer, path: &str, body: &impl serde::Serialize) {
        if self.recently_unreachable(peer) {
            return tracing::debug!(node = %peer.name, %path, "node recently unreachable: not told");
        }
        let sent = match serde_json::to_vec(body) {
            Ok(bytes) => match self.request(hyper::Method::POST, path, None, bytes.into()) {
                Ok(req) => self
                    .connector
                    .send(&peer.url, req)
                    .await
                    .map(|r| r.status()),
                Err(e) => Err(e),
            },
            Err(e) => Err(e.into()),
        };
        match sent {
            Ok(s) if s.is_success() => {}
            Ok(s) => {
                tracing::warn!(node = %peer.name, status = %s, %path, "a node refused a link request");
            }
            Err(e) if self.first_failure(peer) => {
                tracing::warn!(node = %peer.name, error = %format!("{e:#}"), %path, "could not reach a node");
            }
            Err(e) => {
                tracing::debug!(node = %peer.name, error = %format!("{e:#}"), %path, "could not reach a node");
            }
        }
    }

    /// Whether `peer` failed to answer within the last [`SKIP_UNREACHABLE_MS`].
    fn recently_unreachable(&self, peer: &Peer) -> bool {
        let seen = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&peer.name)
            .is_some_and(|at| now_ms() - *at < SKIP_UNREACHABLE_MS)
    }

    /// A request to another node, signed.
    fn request(
        &self,
        method: hyper::Method,
        path: &str,
        client: Option<&str>,
        body: axum::body::Body,
    ) -> anyhow::Result<hyper::Request<axum::body::Body>> {
        let mut b = hyper::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(hyper::header::HOST, "passerelle-node")
            .header(
                link::NODE_HEADER,
                self.key.sign(
                    &self.node,
                    now_ms(),
                    method.as_str(),
                    path,
                    client.unwrap_or(""),
                ),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(c) = client {
            b = b.header(link::CLIENT_HEADER, c);
        }
        Ok(b.body(body)?)
    }

    /// Checks a request's node header.
    pub fn verify(
        &self,
        header: &str,
        method: &str,
        path: &str,
        client: Option<&str>,
    ) -> Result<link::FromNode, link::LinkRefusal> {
        self.key.verify(header, now_ms(), method, path, client)
    }

    /// Signs `parts` (a client's request being forwarded for `client`) for `peer`, sends it
    /// with `body`, and returns the answer.
    pub async fn forward(
        &self,
        peer: &Peer,
        mut parts: hyper::http::request::Parts,
        body: axum::body::Body,
        client: &str,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let signed = self
            .key
            .sign(&self.node, now_ms(), parts.method.as_str(), &path, client);
        parts.uri = path.parse()?;
        parts.headers.insert(link::NODE_HEADER, signed.parse()?);
        parts.headers.insert(link::CLIENT_HEADER, client.parse()?);
        parts.version = hyper::Version::HTTP_11;
        let req = hyper::Request::from_parts(parts, body);
        self.connector.send(&peer.url, req).await
    }

    /// Whether a failure to reach `peer` is news (not reported within a lease's time).
    pub fn first_failure(&self, peer: &Peer) -> bool {
        let now = now_ms();
        let mut seen = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, at| now - *at < crate::store::cluster::LEASE_MS);
        seen.insert(peer.name.clone(), now).is_none()
    }

    /// Every task the cluster spawns (link connections, the lease).
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::registry::SignedInWith;

    /// Node `n1` of a cluster on `store`, its link pinned to nothing reachable.
    async fn node(store: Arc<crate::store::Store>, tasks: TaskTracker) -> Arc<Cluster> {
        Cluster::join(
            "n1".into(),
            "http://127.0.0.1:1".into(),
            &[7; 32],
            crate::pinned::Pin::Fixed(Some([0; 32])),
            Db::new(store).unwrap(),
            tasks,
            CancellationToken::new(),
        )
        .await
        .unwrap()
    }

    /// A node that accepts connections and closes them at once (a dying node) is asked once;
    /// the agents that come back right after are not sent after it.
    #[tokio::test]
    async fn a_node_that_did_not_answer_is_not_asked_again_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let tries = Arc::new(AtomicUsize::new(0));
        let counted = tries.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(dir.path()).unwrap());
        let cluster = node(store, TaskTracker::new()).await;
        let dead = Peer {
            name: "n3".into(),
            url,
        };
        let agent = AgentId::new("pc1").unwrap();
        for _ in 0..20 {
            cluster.drop_agent(&dead, 1, &agent, "replaced").await;
        }
        assert_eq!(tries.load(Ordering::SeqCst), 1, "one try for twenty drops");
        assert!(cluster.recently_unreachable(&dead));
    }

    /// A sign-in's presence row is written with its first service (one claim, at once); an
    /// agent that announces nothing is written after the grace; a connection that ends first
    /// writes nothing, ever.
    #[tokio::test]
    async fn presence_waits_for_the_first_service_and_never_outlives_its_connection() {
        use crate::store::test_fixtures::{KEY_A, KEY_B, tenants_one_two};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(dir.path()).unwrap());
        let (tenant, _) = tenants_one_two(&store);
        let (pc1, pc2) = (AgentId::new("pc1").unwrap(), AgentId::new("pc2").unwrap());
        let r1 = store.create_agent(tenant, &pc1, KEY_A, None).unwrap();
        let r2 = store.create_agent(tenant, &pc2, KEY_B, None).unwrap();
        let tasks = TaskTracker::new();
        let cluster = node(store.clone(), tasks.clone()).await;
        let conn = |id, record| {
            let link = Box::new(crate::session::tests::Refusing);
            let peer = "127.0.0.1:40000".parse().unwrap();
            Arc::new(AgentConn::new(id, record, peer, link))
        };
        let holder = |agent: &AgentId| store.presence_holder(tenant, agent).unwrap();
        let vnc = ServiceName::new("vnc").unwrap();

        let c1 = conn(1, &r1);
        cluster.agent_signed_in(&c1);
        c1.add_service(vnc.clone(), 5900);
        cluster.services_changed(&c1).await;
        let h = holder(&pc1).expect("claimed with its first service, before the grace");
        assert_eq!((h.conn_id, h.services), (1, vec![(vnc.clone(), 5900)]));

        let c2 = conn(2, &r2);
        cluster.agent_signed_in(&c2);
        c2.gone.cancel();
        cluster.agent_offline(&c2).await;
        tasks.close();
        tasks.wait().await;
        assert!(holder(&pc2).is_none(), "ended before the grace: no row");
        let h = holder(&pc1).expect("still held");
        assert_eq!(h.services, vec![(vnc, 5900)], "the grace added nothing");

        tasks.reopen();
        let c3 = conn(3, &r2);
        cluster.agent_signed_in(&c3);
        tasks.close();
        tasks.wait().await;
        let h = holder(&pc2).expect("announced nothing: written after the grace");
        assert_eq!((h.conn_id, h.services.len()), (3, 0));
        cluster.agent_offline(&c3).await;
        assert!(holder(&pc2).is_none(), "released");
    }

    #[test]
    fn a_certificate_drop_matches_every_field_it_sets_and_never_nothing() {
        let c = SignedInWith {
            ca: "SHA256:ca".into(),
            serial: 7,
            key: "SHA256:k".into(),
        };
        let drop = |ca: Option<&str>, serial, key: Option<&str>| DropCertified {
            tenant_id: 1,
            ca: ca.map(str::to_owned),
            serial,
            key: key.map(str::to_owned),
            why: String::new(),
        };
        assert!(drop(Some("SHA256:ca"), None, None).matches(&c));
        assert!(drop(None, Some(7), None).matches(&c));
        assert!(drop(None, None, Some("SHA256:k")).matches(&c));
        assert!(!drop(Some("SHA256:other"), None, None).matches(&c));
        assert!(!drop(None, Some(8), None).matches(&c));
        assert!(
            !drop(None, None, None).matches(&c),
            "an empty rule drops nobody"
        );
    }
}
