//! The running broker: shared state, start-up (data dir, keys, listeners) and shutdown, and the
//! operations that span several parts (ending a session, revoking an agent).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use passerelle_proto::api::Role;
use passerelle_proto::close::EndReason;
use passerelle_proto::ids::TenantName;
use russh::keys::PrivateKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, TlsMode};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::sessions::{LiveSession, Sessions};
use crate::shards::Shards;
use crate::store::{AuditKind, NewEvent, Store, TenantId, now_ms};
use crate::throttle::Throttle;
use crate::{http, keys, ssh};

/// File in the data dir holding the first admin API key.
pub const ADMIN_KEY_FILE: &str = "admin-api-key";

/// Everything the listeners share.
pub struct State {
    pub config: Config,
    pub store: Arc<Store>,
    pub registry: Registry,
    pub sessions: Sessions,
    pub metrics: Arc<Metrics>,
    /// Every task the broker spawns, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled to shut down.
    pub shutdown: CancellationToken,
    /// Where agent connections and their sessions' bridges run.
    pub shards: Shards,
    /// `http(s)://host:port`, the base of the URLs handed out.
    pub base_url: String,
    /// Hex SHA-256 of the HTTPS certificate, when serving HTTPS.
    pub tls_fingerprint: Option<String>,
    pub host_key: PrivateKey,
    /// Signs recordings.
    pub recording_key: Arc<crate::recorder::SigningKey>,
    /// Failed credentials per client address.
    pub throttle: Throttle,
    next_conn_id: AtomicU64,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl State {
    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether `peer` may present credentials now; `Err(retry_after)` while it is locked out.
    pub fn credentials_allowed(&self, peer: SocketAddr) -> Result<(), Duration> {
        let allowed = self.throttle.check(peer.ip());
        if allowed.is_err() {
            self.metrics.auth_throttled.fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }

    /// Counts an unknown token or API key presented by `peer`. When that starts a lockout, it
    /// is logged and audited once, in `tenant` (the tenant of what the attempt named, if it
    /// named something that exists), with `what` for people; never the credential itself.
    pub fn credential_failed(&self, peer: SocketAddr, tenant: Option<TenantId>, what: &str) {
        let Some(lockout) = self.throttle.failed(peer.ip()) else {
            return;
        };
        self.metrics.auth_lockouts.fetch_add(1, Ordering::Relaxed);
        let detail = format!(
            "{} failed credentials from {} within {}s (last: {what}); refused for {}s",
            lockout.failures,
            lockout.client,
            self.config.auth_failure_window.as_secs(),
            lockout.duration.as_secs()
        );
        tracing::warn!(client = %lockout.client, failures = lockout.failures, "token guessing: address locked out");
        let mut ev = NewEvent::new(AuditKind::TokenGuessing, detail);
        ev.tenant_id = tenant;
        ev.peer_addr = Some(peer.to_string());
        self.store.audit(ev);
    }

    /// Ends a session once and persists its audit row after its bridges let go (bounded wait).
    /// Returns false if it had already ended.
    pub async fn end_session(
        &self,
        session: &Arc<LiveSession>,
        reason: EndReason,
        by: &str,
    ) -> bool {
        if !self.sessions.end(session, reason, by) {
            return false;
        }
        session.wait_idle(Duration::from_secs(2)).await;
        let (up, down) = (
            session.bytes_up.load(Ordering::Relaxed),
            session.bytes_down.load(Ordering::Relaxed),
        );
        self.finish_recording(session, reason).await;
        if let Err(e) = self
            .store
            .session_ended(&session.id, now_ms(), reason, by, up, down)
        {
            tracing::error!(session = %session.id, error = %e, "could not record the end of a session");
        }
        self.metrics.session_ended(reason);
        let mut ev = NewEvent::new(
            AuditKind::SessionEnded,
            format!("{reason} ({by}); {up} bytes up, {down} bytes down"),
        );
        ev.tenant_id = Some(session.tenant_id);
        ev.agent = Some(session.agent.to_string());
        ev.session = Some(session.id.clone());
        ev.operator = Some(session.operator.clone());
        self.store.audit(ev);
        tracing::info!(session = %session.id, %reason, by, up, down, "session ended");
        self.sessions.forget(&session.id);
        true
    }

    /// Spawns [`State::end_session`] (for callers that must not wait).
    pub fn end_session_later(
        self: &Arc<Self>,
        session: &Arc<LiveSession>,
        reason: EndReason,
        by: &str,
    ) {
        let (state, session, by) = (self.clone(), session.clone(), by.to_owned());
        self.tasks.spawn(async move {
            state.end_session(&session, reason, &by).await;
        });
    }

    /// Ends a session when its TTL passes, or when nobody joined within the grace period.
    pub fn watch_session(self: &Arc<Self>, session: &Arc<LiveSession>) {
        let (state, session) = (self.clone(), session.clone());
        let grace = self.config.join_grace;
        self.tasks.spawn(async move {
            let join_deadline = tokio::time::sleep(grace);
            tokio::pin!(join_deadline);
            let mut join_checked = false;
            loop {
                tokio::select! {
                    () = session.ended.cancelled() => return,
                    () = tokio::time::sleep_until(session.expires_at) => {
                        state.end_session(&session, EndReason::TtlExpired, "broker").await;
                        return;
                    }
                    () = &mut join_deadline, if !join_checked => {
                        join_checked = true;
                        if !session.is_started() {
                            state.end_session(&session, EndReason::NotJoined, "broker").await;
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// A running broker. Dropping it cancels everything without waiting; [`Broker::shutdown`] ends
/// live sessions cleanly first.
pub struct Broker {
    state: Arc<State>,
    ssh_addr: SocketAddr,
    http_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    admin_key: Option<String>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("ssh", &self.ssh_addr)
            .field("http", &self.http_addr)
            .finish_non_exhaustive()
    }
}

/// Opens the store, creating tenant `default` and an admin key on an empty data dir. Returns the
/// new key on first start.
pub fn init_data_dir(config: &Config) -> anyhow::Result<(Store, Option<String>)> {
    let store = Store::open(&config.data_dir)?;
    if !store.tenants()?.is_empty() {
        return Ok((store, None));
    }
    let default = TenantName::new("default")?;
    store.create_tenant(&default)?;
    let tenant = store
        .tenant_id(&default)?
        .context("tenant default was not created")?;
    let (_, key) = store.create_named_api_key(tenant, Role::Admin, "first admin key", None)?;
    crate::secrets::write_private_file(
        &config.data_dir.join(ADMIN_KEY_FILE),
        format!("{key}\n").as_bytes(),
    )?;
    Ok((store, Some(key)))
}

impl Broker {
    /// Prepares the data dir, binds both listeners and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Broker> {
        crate::file_modes::check_and_fix(&config.data_dir, &config.recordings_dir);
        let (store, admin_key) = init_data_dir(&config)?;
        let orphans = store.end_orphans(now_ms())?;
        for id in &orphans {
            let mut ev = NewEvent::new(
                AuditKind::SessionEnded,
                "broker_crash: the broker stopped during the session",
            );
            if let Ok(Some((s, tenant))) = store.session_with_tenant(id) {
                ev.tenant_id = Some(tenant);
                ev.agent = Some(s.agent.to_string());
                ev.operator = Some(s.operator);
            }
            ev.session = Some(id.clone());
            store.audit(ev);
        }
        if !orphans.is_empty() {
            tracing::warn!(
                count = orphans.len(),
                "ended sessions left open by a previous run (broker_crash)"
            );
            // The previous run stopped uncleanly: say whether the store came through.
            match store.quick_check() {
                Ok(result) if result == "ok" => tracing::info!("store check after a crash: ok"),
                Ok(result) => tracing::error!(%result, "store check after a crash found damage"),
                Err(e) => tracing::error!(error = %e, "store check after a crash failed"),
            }
        }
        let host_key = keys::load_or_create_host_key(&config.data_dir)?;
        let recording_key = Arc::new(crate::recorder::SigningKey::load_or_create(
            &config.data_dir,
        )?);
        let tls = match &config.tls {
            TlsMode::Insecure => None,
            TlsMode::SelfSigned => {
                let host = config
                    .public_url
                    .as_deref()
                    .and_then(crate::self_signed::host_of_url);
                Some(keys::load_tls_for(&config.data_dir, None, host.as_deref())?)
            }
            TlsMode::Files { cert, key } => {
                Some(keys::load_tls(&config.data_dir, Some((cert, key)))?)
            }
        };
        let ssh_listener = TcpListener::bind(config.ssh_listen)
            .await
            .with_context(|| format!("binding the SSH listener on {}", config.ssh_listen))?;
        let http_listener = std::net::TcpListener::bind(config.http_listen)
            .with_context(|| format!("binding the HTTP listener on {}", config.http_listen))?;
        http_listener.set_nonblocking(true)?;
        let metrics_listener = http::bind_metrics(&config)?;
        let metrics_addr = metrics_listener
            .as_ref()
            .map(std::net::TcpListener::local_addr)
            .transpose()?;
        let ssh_addr = ssh_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base_url = config.public_url.clone().unwrap_or_else(|| {
            let host = if http_addr.ip().is_unspecified() {
                "localhost".to_owned()
            } else {
                http_addr.ip().to_string()
            };
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            format!("{scheme}://{host}:{}", http_addr.port())
        });
        let state = Arc::new(State {
            store: Arc::new(store),
            registry: Registry::default(),
            sessions: Sessions::default(),
            metrics: Arc::new(Metrics::default()),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            shards: Shards::start(config.data_threads)?,
            base_url,
            tls_fingerprint: tls.as_ref().map(|t| t.fingerprint.clone()),
            host_key,
            recording_key,
            throttle: Throttle::new(
                config.auth_failure_limit,
                config.auth_failure_window,
                config.auth_lockout,
            ),
            config,
            next_conn_id: AtomicU64::new(1),
        });
        state.tasks.spawn(ssh::run(ssh_listener, state.clone()));
        state.tasks.spawn(http::serve(
            http_listener,
            tls.map(|t| t.config),
            state.clone(),
        ));
        if let Some(listener) = metrics_listener {
            state
                .tasks
                .spawn(http::serve_metrics(listener, state.clone()));
        }
        let sweeper = state.clone();
        state.tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            let mut ticks = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        sweeper.sessions.sweep(Duration::from_secs(600));
                        sweeper.throttle.sweep();
                        // Retention: at start, then hourly.
                        if ticks.is_multiple_of(60) {
                            sweeper.sweep_recordings();
                        }
                        ticks += 1;
                    }
                    () = sweeper.shutdown.cancelled() => return,
                }
            }
        });
        tracing::info!(%ssh_addr, %http_addr, "broker started");
        Ok(Broker {
            state,
            ssh_addr,
            http_addr,
            metrics_addr,
            admin_key,
        })
    }

    pub fn ssh_addr(&self) -> SocketAddr {
        self.ssh_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where `/metrics` is served on its own, when `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The base of the URLs the API hands out.
    pub fn base_url(&self) -> String {
        self.state.base_url.clone()
    }

    /// The admin key created on the first start of this data dir.
    pub fn admin_key(&self) -> Option<String> {
        self.admin_key.clone()
    }

    /// `ssh-ed25519 AAAA...`
    pub fn host_key_openssh(&self) -> String {
        keys::public_openssh(&self.state.host_key)
    }

    /// `SHA256:...`
    pub fn host_key_fingerprint(&self) -> String {
        keys::fingerprint(&self.state.host_key)
    }

    /// The HTTPS certificate's SHA-256, when serving HTTPS.
    pub fn tls_fingerprint(&self) -> Option<String> {
        self.state.tls_fingerprint.clone()
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// Ends live sessions (`broker_shutdown`), disconnects agents, stops the listeners and waits
    /// (bounded) for every task.
    pub async fn shutdown(self) {
        let state = self.state.clone();
        let ends = state.sessions.all().into_iter().map(|s| {
            let state = state.clone();
            async move {
                state
                    .end_session(&s, EndReason::BrokerShutdown, "broker")
                    .await
            }
        });
        futures_util::future::join_all(ends).await;
        state.shutdown.cancel();
        state.tasks.close();
        if tokio::time::timeout(state.config.shutdown_grace, state.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not finish within the shutdown grace period");
        }
        state.shards.stop();
        tracing::info!("broker stopped");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
        self.state.shards.stop();
    }
}
