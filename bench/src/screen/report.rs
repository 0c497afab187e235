//! The screen benchmark's figures: pairing the square's changes with what the page saw, the
//! medians over runs, issue 17's targets with their verdicts, and the markdown section.

use std::fmt::Write as _;

use super::display::Toggle;
use super::{ScreenPlan, Stack, Workload};
use crate::measure::{median, percentile};

/// One stack, workload and run.
#[derive(Debug, Clone)]
pub struct Sample {
    pub stack: Stack,
    pub workload: Workload,
    /// X server change -> new colour on the canvas, ms, one per change seen.
    pub latencies: Vec<f64>,
    /// Changes the page never showed (within 3 s).
    pub missed: usize,
    /// Canvas updates per second (animation frames whose sampled rows changed).
    pub fps: f64,
    /// Animation frames per second (the page's own rate: the ceiling of `fps`).
    pub ticks_per_s: f64,
    /// Bytes per second the page's WebSocket received.
    pub bytes_per_s: f64,
    /// CPU of each server process tree, in cores (1.0 = one core busy).
    pub servers: Vec<(&'static str, f64)>,
    pub x11vnc: f64,
    /// Chromium's renderer processes, and all of Chromium's processes.
    pub renderer: f64,
    pub chromium: f64,
    /// Page opened -> the screen's first pixels, ms.
    pub open_ms: f64,
}

impl Sample {
    pub fn latency_p50(&self) -> Option<f64> {
        (!self.latencies.is_empty()).then(|| percentile(&self.latencies, 50.0))
    }

    pub fn server_total(&self) -> f64 {
        self.servers.iter().map(|s| s.1).sum()
    }
}

/// How far a canvas colour may be from the colour drawn, per channel (lossy encodings).
const TOLERANCE: f64 = 64.0;
/// A change not seen this long after the X server had it counts as missed.
const GIVE_UP_MS: f64 = 3000.0;

/// Pairs each toggle with the first later change of the probe pixel to its colour; returns the
/// latencies (ms) and how many toggles were never seen. A change is used once.
pub fn pair(toggles: &[Toggle], changes: &[[f64; 4]]) -> (Vec<f64>, usize) {
    let mut from = 0;
    let mut latencies = Vec::new();
    let mut missed = 0;
    for t in toggles {
        let want = [(t.rgb >> 16) & 0xff, (t.rgb >> 8) & 0xff, t.rgb & 0xff].map(f64::from);
        let found = changes[from..].iter().position(|c| {
            c[0] >= t.at_ms - 1.0
                && c[0] <= t.at_ms + GIVE_UP_MS
                && (0..3).all(|i| (c[i + 1] - want[i]).abs() <= TOLERANCE)
        });
        match found {
            Some(k) => {
                latencies.push(changes[from + k][0] - t.at_ms);
                from += k + 1;
            }
            None => missed += 1,
        }
    }
    (latencies, missed)
}

/// The medians of one stack and workload over its runs.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub runs: usize,
    pub latency_p50: Option<f64>,
    pub latency_p95: Option<f64>,
    pub changes: usize,
    pub missed: usize,
    pub fps: f64,
    pub ticks_per_s: f64,
    pub kbytes_per_s: f64,
    pub server: f64,
    pub servers: Vec<(&'static str, f64)>,
    pub x11vnc: f64,
    pub renderer: f64,
    pub chromium: f64,
    pub open_ms: f64,
}

pub fn summarize(samples: &[&Sample]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let all: Vec<f64> = samples
        .iter()
        .flat_map(|s| s.latencies.iter().copied())
        .collect();
    let m = |f: &dyn Fn(&Sample) -> f64| median(&samples.iter().map(|s| f(s)).collect::<Vec<_>>());
    let servers = samples[0]
        .servers
        .iter()
        .enumerate()
        .map(|(i, &(name, _))| (name, m(&|s| s.servers.get(i).map_or(0.0, |x| x.1))))
        .collect();
    Some(Summary {
        runs: samples.len(),
        latency_p50: (!all.is_empty()).then(|| percentile(&all, 50.0)),
        latency_p95: (!all.is_empty()).then(|| percentile(&all, 95.0)),
        changes: all.len(),
        missed: samples.iter().map(|s| s.missed).sum(),
        fps: m(&|s| s.fps),
        ticks_per_s: m(&|s| s.ticks_per_s),
        kbytes_per_s: m(&|s| s.bytes_per_s / 1000.0),
        server: m(&Sample::server_total),
        servers,
        x11vnc: m(&|s| s.x11vnc),
        renderer: m(&|s| s.renderer),
        chromium: m(&|s| s.chromium),
        open_ms: m(&|s| s.open_ms),
    })
}

/// What the section is made of.
pub struct Input<'a> {
    pub plan: &'a ScreenPlan,
    pub present: &'a [Stack],
    pub samples: &'a [Sample],
    /// Per page: the page clock minus the harness's (ms), and the bound of that estimate.
    pub skews: &'a [(f64, f64)],
    pub problems: &'a [String],
    pub guacd_version: Option<String>,
    /// `/proc/loadavg` when the benchmark started and when it ended.
    pub load: (String, String),
}

fn pct(cores: f64) -> String {
    format!("{:.1} %", cores * 100.0)
}

fn opt(v: Option<f64>) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.1}"))
}

/// One target: (a)'s figure against `factor` × the reference's; `higher` when more is better.
fn verdict(
    out: &mut String,
    what: &str,
    a: Option<f64>,
    r: Option<f64>,
    factor: f64,
    higher: bool,
    unit: &str,
) {
    let (Some(a), Some(r)) = (a, r) else {
        let _ = writeln!(
            out,
            "| {what} | {} | {} | – | not measured |",
            opt(a),
            opt(r)
        );
        return;
    };
    let ok = if higher {
        a >= factor * r
    } else {
        a <= factor * r
    };
    let ratio = if r.abs() > f64::EPSILON {
        format!("{:.2}×", a / r)
    } else {
        "–".to_owned()
    };
    let _ = writeln!(
        out,
        "| {what} | {a:.1}{unit} | {r:.1}{unit} | {ratio} | {} |",
        if ok { "**met**" } else { "**missed**" }
    );
}

pub fn markdown(input: &Input<'_>) -> String {
    let mut out = String::new();
    let plan = input.plan;
    let skew: Vec<f64> = input.skews.iter().map(|s| s.0).collect();
    let bound: Vec<f64> = input.skews.iter().map(|s| s.1).collect();
    let _ = writeln!(
        out,
        "Display Xvfb {}x{} 24-bit with x11vnc 0.9.16 (defaults, no password), one headless Chromium \
         (playwright-core, 1920x1080 viewport); {} runs × {:.0} s per stack and workload, stacks \
         rotated each run; cipher {}; guacd: {}. Page clock − harness clock: median {:.2} ms \
         (each estimate within ±{:.2} ms). Load average {} at the start, {} at the end.\n",
        super::display::WIDTH,
        super::display::HEIGHT,
        plan.runs,
        plan.window.as_secs_f64(),
        plan.cipher,
        input.guacd_version.as_deref().unwrap_or("not run"),
        if skew.is_empty() {
            f64::NAN
        } else {
            median(&skew)
        },
        if bound.is_empty() {
            f64::NAN
        } else {
            median(&bound)
        },
        input.load.0,
        input.load.1,
    );
    let mut summaries = Vec::new();
    for &w in &plan.workloads {
        let _ = writeln!(out, "### {}\n", w.describe());
        out.push_str(
            "| stack | update latency p50 / p95 (ms) | changes seen / missed | canvas updates/s | \
             KB/s to the browser | server CPU per session | of which | x11vnc CPU | renderer CPU | \
             all Chromium CPU | page open → pixels (ms) |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for &stack in input.present {
            let mine: Vec<&Sample> = input
                .samples
                .iter()
                .filter(|s| s.stack == stack && s.workload == w)
                .collect();
            let Some(s) = summarize(&mine) else {
                let _ = writeln!(
                    out,
                    "| {} | no run completed | | | | | | | | | |",
                    stack.label()
                );
                continue;
            };
            let parts: Vec<String> = s
                .servers
                .iter()
                .map(|(n, c)| format!("{n} {}", pct(*c)))
                .collect();
            let _ = writeln!(
                out,
                "| {} ({} runs) | {} / {} | {} / {} | {:.1} (of {:.0} frames/s) | {:.1} | {} | {} | {} | {} | {} | {:.0} |",
                stack.label(),
                s.runs,
                opt(s.latency_p50),
                opt(s.latency_p95),
                s.changes,
                s.missed,
                s.fps,
                s.ticks_per_s,
                s.kbytes_per_s,
                pct(s.server),
                parts.join(", "),
                pct(s.x11vnc),
                pct(s.renderer),
                pct(s.chromium),
                s.open_ms,
            );
            summaries.push((w, stack, s));
        }
        out.push('\n');
    }
    let get = |w: Workload, st: Stack| {
        summaries
            .iter()
            .find(|x| x.0 == w && x.1 == st)
            .map(|x| &x.2)
    };
    out.push_str("### Targets for (a) (issue 17)\n\n| target | (a) | reference | ratio | verdict |\n|---|---|---|---|---|\n");
    let (a, b, c) = (Stack::Passerelle, Stack::Websockify, Stack::Guacamole);
    for &w in &plan.workloads {
        let lat = |st| get(w, st).and_then(|s| s.latency_p50);
        let n = w.describe().split(' ').next().unwrap_or("");
        verdict(
            &mut out,
            &format!("{n} latency p50 ≤ 0.5 × (c)"),
            lat(a),
            lat(c),
            0.5,
            false,
            " ms",
        );
        verdict(
            &mut out,
            &format!("{n} latency p50 ≤ 1.0 × (b)"),
            lat(a),
            lat(b),
            1.0,
            false,
            " ms",
        );
        let cpu = |st| get(w, st).map(|s| s.server * 100.0);
        verdict(
            &mut out,
            &format!("{n} server CPU per session ≤ 0.2 × (c)"),
            cpu(a),
            cpu(c),
            0.2,
            false,
            " %",
        );
        if w == Workload::Video {
            let fps = |st| get(w, st).map(|s| s.fps);
            verdict(
                &mut out,
                &format!("{n} canvas updates/s ≥ (c)"),
                fps(a),
                fps(c),
                1.0,
                true,
                "",
            );
        }
    }
    out.push_str(
        "\nServer CPU: (a) the broker process; (b) sshd (its listener and the agent's connection \
         process) + websockify and its worker; (c) the same sshd + guacd (and its connection \
         process) + guacamole-lite (node). x11vnc and the OpenSSH agent are the workstation's, \
         the same for all three. Latency: from the moment the X server had the square's new \
         colour (a round trip on the harness's own X connection after drawing) to the first \
         animation frame in which the page read that colour from the canvas, both on \
         CLOCK_REALTIME; pooled over runs. Canvas updates/s: animation frames in which eight \
         sampled canvas rows changed (the page's frame rate caps it).\n",
    );
    if !input.problems.is_empty() {
        out.push_str("\n**Problems during the run:**\n\n");
        for p in input.problems {
            let _ = writeln!(out, "- {p}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toggles_pair_with_the_first_later_change_of_their_colour() {
        let toggles = [
            Toggle {
                at_ms: 1000.0,
                rgb: 0xff0000,
            },
            Toggle {
                at_ms: 1500.0,
                rgb: 0x00ff00,
            },
            Toggle {
                at_ms: 2000.0,
                rgb: 0x0000ff,
            },
        ];
        let changes = [
            [990.0, 128.0, 128.0, 128.0],
            // A lossy red.
            [1030.0, 240.0, 20.0, 10.0],
            [1560.0, 0.0, 250.0, 0.0],
            // The blue never arrives; a stale red does.
            [2100.0, 255.0, 0.0, 0.0],
        ];
        let (lat, missed) = pair(&toggles, &changes);
        assert_eq!(lat, vec![30.0, 60.0]);
        assert_eq!(missed, 1);
    }

    #[test]
    fn a_change_before_the_toggle_is_not_its_update() {
        let toggles = [Toggle {
            at_ms: 1000.0,
            rgb: 0xff0000,
        }];
        let (lat, missed) = pair(&toggles, &[[900.0, 255.0, 0.0, 0.0]]);
        assert!(lat.is_empty());
        assert_eq!(missed, 1);
    }
}
