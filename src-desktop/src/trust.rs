//! Which brokers a `passerelle://` link may send the helper to.
//!
//! Any web page can open such a link, so a link alone proves nothing: the helper opens sessions
//! only on brokers the user trusts, named by origin (`https://host[:port]`): those in the
//! configuration's `trusted_brokers`, and those the user confirmed once ("Open a session on
//! broker.example?"), remembered in the trust file (one origin a line, like OpenSSH's
//! `known_hosts`, which also asks on first contact and remembers the answer). A link to any
//! other broker is refused with a message saying how to trust it. Plain `http://` brokers are
//! refused outright unless the configuration says `allow_http = true`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use passerelle_proto::launch::LaunchUrl;
use url::Url;

use crate::Error;
use crate::config::Config;

/// Name of the trust file beside the configuration file.
pub const TRUST_FILE: &str = "trusted-brokers";

/// What [`Trust::check`] says of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Configured or confirmed before: go ahead.
    Trusted,
    /// Never seen: ask the user about `origin`, or refuse.
    Unknown {
        /// The broker's origin, e.g. `https://broker.example:8443`.
        origin: String,
    },
}

/// The trusted brokers of one configuration.
#[derive(Debug, Clone)]
pub struct Trust {
    configured: Vec<String>,
    file: Option<PathBuf>,
    allow_http: bool,
    config_path: Option<PathBuf>,
}

/// The origin of a broker URL: scheme, host and port (the default port left out).
pub fn origin_of(broker: &str) -> Result<String, Error> {
    use passerelle_proto::launch::LaunchUrlError;
    let url = Url::parse(broker).map_err(|_| LaunchUrlError::BadBroker)?;
    if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
        return Err(LaunchUrlError::BadBroker.into());
    }
    Ok(url.origin().ascii_serialization())
}

impl Trust {
    /// The brokers `config` trusts.
    pub fn new(config: &Config) -> Self {
        Self {
            configured: config.trusted_brokers.clone(),
            file: config.trust_file.clone(),
            allow_http: config.allow_http,
            config_path: config.path.clone(),
        }
    }

    /// Whether the link's broker may be used: an error for plain HTTP (unless allowed),
    /// [`Verdict::Unknown`] for a broker not trusted yet.
    pub fn check(&self, launch: &LaunchUrl) -> Result<Verdict, Error> {
        let origin = origin_of(&launch.broker)?;
        if origin.starts_with("http://") && !self.allow_http {
            return Err(Error::InsecureBroker {
                broker: origin,
                config: self.config_name(),
            });
        }
        if self.configured.contains(&origin) || self.remembered().contains(&origin) {
            return Ok(Verdict::Trusted);
        }
        Ok(Verdict::Unknown { origin })
    }

    /// The refusal for an unknown broker when nobody can be asked.
    pub fn refusal(&self, origin: &str, asked: bool) -> Error {
        Error::UntrustedBroker {
            origin: origin.to_owned(),
            config: self.config_name(),
            declined: asked,
        }
    }

    /// Remembers a broker the user confirmed.
    pub fn remember(&self, origin: &str) -> Result<(), Error> {
        let Some(file) = &self.file else {
            return Err(Error::Config {
                path: TRUST_FILE.to_owned(),
                detail: "no configuration directory to keep trusted brokers in".to_owned(),
            });
        };
        let fail = |e: std::io::Error| Error::Config {
            path: file.display().to_string(),
            detail: e.to_string(),
        };
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut out = options.open(file).map_err(fail)?;
        writeln!(out, "{origin}").map_err(fail)?;
        tracing::info!(%origin, file = %file.display(), "broker trusted");
        Ok(())
    }

    /// The origins in the trust file (lines; `#` starts a comment; unreadable means none).
    fn remembered(&self) -> Vec<String> {
        let Some(text) = self.file.as_deref().and_then(read) else {
            return Vec::new();
        };
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .filter_map(|l| passerelle_proto::origin::normalize_origin(l).ok())
            .collect()
    }

    fn config_name(&self) -> String {
        self.config_path.as_ref().map_or_else(
            || "~/.config/passerelle/desktop.toml".to_owned(),
            |p| p.display().to_string(),
        )
    }
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(broker: &str) -> LaunchUrl {
        LaunchUrl {
            broker: broker.into(),
            session: "s".into(),
            token: "t".into(),
            service: passerelle_proto::ids::ServiceName::new("rdp").unwrap(),
            fingerprint: None,
            agent: None,
        }
    }

    fn config(dir: &Path, extra: &str) -> Config {
        let text = format!("trust_file = {:?}\n{extra}", dir.join(TRUST_FILE));
        Config::parse(&text, &dir.join("desktop.toml")).unwrap()
    }

    #[test]
    fn origins_drop_paths_and_default_ports() {
        assert_eq!(
            origin_of("https://B.example:443/pmad").unwrap(),
            "https://b.example"
        );
        assert_eq!(
            origin_of("https://b.example:8443").unwrap(),
            "https://b.example:8443"
        );
        assert_eq!(origin_of("http://[::1]:80/").unwrap(), "http://[::1]");
        assert!(origin_of("file:///etc/passwd").is_err());
    }

    #[test]
    fn configured_and_remembered_brokers_are_trusted_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), "trusted_brokers = [\"https://a.example:8443\"]");
        let trust = Trust::new(&c);
        assert_eq!(
            trust.check(&launch("https://a.example:8443/x")).unwrap(),
            Verdict::Trusted
        );
        let unknown = trust.check(&launch("https://evil.example")).unwrap();
        assert_eq!(
            unknown,
            Verdict::Unknown {
                origin: "https://evil.example".into()
            }
        );
        // The same host on another port is another broker.
        assert!(matches!(
            trust.check(&launch("https://a.example")).unwrap(),
            Verdict::Unknown { .. }
        ));
        trust.remember("https://b.example").unwrap();
        assert_eq!(
            trust.check(&launch("https://b.example/")).unwrap(),
            Verdict::Trusted
        );
        // Remembered across runs, private to the user.
        assert_eq!(
            Trust::new(&c).check(&launch("https://b.example")).unwrap(),
            Verdict::Trusted
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(TRUST_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let refusal = trust.refusal("https://evil.example", false).to_string();
        assert!(
            refusal.contains("https://evil.example") && refusal.contains("trusted_brokers"),
            "{refusal}"
        );
    }

    #[test]
    fn plain_http_needs_the_flag_even_when_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let strict = config(dir.path(), "trusted_brokers = [\"http://lab.example\"]");
        let e = Trust::new(&strict)
            .check(&launch("http://lab.example"))
            .unwrap_err();
        assert!(matches!(e, Error::InsecureBroker { .. }), "{e}");
        assert!(e.to_string().contains("allow_http = true"), "{e}");
        let lax = config(
            dir.path(),
            "trusted_brokers = [\"http://lab.example\"]\nallow_http = true",
        );
        assert_eq!(
            Trust::new(&lax)
                .check(&launch("http://lab.example"))
                .unwrap(),
            Verdict::Trusted
        );
    }
}
