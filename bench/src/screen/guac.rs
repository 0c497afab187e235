//! Stack (c), Apache Guacamole: guacd (built by `bench/guacd/build.sh`, VNC only) and
//! guacamole-lite (`bench/screen/guac-server.mjs`), which connects guacd to the VNC server behind
//! sshd's forwarded port — the same tunnel stack (b) serves with websockify.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

use crate::stacks::{Proc, free_port, listening, log_tail, wait_for};

/// guacd and guacamole-lite, running.
pub struct Guacamole {
    guacd: Proc,
    lite: Proc,
    /// The WebSocket URL guacamole-common-js's `WebSocketTunnel` is given.
    pub ws_url: String,
    /// guacamole-lite's encrypted connection token for the VNC server.
    pub token: String,
    /// `guacd -v`.
    pub version: String,
}

impl Guacamole {
    /// Starts `guacd` (the binary given) on a free loopback port and guacamole-lite in front of
    /// it, for the VNC server at `vnc`.
    pub async fn start(
        guacd_bin: &Path,
        screen_dir: &Path,
        dir: &Path,
        vnc: SocketAddr,
        size: (u16, u16),
    ) -> anyhow::Result<Self> {
        let version = Command::new(guacd_bin)
            .arg("-v")
            .output()
            .await
            .with_context(|| format!("running {} -v", guacd_bin.display()))?;
        let version = String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or("guacd, unknown version")
            .trim()
            .to_owned();
        let port = free_port()?;
        let mut cmd = Command::new(guacd_bin);
        // -f: foreground; -L info: no per-frame logging.
        cmd.args([
            "-f",
            "-b",
            "127.0.0.1",
            "-l",
            &port.to_string(),
            "-L",
            "info",
        ]);
        if let Some(lib) = guacd_bin
            .parent()
            .and_then(Path::parent)
            .map(|p| p.join("lib"))
        {
            // A prefix install: libguac and the VNC plugin live in PREFIX/lib.
            cmd.env("LD_LIBRARY_PATH", lib);
        }
        let mut guacd = Proc::spawn("guacd", &mut cmd, &dir.join("guacd.log"), false)?;
        let guacd_addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for("guacd to listen", Duration::from_secs(10), async || {
            guacd.check_alive()?;
            Ok(listening(guacd_addr).await.then_some(()))
        })
        .await?;

        let log = dir.join("guacamole-lite.log");
        let mut cmd = Command::new("node");
        cmd.arg(screen_dir.join("guac-server.mjs"))
            .current_dir(screen_dir)
            .args([
                "--guacd",
                &guacd_addr.to_string(),
                "--vnc",
                &vnc.to_string(),
            ])
            .args(["--size", &format!("{}x{}", size.0, size.1)]);
        let mut lite = Proc::spawn("guacamole-lite", &mut cmd, &log, true)?;
        let stdout = lite
            .child_mut()
            .stdout
            .take()
            .context("guacamole-lite has no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = match tokio::time::timeout(Duration::from_secs(15), lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            _ => bail!(
                "guacamole-lite printed no address; end of {}:\n{}",
                log.display(),
                log_tail(&log)
            ),
        };
        // Keep reading: guacamole-lite logs each connection on stdout.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (ws_url, token) = parse_address_line(&line)
            .with_context(|| format!("guacamole-lite printed {line:?}"))?;
        Ok(Self {
            guacd,
            lite,
            ws_url,
            token,
            version,
        })
    }

    /// The page of stack (c), served by the driver.
    pub fn page_url(&self) -> String {
        format!(
            "http://screen.bench/guac.html#ws={}&token={}",
            url_escape(&self.ws_url),
            url_escape(&self.token)
        )
    }

    pub fn guacd_pid(&self) -> u32 {
        self.guacd.pid()
    }

    pub fn lite_pid(&self) -> u32 {
        self.lite.pid()
    }

    pub async fn stop(mut self) {
        self.lite.kill().await;
        self.guacd.kill().await;
    }
}

/// `ws URL token TOKEN`.
fn parse_address_line(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("ws ")?;
    let (url, token) = rest.split_once(" token ")?;
    (!url.is_empty() && !token.trim().is_empty()).then(|| (url.to_owned(), token.trim().to_owned()))
}

/// Percent-encodes everything but unreserved characters (for a URL fragment parameter).
pub fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_line_parses() {
        assert_eq!(
            parse_address_line("ws ws://127.0.0.1:4000/ token abc="),
            Some(("ws://127.0.0.1:4000/".to_owned(), "abc=".to_owned()))
        );
        assert_eq!(parse_address_line("listening"), None);
        assert_eq!(parse_address_line("ws  token "), None);
    }

    #[test]
    fn fragments_are_escaped() {
        assert_eq!(
            url_escape("ws://a:1/?t=a+b/"),
            "ws%3A%2F%2Fa%3A1%2F%3Ft%3Da%2Bb%2F"
        );
    }
}
