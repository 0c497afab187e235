//! Who may start an SSH handshake: per-source limits applied before any key-exchange work, as
//! OpenSSH does with `PerSourceMaxStartups` and `PerSourcePenalties`.
//!
//! - [`ConnectionRate`]: a token bucket per source (an IPv4 address or an IPv6 /64, see
//!   [`crate::throttle::client_key`]) for *new* connections: `burst` at once, then `rate` per
//!   second. It answers the DHEat attack (many cheap connections, each costing the server a
//!   key exchange).
//! - [`PreauthSlots`]: how many connections of one source are before authentication at once, so
//!   one host cannot hold every pre-authentication slot and lock the fleet out of reconnecting.
//!
//! A refused connection gets OpenSSH's "Not allowed at this time" line and is closed, before the
//! broker's banner. Memory is bounded: at most [`MAX_SOURCES`] sources are remembered by each.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::throttle::client_key;

/// Sources remembered at most by each limiter.
pub(crate) const MAX_SOURCES: usize = 10_000;

/// What OpenSSH's sshd writes to a source it penalises, before closing; ssh-audit knows it.
pub(crate) const REFUSAL_LINE: &[u8] = b"Not allowed at this time\r\n";

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// New connections per source: a token bucket each.
#[derive(Debug)]
pub(crate) struct ConnectionRate {
    burst: f64,
    per_sec: f64,
    max_sources: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl ConnectionRate {
    /// `burst` connections at once, refilled at `per_sec`; `burst == 0` admits everyone.
    pub(crate) fn new(burst: u32, per_sec: f64) -> Self {
        Self::with_capacity(burst, per_sec, MAX_SOURCES)
    }

    fn with_capacity(burst: u32, per_sec: f64, max_sources: usize) -> Self {
        Self {
            burst: f64::from(burst),
            per_sec: per_sec.max(f64::MIN_POSITIVE),
            max_sources: max_sources.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for a new connection from `ip`; `Err(wait)` when there is none, with how
    /// long until the next one.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.burst == 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let key = client_key(ip);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&key) && buckets.len() >= self.max_sources {
            // Full buckets carry no information: forget them first, then the fullest one.
            let (burst, per_sec) = (self.burst, self.per_sec);
            buckets.retain(|_, b| Self::level(b, now, burst, per_sec) < burst);
            if buckets.len() >= self.max_sources {
                let fullest = buckets
                    .iter()
                    .max_by(|a, b| {
                        let la = Self::level(a.1, now, burst, per_sec);
                        la.total_cmp(&Self::level(b.1, now, burst, per_sec))
                    })
                    .map(|(k, _)| *k);
                if let Some(k) = fullest {
                    buckets.remove(&k);
                }
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = Self::level(bucket, now, self.burst, self.per_sec);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_sec,
            ))
        }
    }

    fn level(b: &Bucket, now: Instant, burst: f64, per_sec: f64) -> f64 {
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * per_sec;
        (b.tokens + refill).min(burst)
    }

    /// Forgets sources whose bucket is full again.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let (burst, per_sec) = (self.burst, self.per_sec);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets.retain(|_, b| Self::level(b, now, burst, per_sec) < burst);
    }

    /// How many sources are remembered.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Connections before authentication, per source.
#[derive(Debug, Default)]
pub(crate) struct PreauthSlots {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place in [`PreauthSlots`]; given back when dropped (at authentication or at
/// the end of the connection, whichever comes first).
#[derive(Debug)]
pub(crate) struct PreauthSlot {
    slots: Arc<PreauthSlots>,
    key: IpAddr,
}

impl PreauthSlots {
    /// A slot for `ip`, unless it already holds `max` (0 = no cap; a source is still counted).
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PreauthSlot> {
        let key = client_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if max > 0 && open.get(&key).copied().unwrap_or(0) >= max {
            return None;
        }
        // Each held slot is one entry at most: the map's size is bounded by the connection cap.
        *open.entry(key).or_insert(0) += 1;
        Some(PreauthSlot {
            slots: self.clone(),
            key,
        })
    }

    /// Connections of `ip`'s source before authentication.
    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&client_key(ip)).copied().unwrap_or(0)
    }
}

impl Drop for PreauthSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_steady_rate() {
        let r = ConnectionRate::new(3, 2.0);
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(r.admit(a).is_ok());
        }
        let wait = r.admit(a).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Other sources are not concerned; a /64 is one source.
        assert!(r.admit(ip("192.0.2.2")).is_ok());
        let v6 = ip("2001:db8:1:2::1");
        for _ in 0..3 {
            assert!(r.admit(v6).is_ok());
        }
        assert!(r.admit(ip("2001:db8:1:2::ffff")).is_err());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(r.admit(a).is_ok(), "one token back after 1/rate");
        assert!(r.admit(a).is_err());
        // The DHEat test: 38 connections as fast as possible, over 1.5 s, get at most the burst
        // plus 1.5 s of refill.
        let b = ip("198.51.100.1");
        let mut admitted = 0;
        for i in 0..38 {
            if i % 10 == 0 {
                tokio::time::advance(Duration::from_millis(375)).await;
            }
            admitted += usize::from(r.admit(b).is_ok());
        }
        assert!(admitted <= 3 + 3, "{admitted}");
        tokio::time::advance(Duration::from_secs(10)).await;
        r.sweep();
        assert_eq!(r.tracked(), 0, "full buckets are forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded_and_a_drained_source_stays_drained() {
        let r = ConnectionRate::with_capacity(2, 1.0, 8);
        let victim = ip("203.0.113.1");
        r.admit(victim).unwrap();
        r.admit(victim).unwrap();
        for i in 0..100u8 {
            let _ = r.admit(IpAddr::from([198, 51, 100, i]));
        }
        assert!(r.tracked() <= 8);
        assert!(r.admit(victim).is_err(), "a flood reset a drained bucket");
    }

    #[test]
    fn zero_burst_admits_everyone() {
        let r = ConnectionRate::new(0, 1.0);
        for _ in 0..1000 {
            assert!(r.admit(ip("192.0.2.1")).is_ok());
        }
        assert_eq!(r.tracked(), 0);
    }

    #[test]
    fn preauth_slots_per_source() {
        let slots = Arc::new(PreauthSlots::default());
        let a = ip("192.0.2.1");
        let one = slots.take(a, 2).unwrap();
        let two = slots.take(a, 2).unwrap();
        assert!(slots.take(a, 2).is_none());
        assert!(slots.take(ip("192.0.2.2"), 2).is_some());
        drop(one);
        assert_eq!(slots.held(a), 1);
        let _three = slots.take(a, 2).unwrap();
        drop(two);
        assert!(slots.take(a, 0).is_some(), "0 = no cap");
    }
}
