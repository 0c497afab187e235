//! The screen benchmark's figures: pairing the square's changes with what the page (and the
//! direct RFB client) saw, where each change's time went, and the medians over runs. The
//! markdown section is [`super::markdown`]'s.

use super::display::Toggle;
use super::{Stack, Workload};
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
    /// Per change seen by all three: X change → x11vnc's update at the direct RFB client, → the
    /// first WebSocket message at the page, → the canvas (ms; see [`stages`]).
    pub stages: Vec<[f64; 3]>,
    /// Per change seen by the canvas and the direct RFB client: canvas − x11vnc's update (ms),
    /// the stack's own share, whatever x11vnc did (on any workload).
    pub after_x11vnc: Vec<f64>,
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

    /// The progress line of one measurement.
    pub fn one_line(&self) -> String {
        let direct: Vec<f64> = self.stages.iter().map(|s| s[0]).collect();
        format!(
            "latency p50 {:.1} ms ({} changes, {} missed; x11vnc's share {}), {:.1} canvas updates/s, \
             {:.0} KB/s, server CPU {:.1} %",
            self.latency_p50().unwrap_or(f64::NAN),
            self.latencies.len(),
            self.missed,
            if direct.is_empty() {
                "–".to_owned()
            } else {
                format!("{:.1} ms", median(&direct))
            },
            self.fps,
            self.bytes_per_s / 1000.0,
            self.server_total() * 100.0
        )
    }
}

/// How far a canvas colour may be from the colour drawn, per channel (lossy encodings).
const TOLERANCE: f64 = 64.0;
/// A change not seen this long after the X server had it counts as missed.
const GIVE_UP_MS: f64 = 3000.0;

/// Pairs each toggle with the first later change of the probe pixel to its colour; returns the
/// latencies (ms) and how many toggles were never seen. A change is used once.
pub fn pair(toggles: &[Toggle], changes: &[[f64; 4]]) -> (Vec<f64>, usize) {
    let each = pair_each(toggles, changes);
    let missed = each.iter().filter(|l| l.is_none()).count();
    (each.into_iter().flatten().collect(), missed)
}

/// Where each change's time went: for every toggle that both the direct RFB client (`direct`)
/// and the page's canvas (`canvas`) saw, `[x11vnc, page's WebSocket, canvas]` in ms after the X
/// change, the WebSocket time being the first message to reach the page after the change
/// (`arrivals`) — on a still screen, that change's update. Toggles without a message before the
/// canvas changed are left out.
pub fn stages(
    toggles: &[Toggle],
    canvas: &[[f64; 4]],
    direct: &[[f64; 4]],
    arrivals: &[f64],
) -> Vec<[f64; 3]> {
    let at_canvas = pair_each(toggles, canvas);
    let at_x11vnc = pair_each(toggles, direct);
    let mut out = Vec::new();
    for ((t, c), v) in toggles.iter().zip(at_canvas).zip(at_x11vnc) {
        let (Some(c), Some(v)) = (c, v) else { continue };
        let first = arrivals.iter().find(|&&a| a >= t.at_ms && a <= t.at_ms + c);
        if let Some(a) = first {
            out.push([v, a - t.at_ms, c]);
        }
    }
    out
}

/// Per toggle seen by both: the canvas's latency minus the direct client's (ms).
pub fn after_x11vnc(toggles: &[Toggle], canvas: &[[f64; 4]], direct: &[[f64; 4]]) -> Vec<f64> {
    pair_each(toggles, canvas)
        .into_iter()
        .zip(pair_each(toggles, direct))
        .filter_map(|(c, v)| Some(c? - v?))
        .collect()
}

/// [`pair`], per toggle: its latency or `None`.
fn pair_each(toggles: &[Toggle], changes: &[[f64; 4]]) -> Vec<Option<f64>> {
    let mut from = 0;
    let mut out = Vec::new();
    for t in toggles {
        let want = [(t.rgb >> 16) & 0xff, (t.rgb >> 8) & 0xff, t.rgb & 0xff].map(f64::from);
        let found = changes[from..].iter().position(|c| {
            c[0] >= t.at_ms - 1.0
                && c[0] <= t.at_ms + GIVE_UP_MS
                && (0..3).all(|i| (c[i + 1] - want[i]).abs() <= TOLERANCE)
        });
        match found {
            Some(k) => {
                out.push(Some(changes[from + k][0] - t.at_ms));
                from += k + 1;
            }
            None => out.push(None),
        }
    }
    out
}

/// The medians of one stack and workload over its runs.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub runs: usize,
    /// The median over runs of each run's p50 (and p95); the per-run p50s, in run order.
    pub latency_p50: Option<f64>,
    pub latency_p95: Option<f64>,
    pub run_p50s: Vec<f64>,
    /// The median over runs of each run's p50 of [`Sample::after_x11vnc`].
    pub after_x11vnc_p50: Option<f64>,
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
    /// Medians of [`Sample::stages`] pooled over runs — x11vnc, message, canvas, then the
    /// per-change differences message − x11vnc and canvas − message — and how many changes.
    pub stages: Option<[f64; 5]>,
    pub staged: usize,
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
        latency_p50: (!all.is_empty()).then(|| median(&run_pct(samples, 50.0))),
        latency_p95: (!all.is_empty()).then(|| median(&run_pct(samples, 95.0))),
        run_p50s: run_pct(samples, 50.0),
        after_x11vnc_p50: {
            let per_run: Vec<f64> = samples
                .iter()
                .filter(|s| !s.after_x11vnc.is_empty())
                .map(|s| percentile(&s.after_x11vnc, 50.0))
                .collect();
            (!per_run.is_empty()).then(|| median(&per_run))
        },
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
        stages: stage_medians(samples),
        staged: samples.iter().map(|s| s.stages.len()).sum(),
    })
}

/// Each run's `p`th percentile of its latencies (runs that saw no change left out).
fn run_pct(samples: &[&Sample], p: f64) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| !s.latencies.is_empty())
        .map(|s| percentile(&s.latencies, p))
        .collect()
}

fn stage_medians(samples: &[&Sample]) -> Option<[f64; 5]> {
    let pooled: Vec<[f64; 3]> = samples
        .iter()
        .flat_map(|s| s.stages.iter().copied())
        .collect();
    if pooled.is_empty() {
        return None;
    }
    let col = |f: &dyn Fn(&[f64; 3]) -> f64| median(&pooled.iter().map(f).collect::<Vec<_>>());
    Some([
        col(&|s| s[0]),
        col(&|s| s[1]),
        col(&|s| s[2]),
        col(&|s| s[1] - s[0]),
        col(&|s| s[2] - s[1]),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Red at 1 s, green at 2 s.
    fn red_then_green() -> [Toggle; 2] {
        [
            Toggle {
                at_ms: 1000.0,
                rgb: 0xff0000,
            },
            Toggle {
                at_ms: 2000.0,
                rgb: 0x00ff00,
            },
        ]
    }

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
    fn stages_split_a_change_at_x11vnc_and_at_the_first_message() {
        let toggles = red_then_green();
        let canvas = [[1040.0, 255.0, 0.0, 0.0], [2050.0, 0.0, 255.0, 0.0]];
        // The direct client missed nothing; no message reached the page for the second change
        // before its canvas did (a stale one did, before the change).
        let direct = [[1025.0, 255.0, 0.0, 0.0], [2020.0, 0.0, 255.0, 0.0]];
        let arrivals = [900.0, 1031.0, 1032.0, 1999.0, 2060.0];
        assert_eq!(
            stages(&toggles, &canvas, &direct, &arrivals),
            vec![[25.0, 31.0, 40.0]]
        );
    }

    #[test]
    fn the_share_after_x11vnc_needs_both_sightings() {
        let toggles = red_then_green();
        let canvas = [[1040.0, 255.0, 0.0, 0.0], [2050.0, 0.0, 255.0, 0.0]];
        assert_eq!(after_x11vnc(&toggles, &canvas, &[]), Vec::<f64>::new());
        // The direct client saw the first change only.
        let direct = [[1030.0, 255.0, 0.0, 0.0]];
        assert_eq!(after_x11vnc(&toggles, &canvas, &direct), vec![10.0]);
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
