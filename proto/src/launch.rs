//! The desktop helper's launch URL:
//! `passerelle://open?broker=<https url>&session=<id>&token=<T>&service=<name>[&fp=<sha256 hex>][&agent=<id>]`.
//!
//! `agent` names the session's workstation for people (the desktop helper lists tunnels by it);
//! it is display-only: the session and its token decide what the tunnel reaches.
//!
//! Built by the broker, parsed by the desktop helper. Parsing is strict: the scheme and host must
//! be exactly `passerelle://open`, each parameter appears once, unknown parameters are refused,
//! and the broker URL must be `https://` or `http://` with no credentials in it.

use std::fmt::Write as _;

use crate::ids::{AgentId, ServiceName};

/// The parts of a launch URL.
#[derive(Clone, PartialEq, Eq)]
pub struct LaunchUrl {
    /// The broker's base URL, e.g. `https://broker.example:8443`.
    pub broker: String,
    /// The session id.
    pub session: String,
    /// The launch token (secret: never printed by `Debug`).
    pub token: String,
    /// The service, e.g. `rdp`.
    pub service: ServiceName,
    /// Hex SHA-256 of the broker's TLS certificate (DER), for pinning.
    pub fingerprint: Option<String>,
    /// The session's agent, for display only (links from older brokers lack it).
    pub agent: Option<AgentId>,
}

impl std::fmt::Debug for LaunchUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchUrl")
            .field("broker", &self.broker)
            .field("session", &self.session)
            .field("token", &"<redacted>")
            .field("service", &self.service)
            .field("fingerprint", &self.fingerprint)
            .field("agent", &self.agent)
            .finish()
    }
}

/// Why a launch URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchUrlError {
    #[error("not a Passerelle launch URL: it must start with passerelle://open?")]
    WrongScheme,
    #[error("launch URL is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("launch URL lacks the `{0}` parameter")]
    Missing(&'static str),
    #[error("launch URL repeats the `{0}` parameter")]
    Repeated(String),
    #[error("launch URL has an unknown parameter `{0}`")]
    Unknown(String),
    #[error("launch URL has a badly escaped parameter")]
    BadEscape,
    #[error("launch URL's broker must be an http:// or https:// URL without credentials")]
    BadBroker,
    #[error("launch URL's {0} is not valid")]
    BadValue(&'static str),
}

/// What the broker sends on `/ws/sessions/{id}/watch` once it admitted a launch token's watch
/// (a text frame); a refused watch is closed instead, with the token's close code. The watch
/// then closes with the session's end code when the session ends.
pub const WATCH_ADMITTED: &str = "watching";

/// The longest launch URL accepted.
pub const MAX_LEN: usize = 4096;
const PREFIX: &str = "passerelle://open?";

fn encode(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn decode(s: &str) -> Result<String, LaunchUrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(LaunchUrlError::BadEscape)?;
                let hex = std::str::from_utf8(hex).map_err(|_| LaunchUrlError::BadEscape)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| LaunchUrlError::BadEscape)?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| LaunchUrlError::BadEscape)
}

impl LaunchUrl {
    /// The URL as text.
    pub fn to_url(&self) -> String {
        let mut s = String::from(PREFIX);
        let mut params = vec![
            ("broker", self.broker.as_str()),
            ("session", self.session.as_str()),
            ("token", self.token.as_str()),
            ("service", self.service.as_str()),
        ];
        if let Some(fp) = &self.fingerprint {
            params.push(("fp", fp));
        }
        if let Some(agent) = &self.agent {
            params.push(("agent", agent.as_str()));
        }
        for (i, (k, v)) in params.into_iter().enumerate() {
            if i > 0 {
                s.push('&');
            }
            s.push_str(k);
            s.push('=');
            encode(&mut s, v);
        }
        s
    }

    /// Parses and checks a launch URL.
    pub fn parse(url: &str) -> Result<Self, LaunchUrlError> {
        if url.len() > MAX_LEN {
            return Err(LaunchUrlError::TooLong);
        }
        let query = url
            .strip_prefix(PREFIX)
            .or_else(|| url.strip_prefix("passerelle://open/?"))
            .ok_or(LaunchUrlError::WrongScheme)?;
        let (mut broker, mut session, mut token, mut service, mut fp, mut agent) =
            (None, None, None, None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match k {
                "broker" => &mut broker,
                "session" => &mut session,
                "token" => &mut token,
                "service" => &mut service,
                "fp" => &mut fp,
                "agent" => &mut agent,
                other => return Err(LaunchUrlError::Unknown(decode(other)?)),
            };
            if slot.replace(decode(v)?).is_some() {
                return Err(LaunchUrlError::Repeated(k.to_owned()));
            }
        }
        let broker = broker.ok_or(LaunchUrlError::Missing("broker"))?;
        let rest = broker
            .strip_prefix("https://")
            .or_else(|| broker.strip_prefix("http://"))
            .ok_or(LaunchUrlError::BadBroker)?;
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty()
            || authority.contains('@')
            || broker.contains(|c: char| c.is_whitespace() || c.is_control())
        {
            return Err(LaunchUrlError::BadBroker);
        }
        let session = session.ok_or(LaunchUrlError::Missing("session"))?;
        if session.is_empty()
            || session.len() > 64
            || !session
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(LaunchUrlError::BadValue("session"));
        }
        let token = token.ok_or(LaunchUrlError::Missing("token"))?;
        if token.is_empty() || token.len() > 256 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(LaunchUrlError::BadValue("token"));
        }
        let service = service.ok_or(LaunchUrlError::Missing("service"))?;
        let service = ServiceName::new(service).map_err(|_| LaunchUrlError::BadValue("service"))?;
        if let Some(fp) = &fp {
            let hex = fp.replace(':', "");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(LaunchUrlError::BadValue("fp"));
            }
        }
        let fingerprint = fp.map(|f| f.replace(':', "").to_ascii_lowercase());
        let agent = agent
            .map(AgentId::new)
            .transpose()
            .map_err(|_| LaunchUrlError::BadValue("agent"))?;
        let parsed = Self {
            broker: broker.trim_end_matches('/').to_owned(),
            session,
            token,
            service,
            fingerprint,
            agent,
        };
        // Characters sent raw are escaped when the URL is written back (up to three times as
        // long): what parses must also print to a URL that parses (found by fuzzing).
        if parsed.to_url().len() > MAX_LEN {
            return Err(LaunchUrlError::TooLong);
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LaunchUrl {
        LaunchUrl {
            broker: "https://broker.example:8443".into(),
            session: "abc-123".into(),
            token: "tok_AbC-_x".into(),
            service: ServiceName::new("rdp").unwrap(),
            fingerprint: Some("ab".repeat(32)),
            agent: Some(AgentId::new("pc-042").unwrap()),
        }
    }

    #[test]
    fn round_trips() {
        let u = sample();
        let text = u.to_url();
        assert!(text.starts_with("passerelle://open?broker=https%3A%2F%2Fbroker.example%3A8443&"));
        assert_eq!(LaunchUrl::parse(&text).unwrap(), u);
        let no_fp = LaunchUrl {
            fingerprint: None,
            agent: None,
            ..sample()
        };
        assert_eq!(LaunchUrl::parse(&no_fp.to_url()).unwrap(), no_fp);
    }

    #[test]
    fn refuses_foreign_and_malformed_urls() {
        let good = sample().to_url();
        let cases: Vec<(String, LaunchUrlError)> = vec![
            (
                "https://evil.example/open?x=1".into(),
                LaunchUrlError::WrongScheme,
            ),
            (
                good.replace("&token=", "&tok="),
                LaunchUrlError::Unknown("tok".into()),
            ),
            (
                format!("{good}&token=again"),
                LaunchUrlError::Repeated("token".into()),
            ),
            (
                good.replace("broker=https%3A", "broker=file%3A"),
                LaunchUrlError::BadBroker,
            ),
            (
                good.replace("broker=https%3A%2F%2F", "broker=https%3A%2F%2Fme%40"),
                LaunchUrlError::BadBroker,
            ),
            (
                good.replace("service=rdp", "service=r%20p"),
                LaunchUrlError::BadValue("service"),
            ),
            (
                good.replace("&fp=", "&fp=zz"),
                LaunchUrlError::BadValue("fp"),
            ),
            (
                good.replace("session=abc-123", "session=..%2F"),
                LaunchUrlError::BadValue("session"),
            ),
            (
                good.replace("token=tok", "token=%ZZ"),
                LaunchUrlError::BadEscape,
            ),
            (
                good.replace("agent=pc-042", "agent=pc%20042"),
                LaunchUrlError::BadValue("agent"),
            ),
            (
                "passerelle://open?".into(),
                LaunchUrlError::Missing("broker"),
            ),
            ("x".repeat(MAX_LEN + 1), LaunchUrlError::TooLong),
            (
                good.replace("broker.example", "broker\0.example"),
                LaunchUrlError::BadBroker,
            ),
            // Under the limit as sent, over it once the raw characters are escaped back.
            (
                good.replace("broker.example", &"ё".repeat(1000)),
                LaunchUrlError::TooLong,
            ),
        ];
        for (url, want) in cases {
            assert_eq!(LaunchUrl::parse(&url), Err(want), "{url}");
        }
    }

    #[test]
    fn debug_hides_the_token() {
        assert!(!format!("{:?}", sample()).contains("tok_AbC"));
    }
}
