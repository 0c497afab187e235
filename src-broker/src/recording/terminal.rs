//! Terminal recordings (`ssh` sessions in the browser), once written: `passerelle recording
//! export --text OUT / --asciicast OUT` (the transcript, with the escape sequences taken out,
//! and the asciicast v2 file) and the search index of a finished connection's transcript
//! ([`index`]), each after the recording's hash chain and signatures are checked.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use passerelle_proto::recording::{Content, Frames, Verdict};
use passerelle_proto::terminal::{asciicast, transcript};

use crate::store::{Store, TenantId};

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
    let header = match super::verify_file(bytes, public_hex) {
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

/// Reads, verifies and indexes connection `segment`'s terminal recording at `path` for search
/// (blocking: a thread of the blocking pool); returns the lines indexed.
pub(crate) fn index(
    store: &Store,
    tenant_id: TenantId,
    session: &str,
    segment: u32,
    path: &Path,
    public_hex: &str,
) -> anyhow::Result<usize> {
    let file = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if let Verdict::Tampered(damage) = super::verify_file(&file, public_hex) {
        bail!("the recording does not verify: {damage}");
    }
    let t = transcript::of_recording(&file)?;
    let lines = t
        .output
        .iter()
        .map(|l| (l.time_us, false, l.text.as_str()))
        .chain(t.input.iter().map(|l| (l.time_us, true, l.text.as_str())));
    store.index_terminal(tenant_id, session, segment, lines)
}
