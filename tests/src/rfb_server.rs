//! [`FakeVnc`]: a VNC server that speaks just enough RFB 3.8 to stand behind an agent: it asks
//! for VNC authentication, checks the answer against its password, then echoes what it gets.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use passerelle_proto::rfb::vnc_auth_response;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The challenge the server sends (fixed: tests check the broker's answer, not randomness).
const CHALLENGE: [u8; 16] = *b"0123456789abcdef";

/// A running fake VNC server on `127.0.0.1:0`; stops when dropped.
pub struct FakeVnc {
    port: u16,
    authed: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FakeVnc {
    /// Starts a server that accepts `password`.
    pub async fn start(password: &'static str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let authed = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(AtomicUsize::new(0));
        let (a, r) = (authed.clone(), received.clone());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, password, a.clone(), r.clone()));
            }
        });
        Ok(Self {
            port,
            authed,
            received,
            task,
        })
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections that answered the challenge with the right password.
    pub fn authed(&self) -> usize {
        self.authed.load(Ordering::SeqCst)
    }

    /// Bytes received after authentication, over all connections.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for FakeVnc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut s: TcpStream,
    password: &'static str,
    authed: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
) {
    let mut version = [0u8; 12];
    let mut chosen = [0u8; 1];
    let mut response = [0u8; 16];
    let ok = async {
        s.write_all(b"RFB 003.008\n").await?;
        s.read_exact(&mut version).await?;
        s.write_all(&[1, 2]).await?;
        s.read_exact(&mut chosen).await?;
        s.write_all(&CHALLENGE).await?;
        s.read_exact(&mut response).await?;
        std::io::Result::Ok(response == vnc_auth_response(password.as_bytes(), &CHALLENGE))
    }
    .await;
    if !matches!(ok, Ok(true)) {
        let _ = s
            .write_all(&[0, 0, 0, 1, 0, 0, 0, 3, b'b', b'a', b'd'])
            .await;
        return;
    }
    authed.fetch_add(1, Ordering::SeqCst);
    if s.write_all(&[0, 0, 0, 0]).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                received.fetch_add(n, Ordering::SeqCst);
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
