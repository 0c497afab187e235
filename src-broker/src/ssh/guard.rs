//! The SSH listener's defences before authentication, in one place ([`Guard`], in
//! [`super::Server`]): per-source connection rate and pre-authentication cap (see [`super::admission`]), the
//! lockout of sources that offer too many rejected keys (a [`Throttle`], as for API keys), and the
//! audit of rejected offers, coalesced so that a source hammering one agent id writes one event per
//! window with a count, not one per offer.
//!
//! Where a rejected offer is audited (issue 15, item 6): only in the tenant(s) the key is
//! registered in, or else the tenant(s) with an agent of the offered id, and each event speaks only
//! of that tenant's own agents (see [`crate::store::OfferTarget`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use super::admission::{ConnectionRate, PreauthSlots};
use crate::config::Config;
use crate::store::{AuditKind, NewEvent, OfferTarget, TenantId};
use crate::throttle::{Lockout, Throttle, client_key};

/// Distinct (source, agent id, key) triples whose rejected offers are being counted at most;
/// when full, the counts are written out early.
const MAX_PENDING: usize = 10_000;

/// The SSH listener's per-source defences.
#[derive(Debug)]
pub(crate) struct Guard {
    /// New connections per source.
    pub(crate) rate: ConnectionRate,
    /// Connections before authentication per source.
    pub(crate) preauth: Arc<PreauthSlots>,
    /// Rejected key offers per source.
    pub(crate) key_failures: Throttle,
    pending: Mutex<HashMap<(IpAddr, String, String), Pending>>,
}

/// What [`Guard::count_rejection`] asks of its caller.
#[derive(Debug)]
pub(crate) struct Rejection {
    /// The first rejection of this (source, user, key) in the window: look the key up, audit
    /// [`offer_events`], then [`Guard::remember`] them.
    pub(crate) first: bool,
    /// For a repeat: the events audited for the first one (their tenants, for a lockout).
    pub(crate) events: Vec<NewEvent>,
    /// The source's lockout, when this rejection starts one: audit [`lockout_events`].
    pub(crate) lockout: Option<Lockout>,
    /// Counts written out early because the table was full: audit them.
    pub(crate) overflow: Vec<NewEvent>,
}

/// Rejected offers counted since their first one was audited.
#[derive(Debug)]
struct Pending {
    events: Vec<NewEvent>,
    more: u32,
}

impl Guard {
    pub(crate) fn new(config: &Config) -> Self {
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

    /// Counts a rejected offer of key `fingerprint` for SSH user `user` from `peer`, toward the
    /// source's lockout and the coalesced audit. Touches no store: when [`Rejection::first`]
    /// says so, the caller looks the key up once ([`crate::store::Store::offer_targets`]), audits
    /// [`offer_events`] and hands them to [`Guard::remember`]; repeats only count until
    /// [`Guard::take_counts`]. This split keeps the store off the caller's thread: the handler
    /// does its one lookup through [`crate::store::Db::run`] (the blocking pool) and queues the
    /// events with [`crate::store::Db::audit`].
    pub(crate) fn count_rejection(
        &self,
        peer: SocketAddr,
        user: &str,
        fingerprint: &str,
    ) -> Rejection {
        let lockout = self.key_failures.failed(peer.ip());
        let key = (
            client_key(peer.ip()),
            clean_user(user),
            fingerprint.to_owned(),
        );
        let mut pending = self.lock();
        match pending.get_mut(&key) {
            Some(p) => {
                p.more += 1;
                Rejection {
                    first: false,
                    events: p.events.clone(),
                    lockout,
                    overflow: Vec::new(),
                }
            }
            None => {
                // A place holder, so that a concurrent repeat counts instead of auditing again.
                let overflow = if pending.len() >= MAX_PENDING {
                    std::mem::take(&mut *pending)
                } else {
                    HashMap::new()
                };
                pending.insert(
                    key,
                    Pending {
                        events: Vec::new(),
                        more: 0,
                    },
                );
                Rejection {
                    first: true,
                    events: Vec::new(),
                    lockout,
                    overflow: Self::counts(overflow, "before a full table was written out"),
                }
            }
        }
    }

    /// Keeps the events audited for a first rejection, to repeat them with a count later.
    pub(crate) fn remember(
        &self,
        peer: SocketAddr,
        user: &str,
        fingerprint: &str,
        events: &[NewEvent],
    ) {
        let key = (
            client_key(peer.ip()),
            clean_user(user),
            fingerprint.to_owned(),
        );
        if let Some(p) = self.lock().get_mut(&key) {
            p.events = events.to_vec();
        }
    }

    /// One event per (source, user, key) that had rejected offers after its first one was
    /// audited, with their count; starts a new window. Called every minute.
    pub(crate) fn take_counts(&self, window_secs: u64) -> Vec<NewEvent> {
        let done = std::mem::take(&mut *self.lock());
        Self::counts(done, &format!("within {window_secs}s"))
    }

    /// Forgets what no longer limits anyone.
    pub(crate) fn sweep(&self) {
        self.rate.sweep();
        self.key_failures.sweep();
    }

    fn counts(done: HashMap<(IpAddr, String, String), Pending>, within: &str) -> Vec<NewEvent> {
        let mut out = Vec::new();
        for p in done.into_values().filter(|p| p.more > 0) {
            for mut ev in p.events {
                ev.detail = format!("{} (and {} more times {within})", ev.detail, p.more);
                out.push(ev);
            }
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(IpAddr, String, String), Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The user name as audited: no control characters, at most 64 characters.
pub(crate) fn clean_user(user: &str) -> String {
    shown(user, 64)
}

/// Text from an SSH client as logged, audited or told back: no control characters, at most
/// `max` characters.
pub(crate) fn shown(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// The `ssh_key_guessing` events of a lockout: one in each tenant the rejected offer was
/// audited in (one without a tenant when none).
pub(crate) fn lockout_events(
    lockout: &Lockout,
    audited: &[NewEvent],
    peer: SocketAddr,
    window_secs: u64,
) -> Vec<NewEvent> {
    let detail = format!(
        "{} rejected SSH keys from {} within {window_secs}s; new connections and key offers \
         refused for {}s",
        lockout.failures,
        lockout.client,
        lockout.duration.as_secs()
    );
    let mut tenants: Vec<Option<TenantId>> = audited.iter().map(|e| e.tenant_id).collect();
    if tenants.is_empty() {
        tenants.push(None);
    }
    tenants
        .into_iter()
        .map(|tenant_id| {
            let mut e = NewEvent::new(AuditKind::SshKeyGuessing, detail.clone());
            e.tenant_id = tenant_id;
            e.peer_addr = Some(peer.to_string());
            e
        })
        .collect()
}

/// The `auth_failed` events of one rejected offer: one per target tenant, each naming only that
/// tenant's agents; one without a tenant when no tenant is concerned (visible to no API key).
pub(crate) fn offer_events(
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
    use super::*;

    fn guard(limit: u32) -> Guard {
        let mut config = Config::for_tests(std::path::Path::new("/nonexistent"));
        config.ssh_auth_failure_limit = limit;
        Guard::new(&config)
    }

    #[test]
    fn repeated_rejections_are_one_event_then_one_count() {
        let guard = guard(0);
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let first = guard.count_rejection(peer, "pc-1", "SHA256:unknown");
        assert!(first.first && first.lockout.is_none());
        let targets = [OfferTarget::AgentId { tenant_id: 7 }];
        let events = offer_events(&targets, "pc-1", "SHA256:unknown", peer);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].tenant_id, Some(7));
        guard.remember(peer, "pc-1", "SHA256:unknown", &events);
        for _ in 0..49 {
            let again = guard.count_rejection(peer, "pc-1", "SHA256:unknown");
            assert!(!again.first);
            assert_eq!(again.events.len(), 1, "a repeat knows where the first went");
        }
        // Another source, user or key is another count; the same source port does not matter.
        assert!(guard.count_rejection(peer, "pc-2", "SHA256:unknown").first);
        let other_port: SocketAddr = "192.0.2.1:6000".parse().unwrap();
        assert!(
            !guard
                .count_rejection(other_port, "pc-1", "SHA256:unknown")
                .first
        );
        let counts = guard.take_counts(60);
        assert_eq!(counts.len(), 1, "{counts:?}");
        assert!(
            counts[0].detail.ends_with("(and 50 more times within 60s)"),
            "{}",
            counts[0].detail
        );
        assert!(guard.take_counts(60).is_empty(), "a new window");
        assert!(guard.count_rejection(peer, "pc-1", "SHA256:unknown").first);
    }

    #[test]
    fn the_lockout_is_reported_once_in_the_tenants_concerned() {
        let guard = guard(3);
        let peer: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        let owner = passerelle_proto::ids::AgentId::new("pc-1").unwrap();
        let targets = [OfferTarget::KeyOwner {
            tenant_id: 4,
            owner,
        }];
        let events = offer_events(&targets, "pc-2", "SHA256:k", peer);
        assert!(events[0].detail.contains("of agent pc-1") && events[0].detail.contains("pc-2"));
        let mut lockouts = Vec::new();
        for _ in 0..5 {
            if let Some(l) = guard.count_rejection(peer, "pc-2", "SHA256:k").lockout {
                lockouts.push(lockout_events(&l, &events, peer, 60));
            }
        }
        assert_eq!(lockouts.len(), 1, "one lockout event per episode");
        assert_eq!(lockouts[0][0].tenant_id, Some(4));
        assert!(lockouts[0][0].detail.starts_with("3 rejected SSH keys"));
        assert!(guard.key_failures.check(peer.ip()).is_err());
    }
}
