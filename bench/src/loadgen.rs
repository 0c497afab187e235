//! Idle-agent load generator built on `russh::client`: N agents, each one SSH connection with
//! its own ed25519 key, authenticated as its agent id and announcing `vnc` with
//! `tcpip_forward("vnc", 0)`, like `ssh -N -R vnc:0:...` does. Each agent reconnects on its own
//! when its connection drops, so the time for all to come back after a broker restart can be
//! measured.
//!
//! Bounds: connection attempts in flight are limited by a semaphore (a thundering herd of 10,000
//! SYNs would overflow the listen backlog and measure the kernel's SYN retry timer instead of the
//! broker); each attempt has a timeout; each agent gives up after [`MAX_ATTEMPTS`]; everything stops
//! on [`LoadGen::stop`] or when dropped. Connections are spread over several source addresses
//! (127.0.0.2.., not 127.0.0.1: the cluster's nodes expect a PROXY header from that one, their
//! load balancer) so that 10,000 of them, twice, do not run out of ephemeral ports.

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use russh::client::{self, Handle};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::stacks::passerelle::{Api, SERVICE};

/// An agent stops retrying after this many failed attempts in a row.
const MAX_ATTEMPTS: u32 = 200;
/// One attempt (TCP, SSH handshake, auth, forward) must finish within this.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(20);

/// The id of load agent `i`.
pub fn agent_id(i: usize) -> String {
    format!("load-{i:05}")
}

/// The key of load agent `i`: derived from its index, so a restart needs no key store.
fn agent_key(i: usize) -> PrivateKey {
    let mut seed = [0x17u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    PrivateKey::from(Ed25519Keypair::from_seed(&seed))
}

/// Agents imported per request (`POST /api/v1/agents/import` takes up to 1,000).
const IMPORT_BATCH: usize = 1000;

/// Registers agents `ids` (indexes, see [`agent_id`]) through the API's bulk import, in
/// batches of [`IMPORT_BATCH`], at most `parallel` (and at most 2: they share one write lock)
/// requests at a time.
pub async fn register(api: &Api, ids: Range<usize>, parallel: usize) -> anyhow::Result<()> {
    let starts = ids.clone().step_by(IMPORT_BATCH);
    let mut results = futures_util::stream::iter(starts)
        .map(|start| {
            let batch = start..(start + IMPORT_BATCH).min(ids.end);
            async move {
                let agents = batch
                    .map(|i| Ok((agent_id(i), agent_key(i).public_key().to_openssh()?)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                api.import_agents(&agents).await
            }
        })
        .buffer_unordered(parallel.clamp(1, 2));
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(())
}

/// Counters shared by all agents.
#[derive(Default)]
struct State {
    online: AtomicUsize,
    connects: AtomicUsize,
    failures: AtomicUsize,
    /// The most recent failure, for the report.
    last_error: std::sync::Mutex<Option<String>>,
}

/// Running load agents. Dropping it stops them (connections close with the tasks).
pub struct LoadGen {
    state: Arc<State>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

/// What to connect to and how.
pub struct LoadConfig {
    pub target: SocketAddr,
    pub host_key: PublicKey,
    /// The agents' indexes (see [`agent_id`]).
    pub agents: Range<usize>,
    pub source_ips: u8,
    pub parallel_connects: usize,
    pub cipher: &'static str,
    /// The key exchange the agents offer (one algorithm, as [`KEXES`] names them).
    pub kex: &'static str,
}

/// Key exchanges the load agents can offer: what OpenSSH 9.9 and later negotiate with the
/// broker, and what 9.2–9.8 (Debian 12, Ubuntu 24.04, RHEL 9...) do, since russh has no
/// sntrup761x25519. The broker keeps each connection's key-exchange values for its life, and
/// ML-KEM's are larger.
pub const KEXES: [&str; 2] = ["mlkem768x25519-sha256", "curve25519-sha256"];

impl LoadGen {
    /// Starts every agent; they connect as fast as the semaphore lets them.
    pub fn start(cfg: LoadConfig) -> anyhow::Result<Self> {
        let cipher = match cfg.cipher {
            "aes128-gcm@openssh.com" => russh::cipher::AES_128_GCM,
            "aes256-gcm@openssh.com" => russh::cipher::AES_256_GCM,
            "chacha20-poly1305@openssh.com" => russh::cipher::CHACHA20_POLY1305,
            other => bail!("the load generator does not know cipher {other}"),
        };
        let kex = match cfg.kex {
            "mlkem768x25519-sha256" => russh::kex::MLKEM768X25519_SHA256,
            "curve25519-sha256" => russh::kex::CURVE25519,
            other => bail!("the load generator does not know key exchange {other}"),
        };
        let ssh = Arc::new(client::Config {
            preferred: russh::Preferred {
                cipher: vec![cipher].into(),
                kex: vec![
                    kex,
                    russh::kex::EXTENSION_SUPPORT_AS_CLIENT,
                    russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
                ]
                .into(),
                ..Default::default()
            },
            nodelay: true,
            // The broker sends keepalives; russh answers them.
            inactivity_timeout: None,
            ..Default::default()
        });
        let state = Arc::new(State::default());
        let stop = CancellationToken::new();
        let permits = Arc::new(Semaphore::new(cfg.parallel_connects.max(1)));
        let host_key = Arc::new(cfg.host_key);
        let mut tasks = JoinSet::new();
        for i in cfg.agents {
            let source = Ipv4Addr::new(
                127,
                0,
                0,
                2 + (i % usize::from(cfg.source_ips.clamp(1, 253))) as u8,
            );
            let agent = Agent {
                id: agent_id(i),
                key: Arc::new(agent_key(i)),
                jitter: Duration::from_millis((i as u64 * 7919) % 250),
                source,
                target: cfg.target,
                ssh: ssh.clone(),
                host_key: host_key.clone(),
            };
            tasks.spawn(agent.run(state.clone(), stop.clone(), permits.clone()));
        }
        Ok(Self { state, stop, tasks })
    }

    pub fn online(&self) -> usize {
        self.state.online.load(Ordering::Relaxed)
    }

    /// Connections established since the start (first connections and reconnections).
    pub fn connects(&self) -> usize {
        self.state.connects.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> usize {
        self.state.failures.load(Ordering::Relaxed)
    }

    /// The most recent failed attempt's error.
    pub fn last_error(&self) -> Option<String> {
        self.state.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Disconnects every agent (bounded wait).
    pub async fn stop(mut self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
    }
}

/// What the phase watchers need of running load agents, in this process ([`LoadGen`]) or over
/// child processes ([`crate::loadprocs::LoadProcs`]).
pub trait Online {
    /// Agents connected now.
    fn online(&self) -> usize;
    /// The most recent failed attempt's error.
    fn last_error(&self) -> Option<String>;
    /// False once the generator cannot make progress any more (a child process exited).
    fn alive(&self) -> bool {
        true
    }
}

impl Online for LoadGen {
    fn online(&self) -> usize {
        LoadGen::online(self)
    }

    fn last_error(&self) -> Option<String> {
        LoadGen::last_error(self)
    }
}

/// Waits until `pred(online)` holds; `None` if `limit` passed first or the generator stopped
/// making progress.
pub async fn wait_online(
    load: &impl Online,
    limit: Duration,
    pred: impl Fn(usize) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit && load.alive() {
        if pred(load.online()) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

struct Agent {
    id: String,
    key: Arc<PrivateKey>,
    jitter: Duration,
    source: Ipv4Addr,
    target: SocketAddr,
    ssh: Arc<client::Config>,
    host_key: Arc<PublicKey>,
}

impl Agent {
    async fn run(self, state: Arc<State>, stop: CancellationToken, permits: Arc<Semaphore>) {
        let mut failed = 0u32;
        while failed < MAX_ATTEMPTS {
            let attempt = async {
                let _permit = permits.acquire().await?;
                tokio::time::timeout(ATTEMPT_LIMIT, self.connect())
                    .await
                    .context("attempt timed out")?
            };
            let handle = tokio::select! {
                r = attempt => r,
                () = stop.cancelled() => return,
            };
            match handle {
                Ok(mut handle) => {
                    failed = 0;
                    state.online.fetch_add(1, Ordering::Relaxed);
                    state.connects.fetch_add(1, Ordering::Relaxed);
                    let stopped = tokio::select! {
                        _ = &mut handle => false,
                        () = stop.cancelled() => true,
                    };
                    state.online.fetch_sub(1, Ordering::Relaxed);
                    if stopped {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(2),
                            handle.disconnect(russh::Disconnect::ByApplication, "bench over", "en"),
                        )
                        .await;
                        return;
                    }
                    // Like an agent's reconnect loop: a short, per-agent jitter before trying.
                    tokio::time::sleep(self.jitter).await;
                }
                Err(e) => {
                    failed += 1;
                    state.failures.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut last) = state.last_error.lock() {
                        *last = Some(format!("{e:#}"));
                    }
                    let backoff =
                        Duration::from_millis(100 << failed.min(4)).min(Duration::from_secs(1));
                    tokio::select! {
                        () = tokio::time::sleep(backoff + self.jitter) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn connect(&self) -> anyhow::Result<Handle<Client>> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((self.source, 0)))?;
        let stream = socket.connect(self.target).await?;
        stream.set_nodelay(true)?;
        let client = Client {
            host_key: self.host_key.clone(),
        };
        let mut handle = client::connect_stream(self.ssh.clone(), stream, client).await?;
        let auth = handle
            .authenticate_publickey(&self.id, PrivateKeyWithHashAlg::new(self.key.clone(), None))
            .await?;
        if !auth.success() {
            bail!("{}: authentication refused", self.id);
        }
        handle
            .tcpip_forward(SERVICE, 0)
            .await
            .context("forward refused")?;
        Ok(handle)
    }
}

/// Accepts only the broker's host key.
struct Client {
    host_key: Arc<PublicKey>,
}

impl client::Handler for Client {
    type Error = anyhow::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(
            matches!(key, PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.host_key.key_data()),
        )
    }
}
