//! The running broker: start-up (data dir, keys, the parts and the listeners) and shutdown. The
//! parts: the session core (`crate::session`), the agents' listener (`crate::ssh`), the HTTP
//! side (`crate::http`), over one store (`crate::store`) and one presence registry.

use std::net::SocketAddr;
use std::sync::Arc;
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
use crate::server_cert::{PairError, Reloaded, ServerCert};
use crate::session::{Core, Table};
use crate::shards::Shards;
use crate::store::{AuditKind, Db, NewEvent, Store, now_ms};
use crate::throttle::{Guard, Throttle};
use crate::{http, keys, ssh};

/// File in the data dir holding the first admin API key.
pub const ADMIN_KEY_FILE: &str = "admin-api-key";

/// The period of the upkeep task (sweeps, coalesced audit counts; retention every 60th tick).
const UPKEEP_SECS: u64 = 60;

/// A running broker. Dropping it cancels everything without waiting; [`Broker::shutdown`] ends
/// live sessions cleanly first.
pub struct Broker {
    cluster: Option<Arc<crate::cluster::Cluster>>,
    core: Arc<Core>,
    shards: Arc<Shards>,
    host_key: PrivateKey,
    base_url: String,
    /// The HTTPS listener's certificate (none over plain HTTP); SIGHUP reloads it.
    tls: Option<Arc<ServerCert>>,
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
    let store = Store::open_keyed(
        &config.data_dir,
        config.identity_dir(),
        config.store_url.as_ref(),
    )?
    .with_node(config.node_name());
    if !store.tenants()?.is_empty() {
        return Ok((store, None));
    }
    let default = TenantName::new("default")?;
    if let Err(e) = store.create_tenant(&default) {
        // Another node of the cluster, starting at the same time, made it first.
        if !store.tenants()?.is_empty() {
            return Ok((store, None));
        }
        return Err(e);
    }
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
        if let Some(cluster) = &config.cluster {
            crate::cluster::identity::check(&cluster.dir)?;
        }
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
        let host_key = keys::load_or_create_host_key(config.identity_dir())?;
        let recording_key = Arc::new(crate::recording::SigningKey::load_or_create(
            config.identity_dir(),
        )?);
        // A cluster's certificate is the one in its directory, never renewed by a node alone.
        let cluster_tls = config
            .cluster
            .as_ref()
            .map(|c| {
                let files = (
                    c.dir.join(keys::TLS_CERT_FILE),
                    c.dir.join(keys::TLS_KEY_FILE),
                );
                keys::load_tls(&c.dir, Some((&files.0, &files.1)))
            })
            .transpose()?;
        let tls = match &config.tls {
            TlsMode::Insecure => None,
            TlsMode::SelfSigned if cluster_tls.is_some() => cluster_tls.clone(),
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
        let config = Arc::new(config);
        let db = Db::new(Arc::new(store))?;
        let metrics = Arc::new(Metrics::default());
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let shards = Arc::new(Shards::start(config.data_threads)?);
        let registry = Arc::new(Registry::default());
        let cluster = match (&config.cluster, &cluster_tls) {
            (Some(c), Some(ctls)) => {
                let url = match &c.node_url {
                    Some(u) => u.clone(),
                    None if http_addr.ip().is_unspecified() => anyhow::bail!(
                        "set node_url: the HTTP listener ({http_addr}) does not say how the other \
                         nodes reach this one"
                    ),
                    None => format!("{scheme}://{http_addr}"),
                };
                let secret = crate::cluster::identity::link_key(&c.dir)?;
                // The link reaches the other nodes' HTTPS listeners, which serve what this one
                // does (the cluster's certificate, or the same configured one): it trusts that,
                // and follows it through a reload. Over plain HTTP it is not used.
                let pin = match &tls {
                    Some(served) => crate::pinned::Pin::Served(served.clone()),
                    None => crate::pinned::Pin::Fixed(Some(ctls.sha256())),
                };
                let cluster = crate::cluster::Cluster::join(
                    c.node_name.clone(),
                    url,
                    &secret,
                    pin,
                    db.clone(),
                    tasks.clone(),
                    shutdown.clone(),
                )
                .await?;
                cluster.run(registry.clone());
                Some(cluster)
            }
            _ => None,
        };
        let guard = Arc::new(Guard::new(
            Throttle::new(
                config.auth_failure_limit,
                config.auth_failure_window,
                config.auth_lockout,
            ),
            config.auth_failure_window,
            metrics.clone(),
            db.clone(),
        ));
        let core = Arc::new(Core {
            config: config.clone(),
            db: db.clone(),
            registry: registry.clone(),
            table: Table::default(),
            metrics: metrics.clone(),
            guard: guard.clone(),
            recording_key: recording_key.clone(),
            writers: crate::recording::Writers::start(
                config.recording_writer_threads,
                config.recording_buffer_total_bytes,
            )?,
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
        });
        let agents = Arc::new(
            ssh::Server::new(
                config.clone(),
                db.clone(),
                registry.clone(),
                core.clone(),
                metrics.clone(),
                host_key.clone(),
                tasks.clone(),
                shutdown.clone(),
                shards.clone(),
            )
            .in_cluster(cluster.clone()),
        );
        let app = http::App {
            core: core.clone(),
            db,
            registry,
            metrics,
            guard,
            config,
            urls: Arc::new(http::Urls {
                base: base_url.clone(),
                tls: tls.clone(),
            }),
            recording_key,
            tasks: tasks.clone(),
            shutdown: shutdown.clone(),
            cluster: cluster.clone(),
        };
        tasks.spawn(ssh::run(ssh_listener, agents.clone()));
        if let Some(listener) = metrics_listener {
            tasks.spawn(http::serve_metrics(listener, app.clone()));
        }
        let tls_config = tls
            .as_ref()
            .map(ServerCert::server_config)
            .transpose()
            .context("the HTTPS listener's TLS settings")?;
        tasks.spawn(http::serve(http_listener, tls_config, app));
        let upkeep = core.clone();
        let listener = agents;
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(UPKEEP_SECS));
            let mut ticks = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        upkeep.sweep();
                        listener.upkeep(UPKEEP_SECS);
                        // Retention: at start, then hourly.
                        if ticks.is_multiple_of(60) {
                            upkeep.sweep_recordings().await;
                            let days = upkeep.config.audit_retention_days;
                            match upkeep.db.run(move |s| s.prune_audit(days)).await {
                                Ok(0) => {}
                                Ok(n) => tracing::info!(deleted = n, days, "audit retention"),
                                Err(e) => tracing::error!(error = %e, "audit retention failed"),
                            }
                        }
                        ticks += 1;
                    }
                    () = upkeep.shutdown.cancelled() => return,
                }
            }
        });
        tracing::info!(%ssh_addr, %http_addr, "broker started");
        Ok(Broker {
            cluster,
            core,
            shards,
            host_key,
            base_url,
            tls,
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
        self.base_url.clone()
    }

    /// The admin key created on the first start of this data dir.
    pub fn admin_key(&self) -> Option<String> {
        self.admin_key.clone()
    }

    /// `ssh-ed25519 AAAA...`
    pub fn host_key_openssh(&self) -> String {
        keys::public_openssh(&self.host_key)
    }

    /// `SHA256:...`
    pub fn host_key_fingerprint(&self) -> String {
        keys::fingerprint(&self.host_key)
    }

    /// The HTTPS certificate's SHA-256 (hex), when serving HTTPS: the one served now.
    pub fn tls_fingerprint(&self) -> Option<String> {
        self.tls.as_ref().map(|t| t.fingerprint())
    }

    /// Reads the HTTPS certificate and key again from the files they came from (SIGHUP):
    /// new handshakes present the new pair, open connections keep theirs. A refused pair
    /// (unreadable, not PEM, a key of another certificate...) leaves the current one in
    /// service. Logs the outcome ([`ServerCert::reload_logged`]). `Ok(None)` over plain HTTP.
    pub async fn reload_tls(&self) -> Result<Option<Reloaded>, PairError> {
        let Some(cert) = &self.tls else {
            tracing::info!("reload: no TLS certificate to reload (plain HTTP)");
            return Ok(None);
        };
        cert.reload_logged().await.map(Some)
    }

    pub fn store(&self) -> &Store {
        self.core.db.blocking()
    }

    /// The store as the broker's async code uses it.
    pub fn db(&self) -> &Db {
        &self.core.db
    }

    /// Ends live sessions (`broker_shutdown`), disconnects agents, stops the listeners and waits
    /// (bounded) for every task.
    pub async fn shutdown(self) {
        let core = self.core.clone();
        core.end_all(EndReason::BrokerShutdown).await;
        core.shutdown.cancel();
        core.tasks.close();
        if tokio::time::timeout(core.config.shutdown_grace, core.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not finish within the shutdown grace period");
        }
        self.shards.stop();
        if let Some(cluster) = &self.cluster {
            cluster.leave().await;
        }
        // The last audit events written, the store's log folded into its file.
        core.db.audit_flushed().await;
        if let Err(e) = core.db.run(|s| s.checkpoint()).await {
            tracing::warn!(error = %format!("{e:#}"), "could not checkpoint the store at shutdown");
        }
        tracing::info!("broker stopped");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.core.shutdown.cancel();
        self.shards.stop();
    }
}
