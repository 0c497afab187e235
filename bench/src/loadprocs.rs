//! The idle-agent load generator spread over child processes: each child is this executable
//! run with `--loadgen-child ADDR,FIRST,COUNT` (the [`crate::loadgen`] generator for agents
//! `FIRST..FIRST+COUNT`, connecting to ADDR), so that no process holds more sockets than the
//! open-files limit allows (50,000 agents where a process may open 20,000 files).
//!
//! A child prints `online connects failures` every 100 ms and `error TEXT` when its latest
//! failure changes, on stdout; it stops its agents and exits when its stdin closes, so a parent
//! that dies takes its children with it. The parent sums the children's counts.

use std::net::SocketAddr;
use std::ops::Range;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

use crate::loadgen::{LoadConfig, LoadGen};

/// How a child's agents are made: the [`LoadConfig`] fields other than target and agents.
#[derive(Debug, Clone)]
pub struct ChildSettings {
    pub host_key: String,
    pub source_ips: u8,
    pub parallel_connects: usize,
    pub cipher: &'static str,
    pub kex: &'static str,
}

/// One child's latest counts.
#[derive(Default)]
struct Counts {
    online: AtomicUsize,
    connects: AtomicUsize,
    failures: AtomicUsize,
    last_error: std::sync::Mutex<Option<String>>,
    /// Its stdout closed: it exited (or crashed).
    ended: AtomicBool,
}

/// Running child generators; dropping it kills them.
pub struct LoadProcs {
    children: Vec<Child>,
    counts: Vec<Arc<Counts>>,
    readers: JoinSet<()>,
}

impl LoadProcs {
    /// Starts one child per `(target, agents)`.
    pub fn start(parts: &[(SocketAddr, Range<usize>)], s: &ChildSettings) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut procs = Self {
            children: Vec::new(),
            counts: Vec::new(),
            readers: JoinSet::new(),
        };
        for (target, agents) in parts {
            let mut child = Command::new(&exe)
                .arg("--loadgen-child")
                .arg(format!("{target},{},{}", agents.start, agents.len()))
                .args(["--loadgen-host-key", &s.host_key])
                .args(["--source-ips", &s.source_ips.to_string()])
                .args(["--parallel-connects", &s.parallel_connects.to_string()])
                .args(["--cipher", s.cipher, "--agent-kex", s.kex])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", exe.display()))?;
            let stdout = child.stdout.take().context("the child's stdout")?;
            let counts = Arc::new(Counts::default());
            procs.readers.spawn(read_counts(stdout, counts.clone()));
            procs.children.push(child);
            procs.counts.push(counts);
        }
        Ok(procs)
    }

    fn sum(&self, f: impl Fn(&Counts) -> &AtomicUsize) -> usize {
        (self.counts.iter())
            .map(|c| f(c).load(Ordering::Relaxed))
            .sum()
    }

    pub fn online(&self) -> usize {
        self.sum(|c| &c.online)
    }

    /// Connections established since the start, over the children.
    pub fn connects(&self) -> usize {
        self.sum(|c| &c.connects)
    }

    pub fn failures(&self) -> usize {
        self.sum(|c| &c.failures)
    }

    /// The latest failure a child reported (the first child's that has one).
    pub fn last_error(&self) -> Option<String> {
        (self.counts.iter()).find_map(|c| c.last_error.lock().ok().and_then(|e| e.clone()))
    }

    /// An error if a child has exited: they run until [`Self::stop`].
    pub fn check_alive(&self) -> anyhow::Result<()> {
        if let Some(i) = (self.counts.iter()).position(|c| c.ended.load(Ordering::Relaxed)) {
            bail!(
                "load generator process {} exited; its last error: {}",
                i + 1,
                self.counts[i]
                    .last_error
                    .lock()
                    .ok()
                    .and_then(|e| e.clone())
                    .unwrap_or_else(|| "none".to_owned())
            );
        }
        Ok(())
    }

    /// Closes every child's stdin (they disconnect their agents and exit), waiting at most 40 s
    /// before killing them.
    pub async fn stop(mut self) {
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(40), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        self.readers.abort_all();
    }
}

impl crate::loadgen::Online for LoadProcs {
    fn online(&self) -> usize {
        LoadProcs::online(self)
    }

    fn last_error(&self) -> Option<String> {
        LoadProcs::last_error(self)
    }

    fn alive(&self) -> bool {
        self.check_alive().is_ok()
    }
}

/// Reads a child's count lines into `counts` until it closes its stdout.
async fn read_counts(stdout: tokio::process::ChildStdout, counts: Arc<Counts>) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(e) = line.strip_prefix("error ") {
            if let Ok(mut last) = counts.last_error.lock() {
                *last = Some(e.to_owned());
            }
            continue;
        }
        let v: Vec<usize> = (line.split(' ')).filter_map(|v| v.parse().ok()).collect();
        if let [online, connects, failures] = v[..] {
            counts.online.store(online, Ordering::Relaxed);
            counts.connects.store(connects, Ordering::Relaxed);
            counts.failures.store(failures, Ordering::Relaxed);
        }
    }
    counts.online.store(0, Ordering::Relaxed);
    counts.ended.store(true, Ordering::Relaxed);
}

/// `ADDR,FIRST,COUNT`.
fn parse_spec(spec: &str) -> anyhow::Result<(SocketAddr, Range<usize>)> {
    let [addr, first, count] = spec.split(',').collect::<Vec<_>>()[..] else {
        bail!("--loadgen-child wants ADDR,FIRST,COUNT, not {spec:?}");
    };
    let first: usize = first.parse().context("FIRST")?;
    let count: usize = count.parse().context("COUNT")?;
    Ok((addr.parse().context("ADDR")?, first..first + count))
}

/// The child's side: runs agents `spec` names until stdin closes.
pub async fn child(spec: &str, s: ChildSettings) -> anyhow::Result<()> {
    let (target, agents) = parse_spec(spec)?;
    let host_key =
        russh::keys::PublicKey::from_openssh(&s.host_key).context("--loadgen-host-key")?;
    let load = LoadGen::start(LoadConfig {
        target,
        host_key,
        agents,
        source_ips: s.source_ips,
        parallel_connects: s.parallel_connects,
        cipher: s.cipher,
        kex: s.kex,
    })?;
    let mut stdin = tokio::io::stdin();
    let eof = async {
        let mut buf = [0u8; 64];
        while let Ok(1..) = stdin.read(&mut buf).await {}
    };
    tokio::pin!(eof);
    let mut out = tokio::io::stdout();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut reported: Option<String> = None;
    loop {
        tokio::select! {
            () = &mut eof => break,
            _ = tick.tick() => {}
        }
        let mut msg = String::new();
        let last = load.last_error();
        if last.is_some() && last != reported {
            // One line: the parent reads line by line.
            let text = last.as_deref().unwrap_or_default().replace('\n', " ");
            msg.push_str(&format!("error {text}\n"));
            reported = last;
        }
        msg.push_str(&format!(
            "{} {} {}\n",
            load.online(),
            load.connects(),
            load.failures()
        ));
        if out.write_all(msg.as_bytes()).await.is_err() || out.flush().await.is_err() {
            break;
        }
    }
    load.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_spec;

    #[test]
    fn child_specs_are_parsed() {
        let (addr, range) = parse_spec("127.0.0.1:2222,100,50").expect("parsed");
        assert_eq!(addr.port(), 2222);
        assert_eq!(range, 100..150);
        assert!(parse_spec("127.0.0.1:2222,100").is_err());
        assert!(parse_spec("nowhere,1,2").is_err());
    }
}
