//! Credential-guessing limits: failed viewer/launch tokens and API keys are counted per client
//! address; an address that fails `limit` times within `window` is locked out for `lockout`,
//! valid credentials included (an attacker who finds a token mid-episode gains nothing).
//!
//! Memory is bounded: at most [`MAX_TRACKED`] addresses are remembered; when full, entries whose
//! window is over are dropped first, then the oldest unlocked one. IPv6 clients are counted per
//! /64 (what one host usually gets), so rotating addresses inside a prefix does not help.
//! This module knows nothing of HTTP: callers map a lockout to a 429 or a close code.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Addresses remembered at most.
pub(crate) const MAX_TRACKED: usize = 10_000;

/// The unit a limit applies to: an IPv4 address, or an IPv6 /64 (IPv4-mapped IPv6 addresses
/// count as their IPv4 address).
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A lockout that has just begun: audit it once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    /// The address (or /64) locked out.
    pub client: IpAddr,
    /// Failures counted in the window that ended in the lockout.
    pub failures: u32,
    /// How long it lasts.
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

/// Per-address failure counts and lockouts.
#[derive(Debug)]
pub struct Throttle {
    limit: u32,
    window: Duration,
    lockout: Duration,
    max_tracked: usize,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

impl Throttle {
    /// `limit` failures within `window` lock an address out for `lockout`; `limit == 0` never
    /// locks anyone out.
    pub fn new(limit: u32, window: Duration, lockout: Duration) -> Self {
        Self::with_capacity(limit, window, lockout, MAX_TRACKED)
    }

    fn with_capacity(limit: u32, window: Duration, lockout: Duration, max_tracked: usize) -> Self {
        Self {
            limit,
            window,
            lockout,
            max_tracked: max_tracked.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(retry_after)` while `ip` is locked out. Refused attempts neither count nor extend
    /// the lockout, so the `Retry-After` given is honest.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let entries = self.entries();
        match entries.get(&client_key(ip)).and_then(|e| e.locked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Counts a failure from `ip`; returns the lockout when this failure starts one.
    pub fn failed(&self, ip: IpAddr) -> Option<Lockout> {
        if self.limit == 0 {
            return None;
        }
        let now = Instant::now();
        let key = client_key(ip);
        let mut entries = self.entries();
        if !entries.contains_key(&key) && entries.len() >= self.max_tracked {
            self.make_room(&mut entries, now);
        }
        let entry = entries.entry(key).or_insert(Entry {
            window_start: now,
            failures: 0,
            locked_until: None,
        });
        if entry.locked_until.is_some_and(|until| until > now) {
            return None;
        }
        if entry.locked_until.is_some() || now >= entry.window_start + self.window {
            *entry = Entry {
                window_start: now,
                failures: 0,
                locked_until: None,
            };
        }
        entry.failures += 1;
        if entry.failures < self.limit {
            return None;
        }
        entry.locked_until = Some(now + self.lockout);
        Some(Lockout {
            client: key,
            failures: entry.failures,
            duration: self.lockout,
        })
    }

    /// Forgets addresses whose window and lockout are over.
    pub fn sweep(&self) {
        let now = Instant::now();
        let (window, mut entries) = (self.window, self.entries());
        entries.retain(|_, e| Self::live(e, now, window));
    }

    /// How many addresses are remembered.
    pub fn tracked(&self) -> usize {
        self.entries().len()
    }

    fn live(e: &Entry, now: Instant, window: Duration) -> bool {
        match e.locked_until {
            Some(until) => until > now,
            None => e.window_start + window > now,
        }
    }

    fn make_room(&self, entries: &mut HashMap<IpAddr, Entry>, now: Instant) {
        entries.retain(|_, e| Self::live(e, now, self.window));
        if entries.len() < self.max_tracked {
            return;
        }
        // Still full of live entries: forget the oldest one that is not locked out (locked
        // addresses stay locked; a flood of fresh addresses only evicts other counters).
        let oldest = entries
            .iter()
            .filter(|(_, e)| e.locked_until.is_none())
            .min_by_key(|(_, e)| e.window_start)
            .map(|(k, _)| *k);
        match oldest {
            Some(k) => {
                entries.remove(&k);
            }
            None => {
                let first = entries
                    .iter()
                    .min_by_key(|(_, e)| e.locked_until)
                    .map(|(k, _)| *k);
                if let Some(k) = first {
                    entries.remove(&k);
                }
            }
        }
    }
}

/// The credential lockout as the listeners use it: a [`Throttle`] that counts refusals in the
/// metrics and audits each lockout once (in the tenant the attempt named, when it named one).
#[derive(Debug)]
pub struct Guard {
    throttle: Throttle,
    window: Duration,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    db: crate::store::Db,
}

impl Guard {
    pub fn new(
        throttle: Throttle,
        window: Duration,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
        db: crate::store::Db,
    ) -> Self {
        Self {
            throttle,
            window,
            metrics,
            db,
        }
    }

    /// Whether `peer` may present credentials now; `Err(retry_after)` while it is locked out.
    pub fn allowed(&self, peer: std::net::SocketAddr) -> Result<(), Duration> {
        let allowed = self.throttle.check(peer.ip());
        if allowed.is_err() {
            self.metrics
                .auth_throttled
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        allowed
    }

    /// Counts an unknown token or API key presented by `peer`. When that starts a lockout, it
    /// is logged and audited once, in `tenant`, with `what` for people; never the credential.
    pub fn failed(
        &self,
        peer: std::net::SocketAddr,
        tenant: Option<crate::store::TenantId>,
        what: &str,
    ) {
        let Some(lockout) = self.throttle.failed(peer.ip()) else {
            return;
        };
        self.metrics
            .auth_lockouts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let detail = format!(
            "{} failed credentials from {} within {}s (last: {what}); refused for {}s",
            lockout.failures,
            lockout.client,
            self.window.as_secs(),
            lockout.duration.as_secs()
        );
        tracing::warn!(client = %lockout.client, failures = lockout.failures, "token guessing: address locked out");
        let mut ev = crate::store::NewEvent::new(crate::store::AuditKind::TokenGuessing, detail);
        ev.tenant_id = tenant;
        ev.peer_addr = Some(peer.to_string());
        self.db.audit(ev);
    }

    /// Forgets addresses whose window and lockout are over.
    pub fn sweep(&self) {
        self.throttle.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn locks_out_after_the_limit_then_forgives() {
        let t = Throttle::new(3, Duration::from_secs(60), Duration::from_secs(30));
        let a = ip("192.0.2.1");
        assert_eq!(t.failed(a), None);
        assert_eq!(t.failed(a), None);
        assert!(t.check(a).is_ok());
        let lockout = t.failed(a).expect("third failure locks out");
        assert_eq!(lockout.failures, 3);
        assert_eq!(t.check(a), Err(Duration::from_secs(30)));
        // Further failures during the lockout start no new episode and do not extend it.
        assert_eq!(t.failed(a), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(t.check(a), Err(Duration::from_secs(20)));
        // Another address is unaffected.
        assert!(t.check(ip("192.0.2.2")).is_ok());
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(t.check(a).is_ok());
        // A new episode needs the full count again.
        assert_eq!(t.failed(a), None);
        assert!(t.check(a).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_spread_over_windows_do_not_add_up() {
        let t = Throttle::new(3, Duration::from_secs(60), Duration::from_secs(30));
        let a = ip("192.0.2.1");
        t.failed(a);
        t.failed(a);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(t.failed(a), None);
        assert!(t.check(a).is_ok());
        t.sweep();
        assert_eq!(t.tracked(), 1);
        tokio::time::advance(Duration::from_secs(61)).await;
        t.sweep();
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let t = Throttle::new(2, Duration::from_secs(60), Duration::from_secs(30));
        t.failed(ip("2001:db8:1:2::1"));
        assert!(t.failed(ip("2001:db8:1:2:ffff::9")).is_some());
        assert!(t.check(ip("2001:db8:1:2::77")).is_err());
        assert!(t.check(ip("2001:db8:1:3::1")).is_ok());
        t.failed(ip("::ffff:192.0.2.7"));
        assert!(t.failed(ip("192.0.2.7")).is_some());
    }

    #[test]
    fn memory_is_bounded_and_lockouts_survive_a_flood() {
        let t = Throttle::with_capacity(2, Duration::from_secs(60), Duration::from_secs(30), 8);
        let victim = ip("198.51.100.1");
        t.failed(victim);
        assert!(t.failed(victim).is_some());
        for i in 0..100u8 {
            t.failed(IpAddr::from([203, 0, 113, i]));
        }
        assert!(t.tracked() <= 8);
        assert!(t.check(victim).is_err(), "a flood evicted a lockout");
    }

    #[test]
    fn zero_disables() {
        let t = Throttle::new(0, Duration::from_secs(60), Duration::from_secs(30));
        for _ in 0..100 {
            assert_eq!(t.failed(ip("192.0.2.1")), None);
        }
        assert!(t.check(ip("192.0.2.1")).is_ok());
        assert_eq!(t.tracked(), 0);
    }
}
