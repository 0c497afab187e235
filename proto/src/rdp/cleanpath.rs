//! RDCleanPath: the handshake IronRDP's web client speaks to a gateway over its WebSocket
//! before plain RDP (PDUs from the `ironrdp-rdcleanpath` crate, DER-encoded). The client sends
//! one request {version, destination, proxy_auth, preconnection blob, X.224 Connection
//! Request}; the gateway answers with the server's Connection Confirm and TLS certificate
//! chain, or with an error (an HTTP status, a TLS alert, or the server's negotiation failure).

use ironrdp_rdcleanpath::{DetectionResult, RDCleanPathPdu, VERSION_1};

use super::Malformed;
use super::x224::{self, ConnectionRequest};

/// Largest request accepted: an X.224 request, a token and a preconnection blob.
pub const MAX_REQUEST: usize = 16 * 1024;
/// Largest preconnection blob relayed.
pub const MAX_PRECONNECTION_BLOB: usize = 4096;

/// Where a partial request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The request is `len` bytes long.
    Complete(usize),
    /// More bytes are needed.
    Incomplete,
}

/// Looks at the start of a request: its full length once known. An error when it cannot be an
/// RDCleanPath request or would pass [`MAX_REQUEST`].
pub fn detect(buf: &[u8]) -> Result<Progress, Malformed> {
    if buf.first().is_some_and(|&b| b != 0x30) {
        return Err(Malformed::new("not an RDCleanPath request"));
    }
    if super::der_length(buf)?.is_some_and(|len| len > MAX_REQUEST) {
        return Err(Malformed::new("RDCleanPath request too long"));
    }
    match RDCleanPathPdu::detect(buf) {
        DetectionResult::Detected { total_length, .. } if total_length > MAX_REQUEST => {
            Err(Malformed::new("RDCleanPath request too long"))
        }
        DetectionResult::Detected { total_length, .. } => Ok(Progress::Complete(total_length)),
        DetectionResult::NotEnoughBytes if buf.len() >= MAX_REQUEST => {
            Err(Malformed::new("RDCleanPath request too long"))
        }
        DetectionResult::NotEnoughBytes => Ok(Progress::Incomplete),
        DetectionResult::Failed => Err(Malformed::new("not an RDCleanPath request")),
    }
}

/// A client's request, checked.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    /// The token the client presents (a Passerelle viewer token). Secret: never logged.
    pub proxy_auth: Option<String>,
    /// Where the client wants to go; a Passerelle broker ignores it (the session says).
    pub destination: Option<String>,
    /// Bytes to write before the X.224 request (Hyper-V, connection brokers).
    pub preconnection_blob: Option<String>,
    /// The X.224 Connection Request to forward, TPKT included.
    pub x224: Vec<u8>,
    /// What it asks for.
    pub connection: ConnectionRequest,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field(
                "proxy_auth",
                &self.proxy_auth.as_ref().map(|_| "<redacted>"),
            )
            .field("destination", &self.destination)
            .field(
                "preconnection_blob",
                &self.preconnection_blob.as_ref().map(String::len),
            )
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

/// Parses a complete request.
pub fn parse_request(der: &[u8]) -> Result<Request, Malformed> {
    if der.len() > MAX_REQUEST {
        return Err(Malformed::new("RDCleanPath request too long"));
    }
    let pdu = RDCleanPathPdu::from_der(der)
        .map_err(|e| Malformed(format!("RDCleanPath request does not decode: {e}")))?;
    if pdu.version != VERSION_1 {
        return Err(Malformed::new("unknown RDCleanPath version"));
    }
    if pdu.error.is_some() || pdu.server_cert_chain.is_some() || pdu.server_addr.is_some() {
        return Err(Malformed::new(
            "an RDCleanPath response where a request belongs",
        ));
    }
    let x224 = pdu
        .x224_connection_pdu
        .ok_or(Malformed::new(
            "RDCleanPath request without an X.224 Connection Request (VMConnect is not relayed)",
        ))?
        .into_bytes()
        .into_vec();
    let connection = x224::parse_connection_request(&x224)?;
    if pdu
        .preconnection_blob
        .as_ref()
        .is_some_and(|b| b.len() > MAX_PRECONNECTION_BLOB)
    {
        return Err(Malformed::new("preconnection blob too long"));
    }
    Ok(Request {
        proxy_auth: pdu.proxy_auth,
        destination: pdu.destination,
        preconnection_blob: pdu.preconnection_blob,
        x224,
        connection,
    })
}

/// A request as the web client builds it (tests, fuzz seeds, the bench's client).
pub fn request(
    x224: Vec<u8>,
    destination: &str,
    proxy_auth: &str,
    pcb: Option<String>,
) -> Result<Vec<u8>, Malformed> {
    RDCleanPathPdu::new_request(x224, destination.to_owned(), proxy_auth.to_owned(), pcb)
        .and_then(|p| p.to_der())
        .map_err(|e| Malformed(format!("encoding an RDCleanPath request: {e}")))
}

fn der(pdu: &RDCleanPathPdu) -> Vec<u8> {
    // Encoding fails only past der's length limits, far above anything built here.
    pdu.to_der().unwrap_or_default()
}

/// The success answer: the server's Connection Confirm and certificate chain (leaf first).
pub fn response(
    x224_confirm: &[u8],
    chain: &[Vec<u8>],
    server_addr: &str,
) -> Result<Vec<u8>, Malformed> {
    RDCleanPathPdu::new_response(
        server_addr.to_owned(),
        x224_confirm.to_vec(),
        chain.iter().cloned(),
    )
    .and_then(|p| p.to_der())
    .map_err(|e| Malformed(format!("encoding an RDCleanPath response: {e}")))
}

/// An error answer carrying an HTTP status (401 bad token, 404, 502 unreachable service…).
pub fn http_error(status: u16) -> Vec<u8> {
    der(&RDCleanPathPdu::new_http_error(status))
}

/// An error answer carrying a TLS alert (the TLS handshake with the server failed).
pub fn tls_error(alert: u8) -> Vec<u8> {
    der(&RDCleanPathPdu::new_tls_error(alert))
}

/// An error answer carrying the server's Connection Confirm with its negotiation failure.
pub fn negotiation_error(x224_confirm: &[u8]) -> Vec<u8> {
    RDCleanPathPdu::new_negotiation_error(x224_confirm.to_vec())
        .map(|p| der(&p))
        .unwrap_or_else(|_| der(&RDCleanPathPdu::new_general_error()))
}

/// An answer as a client reads it (tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Connected: the Connection Confirm and the chain.
    Connected { x224: Vec<u8>, chain: Vec<Vec<u8>> },
    /// An error with an HTTP status.
    Http(u16),
    /// An error with a TLS alert.
    TlsAlert(u8),
    /// The server's negotiation failure.
    Negotiation(Vec<u8>),
    /// Any other error.
    Other,
}

/// Parses an answer (tests and tools).
pub fn parse_answer(der: &[u8]) -> Result<Answer, Malformed> {
    let pdu = RDCleanPathPdu::from_der(der)
        .map_err(|e| Malformed(format!("RDCleanPath answer does not decode: {e}")))?;
    let x224 = pdu.x224_connection_pdu.map(|o| o.into_bytes().into_vec());
    Ok(match (pdu.error, x224) {
        (None, Some(x224)) => Answer::Connected {
            x224,
            chain: pdu
                .server_cert_chain
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.into_bytes().into_vec())
                .collect(),
        },
        (Some(e), _) if e.http_status_code.is_some() => {
            Answer::Http(e.http_status_code.unwrap_or_default())
        }
        (Some(e), _) if e.tls_alert_code.is_some() => {
            Answer::TlsAlert(e.tls_alert_code.unwrap_or_default())
        }
        (Some(e), Some(x224)) if e.error_code == ironrdp_rdcleanpath::NEGOTIATION_ERROR_CODE => {
            Answer::Negotiation(x224)
        }
        _ => Answer::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdp::x224::{Negotiation, connection_confirm, connection_request, protocol};

    #[test]
    fn a_request_is_detected_split_anywhere_and_parsed() {
        let cr = connection_request(Some("op"), Some(protocol::SSL));
        let der = request(cr.clone(), "pc-1", "tok-123", None).unwrap();
        for cut in 0..der.len() {
            let p = detect(&der[..cut]).unwrap();
            assert!(
                p == Progress::Incomplete || p == Progress::Complete(der.len()),
                "at {cut}: {p:?}"
            );
        }
        assert_eq!(detect(&der).unwrap(), Progress::Complete(der.len()));
        let req = parse_request(&der).unwrap();
        assert_eq!(req.proxy_auth.as_deref(), Some("tok-123"));
        assert_eq!(req.x224, cr);
        assert_eq!(req.connection.requested_protocols, Some(protocol::SSL));
        assert!(
            !format!("{req:?}").contains("tok-123"),
            "the token is secret"
        );
    }

    #[test]
    fn garbage_and_answers_are_not_requests() {
        assert!(detect(b"GET / HTTP/1.1\r\n").is_err());
        assert!(detect(&[0x30, 0x84, 0x7f, 0xff, 0xff, 0xff]).is_err());
        let confirm = connection_confirm(Negotiation::Selected(1));
        let answer = response(&confirm, &[vec![1, 2, 3]], "pc").unwrap();
        assert!(parse_request(&answer).is_err());
        let not_x224 = request(vec![1, 2, 3], "pc", "t", None).unwrap();
        assert!(parse_request(&not_x224).is_err());
        let big_pcb = request(
            connection_request(None, Some(1)),
            "pc",
            "t",
            Some("x".repeat(5000)),
        );
        assert!(parse_request(&big_pcb.unwrap()).is_err());
    }

    #[test]
    fn answers_say_what_happened() {
        let confirm = connection_confirm(Negotiation::Selected(1));
        let chain = vec![vec![0x30, 0x03, 1, 2, 3], vec![0x30, 0x01, 9]];
        assert_eq!(
            parse_answer(&response(&confirm, &chain, "pc").unwrap()).unwrap(),
            Answer::Connected {
                x224: confirm,
                chain
            }
        );
        assert_eq!(parse_answer(&http_error(401)).unwrap(), Answer::Http(401));
        assert_eq!(parse_answer(&tls_error(42)).unwrap(), Answer::TlsAlert(42));
        let failure = connection_confirm(Negotiation::Failure(2));
        assert_eq!(
            parse_answer(&negotiation_error(&failure)).unwrap(),
            Answer::Negotiation(failure)
        );
    }
}
