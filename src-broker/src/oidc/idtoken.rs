//! The ID token's checks (OpenID Connect Core §3.1.3.7), pure: given the token, the provider's
//! keys (JWKS) and what this sign-in expects, the claims or why not.
//!
//! Signature by an asymmetric algorithm only (RS256/384/512, PS256/384/512, ES256/384, EdDSA;
//! never `none` or a shared-secret HMAC), with the JWKS key its `kid` names (or the only key of
//! its family when it names none); `iss` equal to the configured issuer; `aud` containing the
//! client id (and `azp` equal to it when there are several audiences); `exp` in the future and
//! `iat` not in the future (one minute of clock skew either way); `nonce` present and equal to
//! the one this browser's sign-in sent. Signatures and times are checked by `jsonwebtoken`
//! (on `ring`, the project's crypto); the rest here.

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::Value;

use crate::secrets::ct_eq;

/// Clock skew allowed between the provider and the broker, in seconds.
pub(crate) const LEEWAY_SECS: u64 = 60;

/// What a sign-in expects of its ID token.
#[derive(Debug, Clone)]
pub(crate) struct Expect<'a> {
    pub(crate) issuer: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) nonce: &'a str,
}

/// Why an ID token was refused. Each is shown to the person and written to the audit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IdTokenError {
    #[error("the ID token is malformed")]
    Malformed,
    #[error("the ID token is signed with {0}, which this broker does not accept")]
    Algorithm(String),
    #[error("no key of the provider's key set (JWKS) matches the ID token")]
    NoKey,
    #[error("the ID token's signature does not verify with the provider's keys")]
    Signature,
    #[error("the ID token was not issued by the configured issuer {0}")]
    Issuer(String),
    #[error("the ID token is for another client (its audience is not {0})")]
    Audience(String),
    #[error("the ID token has expired")]
    Expired,
    #[error("the ID token is not valid yet (issued in the future)")]
    NotYet,
    #[error("the ID token lacks the {0} claim")]
    Missing(&'static str),
    #[error("the ID token carries no nonce, so it cannot be tied to this sign-in")]
    MissingNonce,
    #[error("the ID token's nonce is not this sign-in's (a token from another sign-in)")]
    Nonce,
}

impl IdTokenError {
    /// A stable short name for the audit and the page.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Algorithm(_) => "algorithm",
            Self::NoKey => "no_key",
            Self::Signature => "signature",
            Self::Issuer(_) => "issuer",
            Self::Audience(_) => "audience",
            Self::Expired => "expired",
            Self::NotYet => "not_yet_valid",
            Self::Missing(_) => "missing_claim",
            Self::MissingNonce => "missing_nonce",
            Self::Nonce => "nonce",
        }
    }
}

/// The algorithms accepted: asymmetric signatures only.
const ACCEPTED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Whether `jwk` can verify `alg` (its key type, and its own `alg` when it states one).
fn fits(jwk: &Jwk, alg: Algorithm) -> bool {
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::EllipticCurve(_) => {
            matches!(alg, Algorithm::ES256 | Algorithm::ES384)
        }
        AlgorithmParameters::OctetKeyPair(_) => alg == Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => false,
    };
    let stated = jwk
        .common
        .key_algorithm
        .as_ref()
        .is_none_or(|k| format!("{k:?}") == format!("{alg:?}"));
    family && stated
}

/// The key that verifies a token signed with `alg` and naming `kid`.
fn pick<'a>(jwks: &'a JwkSet, kid: Option<&str>, alg: Algorithm) -> Option<&'a Jwk> {
    match kid {
        Some(kid) => jwks
            .keys
            .iter()
            .find(|k| k.common.key_id.as_deref() == Some(kid) && fits(k, alg)),
        None => {
            let mut fitting = jwks.keys.iter().filter(|k| fits(k, alg));
            let only = fitting.next()?;
            fitting.next().is_none().then_some(only)
        }
    }
}

/// Checks `token` and returns its claims.
pub(crate) fn verify(
    token: &str,
    jwks: &JwkSet,
    expect: &Expect<'_>,
) -> Result<Value, IdTokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| IdTokenError::Malformed)?;
    if !ACCEPTED.contains(&header.alg) {
        return Err(IdTokenError::Algorithm(format!("{:?}", header.alg)));
    }
    let jwk = pick(jwks, header.kid.as_deref(), header.alg).ok_or(IdTokenError::NoKey)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| IdTokenError::NoKey)?;
    let mut v = Validation::new(header.alg);
    v.leeway = LEEWAY_SECS;
    v.set_issuer(&[expect.issuer]);
    v.set_audience(&[expect.client_id]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Value>(token, &key, &v).map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature => IdTokenError::Signature,
        ErrorKind::InvalidIssuer => IdTokenError::Issuer(expect.issuer.to_owned()),
        ErrorKind::InvalidAudience => IdTokenError::Audience(expect.client_id.to_owned()),
        ErrorKind::ExpiredSignature => IdTokenError::Expired,
        ErrorKind::ImmatureSignature => IdTokenError::NotYet,
        ErrorKind::MissingRequiredClaim(c) => IdTokenError::Missing(match c.as_str() {
            "exp" => "exp",
            "iss" => "iss",
            "aud" => "aud",
            _ => "sub",
        }),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            IdTokenError::Algorithm(format!("{:?}", header.alg))
        }
        ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::MissingAlgorithm => IdTokenError::NoKey,
        _ => IdTokenError::Malformed,
    })?;
    let claims = data.claims;
    // Several audiences: the one it was issued to must be us (Core §3.1.3.7, items 4 and 5).
    if let Some(Value::Array(auds)) = claims.get("aud")
        && auds.len() > 1
        && claims.get("azp").and_then(Value::as_str) != Some(expect.client_id)
    {
        return Err(IdTokenError::Audience(expect.client_id.to_owned()));
    }
    let now = jsonwebtoken::get_current_timestamp();
    match claims.get("iat").and_then(Value::as_u64) {
        None => return Err(IdTokenError::Missing("iat")),
        Some(iat) if iat > now + LEEWAY_SECS => return Err(IdTokenError::NotYet),
        Some(_) => {}
    }
    let nonce = claims
        .get("nonce")
        .and_then(Value::as_str)
        .ok_or(IdTokenError::MissingNonce)?;
    if !ct_eq(nonce.as_bytes(), expect.nonce.as_bytes()) {
        return Err(IdTokenError::Nonce);
    }
    if claims
        .get("sub")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(IdTokenError::Missing("sub"));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    use serde_json::json;

    use super::*;

    /// A P-256 key: its signing key and its JWKS (kid `k1`).
    fn new_key() -> (EncodingKey, JwkSet) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref();
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]});
        (
            EncodingKey::from_ec_der(pkcs8.as_ref()),
            serde_json::from_value(jwks).unwrap(),
        )
    }

    fn now() -> i64 {
        i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
    }

    fn claims() -> Value {
        json!({
            "iss": "https://op.example", "aud": "passerelle", "sub": "alice",
            "exp": now() + 300, "iat": now(), "nonce": "n-123", "name": "Alice",
        })
    }

    fn sign(key: &EncodingKey, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    const EXPECT: Expect<'static> = Expect {
        issuer: "https://op.example",
        client_id: "passerelle",
        nonce: "n-123",
    };

    fn with(change: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
        let mut c = claims();
        change(c.as_object_mut().unwrap());
        c
    }

    #[test]
    fn a_good_token_passes_and_each_wrong_claim_is_named() {
        let (key, jwks) = new_key();
        let ok = verify(&sign(&key, &claims()), &jwks, &EXPECT).unwrap();
        assert_eq!(ok["name"], "Alice");
        let cases: Vec<(Value, IdTokenError)> = vec![
            (
                with(|c| {
                    c.insert("aud".into(), json!("someone-else"));
                }),
                IdTokenError::Audience("passerelle".into()),
            ),
            (
                with(|c| {
                    c.insert("aud".into(), json!(["passerelle", "other"]));
                }),
                IdTokenError::Audience("passerelle".into()),
            ),
            (
                with(|c| {
                    c.insert("iss".into(), json!("https://evil.example"));
                }),
                IdTokenError::Issuer("https://op.example".into()),
            ),
            (
                with(|c| {
                    c.insert("exp".into(), json!(now() - 600));
                }),
                IdTokenError::Expired,
            ),
            (
                with(|c| {
                    c.insert("iat".into(), json!(now() + 3600));
                }),
                IdTokenError::NotYet,
            ),
            (
                with(|c| {
                    c.remove("nonce");
                }),
                IdTokenError::MissingNonce,
            ),
            (
                with(|c| {
                    c.insert("nonce".into(), json!("n-456"));
                }),
                IdTokenError::Nonce,
            ),
            (
                with(|c| {
                    c.remove("sub");
                }),
                IdTokenError::Missing("sub"),
            ),
            (
                with(|c| {
                    c.remove("iat");
                }),
                IdTokenError::Missing("iat"),
            ),
        ];
        for (claims, want) in cases {
            assert_eq!(
                verify(&sign(&key, &claims), &jwks, &EXPECT),
                Err(want.clone()),
                "{claims}"
            );
        }
        // Several audiences with us as the authorized party: fine.
        let multi = with(|c| {
            c.insert("aud".into(), json!(["passerelle", "other"]));
            c.insert("azp".into(), json!("passerelle"));
        });
        assert!(verify(&sign(&key, &multi), &jwks, &EXPECT).is_ok());
    }

    #[test]
    fn signatures_keys_and_algorithms_are_checked() {
        let (key, jwks) = new_key();
        let (other_key, other_jwks) = new_key();
        // Signed by another key with the same kid.
        let forged = sign(&other_key, &claims());
        assert_eq!(
            verify(&forged, &jwks, &EXPECT),
            Err(IdTokenError::Signature)
        );
        assert!(verify(&forged, &other_jwks, &EXPECT).is_ok());
        // A kid the set does not have.
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k2".into());
        let unknown = jsonwebtoken::encode(&header, &claims(), &key).unwrap();
        assert_eq!(verify(&unknown, &jwks, &EXPECT), Err(IdTokenError::NoKey));
        // No kid: the only key of its family is used.
        let bare = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(), &key).unwrap();
        assert!(verify(&bare, &jwks, &EXPECT).is_ok());
        // HMAC with a guessable secret, and `none`: refused before any key is looked at.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"passerelle"),
        )
        .unwrap();
        assert_eq!(
            verify(&hs, &jwks, &EXPECT),
            Err(IdTokenError::Algorithm("HS256".into()))
        );
        let body = URL_SAFE_NO_PAD.encode(claims().to_string());
        let none = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
        assert_eq!(verify(&none, &jwks, &EXPECT), Err(IdTokenError::Malformed));
        // A signature cut off.
        let good = sign(&key, &claims());
        let cut = &good[..good.len() - 10];
        assert!(verify(cut, &jwks, &EXPECT).is_err());
        assert_eq!(
            verify("not a token", &jwks, &EXPECT),
            Err(IdTokenError::Malformed)
        );
    }
}
