//! Configuration: the TOML file's shape, the defaults, and the validated runtime [`Config`].
//!
//! Precedence is CLI flag > environment variable > config file > default. `main.rs` parses the
//! flags (clap, each with an env var) into a [`FileConfig`]-shaped overlay; [`FileConfig::merge`]
//! applies it over the file and [`FileConfig::into_config`] validates the result.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

pub use crate::netaddr::Cidr;

/// How the HTTP listener speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain HTTP (behind a TLS-terminating proxy, or in tests).
    Insecure,
    /// HTTPS with a self-signed certificate created in the data dir on first start.
    SelfSigned,
    /// HTTPS with the given PEM certificate chain and private key.
    Files { cert: PathBuf, key: PathBuf },
}

/// The broker's validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the SQLite store, host key, certificate and admin key live.
    pub data_dir: PathBuf,
    /// The PostgreSQL store (`store_url`); `None` for SQLite in the data dir. Its `Debug` hides
    /// the password.
    pub store_url: Option<crate::store::PgUrl>,
    /// Where agents connect (SSH).
    pub ssh_listen: SocketAddr,
    /// Where the console, browsers and the desktop helper connect (HTTP/WS).
    pub http_listen: SocketAddr,
    /// HTTPS or not.
    pub tls: TlsMode,
    /// The base URL put in `viewer_url` & co; derived from the bound address when `None`.
    pub public_url: Option<String>,
    /// Lifetime of a viewer token.
    pub token_ttl: Duration,
    /// Keepalive period toward agents; `keepalive_max` unanswered ones end the connection.
    pub keepalive_interval: Duration,
    /// See `keepalive_interval`.
    pub keepalive_max: usize,
    /// How long a viewer waits for a legacy agent to connect.
    pub legacy_wait: Duration,
    /// A session nobody joined ends (`not_joined`) after this.
    pub join_grace: Duration,
    /// Bytes a session may hold for a viewer that reads slowly before it is ended.
    pub session_buffer_bytes: usize,
    /// Largest WebSocket frame or message a viewer may send.
    pub max_ws_message_bytes: usize,
    /// SSH version exchange, key exchange and authentication must be done within this.
    pub preauth_timeout: Duration,
    /// Remote forwards one agent connection may hold.
    pub max_forwards_per_connection: usize,
    /// Agent connections at once (pre- and post-authentication).
    pub max_agent_connections: usize,
    /// Threads that carry agent connections and their sessions' data (0 = one per CPU).
    pub data_threads: usize,
    /// Lifetime of a session when the API call gives none.
    pub default_session_ttl: Duration,
    /// Upper bound for `ttl_secs`.
    pub max_session_ttl: Duration,
    /// How long a graceful shutdown waits for tasks before giving up on them.
    pub shutdown_grace: Duration,
    /// Where recordings are written (`<data_dir>/recordings` by default).
    pub recordings_dir: PathBuf,
    /// Bytes a recording may queue for a slow disk before it fails.
    pub recording_buffer_bytes: usize,
    /// Bytes all recordings together may queue before the one that goes over fails.
    pub recording_buffer_total_bytes: usize,
    /// Threads that write recordings (however many sessions are recorded).
    pub recording_writer_threads: usize,
    /// HTTP connections open at once (before and after TLS, WebSockets included); more are
    /// accepted and closed at once.
    pub http_max_connections: usize,
    /// HTTP connections open at once from one address (an IPv6 /64 counts as one); 0 for no
    /// per-address cap (e.g. behind a reverse proxy, where every client has its address).
    pub http_max_connections_per_ip: usize,
    /// A request's header must arrive in full within this (slow-loris); also the longest a
    /// kept-alive connection may sit idle between requests.
    pub http_header_timeout: Duration,
    /// The TLS handshake must be done within this.
    pub tls_handshake_timeout: Duration,
    /// A request, its body included, must be received and answered within this (a slow body
    /// is the header timeout's blind spot). WebSockets are not concerned once upgraded.
    pub http_request_timeout: Duration,
    /// Failed credentials (unknown viewer or launch tokens, unknown API keys) one address may
    /// present within `auth_failure_window` before it is locked out; 0 turns the limit off.
    pub auth_failure_limit: u32,
    /// See `auth_failure_limit`.
    pub auth_failure_window: Duration,
    /// How long a locked-out address is refused, even with valid credentials.
    pub auth_lockout: Duration,
    /// New SSH connections one source (an IPv4 address or an IPv6 /64) may open at once before
    /// [`Config::ssh_connections_per_source_per_sec`] paces it (a token bucket); 0 = no limit.
    pub ssh_connection_burst_per_source: u32,
    /// The steady rate of new SSH connections allowed per source, once the burst is spent.
    pub ssh_connections_per_source_per_sec: f64,
    /// SSH connections from one source that may be before authentication at once; 0 = no cap.
    pub max_preauth_per_source: usize,
    /// Rejected SSH key offers one source may make within `auth_failure_window` before it is
    /// refused for `auth_lockout`; 0 turns the limit off.
    pub ssh_auth_failure_limit: u32,
    /// Audit events older than this many days are deleted (at start and hourly); 0 keeps them.
    pub audit_retention_days: u32,
    /// How long a console sign-in (OpenID Connect) lasts before the person signs in again.
    pub console_session_ttl: Duration,
    /// Reverse proxies (HAProxy, nginx...) whose word on the client's address is believed:
    /// `X-Forwarded-For` on the HTTP listener, a PROXY protocol v2 header on the SSH listener
    /// (required from them there).
    pub trusted_proxies: Vec<Cidr>,
    /// A viewer that takes nothing for this long while its session's buffer is full ends the
    /// session (`viewer_too_slow`); a slower one only slows the transfer down.
    pub viewer_stall: Duration,
    /// Per-tenant caps.
    pub quotas: Quotas,
    /// A listener of its own for `/metrics` (plain HTTP, e.g. `127.0.0.1:9100`); the public
    /// listener's `/metrics` then answers 404.
    pub metrics_listen: Option<SocketAddr>,
    /// A bearer token `/metrics` requires (wherever it is served); without it, 404.
    pub metrics_token: Option<Secret>,
    /// This broker is one node of a cluster (`cluster_dir`, `node_name`, `node_url`).
    pub cluster: Option<ClusterConfig>,
}

/// One node of a cluster: the shared identity and how the other nodes reach this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The directory `passerelle cluster init` wrote (host key, certificate, sealing key,
    /// recording key, node-link secret), copied to every node.
    pub dir: PathBuf,
    /// This node's name, unique in the cluster (default: the host name).
    pub node_name: String,
    /// Where the other nodes reach this node's HTTP listener; derived from the bound address
    /// when `None`.
    pub node_url: Option<String>,
}

impl Config {
    /// Where the broker's identity lives: the cluster's shared directory, else the data dir.
    pub fn identity_dir(&self) -> &Path {
        self.cluster.as_ref().map_or(&self.data_dir, |c| &c.dir)
    }

    /// This node's name (`local` for a single broker).
    pub fn node_name(&self) -> &str {
        self.cluster.as_ref().map_or("local", |c| &c.node_name)
    }
}

/// A secret from the configuration: hidden from `Debug`, compared in constant time.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that uses it (never to log).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this secret (constant time: both sides are hashed first, so
    /// neither their bytes nor the secret's length show in the timing).
    pub fn matches(&self, presented: &str) -> bool {
        crate::secrets::ct_eq(
            &crate::secrets::hash(&self.0),
            &crate::secrets::hash(presented),
        )
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Caps that keep one tenant from taking the broker; the defaults are far above what a large
/// tenant uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    /// Live sessions of a tenant.
    pub sessions_per_tenant: usize,
    /// Sessions of a tenant that nobody joined yet (legacy ones included).
    pub pending_sessions_per_tenant: usize,
    /// Connections open at once to one session (a launch token may reconnect, not flood).
    pub connections_per_session: usize,
    /// Agents registered in a tenant.
    pub agents_per_tenant: usize,
}

impl Config {
    /// Defaults for a data dir, listening where the design says.
    pub fn with_data_dir(data_dir: &Path) -> Self {
        FileConfig::default()
            .into_config_at(data_dir.to_path_buf())
            .unwrap_or_else(|_| unreachable!("the built-in defaults are valid"))
    }

    /// A broker for tests: loopback, ports chosen by the OS, plain HTTP, short waits.
    pub fn for_tests(data_dir: &Path) -> Self {
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        Self {
            ssh_listen: loopback,
            http_listen: loopback,
            tls: TlsMode::Insecure,
            preauth_timeout: Duration::from_secs(10),
            legacy_wait: Duration::from_secs(10),
            // Every test client comes from 127.0.0.1: tests that check these limits set them.
            ssh_connection_burst_per_source: 0,
            ssh_auth_failure_limit: 0,
            shutdown_grace: Duration::from_secs(3),
            ..Self::with_data_dir(data_dir)
        }
    }
}

/// The TOML file (`passerelle serve --config FILE`). Every key is optional.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    /// `postgres://user:password@host:port/database` (a secret: it may hold a password).
    pub store_url: Option<Secret>,
    pub ssh_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub insecure_http: Option<bool>,
    pub public_url: Option<String>,
    pub token_ttl_secs: Option<u64>,
    pub keepalive_interval_secs: Option<u64>,
    pub keepalive_max: Option<usize>,
    pub legacy_wait_secs: Option<u64>,
    pub join_grace_secs: Option<u64>,
    pub session_buffer_bytes: Option<usize>,
    pub max_ws_message_bytes: Option<usize>,
    pub preauth_timeout_secs: Option<u64>,
    pub max_forwards_per_connection: Option<usize>,
    pub max_agent_connections: Option<usize>,
    pub data_threads: Option<usize>,
    pub default_session_ttl_secs: Option<u64>,
    pub max_session_ttl_secs: Option<u64>,
    pub recordings_dir: Option<PathBuf>,
    pub recording_buffer_bytes: Option<usize>,
    pub recording_buffer_total_bytes: Option<usize>,
    pub recording_writer_threads: Option<usize>,
    pub http_max_connections: Option<usize>,
    pub http_max_connections_per_ip: Option<usize>,
    pub http_header_timeout_secs: Option<u64>,
    pub tls_handshake_timeout_secs: Option<u64>,
    pub http_request_timeout_secs: Option<u64>,
    pub auth_failure_limit: Option<u32>,
    pub auth_failure_window_secs: Option<u64>,
    pub auth_lockout_secs: Option<u64>,
    pub ssh_connection_burst_per_source: Option<u32>,
    pub ssh_connections_per_source_per_sec: Option<f64>,
    pub max_preauth_per_source: Option<usize>,
    pub ssh_auth_failure_limit: Option<u32>,
    pub audit_retention_days: Option<u32>,
    pub console_session_secs: Option<u64>,
    pub trusted_proxies: Option<Vec<String>>,
    pub viewer_stall_secs: Option<u64>,
    pub max_sessions_per_tenant: Option<usize>,
    pub max_pending_sessions_per_tenant: Option<usize>,
    pub max_connections_per_session: Option<usize>,
    pub max_agents_per_tenant: Option<usize>,
    pub metrics_listen: Option<SocketAddr>,
    pub metrics_token: Option<Secret>,
    pub cluster_dir: Option<PathBuf>,
    pub node_name: Option<String>,
    pub node_url: Option<String>,
}

macro_rules! overlay {
    ($base:ident, $over:ident, $($field:ident),*) => {
        $( if $over.$field.is_some() { $base.$field = $over.$field; } )*
    };
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    /// `over`'s set keys replace this file's.
    pub fn merge(mut self, over: FileConfig) -> Self {
        overlay!(
            self,
            over,
            data_dir,
            store_url,
            ssh_listen,
            http_listen,
            tls_cert,
            tls_key,
            insecure_http,
            public_url,
            token_ttl_secs,
            keepalive_interval_secs,
            keepalive_max,
            legacy_wait_secs,
            join_grace_secs,
            session_buffer_bytes,
            max_ws_message_bytes,
            preauth_timeout_secs,
            max_forwards_per_connection,
            max_agent_connections,
            data_threads,
            default_session_ttl_secs,
            max_session_ttl_secs,
            recordings_dir,
            recording_buffer_bytes,
            recording_buffer_total_bytes,
            recording_writer_threads,
            http_max_connections,
            http_max_connections_per_ip,
            http_header_timeout_secs,
            tls_handshake_timeout_secs,
            http_request_timeout_secs,
            auth_failure_limit,
            auth_failure_window_secs,
            auth_lockout_secs,
            ssh_connection_burst_per_source,
            ssh_connections_per_source_per_sec,
            max_preauth_per_source,
            ssh_auth_failure_limit,
            audit_retention_days,
            console_session_secs,
            trusted_proxies,
            viewer_stall_secs,
            max_sessions_per_tenant,
            max_pending_sessions_per_tenant,
            max_connections_per_session,
            max_agents_per_tenant,
            metrics_listen,
            metrics_token,
            cluster_dir,
            node_name,
            node_url
        );
        self
    }

    /// Validates into a runtime [`Config`].
    pub fn into_config(self) -> anyhow::Result<Config> {
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./passerelle-data"));
        self.into_config_at(dir)
    }

    fn into_config_at(self, data_dir: PathBuf) -> anyhow::Result<Config> {
        let secs = |v: Option<u64>, d: u64| Duration::from_secs(v.unwrap_or(d));
        let tls = match (
            self.insecure_http.unwrap_or(false),
            self.tls_cert,
            self.tls_key,
        ) {
            (true, None, None) => TlsMode::Insecure,
            (true, _, _) => bail!("--insecure-http and --tls-cert/--tls-key exclude each other"),
            (false, Some(cert), Some(key)) => TlsMode::Files { cert, key },
            (false, None, None) => TlsMode::SelfSigned,
            (false, _, _) => bail!("--tls-cert and --tls-key go together"),
        };
        if let Some(url) = &self.public_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            bail!("public_url must start with https:// or http://, got {url:?}");
        }
        let store_url = self
            .store_url
            .as_ref()
            .map(|u| crate::store::PgUrl::parse(u.expose()))
            .transpose()
            .context("store_url")?;
        let cluster = cluster_config(
            self.cluster_dir,
            self.node_name,
            self.node_url,
            store_url.is_some(),
        )?;
        let config = Config {
            cluster,
            store_url,
            ssh_listen: self
                .ssh_listen
                .unwrap_or_else(|| ([0, 0, 0, 0], 2222).into()),
            http_listen: self
                .http_listen
                .unwrap_or_else(|| ([0, 0, 0, 0], 8443).into()),
            tls,
            public_url: self.public_url.map(|u| u.trim_end_matches('/').to_owned()),
            token_ttl: secs(self.token_ttl_secs, 60),
            keepalive_interval: secs(self.keepalive_interval_secs, 15),
            keepalive_max: self.keepalive_max.unwrap_or(2),
            legacy_wait: secs(self.legacy_wait_secs, 30),
            join_grace: secs(self.join_grace_secs, 300),
            session_buffer_bytes: self.session_buffer_bytes.unwrap_or(8 << 20),
            max_ws_message_bytes: self.max_ws_message_bytes.unwrap_or(1 << 20),
            preauth_timeout: secs(self.preauth_timeout_secs, 20),
            max_forwards_per_connection: self.max_forwards_per_connection.unwrap_or(16),
            max_agent_connections: self.max_agent_connections.unwrap_or(20_000),
            data_threads: self.data_threads.unwrap_or(0),
            default_session_ttl: secs(self.default_session_ttl_secs, 8 * 3600),
            max_session_ttl: secs(self.max_session_ttl_secs, 24 * 3600),
            shutdown_grace: Duration::from_secs(10),
            recordings_dir: self
                .recordings_dir
                .unwrap_or_else(|| data_dir.join("recordings")),
            recording_buffer_bytes: self.recording_buffer_bytes.unwrap_or(32 << 20),
            recording_buffer_total_bytes: self.recording_buffer_total_bytes.unwrap_or(512 << 20),
            recording_writer_threads: self.recording_writer_threads.unwrap_or(2).clamp(1, 64),
            http_max_connections: self.http_max_connections.unwrap_or(4096),
            http_max_connections_per_ip: self.http_max_connections_per_ip.unwrap_or(256),
            http_header_timeout: secs(self.http_header_timeout_secs, 10),
            tls_handshake_timeout: secs(self.tls_handshake_timeout_secs, 10),
            http_request_timeout: secs(self.http_request_timeout_secs, 30),
            auth_failure_limit: self.auth_failure_limit.unwrap_or(20),
            auth_failure_window: secs(self.auth_failure_window_secs, 60),
            auth_lockout: secs(self.auth_lockout_secs, 60),
            ssh_connection_burst_per_source: self.ssh_connection_burst_per_source.unwrap_or(20),
            ssh_connections_per_source_per_sec: self
                .ssh_connections_per_source_per_sec
                .unwrap_or(5.0),
            max_preauth_per_source: self.max_preauth_per_source.unwrap_or(64),
            ssh_auth_failure_limit: self.ssh_auth_failure_limit.unwrap_or(30),
            audit_retention_days: self.audit_retention_days.unwrap_or(400),
            console_session_ttl: secs(self.console_session_secs, 8 * 3600),
            trusted_proxies: self
                .trusted_proxies
                .unwrap_or_default()
                .iter()
                .map(|c| c.parse::<Cidr>())
                .collect::<Result<_, _>>()
                .context("trusted_proxies")?,
            viewer_stall: secs(self.viewer_stall_secs, 30),
            quotas: Quotas {
                sessions_per_tenant: self.max_sessions_per_tenant.unwrap_or(10_000),
                pending_sessions_per_tenant: self.max_pending_sessions_per_tenant.unwrap_or(2_000),
                connections_per_session: self.max_connections_per_session.unwrap_or(32),
                agents_per_tenant: self.max_agents_per_tenant.unwrap_or(200_000),
            },
            metrics_listen: self.metrics_listen,
            metrics_token: self.metrics_token,
            data_dir,
        };
        if config.token_ttl.is_zero() || config.keepalive_interval.is_zero() {
            bail!("token_ttl_secs and keepalive_interval_secs must be at least 1");
        }
        if config.session_buffer_bytes < 64 * 1024 || config.max_ws_message_bytes < 1024 {
            bail!("session_buffer_bytes must be at least 65536 and max_ws_message_bytes 1024");
        }
        if config.http_max_connections == 0
            || config.http_header_timeout.is_zero()
            || config.tls_handshake_timeout.is_zero()
            || config.http_request_timeout.is_zero()
        {
            bail!(
                "http_max_connections, http_header_timeout_secs, tls_handshake_timeout_secs and \
                 http_request_timeout_secs must be at least 1"
            );
        }
        if config.auth_failure_limit > 0
            && (config.auth_failure_window.is_zero() || config.auth_lockout.is_zero())
        {
            bail!("auth_failure_window_secs and auth_lockout_secs must be at least 1");
        }
        if !(config.ssh_connections_per_source_per_sec.is_finite()
            && config.ssh_connections_per_source_per_sec > 0.0)
        {
            bail!("ssh_connections_per_source_per_sec must be a number above 0");
        }
        let q = &config.quotas;
        if config.viewer_stall.is_zero()
            || q.sessions_per_tenant == 0
            || q.pending_sessions_per_tenant == 0
            || q.connections_per_session == 0
            || q.agents_per_tenant == 0
        {
            bail!("viewer_stall_secs and the max_* quotas must be at least 1");
        }
        if let Some(token) = &config.metrics_token
            && (token.0.len() < 16 || token.0.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            bail!("metrics_token must be at least 16 characters, without spaces");
        }
        if config.default_session_ttl > config.max_session_ttl {
            bail!("default_session_ttl_secs exceeds max_session_ttl_secs");
        }
        Ok(config)
    }
}

/// Checks the cluster keys: all or nothing but `node_url`, and only over PostgreSQL.
fn cluster_config(
    dir: Option<PathBuf>,
    node_name: Option<String>,
    node_url: Option<String>,
    on_postgres: bool,
) -> anyhow::Result<Option<ClusterConfig>> {
    let Some(dir) = dir else {
        if node_name.is_some() || node_url.is_some() {
            bail!("node_name and node_url need cluster_dir");
        }
        return Ok(None);
    };
    if !on_postgres {
        bail!("cluster_dir needs store_url: the nodes of a cluster share a PostgreSQL store");
    }
    let node_name = match node_name {
        Some(n) => n,
        None => nix::unistd::gethostname()
            .context("reading the host name for node_name")?
            .to_string_lossy()
            .into_owned(),
    };
    let name_ok = !node_name.is_empty()
        && node_name.len() <= 63
        && node_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !name_ok {
        bail!("node_name must be 1 to 63 letters, digits, '.', '_' or '-', got {node_name:?}");
    }
    if let Some(url) = &node_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        bail!("node_url must start with https:// or http://, got {url:?}");
    }
    Ok(Some(ClusterConfig {
        dir,
        node_name,
        node_url: node_url.map(|u| u.trim_end_matches('/').to_owned()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let c = FileConfig::default().into_config().unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./passerelle-data"));
        assert_eq!(c.ssh_listen.port(), 2222);
        assert_eq!(c.http_listen.port(), 8443);
        assert_eq!(c.tls, TlsMode::SelfSigned);
        assert_eq!(c.token_ttl, Duration::from_secs(60));
        assert_eq!(c.max_forwards_per_connection, 16);
        assert_eq!(c.http_max_connections, 4096);
        assert_eq!(c.http_header_timeout, Duration::from_secs(10));
        assert_eq!(c.tls_handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.auth_failure_limit, 20);
        // A dead agent is offline within 45 s.
        assert!(c.keepalive_interval * (c.keepalive_max as u32 + 1) <= Duration::from_secs(45));
    }

    #[test]
    fn refuses_unknown_keys_and_contradictions() {
        let err = toml::from_str::<FileConfig>("ssh_listn = \"0.0.0.0:22\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"));
        let both = FileConfig {
            insecure_http: Some(true),
            tls_cert: Some("c".into()),
            tls_key: Some("k".into()),
            ..Default::default()
        };
        assert!(both.into_config().is_err());
        let half = FileConfig {
            tls_cert: Some("c".into()),
            ..Default::default()
        };
        assert!(half.into_config().is_err());
    }

    #[test]
    fn the_metrics_token_is_checked_hidden_and_compared_whole() {
        let short = FileConfig {
            metrics_token: Some(Secret::new("short")),
            ..Default::default()
        };
        assert!(short.into_config().is_err());
        let c = FileConfig {
            metrics_token: Some(Secret::new("0123456789abcdef-scrape")),
            metrics_listen: Some(([127, 0, 0, 1], 9100).into()),
            ..Default::default()
        }
        .into_config()
        .unwrap();
        let token = c.metrics_token.clone().unwrap();
        assert!(token.matches("0123456789abcdef-scrape"));
        assert!(!token.matches("0123456789abcdef-scrap"));
        assert!(!token.matches(""));
        assert!(!format!("{c:?}").contains("scrape"));
    }

    #[test]
    fn flags_override_the_file() {
        let file = FileConfig {
            token_ttl_secs: Some(30),
            ..Default::default()
        };
        let flags = FileConfig {
            token_ttl_secs: Some(5),
            insecure_http: Some(true),
            ..Default::default()
        };
        let c = file.merge(flags).into_config().unwrap();
        assert_eq!(c.token_ttl, Duration::from_secs(5));
        assert_eq!(c.tls, TlsMode::Insecure);
    }

    #[test]
    fn shipped_example_config_parses() {
        // At run time: the compile-time directory may be another checkout's (shared target dir).
        let manifest = std::env::var_os("CARGO_MANIFEST_DIR");
        let manifest = manifest
            .as_deref()
            .map_or(Path::new(env!("CARGO_MANIFEST_DIR")), Path::new);
        let path = manifest.join("../passerelle.example.toml");
        let c = FileConfig::load(&path).unwrap().into_config().unwrap();
        assert_eq!(c.ssh_listen.port(), 2222);
        // The example spells out the defaults.
        let d = FileConfig::default().into_config().unwrap();
        assert_eq!(c.http_max_connections, d.http_max_connections);
        assert_eq!(c.data_threads, d.data_threads);
        assert_eq!(c.http_max_connections_per_ip, d.http_max_connections_per_ip);
        assert_eq!(c.http_header_timeout, d.http_header_timeout);
        assert_eq!(c.tls_handshake_timeout, d.tls_handshake_timeout);
        assert_eq!(c.http_request_timeout, d.http_request_timeout);
        assert_eq!(c.auth_failure_limit, d.auth_failure_limit);
        assert_eq!(c.auth_failure_window, d.auth_failure_window);
        assert_eq!(c.auth_lockout, d.auth_lockout);
        assert_eq!(
            c.ssh_connection_burst_per_source,
            d.ssh_connection_burst_per_source
        );
        assert_eq!(
            c.ssh_connections_per_source_per_sec,
            d.ssh_connections_per_source_per_sec
        );
        assert_eq!(c.max_preauth_per_source, d.max_preauth_per_source);
        assert_eq!(c.ssh_auth_failure_limit, d.ssh_auth_failure_limit);
        assert_eq!(c.audit_retention_days, d.audit_retention_days);
        assert_eq!(c.console_session_ttl, d.console_session_ttl);
        assert_eq!(c.trusted_proxies, d.trusted_proxies);
        // The metrics options are shown commented out: off by default.
        assert_eq!((c.metrics_listen, d.metrics_listen), (None, None));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# metrics_listen = ") && text.contains("# metrics_token = "));
    }

    #[test]
    fn cluster_keys_need_postgres_and_a_sound_node_name() {
        let pg = || Some(Secret::new("postgres://app@db/x"));
        let with = |dir: Option<&str>, name: Option<&str>, url: Option<&str>, store| {
            FileConfig {
                store_url: store,
                cluster_dir: dir.map(PathBuf::from),
                node_name: name.map(str::to_owned),
                node_url: url.map(str::to_owned),
                ..FileConfig::default()
            }
            .into_config()
        };
        let c = with(
            Some("/c"),
            Some("n-1"),
            Some("https://10.0.0.1:8443/"),
            pg(),
        )
        .unwrap();
        assert_eq!(c.identity_dir(), Path::new("/c"));
        assert_eq!(c.node_name(), "n-1");
        let cl = c.cluster.unwrap();
        assert_eq!(cl.node_url.as_deref(), Some("https://10.0.0.1:8443"));
        let err = |r: anyhow::Result<Config>| format!("{:#}", r.unwrap_err());
        assert!(err(with(Some("/c"), Some("n"), None, None)).contains("needs store_url"));
        assert!(err(with(None, Some("n"), None, pg())).contains("need cluster_dir"));
        assert!(err(with(Some("/c"), Some("a b"), None, pg())).contains("node_name"));
        assert!(err(with(Some("/c"), Some("n"), Some("ftp://x"), pg())).contains("node_url"));
        let single = with(None, None, None, None).unwrap();
        assert_eq!(
            (single.node_name(), single.identity_dir()),
            ("local", single.data_dir.as_path())
        );
    }

    #[test]
    fn the_store_url_is_checked_and_hidden() {
        let file = FileConfig {
            store_url: Some(Secret::new("postgres://app:s3cret@db:5432/passerelle")),
            ..Default::default()
        };
        let c = file.into_config().unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains("app:***@db:5432/passerelle"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            FileConfig::default()
                .into_config()
                .unwrap()
                .store_url
                .is_none()
        );
        let bad = FileConfig {
            store_url: Some(Secret::new("mysql://app:s3cret@db/x")),
            ..Default::default()
        };
        let err = format!("{:#}", bad.into_config().unwrap_err());
        assert!(
            err.contains("store_url") && !err.contains("s3cret"),
            "{err}"
        );
    }

    #[test]
    fn trusted_proxies_parse_and_bad_ones_are_refused() {
        let c = FileConfig {
            trusted_proxies: Some(vec!["10.0.0.0/8".into(), "::1".into()]),
            ..Default::default()
        };
        let c = c.into_config().unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(c.trusted_proxies[0].contains("10.1.2.3".parse().unwrap()));
        assert!(c.trusted_proxies[1].contains("::1".parse().unwrap()));
        let bad = FileConfig {
            trusted_proxies: Some(vec!["10.0.0.0/33".into()]),
            ..Default::default()
        };
        assert!(bad.into_config().is_err());
        let zero_rate = FileConfig {
            ssh_connections_per_source_per_sec: Some(0.0),
            ..Default::default()
        };
        assert!(zero_rate.into_config().is_err());
    }
}
