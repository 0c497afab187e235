//! The operator's side of `ssh` sessions in the browser: [`TermWs`], a WebSocket client that
//! speaks the terminal protocol (binary frames = terminal bytes, text frames = JSON control),
//! and the drivers of the terminal pages in headless Chromium (`tests/browser/terminal.mjs`,
//! `tests/browser/terminal_replay.mjs`). Every wait is bounded.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use passerelle_proto::terminal::ToViewer;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::sshd::{Sshd, SshdOptions, TEST_USER};
use crate::{Agent, Closed, Forward, Method, StatusCode, TestBroker, WAIT};

/// How much recent output [`TermWs`] keeps to search in.
const KEEP: usize = 256 * 1024;

/// What arrived.
#[derive(Debug)]
pub enum TermEvent {
    Output(bytes::Bytes),
    Control(ToViewer),
    Closed(Closed),
}

/// A terminal viewer over the session's `ws_url`.
pub struct TermWs {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Recent output, lossily decoded.
    recent: String,
    /// Every control message received so far.
    pub controls: Vec<ToViewer>,
    /// Output bytes received so far.
    pub bytes: u64,
}

impl TermWs {
    /// Connects and sends the terminal's size first, as the page does.
    pub async fn connect(url: &str, cols: u16, rows: u16) -> Result<Self> {
        let (stream, _) = timeout(WAIT, connect_async(url))
            .await
            .context("websocket connect timed out")??;
        let mut ws = Self {
            stream,
            recent: String::new(),
            controls: Vec::new(),
            bytes: 0,
        };
        ws.resize(cols, rows).await?;
        Ok(ws)
    }

    async fn send(&mut self, msg: Message) -> Result<()> {
        timeout(WAIT, self.stream.send(msg))
            .await
            .context("websocket send timed out")??;
        Ok(())
    }

    /// Sends a control message as JSON text.
    pub async fn control(&mut self, value: Value) -> Result<()> {
        self.send(Message::Text(value.to_string().into())).await
    }

    /// `{"t":"resize"}`.
    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<()> {
        self.control(json!({"t": "resize", "cols": cols, "rows": rows}))
            .await
    }

    /// `{"t":"credentials"}`.
    pub async fn credentials(&mut self, user: &str, password: &str) -> Result<()> {
        self.control(json!({"t": "credentials", "user": user, "password": password}))
            .await
    }

    /// Keys, as a binary frame.
    pub async fn keys(&mut self, text: &str) -> Result<()> {
        self.send(Message::Binary(text.as_bytes().to_vec().into()))
            .await
    }

    /// The next frame, within `deadline`.
    pub async fn next_event(&mut self, deadline: Instant) -> Result<TermEvent> {
        loop {
            let msg = timeout_at(deadline, self.stream.next())
                .await
                .map_err(|_| {
                    anyhow!(
                        "nothing from the terminal in time; recent output: {:?}",
                        self.tail()
                    )
                })?;
            match msg {
                None => bail!("websocket ended without a close frame"),
                Some(Err(e)) => bail!("websocket error: {e}"),
                Some(Ok(Message::Binary(b))) => {
                    self.bytes += b.len() as u64;
                    self.recent.push_str(&String::from_utf8_lossy(&b));
                    if self.recent.len() > KEEP {
                        let mut cut = self.recent.len() - KEEP / 2;
                        while !self.recent.is_char_boundary(cut) {
                            cut += 1;
                        }
                        self.recent.drain(..cut);
                    }
                    return Ok(TermEvent::Output(b));
                }
                Some(Ok(Message::Text(t))) => {
                    let c = ToViewer::parse(t.as_str())
                        .map_err(|e| anyhow!("bad control message {:?}: {e}", t.as_str()))?;
                    self.controls.push(c.clone());
                    return Ok(TermEvent::Control(c));
                }
                Some(Ok(Message::Close(f))) => {
                    return Ok(TermEvent::Closed(Closed {
                        code: f.as_ref().map_or(1005, |f| u16::from(f.code)),
                        reason: f.map(|f| f.reason.as_str().to_owned()).unwrap_or_default(),
                        discarded: 0,
                    }));
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// The last output received, for error messages.
    pub fn tail(&self) -> String {
        let start = self.recent.len().saturating_sub(400);
        let mut start = start;
        while !self.recent.is_char_boundary(start) {
            start += 1;
        }
        self.recent[start..].to_owned()
    }

    /// Reads until the output holds `needle` (searching what arrived since the last call too).
    pub async fn wait_output(&mut self, needle: &str) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(at) = self.recent.find(needle) {
                self.recent.drain(..at + needle.len());
                return Ok(());
            }
            if let TermEvent::Closed(c) = self.next_event(deadline).await? {
                bail!(
                    "closed ({} {:?}) before {needle:?} came; recent output: {:?}",
                    c.code,
                    c.reason,
                    self.tail()
                );
            }
        }
    }

    /// Reads until a control message matching `pred` arrives (output is kept for later waits).
    pub async fn wait_control(&mut self, pred: impl Fn(&ToViewer) -> bool) -> Result<ToViewer> {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.next_event(deadline).await? {
                TermEvent::Control(c) if pred(&c) => return Ok(c),
                TermEvent::Closed(c) => bail!(
                    "closed ({} {:?}) before the control message came; controls so far: {:?}",
                    c.code,
                    c.reason,
                    self.controls
                ),
                _ => {}
            }
        }
    }

    /// Reads until the close frame.
    pub async fn expect_close(&mut self) -> Result<Closed> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let TermEvent::Closed(c) = self.next_event(deadline).await? {
                return Ok(c);
            }
        }
    }

    /// Reads until at least `n` more output bytes have come.
    pub async fn read_bytes(&mut self, n: u64) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        let until = self.bytes + n;
        while self.bytes < until {
            if let TermEvent::Closed(c) = self.next_event(deadline).await? {
                bail!(
                    "closed ({} {:?}) after {} bytes",
                    c.code,
                    c.reason,
                    self.bytes
                );
            }
        }
        Ok(())
    }

    /// Reads output at about `bytes_per_sec` until it holds `needle`, within `within`; returns
    /// the output bytes read meanwhile. The pace comes from reading, not from the broker. Only
    /// the new output is searched (this reads hundreds of megabytes in a debug build).
    pub async fn read_throttled(
        &mut self,
        needle: &str,
        bytes_per_sec: u64,
        within: Duration,
    ) -> Result<u64> {
        let start = Instant::now();
        let deadline = start + within;
        let first = self.bytes;
        let mut carry = String::new();
        loop {
            match self.next_event(deadline).await? {
                TermEvent::Closed(c) => bail!(
                    "closed ({} {:?}) after {} bytes; recent output: {:?}",
                    c.code,
                    c.reason,
                    self.bytes - first,
                    self.tail()
                ),
                TermEvent::Output(b) => {
                    carry.push_str(&String::from_utf8_lossy(&b));
                    if carry.contains(needle) {
                        return Ok(self.bytes - first);
                    }
                    let mut keep = carry.len().saturating_sub(needle.len());
                    while !carry.is_char_boundary(keep) {
                        keep += 1;
                    }
                    carry.drain(..keep);
                    // Behind schedule only: a rate limit, not a synchronisation.
                    let due = start
                        + Duration::from_secs_f64(
                            (self.bytes - first) as f64 / bytes_per_sec as f64,
                        );
                    tokio::time::sleep_until(due.min(deadline)).await;
                }
                TermEvent::Control(_) => {}
            }
        }
    }
}

/// What the terminal page showed (see `tests/browser/terminal.mjs`).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminalPage {
    pub state: Option<String>,
    pub close_code: Option<u16>,
    pub close_reason: Option<String>,
    pub user: Option<String>,
    pub exit: Option<Value>,
    pub login: Option<Value>,
    pub cols: Option<u16>,
    pub rows: Option<u16>,
    /// The screen's text at the end.
    pub screen: Option<String>,
    /// The screen's text when each `snapshot` step ran, and what each `size` step read.
    #[serde(default)]
    pub snapshots: serde_json::Map<String, Value>,
    /// The notice the page shows (e.g. why it ended).
    pub notice: Option<String>,
    pub recorded: Option<bool>,
    pub error: Option<String>,
}

/// Opens a terminal page and runs `steps` in it (see `tests/browser/terminal.mjs`).
pub async fn open_terminal(url: &str, screenshot: &Path, steps: &Value) -> Result<TerminalPage> {
    let steps = steps.to_string();
    crate::desktop::run_page_script("terminal.mjs", url, screenshot, &["--steps", &steps]).await
}

/// What the terminal replay page showed (see `tests/browser/terminal_replay.mjs`).
#[derive(Debug, serde::Deserialize)]
pub struct TerminalReplay {
    pub state: Option<String>,
    pub duration: Option<f64>,
    pub position: Option<f64>,
    pub events: Option<u64>,
    pub screen: Option<String>,
    pub error: Option<String>,
}

/// Opens a terminal replay page; it plays to the end at 16×, unless `args` say `--no-play`.
pub async fn open_terminal_replay(
    url: &str,
    screenshot: &Path,
    args: &[&str],
) -> Result<TerminalReplay> {
    crate::desktop::run_page_script("terminal_replay.mjs", url, screenshot, args).await
}

/// Fails with a clear message when Chromium or the page driver is missing.
pub fn require_browser() -> Result<()> {
    anyhow::ensure!(
        crate::desktop::have_browser(),
        "chromium or tests/browser/node_modules missing: run scripts/install-test-deps.sh"
    );
    Ok(())
}

/// The tenant's key as a workstation's authorized_keys line, restricted as the README says.
pub async fn tenant_key_line(broker: &TestBroker) -> Result<String> {
    let tenant: Value = broker
        .admin(StatusCode::OK, Method::GET, "/api/v1/tenant", None)
        .await?;
    let key = tenant["ssh_public_key"]
        .as_str()
        .context("GET /api/v1/tenant has no ssh_public_key")?;
    anyhow::ensure!(key.starts_with("ssh-ed25519 "), "{tenant}");
    Ok(format!("from=\"127.0.0.1,::1\" {key}"))
}

/// `PATCH path` with the admin key, expecting 200.
pub async fn patch(broker: &TestBroker, path: &str, body: Value) -> Result<Value> {
    broker
        .admin(StatusCode::OK, Method::PATCH, path, Some(&body))
        .await
}

/// An agent announcing `ssh` in front of `sshd` (and any `extra` forwards).
pub async fn agent_for(broker: &TestBroker, sshd: &Sshd, extra: &[Forward]) -> Result<Agent> {
    let mut agent = Agent::registered(broker, &crate::unique("ws")).await?;
    let mut forwards = vec![Forward::named("ssh", sshd.port)];
    forwards.extend_from_slice(extra);
    agent.connect(&forwards)?;
    agent.wait_online(broker, &["ssh"]).await?;
    Ok(agent)
}

/// A broker whose tenant logs in as the test user with its key, and an sshd that has the key.
pub async fn key_setup(tweak: impl FnOnce(&mut passerelle::Config)) -> Result<(TestBroker, Sshd)> {
    let broker = TestBroker::start_with(tweak).await?;
    let line = tenant_key_line(&broker).await?;
    patch(
        &broker,
        "/api/v1/tenant",
        json!({ "ssh_username": TEST_USER }),
    )
    .await?;
    let sshd = Sshd::start(&SshdOptions {
        passwords: false,
        authorized_keys: vec![line],
    })
    .await?;
    Ok((broker, sshd))
}

/// Writes `bytes` of printable lines to `path`, readable by the test user.
pub fn big_file(path: &Path, bytes: usize) -> Result<()> {
    let line: Vec<u8> = (0..99)
        .map(|i| b'a' + (i % 26) as u8)
        .chain([b'\n'])
        .collect();
    let mut data = Vec::with_capacity(bytes);
    while data.len() < bytes {
        data.extend_from_slice(&line);
    }
    data.truncate(bytes);
    std::fs::write(path, data)?;
    crate::sshd::set_mode(path, 0o644)
}
