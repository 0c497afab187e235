//! Why an RDP connection could not be relayed, and what each failure means to the viewer (an
//! RDCleanPath error answer and a close code, so the page says what went wrong), to the
//! session (its end reason) and to the audit.

use std::time::Duration;

use passerelle_proto::close::{self, CloseCode, Closure, EndReason};
use passerelle_proto::rdp::cleanpath;

/// TLS alert `bad_certificate`, sent when the server's certificate is not the pinned one.
const ALERT_BAD_CERTIFICATE: u8 = 42;
/// TLS alert `handshake_failure`, sent when the handshake failed without an alert.
const ALERT_HANDSHAKE_FAILURE: u8 = 40;

/// A failed RDP connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RdpFailure {
    /// The viewer sent no complete request in time.
    #[error("no RDCleanPath request from the viewer within {}s", .0.as_secs())]
    RequestTimeout(Duration),
    /// The viewer's request is malformed, too big, or asks for what the broker does not relay.
    #[error("the viewer's RDCleanPath request is not acceptable: {0}")]
    BadRequest(String),
    /// The viewer went away before its request: nobody to answer.
    #[error("the viewer closed the connection before its RDCleanPath request")]
    ViewerGone,
    /// The workstation's server failed before TLS (closed, timed out, answered garbage).
    #[error("the workstation's RDP server {0}")]
    Handshake(String),
    /// The server refused the security the viewer asked for; `confirm` is its answer.
    #[error("the workstation's RDP server refused the connection: {text}")]
    Negotiation { confirm: Vec<u8>, text: String },
    /// The TLS handshake failed; `alert` is the one the server sent, if any.
    #[error("TLS with the workstation's RDP server failed: {reason}")]
    Tls { alert: Option<u8>, reason: String },
    /// The server presented another certificate than the pinned one (hex SHA-256s).
    #[error(
        "the workstation's RDP certificate changed: pinned sha256 {pinned}, presented {presented}; \
         an administrator resets the pin if the change is expected"
    )]
    CertificateChanged { pinned: String, presented: String },
}

impl RdpFailure {
    /// The RDCleanPath error answer for the viewer; `None` when it went away.
    pub(crate) fn answer(&self) -> Option<Vec<u8>> {
        Some(match self {
            Self::RequestTimeout(_) => cleanpath::http_error(408),
            Self::BadRequest(_) => cleanpath::http_error(400),
            Self::ViewerGone => return None,
            Self::Handshake(_) => cleanpath::http_error(502),
            Self::Negotiation { confirm, .. } => cleanpath::negotiation_error(confirm),
            Self::Tls { alert, .. } => {
                cleanpath::tls_error(alert.unwrap_or(ALERT_HANDSHAKE_FAILURE))
            }
            Self::CertificateChanged { .. } => cleanpath::tls_error(ALERT_BAD_CERTIFICATE),
        })
    }

    /// The close code the viewer gets after the answer.
    pub(crate) fn close_code(&self) -> CloseCode {
        match self {
            Self::RequestTimeout(_) | Self::BadRequest(_) => close::RDP_BAD_REQUEST,
            Self::ViewerGone => close::SERVICE_CLOSED,
            Self::Handshake(_) => close::RDP_HANDSHAKE_FAILED,
            Self::Negotiation { .. } => close::RDP_NEGOTIATION_FAILED,
            Self::Tls { .. } => close::RDP_TLS_FAILED,
            Self::CertificateChanged { .. } => close::RDP_CERTIFICATE_CHANGED,
        }
    }

    /// How the session ends when this failure ends it.
    pub(crate) fn end_reason(&self) -> EndReason {
        match self {
            Self::RequestTimeout(_) | Self::BadRequest(_) => EndReason::ProtocolError,
            Self::ViewerGone => EndReason::ViewerClosed,
            Self::Handshake(_) => EndReason::RdpHandshakeFailed,
            Self::Negotiation { .. } => EndReason::RdpNegotiationFailed,
            Self::Tls { .. } => EndReason::RdpTlsFailed,
            Self::CertificateChanged { .. } => EndReason::RdpCertificateChanged,
        }
    }

    /// The close frame's reason: what the page shows after its own words for the code (at
    /// most 123 bytes, the close frame's limit).
    pub(crate) fn close_reason(&self) -> String {
        let mut text = match self {
            Self::Negotiation { text, .. } => text.clone(),
            Self::Tls { reason, .. } => reason.clone(),
            Self::CertificateChanged { presented, .. } => {
                format!(
                    "it now presents sha256 {}…",
                    &presented[..16.min(presented.len())]
                )
            }
            other => other.to_string(),
        };
        truncate(&mut text, 123);
        text
    }

    /// How the viewer's connection closes, and the session ends.
    pub(crate) fn closure(&self) -> Closure {
        Closure::ending_with(self.end_reason(), self.close_code(), &self.close_reason())
    }

    /// The audit's detail (never a secret: no token, no password).
    pub(crate) fn audit_text(&self) -> String {
        self.to_string()
    }
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use passerelle_proto::rdp::cleanpath::{Answer, parse_answer};

    #[test]
    fn every_failure_has_its_own_code_and_answer() {
        let failures = [
            RdpFailure::RequestTimeout(Duration::from_secs(10)),
            RdpFailure::Handshake("closed".into()),
            RdpFailure::Negotiation {
                confirm: vec![3, 0, 0, 11, 6, 0xD0, 0, 0, 0, 0, 0],
                text: "x".into(),
            },
            RdpFailure::Tls {
                alert: None,
                reason: "x".into(),
            },
            RdpFailure::CertificateChanged {
                pinned: "aa".repeat(32),
                presented: "bb".repeat(32),
            },
        ];
        let mut codes: Vec<u16> = failures.iter().map(|f| f.close_code().code).collect();
        codes.dedup();
        assert_eq!(codes.len(), failures.len());
        let answers: Vec<Answer> = failures
            .iter()
            .map(|f| parse_answer(&f.answer().unwrap()).unwrap())
            .collect();
        assert_eq!(answers[0], Answer::Http(408));
        assert_eq!(answers[1], Answer::Http(502));
        assert!(matches!(answers[2], Answer::Negotiation(_)));
        assert_eq!(answers[3], Answer::TlsAlert(40));
        assert_eq!(answers[4], Answer::TlsAlert(42));
        for f in &failures {
            assert!(f.close_reason().len() <= 123);
        }
        // A failed workstation's session ends with the reason whose code the viewer got.
        for f in &failures[1..] {
            assert_eq!(f.end_reason().close_code().code, f.close_code().code);
        }
        assert!(RdpFailure::ViewerGone.answer().is_none());
        let mut long = "é".repeat(100);
        truncate(&mut long, 123);
        assert!(long.len() <= 123 && long.ends_with('…'));
    }
}
