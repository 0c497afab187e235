//! A tenant's SSH certificate authorities: the bodies of `/api/v1/tenant/ssh-ca` and
//! `/api/v1/tenant/ssh-ca/revoked`, and the message a CA's holder signs to prove it holds it.
//!
//! A tenant trusts an OpenSSH *user* CA: agents presenting a certificate it signed, whose
//! principal is their id, sign in without a registered key. Because a CA key names the tenant
//! its certificates belong to, trusting one someone else holds would hand their fleet to this
//! tenant: a tenant that brings its own CA proves it holds the private half by signing
//! [`proof_message`] with `ssh-keygen -Y sign -n` [`PROOF_NAMESPACE`]. A CA the broker
//! generates needs no proof (`{"generate": true}`; `passerelle ca sign` then signs with it).

use serde::{Deserialize, Serialize};

use crate::ids::TenantName;

/// The `ssh-keygen -Y sign -n` namespace of a CA ownership proof.
pub const PROOF_NAMESPACE: &str = "passerelle-ssh-ca";
/// The longest public key line accepted (an RSA 16384-bit key fits).
pub const MAX_PUBLIC_KEY: usize = 8192;
/// The longest proof (an armored SSHSIG of an RSA 16384-bit key fits).
pub const MAX_PROOF: usize = 16_384;
/// The longest key id or revocation value accepted.
pub const MAX_TEXT: usize = 8192;

/// What the holder of a CA's private key signs to let `tenant` trust it: the tenant's name,
/// so that a proof made for one tenant is worth nothing in another.
pub fn proof_message(tenant: &TenantName) -> String {
    format!("passerelle ssh-ca for tenant {tenant}")
}

/// `POST /api/v1/tenant/ssh-ca`: trust a CA the tenant holds (`public_key` and `proof`), or
/// have the broker generate one (`generate`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddSshCa {
    /// The CA's public key, an OpenSSH line (`ssh-ed25519 AAAA... comment`).
    #[serde(default)]
    pub public_key: Option<String>,
    /// `ssh-keygen -Y sign -f CA -n passerelle-ssh-ca` of [`proof_message`], armored.
    #[serde(default)]
    pub proof: Option<String>,
    /// Generate an Ed25519 CA on the broker (its private half sealed in the store).
    #[serde(default)]
    pub generate: bool,
}

impl AddSshCa {
    /// Checks the body's shape (not the key or the proof, which need the crypto).
    pub fn check(&self) -> Result<(), &'static str> {
        match (&self.public_key, &self.proof, self.generate) {
            (None, None, true) => Ok(()),
            (Some(_), _, true) | (_, Some(_), true) => {
                Err("give either generate or public_key with proof, not both")
            }
            (Some(k), Some(p), false) => {
                if k.len() > MAX_PUBLIC_KEY {
                    Err("public_key is too long")
                } else if p.len() > MAX_PROOF {
                    Err("proof is too long")
                } else {
                    Ok(())
                }
            }
            (Some(_), None, false) => Err(
                "proof is missing: sign the tenant's proof message with the CA (see GET /api/v1/tenant/ssh-ca)",
            ),
            (None, _, false) => Err("give public_key with proof, or generate: true"),
        }
    }
}

/// A CA a tenant trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SshCaInfo {
    /// Its id in the API (`DELETE /api/v1/tenant/ssh-ca/{id}`).
    pub id: String,
    /// The public key, an OpenSSH line.
    pub public_key: String,
    /// SHA256 fingerprint, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// Whether the broker generated it (and can sign with it: `passerelle ca sign`).
    pub generated: bool,
    pub created_at: String,
}

/// `GET /api/v1/tenant/ssh-ca`: the tenant's CAs and what a CA's holder signs to add one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SshCaList {
    pub authorities: Vec<SshCaInfo>,
    /// [`proof_message`] for this tenant.
    pub proof_message: String,
    /// [`PROOF_NAMESPACE`].
    pub proof_namespace: String,
}

/// `POST /api/v1/tenant/ssh-ca/revoked`: one certificate serial, or one key (an OpenSSH
/// public key line or its SHA256 fingerprint), that no certificate may sign in with again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Revoke {
    #[serde(default)]
    pub serial: Option<u64>,
    #[serde(default)]
    pub public_key: Option<String>,
    #[serde(default)]
    pub key_fingerprint: Option<String>,
}

impl Revoke {
    /// Exactly one of the three, within size bounds.
    pub fn check(&self) -> Result<(), &'static str> {
        let given = usize::from(self.serial.is_some())
            + usize::from(self.public_key.is_some())
            + usize::from(self.key_fingerprint.is_some());
        if given != 1 {
            return Err("give exactly one of serial, public_key or key_fingerprint");
        }
        let long = [&self.public_key, &self.key_fingerprint]
            .into_iter()
            .flatten()
            .any(|t| t.len() > MAX_TEXT);
        if long {
            return Err("the value is too long");
        }
        Ok(())
    }
}

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RevokedKind {
    Serial,
    Key,
}

/// One entry of a tenant's revocation list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevokedEntry {
    pub kind: RevokedKind,
    /// The serial in decimal, or the key's SHA256 fingerprint.
    pub value: String,
    pub created_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_add_body_is_a_key_with_its_proof_or_generate() {
        let key = Some("ssh-ed25519 AAAA".to_owned());
        let proof = Some("-----BEGIN SSH SIGNATURE-----".to_owned());
        let ok = |b: AddSshCa| b.check().is_ok();
        assert!(ok(AddSshCa {
            generate: true,
            ..AddSshCa::default()
        }));
        assert!(ok(AddSshCa {
            public_key: key.clone(),
            proof: proof.clone(),
            generate: false
        }));
        assert!(!ok(AddSshCa::default()));
        assert!(!ok(AddSshCa {
            public_key: key.clone(),
            ..AddSshCa::default()
        }));
        assert!(!ok(AddSshCa {
            public_key: key,
            proof,
            generate: true
        }));
        assert!(!ok(AddSshCa {
            public_key: Some("x".repeat(MAX_PUBLIC_KEY + 1)),
            proof: Some("p".into()),
            generate: false
        }));
    }

    #[test]
    fn a_revocation_names_exactly_one_thing() {
        assert!(
            Revoke {
                serial: Some(7),
                ..Revoke::default()
            }
            .check()
            .is_ok()
        );
        assert!(Revoke::default().check().is_err());
        assert!(
            Revoke {
                serial: Some(7),
                key_fingerprint: Some("SHA256:x".into()),
                ..Revoke::default()
            }
            .check()
            .is_err()
        );
        let body: Result<Revoke, _> = serde_json::from_str(r#"{"serial": -1}"#);
        assert!(body.is_err(), "a negative serial is no serial");
        let body: Result<Revoke, _> = serde_json::from_str(r#"{"serial": 1, "x": 2}"#);
        assert!(body.is_err(), "unknown fields are refused");
    }

    #[test]
    fn the_proof_message_names_the_tenant() {
        let a = proof_message(&TenantName::new("acme").unwrap());
        let b = proof_message(&TenantName::new("other").unwrap());
        assert_ne!(a, b);
        assert!(a.ends_with("acme"));
    }
}
