//! Reading a trusted proxy's PROXY protocol v2 header off an SSH connection, bounded in size
//! ([`passerelle_proto::proxy::MAX_HEADER`]) and time (the caller's deadline). Bytes after the
//! header are never read: the header tells its own length, so the read stops exactly at its end
//! and the SSH version exchange that follows is left in the socket for russh.

use std::net::SocketAddr;

use passerelle_proto::proxy::{self, Error as ProxyError};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// Why no client address came from a trusted proxy.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("{0}")]
    Invalid(#[from] ProxyError),
    #[error("connection closed inside the PROXY header")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads exactly one PROXY v2 header from `stream`; the client's address, or `None` for the
/// proxy's own connections (LOCAL command, health checks).
pub(crate) async fn read(stream: &mut TcpStream) -> Result<Option<SocketAddr>, HeaderError> {
    let mut buf = vec![0u8; proxy::FIXED_LEN];
    let mut have = 0;
    loop {
        match proxy::parse(&buf[..have]) {
            Ok(header) => return Ok(header.source),
            Err(ProxyError::Incomplete(need)) => {
                // `need` is at most MAX_HEADER: the parser refuses longer announcements.
                if buf.len() < need {
                    buf.resize(need, 0);
                }
                let n = stream.read(&mut buf[have..need]).await?;
                if n == 0 {
                    return Err(HeaderError::Closed);
                }
                have += n;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (c, l.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn reads_the_header_and_not_a_byte_more() {
        let (mut client, mut server) = pair().await;
        let mut bytes = proxy::SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0x21, 0x11, 0, 12, 198, 51, 100, 7, 10, 0, 0, 1]);
        bytes.extend_from_slice(&[0x12, 0x67, 0x08, 0xae]);
        bytes.extend_from_slice(b"SSH-2.0-test\r\n");
        // Trickled: the reader must cope with any split.
        for chunk in bytes.chunks(5) {
            client.write_all(chunk).await.unwrap();
        }
        let got = read(&mut server).await.unwrap();
        assert_eq!(got, Some("198.51.100.7:4711".parse().unwrap()));
        let mut rest = [0u8; 14];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"SSH-2.0-test\r\n");
    }

    #[tokio::test]
    async fn refuses_a_plain_ssh_client_and_an_oversized_header() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
        assert!(matches!(
            read(&mut server).await,
            Err(HeaderError::Invalid(ProxyError::NotProxy))
        ));
        let (mut client, mut server) = pair().await;
        let mut big = proxy::SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0x10, 0x00]);
        client.write_all(&big).await.unwrap();
        assert!(matches!(
            read(&mut server).await,
            Err(HeaderError::Invalid(ProxyError::TooLong(_)))
        ));
        let (client, mut server) = pair().await;
        drop(client);
        assert!(matches!(read(&mut server).await, Err(HeaderError::Closed)));
    }
}
