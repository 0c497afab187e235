//! Agent kits (`passerelle agent kit`): a folder that installs the agent on a workstation with
//! nothing but the OS's own OpenSSH client. This module owns what goes in the folder: the
//! install script (Linux: `install.sh` and a systemd unit template; Windows: `install.ps1` and a
//! scheduled task), the broker's pinned `known_hosts` line, its SSH address and public URL, the
//! forwards, and the enrolment token when one is given. The agent's key is never made here: the
//! install script makes it on the workstation.
//!
//! Values are baked into the scripts as quoted literals (shell or PowerShell single quotes), and
//! checked first, so that a kit never carries a value its scripts would misread.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use passerelle_proto::ids::{AgentId, TenantName};

const INSTALL_SH: &str = include_str!("install.sh");
const UNIT_IN: &str = include_str!("passerelle-agent.service.in");
const INSTALL_PS1: &str = include_str!("install.ps1");

/// The workstation's OS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Os {
    Linux,
    Windows,
}

/// How the workstation gets its registration.
#[derive(Clone)]
pub enum Identity {
    /// An admin registers the key the install script prints, under this id (or the hostname).
    Id(Option<AgentId>),
    /// The install script enrols with this token (`POST /api/v1/enroll`).
    EnrollToken(String),
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => f.debug_tuple("Id").field(id).finish(),
            Self::EnrollToken(_) => f.write_str("EnrollToken(<redacted>)"),
        }
    }
}

/// A forward the agent announces: `-R NAME:0:HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub service: &'static str,
    pub host: String,
    pub port: u16,
}

impl Forward {
    /// `vnc`, `rdp` or `ssh`, to `HOST:PORT` (a host name or an IP address; `[v6]:port`).
    pub fn parse(service: &'static str, target: &str) -> anyhow::Result<Self> {
        let (host, port) = target
            .rsplit_once(':')
            .context("a forward's target must be HOST:PORT")?;
        let port: u16 = port
            .parse()
            .with_context(|| format!("bad port in {target:?}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        check_host(host)?;
        Ok(Self {
            service,
            host: host.to_owned(),
            port,
        })
    }

    fn arg(&self) -> String {
        if self.host.contains(':') {
            format!("{}:0:[{}]:{}", self.service, self.host, self.port)
        } else {
            format!("{}:0:{}:{}", self.service, self.host, self.port)
        }
    }
}

/// Everything a kit bakes in.
#[derive(Clone, Debug)]
pub struct Kit {
    pub tenant: TenantName,
    pub os: Os,
    pub identity: Identity,
    /// Where agents reach the broker's SSH listener.
    pub ssh_host: String,
    pub ssh_port: u16,
    /// The pinned line, as `passerelle host-key --known-hosts-host` prints it.
    pub known_hosts: String,
    /// The broker's public URL (enrolment), without a trailing slash.
    pub public_url: String,
    pub forwards: Vec<Forward>,
    /// A PEM certificate (or CA) the Linux script's curl trusts for the public URL.
    pub cacert: Option<String>,
}

/// A host name or an IP address: letters, digits, `.`, `-`, `:` (IPv6), nothing a script or a
/// unit file would read otherwise.
fn check_host(host: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !host.is_empty()
            && host.len() <= 253
            && !host.starts_with('-')
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b)),
        "{host:?} is not a host name or an IP address"
    );
    Ok(())
}

/// A POSIX shell single-quoted literal.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A PowerShell single-quoted literal (the quote doubled; PowerShell also ends such a string at
/// the typographic quotes, so those are doubled too).
fn ps_quote(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in values {
        out = out.replace(&format!("@@{name}@@"), value);
    }
    out
}

impl Kit {
    fn check(&self) -> anyhow::Result<()> {
        check_host(&self.ssh_host)?;
        anyhow::ensure!(self.ssh_port != 0, "the SSH port must not be 0");
        anyhow::ensure!(
            self.public_url.starts_with("https://") || self.public_url.starts_with("http://"),
            "the public URL must be http(s)://…, not {:?}",
            self.public_url
        );
        anyhow::ensure!(
            !self
                .public_url
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "'\"`$\\".contains(c)),
            "the public URL {:?} has characters a script would misread",
            self.public_url
        );
        anyhow::ensure!(
            !self.known_hosts.contains(['\n', '\r']) && !self.known_hosts.is_empty(),
            "the known_hosts line must be one line"
        );
        anyhow::ensure!(
            !self.forwards.is_empty(),
            "a kit needs at least one forward"
        );
        if let Identity::EnrollToken(token) = &self.identity {
            anyhow::ensure!(
                !token.is_empty()
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b)),
                "the enrolment token is malformed (expected pet_…)"
            );
        }
        Ok(())
    }

    fn agent_id(&self) -> String {
        match &self.identity {
            Identity::Id(Some(id)) => id.as_str().to_owned(),
            Identity::Id(None) | Identity::EnrollToken(_) => String::new(),
        }
    }

    fn values(&self) -> Vec<(&'static str, String)> {
        let forwards: Vec<String> = self.forwards.iter().map(Forward::arg).collect();
        vec![
            ("TENANT_PLAIN", self.tenant.as_str().to_owned()),
            ("TENANT", self.tenant.as_str().to_owned()),
            ("SSH_HOST_PLAIN", self.ssh_host.clone()),
            ("SSH_PORT_PLAIN", self.ssh_port.to_string()),
            (
                "FORWARDS_PLAIN",
                forwards
                    .iter()
                    .map(|f| format!("-R {f}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            (
                "FORWARDS_PS",
                forwards
                    .iter()
                    .map(|f| format!("'-R', {}", ps_quote(f)))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        ]
    }

    /// The kit's files: (name, contents, private).
    pub fn files(&self) -> anyhow::Result<Vec<(&'static str, String, bool)>> {
        self.check()?;
        let mut files = Vec::new();
        let common = self.values();
        match self.os {
            Os::Linux => {
                let mut v = common.clone();
                v.extend([
                    ("SSH_HOST", sh_quote(&self.ssh_host)),
                    ("SSH_PORT", self.ssh_port.to_string()),
                    ("PUBLIC_URL", sh_quote(&self.public_url)),
                    ("AGENT_ID", sh_quote(&self.agent_id())),
                ]);
                files.push(("install.sh", fill(INSTALL_SH, &v), false));
                files.push(("passerelle-agent.service.in", fill(UNIT_IN, &v), false));
                if let Some(pem) = &self.cacert {
                    files.push(("broker-ca.pem", pem.clone(), false));
                }
            }
            Os::Windows => {
                let mut v = common.clone();
                v.extend([
                    ("SSH_HOST", ps_quote(&self.ssh_host)),
                    ("SSH_PORT", self.ssh_port.to_string()),
                    ("PUBLIC_URL", ps_quote(&self.public_url)),
                    ("AGENT_ID", ps_quote(&self.agent_id())),
                ]);
                files.push(("install.ps1", fill(INSTALL_PS1, &v), false));
            }
        }
        files.push(("known_hosts", format!("{}\n", self.known_hosts), false));
        if let Identity::EnrollToken(token) = &self.identity {
            files.push(("enroll-token", format!("{token}\n"), true));
        }
        Ok(files)
    }

    /// Writes the kit into `out` (made if missing; an existing kit's files are replaced).
    /// The enrolment token's file is 0600; `install.sh` is executable.
    pub fn write(&self, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let files = self.files()?;
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let mut written = Vec::new();
        for (name, contents, private) in files {
            let path = out.join(name);
            let mode = match (private, name) {
                (true, _) => 0o600,
                (false, "install.sh") => 0o755,
                (false, _) => 0o644,
            };
            // Replace, never write through an existing file (or a link planted there).
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            std::io::Write::write_all(&mut file, contents.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting the mode of {}", path.display()))?;
            written.push(path);
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests;
