//! Tests of `server_cert`: the refusal of each kind of bad pair, a reload seen by real TLS
//! handshakes (in memory), and the session store emptied by a new pair.

use super::*;

/// A self-signed pair for `localhost`: (certificate PEM, key PEM, certificate DER).
fn pair() -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

fn files(dir: &Path) -> CertFiles {
    CertFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

fn write(files: &CertFiles, cert: &str, key: &str) {
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
}

fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The certificate a TLS client is shown by a listener using `cert`'s settings.
async fn presented(cert: &Arc<ServerCert>, trusted: &[Vec<u8>]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for der in trusted {
        roots.add(CertificateDer::from(der.clone())).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config().unwrap());
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let (server, client) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
    let _server = server.unwrap();
    let client = client.unwrap();
    assert_eq!(client.get_ref().1.alpn_protocol(), None);
    client.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_reload_serves_the_new_pair_to_new_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let (a_cert, a_key, a_der) = pair();
    let (b_cert, b_key, b_der) = pair();
    write(&f, &a_cert, &a_key);
    let cert = ServerCert::load(f.clone()).unwrap();
    assert_eq!(cert.fingerprint(), sha256_hex(&a_der));
    let trusted = [a_der.clone(), b_der.clone()];
    assert_eq!(presented(&cert, &trusted).await, a_der);

    assert_eq!(
        cert.reload().await.unwrap(),
        Reloaded::Unchanged {
            fingerprint: sha256_hex(&a_der)
        }
    );
    write(&f, &b_cert, &b_key);
    assert_eq!(
        cert.reload().await.unwrap(),
        Reloaded::Replaced {
            previous: sha256_hex(&a_der),
            fingerprint: sha256_hex(&b_der)
        }
    );
    assert_eq!(cert.fingerprint(), sha256_hex(&b_der));
    assert_eq!(presented(&cert, &trusted).await, b_der);

    // A refused pair leaves B in service.
    write(&f, &b_cert, &a_key);
    assert!(matches!(
        cert.reload().await,
        Err(PairError::Mismatch { .. })
    ));
    assert_eq!(cert.fingerprint(), sha256_hex(&b_der));
    assert_eq!(presented(&cert, &trusted).await, b_der);
}

/// One connection of `client` to a listener with `server`'s settings; the client reads a byte
/// the server sends after the handshake, and so takes its session tickets. Returns how the
/// handshake went and the SHA-256 of the certificate the client holds for it.
async fn connect(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
) -> (rustls::HandshakeKind, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
    let connector = tokio_rustls::TlsConnector::from(client.clone());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let serve = async {
        let mut s = acceptor.accept(a).await.unwrap();
        s.write_all(b"x").await.unwrap();
        s.flush().await.unwrap();
        s
    };
    let talk = async {
        let mut c = connector.connect(name, b).await.unwrap();
        let mut byte = [0u8; 1];
        c.read_exact(&mut byte).await.unwrap();
        c
    };
    let (_s, c) = tokio::join!(serve, talk);
    let conn = c.get_ref().1;
    (
        conn.handshake_kind().unwrap(),
        sha256_hex(&conn.peer_certificates().unwrap()[0]),
    )
}

#[tokio::test]
async fn sessions_of_the_old_certificate_do_not_resume_after_a_reload() {
    use rustls::HandshakeKind::{Full, Resumed};
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let (a_cert, a_key, a_der) = pair();
    let (b_cert, b_key, b_der) = pair();
    write(&f, &a_cert, &a_key);
    let cert = ServerCert::load(f.clone()).unwrap();
    let server = cert.server_config().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(a_der.clone())).unwrap();
    roots.add(CertificateDer::from(b_der.clone())).unwrap();
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let (a, b) = (sha256_hex(&a_der), sha256_hex(&b_der));
    assert_eq!(connect(&server, &client).await, (Full, a.clone()));
    // Resumption works, and a resumed handshake shows the certificate of the first.
    assert_eq!(connect(&server, &client).await, (Resumed, a.clone()));
    // An unchanged reload keeps the sessions.
    cert.reload().await.unwrap();
    assert_eq!(connect(&server, &client).await, (Resumed, a));
    write(&f, &b_cert, &b_key);
    cert.reload().await.unwrap();
    assert_eq!(connect(&server, &client).await, (Full, b.clone()));
    assert_eq!(connect(&server, &client).await, (Resumed, b));
}

#[test]
fn a_key_that_belongs_to_another_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let (a_cert, _, _) = pair();
    let (_, b_key, _) = pair();
    write(&f, &a_cert, &b_key);
    let err = load_pair(&f).unwrap_err();
    assert!(
        matches!(&err, PairError::Mismatch { cert, key } if *cert == f.cert && *key == f.key),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("key.pem") && text.contains("cert.pem"),
        "{text}"
    );
}

#[test]
fn missing_files_are_refused_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let err = load_pair(&f).unwrap_err();
    assert!(
        matches!(&err, PairError::Read { path, source } if *path == f.cert
            && source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    let (cert, _, _) = pair();
    std::fs::write(&f.cert, cert).unwrap();
    let err = load_pair(&f).unwrap_err();
    assert!(
        matches!(&err, PairError::Read { path, .. } if *path == f.key),
        "{err:?}"
    );
    assert!(err.to_string().contains("key.pem"), "{err}");
}

#[test]
fn garbage_is_refused_and_the_key_is_never_quoted() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let (cert, key, _) = pair();

    // No PEM at all.
    write(&f, "not a certificate\n", &key);
    let err = load_pair(&f).unwrap_err();
    assert!(
        matches!(&err, PairError::NoCertificate { path } if *path == f.cert),
        "{err:?}"
    );
    write(&f, &cert, "not a key\n");
    let err = load_pair(&f).unwrap_err();
    assert!(
        matches!(&err, PairError::NoKey { path } if *path == f.key),
        "{err:?}"
    );

    // A PEM section whose body is not base64.
    let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    write(&f, broken, &key);
    let err = load_pair(&f).unwrap_err();
    assert!(
        matches!(&err, PairError::NotPem { path, .. } if *path == f.cert),
        "{err:?}"
    );
    // The same in the key file, with a piece of the real key: the error does not quote it.
    let body: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let secret = body[0];
    let broken_key =
        format!("-----BEGIN PRIVATE KEY-----\n{secret}!!\n-----END PRIVATE KEY-----\n");
    write(&f, &cert, &broken_key);
    let err = load_pair(&f).unwrap_err();
    assert!(
        matches!(&err, PairError::NotPem { path, .. } if *path == f.key),
        "{err:?}"
    );
    assert!(!format!("{err} {err:?}").contains(&secret[..16]), "{err}");

    // Well-formed PEM around bytes that are no certificate or no key.
    let junk = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
    write(&f, junk, &key);
    let err = load_pair(&f).unwrap_err();
    assert!(
        matches!(&err, PairError::BadCertificate { path, .. } if *path == f.cert),
        "{err:?}"
    );
    let junk_key = "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n";
    write(&f, &cert, junk_key);
    let err = load_pair(&f).unwrap_err();
    assert!(
        matches!(&err, PairError::BadKey { path, .. } if *path == f.key),
        "{err:?}"
    );
}

#[test]
fn an_oversized_file_is_refused_without_reading_it_all() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let (_, key, _) = pair();
    let big = "x".repeat(usize::try_from(MAX_FILE_BYTES).unwrap() + 1);
    write(&f, &big, &key);
    let err = load_pair(&f).unwrap_err();
    assert!(
        matches!(&err, PairError::TooLarge { path } if *path == f.cert),
        "{err:?}"
    );
}

#[test]
fn a_chain_is_served_whole_and_the_leaf_is_fingerprinted() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let (leaf, key, leaf_der) = pair();
    let (other, _, _) = pair();
    write(&f, &format!("{leaf}{other}"), &key);
    let loaded = load_pair(&f).unwrap();
    assert_eq!(loaded.fingerprint(), sha256_hex(&leaf_der));
    assert_eq!(loaded.certified.cert.len(), 2);
    assert!(loaded.not_after() > time::OffsetDateTime::now_utc());
}
