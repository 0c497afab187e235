//! Talking to the provider: its discovery document, its keys (JWKS) and its token endpoint.
//!
//! Every request has a connect timeout and a total timeout, follows no redirect, and reads at
//! most [`MAX_ANSWER_BYTES`] of the answer. TLS is rustls on `ring` with the Web PKI roots;
//! plain HTTP is possible only for a loopback issuer (see
//! [`passerelle_proto::oidc::check_issuer`]), and then the discovered endpoints may be HTTP too.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;

/// The largest answer read from the provider.
pub(crate) const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// The longest a request to the provider may take, answer included (1 s in unit tests, which
/// check that a silent provider is cut off).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 10 });

/// The parts of the discovery document the broker uses.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Discovery {
    pub(crate) issuer: String,
    pub(crate) authorization_endpoint: String,
    pub(crate) token_endpoint: String,
    pub(crate) jwks_uri: String,
    #[serde(default)]
    pub(crate) token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) code_challenge_methods_supported: Option<Vec<String>>,
}

/// Why the provider could not be used. The page shows it; the audit records it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProviderError {
    /// Unreachable, slow, a bad answer: the provider (or its settings) is at fault.
    #[error("the sign-in provider could not be used: {0:#}")]
    Unusable(anyhow::Error),
    /// The token endpoint refused the code (`invalid_grant` for a code used twice or too late).
    #[error("the sign-in provider refused the sign-in code ({error}{}); start again from the console",
        .description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Refused {
        error: String,
        description: Option<String>,
    },
}

fn client() -> anyhow::Result<reqwest::Client> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c.clone());
    }
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let c = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        // No idle connections kept: a sign-in is three requests now and then, and a pooled
        // connection the provider closed meanwhile fails the next sign-in (seen with Node's 5 s
        // keep-alive).
        .pool_max_idle_per_host(0)
        .connect_timeout(Duration::from_secs(5))
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("passerelle/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")?;
    Ok(CLIENT.get_or_init(|| c).clone())
}

/// Reads at most [`MAX_ANSWER_BYTES`] of `resp`.
async fn body(mut resp: reqwest::Response) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.context("reading the answer")? {
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            anyhow::bail!("the answer is larger than {MAX_ANSWER_BYTES} bytes");
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// GETs a JSON document.
async fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> anyhow::Result<T> {
    let resp = client()?
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        anyhow::bail!("GET {url} answered {status}");
    }
    let bytes = body(resp).await?;
    serde_json::from_slice(&bytes).with_context(|| format!("GET {url}: not the expected JSON"))
}

/// Whether `url` may be used with `issuer`: https, or http when the issuer is http (loopback).
fn allowed_url(issuer: &str, url: &str) -> bool {
    url.starts_with("https://") || (issuer.starts_with("http://") && url.starts_with("http://"))
}

/// The issuer's discovery document, checked: its `issuer` is exactly the configured one
/// (OpenID Connect Discovery §4.3), its endpoints use an allowed scheme, it offers S256.
pub(crate) async fn discover(issuer: &str) -> Result<Discovery, ProviderError> {
    let url = format!("{issuer}/.well-known/openid-configuration");
    let d: Discovery = get_json(&url).await.map_err(ProviderError::Unusable)?;
    let bad = |m: String| ProviderError::Unusable(anyhow::anyhow!(m));
    if d.issuer != issuer {
        return Err(bad(format!(
            "its discovery document names the issuer {:?}, not {issuer:?}",
            d.issuer
        )));
    }
    for (what, u) in [
        ("authorization_endpoint", &d.authorization_endpoint),
        ("token_endpoint", &d.token_endpoint),
        ("jwks_uri", &d.jwks_uri),
    ] {
        if !allowed_url(issuer, u) {
            return Err(bad(format!("its {what} {u:?} is not an https URL")));
        }
    }
    if d.code_challenge_methods_supported
        .as_ref()
        .is_some_and(|m| !m.iter().any(|m| m == "S256"))
    {
        return Err(bad("it does not offer PKCE with S256".into()));
    }
    Ok(d)
}

/// The provider's signing keys.
pub(crate) async fn keys(d: &Discovery) -> Result<JwkSet, ProviderError> {
    get_json(&d.jwks_uri).await.map_err(ProviderError::Unusable)
}

/// What the token endpoint needs to redeem a code.
pub(crate) struct Redeem<'a> {
    pub(crate) code: &'a str,
    pub(crate) redirect_uri: &'a str,
    pub(crate) verifier: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) client_secret: &'a str,
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 §2.3.1 asks it of the
/// client id and secret in HTTP Basic too).
pub(crate) fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Redeems the code at the token endpoint (client authentication `client_secret_basic`, or
/// `client_secret_post` when the provider offers only that); the ID token.
pub(crate) async fn redeem(d: &Discovery, r: &Redeem<'_>) -> Result<String, ProviderError> {
    let unusable = ProviderError::Unusable;
    let post_only = d
        .token_endpoint_auth_methods_supported
        .as_ref()
        .is_some_and(|m| {
            !m.iter().any(|m| m == "client_secret_basic")
                && m.iter().any(|m| m == "client_secret_post")
        });
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", r.code),
        ("redirect_uri", r.redirect_uri),
        ("code_verifier", r.verifier),
    ];
    let mut req = client().map_err(unusable)?.post(&d.token_endpoint);
    if post_only {
        form.push(("client_id", r.client_id));
        form.push(("client_secret", r.client_secret));
    } else {
        let basic = STANDARD.encode(format!(
            "{}:{}",
            form_encode(r.client_id),
            form_encode(r.client_secret)
        ));
        req = req.header("authorization", format!("Basic {basic}"));
    }
    let encoded = form
        .iter()
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let resp = req
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(encoded)
        .send()
        .await
        .context("POST to the token endpoint")
        .map_err(unusable)?;
    let status = resp.status();
    let bytes = body(resp).await.map_err(unusable)?;
    if !status.is_success() {
        return Err(match serde_json::from_slice::<TokenError>(&bytes) {
            Ok(e) if status.is_client_error() => ProviderError::Refused {
                error: e
                    .error
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect(),
                description: e
                    .error_description
                    .map(|d| d.chars().filter(|c| !c.is_control()).take(200).collect()),
            },
            _ => unusable(anyhow::anyhow!("the token endpoint answered {status}")),
        });
    }
    let answer: TokenAnswer = serde_json::from_slice(&bytes)
        .context("the token endpoint's answer is not JSON")
        .map_err(unusable)?;
    answer
        .id_token
        .ok_or_else(|| unusable(anyhow::anyhow!("the token endpoint gave no ID token")))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A provider on 127.0.0.1 that answers every request with `answer` (or never, if `None`).
    async fn fake(answer: Option<Vec<u8>>) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                if let Some(answer) = &answer {
                    let _ = sock.write_all(answer).await;
                }
                held.push(sock);
            }
        });
        (issuer, task)
    }

    #[tokio::test]
    async fn oversized_and_silent_providers_are_cut_off() {
        let mut big = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n".to_vec();
        big.extend(std::iter::repeat_n(b' ', MAX_ANSWER_BYTES + 1));
        let (issuer, task) = fake(Some(big)).await;
        let err = discover(&issuer).await.unwrap_err();
        assert!(
            matches!(&err, ProviderError::Unusable(e) if format!("{e:#}").contains("larger than")),
            "{err}"
        );
        task.abort();
        let (issuer, task) = fake(None).await;
        let started = std::time::Instant::now();
        let err = discover(&issuer).await.unwrap_err();
        assert!(matches!(err, ProviderError::Unusable(_)), "{err}");
        assert!(
            started.elapsed() < REQUEST_TIMEOUT * 5,
            "{:?}",
            started.elapsed()
        );
        task.abort();
    }

    #[tokio::test]
    async fn a_discovery_document_naming_another_issuer_is_refused() {
        let doc = r#"{"issuer":"https://evil.example","authorization_endpoint":"https://e/a","token_endpoint":"https://e/t","jwks_uri":"https://e/k"}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{doc}",
            doc.len()
        );
        let (issuer, task) = fake(Some(answer.into_bytes())).await;
        let err = discover(&issuer).await.unwrap_err();
        assert!(err.to_string().contains("evil.example"), "{err}");
        task.abort();
    }

    #[test]
    fn form_encoding_and_schemes() {
        assert_eq!(form_encode("a b:c/é"), "a+b%3Ac%2F%C3%A9");
        assert!(allowed_url("https://op", "https://op/token"));
        assert!(!allowed_url("https://op", "http://op/token"));
        assert!(allowed_url(
            "http://127.0.0.1:1",
            "http://127.0.0.1:1/token"
        ));
    }
}
