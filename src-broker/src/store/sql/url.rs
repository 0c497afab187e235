//! The PostgreSQL store's URL: parsed once at start, its password hidden wherever it is shown,
//! and its TLS settings (`sslmode`, `sslrootcert`, as libpq names them) taken out for the
//! store's own TLS connector.

use std::path::PathBuf;
use std::str::FromStr as _;

/// A `postgres://` URL. Its `Debug` and `Display` hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    /// The URL as given (shown, password hidden).
    given: String,
    /// What tokio-postgres parses: without `sslrootcert`, `verify-*` modes as `require`.
    connect: String,
    tls: Option<PgTls>,
}

/// TLS to the server: always with its certificate verified (chain and host name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    /// `sslrootcert`: a PEM file of the CA certificates to trust; without it, the public web
    /// PKI's roots (webpki-roots).
    pub roots: Option<PathBuf>,
}

impl PgUrl {
    /// Accepts `postgres://` and `postgresql://` URLs that tokio-postgres can parse, with
    /// libpq's `sslmode` (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`) and
    /// `sslrootcert=FILE`. TLS is used with `require` and the `verify-*` modes, and always
    /// verifies the server's certificate and name (stricter than libpq's `require`, which
    /// checks nothing without a root file); `prefer` (the default) and `disable` connect
    /// without TLS.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let t = text.trim();
        let shown = |given: &str| Self {
            given: given.to_owned(),
            connect: String::new(),
            tls: None,
        };
        if !(t.starts_with("postgres://") || t.starts_with("postgresql://")) {
            anyhow::bail!("a store URL starts with postgres:// (got {})", shown(t));
        }
        let (connect, mode, roots) = split_tls(t);
        let config = tokio_postgres::Config::from_str(&connect)
            .map_err(|e| anyhow::anyhow!("bad store URL {}: {e}", shown(t)))?;
        let tls = match (config.get_ssl_mode(), mode.as_deref()) {
            (tokio_postgres::config::SslMode::Require, _) => Some(PgTls {
                roots: roots.map(PathBuf::from),
            }),
            (_, mode) if roots.is_some() => anyhow::bail!(
                "bad store URL {}: sslrootcert needs sslmode=verify-full (or require, \
                 verify-ca), not {}",
                shown(t),
                mode.unwrap_or("the default prefer")
            ),
            _ => None,
        };
        Ok(Self {
            given: t.to_owned(),
            connect,
            tls,
        })
    }

    /// The URL with its password, without the TLS keys tokio-postgres does not know: for the
    /// connection only.
    pub fn expose(&self) -> &str {
        &self.connect
    }

    /// The TLS to use, if any.
    pub fn tls(&self) -> Option<&PgTls> {
        self.tls.as_ref()
    }
}

/// The URL without `sslrootcert` and with `verify-ca`/`verify-full` as `require` (every TLS
/// connection of the store verifies fully), the `sslmode` given, and the root file.
fn split_tls(url: &str) -> (String, Option<String>, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None, None);
    };
    let (mut mode, mut roots) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sslrootcert", v)) => roots = Some(v.to_owned()),
            Some(("sslmode", v)) => {
                mode = Some(v.to_owned());
                let v = if matches!(v, "verify-ca" | "verify-full") {
                    "require"
                } else {
                    v
                };
                kept.push(format!("sslmode={v}"));
            }
            _ => kept.push(pair.to_owned()),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, mode, roots)
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // scheme://user:password@host... → scheme://user:***@host...
        let s = &self.given;
        let Some(scheme_end) = s.find("://").map(|i| i + 3) else {
            return f.write_str("postgres://***");
        };
        let rest = &s[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        // Query parameters may carry `password=` too: shown without their values.
        let tail = tail
            .split_once('?')
            .map_or(tail.to_owned(), |(path, query)| {
                let keys: Vec<&str> = query
                    .split('&')
                    .map(|kv| kv.split('=').next().unwrap_or(""))
                    .collect();
                format!("{path}?{}", keys.join("=…&") + "=…")
            });
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                write!(f, "{}{user}:***@{host}{tail}", &s[..scheme_end])
            }
            None => write!(f, "{}{authority}{tail}", &s[..scheme_end]),
        }
    }
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_hide_their_passwords() {
        let url = PgUrl::parse("postgres://app:s3cret@db.example:5432/passerelle").unwrap();
        let shown = format!("{url} {url:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("app:***@db.example:5432/passerelle"),
            "{shown}"
        );
        let q = PgUrl::parse("postgresql://h/db?user=a&password=s3cret").unwrap();
        assert!(!q.to_string().contains("s3cret"), "{q}");
        assert!(PgUrl::parse("mysql://x").is_err());
        let bad = PgUrl::parse("postgres://app:s3cret@h:notaport/db").unwrap_err();
        assert!(!format!("{bad:#}").contains("s3cret"), "{bad:#}");
    }

    #[test]
    fn tls_settings_are_taken_out_of_the_url() {
        let plain = PgUrl::parse("postgres://app@h/db").unwrap();
        assert_eq!(plain.tls(), None);
        let prefer = PgUrl::parse("postgres://app@h/db?sslmode=prefer").unwrap();
        assert_eq!(
            prefer.tls(),
            None,
            "prefer never verifies, so it means no TLS here"
        );

        let full = PgUrl::parse(
            "postgres://app:pw@h/db?sslmode=verify-full&sslrootcert=/etc/pg/ca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(
            full.tls(),
            Some(&PgTls {
                roots: Some("/etc/pg/ca.pem".into())
            })
        );
        assert_eq!(
            full.expose(),
            "postgres://app:pw@h/db?sslmode=require&connect_timeout=3"
        );
        assert!(full.to_string().contains("sslrootcert"), "{full}");
        for mode in ["require", "verify-ca"] {
            let u = PgUrl::parse(&format!("postgres://h/db?sslmode={mode}")).unwrap();
            assert_eq!(u.tls(), Some(&PgTls { roots: None }), "{mode}");
        }

        let lone = PgUrl::parse("postgres://app:s3cret@h/db?sslrootcert=/ca.pem").unwrap_err();
        assert!(
            format!("{lone:#}").contains("sslrootcert needs sslmode"),
            "{lone:#}"
        );
        let off = PgUrl::parse("postgres://h/db?sslmode=disable&sslrootcert=/ca.pem");
        assert!(off.is_err());
        let bad = PgUrl::parse("postgres://app:s3cret@h/db?sslmode=sometimes").unwrap_err();
        assert!(!format!("{bad:#}").contains("s3cret"), "{bad:#}");
    }
}
