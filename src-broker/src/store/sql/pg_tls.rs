//! TLS to the PostgreSQL store: a rustls client (ring) that verifies the server's certificate
//! chain and name against the URL's `sslrootcert` file, or the public web PKI's roots.
//! tokio-postgres-rustls carries it into tokio-postgres, with SCRAM channel binding.

use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::url::PgTls;

/// The connector for `tls`; a root file that cannot be read or holds no certificate is an
/// error naming the file.
pub(crate) fn connector(tls: &PgTls) -> anyhow::Result<MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.roots {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading sslrootcert {}", path.display()))?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .with_context(|| format!("parsing sslrootcert {}", path.display()))?;
            anyhow::ensure!(
                !certs.is_empty(),
                "sslrootcert {} holds no PEM certificate",
                path.display()
            );
            for cert in certs {
                roots.add(cert).with_context(|| {
                    format!(
                        "a certificate of sslrootcert {} is unusable",
                        path.display()
                    )
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}
