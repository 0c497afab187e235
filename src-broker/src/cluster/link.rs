//! The node link's authentication, without I/O: a request from one node to another carries
//! `Passerelle-Node: v1 NAME TIME_MS MAC`, the MAC being HMAC-SHA256 under the cluster's link
//! secret over the node's name, the time, the method, the path and query, and the client's
//! address it speaks for (`Passerelle-Client`). The receiver checks the MAC in constant time
//! and the time within [`SKEW_MS`].
//!
//! Why a shared secret and not mutual TLS with a cluster CA: every node already shares the
//! cluster directory (host key, certificate, sealing key), so the secret adds nothing to
//! distribute or rotate; the link runs over the nodes' own HTTPS listener, whose certificate is
//! the cluster's and is pinned by the caller; and a MAC per request binds what is asked
//! (method, path, the client spoken for), which a TLS client certificate would not.

use ring::hmac;

/// The request header naming and authenticating the calling node.
pub const NODE_HEADER: &str = "passerelle-node";
/// The client address a forwarded request speaks for.
pub const CLIENT_HEADER: &str = "passerelle-client";
/// How far apart the two nodes' clocks and the request's travel may be.
pub const SKEW_MS: i64 = 30_000;

/// Why a link request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkRefusal {
    #[error("malformed node header")]
    Malformed,
    #[error("the node header's time is too far from this node's clock")]
    Stale,
    #[error("bad node signature")]
    BadMac,
}

/// The cluster's link secret.
pub struct LinkKey(hmac::Key);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

/// A verified link request: which node sent it, for which client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromNode {
    pub node: String,
    pub client: Option<String>,
}

fn message(node: &str, at: i64, method: &str, path: &str, client: &str) -> String {
    format!("passerelle-link v1\n{node}\n{at}\n{method}\n{path}\n{client}")
}

impl LinkKey {
    pub fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The node header for a request.
    pub fn sign(&self, node: &str, at: i64, method: &str, path: &str, client: &str) -> String {
        let tag = hmac::sign(&self.0, message(node, at, method, path, client).as_bytes());
        format!("v1 {node} {at} {}", hex::encode(tag.as_ref()))
    }

    /// Checks a node header at `now`.
    pub fn verify(
        &self,
        header: &str,
        now: i64,
        method: &str,
        path: &str,
        client: Option<&str>,
    ) -> Result<FromNode, LinkRefusal> {
        let mut parts = header.split(' ');
        let (Some("v1"), Some(node), Some(at), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(LinkRefusal::Malformed);
        };
        let at: i64 = at.parse().map_err(|_| LinkRefusal::Malformed)?;
        let mac = hex::decode(mac).map_err(|_| LinkRefusal::Malformed)?;
        if node.is_empty() || node.len() > 63 {
            return Err(LinkRefusal::Malformed);
        }
        let msg = message(node, at, method, path, client.unwrap_or(""));
        hmac::verify(&self.0, msg.as_bytes(), &mac).map_err(|_| LinkRefusal::BadMac)?;
        if (now - at).abs() > SKEW_MS {
            return Err(LinkRefusal::Stale);
        }
        Ok(FromNode {
            node: node.to_owned(),
            client: client.map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_verifies_and_any_change_does_not() {
        let key = LinkKey::new(&[7; 32]);
        let h = key.sign(
            "node-a",
            1_000_000,
            "GET",
            "/ws/sessions/x",
            "10.0.0.9:5000",
        );
        let ok = key.verify(
            &h,
            1_000_500,
            "GET",
            "/ws/sessions/x",
            Some("10.0.0.9:5000"),
        );
        assert_eq!(
            ok,
            Ok(FromNode {
                node: "node-a".into(),
                client: Some("10.0.0.9:5000".into())
            })
        );
        let bad = |r| assert_eq!(r, Err(LinkRefusal::BadMac));
        bad(key.verify(
            &h,
            1_000_000,
            "DELETE",
            "/ws/sessions/x",
            Some("10.0.0.9:5000"),
        ));
        bad(key.verify(
            &h,
            1_000_000,
            "GET",
            "/ws/sessions/y",
            Some("10.0.0.9:5000"),
        ));
        bad(key.verify(
            &h,
            1_000_000,
            "GET",
            "/ws/sessions/x",
            Some("10.0.0.8:5000"),
        ));
        bad(key.verify(&h, 1_000_000, "GET", "/ws/sessions/x", None));
        let forged = h.replace("node-a", "node-b");
        bad(key.verify(
            &forged,
            1_000_000,
            "GET",
            "/ws/sessions/x",
            Some("10.0.0.9:5000"),
        ));
        let other = LinkKey::new(&[8; 32]);
        bad(other.verify(
            &h,
            1_000_000,
            "GET",
            "/ws/sessions/x",
            Some("10.0.0.9:5000"),
        ));
        assert_eq!(
            key.verify(
                &h,
                1_000_000 + SKEW_MS + 1,
                "GET",
                "/ws/sessions/x",
                Some("10.0.0.9:5000")
            ),
            Err(LinkRefusal::Stale)
        );
        for junk in [
            "",
            "v1",
            "v2 a 1 00",
            "v1 a x 00",
            "v1 a 1 zz",
            "v1 a 1 00 extra",
        ] {
            assert_eq!(
                key.verify(junk, 1, "GET", "/", None),
                Err(LinkRefusal::Malformed),
                "{junk:?}"
            );
        }
    }
}
