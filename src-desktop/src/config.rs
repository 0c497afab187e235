//! The helper's configuration file, `~/.config/passerelle/desktop.toml` (XDG_CONFIG_HOME is
//! honoured; `%APPDATA%\passerelle\desktop.toml` on Windows). Every key is optional; unknown
//! keys are refused, and every template is checked when the file is read, so that a typo is
//! reported at once rather than when a client is launched.
//!
//! ```toml
//! ssh_user = "admin"          # login name for SSH sessions
//! connect_timeout_secs = 10   # bound on each connection step to the broker
//! trusted_brokers = ["https://broker.example:8443"]   # opened without asking
//! allow_http = false          # plain http:// brokers only when true
//! local_connections = "first" # or "any": later local connections are refused by default
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
    #[serde(default)]
    trusted_brokers: Vec<String>,
    allow_http: Option<bool>,
    local_connections: Option<LocalConnections>,
    trust_file: Option<PathBuf>,
}

/// Which local connections a tunnel accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalConnections {
    /// Only the first: once the client has connected, nobody else on this machine can use the
    /// session through the port, and the tunnel ends with that connection.
    #[default]
    First,
    /// Any, for as long as the session lasts (clients that reconnect, or several windows).
    Any,
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
    /// Broker origins (`https://host[:port]`) trusted by configuration.
    pub trusted_brokers: Vec<String>,
    /// Whether plain `http://` brokers may be used at all.
    pub allow_http: bool,
    /// Which local connections a tunnel accepts.
    pub local_connections: LocalConnections,
    /// Where brokers confirmed by the user are remembered (`None`: nowhere to keep them).
    pub trust_file: Option<PathBuf>,
    /// The configuration file this came from, for messages.
    pub path: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            clients: BTreeMap::new(),
            ssh_user: None,
            connect_timeout: Duration::from_secs(10),
            trusted_brokers: Vec::new(),
            allow_http: false,
            local_connections: LocalConnections::First,
            trust_file: Self::default_path()
                .and_then(|p| p.parent().map(|d| d.join(crate::trust::TRUST_FILE))),
            path: None,
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
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                path: Some(path),
                ..Self::default()
            }),
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
        let mut trusted_brokers = Vec::with_capacity(file.trusted_brokers.len());
        for broker in &file.trusted_brokers {
            let origin = passerelle_proto::origin::normalize_origin(broker)
                .map_err(|e| fail(format!("trusted_brokers: {e}")))?;
            trusted_brokers.push(origin);
        }
        let defaults = Self::default();
        Ok(Self {
            clients: file.clients,
            ssh_user: file.ssh_user,
            connect_timeout,
            trusted_brokers,
            allow_http: file.allow_http.unwrap_or(false),
            local_connections: file.local_connections.unwrap_or_default(),
            trust_file: file.trust_file.or(defaults.trust_file),
            path: Some(path.to_path_buf()),
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
        assert_eq!(config.trusted_brokers, ["https://broker.example:8443"]);
        assert!(!config.allow_http);
        assert_eq!(config.local_connections, LocalConnections::First);
    }

    #[test]
    fn an_empty_file_is_the_default() {
        assert_eq!(
            parse("").unwrap(),
            Config {
                path: Some("desktop.toml".into()),
                ..Config::default()
            }
        );
        let d = Config::default();
        assert!(!d.allow_http && d.trusted_brokers.is_empty());
        assert_eq!(d.local_connections, LocalConnections::First);
    }

    #[test]
    fn trusted_brokers_are_origins() {
        let c = parse(
            "trusted_brokers = [\"https://Broker.Example:443/\", \"http://10.0.0.2:8080\"]\n\
             allow_http = true\nlocal_connections = \"any\"\ntrust_file = \"/tmp/t\"",
        )
        .unwrap();
        assert_eq!(
            c.trusted_brokers,
            ["https://broker.example", "http://10.0.0.2:8080"]
        );
        assert!(c.allow_http);
        assert_eq!(c.local_connections, LocalConnections::Any);
        assert_eq!(c.trust_file.as_deref(), Some(Path::new("/tmp/t")));
        let err = |t: &str| parse(t).unwrap_err().to_string();
        assert!(err("trusted_brokers = [\"broker.example\"]").contains("trusted_brokers"));
        assert!(err("trusted_brokers = [\"https://b.example/pmad\"]").contains("without a path"));
        assert!(err("local_connections = \"some\"").contains("unknown variant"));
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
