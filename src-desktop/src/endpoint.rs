//! Where a session's stream is: the broker's host, port and scheme, and the WebSocket URL of the
//! session, all derived from a launch URL. The token is kept here and only here, out of `Debug`.

use passerelle_proto::launch::{LaunchUrl, LaunchUrlError};
use url::Url;

use crate::Error;

/// The broker end of a session's stream.
#[derive(Clone)]
pub struct Endpoint {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Whether the broker speaks TLS (`https://`).
    pub tls: bool,
    /// Hex SHA-256 of the broker's certificate to pin, if any.
    pub fingerprint: Option<String>,
    /// The broker's base URL without a trailing slash, e.g. `https://broker:8443/pmad`.
    pub base: String,
    /// Path of the session's stream, without the query, e.g. `/pmad/ws/sessions/ID/raw`.
    pub path: String,
    token: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("fingerprint", &self.fingerprint)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Derives the stream endpoint of `launch`: VNC goes to the session's RFB stream
    /// (`/ws/sessions/{id}`, where the broker has already answered the VNC server's security
    /// handshake), every other service to the raw bytes (`/ws/sessions/{id}/raw`).
    pub fn from_launch(launch: &LaunchUrl) -> Result<Self, Error> {
        let url = Url::parse(&launch.broker).map_err(|_| LaunchUrlError::BadBroker)?;
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(LaunchUrlError::BadBroker.into()),
        };
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
            return Err(LaunchUrlError::BadBroker.into());
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(LaunchUrlError::BadBroker.into()),
        };
        let port = url
            .port_or_known_default()
            .ok_or(LaunchUrlError::BadBroker)?;
        let prefix = url.path().trim_end_matches('/');
        let suffix = if launch.service.as_str() == "vnc" {
            ""
        } else {
            "/raw"
        };
        Ok(Self {
            host,
            port,
            tls,
            fingerprint: launch.fingerprint.clone(),
            base: launch.broker.trim_end_matches('/').to_owned(),
            path: format!("{prefix}/ws/sessions/{}{suffix}", launch.session),
            token: launch.token.clone(),
        })
    }

    /// `host:port` for connecting and for messages (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The stream's WebSocket URL: `wss://host:port/ws/sessions/ID[/raw]`. The token goes in
    /// an `Authorization` header ([`Endpoint::authorization`]), never in the URL, which proxies
    /// log.
    pub fn ws_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.authority(), self.path)
    }

    /// The session's watch (`/ws/sessions/ID/watch`): closed by the broker when the session
    /// ends, so that a tunnel with no open connection learns it too.
    pub fn watch_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        let session = self.path.strip_suffix("/raw").unwrap_or(&self.path);
        format!("{scheme}://{}{session}/watch", self.authority())
    }

    /// The `Authorization` header's value for the stream. Secret: never log it.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// Path of the broker's liveness check, used to test reachability and the certificate
    /// without spending anything of the session.
    pub fn health_path(&self) -> String {
        let prefix = self.path.split("/ws/sessions/").next().unwrap_or("");
        format!("{prefix}/healthz")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(broker: &str, service: &str) -> LaunchUrl {
        LaunchUrl {
            broker: broker.into(),
            session: "0b1c-22".into(),
            token: "t+k/=".into(),
            service: passerelle_proto::ids::ServiceName::new(service).unwrap(),
            fingerprint: None,
            agent: None,
        }
    }

    #[test]
    fn vnc_uses_the_rfb_stream_and_others_the_raw_one() {
        let e = Endpoint::from_launch(&launch("https://broker.example:8443", "vnc")).unwrap();
        assert_eq!(e.ws_url(), "wss://broker.example:8443/ws/sessions/0b1c-22");
        assert_eq!(
            e.authorization(),
            "Bearer t+k/=",
            "the token rides in a header"
        );
        assert!(e.tls);
        let e = Endpoint::from_launch(&launch("http://127.0.0.1:9000", "rdp")).unwrap();
        assert_eq!(e.ws_url(), "ws://127.0.0.1:9000/ws/sessions/0b1c-22/raw");
        assert_eq!(e.health_path(), "/healthz");
        let e = Endpoint::from_launch(&launch("https://[::1]/pmad", "ssh")).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 443));
        assert_eq!(e.authority(), "[::1]:443");
        assert_eq!(e.path, "/pmad/ws/sessions/0b1c-22/raw");
        assert_eq!(e.health_path(), "/pmad/healthz");
        assert_eq!(
            e.watch_url(),
            "wss://[::1]:443/pmad/ws/sessions/0b1c-22/watch"
        );
        let e = Endpoint::from_launch(&launch("https://broker.example", "vnc")).unwrap();
        assert_eq!(
            e.watch_url(),
            "wss://broker.example:443/ws/sessions/0b1c-22/watch"
        );
    }

    #[test]
    fn debug_hides_the_token() {
        let e = Endpoint::from_launch(&launch("https://b.example", "rdp")).unwrap();
        assert!(!format!("{e:?}").contains("t+k"));
    }

    #[test]
    fn odd_brokers_are_refused() {
        for broker in [
            "https://u:p@b.example",
            "https://b.example/?x=1",
            "ftp://b.example",
        ] {
            assert!(
                matches!(
                    Endpoint::from_launch(&launch(broker, "rdp")),
                    Err(Error::BadUrl(LaunchUrlError::BadBroker))
                ),
                "{broker}"
            );
        }
    }
}
