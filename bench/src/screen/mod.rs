//! The operator's screen (issue 17): the same x11vnc + Xvfb 1920x1080 display seen through three
//! stacks by one headless Chromium, in one run — (a) the broker's noVNC page with a stock OpenSSH
//! agent, (b) noVNC + websockify in front of sshd's `ssh -R` forwarded port, (c) Apache Guacamole
//! (guacd + guacamole-lite, guacamole-common-js in the page) in front of the same port.
//!
//! Per workload ([`Workload`]), run and stack: a fresh page, a settle second, then a window of
//! `secs` seconds in which the harness toggles a coloured square at random moments (timestamped
//! right after the X server has each change) while the page records, on every animation frame,
//! when the square's new colour reached the canvas, how often the canvas changed, and the bytes
//! its WebSocket received; `/proc` gives the CPU of each stack's server processes, of x11vnc and
//! of Chromium. Stacks take turns within each run (rotated from run to run).

mod browser;
mod display;
mod guac;
mod profile;
mod report;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

use crate::host::{cmdline_has, subtree_ticks, tick_secs};
use crate::stacks::openssh::Baseline;
use crate::stacks::passerelle::{BrokerCmd, PasserelleStack};
use crate::stacks::{Proc, wait_for};
use browser::{Browser, Recorded};
use display::{Square, Toggle, Workstation};
pub use report::Sample;

/// What is on the workstation's screen while a stack is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// The square alone on a still desktop: single small changes.
    Square,
    /// A full-screen 30 fps video (ffmpeg's `testsrc`), the square on top.
    Video,
    /// A terminal scrolling a text flood, the square on top.
    Terminal,
}

impl Workload {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "square" => Some(Self::Square),
            "video" => Some(Self::Video),
            "terminal" => Some(Self::Terminal),
            _ => None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Square => "(1) a coloured square toggled at random moments",
            Self::Video => "(2) full-screen moving picture, 30 fps (ffplay testsrc)",
            Self::Terminal => "(3) scrolling terminal (xterm, 5,000 lines/s)",
        }
    }
}

/// The screen benchmark's knobs.
#[derive(Debug, Clone)]
pub struct ScreenPlan {
    pub runs: usize,
    /// The measuring window of one stack, workload and run.
    pub window: Duration,
    pub workloads: Vec<Workload>,
    /// guacd for stack (c); `None`: stack (c) is skipped (the reason is in `guacd_missing`).
    pub guacd: Option<PathBuf>,
    /// bench/screen (the Node side, with `npm ci` done).
    pub screen_dir: PathBuf,
    pub cipher: &'static str,
    pub agent_options: Vec<String>,
    /// After each workload's runs, one more window per stack with `perf record` on its server
    /// processes (not counted in the figures); the reports go here.
    pub perf: Option<PathBuf>,
}

/// The three stacks (those that started).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    Passerelle,
    Websockify,
    Guacamole,
}

impl Stack {
    pub fn label(self) -> &'static str {
        match self {
            Self::Passerelle => "(a) passerelle",
            Self::Websockify => "(b) noVNC + websockify",
            Self::Guacamole => "(c) guacd + guacamole-lite",
        }
    }
}

/// Running stacks and the processes whose CPU is measured.
struct Stacks {
    passerelle: Option<PasserelleStack>,
    baseline: Option<Baseline>,
    guac: Option<guac::Guacamole>,
}

impl Stacks {
    fn present(&self) -> Vec<Stack> {
        let mut out = Vec::new();
        if self.passerelle.is_some() {
            out.push(Stack::Passerelle);
        }
        if self.baseline.is_some() {
            out.push(Stack::Websockify);
        }
        if self.guac.is_some() {
            out.push(Stack::Guacamole);
        }
        out
    }

    /// The page URL of a new session on `stack`.
    async fn url(&self, stack: Stack) -> anyhow::Result<String> {
        match stack {
            Stack::Passerelle => {
                let p = self.passerelle.as_ref().context("no stack (a)")?;
                Ok(p.api.create_session(&p.agent_id).await?.viewer_url)
            }
            Stack::Websockify => {
                let b = self.baseline.as_ref().context("no stack (b)")?;
                Ok(format!(
                    "http://screen.bench/novnc.html#ws={}",
                    guac::url_escape(&b.ws_url)
                ))
            }
            Stack::Guacamole => Ok(self.guac.as_ref().context("no stack (c)")?.page_url()),
        }
    }

    /// The server processes of `stack`, by name, each a process tree.
    fn servers(&self, stack: Stack) -> Vec<(&'static str, u32)> {
        let sshd = self.baseline.as_ref().map(|b| ("sshd", b.sshd_pid()));
        match stack {
            Stack::Passerelle => self
                .passerelle
                .iter()
                .map(|p| ("broker", p.broker.pid()))
                .collect(),
            Stack::Websockify => sshd
                .into_iter()
                .chain(
                    self.baseline
                        .as_ref()
                        .map(|b| ("websockify", b.websockify_pid())),
                )
                .collect(),
            Stack::Guacamole => sshd
                .into_iter()
                .chain(
                    self.guac
                        .iter()
                        .flat_map(|g| [("guacd", g.guacd_pid()), ("guacamole-lite", g.lite_pid())]),
                )
                .collect(),
        }
    }
}

/// CPU ticks of the processes a sample looks at.
struct Ticks {
    servers: Vec<(&'static str, u64)>,
    x11vnc: u64,
    renderer: u64,
    chromium: u64,
}

fn ticks(servers: &[(&'static str, u32)], x11vnc: u32, driver: u32) -> Ticks {
    Ticks {
        servers: servers
            .iter()
            .map(|&(name, pid)| (name, subtree_ticks(pid, |_| true)))
            .collect(),
        x11vnc: subtree_ticks(x11vnc, |_| true),
        renderer: subtree_ticks(driver, |p| cmdline_has(p, "--type=renderer")),
        chromium: subtree_ticks(driver, |p| p != driver),
    }
}

/// Runs the screen benchmark; returns the markdown section (without its title).
pub async fn run(plan: &ScreenPlan, broker: &BrokerCmd, dir: &Path) -> anyhow::Result<String> {
    let mut problems = Vec::new();
    let load_start = crate::host::load_average();
    let mut ws = Workstation::start(dir).await?;
    let display = ws.display.clone();
    let square = tokio::task::spawn_blocking(move || Square::create(&display)).await??;
    let square = Arc::new(Mutex::new(square));

    let passerelle = if broker.bin.exists() {
        PasserelleStack::start(broker, dir, ws.vnc, plan.cipher, &plan.agent_options, 0)
            .await
            .map_err(|e| problems.push(format!("stack (a) did not start: {e:#}")))
            .ok()
    } else {
        problems.push(format!(
            "{} not found: stack (a) skipped",
            broker.bin.display()
        ));
        None
    };
    let baseline = Baseline::start(dir, ws.vnc, plan.cipher, &plan.agent_options, 0)
        .await
        .map_err(|e| problems.push(format!("stack (b) did not start: {e:#}")))
        .ok();
    let mut guacd_version = None;
    let guac = match (&plan.guacd, &baseline) {
        (Some(bin), Some(b)) => {
            let size = (display::WIDTH, display::HEIGHT);
            match guac::Guacamole::start(bin, &plan.screen_dir, dir, b.forwarded, size).await {
                Ok(g) => {
                    guacd_version = Some(g.version.clone());
                    Some(g)
                }
                Err(e) => {
                    problems.push(format!("stack (c) did not start: {e:#}"));
                    None
                }
            }
        }
        (None, _) => {
            problems.push(
                "no guacd (build it with bench/guacd/build.sh, pass --guacd): stack (c) skipped"
                    .to_owned(),
            );
            None
        }
        (Some(_), None) => None,
    };
    let stacks = Stacks {
        passerelle,
        baseline,
        guac,
    };
    let present = stacks.present();
    let mut browser = Browser::start(&plan.screen_dir, dir).await?;
    let mut samples: Vec<Sample> = Vec::new();
    let mut skews = Vec::new();

    for &workload in &plan.workloads {
        println!("screen: workload {}", workload.describe());
        let sq = square.clone();
        let windows = tokio::task::spawn_blocking(move || with(&sq, |s| s.windows())).await??;
        let mut program: Option<Proc> = match workload {
            Workload::Square => None,
            Workload::Video => Some(display::start_video(dir, &ws.display)?),
            Workload::Terminal => Some(display::start_terminal(dir, &ws.display)?),
        };
        if let Some(p) = program.as_mut() {
            // Wait for the program's window, then put the square back on top of it.
            wait_for(
                "the workload's window",
                Duration::from_secs(15),
                async || {
                    p.check_alive()?;
                    let sq = square.clone();
                    let now =
                        tokio::task::spawn_blocking(move || with(&sq, |s| s.windows())).await??;
                    Ok((now > windows).then_some(()))
                },
            )
            .await?;
            let sq = square.clone();
            tokio::task::spawn_blocking(move || with(&sq, |s| s.raise())).await??;
        }
        for run in 0..plan.runs {
            let n = present.len().max(1);
            for i in 0..present.len() {
                let stack = present[(i + run) % n];
                if let Some(p) = program.as_mut() {
                    p.check_alive()?;
                }
                ws.check_alive()?;
                let outcome = measure(
                    plan,
                    &stacks,
                    stack,
                    workload,
                    &mut browser,
                    &square,
                    ws.x11vnc_pid(),
                    None,
                )
                .await;
                match outcome {
                    Ok((s, skew)) => {
                        println!(
                            "  run {run} {}: latency p50 {:.1} ms ({} changes), {:.1} updates/s, {:.0} KB/s",
                            stack.label(),
                            s.latency_p50().unwrap_or(f64::NAN),
                            s.latencies.len(),
                            s.fps,
                            s.bytes_per_s / 1000.0
                        );
                        skews.push(skew);
                        samples.push(s);
                    }
                    Err(e) => {
                        let _ = browser.close_page().await;
                        problems.push(format!("{} {workload:?} run {run}: {e:#}", stack.label()));
                    }
                }
            }
        }
        if let Some(perf) = &plan.perf {
            for &stack in &present {
                let out = perf.join(format!("{workload:?}-{}", stack_file(stack)));
                let profiled = measure(
                    plan,
                    &stacks,
                    stack,
                    workload,
                    &mut browser,
                    &square,
                    ws.x11vnc_pid(),
                    Some(&out),
                )
                .await;
                if let Err(e) = profiled {
                    let _ = browser.close_page().await;
                    problems.push(format!("profiling {} {workload:?}: {e:#}", stack.label()));
                }
            }
        }
        if let Some(mut p) = program.take() {
            p.kill().await;
        }
    }
    browser.stop().await;
    if let Some(p) = &stacks.passerelle
        && let Some(l) = p.log_summary()
    {
        problems.push(format!("(a): the broker logged {l}"));
    }
    if let Some(g) = stacks.guac {
        g.stop().await;
    }
    if let Some(p) = stacks.passerelle {
        p.stop().await;
    }
    if let Some(b) = stacks.baseline {
        b.stop().await;
    }
    ws.stop().await;
    Ok(report::markdown(&report::Input {
        plan,
        present: &present,
        samples: &samples,
        skews: &skews,
        problems: &problems,
        guacd_version,
        load: (load_start, crate::host::load_average()),
    }))
}

/// The square, locked (from a blocking thread: its X connection blocks).
fn with<T>(
    square: &Mutex<Square>,
    f: impl FnOnce(&mut Square) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut s = square
        .lock()
        .map_err(|_| anyhow::anyhow!("the square's thread failed earlier"))?;
    f(&mut s)
}

fn stack_file(stack: Stack) -> &'static str {
    match stack {
        Stack::Passerelle => "a-passerelle",
        Stack::Websockify => "b-websockify",
        Stack::Guacamole => "c-guacamole",
    }
}

/// One stack, workload and run: open a page, settle, record a window, close. With `perf`, the
/// stack's server processes are profiled during the window into `perf.data` and `perf.txt`
/// (`perf report`, by process and symbol).
#[expect(
    clippy::too_many_arguments,
    reason = "one call site per mode, all state passed in"
)]
async fn measure(
    plan: &ScreenPlan,
    stacks: &Stacks,
    stack: Stack,
    workload: Workload,
    browser: &mut Browser,
    square: &Arc<Mutex<Square>>,
    x11vnc: u32,
    perf: Option<&Path>,
) -> anyhow::Result<(Sample, (f64, f64))> {
    let probe = display::probe();
    let opened: (f64, (f64, f64)) = async {
        let url = stacks.url(stack).await?;
        let open_ms = browser.open(&url, probe, Duration::from_secs(30)).await?;
        let (before, page, after) = browser.clock().await?;
        // Skew of the page's clock against ours, and the bound of that estimate.
        let skew = (page - (before + after) / 2.0, (after - before) / 2.0);
        // The first full-screen update is not part of the window.
        tokio::time::sleep(Duration::from_secs(1)).await;
        anyhow::Ok((open_ms, skew))
    }
    .await?;
    let (open_ms, skew) = opened;
    // The video's or terminal's window may have been raised meanwhile.
    let sq = square.clone();
    tokio::task::spawn_blocking(move || with(&sq, |s| s.raise())).await??;
    let servers = stacks.servers(stack);
    let driver = browser.pid();
    browser.start_recording(probe).await?;
    let profiler = match perf {
        Some(out) => Some(profile::start(out, &servers, plan.window)?),
        None => None,
    };
    let before = ticks(&servers, x11vnc, driver);
    let ticked = std::time::Instant::now();
    let window = plan.window;
    let sq = square.clone();
    let toggled = tokio::task::spawn_blocking(move || with(&sq, |s| s.toggle_for(window))).await;
    let after = ticks(&servers, x11vnc, driver);
    let cpu_secs = ticked.elapsed().as_secs_f64();
    let recorded = browser.stop_recording().await;
    let closed = browser.close_page().await;
    if let (Some(p), Some(out)) = (profiler, perf) {
        profile::finish(p, out).await?;
    }
    let toggles = toggled.context("the square's thread failed")??;
    let recorded = recorded?;
    closed?;
    Ok((
        sample(
            stack,
            workload,
            &toggles,
            &recorded,
            (&before, &after, cpu_secs),
            open_ms,
        ),
        skew,
    ))
}

fn sample(
    stack: Stack,
    workload: Workload,
    toggles: &[Toggle],
    rec: &Recorded,
    (before, after, cpu_secs): (&Ticks, &Ticks, f64),
    open_ms: f64,
) -> Sample {
    let secs = ((rec.t1 - rec.t0) / 1000.0).max(1e-3);
    let cpu = |a: u64, b: u64| a.saturating_sub(b) as f64 * tick_secs() / cpu_secs.max(1e-3);
    let (latencies, missed) = report::pair(toggles, &rec.changes);
    Sample {
        stack,
        workload,
        latencies,
        missed,
        fps: rec.frames as f64 / secs,
        ticks_per_s: rec.ticks as f64 / secs,
        bytes_per_s: rec.bytes as f64 / secs,
        servers: after
            .servers
            .iter()
            .zip(&before.servers)
            .map(|(&(name, a), &(_, b))| (name, cpu(a, b)))
            .collect(),
        x11vnc: cpu(after.x11vnc, before.x11vnc),
        renderer: cpu(after.renderer, before.renderer),
        chromium: cpu(after.chromium, before.chromium),
        open_ms,
    }
}
