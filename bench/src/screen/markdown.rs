//! The screen benchmark's markdown section: settings, one table per workload (medians over
//! runs), where the time of a small change goes (x11vnc, tunnel, page), and issue 17's targets
//! for stack (a) with their verdicts.

use std::fmt::Write as _;

use super::report::{Sample, Summary, summarize};
use super::{ScreenPlan, Stack, Workload};
use crate::measure::median;

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
        "Display Xvfb {}x{} 24-bit with x11vnc 0.9.16 ({}, no password), one headless Chromium \
         (playwright-core, 1920x1080 viewport); {} runs × {:.0} s per stack and workload, stacks \
         rotated each run; cipher {}; guacd: {}. Page clock − harness clock: median {:.2} ms \
         (each estimate within ±{:.2} ms). Load average {} at the start, {} at the end.\n",
        super::display::WIDTH,
        super::display::HEIGHT,
        if plan.x11vnc_args.is_empty() {
            "defaults".to_owned()
        } else {
            format!(
                "defaults + `{}`, for all stacks",
                plan.x11vnc_args.join(" ")
            )
        },
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
            "| stack | update latency p50 / p95 (ms; p50 of each run) | changes seen / missed | canvas updates/s | \
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
                "| {} ({} runs) | {} / {} ({}) | {} / {} | {:.1} (of {:.0} frames/s) | {:.1} | {} | {} | {} | {} | {} | {:.0} |",
                stack.label(),
                s.runs,
                opt(s.latency_p50),
                opt(s.latency_p95),
                s.run_p50s
                    .iter()
                    .map(|v| format!("{v:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
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
    stages_table(&mut out, input.present, &summaries);
    own_share_table(&mut out, plan, input.present, &summaries);
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
        // /proc counts CPU in ticks: one tick per window is this many % of a core.
        let tick_pct = 100.0 * crate::host::tick_secs() / plan.window.as_secs_f64();
        match (cpu(a), cpu(c)) {
            (Some(x), Some(r)) if x.max(r) < 5.0 * tick_pct => {
                let _ = writeln!(
                    out,
                    "| {n} server CPU per session ≤ 0.2 × (c) | {x:.1} % | {r:.1} % | – | not \
                     measurable: both under 5 ticks of /proc per window ({:.1} %) |",
                    5.0 * tick_pct
                );
            }
            (x, r) => verdict(
                &mut out,
                &format!("{n} server CPU per session ≤ 0.2 × (c)"),
                x,
                r,
                0.2,
                false,
                " %",
            ),
        }
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
        "\nNo target, for the record (medians; (a) / (b) / (c)):\n\n| workload | KB/s to the browser | \
         renderer CPU | all Chromium CPU |\n|---|---|---|---|\n",
    );
    for &w in &plan.workloads {
        let three = |f: &dyn Fn(&Summary) -> String| {
            [a, b, c]
                .map(|st| get(w, st).map_or("–".to_owned(), f))
                .join(" / ")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            w.describe().split(' ').next().unwrap_or(""),
            three(&|s| format!("{:.0}", s.kbytes_per_s)),
            three(&|s| pct(s.renderer)),
            three(&|s| pct(s.chromium)),
        );
    }
    out.push_str(
        "\nServer CPU: (a) the broker process; (b) sshd (its listener and the agent's connection \
         process) + websockify and its worker; (c) the same sshd + guacd (and its connection \
         process) + guacamole-lite (node). x11vnc and the OpenSSH agent are the workstation's, \
         the same for all three. Latency: from the moment the X server had the square's new \
         colour (a round trip on the harness's own X connection after drawing) to the first \
         animation frame in which the page read that colour from the canvas, both on \
         CLOCK_REALTIME. Canvas updates/s: animation frames in which eight \
         sampled canvas rows changed (the page's frame rate caps it). All figures are medians over \
         runs (latency: the median of the runs' p50s and p95s). A direct RFB client of the \
         harness (the square's rectangle only, raw encoding) is connected to x11vnc beside every \
         stack, the same for all three.\n",
    );
    if !input.problems.is_empty() {
        out.push_str("\n**Problems during the run:**\n\n");
        for p in input.problems {
            let _ = writeln!(out, "- {p}");
        }
    }
    out
}

/// Where a small change's time goes (workload (1), the still screen: the first WebSocket message
/// after a change is its update).
fn stages_table(out: &mut String, present: &[Stack], summaries: &[(Workload, Stack, Summary)]) {
    out.push_str(
        "### Where the time of a small change goes ((1), medians over the changes seen by all)\n\n\
         | stack | changes | X → x11vnc's update (direct RFB client) | X → first WebSocket message \
         in the page | X → canvas | tunnel + page's receive (message − x11vnc, per change) | page \
         (canvas − message, per change) |\n|---|---|---|---|---|---|---|\n",
    );
    for &stack in present {
        let Some((_, _, s)) = summaries
            .iter()
            .find(|x| x.0 == Workload::Square && x.1 == stack)
        else {
            continue;
        };
        let Some([v, m, c, tunnel, page]) = s.stages else {
            let _ = writeln!(out, "| {} | 0 | | | | | |", stack.label());
            continue;
        };
        let _ = writeln!(
            out,
            "| {} | {} | {v:.1} | {m:.1} | {c:.1} | {:.1} | {:.1} |",
            stack.label(),
            s.staged,
            tunnel,
            page
        );
    }
    out.push('\n');
}

/// The stacks' own share of the latency on every workload: X → canvas minus X → x11vnc's update
/// at the direct client, per change (x11vnc's stalls, the same for all stacks, drop out).
fn own_share_table(
    out: &mut String,
    plan: &ScreenPlan,
    present: &[Stack],
    summaries: &[(Workload, Stack, Summary)],
) {
    out.push_str(
        "### The stacks' own share: canvas − x11vnc's update, p50 (ms, median over runs)\n\n\
         | workload | (a) | (b) | (c) | (a) / (b) | (a) / (c) |\n|---|---|---|---|---|---|\n",
    );
    for &w in &plan.workloads {
        let get = |st: Stack| {
            present
                .contains(&st)
                .then(|| summaries.iter().find(|x| x.0 == w && x.1 == st))
                .flatten()
                .and_then(|x| x.2.after_x11vnc_p50)
        };
        let (a, b, c) = (
            get(Stack::Passerelle),
            get(Stack::Websockify),
            get(Stack::Guacamole),
        );
        let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if y.abs() > f64::EPSILON => format!("{:.2}×", x / y),
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            w.describe().split(' ').next().unwrap_or(""),
            opt(a),
            opt(b),
            opt(c),
            ratio(a, b),
            ratio(a, c)
        );
    }
    out.push('\n');
}
