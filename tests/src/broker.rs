//! [`TestBroker`]: the real broker in this process, on `127.0.0.1:0`, with a temporary data dir
//! and an HTTP client for its API.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use passerelle::Broker;
use passerelle::config::Config;
use passerelle::store::Store;
use passerelle_proto::api::{
    AgentInfo, AuditEvent, AuditPage, CreateSession, CreatedSession, IssuedToken, RegisterAgent,
    Role, SessionInfo,
};
use passerelle_proto::ids::{AgentId, ServiceName, TenantName};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tempfile::TempDir;
use tokio::time::{Instant, sleep, timeout};

use crate::process::{Banner, BrokerProcess};
use crate::{POLL, WAIT, init};

mod attach;
pub use attach::Attached;

/// A running broker and what a test needs to talk to it.
///
/// Dropping it cancels the broker (no graceful wait) and removes its data dir.
pub struct TestBroker {
    broker: Option<Broker>,
    /// The `passerelle` binary, when started with [`TestBroker::spawn_binary`].
    process: Option<BrokerProcess>,
    dir: TempDir,
    admin_key: String,
    http: reqwest::Client,
    base_url: String,
    ssh_addr: SocketAddr,
    http_addr: SocketAddr,
    host_key: String,
    /// Arguments of `passerelle serve` beyond the listeners (binary brokers only).
    extra_args: Vec<String>,
}

/// A session request for `agent`'s `service` by operator `alice`, everything else default.
pub fn session_request(agent: &str, service: &str) -> CreateSession {
    CreateSession {
        agent: AgentId::new(agent).expect("valid agent id"),
        service: ServiceName::new(service).expect("valid service name"),
        operator: "alice".into(),
        record: None,
        view_only: false,
        legacy: false,
        ttl_secs: None,
        ssh_user: None,
    }
}

impl TestBroker {
    /// Starts a broker with [`Config::for_tests`].
    pub async fn start() -> Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker with [`Config::for_tests`] as changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("passerelle-e2e-")
            .tempdir()?;
        Self::start_in(dir, None, tweak).await
    }

    /// Starts a broker whose data dir is a new directory under `parent` (e.g. a small disk).
    pub async fn start_under(parent: &Path, tweak: impl FnOnce(&mut Config)) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("passerelle-e2e-")
            .tempdir_in(parent)?;
        Self::start_in(dir, None, tweak).await
    }

    async fn start_in(
        dir: TempDir,
        known_admin_key: Option<String>,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<Self> {
        init();
        let mut config = Config::for_tests(dir.path());
        tweak(&mut config);
        let broker = timeout(WAIT, Broker::start(config))
            .await
            .context("Broker::start timed out")?
            .context("Broker::start failed")?;
        let admin_key = match (broker.admin_key(), known_admin_key) {
            (Some(key), _) | (None, Some(key)) => key,
            (None, None) => bail!("a first start on an empty data dir gave no admin key"),
        };
        let http = reqwest::Client::builder().timeout(WAIT).build()?;
        Ok(Self {
            base_url: broker.base_url().trim_end_matches('/').to_owned(),
            ssh_addr: broker.ssh_addr(),
            http_addr: broker.http_addr(),
            host_key: broker.host_key_openssh(),
            broker: Some(broker),
            process: None,
            dir,
            admin_key,
            http,
            extra_args: Vec::new(),
        })
    }

    /// Shuts the broker down gracefully (if it still runs) and starts a new one on the same data
    /// dir, with `tweak` applied to its config. The admin key stays the one of the first start.
    pub async fn restart(mut self, tweak: impl FnOnce(&mut Config)) -> Result<Self> {
        self.shutdown().await?;
        let Self { dir, admin_key, .. } = self;
        Self::start_in(dir, Some(admin_key), tweak).await
    }

    /// Starts the real `passerelle serve` binary (plain HTTP) in a new data dir, on ports chosen
    /// by the OS. [`Self::broker`] and [`Self::store`] are not available on such a broker.
    pub async fn spawn_binary() -> Result<Self> {
        Self::spawn_binary_with(&[]).await
    }

    /// [`Self::spawn_binary`] with more arguments of `passerelle serve` (e.g. `--store URL`),
    /// kept for its restarts.
    pub async fn spawn_binary_with(extra: &[&str]) -> Result<Self> {
        let mut args = vec!["--insecure-http"];
        args.extend_from_slice(extra);
        Self::spawn_binary_args(&args, reqwest::Client::builder()).await
    }

    /// The real `passerelle serve` binary over HTTPS, with more arguments (e.g. `--tls-cert F
    /// --tls-key F`; without them, its self-signed certificate). The helpers' HTTP client
    /// accepts any certificate: a test that cares about the certificate checks it itself.
    pub async fn spawn_binary_https(extra: &[&str]) -> Result<Self> {
        let http = reqwest::Client::builder().danger_accept_invalid_certs(true);
        Self::spawn_binary_args(extra, http).await
    }

    async fn spawn_binary_args(extra: &[&str], http: reqwest::ClientBuilder) -> Result<Self> {
        init();
        let dir = tempfile::Builder::new()
            .prefix("passerelle-e2e-")
            .tempdir()?;
        let mut args = vec![
            "--ssh-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let (process, banner) = BrokerProcess::serve(dir.path(), &args).await?;
        // Its stdout is a pipe, not a terminal: the key is in the data dir's file only.
        let admin_key = admin_key_file(dir.path())?;
        let host_key = passerelle::keys::public_openssh(
            &passerelle::keys::load_or_create_host_key(dir.path())?,
        );
        let (ssh_addr, http_addr) = addrs(&banner)?;
        Ok(Self {
            broker: None,
            process: Some(process),
            base_url: banner.http.trim_end_matches('/').to_owned(),
            ssh_addr,
            http_addr,
            host_key,
            dir,
            admin_key,
            http: http.timeout(WAIT).build()?,
            extra_args: extra.iter().map(|a| (*a).to_owned()).collect(),
        })
    }

    /// Kills the broker binary with SIGKILL (no chance to clean up) and starts it again on the
    /// same data dir and the same ports. Returns what the crashed process had logged.
    pub async fn kill_and_restart(&mut self) -> Result<String> {
        let process = self
            .process
            .take()
            .context("kill_and_restart needs a broker from spawn_binary")?;
        let logs = process.stderr();
        let status = process.signal("KILL").await?;
        if status.success() {
            bail!("the broker exited cleanly after SIGKILL: {status}");
        }
        self.serve_again().await?;
        Ok(logs)
    }

    /// Stops the broker binary gracefully (SIGTERM) and starts it again on the same data dir,
    /// ports and arguments.
    pub async fn restart_binary(&mut self) -> Result<()> {
        let process = self
            .process
            .take()
            .context("restart_binary needs a broker from spawn_binary")?;
        let status = process.signal("TERM").await?;
        if !status.success() {
            bail!("the broker binary exited with {status} on SIGTERM");
        }
        self.serve_again().await
    }

    async fn serve_again(&mut self) -> Result<()> {
        let ssh = self.ssh_addr.to_string();
        let http = self.http_addr.to_string();
        let mut args = vec!["--ssh-listen", &ssh, "--http-listen", &http];
        args.extend(self.extra_args.iter().map(String::as_str));
        let (process, banner) = BrokerProcess::serve(self.dir.path(), &args).await?;
        if banner.admin_key.is_some() || admin_key_file(self.dir.path())? != self.admin_key {
            bail!("a restart made a new admin key: the data dir was not reused");
        }
        if addrs(&banner)? != (self.ssh_addr, self.http_addr) {
            bail!("the restarted broker listens elsewhere: {banner:?}");
        }
        self.process = Some(process);
        Ok(())
    }

    /// The broker binary's process id (none for an in-process broker).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(BrokerProcess::pid)
    }

    /// Sends `signal` (e.g. "HUP") to the broker binary without waiting for anything.
    pub async fn signal_binary(&self, signal: &str) -> Result<()> {
        self.process
            .as_ref()
            .context("signal_binary needs a broker from spawn_binary")?
            .send_signal(signal)
            .await
    }

    /// What the broker binary has logged so far (empty for an in-process broker).
    pub fn logs(&self) -> String {
        self.process
            .as_ref()
            .map(BrokerProcess::stderr)
            .unwrap_or_default()
    }

    /// Graceful shutdown, bounded in time.
    pub async fn shutdown(&mut self) -> Result<()> {
        if let Some(process) = self.process.take() {
            let status = process.signal("TERM").await?;
            if !status.success() {
                bail!("the broker binary exited with {status} on SIGTERM");
            }
        }
        if let Some(broker) = self.broker.take() {
            timeout(WAIT, broker.shutdown())
                .await
                .context("Broker::shutdown timed out")?;
        }
        Ok(())
    }

    /// Takes the running broker out, e.g. to shut it down in another task.
    pub fn take_broker(&mut self) -> Result<Broker> {
        self.broker
            .take()
            .context("the broker was already shut down")
    }

    /// The running broker.
    pub fn broker(&self) -> &Broker {
        self.broker.as_ref().expect("the broker was shut down")
    }

    /// The broker's store.
    pub fn store(&self) -> &Store {
        self.broker().store()
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The admin API key of tenant `default`.
    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Where agents connect.
    pub fn ssh_addr(&self) -> SocketAddr {
        self.ssh_addr
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The host key as `ssh-ed25519 AAAA...`.
    pub fn host_key(&self) -> &str {
        &self.host_key
    }

    /// Creates tenant `name` in the store.
    pub fn create_tenant(&self, name: &str) -> Result<()> {
        self.store().create_tenant(&TenantName::new(name)?)
    }

    /// Creates an API key of `role` in tenant `tenant`; returns the secret.
    pub fn create_key(&self, tenant: &str, role: Role) -> Result<String> {
        self.store().create_api_key(&TenantName::new(tenant)?, role)
    }

    /// Creates tenant `name` and an API key of `role` in it; returns the secret.
    pub fn create_tenant_with_key(&self, name: &str, role: Role) -> Result<String> {
        self.create_tenant(name)?;
        self.create_key(name, role)
    }

    /// One API call: `body` is sent as JSON when given. Returns the status and the body as JSON
    /// (`Null` when empty, a JSON string when the body is not JSON).
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let body = body.map(|b| (b.to_string(), "application/json"));
        self.request(method, path, key, body, &[]).await
    }

    /// One API call with a raw body and content type, and extra headers.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<(String, &str)>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Value)> {
        let url = format!("{}{path}", self.base_url);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some((body, content_type)) = body {
            req = req.header("content-type", content_type).body(body);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .with_context(|| format!("{method} {path}: body"))?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    /// An admin call that must answer `want`; its body decoded as `T`.
    pub async fn admin<T: DeserializeOwned>(
        &self,
        want: StatusCode,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T> {
        let got = self
            .api(method.clone(), path, Some(&self.admin_key), body)
            .await?;
        typed(want, &format!("{method} {path}"), got)
    }

    /// `POST /api/v1/sessions` with the admin key; must answer 201.
    pub async fn create_session(&self, req: &CreateSession) -> Result<CreatedSession> {
        self.create_session_as(&self.admin_key, req).await
    }

    /// `POST /api/v1/sessions` with `key`; must answer 201.
    pub async fn create_session_as(
        &self,
        key: &str,
        req: &CreateSession,
    ) -> Result<CreatedSession> {
        let body = serde_json::to_value(req)?;
        let got = self
            .api(Method::POST, "/api/v1/sessions", Some(key), Some(&body))
            .await?;
        typed(StatusCode::CREATED, "POST /api/v1/sessions", got)
    }

    /// `GET /api/v1/sessions/{id}` with the admin key.
    pub async fn session(&self, id: &str) -> Result<SessionInfo> {
        self.admin(
            StatusCode::OK,
            Method::GET,
            &format!("/api/v1/sessions/{id}"),
            None,
        )
        .await
    }

    /// `DELETE /api/v1/sessions/{id}` with the admin key, naming `operator` in
    /// `X-Passerelle-Operator` when given; must answer 200.
    pub async fn stop_session(&self, id: &str, operator: Option<&str>) -> Result<SessionInfo> {
        let path = format!("/api/v1/sessions/{id}");
        let headers: Vec<(&str, &str)> = operator
            .map(|o| ("x-passerelle-operator", o))
            .into_iter()
            .collect();
        let got = self
            .request(Method::DELETE, &path, Some(&self.admin_key), None, &headers)
            .await?;
        typed(StatusCode::OK, &format!("DELETE {path}"), got)
    }

    /// `POST /api/v1/sessions/{id}/tokens` with the admin key; must answer 201.
    pub async fn new_token(&self, id: &str) -> Result<IssuedToken> {
        let path = format!("/api/v1/sessions/{id}/tokens");
        self.admin(StatusCode::CREATED, Method::POST, &path, None)
            .await
    }

    /// Polls the session until `done` holds for it.
    pub async fn wait_session(
        &self,
        id: &str,
        what: &str,
        done: impl Fn(&SessionInfo) -> bool,
    ) -> Result<SessionInfo> {
        let deadline = Instant::now() + WAIT;
        loop {
            let info = self.session(id).await?;
            if done(&info) {
                return Ok(info);
            }
            if Instant::now() >= deadline {
                bail!("session {id} never became {what}; last seen: {info:#?}");
            }
            sleep(POLL).await;
        }
    }

    /// Polls the session until it has ended.
    pub async fn wait_ended(&self, id: &str) -> Result<SessionInfo> {
        self.wait_session(id, "ended", |s| s.ended_at.is_some())
            .await
    }

    /// `POST /api/v1/agents` with `key`; must answer 201.
    pub async fn register_agent_as(
        &self,
        key: &str,
        id: &str,
        public_key: &str,
    ) -> Result<AgentInfo> {
        let req = RegisterAgent::with_key(AgentId::new(id)?, public_key);
        let body = serde_json::to_value(&req)?;
        let got = self
            .api(Method::POST, "/api/v1/agents", Some(key), Some(&body))
            .await?;
        typed(StatusCode::CREATED, "POST /api/v1/agents", got)
    }

    /// `GET /api/v1/agents/{id}` with `key`; must answer 200.
    pub async fn agent_as(&self, key: &str, id: &str) -> Result<AgentInfo> {
        let path = format!("/api/v1/agents/{id}");
        let got = self.api(Method::GET, &path, Some(key), None).await?;
        typed(StatusCode::OK, &format!("GET {path}"), got)
    }

    /// `GET /api/v1/audit?{query}` with the admin key.
    pub async fn audit(&self, query: &str) -> Result<AuditPage> {
        self.admin(
            StatusCode::OK,
            Method::GET,
            &format!("/api/v1/audit?{query}"),
            None,
        )
        .await
    }

    /// Polls `GET /api/v1/audit?kind={kind}` until an event satisfies `matches`.
    pub async fn wait_event(
        &self,
        kind: &str,
        matches: impl Fn(&AuditEvent) -> bool,
    ) -> Result<AuditEvent> {
        let deadline = Instant::now() + WAIT;
        loop {
            let page = self.audit(&format!("kind={kind}")).await?;
            if let Some(ev) = page.events.iter().find(|e| e.kind == kind && matches(e)) {
                return Ok(ev.clone());
            }
            if Instant::now() >= deadline {
                bail!("no matching {kind} audit event; seen: {:#?}", page.events);
            }
            sleep(POLL).await;
        }
    }

    /// A reqwest client with the same settings as the one this broker's helpers use.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// The first admin key, as `passerelle serve` leaves it in `<data_dir>/admin-api-key`.
pub fn admin_key_file(data_dir: &Path) -> Result<String> {
    let path = data_dir.join(passerelle::broker::ADMIN_KEY_FILE);
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_owned())
}

/// The SSH and HTTP listeners a banner names.
fn addrs(banner: &Banner) -> Result<(SocketAddr, SocketAddr)> {
    let ssh = banner.ssh.parse().context("ssh address in the banner")?;
    let http = banner
        .http
        .strip_prefix("http://")
        .or_else(|| banner.http.strip_prefix("https://"))
        .context("an http:// or https:// listener")?
        .trim_end_matches('/')
        .parse()
        .context("http address in the banner")?;
    Ok((ssh, http))
}

/// Checks the status and decodes the body, or fails with both.
pub(crate) fn typed<T: DeserializeOwned>(
    want: StatusCode,
    what: &str,
    (status, body): (StatusCode, Value),
) -> Result<T> {
    if status != want {
        bail!("{what}: expected {want}, got {status}: {body}");
    }
    serde_json::from_value(body.clone()).with_context(|| format!("{what}: decoding {body}"))
}
