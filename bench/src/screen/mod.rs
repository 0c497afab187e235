//! The operator's screen (issue 17): the same x11vnc + Xvfb 1920x1080 display seen through three
//! stacks by one headless Chromium, in one run — (a) the broker's noVNC page with a stock OpenSSH
//! agent, (b) noVNC + websockify in front of sshd's `ssh -R` forwarded port, (c) Apache Guacamole
//! (guacd + guacamole-lite, guacamole-common-js in the page) in front of the same port.
//!
//! Per workload ([`Workload`]), run and stack ([`measure`]): a fresh page, its screen up, the
//! workload's program started, a settle second, then a window of `secs` seconds in which the
//! harness toggles a coloured square at random moments (timestamped right after the X server has
//! each change) while the page records, on every animation frame, when the square's new colour
//! reached the canvas, how often the canvas changed, and the bytes and arrival times of its
//! WebSocket messages; a direct RFB client on x11vnc ([`probe`]) notes when x11vnc sent each
//! change; `/proc` gives the CPU of each stack's server processes, of x11vnc and of Chromium.
//! Stacks take turns within each run (rotated from run to run).
//!
//! Progress and errors are printed as they happen ([`progress`]); every process started ends
//! with the run, on success, error, Ctrl-C or SIGTERM ([`reap`]).

mod browser;
mod display;
mod guac;
mod markdown;
mod measure;
mod probe;
mod profile;
mod progress;
mod report;
mod setup;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

use crate::stacks::passerelle::BrokerCmd;
use display::{Square, Workstation};

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
    /// More x11vnc options (e.g. `-defer 5 -wait 5`), for every stack alike: the workstation's
    /// VNC server is the same for all three.
    pub x11vnc_args: Vec<String>,
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

    /// For file names (profiles).
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Passerelle => "a-passerelle",
            Self::Websockify => "b-websockify",
            Self::Guacamole => "c-guacamole",
        }
    }
}

/// Runs the screen benchmark; returns the markdown section (without its title). On SIGINT or
/// SIGTERM, `main` drops the run and ends every process it started (crate::reap).
pub async fn run(plan: &ScreenPlan, broker: &BrokerCmd, dir: &Path) -> anyhow::Result<String> {
    progress::begin();
    let outcome = run_stacks(plan, broker, dir).await;
    if let Err(e) = &outcome {
        progress::error(&format!("{e:#}"));
    }
    outcome
}

async fn run_stacks(plan: &ScreenPlan, broker: &BrokerCmd, dir: &Path) -> anyhow::Result<String> {
    let load_start = crate::host::load_average();
    progress::step(&format!(
        "starting Xvfb {}x{} and x11vnc{}{}",
        display::WIDTH,
        display::HEIGHT,
        if plan.x11vnc_args.is_empty() { "" } else { " " },
        plan.x11vnc_args.join(" ")
    ));
    let mut ws = Workstation::start(dir, &plan.x11vnc_args).await?;
    let display = ws.display.clone();
    let square = tokio::task::spawn_blocking(move || Square::create(&display)).await??;
    let square = Arc::new(Mutex::new(square));
    let probe = probe::Probe::start(ws.vnc, display::square_rect(), display::probe())
        .await
        .context("the direct RFB client on x11vnc")?;
    let mut gathered = measure::Gathered::default();
    let stacks = setup::Stacks::start(plan, broker, dir, ws.vnc, &mut gathered.problems).await;
    let present = stacks.present();
    let mut bench = measure::Bench {
        plan,
        stacks: &stacks,
        ws: &mut ws,
        square,
        probe: &probe,
        dir,
    };
    let measured = measure::all(&mut bench, &present, &mut gathered).await;
    progress::step("stopping the stacks");
    if let Some(l) = stacks.broker_log() {
        gathered
            .problems
            .push(format!("(a): the broker logged {l}"));
    }
    let guacd_version = stacks.guacd_version.clone();
    stacks.stop().await;
    probe.stop().await;
    ws.stop().await;
    measured?;
    Ok(markdown::markdown(&markdown::Input {
        plan,
        present: &present,
        samples: &gathered.samples,
        skews: &gathered.skews,
        problems: &gathered.problems,
        guacd_version,
        load: (load_start, crate::host::load_average()),
    }))
}
