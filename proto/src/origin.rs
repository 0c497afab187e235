//! Web origins a tenant allows to embed its viewer pages (`frame_ancestors`), checked strictly:
//! each goes verbatim into a `Content-Security-Policy: frame-ancestors` header, so anything but
//! `scheme://host[:port]` (a path, a wildcard, a space, a `;` that would start another
//! directive) is refused rather than cleaned up.

/// At most this many origins per tenant.
pub const MAX_ORIGINS: usize = 16;

/// The longest origin accepted, in bytes.
const MAX_ORIGIN_BYTES: usize = 253 + "https://".len() + ":65535".len();

/// Why an origin was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("{0:?} must start with https:// (or http://)")]
    Scheme(String),
    #[error("{0:?} must be scheme://host[:port], without a path, query, user or wildcard")]
    Shape(String),
    #[error("{0:?} has an invalid host name")]
    Host(String),
    #[error("{0:?} has an invalid port")]
    Port(String),
    #[error("at most {MAX_ORIGINS} origins")]
    TooMany,
}

/// Checks and normalizes one origin: `https://Console.Example:443` → `https://console.example`.
pub fn normalize_origin(text: &str) -> Result<String, OriginError> {
    let (scheme, rest) = if let Some(rest) = text.strip_prefix("https://") {
        ("https", rest)
    } else if let Some(rest) = text.strip_prefix("http://") {
        ("http", rest)
    } else {
        return Err(OriginError::Scheme(text.to_owned()));
    };
    if text.len() > MAX_ORIGIN_BYTES {
        return Err(OriginError::Shape(text.to_owned()));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty()
        || rest
            .bytes()
            .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@' | b'*') || !b.is_ascii_graphic())
    {
        return Err(OriginError::Shape(text.to_owned()));
    }
    let (host, port) = split_port(rest).ok_or_else(|| OriginError::Port(text.to_owned()))?;
    let host = host.to_ascii_lowercase();
    let valid_host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        host.parse::<std::net::Ipv4Addr>().is_ok() || dns_name(&host)
    };
    if !valid_host {
        return Err(OriginError::Host(text.to_owned()));
    }
    let default = if scheme == "https" { 443 } else { 80 };
    Ok(match port {
        Some(p) if p != default => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Checks and normalizes a tenant's list (duplicates dropped, order kept).
pub fn normalize_origins(list: &[String]) -> Result<Vec<String>, OriginError> {
    if list.len() > MAX_ORIGINS {
        return Err(OriginError::TooMany);
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for text in list {
        let origin = normalize_origin(text)?;
        if !out.contains(&origin) {
            out.push(origin);
        }
    }
    Ok(out)
}

/// `host[:port]` → (host, port); `None` for a bad port.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    // An IPv6 literal keeps its brackets; its colons are not a port.
    let after_host = if authority.starts_with('[') {
        authority.find(']')? + 1
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    let (host, port) = authority.split_at(after_host);
    match port.strip_prefix(':') {
        None if port.is_empty() => Some((host, None)),
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            let n: u16 = p.parse().ok()?;
            (n != 0).then_some((host, Some(n)))
        }
        Some(_) => None,
    }
}

/// A DNS name: dot-separated labels of letters, digits and inner hyphens.
fn dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalized() {
        for (given, want) in [
            ("https://console.example", "https://console.example"),
            ("https://Console.EXAMPLE/", "https://console.example"),
            ("https://console.example:443", "https://console.example"),
            (
                "https://console.example:8443",
                "https://console.example:8443",
            ),
            ("http://10.0.0.5:80", "http://10.0.0.5"),
            ("https://[::1]:9000", "https://[::1]:9000"),
        ] {
            assert_eq!(normalize_origin(given).as_deref(), Ok(want), "{given}");
        }
    }

    #[test]
    fn anything_that_could_change_the_policy_is_refused() {
        for bad in [
            "console.example",
            "javascript:alert(1)",
            "https://",
            "https://console.example/path",
            "https://console.example?x",
            "https://user@console.example",
            "https://*.example",
            "*",
            "'self'",
            "https://a.example; script-src *",
            "https://a.example https://b.example",
            "https://a.example,https://b.example",
            "https://a.example\n",
            "https://a.example:0",
            "https://a.example:99999",
            "https://a.example:",
            "https://-a.example",
            "https://a_b.example",
            "https://[::1",
            "https://[zz]",
            "https://é.example",
        ] {
            assert!(normalize_origin(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn lists_are_bounded_and_deduplicated() {
        let list = vec![
            "https://a.example".to_owned(),
            "https://A.example:443".to_owned(),
            "https://b.example".to_owned(),
        ];
        assert_eq!(
            normalize_origins(&list).unwrap(),
            vec!["https://a.example", "https://b.example"]
        );
        let many: Vec<String> = (0..17).map(|i| format!("https://h{i}.example")).collect();
        assert_eq!(normalize_origins(&many), Err(OriginError::TooMany));
        assert_eq!(normalize_origins(&[]).unwrap(), Vec::<String>::new());
    }
}
