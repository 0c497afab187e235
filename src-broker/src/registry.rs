//! Presence: which agents are connected, what they announce, and how to reach them.
//!
//! Presence is a live SSH connection. An agent has at most one: a newer connection replaces the
//! older one (which is disconnected), so a workstation that lost its network and reconnected is
//! reachable at once. Each connection owns a [`CancellationToken`] that is cancelled when it ends,
//! so that the sessions bridged over it end too.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use passerelle_proto::api::AgentInfo;
use passerelle_proto::ids::{AgentId, ServiceName};
use tokio_util::sync::CancellationToken;

use crate::store::{AgentRecord, TenantId, now_ms, rfc3339};

/// A forwarded-tcpip channel to one of the agent's services.
pub(crate) type AgentChannel = russh::Channel<russh::server::Msg>;

/// What the SSH side exposes to the rest of the broker for one connection.
pub trait AgentLink: Send + Sync {
    /// Opens a forwarded-tcpip channel to `(address, port)` as the agent was told them.
    fn open(
        &self,
        address: String,
        port: u32,
        originator: SocketAddr,
    ) -> futures_util::future::BoxFuture<'static, anyhow::Result<AgentChannel>>;
    /// Ends the connection, telling the agent why.
    fn disconnect(&self, reason: &str);
}

/// One live agent connection.
pub struct AgentConn {
    /// Distinguishes this connection from a later one of the same agent.
    pub conn_id: u64,
    pub tenant_id: TenantId,
    pub agent: AgentId,
    pub peer: SocketAddr,
    pub connected_at: i64,
    last_seen: AtomicI64,
    services: Mutex<BTreeMap<ServiceName, u32>>,
    link: Box<dyn AgentLink>,
    /// Cancelled when the connection ends.
    pub gone: CancellationToken,
    /// The runtime the connection runs on (its data shard): its sessions' bridges run there.
    pub home: Option<tokio::runtime::Handle>,
    /// The certificate it signed in with, if it did: revoking it or its CA disconnects it.
    pub certificate: Option<SignedInWith>,
    /// In a cluster, whether this connection's presence row is in the store (held across the
    /// write, so that a connection's writes come one at a time and in order).
    pub presence: tokio::sync::Mutex<PresenceRow>,
}

/// Where a connection's presence row stands (in a cluster; see `crate::cluster`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceRow {
    /// Signed in; the row is written with its first services, or a moment later.
    Pending,
    /// In the store.
    Written,
    /// The connection ended: nothing more is written.
    Released,
}

/// What identifies the certificate an agent connection signed in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedInWith {
    /// SHA256 fingerprint of the CA that signed it.
    pub ca: String,
    pub serial: u64,
    /// SHA256 fingerprint of its key.
    pub key: String,
}

impl std::fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConn")
            .field("conn_id", &self.conn_id)
            .field("agent", &self.agent)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl AgentConn {
    /// A new connection's state.
    pub fn new(
        conn_id: u64,
        record: &AgentRecord,
        peer: SocketAddr,
        link: Box<dyn AgentLink>,
    ) -> Self {
        let now = now_ms();
        Self {
            conn_id,
            tenant_id: record.tenant_id,
            agent: record.id.clone(),
            peer,
            connected_at: now,
            last_seen: AtomicI64::new(now),
            services: Mutex::new(BTreeMap::new()),
            link,
            gone: CancellationToken::new(),
            home: tokio::runtime::Handle::try_current().ok(),
            certificate: None,
            presence: tokio::sync::Mutex::new(PresenceRow::Pending),
        }
    }

    /// The connection signed in with this certificate.
    #[must_use]
    pub fn with_certificate(mut self, certificate: Option<SignedInWith>) -> Self {
        self.certificate = certificate;
        self
    }

    /// Notes traffic from the agent.
    pub fn touch(&self) {
        self.last_seen.store(now_ms(), Ordering::Relaxed);
    }

    fn services(&self) -> std::sync::MutexGuard<'_, BTreeMap<ServiceName, u32>> {
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an announced service; returns false when it was already announced.
    pub fn add_service(&self, name: ServiceName, port: u32) -> bool {
        self.services().insert(name, port).is_none()
    }

    /// Forgets a service.
    pub fn remove_service(&self, name: &ServiceName) {
        self.services().remove(name);
    }

    /// The placeholder port the agent was told for a service.
    pub fn service_port(&self, name: &ServiceName) -> Option<u32> {
        self.services().get(name).copied()
    }

    /// Opens a channel to one of the agent's forwards.
    pub async fn open(
        &self,
        address: String,
        port: u32,
        originator: SocketAddr,
    ) -> anyhow::Result<AgentChannel> {
        self.link.open(address, port, originator).await
    }

    /// Disconnects the agent.
    pub fn disconnect(&self, reason: &str) {
        self.link.disconnect(reason);
        self.gone.cancel();
    }

    /// The services it announces, with their placeholder ports.
    pub fn service_list(&self) -> Vec<(ServiceName, u32)> {
        self.services()
            .iter()
            .map(|(n, p)| (n.clone(), *p))
            .collect()
    }

    /// Whether the agent announces `name` now.
    pub fn has_service(&self, name: &ServiceName) -> bool {
        self.services().contains_key(name)
    }

    /// Presence fields of the API's agent view.
    pub fn fill(&self, info: &mut AgentInfo) {
        crate::store::cluster::fill_online(
            info,
            self.services().iter().map(|(n, p)| (n, *p)),
            self.connected_at,
            self.peer.to_string(),
        );
        info.last_seen = Some(rfc3339(self.last_seen.load(Ordering::Relaxed)));
    }
}

/// Every live agent connection, by (tenant, agent id).
#[derive(Default)]
pub struct Registry {
    online: Mutex<HashMap<(TenantId, AgentId), Arc<AgentConn>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({} online)", self.len())
    }
}

impl Registry {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(TenantId, AgentId), Arc<AgentConn>>> {
        self.online.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a connection; returns the one it replaces, if any (the caller disconnects it).
    pub fn insert(&self, conn: Arc<AgentConn>) -> Option<Arc<AgentConn>> {
        self.map()
            .insert((conn.tenant_id, conn.agent.clone()), conn)
    }

    /// Removes a connection if it is still the current one for its agent.
    pub fn remove(&self, conn: &AgentConn) -> bool {
        let mut map = self.map();
        let key = (conn.tenant_id, conn.agent.clone());
        if map.get(&key).is_some_and(|c| c.conn_id == conn.conn_id) {
            map.remove(&key);
            return true;
        }
        false
    }

    /// The agent's live connection.
    pub fn get(&self, tenant_id: TenantId, agent: &AgentId) -> Option<Arc<AgentConn>> {
        self.map().get(&(tenant_id, agent.clone())).cloned()
    }

    /// How many agents are online.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no agent is online.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids of a tenant's online agents (for the agent list's presence filters).
    pub fn online_ids(
        &self,
        tenant_id: TenantId,
        keep: impl Fn(&AgentConn) -> bool,
    ) -> Vec<AgentId> {
        self.map()
            .values()
            .filter(|c| c.tenant_id == tenant_id && keep(c))
            .map(|c| c.agent.clone())
            .collect()
    }

    /// Every live connection (for shutdown).
    pub fn all(&self) -> Vec<Arc<AgentConn>> {
        self.map().values().cloned().collect()
    }
}
