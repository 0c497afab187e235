//! `passerelle recording export --text OUT / --asciicast OUT` for terminal recordings: the
//! transcript (the output's lines, escape sequences taken out) and the asciicast v2 file, after
//! the recording's hash chain and signatures are checked.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use passerelle_proto::recording::{Content, Frames, Verdict, verify};
use passerelle_proto::terminal::{asciicast, transcript};

/// What an export wrote and what the user should know.
#[derive(Debug, Default)]
pub struct Exported {
    pub files: Vec<PathBuf>,
    pub notes: Vec<String>,
    /// Transcript lines written.
    pub lines: usize,
}

/// Writes the transcript to `text` and/or the asciicast to `cast`. A tampered recording is
/// refused unless `force` (then what precedes the damage is written); a truncated one is
/// written up to its last whole frame.
pub fn export(
    bytes: &[u8],
    public_hex: &str,
    force: bool,
    text: Option<&Path>,
    cast: Option<&Path>,
) -> anyhow::Result<Exported> {
    let mut out = Exported::default();
    let header = match verify(bytes, |m, s| {
        crate::recorder::check_signature(public_hex, m, s)
    }) {
        Verdict::Intact { header, .. } => header,
        Verdict::Truncated { header, end_us, .. } => {
            out.notes.push(format!(
                "the recording is truncated (the broker stopped during the session): exporting up to its last whole frame, at {:.1} s",
                end_us as f64 / 1e6
            ));
            header
        }
        Verdict::Tampered(damage) if !force => bail!(
            "the recording is TAMPERED or damaged ({damage}); refusing to export it (--force exports what can be read)"
        ),
        Verdict::Tampered(damage) => {
            out.notes.push(format!(
                "the recording is TAMPERED or damaged ({damage}); exported anyway (--force), up to the damage"
            ));
            Frames::new(bytes).map_err(|e| anyhow::anyhow!("{e}"))?.0
        }
    };
    if header.content != Content::Terminal {
        bail!(
            "this {} recording holds no terminal (only `ssh` sessions opened in the browser do)",
            header.service
        );
    }
    if let Some(path) = text {
        let t = transcript::of_recording(bytes)?;
        let mut body = String::new();
        for line in &t.output {
            body.push_str(&line.text);
            body.push('\n');
        }
        std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))?;
        out.lines = t.output.len();
        out.files.push(path.to_owned());
    }
    if let Some(path) = cast {
        let timestamp = crate::store::parse_rfc3339(&header.started_at).map(|ms| ms / 1000);
        let body = asciicast::from_recording(bytes, timestamp)?;
        std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))?;
        out.files.push(path.to_owned());
    }
    Ok(out)
}
