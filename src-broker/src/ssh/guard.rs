//! The SSH listener's defences before authentication, in one place ([`Guard`], in the broker's
//! state): per-source connection rate and pre-authentication cap (see [`super::admission`]), the
//! lockout of sources that offer too many rejected keys (a [`Throttle`], as for API keys), and the
//! audit of rejected offers, coalesced so that a source hammering one agent id writes one event per
//! window with a count, not one per offer.
//!
//! Where a rejected offer is audited (issue 15, item 6): only in the tenant(s) the key is
//! registered in, or else the tenant(s) with an agent of the offered id, and each event speaks only
//! of that tenant's own agents (see [`crate::store::OfferTarget`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::admission::{ConnectionRate, PreauthSlots};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{AuditKind, NewEvent, OfferTarget, Store, TenantId};
use crate::throttle::{Throttle, client_key};

/// Distinct (source, agent id, key) triples whose rejected offers are being counted at most;
/// when full, the counts are written out early.
const MAX_PENDING: usize = 10_000;

/// The SSH listener's per-source defences.
#[derive(Debug)]
pub struct Guard {
    /// New connections per source.
    pub rate: ConnectionRate,
    /// Connections before authentication per source.
    pub preauth: Arc<PreauthSlots>,
    /// Rejected key offers per source.
    pub key_failures: Throttle,
    pending: Mutex<HashMap<(IpAddr, String, String), Pending>>,
}

/// Rejected offers counted since their first one was audited.
#[derive(Debug)]
struct Pending {
    events: Vec<NewEvent>,
    more: u32,
}

impl Guard {
    pub fn new(config: &Config) -> Self {
        Self {
            rate: ConnectionRate::new(
                config.ssh_connection_burst_per_source,
                config.ssh_connections_per_source_per_sec,
            ),
            preauth: Arc::new(PreauthSlots::default()),
            key_failures: Throttle::new(
                config.ssh_auth_failure_limit,
                config.auth_failure_window,
                config.auth_lockout,
            ),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Records a rejected offer of key `fingerprint` for SSH user `user` from `peer`: counted
    /// toward the source's lockout, and audited once per window per (source, user, key), with
    /// one store query then; repeats only count until [`Guard::flush`].
    pub fn key_rejected(
        &self,
        store: &Store,
        metrics: &Metrics,
        window_secs: u64,
        peer: SocketAddr,
        user: &str,
        fingerprint: &str,
    ) {
        metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
        let user: String = user.chars().filter(|c| !c.is_control()).take(64).collect();
        let key = (client_key(peer.ip()), user.clone(), fingerprint.to_owned());
        let lockout = self.key_failures.failed(peer.ip());
        let seen = {
            let mut pending = self.lock();
            match pending.get_mut(&key) {
                Some(p) => {
                    p.more += 1;
                    Some(p.events.clone())
                }
                None => None,
            }
        };
        let events = match seen {
            Some(events) => events,
            None => {
                let targets = store.offer_targets(&user, fingerprint).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "could not look up a rejected key's tenants");
                    Vec::new()
                });
                let events = offer_events(&targets, &user, fingerprint, peer);
                tracing::info!(%user, key = fingerprint, "agent authentication failed");
                for ev in &events {
                    store.audit(ev.clone());
                }
                let mut pending = self.lock();
                if pending.len() >= MAX_PENDING {
                    let full = std::mem::take(&mut *pending);
                    drop(pending);
                    Self::write_counts(store, full, window_secs);
                    pending = self.lock();
                }
                pending.insert(
                    key,
                    Pending {
                        events: events.clone(),
                        more: 0,
                    },
                );
                events
            }
        };
        if let Some(lockout) = lockout {
            metrics.auth_lockouts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client = %lockout.client, failures = lockout.failures, "ssh key guessing: source locked out");
            let detail = format!(
                "{} rejected SSH keys from {} within {window_secs}s; new connections and key \
                 offers refused for {}s",
                lockout.failures,
                lockout.client,
                lockout.duration.as_secs()
            );
            for ev in tenants_of(&events) {
                let mut e = NewEvent::new(AuditKind::SshKeyGuessing, detail.clone());
                e.tenant_id = ev;
                e.peer_addr = Some(peer.to_string());
                store.audit(e);
            }
        }
    }

    /// Writes one event per (source, user, key) that had rejected offers after its first one
    /// was audited, with their count, and starts a new window. Called every minute.
    pub fn flush(&self, store: &Store, window_secs: u64) {
        let done = std::mem::take(&mut *self.lock());
        Self::write_counts(store, done, window_secs);
    }

    /// Forgets what no longer limits anyone.
    pub fn sweep(&self) {
        self.rate.sweep();
        self.key_failures.sweep();
    }

    fn write_counts(
        store: &Store,
        done: HashMap<(IpAddr, String, String), Pending>,
        window_secs: u64,
    ) {
        for p in done.into_values().filter(|p| p.more > 0) {
            for mut ev in p.events {
                ev.detail = format!(
                    "{} (and {} more times within {window_secs}s)",
                    ev.detail, p.more
                );
                store.audit(ev);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(IpAddr, String, String), Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The tenants of a set of events (`None` once when there is none).
fn tenants_of(events: &[NewEvent]) -> Vec<Option<TenantId>> {
    if events.is_empty() {
        return vec![None];
    }
    events.iter().map(|e| e.tenant_id).collect()
}

/// The `auth_failed` events of one rejected offer: one per target tenant, each naming only that
/// tenant's agents; one without a tenant when no tenant is concerned (visible to no API key).
fn offer_events(
    targets: &[OfferTarget],
    user: &str,
    fingerprint: &str,
    peer: SocketAddr,
) -> Vec<NewEvent> {
    let event = |tenant_id: Option<TenantId>, detail: String| {
        let mut ev = NewEvent::new(AuditKind::AuthFailed, detail);
        ev.tenant_id = tenant_id;
        ev.agent = Some(user.to_owned());
        ev.peer_addr = Some(peer.to_string());
        ev
    };
    if targets.is_empty() {
        return vec![event(
            None,
            format!("key {fingerprint} offered for unknown agent id {user}"),
        )];
    }
    targets
        .iter()
        .map(|t| match t {
            OfferTarget::KeyOwner { tenant_id, owner } => event(
                Some(*tenant_id),
                format!("key {fingerprint} of agent {owner} was offered for agent id {user}"),
            ),
            OfferTarget::AgentId { tenant_id } => event(
                Some(*tenant_id),
                format!("key {fingerprint} is not registered for agent {user}"),
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use passerelle_proto::ids::{AgentId, TenantName};

    use super::*;
    use crate::store::AuditFilter;

    #[test]
    fn repeated_rejections_are_one_event_then_one_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let name = TenantName::new("t").unwrap();
        store.create_tenant(&name).unwrap();
        let t = store.tenant_id(&name).unwrap().unwrap();
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJylJeR0uUHfNCfg57oy+6Rr9aTK65v++92waft60cWZ";
        store
            .create_agent(t, &AgentId::new("pc-1").unwrap(), key, None)
            .unwrap();
        let mut config = Config::for_tests(dir.path());
        config.ssh_auth_failure_limit = 0;
        let guard = Guard::new(&config);
        let metrics = Metrics::default();
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        for _ in 0..50 {
            guard.key_rejected(&store, &metrics, 60, peer, "pc-1", "SHA256:unknown");
        }
        let events = |store: &Store| store.audit_page(t, &AuditFilter::default()).unwrap().events;
        assert_eq!(events(&store).len(), 1, "one event while counting");
        guard.flush(&store, 60);
        let after = events(&store);
        assert_eq!(after.len(), 2);
        assert!(
            after[0].detail.ends_with("(and 49 more times within 60s)"),
            "{}",
            after[0].detail
        );
        assert_eq!(metrics.auth_failures.load(Ordering::Relaxed), 50);
        guard.flush(&store, 60);
        assert_eq!(events(&store).len(), 2, "nothing more to write");
    }
}
