//! The HTTPS certificate the broker makes for itself when none is given (`tls-cert.pem` and
//! `tls-key.pem` in the data dir): named after the broker's host, valid for a year, renewed at
//! start when under 30 days are left.
//!
//! Names: the public URL's host when one is configured, else the machine's name (from
//! `/etc/hostname`), then `localhost`, `127.0.0.1` and `::1`; the first is also the subject's
//! common name. At each start the pair is checked and made anew, with a new key, when it is
//! missing or unreadable, when the key does not match the certificate, when under
//! [`RENEW_WITHIN`] is left, when it lacks the first name (the public URL changed), or when it
//! is valid for longer than [`LONGEST`] (older versions made certificates valid from 1975 to
//! 4096). This is what OpenSSH does not need and what ACME clients do: renew a short-lived
//! certificate well before it ends. A certificate given with `--tls-cert` never comes here.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

const DAY: u64 = 86_400;
/// How long a generated certificate is valid.
pub(crate) const VALIDITY: Duration = Duration::from_secs(365 * DAY);
/// A generated certificate with less than this left is renewed at start.
pub(crate) const RENEW_WITHIN: Duration = Duration::from_secs(30 * DAY);
/// The longest validity the CA/Browser Forum allows a public certificate; one of ours that
/// exceeds it was made by an older version and is replaced.
pub(crate) const LONGEST: Duration = Duration::from_secs(398 * DAY);
/// Backdating, for clients whose clock is a little behind.
const BACKDATE: Duration = Duration::from_secs(3600);

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The certificate in place is good.
    Kept,
    /// There was none; one was made.
    Created,
    /// It was replaced, for the reason given.
    Renewed(String),
}

/// The host of a URL (`https://broker.example:8443/x` → `broker.example`, IPv6 without its
/// brackets), if it has one.
pub(crate) fn host_of_url(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// The machine's name, from `/etc/hostname`.
fn machine_name() -> Option<String> {
    let text = std::fs::read_to_string("/etc/hostname").ok()?;
    let name = text.trim();
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// The names the certificate carries: `host` (else the machine's name), then the loopback
/// names; the first is its common name.
pub(crate) fn names(host: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = host
        .map(str::to_ascii_lowercase)
        .or_else(machine_name)
        .into_iter()
        .collect();
    for n in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|have| have == n) {
            names.push(n.to_owned());
        }
    }
    names
}

/// Checks the generated pair at `cert` and `key`, making or renewing it as the module says.
/// Logs what it did.
pub(crate) fn ensure(
    cert: &Path,
    key: &Path,
    host: Option<&str>,
    now: SystemTime,
) -> anyhow::Result<Outcome> {
    let wanted = names(host);
    let outcome = match (std::fs::read(cert), std::fs::read(key)) {
        (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Created,
        (Ok(cert_pem), Ok(key_pem)) => match renewal_reason(&cert_pem, &key_pem, &wanted, now) {
            None => return Ok(Outcome::Kept),
            Some(why) => Outcome::Renewed(why),
        },
        (Ok(_), Err(e)) => Outcome::Renewed(format!("its key cannot be read ({e})")),
        (Err(e), _) => Outcome::Renewed(format!("it cannot be read ({e})")),
    };
    let (cert_pem, key_pem) = generate(&wanted, now)?;
    replace(key, key_pem.as_bytes())?;
    replace(cert, cert_pem.as_bytes())?;
    match &outcome {
        Outcome::Created => {
            tracing::info!(names = %wanted.join(", "), "made a self-signed TLS certificate, valid for a year")
        }
        Outcome::Renewed(why) => {
            tracing::warn!(names = %wanted.join(", "), %why, "renewed the self-signed TLS certificate")
        }
        Outcome::Kept => {}
    }
    Ok(outcome)
}

/// Why the pair must be made anew, or `None` if it is good.
fn renewal_reason(
    cert_pem: &[u8],
    key_pem: &[u8],
    wanted: &[String],
    now: SystemTime,
) -> Option<String> {
    let info = match inspect(cert_pem, key_pem) {
        Ok(info) => info,
        Err(e) => return Some(format!("{e:#}")),
    };
    if !info.key_matches {
        return Some("its key does not match it".to_owned());
    }
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let left = info.not_after.saturating_sub(now);
    if left < secs(RENEW_WITHIN) {
        return Some(if left <= 0 {
            "it has expired".to_owned()
        } else {
            format!("it expires in {} days", left / 86_400)
        });
    }
    if info.not_after.saturating_sub(info.not_before) > secs(LONGEST) {
        return Some(
            "it was made by an older version, valid for far longer than a year".to_owned(),
        );
    }
    if let Some(first) = wanted.first()
        && !info.names.contains(first)
    {
        return Some(format!("it does not name {first}"));
    }
    None
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// What a certificate says, as far as renewal cares.
#[derive(Debug)]
struct Info {
    not_before: i64,
    not_after: i64,
    /// DNS names (lowercase) and IP addresses (as text) of the subject alternative names.
    names: Vec<String>,
    key_matches: bool,
}

fn inspect(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Info> {
    use x509_parser::extensions::GeneralName;
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem).context("it is not PEM")?;
    let cert = pem.parse_x509().context("it is not a certificate")?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    let key_text = std::str::from_utf8(key_pem).context("its key is not PEM")?;
    let key = rcgen::KeyPair::from_pem(key_text).context("its key cannot be parsed")?;
    Ok(Info {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        names,
        key_matches: rcgen::PublicKeyData::subject_public_key_info(&key)
            == cert.tbs_certificate.subject_pki.raw,
    })
}

/// A new key and a certificate for `names`, valid from an hour before `now` for a year.
fn generate(names: &[String], now: SystemTime) -> anyhow::Result<(String, String)> {
    let mut params =
        rcgen::CertificateParams::new(names.to_vec()).context("the certificate's names")?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        names.first().map_or("localhost", String::as_str),
    );
    dn.push(rcgen::DnType::OrganizationName, "Passerelle (self-signed)");
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::from(now);
    params.not_before = now - BACKDATE;
    params.not_after = now + VALIDITY;
    let key = rcgen::KeyPair::generate().context("generating a TLS key")?;
    let cert = params
        .self_signed(&key)
        .context("signing the self-signed certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Replaces `path` with `bytes` (mode 0600) through a temporary file and a rename.
fn replace(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    crate::secrets::write_private_file(&tmp, bytes)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(n: u64) -> Duration {
        Duration::from_secs(n * DAY)
    }

    fn read(cert: &Path, key: &Path) -> Info {
        inspect(&std::fs::read(cert).unwrap(), &std::fs::read(key).unwrap()).unwrap()
    }

    #[test]
    fn urls_give_their_host() {
        assert_eq!(
            host_of_url("https://Broker.Example:8443/pmad").as_deref(),
            Some("broker.example")
        );
        assert_eq!(host_of_url("http://[::1]:80").as_deref(), Some("::1"));
        assert_eq!(host_of_url("https://10.0.0.1").as_deref(), Some("10.0.0.1"));
        assert_eq!(host_of_url("no url"), None);
        assert_eq!(
            names(Some("b.example")),
            ["b.example", "localhost", "127.0.0.1", "::1"]
        );
        assert_eq!(names(Some("localhost")), ["localhost", "127.0.0.1", "::1"]);
    }

    #[test]
    fn a_certificate_is_made_for_a_year_kept_and_renewed_near_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let t0 = SystemTime::now();
        assert_eq!(
            ensure(&cert, &key, Some("broker.example"), t0).unwrap(),
            Outcome::Created
        );
        let info = read(&cert, &key);
        assert!(info.key_matches);
        assert_eq!(
            info.names,
            ["broker.example", "localhost", "127.0.0.1", "::1"]
        );
        let valid = info.not_after - info.not_before;
        assert_eq!(valid, secs(VALIDITY + BACKDATE));
        let first = std::fs::read(&cert).unwrap();
        // 300 days on: 65 days left, kept as it is.
        assert_eq!(
            ensure(&cert, &key, Some("broker.example"), t0 + day(300)).unwrap(),
            Outcome::Kept
        );
        assert_eq!(std::fs::read(&cert).unwrap(), first);
        // 340 days on: 25 days left, renewed for a year from then.
        let later = t0 + day(340);
        let renewed = ensure(&cert, &key, Some("broker.example"), later).unwrap();
        assert!(
            matches!(&renewed, Outcome::Renewed(why) if why.contains("expires in 25 days")),
            "{renewed:?}"
        );
        let info = read(&cert, &key);
        assert!(info.key_matches);
        let later_secs = secs(later.duration_since(UNIX_EPOCH).unwrap());
        assert_eq!(info.not_after, later_secs + secs(VALIDITY));
        // Past its end: renewed too.
        let expired = ensure(&cert, &key, Some("broker.example"), later + day(400)).unwrap();
        assert_eq!(expired, Outcome::Renewed("it has expired".into()));
    }

    #[test]
    fn another_host_a_foreign_key_or_a_centuries_long_certificate_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let now = SystemTime::now();
        ensure(&cert, &key, Some("a.example"), now).unwrap();
        let moved = ensure(&cert, &key, Some("b.example"), now).unwrap();
        assert_eq!(moved, Outcome::Renewed("it does not name b.example".into()));
        // A key that belongs to another certificate.
        std::fs::remove_file(&key).unwrap();
        crate::secrets::write_private_file(
            &key,
            rcgen::KeyPair::generate()
                .unwrap()
                .serialize_pem()
                .as_bytes(),
        )
        .unwrap();
        let foreign = ensure(&cert, &key, Some("b.example"), now).unwrap();
        assert_eq!(
            foreign,
            Outcome::Renewed("its key does not match it".into())
        );
        // What older versions made: rcgen's defaults, 1975 to 4096.
        let old = rcgen::generate_simple_self_signed(vec!["b.example".to_owned()]).unwrap();
        std::fs::write(&cert, old.cert.pem()).unwrap();
        std::fs::write(&key, old.signing_key.serialize_pem()).unwrap();
        let legacy = ensure(&cert, &key, Some("b.example"), now).unwrap();
        assert!(
            matches!(&legacy, Outcome::Renewed(why) if why.contains("older version")),
            "{legacy:?}"
        );
        // Garbage is replaced, not fatal.
        std::fs::write(&cert, b"not a certificate").unwrap();
        assert!(matches!(
            ensure(&cert, &key, None, now).unwrap(),
            Outcome::Renewed(_)
        ));
        assert!(read(&cert, &key).key_matches);
    }
}
