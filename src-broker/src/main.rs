//! The `passerelle` command: `serve` runs the broker; the other subcommands administer the same
//! store (tenants, API keys, agents) and print the host key.

#![expect(
    clippy::print_stdout,
    reason = "a command-line tool prints its results"
)]

mod cli_ca;
mod cli_cluster;
mod cli_enroll;
mod cli_import;
mod cli_kit;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use passerelle::config::FileConfig;
use passerelle::{Broker, Store, keys};
use passerelle_proto::api::Role;
use passerelle_proto::ids::{AgentId, TenantName};

#[derive(Parser)]
#[command(name = "passerelle", version, about = "Remote-control tunnel broker")]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, env = "PASSERELLE_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (store, keys, certificate) [default: ./passerelle-data].
    #[arg(long, global = true, env = "PASSERELLE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The store on PostgreSQL, `postgres://user:password@host:port/database` (`store_url`)
    /// [default: SQLite in the data dir]. Prefer the environment variable or the config file
    /// for a URL with a password (command lines are visible to other local users).
    #[arg(
        long = "store",
        global = true,
        env = "PASSERELLE_STORE",
        hide_env_values = true
    )]
    store_url: Option<String>,
    /// Logs on stderr: `text` (coloured only on a terminal) or `json` (one object per line, the
    /// session, agent and tenant in the `span` object, for log shippers).
    #[arg(
        long,
        global = true,
        env = "PASSERELLE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Manage API keys.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCmd),
    /// Manage agents (a running broker learns of removals at the agent's next connection; use
    /// the API's DELETE /api/v1/agents/{id} to disconnect at once).
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Manage enrolment tokens, with which workstations register their own keys
    /// (`POST /api/v1/enroll`).
    #[command(subcommand, name = "enroll-token")]
    EnrollToken(cli_enroll::EnrollTokenCmd),
    /// The tenant's SSH certificate authority: agents with a certificate it signed sign in
    /// without a registered key.
    #[command(subcommand)]
    Ca(cli_ca::CaCmd),
    /// Work with session recordings.
    #[command(subcommand)]
    Recording(RecordingCmd),
    /// Several brokers as one on a PostgreSQL store: `init` makes the shared identity,
    /// `status` shows the nodes.
    #[command(subcommand)]
    Cluster(cli_cluster::ClusterCmd),
    /// Print the SSH host key's fingerprint and a known_hosts line for agents.
    HostKey {
        /// host:port agents use to reach the broker, for the known_hosts line.
        #[arg(long, default_value = "BROKER:2222")]
        known_hosts_host: String,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Agents' SSH listener [default: 0.0.0.0:2222].
    #[arg(long, env = "PASSERELLE_SSH_LISTEN")]
    ssh_listen: Option<SocketAddr>,
    /// HTTP(S) listener [default: 0.0.0.0:8443].
    #[arg(long, env = "PASSERELLE_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// PEM certificate chain (with --tls-key); without both, a self-signed one is made.
    #[arg(
        long,
        env = "PASSERELLE_TLS_CERT",
        requires = "tls_key",
        conflicts_with = "insecure_http"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(
        long,
        env = "PASSERELLE_TLS_KEY",
        requires = "tls_cert",
        conflicts_with = "insecure_http"
    )]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP (behind a TLS-terminating proxy, or for tests).
    #[arg(long, env = "PASSERELLE_INSECURE_HTTP")]
    insecure_http: bool,
    /// Base URL put in the URLs the API returns (e.g. https://broker.example.com).
    #[arg(long, env = "PASSERELLE_PUBLIC_URL")]
    public_url: Option<String>,
    /// Threads carrying agent connections and their sessions' data [default: 0 = one per CPU].
    #[arg(long, env = "PASSERELLE_DATA_THREADS")]
    data_threads: Option<usize>,
    /// Serve /metrics on a listener of its own (e.g. 127.0.0.1:9100), not on the public one.
    #[arg(long, env = "PASSERELLE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Bearer token /metrics requires. Prefer the variable or the file: other users can read
    /// a command line.
    #[arg(long, env = "PASSERELLE_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// This broker is a node of a cluster whose identity `passerelle cluster init` wrote
    /// here (`cluster_dir`; needs --store).
    #[arg(long, env = "PASSERELLE_CLUSTER_DIR")]
    cluster_dir: Option<PathBuf>,
    /// This node's name in the cluster [default: the host name].
    #[arg(long, env = "PASSERELLE_NODE_NAME")]
    node_name: Option<String>,
    /// How the other nodes reach this node's HTTP listener [default: from its address].
    #[arg(long, env = "PASSERELLE_NODE_URL")]
    node_url: Option<String>,
}

#[derive(Subcommand)]
enum TenantCmd {
    /// Create a tenant.
    Add { name: TenantName },
    /// List tenants.
    List,
    /// Print the tenant's SSH public key (made on first use) as an authorized_keys line for
    /// workstations: the broker logs in with it for `ssh` sessions in the browser.
    #[command(name = "ssh-key")]
    SshKey {
        #[arg(long, default_value = "default")]
        tenant: TenantName,
    },
}

#[derive(Subcommand)]
enum ApiKeyCmd {
    /// Create an API key; prints the key alone on stdout.
    Add {
        #[arg(long)]
        tenant: TenantName,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// What the key is for (shown by `api-key list` and the API).
        #[arg(long, default_value = "")]
        name: String,
        /// When the key stops working (RFC 3339, e.g. 2030-01-31T12:00:00Z) [default: never].
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// List a tenant's API keys (id, role, state, created, expires, name); never the secrets.
    List {
        #[arg(long)]
        tenant: TenantName,
    },
    /// Revoke an API key by its id (the 12 hex digits after `psk_`); it fails from the next
    /// request on. Unlike the API, this may revoke a tenant's last admin key.
    Revoke {
        #[arg(long)]
        tenant: TenantName,
        id: String,
    },
}

#[derive(Subcommand)]
enum AgentCmd {
    /// Register an agent with its OpenSSH public key.
    Add {
        #[arg(long, default_value = "default")]
        tenant: TenantName,
        id: AgentId,
        /// The key line, or @FILE to read it from a file.
        #[arg(long)]
        public_key: String,
    },
    /// Register many agents from an OpenSSH authorized_keys-style FILE, one
    /// `<key-type> <base64> <agent-id>` a line (the key's comment is the agent's id; `#`
    /// comments and blank lines skipped). All or nothing: every bad line is reported with its
    /// number and nothing is imported; else the whole file goes in one transaction.
    Import {
        #[arg(long, default_value = "default")]
        tenant: TenantName,
        file: PathBuf,
    },
    /// Remove an agent.
    Remove {
        #[arg(long, default_value = "default")]
        tenant: TenantName,
        id: AgentId,
    },
    /// List a tenant's agents.
    List {
        #[arg(long, default_value = "default")]
        tenant: TenantName,
    },
    /// Write an agent kit: a folder whose install script sets up a workstation with its own
    /// OpenSSH client (key made there, host key pinned, enrolment, a service that restarts).
    Kit(cli_kit::KitArgs),
}

#[derive(Subcommand)]
enum RecordingCmd {
    /// Check a recording's hash chain and signatures, and say which frames a signature covers.
    /// Exit status: 0 intact, 3 truncated (the broker stopped during the session: the frames up
    /// to the last checkpoint are signed, the ones after it are not), 4 unsigned (no signature
    /// at all: nothing is authenticated), 1 tampered or unreadable.
    Verify {
        /// The .psrec file.
        file: PathBuf,
        /// Hex Ed25519 public key to check against [default: this data dir's recording key].
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Export a VNC recording's screen as PNG files (--png DIR with --at or --every) or as a
    /// video made by ffmpeg (--video OUT.mp4), or a terminal recording's transcript (--text
    /// OUT) or asciicast v2 file (--asciicast OUT.cast). The recording is verified first: a
    /// tampered one is refused unless --force; a truncated one exports its signed part only,
    /// unless --include-unsigned (its unsigned frames are then marked). A video keeps the first
    /// screen size (a larger desktop is cropped, a smaller one padded).
    #[command(group(clap::ArgGroup::new("output").required(true).multiple(true).args(["png", "video", "text", "asciicast"])))]
    Export {
        /// The .psrec file.
        file: PathBuf,
        /// Write PNG files (screen-SECONDS.png) to this directory.
        #[arg(long)]
        png: Option<PathBuf>,
        /// Recorded seconds to export, comma-separated (e.g. 1.5,10,60).
        #[arg(long, requires = "png", conflicts_with = "every")]
        at: Option<String>,
        /// Export one PNG every this many seconds.
        #[arg(long, requires = "png")]
        every: Option<f64>,
        /// Write a video (through ffmpeg: libx264 if it has it, else mpeg4).
        #[arg(long)]
        video: Option<PathBuf>,
        /// Video frames per second.
        #[arg(long, default_value_t = 10)]
        fps: u32,
        /// Write a terminal recording's transcript (plain text, one line per terminal line).
        #[arg(long, conflicts_with_all = ["png", "video"])]
        text: Option<PathBuf>,
        /// Write a terminal recording as asciicast v2 (for asciinema and its players).
        #[arg(long, conflicts_with_all = ["png", "video"])]
        asciicast: Option<PathBuf>,
        /// Hex Ed25519 public key to check against [default: this data dir's recording key].
        #[arg(long)]
        public_key: Option<String>,
        /// Export a tampered or damaged recording anyway (up to the damage).
        #[arg(long)]
        force: bool,
        /// Export the frames no signature covers too (after the last checkpoint of a truncated
        /// recording): PNG files of those times are named `…-UNSIGNED.png`.
        #[arg(long)]
        include_unsigned: bool,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("role must be admin, helpdesk or auditor, not {s:?}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("passerelle: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, at `RUST_LOG`'s levels (default `info`). Colour codes only when stderr is
/// a terminal, so that log files and journald stay plain text.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal as _;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,russh=warn,vnc=warn")),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

fn file_config(cli: &Cli) -> anyhow::Result<FileConfig> {
    let file = match &cli.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    Ok(file.merge(FileConfig {
        data_dir: cli.data_dir.clone(),
        store_url: cli.store_url.clone().map(passerelle::config::Secret::new),
        ..FileConfig::default()
    }))
}

fn open_store(cli: &Cli) -> anyhow::Result<Store> {
    let config = file_config(cli)?.into_config()?;
    if config.store_url.is_none() && !config.data_dir.join("passerelle.db").exists() {
        anyhow::bail!(
            "no store in {}: run `passerelle serve` once to create it (or pass --data-dir)",
            config.data_dir.display()
        );
    }
    Store::open_keyed(
        &config.data_dir,
        config.identity_dir(),
        config.store_url.as_ref(),
    )
    .map(|s| s.with_node(config.node_name()))
}

fn tenant_id(store: &Store, name: &TenantName) -> anyhow::Result<i64> {
    store
        .tenant_id(name)?
        .with_context(|| format!("no tenant named {name}"))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve(args) => {
            let flags = FileConfig {
                ssh_listen: args.ssh_listen,
                http_listen: args.http_listen,
                tls_cert: args.tls_cert.clone(),
                tls_key: args.tls_key.clone(),
                insecure_http: args.insecure_http.then_some(true),
                public_url: args.public_url.clone(),
                data_threads: args.data_threads,
                metrics_listen: args.metrics_listen,
                metrics_token: args
                    .metrics_token
                    .clone()
                    .map(passerelle::config::Secret::new),
                cluster_dir: args.cluster_dir.clone(),
                node_name: args.node_name.clone(),
                node_url: args.node_url.clone(),
                ..FileConfig::default()
            };
            let config = file_config(&cli)?.merge(flags).into_config()?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(serve(config))
        }
        Command::Tenant(TenantCmd::Add { name }) => {
            open_store(&cli)?.create_tenant(name)?;
            println!("tenant {name} created");
            Ok(())
        }
        Command::Tenant(TenantCmd::SshKey { tenant }) => {
            let store = open_store(&cli)?;
            let id = tenant_id(&store, tenant)?;
            store.ensure_tenant_ssh_key(id)?;
            let key = store
                .tenant_ssh(id)?
                .public_key
                .context("the tenant has no SSH key")?;
            println!("from=\"127.0.0.1,::1\" {key}");
            Ok(())
        }
        Command::Tenant(TenantCmd::List) => {
            for name in open_store(&cli)?.tenants()? {
                println!("{name}");
            }
            Ok(())
        }
        Command::ApiKey(cmd) => api_key(&open_store(&cli)?, cmd),
        Command::Agent(AgentCmd::Add {
            tenant,
            id,
            public_key,
        }) => {
            let store = open_store(&cli)?;
            let key = match public_key.strip_prefix('@') {
                Some(path) => {
                    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
                }
                None => public_key.clone(),
            };
            let rec = store.create_agent(tenant_id(&store, tenant)?, id, &key, None)?;
            println!(
                "agent {} registered in {tenant} with key {}",
                rec.id, rec.key_fingerprint
            );
            Ok(())
        }
        Command::Agent(AgentCmd::Import { tenant, file }) => {
            let config = file_config(&cli)?.into_config()?;
            let store = open_store(&cli)?;
            let tenant = tenant_id(&store, tenant)?;
            cli_import::run(&store, tenant, file, config.quotas.agents_per_tenant)
        }
        Command::Agent(AgentCmd::Remove { tenant, id }) => {
            let store = open_store(&cli)?;
            if !store.delete_agent(tenant_id(&store, tenant)?, id)? {
                anyhow::bail!("no agent {id} in tenant {tenant}");
            }
            println!("agent {id} removed from {tenant}");
            Ok(())
        }
        Command::Agent(AgentCmd::List { tenant }) => {
            let store = open_store(&cli)?;
            for a in store.agents(tenant_id(&store, tenant)?)? {
                println!("{}\t{}", a.id, a.key_fingerprint);
            }
            Ok(())
        }
        Command::Agent(AgentCmd::Kit(args)) => {
            let config = file_config(&cli)?.into_config()?;
            let store = open_store(&cli)?;
            let tenant = tenant_id(&store, &args.tenant)?;
            if let Some(token) = args.enroll_token() {
                cli_kit::check_token(&store, &args.tenant, tenant, token)?;
            }
            let key = keys::load_or_create_host_key(config.identity_dir())?;
            let lines = cli_kit::run(
                args,
                |host, port| Ok(keys::known_hosts_line(host, port, &key)),
                config.public_url.clone(),
            )?;
            for line in lines {
                println!("{line}");
            }
            Ok(())
        }
        Command::EnrollToken(cmd) => {
            let store = open_store(&cli)?;
            for line in cli_enroll::run(&store, |t| tenant_id(&store, t), cmd)? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Cluster(cli_cluster::ClusterCmd::Init { dir, host }) => {
            for line in cli_cluster::init(dir, host.as_deref())? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Cluster(cli_cluster::ClusterCmd::Status) => {
            let store = open_store(&cli)?;
            for line in cli_cluster::status(&store)? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Ca(cmd) => {
            let store = open_store(&cli)?;
            for line in cli_ca::run(&store, |t| tenant_id(&store, t), cmd)? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Recording(RecordingCmd::Verify { file, public_key }) => {
            verify_recording(&cli, file, public_key.as_deref())
        }
        Command::Recording(RecordingCmd::Export {
            file,
            png,
            at,
            every,
            video,
            fps,
            text,
            asciicast,
            public_key,
            force,
            include_unsigned,
        }) => {
            use passerelle::recording::export::{Output, Trust, export, parse_times};
            let trust = Trust {
                force: *force,
                include_unsigned: *include_unsigned,
            };
            if text.is_some() || asciicast.is_some() {
                let public = recording_key(&cli, public_key.as_deref())?;
                let bytes =
                    std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
                let done = passerelle::recording::terminal::export(
                    &bytes,
                    &public,
                    trust,
                    text.as_deref(),
                    asciicast.as_deref(),
                )?;
                for note in &done.notes {
                    eprintln!("passerelle: {note}");
                }
                for f in &done.files {
                    println!("{}", f.display());
                }
                return Ok(());
            }
            let output = match (png, video) {
                (Some(dir), _) => Output::Png {
                    dir: dir.clone(),
                    at: at
                        .as_deref()
                        .map(parse_times)
                        .transpose()?
                        .unwrap_or_default(),
                    every: *every,
                },
                (None, Some(file)) => Output::Video {
                    file: file.clone(),
                    fps: *fps,
                },
                (None, None) => anyhow::bail!("give --png DIR or --video FILE"),
            };
            let public = recording_key(&cli, public_key.as_deref())?;
            let bytes =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let report = export(&bytes, &public, trust, &output)?;
            for note in &report.notes {
                eprintln!("passerelle: {note}");
            }
            for f in &report.files {
                println!("{}", f.display());
            }
            if report.frames > 0 {
                eprintln!(
                    "passerelle: {} frames, {:.1} s of recording",
                    report.frames, report.duration
                );
            }
            Ok(())
        }
        Command::HostKey { known_hosts_host } => {
            let config = file_config(&cli)?.into_config()?;
            passerelle::file_modes::create_data_dir(&config.data_dir)?;
            let key = keys::load_or_create_host_key(config.identity_dir())?;
            let (host, port) = known_hosts_host
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .context("--known-hosts-host must be HOST:PORT")?;
            println!("host key fingerprint: {}", keys::fingerprint(&key));
            println!("{}", keys::known_hosts_line(host, port, &key));
            Ok(())
        }
    }
}

/// `passerelle api-key add|list|revoke`; changes are audited with operator `cli`.
fn api_key(store: &Store, cmd: &ApiKeyCmd) -> anyhow::Result<()> {
    use passerelle::store::{AuditKind, NewEvent, Revoked};
    let audit = |tenant: i64, kind: AuditKind, detail: String| {
        let mut ev = NewEvent::new(kind, detail);
        ev.tenant_id = Some(tenant);
        ev.operator = Some("cli".to_owned());
        store.audit(ev);
    };
    match cmd {
        ApiKeyCmd::Add {
            tenant,
            role,
            name,
            expires_at,
        } => {
            let tenant_id = tenant_id(store, tenant)?;
            if !name.is_empty() {
                passerelle_proto::api_keys::check_name(name).map_err(anyhow::Error::msg)?;
            }
            let expires_at = expires_at
                .as_deref()
                .map(|t| {
                    let at = passerelle::store::parse_rfc3339(t)
                        .with_context(|| format!("--expires-at {t:?} is not an RFC 3339 time"))?;
                    anyhow::ensure!(
                        at > passerelle::store::now_ms(),
                        "--expires-at must be in the future"
                    );
                    Ok(at)
                })
                .transpose()?;
            let (info, key) = store.create_named_api_key(tenant_id, *role, name, expires_at)?;
            audit(
                tenant_id,
                AuditKind::ApiKeyCreated,
                format!(
                    "API key {} ({}, {:?}) created on the command line",
                    info.id,
                    role.as_str(),
                    info.name
                ),
            );
            println!("{key}");
        }
        ApiKeyCmd::List { tenant } => {
            for k in store.api_keys(tenant_id(store, tenant)?)? {
                let state = match (&k.revoked_at, k.active) {
                    (Some(_), _) => "revoked",
                    (None, true) => "active",
                    (None, false) => "expired",
                };
                println!(
                    "{}\t{}\t{state}\t{}\t{}\t{}",
                    k.id,
                    k.role.as_str(),
                    k.created_at,
                    k.expires_at.as_deref().unwrap_or("never"),
                    k.name
                );
            }
        }
        ApiKeyCmd::Revoke { tenant, id } => {
            let tenant_id = tenant_id(store, tenant)?;
            match store.revoke_api_key(tenant_id, id, false) {
                Ok(Revoked::Now(info)) => {
                    audit(
                        tenant_id,
                        AuditKind::ApiKeyRevoked,
                        format!(
                            "API key {} ({}, {:?}) revoked on the command line",
                            info.id,
                            info.role.as_str(),
                            info.name
                        ),
                    );
                    println!("API key {id} revoked in {tenant}");
                }
                Ok(Revoked::Already(_)) => println!("API key {id} was already revoked"),
                Err(passerelle::store::RevokeError::NotFound) => {
                    anyhow::bail!("no API key {id} in tenant {tenant}")
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit: each agent holds a socket.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "could not raise the open-file limit");
    }
}

/// The recording key's public half: `--public-key`, or the data directory's key.
fn recording_key(cli: &Cli, public_key: Option<&str>) -> anyhow::Result<String> {
    if let Some(k) = public_key {
        return Ok(k.to_owned());
    }
    let config = file_config(cli)?.into_config()?;
    // A cluster's nodes sign with the key in its shared directory.
    let dir = config.identity_dir();
    if !dir.join(passerelle::recording::KEY_FILE).exists() {
        anyhow::bail!(
            "no recording key in {}: pass --data-dir (or --config with cluster_dir) or --public-key",
            dir.display()
        );
    }
    Ok(passerelle::recording::SigningKey::load_or_create(dir)?.public_hex())
}

fn verify_recording(
    cli: &Cli,
    file: &std::path::Path,
    public_key: Option<&str>,
) -> anyhow::Result<()> {
    use passerelle_proto::recording::Verdict;
    let public = recording_key(cli, public_key)?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    match passerelle::recording::verify_file(&bytes, &public) {
        Verdict::Intact {
            header,
            summary,
            frames,
        } => {
            println!(
                "intact: session {} ({} on {}, operator {}, {} content), {frames} frames, ended {} ({}), {} bytes down, {} up",
                header.session,
                header.service,
                header.agent,
                header.operator,
                format!("{:?}", header.content).to_lowercase(),
                summary.ended_at,
                summary.end_reason,
                summary.bytes_down,
                summary.bytes_up
            );
            Ok(())
        }
        Verdict::Truncated {
            header,
            frames,
            signed_frames,
            signed_end_us,
            trailing_bytes,
            ..
        } => {
            let unsigned = frames - signed_frames;
            println!(
                "truncated: session {} has {frames} whole frames and no trailer (the broker stopped during the session); frames 1 to {signed_frames} are signed, up to {:.3} s",
                header.session,
                signed_end_us as f64 / 1e6
            );
            if unsigned > 0 {
                println!(
                    "NOT SIGNED: the last {unsigned} frames, after the last checkpoint (written before the broker stopped, or appended by anyone who could write the file: not evidence)"
                );
            }
            if trailing_bytes > 0 {
                println!("{trailing_bytes} bytes of a partial frame ignored");
            }
            std::process::exit(3);
        }
        Verdict::Unsigned { header, frames, .. } => {
            println!(
                "UNSIGNED: session {} has {frames} whole frames and no signature at all: nothing in it is authenticated",
                header.session
            );
            std::process::exit(4);
        }
        Verdict::Tampered(damage) => {
            println!("TAMPERED: {damage}");
            std::process::exit(1);
        }
    }
}

async fn serve(config: passerelle::Config) -> anyhow::Result<()> {
    raise_fd_limit();
    // Listen for the stop signals before starting, so that one arriving during the start (a
    // service manager's stop) ends the broker cleanly instead of by the default action.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // SIGHUP (`systemctl reload`): read the HTTPS certificate and key again.
    let mut hup = signal(SignalKind::hangup())?;
    let data_dir = config.data_dir.clone();
    let broker = Broker::start(config).await?;
    if let Some(key) = broker.admin_key() {
        let file = data_dir.join(passerelle::broker::ADMIN_KEY_FILE);
        // Only a person at a terminal sees it; a service manager's or a CI job's captured
        // stdout would keep it in a log. Then the file alone has it.
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            println!(
                "admin API key (tenant default, shown once, also in {}): {key}",
                file.display()
            );
        } else {
            tracing::warn!(
                file = %file.display(),
                "first start: the admin API key of tenant default is in this file only \
                 (not printed: stdout is not a terminal); delete it once stored elsewhere"
            );
        }
    }
    println!("ssh listening on {}", broker.ssh_addr());
    println!("http listening on {}", broker.base_url());
    println!("host key fingerprint: {}", broker.host_key_fingerprint());
    if let Some(fp) = broker.tls_fingerprint() {
        println!("tls certificate sha256: {fp}");
    }
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the TLS certificate");
                // A refused pair is logged and changes nothing: the broker keeps serving.
                let _ = broker.reload_tls().await;
            }
        }
    }
    tracing::info!("shutting down");
    broker.shutdown().await;
    Ok(())
}
