//! `passerelle recording export`: a recording's screen as PNG files or as a video made by
//! ffmpeg, after checking the recording's hash chain and signatures.
//!
//! The screen "at t seconds" is the screen after the last Down frame recorded at or before t.
//! A video has the first screen's size throughout: a desktop that grows later is cropped to it,
//! one that shrinks is padded with black (a resize in the middle of a session is rare, and one
//! size keeps the file playable everywhere).

use std::io::{IsTerminal as _, Write as _};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use passerelle_proto::recording::{Content, Verdict};

use super::playback::{self, Screen};

/// What to export.
#[derive(Debug, Clone)]
pub enum Output {
    /// PNG files in a directory, one per time (seconds), or one every `every` seconds.
    Png {
        dir: PathBuf,
        at: Vec<f64>,
        every: Option<f64>,
    },
    /// A video through ffmpeg.
    Video { file: PathBuf, fps: u32 },
}

/// What an export did.
#[derive(Debug, Default)]
pub struct Report {
    /// Files written (PNG frames, or the video).
    pub files: Vec<PathBuf>,
    /// Video frames written.
    pub frames: u64,
    /// Seconds of recording covered.
    pub duration: f64,
    /// Notes for the user (truncated file, decoding stopped early).
    pub notes: Vec<String>,
}

/// Reports progress on stderr: a bar on a terminal, otherwise a line every 10%.
struct Progress {
    tty: bool,
    last: i64,
}

impl Progress {
    fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            last: -1,
        }
    }

    fn show(&mut self, done: f64, total: f64) {
        let pct = if total > 0.0 {
            ((done / total) * 100.0).clamp(0.0, 100.0) as i64
        } else {
            100
        };
        let mut err = std::io::stderr();
        if self.tty {
            if pct != self.last {
                let bar = usize::try_from(pct / 4).unwrap_or(0);
                let _ = write!(
                    err,
                    "\rexporting [{:<25}] {pct:3}% {done:.1}/{total:.1} s",
                    "#".repeat(bar)
                );
                let _ = err.flush();
            }
        } else if pct / 10 != self.last / 10 {
            let _ = writeln!(err, "exporting: {pct}% ({done:.1}/{total:.1} s)");
        }
        self.last = pct;
    }

    fn done(&self) {
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// Parses `--at 1.5,10,60`.
pub fn parse_times(s: &str) -> anyhow::Result<Vec<f64>> {
    s.split(',')
        .map(|t| {
            let v: f64 = t
                .trim()
                .parse()
                .with_context(|| format!("{t:?} is not a number of seconds"))?;
            if !v.is_finite() || v < 0.0 {
                bail!("{t:?} is not a time in the recording");
            }
            Ok(v)
        })
        .collect()
}

/// How far an export may trust a recording.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trust {
    /// Export a tampered or damaged recording up to the damage.
    pub force: bool,
    /// Export the frames no signature covers too, marked.
    pub include_unsigned: bool,
}

/// What [`check`] found: how much of the file to play and which part of it is signed.
struct Checked {
    /// Seconds of recording to export.
    duration: f64,
    /// Bytes of the file to play.
    play_len: usize,
    /// Recorded time after which frames are not signed (`None`: all of what is played is).
    unsigned_after_us: Option<u64>,
    notes: Vec<String>,
}

/// Checks `file` with the signer's public key (hex). A tampered file is refused unless
/// `force`; only the signed part of a truncated file is played unless `include_unsigned`.
fn check(bytes: &[u8], public_hex: &str, trust: Trust) -> anyhow::Result<Checked> {
    let mut notes = Vec::new();
    let whole = bytes.len();
    let (header, duration_us, play_len, unsigned_after_us) = match super::verify_file(
        bytes, public_hex,
    ) {
        Verdict::Intact {
            header, summary, ..
        } => (header, summary.duration_us, whole, None),
        Verdict::Truncated {
            header,
            end_us,
            frames,
            signed_frames,
            signed_len,
            signed_end_us,
            ..
        } => {
            let unsigned = frames - signed_frames;
            if trust.include_unsigned && unsigned > 0 {
                notes.push(format!(
                        "the recording is truncated; its last {unsigned} frames, after {:.1} s, are NOT signed: exported anyway (--include-unsigned) and marked UNSIGNED",
                        signed_end_us as f64 / 1e6
                    ));
                (header, end_us, whole, Some(signed_end_us))
            } else {
                notes.push(format!(
                        "the recording is truncated (the broker stopped during the session): exporting its signed part, up to {:.1} s{}",
                        signed_end_us as f64 / 1e6,
                        if unsigned > 0 {
                            format!("; {unsigned} unsigned frames after it left out (--include-unsigned exports them, marked)")
                        } else {
                            String::new()
                        }
                    ));
                (header, signed_end_us, signed_len, None)
            }
        }
        Verdict::Unsigned { header, end_us, .. } => {
            if !trust.include_unsigned {
                bail!(
                    "nothing in the recording is signed (no checkpoint, no trailer): refusing to export it (--include-unsigned exports it, marked UNSIGNED)"
                );
            }
            notes.push(
                    "nothing in the recording is signed: exported anyway (--include-unsigned), every frame marked UNSIGNED".into(),
                );
            (header, end_us, whole, Some(0))
        }
        Verdict::Tampered(damage) => {
            if !trust.force {
                bail!(
                    "the recording is TAMPERED or damaged ({damage}); refusing to export it (--force exports what can be read)"
                );
            }
            notes.push(format!(
                    "the recording is TAMPERED or damaged ({damage}); exported anyway (--force), up to the damage"
                ));
            // The frames up to the damage.
            let (header, frames) = passerelle_proto::recording::Frames::new(bytes)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            (header, frames.last().map_or(0, |f| f.time_us), whole, None)
        }
    };
    if header.content != Content::Rfb {
        bail!(
            "this is a {} connection carried as it is: its recording holds metadata only; nothing to export",
            header.service
        );
    }
    Ok(Checked {
        duration: duration_us as f64 / 1e6,
        play_len,
        unsigned_after_us,
        notes,
    })
}

/// Paints a red band across the top of a video frame that no signature covers.
fn mark_unsigned(rgba: &mut [u8], width: u32) {
    let band = (width as usize * 4 * 12).min(rgba.len());
    for px in rgba[..band].chunks_exact_mut(4) {
        px.copy_from_slice(&[0xe0, 0x10, 0x10, 0xff]);
    }
}

fn write_png(path: &Path, screen: &Screen) -> anyhow::Result<()> {
    let png = playback::png(
        screen.width,
        screen.height,
        &screen.rgba,
        png::Compression::default(),
    )
    .context("writing a PNG")?;
    std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
}

const NO_FFMPEG: &str = "ffmpeg not found on PATH: install it (apt install ffmpeg) or use --png";

/// Which encoder this ffmpeg has: libx264 if present, else mpeg4.
fn ffmpeg_encoder() -> anyhow::Result<&'static str> {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-encoders"])
        .stdin(Stdio::null())
        .output();
    match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(NO_FFMPEG)
        }
        Err(e) => Err(anyhow::Error::from(e).context("running ffmpeg")),
        Ok(out) => {
            let list = String::from_utf8_lossy(&out.stdout);
            Ok(if list.contains(" libx264 ") {
                "libx264"
            } else {
                "mpeg4"
            })
        }
    }
}

/// Exports a recording. `public_hex` is the broker's recording key (hex Ed25519).
pub fn export(
    bytes: &[u8],
    public_hex: &str,
    trust: Trust,
    output: &Output,
) -> anyhow::Result<Report> {
    let checked = check(bytes, public_hex, trust)?;
    let (duration, unsigned_after) = (checked.duration, checked.unsigned_after_us);
    let bytes = &bytes[..checked.play_len];
    let unsigned = |t: u64| unsigned_after.is_some_and(|after| t > after);
    let mut report = Report {
        duration,
        notes: checked.notes,
        ..Report::default()
    };
    // The times to sample, in microseconds, ascending.
    let times: Vec<u64> = match output {
        Output::Png { at, every, .. } => {
            let mut at = at.clone();
            if let Some(every) = *every {
                if !every.is_finite() || every < 0.01 {
                    bail!("--every must be at least 0.01 seconds");
                }
                let n = (duration / every).floor() as u64;
                at.extend((0..=n.min(1_000_000)).map(|i| i as f64 * every));
            }
            if at.is_empty() {
                bail!("no times to export: give --at or --every");
            }
            if let Some(t) = at.iter().find(|t| **t > duration + 1e-6) {
                bail!("{t} s is past the end of the recording ({duration:.3} s)");
            }
            let mut t: Vec<u64> = at.iter().map(|s| (s * 1e6) as u64).collect();
            t.sort_unstable();
            t.dedup();
            t
        }
        Output::Video { fps, .. } => {
            if *fps == 0 || *fps > 120 {
                bail!("--fps must be between 1 and 120");
            }
            let n = ((duration * f64::from(*fps)).ceil() as u64).max(1);
            (0..n).map(|i| i * 1_000_000 / u64::from(*fps)).collect()
        }
    };
    let mut ffmpeg = None;
    let (encoder, dir) = match output {
        Output::Video { .. } => (Some(ffmpeg_encoder()?), None),
        Output::Png { dir, .. } => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            (None, Some(dir))
        }
    };
    let mut progress = Progress::new();
    let mut next = 0;
    let mut size = None;
    let mut failure: Option<anyhow::Error> = None;
    let played = playback::play(bytes, |u| {
        // Every time before the next frame sees this screen.
        while let Some(&t) = times.get(next) {
            if u.next_us.is_some_and(|n| t >= n) {
                break;
            }
            let result = match output {
                Output::Png { .. } => {
                    let mark = if unsigned(t) { "-UNSIGNED" } else { "" };
                    let path = dir
                        .map(|d| d.join(format!("screen-{:.3}s{mark}.png", t as f64 / 1e6)))
                        .unwrap_or_default();
                    write_png(&path, u.screen).map(|()| report.files.push(path))
                }
                Output::Video { file, fps } => {
                    let (w, h) = *size.get_or_insert((u.screen.width, u.screen.height));
                    if ffmpeg.is_none() {
                        match start_ffmpeg(file, w, h, *fps, encoder.unwrap_or("mpeg4")) {
                            Ok(child) => ffmpeg = Some(child),
                            Err(e) => {
                                failure = Some(e);
                                return ControlFlow::Break(());
                            }
                        }
                    }
                    let mut frame = if (w, h) == (u.screen.width, u.screen.height) {
                        std::borrow::Cow::Borrowed(&u.screen.rgba)
                    } else {
                        std::borrow::Cow::Owned(u.screen.crop(0, 0, w, h))
                    };
                    if unsigned(t) {
                        mark_unsigned(frame.to_mut(), w);
                    }
                    let stdin = ffmpeg
                        .as_mut()
                        .and_then(|c: &mut std::process::Child| c.stdin.as_mut());
                    match stdin.map(|s| s.write_all(&frame)) {
                        Some(Ok(())) => {
                            report.frames += 1;
                            Ok(())
                        }
                        _ => Err(anyhow::anyhow!("ffmpeg stopped reading frames")),
                    }
                }
            };
            if let Err(e) = result {
                failure = Some(e);
                return ControlFlow::Break(());
            }
            next += 1;
            progress.show(t as f64 / 1e6, duration);
        }
        if next >= times.len() {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    progress.done();
    if let Some(e) = failure {
        if let Some(mut child) = ffmpeg {
            let _ = child.kill();
            let _ = child.wait();
        }
        return Err(e);
    }
    if let Some(e) = &played.decode_error {
        report.notes.push(format!(
            "decoding stopped at {:.1} s: {e}; {} of {} frames exported",
            played.end_us as f64 / 1e6,
            next,
            times.len()
        ));
    }
    if let Some(mut child) = ffmpeg {
        drop(child.stdin.take());
        let out = child.wait_with_output().context("waiting for ffmpeg")?;
        if !out.status.success() {
            bail!(
                "ffmpeg failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if let Output::Video { file, .. } = output {
            report.files.push(file.clone());
        }
    } else if matches!(output, Output::Video { .. }) {
        bail!("the recording has no screen to make a video of");
    }
    Ok(report)
}

fn start_ffmpeg(
    out: &Path,
    width: u32,
    height: u32,
    fps: u32,
    encoder: &str,
) -> anyhow::Result<std::process::Child> {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "rawvideo", "-pix_fmt", "rgba"])
        .args(["-s", &format!("{width}x{height}"), "-r", &fps.to_string()])
        .args(["-i", "-", "-c:v", encoder, "-pix_fmt", "yuv420p"])
        // yuv420p needs even sizes.
        .args(["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"])
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(NO_FFMPEG)
            } else {
                anyhow::Error::from(e).context("starting ffmpeg")
            }
        })
}
