//! The browser of the screen benchmark: `bench/screen/driver.mjs` (playwright-core driving
//! Debian's headless Chromium), spoken to with one JSON command per line. See that file for the
//! commands; this side owns the process, the timeouts and the parsing. Each command carries an id
//! that its answer echoes: after a timeout, the late answer is skipped, not read as the next
//! command's. Chromium runs in process groups of its own (Playwright starts it detached):
//! stopping or dropping the browser ends the driver's whole process tree.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};

use crate::stacks::{Proc, log_tail};

/// What the page recorded between `start` and `stop` (times in ms on CLOCK_REALTIME).
#[derive(Debug, Deserialize)]
pub struct Recorded {
    /// Each change of the probe pixel: `[time, r, g, b]`.
    pub changes: Vec<[f64; 4]>,
    /// Animation frames whose sampled canvas rows differed from the previous frame's.
    pub frames: u64,
    /// Animation frames seen.
    pub ticks: u64,
    /// Bytes the page's WebSockets received (string messages: their length).
    pub bytes: u64,
    /// When each WebSocket message reached the page (the first 20,000).
    #[serde(default)]
    pub arrivals: Vec<f64>,
    pub t0: f64,
    pub t1: f64,
}

/// The driver process and its command channel.
pub struct Browser {
    proc: Proc,
    log: PathBuf,
    /// `None` once closed (stopping).
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    /// The id of the last command sent.
    next_id: u64,
}

/// How long any one command may take (opening a page waits for its screen, at most
/// `open_timeout`, plus this).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

impl Browser {
    /// Starts `node driver.mjs` from `screen_dir` (bench/screen, with `npm ci` done) and waits
    /// for its ready line.
    pub async fn start(screen_dir: &Path, dir: &Path) -> anyhow::Result<Self> {
        if !screen_dir.join("node_modules/playwright-core").is_dir() {
            bail!(
                "{} has no node_modules: run `npm ci` there",
                screen_dir.display()
            );
        }
        let log = dir.join("driver.log");
        let mut cmd = Command::new("node");
        cmd.arg(screen_dir.join("driver.mjs"))
            .current_dir(screen_dir);
        let mut proc = Proc::spawn_with_stdin("driver", &mut cmd, &log)?;
        let stdin = proc
            .child_mut()
            .stdin
            .take()
            .context("driver has no stdin")?;
        let stdout = proc
            .child_mut()
            .stdout
            .take()
            .context("driver has no stdout")?;
        let mut browser = Self {
            proc,
            log,
            stdin: Some(stdin),
            lines: BufReader::new(stdout).lines(),
            next_id: 0,
        };
        browser
            .answer(COMMAND_TIMEOUT)
            .await
            .context("starting Chromium (driver.mjs)")?;
        Ok(browser)
    }

    /// The driver's process id: Chromium's processes are its descendants.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Opens `url` in a fresh 1920x1080 page and waits until its screen shows pixels; returns
    /// how long that took, in ms.
    pub async fn open(
        &mut self,
        url: &str,
        probe: (u16, u16),
        timeout: Duration,
    ) -> anyhow::Result<f64> {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let v = self
            .call(
                json!({"cmd": "open", "url": url, "probe": [probe.0, probe.1], "timeout_ms": ms}),
                timeout + COMMAND_TIMEOUT,
            )
            .await?;
        Ok(v.get("setup_ms")
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN))
    }

    /// Starts the page's recording at `probe`.
    pub async fn start_recording(&mut self, probe: (u16, u16)) -> anyhow::Result<()> {
        self.call(
            json!({"cmd": "start", "probe": [probe.0, probe.1]}),
            COMMAND_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// Stops it and returns what it saw.
    pub async fn stop_recording(&mut self) -> anyhow::Result<Recorded> {
        let v = self.call(json!({"cmd": "stop"}), COMMAND_TIMEOUT).await?;
        serde_json::from_value(v).context("parsing the page's recording")
    }

    /// The page's clock now (ms), with the harness's clock before and after asking.
    pub async fn clock(&mut self) -> anyhow::Result<(f64, f64, f64)> {
        let before = super::display::realtime_ms();
        let v = self.call(json!({"cmd": "now"}), COMMAND_TIMEOUT).await?;
        let after = super::display::realtime_ms();
        let page = v.get("now").and_then(Value::as_f64).context("no time")?;
        Ok((before, page, after))
    }

    /// Closes the page (its WebSocket with it).
    pub async fn close_page(&mut self) -> anyhow::Result<()> {
        self.call(json!({"cmd": "close"}), COMMAND_TIMEOUT)
            .await
            .map(drop)
    }

    /// Closes Chromium (the driver exits when its stdin closes), then ends what is left of the
    /// driver's process tree.
    pub async fn stop(mut self) {
        let pid = self.proc.pid();
        // Closing stdin: the driver closes the browser and exits.
        drop(self.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.proc.child_mut().wait()).await;
        crate::reap::sweep_below(pid, Duration::from_secs(2)).await;
        self.proc.kill().await;
    }

    async fn call(&mut self, mut cmd: Value, timeout: Duration) -> anyhow::Result<Value> {
        self.next_id += 1;
        cmd["id"] = json!(self.next_id);
        let what = cmd
            .get("cmd")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin
            .as_mut()
            .context("the driver's input is closed")?
            .write_all(line.as_bytes())
            .await
            .context("writing to the driver")?;
        self.answer(timeout)
            .await
            .with_context(|| format!("the browser's {what:?} command"))
    }

    /// The answer to the last command (older answers, late after a timeout, are skipped).
    async fn answer(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let v = loop {
            let line = match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                Ok(Ok(Some(l))) => l,
                Ok(Ok(None)) => bail!(
                    "the driver exited; end of {}:\n{}",
                    self.log.display(),
                    log_tail(&self.log)
                ),
                Ok(Err(e)) => return Err(e).context("reading the driver"),
                Err(_) => bail!("the driver did not answer within {timeout:?}"),
            };
            let v: Value = serde_json::from_str(&line)
                .with_context(|| format!("the driver printed {line:?}"))?;
            match v.get("id").and_then(Value::as_u64) {
                Some(id) if id != self.next_id => continue,
                _ => break v,
            }
        };
        if v.get("ok").and_then(Value::as_bool) != Some(true) {
            bail!(
                "the driver failed: {}",
                v.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
            );
        }
        Ok(v)
    }
}

impl Drop for Browser {
    /// On an early return or an interrupted run: Chromium's processes are not in the driver's
    /// process group, so the whole tree is ended here (the group, by [`Proc`]'s own drop).
    fn drop(&mut self) {
        crate::reap::kill_below(self.proc.pid());
    }
}
