//! The PostgreSQL store's URL: parsed once at start, its password hidden wherever it is shown.

use std::str::FromStr as _;

/// A `postgres://` URL. Its `Debug` and `Display` hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl(String);

impl PgUrl {
    /// Accepts `postgres://` and `postgresql://` URLs that tokio-postgres can parse.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let t = text.trim();
        if !(t.starts_with("postgres://") || t.starts_with("postgresql://")) {
            anyhow::bail!(
                "a store URL starts with postgres:// (got {})",
                Self(t.into())
            );
        }
        tokio_postgres::Config::from_str(t)
            .map_err(|e| anyhow::anyhow!("bad store URL {}: {e}", Self(t.into())))?;
        Ok(Self(t.to_owned()))
    }

    /// The URL with its password: for the connection only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // scheme://user:password@host... → scheme://user:***@host...
        let s = &self.0;
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
}
