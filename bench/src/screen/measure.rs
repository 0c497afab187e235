//! The measuring loop: workloads × runs × stacks (stacks rotated from run to run), and one
//! measurement — open the stack's page and wait for its screen, THEN start the workload's program
//! (so that its first full-screen update does not race the page's connection), put the square on
//! top, settle, record a window while the harness toggles the square, stop the program, close
//! the page. A failed measurement is printed at once, noted, and the browser restarted; the loop
//! goes on with the next one. Each workload starts with one warm-up measurement, not counted.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

use super::browser::{Browser, Recorded};
use super::display::{self, Square, Toggle, Workstation};
use super::probe::Probe;
use super::report::{self, Sample};
use super::setup::Stacks;
use super::{ScreenPlan, Stack, Workload, profile, progress};
use crate::host::{cmdline_has, subtree_ticks, tick_secs};
use crate::stacks::{Proc, wait_for};

/// How long a page may take to show the remote screen.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the workload's program may take to map its window.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(15);
/// Discarded between the program's start (or the page's first screen) and the window: the first
/// full-screen updates are not part of the figures.
const SETTLE: Duration = Duration::from_secs(1);

/// What every measurement shares.
pub struct Bench<'a> {
    pub plan: &'a ScreenPlan,
    pub stacks: &'a Stacks,
    pub ws: &'a mut Workstation,
    pub square: Arc<Mutex<Square>>,
    pub probe: &'a Probe,
    pub dir: &'a Path,
}

/// What the loop gathered.
#[derive(Default)]
pub struct Gathered {
    pub samples: Vec<Sample>,
    /// Per page: the page clock minus the harness's (ms), and the bound of that estimate.
    pub skews: Vec<(f64, f64)>,
    pub problems: Vec<String>,
}

/// Runs every measurement of the plan; fails only if the workstation itself is gone.
pub async fn all(
    bench: &mut Bench<'_>,
    present: &[Stack],
    out: &mut Gathered,
) -> anyhow::Result<()> {
    let plan = bench.plan;
    let mut browser: Option<Browser> = None;
    let total = plan.workloads.len() * plan.runs * present.len();
    let mut done = 0;
    for &workload in &plan.workloads {
        progress::step(&format!("workload {}", workload.describe()));
        // The first measurement of a workload met a cold x11vnc (its first full-screen changes,
        // its "bogging down" detection) and a cold ffplay: in three runs on a loaded machine it
        // was always the worst of its stack, and the rotation gives it to (a) every time. One
        // measurement before the runs, not counted, takes it.
        if let Some(&first) = present.first() {
            let tag = format!("{workload:?} warm-up (not counted) {}", first.label());
            let b = ready(&mut browser, plan, bench.dir).await?;
            match one(bench, b, first, workload, None, &tag).await {
                Ok((s, _)) => progress::step(&format!("{tag}: {}", s.one_line())),
                Err(e) => {
                    let p = format!("warm-up {} {workload:?}: {e:#}", first.label());
                    progress::error(&p);
                    out.problems.push(p);
                    if let Some(b) = browser.take() {
                        b.stop().await;
                    }
                }
            }
        }
        for run in 0..plan.runs {
            for i in 0..present.len() {
                let stack = present[(i + run) % present.len()];
                done += 1;
                let tag = format!(
                    "[{done}/{total}] {workload:?} run {}/{} {}",
                    run + 1,
                    plan.runs,
                    stack.label()
                );
                bench.ws.check_alive()?;
                let b = ready(&mut browser, plan, bench.dir).await?;
                progress::step(&format!("{tag}: load {}", crate::host::load_average()));
                match one(bench, b, stack, workload, None, &tag).await {
                    Ok((s, skew)) => {
                        progress::step(&format!("{tag}: {}", s.one_line()));
                        out.skews.push(skew);
                        out.samples.push(s);
                    }
                    Err(e) => {
                        let p = format!("{} {workload:?} run {}: {e:#}", stack.label(), run + 1);
                        progress::error(&p);
                        out.problems.push(p);
                        // A clean browser for the next measurement.
                        if let Some(b) = browser.take() {
                            b.stop().await;
                        }
                    }
                }
            }
        }
        if let Some(perf) = &plan.perf {
            for &stack in present {
                let dest = perf.join(format!("{workload:?}-{}", stack.file_name()));
                let tag = format!("{workload:?} profile {}", stack.label());
                let b = ready(&mut browser, plan, bench.dir).await?;
                if let Err(e) = one(bench, b, stack, workload, Some(&dest), &tag).await {
                    let p = format!("profiling {} {workload:?}: {e:#}", stack.label());
                    progress::error(&p);
                    out.problems.push(p);
                    if let Some(b) = browser.take() {
                        b.stop().await;
                    }
                } else {
                    progress::step(&format!("{tag}: written to {}", dest.display()));
                }
            }
        }
    }
    if let Some(b) = browser.take() {
        b.stop().await;
    }
    Ok(())
}

/// The browser, started if there is none (the first time, or after a failed measurement).
async fn ready<'b>(
    browser: &'b mut Option<Browser>,
    plan: &ScreenPlan,
    dir: &Path,
) -> anyhow::Result<&'b mut Browser> {
    if browser.is_none() {
        let b = Browser::start(&plan.screen_dir, dir)
            .await
            .context("starting the browser")?;
        *browser = Some(b);
    }
    browser.as_mut().context("no browser")
}

/// The square, locked, on a blocking thread (its X connection blocks).
pub async fn with_square<T: Send + 'static>(
    square: &Arc<Mutex<Square>>,
    f: impl FnOnce(&mut Square) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let sq = square.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = sq
            .lock()
            .map_err(|_| anyhow::anyhow!("the square's thread failed earlier"))?;
        f(&mut s)
    })
    .await
    .context("the square's thread panicked")?
}

/// The program drawing `workload` on the display, started once its window is up.
async fn start_program(bench: &Bench<'_>, workload: Workload) -> anyhow::Result<Option<Proc>> {
    type Start = fn(&Path, &str) -> anyhow::Result<Proc>;
    let (name, start): (&str, Start) = match workload {
        Workload::Square => return Ok(None),
        Workload::Video => ("ffplay", display::start_video),
        Workload::Terminal => ("xterm", display::start_terminal),
    };
    let before = with_square(&bench.square, |s| s.windows()).await?;
    let mut p = start(bench.dir, &bench.ws.display)?;
    wait_for(
        &format!("{name}'s window to appear on the display"),
        PROGRAM_TIMEOUT,
        async || {
            p.check_alive()?;
            let now = with_square(&bench.square, |s| s.windows()).await?;
            Ok((now > before).then_some(()))
        },
    )
    .await?;
    Ok(Some(p))
}

/// One stack, workload and run. With `perf`, the stack's server processes are profiled during
/// the window into `perf.data` and `perf.txt` (`perf report`, by process and symbol).
async fn one(
    bench: &mut Bench<'_>,
    browser: &mut Browser,
    stack: Stack,
    workload: Workload,
    perf: Option<&Path>,
    tag: &str,
) -> anyhow::Result<(Sample, (f64, f64))> {
    let probe = display::probe();
    let url = bench.stacks.url(stack).await?;
    let open_ms = browser.open(&url, probe, OPEN_TIMEOUT).await?;
    let (before, page, after) = browser.clock().await?;
    // Skew of the page's clock against ours, and the bound of that estimate.
    let skew = (page - (before + after) / 2.0, (after - before) / 2.0);
    progress::step(&format!("{tag}: page up in {open_ms:.0} ms"));
    let mut program = start_program(bench, workload).await?;
    // The program's window covers the square: put it back on top.
    with_square(&bench.square, |s| s.raise()).await?;
    tokio::time::sleep(SETTLE).await;
    let servers = bench.stacks.servers(stack);
    let driver = browser.pid();
    browser.start_recording(probe).await?;
    let profiler = match perf {
        Some(out) => Some(profile::start(out, &servers, bench.plan.window)?),
        None => None,
    };
    progress::step(&format!(
        "{tag}: recording {:.0} s",
        bench.plan.window.as_secs_f64()
    ));
    let x11vnc = bench.ws.x11vnc_pid();
    let before = ticks(&servers, x11vnc, driver);
    let ticked = std::time::Instant::now();
    let window = bench.plan.window;
    let toggled = with_square(&bench.square, move |s| s.toggle_for(window)).await;
    let after = ticks(&servers, x11vnc, driver);
    let cpu_secs = ticked.elapsed().as_secs_f64();
    let recorded = browser.stop_recording().await;
    let alive = match program.as_mut() {
        Some(p) => p.check_alive(),
        None => Ok(()),
    };
    if let Some(mut p) = program.take() {
        p.kill().await;
    }
    let closed = browser.close_page().await;
    if let (Some(p), Some(out)) = (profiler, perf) {
        profile::finish(p, out).await?;
    }
    let toggles = toggled?;
    let recorded = recorded?;
    alive.context("the workload's program died during the window")?;
    closed?;
    let direct = bench
        .probe
        .between(recorded.t0 - 1.0, recorded.t1 + 3000.0)?;
    Ok((
        sample(
            stack,
            workload,
            &toggles,
            &recorded,
            &direct,
            (&before, &after, cpu_secs),
            open_ms,
        ),
        skew,
    ))
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

fn sample(
    stack: Stack,
    workload: Workload,
    toggles: &[Toggle],
    rec: &Recorded,
    direct: &[[f64; 4]],
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
        stages: report::stages(toggles, &rec.changes, direct, &rec.arrivals),
        after_x11vnc: report::after_x11vnc(toggles, &rec.changes, direct),
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
