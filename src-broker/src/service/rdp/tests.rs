//! The adapter against an in-memory RDP server (a test double: X.224 by hand, TLS by rustls);
//! the real servers are in `tests/tests/rdp.rs`.

use std::sync::Arc;

use bytes::Bytes;
use passerelle_proto::rdp::cleanpath::{self, Answer};
use passerelle_proto::rdp::x224::{self, Negotiation, protocol};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::*;
use crate::ends::{Frame, Sink as _, pipe};

fn request(protocols: u32) -> Request {
    let cr = x224::connection_request(Some("op"), Some(protocols));
    let der = cleanpath::request(cr, "ignored:3389", "token", None).unwrap();
    cleanpath::parse_request(&der).unwrap()
}

fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, Vec<u8>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["workstation".into()]).unwrap();
    let der = cert.cert.der().to_vec();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), der)
}

/// Plays an RDP server on `io`: reads the Connection Request, answers `negotiation`, and for
/// TLS completes the handshake and echoes one message.
async fn server(mut io: DuplexStream, negotiation: Negotiation, tls: tokio_rustls::TlsAcceptor) {
    let mut head = [0u8; 4];
    io.read_exact(&mut head).await.unwrap();
    let mut rest = vec![0; usize::from(u16::from_be_bytes([head[2], head[3]])) - 4];
    io.read_exact(&mut rest).await.unwrap();
    io.write_all(&x224::connection_confirm(negotiation))
        .await
        .unwrap();
    if let Negotiation::Selected(_) = negotiation {
        let mut s = tls.accept(io).await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
        s.flush().await.unwrap();
    }
}

fn params(pinned: Option<[u8; 32]>) -> Params {
    Params {
        pinned,
        server_name: "pc-1".into(),
        ..Params::default()
    }
}

#[tokio::test]
async fn connects_over_tls_and_answers_with_the_chain() {
    let (acceptor, der) = tls_acceptor();
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(server(
        theirs,
        Negotiation::Selected(protocol::SSL),
        acceptor,
    ));
    let mut c = connect(
        request(protocol::SSL | protocol::HYBRID),
        ours,
        params(None),
    )
    .await
    .unwrap();
    assert_eq!(c.fingerprint, tls::fingerprint(&der));
    assert_eq!(c.selected_protocol, protocol::SSL);
    assert_eq!(c.credentials, CredentialMode::TypedTls);
    match cleanpath::parse_answer(&c.answer).unwrap() {
        Answer::Connected { x224, chain } => {
            assert_eq!(chain, vec![der.clone()]);
            assert_eq!(
                x224::parse_connection_confirm(&x224).unwrap(),
                Negotiation::Selected(protocol::SSL)
            );
        }
        other => panic!("{other:?}"),
    }
    c.tls.write_all(b"hello").await.unwrap();
    c.tls.flush().await.unwrap();
    let mut echo = [0u8; 5];
    c.tls.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"hello");

    // The same server with the right pin connects; another pin is a changed certificate.
    let (acceptor2, _) = tls_acceptor();
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(server(
        theirs,
        Negotiation::Selected(protocol::SSL),
        acceptor2,
    ));
    let err = connect(
        request(protocol::SSL),
        ours,
        params(Some(tls::fingerprint(&der))),
    )
    .await
    .unwrap_err();
    match &err {
        RdpFailure::CertificateChanged { pinned, presented } => {
            assert_eq!(pinned, &hex::encode(tls::fingerprint(&der)));
            assert_ne!(pinned, presented);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.close_code(),
        passerelle_proto::close::RDP_CERTIFICATE_CHANGED
    );
}

#[tokio::test]
async fn refusals_before_tls_say_why() {
    let (acceptor, _) = tls_acceptor();
    let (ours, theirs) = tokio::io::duplex(4096);
    tokio::spawn(server(theirs, Negotiation::Failure(2), acceptor.clone()));
    match connect(request(protocol::SSL), ours, params(None)).await {
        Err(RdpFailure::Negotiation { text, .. }) => assert!(text.contains("does not allow TLS")),
        other => panic!("{other:?}"),
    }
    let (ours, theirs) = tokio::io::duplex(4096);
    tokio::spawn(server(theirs, Negotiation::Legacy, acceptor.clone()));
    assert!(matches!(
        connect(request(protocol::SSL), ours, params(None)).await,
        Err(RdpFailure::Negotiation { .. })
    ));
    // The viewer may not ask for standard RDP security only.
    let (ours, _theirs) = tokio::io::duplex(4096);
    assert!(matches!(
        connect(request(protocol::RDP), ours, params(None)).await,
        Err(RdpFailure::BadRequest(_))
    ));
}

#[tokio::test]
async fn a_server_that_closes_or_says_too_much_fails_the_handshake() {
    let (ours, mut theirs) = tokio::io::duplex(4096);
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let _ = theirs.read(&mut buf).await;
        // A TPKT that claims 4000 bytes.
        let _ = theirs.write_all(&[3, 0, 0x0F, 0xA0, 0, 0, 0, 0]).await;
    });
    match connect(request(protocol::SSL), ours, params(None)).await {
        Err(RdpFailure::Handshake(why)) => assert!(why.contains("4000 bytes"), "{why}"),
        other => panic!("{other:?}"),
    }
    let (ours, theirs) = tokio::io::duplex(4096);
    drop(theirs);
    assert!(matches!(
        connect(request(protocol::SSL), ours, params(None)).await,
        Err(RdpFailure::Handshake(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_times_out() {
    let (ours, _theirs) = tokio::io::duplex(4096);
    match connect(request(protocol::SSL), ours, params(None)).await {
        Err(RdpFailure::Handshake(why)) => assert!(why.contains("within 10s"), "{why}"),
        other => panic!("{other:?}"),
    }
    // The Confirm comes, then nothing more: the TLS handshake times out.
    let (ours, mut theirs) = tokio::io::duplex(4096);
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let _ = theirs.read(&mut buf).await;
        let confirm = x224::connection_confirm(Negotiation::Selected(protocol::SSL));
        let _ = theirs.write_all(&confirm).await;
        std::future::pending::<()>().await;
    });
    assert!(matches!(
        connect(request(protocol::SSL), ours, params(None)).await,
        Err(RdpFailure::Tls { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn the_request_is_read_whole_bounded_in_time_and_size() {
    let der =
        cleanpath::request(x224::connection_request(None, Some(1)), "x", "tok", None).unwrap();
    let (mut tx, mut rx) = pipe(8);
    let (a, b) = der.split_at(5);
    tx.send(Frame::Binary(Bytes::copy_from_slice(a)))
        .await
        .unwrap();
    tx.send(Frame::Binary(Bytes::copy_from_slice(b)))
        .await
        .unwrap();
    let req = read_request(&mut rx).await.unwrap();
    assert_eq!(req.proxy_auth.as_deref(), Some("tok"));

    // Silence: the deadline.
    let (_tx, mut rx) = pipe(8);
    assert!(matches!(
        read_request(&mut rx).await,
        Err(RdpFailure::RequestTimeout(_))
    ));
    // A text frame, garbage, too much: refused.
    for frame in [
        Frame::Text("hi".into()),
        Frame::Binary(Bytes::from_static(b"GET / HTTP/1.1")),
        Frame::Binary(Bytes::from(vec![0x30; cleanpath::MAX_REQUEST + 1])),
    ] {
        let (mut tx, mut rx) = pipe(8);
        tx.send(frame).await.unwrap();
        assert!(matches!(
            read_request(&mut rx).await,
            Err(RdpFailure::BadRequest(_))
        ));
    }
    // A viewer that leaves: nobody to answer.
    let (mut tx, mut rx) = pipe(8);
    tx.finish().await.unwrap();
    assert!(matches!(
        read_request(&mut rx).await,
        Err(RdpFailure::ViewerGone)
    ));
}
