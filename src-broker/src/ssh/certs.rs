//! Whether an OpenSSH user certificate lets SSH user `user` sign in as that agent: the rules
//! sshd applies with `TrustedUserCAKeys`, minus what the broker has no use for. No I/O: the
//! handler looks up the CA and the revocation list, then asks [`check`].
//!
//! - a *user* certificate (a host certificate is no agent's);
//! - its principals name the agent: `user` must be one of them. A certificate without
//!   principals (valid for every name to OpenSSH) is refused: one leaked certificate would
//!   otherwise sign in as every agent of the tenant;
//! - valid now (`valid after <= now < valid before`, as sshd);
//! - neither its serial nor its key revoked by the tenant;
//! - critical options: `source-address` is enforced on the agent's address; `force-command`
//!   is harmless (agents run no command); any other is refused, as PROTOCOL.certkeys requires of
//!   options an implementation does not know;
//! - the `permit-port-forwarding` extension, as sshd requires for `-R` (`ssh-keygen -s` grants
//!   it unless told `-O no-port-forwarding`).
//!
//! The signature and the CA's trust are checked before (russh verifies the signature and the
//! holder's proof of possession; the CA must be one the store knows).

use std::net::IpAddr;

use passerelle_proto::ssh_ca::RevokedKind;
use russh::keys::Certificate;
use russh::keys::ssh_key::certificate::CertType;

use crate::netaddr::Cidr;

/// The extension that lets a certificate's holder forward ports.
pub(crate) const PERMIT_PORT_FORWARDING: &str = "permit-port-forwarding";

/// Why a certificate from a trusted CA does not sign in; the text is shown to the agent (on
/// the SSH disconnect) and written to the audit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum CertRefusal {
    #[error("a host certificate is not an agent's")]
    HostCertificate,
    #[error("the certificate names no principal; it must name the agent's id")]
    NoPrincipal,
    #[error("the certificate is for {principals}, not {user}")]
    WrongPrincipal { user: String, principals: String },
    #[error("the certificate expired at {0}")]
    Expired(String),
    #[error("the certificate is not valid before {0}")]
    NotYetValid(String),
    #[error("the certificate's serial {0} is revoked")]
    RevokedSerial(u64),
    #[error("the certificate's key {0} is revoked")]
    RevokedKey(String),
    #[error("the certificate allows only source-address {allowed}, not {peer}")]
    SourceAddress { allowed: String, peer: IpAddr },
    #[error("the certificate's source-address {0:?} is not a list of addresses")]
    BadSourceAddress(String),
    #[error("the certificate has critical option {0:?}, which the broker does not support")]
    UnsupportedOption(String),
    #[error("the certificate does not permit port forwarding (made with -O no-port-forwarding)")]
    NoPortForwarding,
}

/// What the handler knows besides the certificate.
pub(super) struct Context<'a> {
    /// The SSH user name (the agent's id).
    pub(super) user: &'a str,
    /// The agent's address (after a trusted proxy's PROXY header).
    pub(super) peer: IpAddr,
    /// Seconds since the epoch.
    pub(super) now: u64,
    /// Which of its serial and key the tenant revoked, if any.
    pub(super) revoked: Option<RevokedKind>,
    /// The SHA256 fingerprint of the certificate's key.
    pub(super) key_fingerprint: &'a str,
}

/// Checks the certificate against the rules of the module's header.
pub(super) fn check(cert: &Certificate, cx: &Context<'_>) -> Result<(), CertRefusal> {
    if cert.cert_type() != CertType::User {
        return Err(CertRefusal::HostCertificate);
    }
    let principals = cert.valid_principals();
    if principals.is_empty() {
        return Err(CertRefusal::NoPrincipal);
    }
    if !principals.iter().any(|p| p == cx.user) {
        let mut listed: Vec<&str> = principals.iter().map(String::as_str).take(8).collect();
        if principals.len() > listed.len() {
            listed.push("...");
        }
        return Err(CertRefusal::WrongPrincipal {
            user: super::guard::clean_user(cx.user),
            principals: printable(&listed.join(", ")),
        });
    }
    if cx.now < cert.valid_after() {
        return Err(CertRefusal::NotYetValid(when(cert.valid_after())));
    }
    if cx.now >= cert.valid_before() {
        return Err(CertRefusal::Expired(when(cert.valid_before())));
    }
    match cx.revoked {
        Some(RevokedKind::Serial) => return Err(CertRefusal::RevokedSerial(cert.serial())),
        Some(RevokedKind::Key) => return Err(CertRefusal::RevokedKey(cx.key_fingerprint.into())),
        None => {}
    }
    for (name, value) in cert.critical_options().iter() {
        match name.as_str() {
            "source-address" => source_address(value, cx.peer)?,
            "force-command" => {}
            other => return Err(CertRefusal::UnsupportedOption(printable(other))),
        }
    }
    if !cert.extensions().contains_key(PERMIT_PORT_FORWARDING) {
        return Err(CertRefusal::NoPortForwarding);
    }
    Ok(())
}

fn source_address(list: &str, peer: IpAddr) -> Result<(), CertRefusal> {
    let mut blocks = Vec::new();
    for item in list.split(',') {
        let cidr: Cidr = item
            .trim()
            .parse()
            .map_err(|_| CertRefusal::BadSourceAddress(printable(list)))?;
        blocks.push(cidr);
    }
    if blocks.iter().any(|b| b.contains(peer)) {
        Ok(())
    } else {
        Err(CertRefusal::SourceAddress {
            allowed: printable(list),
            peer,
        })
    }
}

/// Text from a certificate as shown in messages and the audit.
pub(super) fn printable(text: &str) -> String {
    super::guard::shown(text, 200)
}

/// An RFC 3339 time of a certificate bound (seconds since the epoch).
fn when(secs: u64) -> String {
    let ms = i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    crate::store::rfc3339(ms)
}

#[cfg(test)]
mod tests {
    use russh::keys::ssh_key::certificate::Builder;
    use russh::keys::ssh_key::private::Ed25519Keypair;
    use russh::keys::{PrivateKey, ssh_key};

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
    }

    /// A certificate of key 2 signed by CA key 1, shaped by `f`.
    fn cert(f: impl FnOnce(&mut Builder) -> ssh_key::Result<()>) -> Certificate {
        cert_with(true, CertType::User, f)
    }

    fn cert_with(
        forwarding: bool,
        kind: CertType,
        f: impl FnOnce(&mut Builder) -> ssh_key::Result<()>,
    ) -> Certificate {
        let holder = key(2);
        let mut b = Builder::new(
            [7; 16],
            holder.public_key().key_data().clone(),
            NOW - 60,
            NOW + 3600,
        )
        .unwrap();
        b.serial(42).unwrap();
        b.cert_type(kind).unwrap();
        b.key_id("pc-1 cert").unwrap();
        f(&mut b).unwrap();
        if forwarding {
            b.extension(PERMIT_PORT_FORWARDING, "").unwrap();
        }
        b.sign(&key(1)).unwrap()
    }

    fn cx(user: &str) -> Context<'_> {
        Context {
            user,
            peer: "192.0.2.7".parse().unwrap(),
            now: NOW,
            revoked: None,
            key_fingerprint: "SHA256:k",
        }
    }

    #[test]
    fn a_user_certificate_naming_the_agent_and_valid_now_signs_in() {
        let c = cert(|b| b.valid_principal("pc-1").map(drop));
        assert_eq!(check(&c, &cx("pc-1")), Ok(()));
        let c = cert(|b| {
            b.valid_principal("pc-0")?;
            b.valid_principal("pc-1").map(drop)
        });
        assert_eq!(check(&c, &cx("pc-1")), Ok(()));
    }

    #[test]
    fn principals_must_name_the_agent() {
        let c = cert(|b| b.valid_principal("pc-2").map(drop));
        let refused = check(&c, &cx("pc-1")).unwrap_err();
        assert_eq!(refused.to_string(), "the certificate is for pc-2, not pc-1");
        let any = cert(|b| b.all_principals_valid().map(drop));
        assert_eq!(check(&any, &cx("pc-1")), Err(CertRefusal::NoPrincipal));
    }

    #[test]
    fn validity_is_checked_as_sshd_does() {
        let c = cert(|b| b.valid_principal("pc-1").map(drop));
        let mut at = cx("pc-1");
        at.now = NOW + 3600;
        assert!(matches!(check(&c, &at), Err(CertRefusal::Expired(_))));
        at.now = NOW - 61;
        assert!(matches!(check(&c, &at), Err(CertRefusal::NotYetValid(_))));
        at.now = NOW - 60;
        assert_eq!(check(&c, &at), Ok(()));
    }

    #[test]
    fn revocations_and_host_certificates_are_refused() {
        let c = cert(|b| b.valid_principal("pc-1").map(drop));
        let mut at = cx("pc-1");
        at.revoked = Some(RevokedKind::Serial);
        assert_eq!(check(&c, &at), Err(CertRefusal::RevokedSerial(42)));
        at.revoked = Some(RevokedKind::Key);
        assert_eq!(
            check(&c, &at),
            Err(CertRefusal::RevokedKey("SHA256:k".into()))
        );
        let host = cert_with(true, CertType::Host, |b| {
            b.valid_principal("pc-1").map(drop)
        });
        assert_eq!(check(&host, &cx("pc-1")), Err(CertRefusal::HostCertificate));
        let no_forwarding = cert_with(false, CertType::User, |b| {
            b.valid_principal("pc-1").map(drop)
        });
        assert_eq!(
            check(&no_forwarding, &cx("pc-1")),
            Err(CertRefusal::NoPortForwarding)
        );
    }

    #[test]
    fn critical_options_are_enforced_or_refused() {
        let with = |name: &'static str, value: &'static str| {
            cert(move |b| {
                b.valid_principal("pc-1")?;
                b.critical_option(name, value).map(drop)
            })
        };
        let here = with("source-address", "10.0.0.0/8,192.0.2.0/24");
        assert_eq!(check(&here, &cx("pc-1")), Ok(()));
        let elsewhere = with("source-address", "10.0.0.0/8");
        assert!(matches!(
            check(&elsewhere, &cx("pc-1")),
            Err(CertRefusal::SourceAddress { .. })
        ));
        let garbage = with("source-address", "not an address");
        assert!(matches!(
            check(&garbage, &cx("pc-1")),
            Err(CertRefusal::BadSourceAddress(_))
        ));
        assert_eq!(check(&with("force-command", "true"), &cx("pc-1")), Ok(()));
        assert_eq!(
            check(&with("verify-required", ""), &cx("pc-1")),
            Err(CertRefusal::UnsupportedOption("verify-required".into()))
        );
    }
}
