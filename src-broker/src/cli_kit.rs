//! `passerelle agent kit`: writes an agent kit ([`passerelle::kit`]) for this broker: its host
//! key pinned, its SSH address and public URL baked in. Part of the binary, not of the library.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use passerelle::kit::{Forward, Identity, Kit, Os};
use passerelle_proto::ids::{AgentId, TenantName};

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum KitOs {
    Linux,
    Windows,
}

#[derive(Args)]
pub(crate) struct KitArgs {
    #[arg(long, default_value = "default")]
    pub(crate) tenant: TenantName,
    #[arg(long, value_enum)]
    os: KitOs,
    /// The agent id (default: the workstation's hostname); its key is then printed by the
    /// install script for an admin to register.
    #[arg(long, conflicts_with = "enroll_token")]
    id: Option<AgentId>,
    /// Enrol with this token (`passerelle enroll-token add`); the kit then holds a secret.
    #[arg(long, env = "PASSERELLE_ENROLL_TOKEN", hide_env_values = true)]
    enroll_token: Option<String>,
    /// host:port agents reach the broker's SSH listener at.
    #[arg(long)]
    ssh_address: String,
    /// The broker's public URL for enrolment [default: the configuration's public_url].
    #[arg(long)]
    public_url: Option<String>,
    /// PEM certificate the Linux kit's curl trusts for the public URL (the broker's own
    /// self-signed one, or your CA's).
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Announce VNC, forwarded to this HOST:PORT [default: localhost:5900 when no forward is given].
    #[arg(long)]
    vnc: Option<String>,
    /// Announce RDP, forwarded to this HOST:PORT (e.g. localhost:3389).
    #[arg(long)]
    rdp: Option<String>,
    /// Announce SSH, forwarded to this HOST:PORT (e.g. localhost:22).
    #[arg(long)]
    ssh: Option<String>,
    /// The kit's folder (made if missing).
    #[arg(long)]
    out: PathBuf,
}

impl KitArgs {
    pub(crate) fn enroll_token(&self) -> Option<&str> {
        self.enroll_token.as_deref()
    }
}

/// Builds and writes the kit; returns the lines to print.
pub(crate) fn run(
    args: &KitArgs,
    known_hosts: impl FnOnce(&str, u16) -> anyhow::Result<String>,
    configured_url: Option<String>,
) -> anyhow::Result<Vec<String>> {
    let (host, port) = args
        .ssh_address
        .rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse().ok()?,
            ))
        })
        .context("--ssh-address must be HOST:PORT")?;
    let public_url = args
        .public_url
        .clone()
        .or(configured_url)
        .context("give --public-url (or public_url in the configuration)")?
        .trim_end_matches('/')
        .to_owned();
    let mut forwards = Vec::new();
    for (service, target) in [("vnc", &args.vnc), ("rdp", &args.rdp), ("ssh", &args.ssh)] {
        if let Some(t) = target {
            forwards.push(Forward::parse(service, t).with_context(|| format!("--{service}"))?);
        }
    }
    if forwards.is_empty() {
        forwards.push(Forward::parse("vnc", "localhost:5900")?);
    }
    let cacert = args
        .cacert
        .as_ref()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let kit = Kit {
        tenant: args.tenant.clone(),
        os: match args.os {
            KitOs::Linux => Os::Linux,
            KitOs::Windows => Os::Windows,
        },
        identity: match &args.enroll_token {
            Some(t) => Identity::EnrollToken(t.trim().to_owned()),
            None => Identity::Id(args.id.clone()),
        },
        ssh_host: host.to_owned(),
        ssh_port: port,
        known_hosts: known_hosts(host, port)?,
        public_url,
        forwards,
        cacert,
    };
    let mut lines: Vec<String> = kit
        .write(&args.out)?
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    if args.enroll_token.is_some() {
        lines.push(format!(
            "note: {} holds the enrolment token: hand it over like a password",
            args.out.join("enroll-token").display()
        ));
    }
    Ok(lines)
}

/// Refuses a token this tenant does not have, or one that can no longer enrol (revoked, spent,
/// expired): a kit with it would fail on every workstation. The secret is not checked here (the
/// broker does that at enrolment).
pub(crate) fn check_token(
    store: &passerelle::Store,
    tenant: &TenantName,
    tenant_id: i64,
    token: &str,
) -> anyhow::Result<()> {
    let id = token
        .trim()
        .strip_prefix("pet_")
        .and_then(|rest| rest.split_once('_'))
        .map(|(id, _)| id)
        .context("--enroll-token is not an enrolment token (pet_…)")?;
    let record = store
        .enrollment_token(tenant_id, id)?
        .with_context(|| format!("no enrolment token {id} in tenant {tenant}"))?;
    anyhow::ensure!(
        record.revoked_at.is_none(),
        "enrolment token {id} is revoked"
    );
    anyhow::ensure!(
        record.used < record.uses,
        "enrolment token {id} is spent ({} of {} uses)",
        record.used,
        record.uses
    );
    if let Some(at) = record.expires_at {
        anyhow::ensure!(
            at > passerelle::store::now_ms(),
            "enrolment token {id} has expired"
        );
    }
    Ok(())
}
