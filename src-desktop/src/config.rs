//! The helper's configuration file, `~/.config/passerelle/desktop.toml` (XDG_CONFIG_HOME is
//! honoured; `%APPDATA%\passerelle\desktop.toml` on Windows). Every key is optional; unknown
//! keys are refused, and every template is checked when the file is read, so that a typo is
//! reported at once rather than when a client is launched.
//!
//! ```toml
//! ssh_user = "admin"          # login name for SSH sessions
//! connect_timeout_secs = 10   # bound on each connection step to the broker
//!
//! # Command templates per service (see the `template` module for placeholders).
//! [clients]
//! rdp = "xfreerdp /v:{host}:{port} /cert:tofu /dynamic-resolution"
//! vnc = "vncviewer {host}::{port}"
//! ssh = "xterm -e ssh -p {port} {target}"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use passerelle_proto::ids::ServiceName;
use serde::Deserialize;

use crate::Error;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    clients: BTreeMap<String, String>,
    ssh_user: Option<String>,
    connect_timeout_secs: Option<u64>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Command templates that replace detection, per service name.
    pub clients: BTreeMap<String, String>,
    /// Login name for SSH sessions (`{user}`, `{target}`).
    pub ssh_user: Option<String>,
    /// Bound on each step of a connection to the broker.
    pub connect_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            clients: BTreeMap::new(),
            ssh_user: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Where the file is looked for when no `--config` is given.
    pub fn default_path() -> Option<PathBuf> {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let dir = if cfg!(windows) {
            var("APPDATA")
        } else {
            var("XDG_CONFIG_HOME").or_else(|| var("HOME").map(|h| h.join(".config")))
        }?;
        Some(dir.join("passerelle").join("desktop.toml"))
    }

    /// Reads `path` when given (it must exist), else the default file if there is one.
    pub fn load(path: Option<&Path>) -> Result<Self, Error> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => match Self::default_path() {
                Some(p) => (p, false),
                None => return Ok(Self::default()),
            },
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::Config {
                path: path.display().to_string(),
                detail: e.to_string(),
            }),
        }
    }

    /// Parses and validates the text of a configuration file (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let fail = |detail: String| Error::Config {
            path: path.display().to_string(),
            detail,
        };
        let file: File = toml::from_str(text).map_err(|e| fail(e.message().to_owned()))?;
        for (service, template) in &file.clients {
            ServiceName::new(service.clone())
                .map_err(|_| fail(format!("[clients] {service:?} is not a service name")))?;
            crate::template::check(template)
                .map_err(|e| fail(format!("[clients] {service}: {e}")))?;
        }
        if let Some(user) = &file.ssh_user
            && (user.is_empty() || user.starts_with('-') || user.contains(char::is_whitespace))
        {
            return Err(fail(format!("ssh_user {user:?} is not a login name")));
        }
        let connect_timeout = match file.connect_timeout_secs {
            None => Self::default().connect_timeout,
            Some(s @ 1..=300) => Duration::from_secs(s),
            Some(s) => {
                return Err(fail(format!(
                    "connect_timeout_secs {s} is not within 1..=300"
                )));
            }
        };
        Ok(Self {
            clients: file.clients,
            ssh_user: file.ssh_user,
            connect_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(text, Path::new("desktop.toml"))
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../desktop.example.toml");
        let config = parse(text).unwrap();
        assert!(config.clients.contains_key("rdp"));
        assert_eq!(config.ssh_user.as_deref(), Some("admin"));
    }

    #[test]
    fn an_empty_file_is_the_default() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn mistakes_are_reported() {
        let err = |t: &str| parse(t).unwrap_err().to_string();
        assert!(err("colour = 1").contains("unknown field `colour`"));
        assert!(err("[clients]\nrdp = \"x {prt}\"").contains("unknown placeholder {prt}"));
        assert!(err("[clients]\n\"r p\" = \"x\"").contains("not a service name"));
        assert!(err("ssh_user = \"-oProxyCommand=x\"").contains("not a login name"));
        assert!(err("connect_timeout_secs = 0").contains("1..=300"));
        assert!(err("[clients]\nrdp = 3").starts_with("configuration desktop.toml: "));
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        let e = Config::load(Some(Path::new("/nonexistent/passerelle.toml"))).unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e}");
    }
}
