//! Counters for `GET /metrics`, in Prometheus' text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use passerelle_proto::close::{ALL_REASONS as REASONS, EndReason};

/// Process-wide counters. Gauges (agents online, sessions live) are read from their owners.
#[derive(Debug, Default)]
pub struct Metrics {
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub sessions_created: AtomicU64,
    pub auth_failures: AtomicU64,
    pub token_failures: AtomicU64,
    pub refused_requests: AtomicU64,
    pub agent_connections: AtomicU64,
    /// HTTP connections open now (a gauge kept here because the accept loop owns it).
    pub http_connections_open: AtomicU64,
    pub http_connections_refused: AtomicU64,
    pub http_header_timeouts: AtomicU64,
    pub http_handshake_timeouts: AtomicU64,
    pub auth_lockouts: AtomicU64,
    pub auth_throttled: AtomicU64,
    /// SSH connections refused before the banner (per-source rate, pre-auth cap, lockout).
    pub ssh_connections_refused: AtomicU64,
    ended: [AtomicU64; REASONS.len()],
}

impl Metrics {
    /// Counts an ended session.
    pub fn session_ended(&self, reason: EndReason) {
        if let Some(i) = REASONS.iter().position(|r| *r == reason) {
            self.ended[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The exposition text.
    pub fn render(&self, agents_online: usize, sessions_live: usize) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metric(
            "passerelle_agents_online",
            "gauge",
            "Agents with a live SSH connection.",
            agents_online as u64,
        );
        metric(
            "passerelle_sessions_active",
            "gauge",
            "Sessions created and not yet ended.",
            sessions_live as u64,
        );
        metric(
            "passerelle_sessions_created_total",
            "counter",
            "Sessions created.",
            get(&self.sessions_created),
        );
        metric(
            "passerelle_bytes_up_total",
            "counter",
            "Bytes from viewers to workstations.",
            get(&self.bytes_up),
        );
        metric(
            "passerelle_bytes_down_total",
            "counter",
            "Bytes from workstations to viewers.",
            get(&self.bytes_down),
        );
        metric(
            "passerelle_agent_connections_total",
            "counter",
            "Authenticated agent connections.",
            get(&self.agent_connections),
        );
        metric(
            "passerelle_auth_failures_total",
            "counter",
            "Failed agent authentications.",
            get(&self.auth_failures),
        );
        metric(
            "passerelle_token_failures_total",
            "counter",
            "Refused viewer tokens.",
            get(&self.token_failures),
        );
        metric(
            "passerelle_refused_requests_total",
            "counter",
            "Refused agent SSH requests.",
            get(&self.refused_requests),
        );
        metric(
            "passerelle_http_connections_open",
            "gauge",
            "HTTP connections open, WebSockets included.",
            get(&self.http_connections_open),
        );
        metric(
            "passerelle_http_connections_refused_total",
            "counter",
            "HTTP connections closed at once: over the global or per-address cap.",
            get(&self.http_connections_refused),
        );
        metric(
            "passerelle_http_header_timeouts_total",
            "counter",
            "HTTP connections closed for not sending a request header in time.",
            get(&self.http_header_timeouts),
        );
        metric(
            "passerelle_tls_handshake_timeouts_total",
            "counter",
            "Connections closed for not finishing the TLS handshake in time.",
            get(&self.http_handshake_timeouts),
        );
        metric(
            "passerelle_auth_lockouts_total",
            "counter",
            "Addresses locked out for presenting too many unknown tokens or API keys.",
            get(&self.auth_lockouts),
        );
        metric(
            "passerelle_auth_throttled_total",
            "counter",
            "Requests and viewers refused because their address was locked out.",
            get(&self.auth_throttled),
        );
        metric(
            "passerelle_ssh_connections_refused_total",
            "counter",
            "SSH connections refused before the banner: per-source rate or pre-authentication cap \
             exceeded, or the source locked out for rejected keys.",
            get(&self.ssh_connections_refused),
        );
        let _ = writeln!(
            out,
            "# HELP passerelle_sessions_ended_total Sessions ended, by reason.\n\
             # TYPE passerelle_sessions_ended_total counter"
        );
        for (reason, count) in REASONS.iter().zip(&self.ended) {
            let _ = writeln!(
                out,
                "passerelle_sessions_ended_total{{reason=\"{reason}\"}} {}",
                get(count)
            );
        }
        out
    }
}

/// Prometheus text with `key="value"` added to every sample (a cluster node's `node` label;
/// node names hold no quote or backslash).
pub(crate) fn labelled(text: &str, key: &str, value: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            out.push_str(line);
        } else if let Some((name, rest)) = line.split_once('{') {
            let _ = write!(out, "{name}{{{key}=\"{value}\",{rest}");
        } else if let Some((name, rest)) = line.split_once(' ') {
            let _ = write!(out, "{name}{{{key}=\"{value}\"}} {rest}");
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_label_goes_on_every_sample() {
        let text = "# HELP a x\na 1\nb{reason=\"stopped\"} 2\n";
        assert_eq!(
            labelled(text, "node", "n1"),
            "# HELP a x\na{node=\"n1\"} 1\nb{node=\"n1\",reason=\"stopped\"} 2\n"
        );
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.session_ended(EndReason::Stopped);
        m.bytes_up.fetch_add(42, Ordering::Relaxed);
        let text = m.render(3, 1);
        assert!(text.contains("passerelle_agents_online 3\n"));
        assert!(text.contains("passerelle_bytes_up_total 42\n"));
        assert!(text.contains("passerelle_sessions_ended_total{reason=\"stopped\"} 1\n"));
        assert!(
            text.lines()
                .all(|l| l.starts_with('#') || l.split_whitespace().count() == 2)
        );
    }
}
