//! Terminal recordings (`ssh` sessions in the browser), once written: `passerelle recording
//! export --text OUT / --asciicast OUT` (the transcript, with the escape sequences taken out,
//! and the asciicast v2 file) and the search index of a finished connection's transcript
//! ([`index`]), each after the recording's hash chain and signatures are checked.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use passerelle_proto::recording::{Content, Damage, Frames, Header, Verdict};
use passerelle_proto::terminal::{asciicast, transcript};

use super::export::Trust;
use crate::store::{Store, TenantId};

/// What an export wrote and what the user should know.
#[derive(Debug, Default)]
pub struct Exported {
    pub files: Vec<PathBuf>,
    pub notes: Vec<String>,
    /// Transcript lines written.
    pub lines: usize,
}

/// Why a terminal recording cannot be replayed or indexed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unplayable {
    #[error("the recording is tampered or damaged: {0}")]
    Tampered(Damage),
    #[error("nothing in the recording is signed: it cannot be replayed as evidence")]
    Unsigned,
}

/// The part of a recording that a signature vouches for: all of an intact one, a truncated one
/// up to its last checkpoint (frames after it are not evidence, see `Verdict::Truncated`).
pub(crate) fn signed_part<'a>(file: &'a [u8], public_hex: &str) -> Result<&'a [u8], Unplayable> {
    let verdict = super::verify_file(file, public_hex);
    match verdict.signed_part(file.len()) {
        Some((len, _)) => Ok(&file[..len]),
        None => match verdict {
            Verdict::Tampered(damage) => Err(Unplayable::Tampered(damage)),
            _ => Err(Unplayable::Unsigned),
        },
    }
}

/// What to export of `bytes`, and from which recorded time on it is not signed (`None`: all of
/// it is).
struct Checked {
    header: Header,
    len: usize,
    unsigned_after_us: Option<u64>,
}

/// Verifies a terminal recording for export. A tampered one is refused unless `trust.force`
/// (then what precedes the damage is written); only the signed part of a truncated one is
/// written unless `trust.include_unsigned` (then the rest is marked).
fn check(
    bytes: &[u8],
    public_hex: &str,
    trust: Trust,
    notes: &mut Vec<String>,
) -> anyhow::Result<Checked> {
    let whole = bytes.len();
    let checked = match super::verify_file(bytes, public_hex) {
        Verdict::Intact { header, .. } => Checked {
            header,
            len: whole,
            unsigned_after_us: None,
        },
        Verdict::Truncated {
            header,
            frames,
            signed_frames,
            signed_len,
            signed_end_us,
            ..
        } => {
            let unsigned = frames - signed_frames;
            let at = signed_end_us as f64 / 1e6;
            if trust.include_unsigned && unsigned > 0 {
                notes.push(format!(
                    "the recording is truncated; its last {unsigned} frames, after {at:.1} s, are NOT signed: exported anyway (--include-unsigned) and marked NOT SIGNED"
                ));
                Checked {
                    header,
                    len: whole,
                    unsigned_after_us: Some(signed_end_us),
                }
            } else {
                let left_out = if unsigned > 0 {
                    format!(
                        "; {unsigned} unsigned frames after it left out (--include-unsigned exports them, marked)"
                    )
                } else {
                    String::new()
                };
                notes.push(format!(
                    "the recording is truncated (the broker stopped during the session): exporting its signed part, up to {at:.1} s{left_out}"
                ));
                Checked {
                    header,
                    len: signed_len,
                    unsigned_after_us: None,
                }
            }
        }
        Verdict::Unsigned { header, .. } => {
            if !trust.include_unsigned {
                bail!(
                    "nothing in the recording is signed (no checkpoint, no trailer): refusing to export it (--include-unsigned exports it, marked NOT SIGNED)"
                );
            }
            notes.push(
                "nothing in the recording is signed: exported anyway (--include-unsigned), all of it marked NOT SIGNED".into(),
            );
            Checked {
                header,
                len: whole,
                unsigned_after_us: Some(0),
            }
        }
        Verdict::Tampered(damage) if !trust.force => bail!(
            "the recording is TAMPERED or damaged ({damage}); refusing to export it (--force exports what can be read)"
        ),
        Verdict::Tampered(damage) => {
            notes.push(format!(
                "the recording is TAMPERED or damaged ({damage}); exported anyway (--force), up to the damage"
            ));
            Checked {
                header: Frames::new(bytes).map_err(|e| anyhow::anyhow!("{e}"))?.0,
                len: whole,
                unsigned_after_us: None,
            }
        }
    };
    if checked.header.content != Content::Terminal {
        bail!(
            "this {} recording holds no terminal (only `ssh` sessions opened in the browser do)",
            checked.header.service
        );
    }
    Ok(checked)
}

/// The mark before what no signature covers.
fn unsigned_mark(after_us: u64) -> String {
    format!(
        "----- NOT SIGNED from here (after {:.1} s): written after the last checkpoint, not evidence -----",
        after_us as f64 / 1e6
    )
}

/// Writes the transcript to `text` and/or the asciicast to `cast`, after [`check`]: what a
/// signature does not cover is left out, or marked with `--include-unsigned` (a line in the
/// transcript, an `"m"` marker in the asciicast).
pub fn export(
    bytes: &[u8],
    public_hex: &str,
    trust: Trust,
    text: Option<&Path>,
    cast: Option<&Path>,
) -> anyhow::Result<Exported> {
    let mut out = Exported::default();
    let checked = check(bytes, public_hex, trust, &mut out.notes)?;
    let bytes = &bytes[..checked.len];
    if let Some(path) = text {
        let t = transcript::of_recording(bytes)?;
        let mut body = String::new();
        let mut mark = checked.unsigned_after_us;
        for line in &t.output {
            if let Some(after) = mark.filter(|after| line.time_us > *after) {
                body.push_str(&unsigned_mark(after));
                body.push('\n');
                mark = None;
            }
            body.push_str(&line.text);
            body.push('\n');
        }
        std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))?;
        out.lines = t.output.len();
        out.files.push(path.to_owned());
    }
    if let Some(path) = cast {
        let timestamp = crate::store::parse_rfc3339(&checked.header.started_at).map(|ms| ms / 1000);
        let mut body = asciicast::from_recording(bytes, timestamp)?;
        if let Some(after) = checked.unsigned_after_us {
            body = mark_cast(&body, after);
        }
        std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))?;
        out.files.push(path.to_owned());
    }
    Ok(out)
}

/// Inserts an asciicast marker (`[t, "m", label]`) before the first event after `after_us`.
fn mark_cast(cast: &str, after_us: u64) -> String {
    let after = after_us as f64 / 1e6;
    let time = |line: &str| -> Option<f64> {
        let rest = line.strip_prefix('[')?;
        rest[..rest.find(',')?].trim().parse().ok()
    };
    let mut out = String::with_capacity(cast.len() + 128);
    let mut marked = false;
    for (i, line) in cast.lines().enumerate() {
        if i > 0 && !marked && time(line).is_some_and(|t| t > after) {
            asciicast::event_line(after_us, "m", &unsigned_mark(after_us), &mut out);
            marked = true;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !marked {
        asciicast::event_line(after_us, "m", &unsigned_mark(after_us), &mut out);
    }
    out
}

/// Reads, verifies and indexes connection `segment`'s terminal recording at `path` for search
/// (blocking: a thread of the blocking pool), its signed part only; returns the lines indexed.
pub(crate) fn index(
    store: &Store,
    tenant_id: TenantId,
    session: &str,
    segment: u32,
    path: &Path,
    public_hex: &str,
) -> anyhow::Result<usize> {
    let file = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // Only what a signature covers is indexed (a finished recording: all of it).
    let signed = signed_part(&file, public_hex)?;
    let t = transcript::of_recording(signed)?;
    let lines = t
        .output
        .iter()
        .map(|l| (l.time_us, false, l.text.as_str()))
        .chain(t.input.iter().map(|l| (l.time_us, true, l.text.as_str())));
    store.index_terminal(tenant_id, session, segment, lines)
}

#[cfg(test)]
mod tests {
    use passerelle_proto::recording::{Kind, Writer};

    use super::*;
    use crate::recording::SigningKey;

    /// A terminal recording with `signed` output before a checkpoint (none when `checkpoint` is
    /// false) and `tail` after it, without a trailer (the broker stopped, or a forger appended).
    fn truncated(key: &SigningKey, checkpoint: bool) -> Vec<u8> {
        let header = Header {
            version: 1,
            session: "s1".into(),
            tenant: "default".into(),
            agent: "pc1".into(),
            service: "ssh".into(),
            operator: "alice".into(),
            view_only: false,
            started_at: "2026-12-01T00:00:00.000Z".into(),
            content: Content::Terminal,
            signer: key.public_hex(),
            segment: 1,
        };
        let (mut w, mut file) = Writer::start(&header);
        w.frame(
            Kind::Event,
            0,
            br#"{"t":"resize","cols":80,"rows":24}"#,
            &mut file,
        );
        w.frame(Kind::Down, 1_000_000, b"signed-part\r\n", &mut file);
        if checkpoint {
            w.checkpoint(1_500_000, |m| key.sign(m), &mut file);
        }
        w.frame(Kind::Down, 2_000_000, b"unsigned-tail\r\n", &mut file);
        file
    }

    #[test]
    fn only_the_signed_part_is_exported_unless_asked_and_then_it_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::load_or_create(dir.path()).unwrap();
        let public = key.public_hex();
        let file = truncated(&key, true);
        let signed = signed_part(&file, &public).unwrap();
        assert!(signed.len() < file.len());

        let (text, cast) = (dir.path().join("t.txt"), dir.path().join("t.cast"));
        let done = export(&file, &public, Trust::default(), Some(&text), Some(&cast)).unwrap();
        assert!(done.notes[0].contains("signed part"), "{:?}", done.notes);
        let t = std::fs::read_to_string(&text).unwrap();
        assert!(
            t.contains("signed-part") && !t.contains("unsigned-tail"),
            "{t}"
        );
        let c = std::fs::read_to_string(&cast).unwrap();
        assert!(
            c.contains("signed-part") && !c.contains("unsigned-tail"),
            "{c}"
        );

        let trust = Trust {
            force: false,
            include_unsigned: true,
        };
        export(&file, &public, trust, Some(&text), Some(&cast)).unwrap();
        let t = std::fs::read_to_string(&text).unwrap();
        let (before, after) = t.split_once("NOT SIGNED from here").expect("marked");
        assert!(
            before.contains("signed-part") && after.contains("unsigned-tail"),
            "{t}"
        );
        let c = std::fs::read_to_string(&cast).unwrap();
        let mark = c.find(r#""m", "----- NOT SIGNED"#).expect("a marker");
        assert!(mark > c.find("signed-part").unwrap() && mark < c.find("unsigned-tail").unwrap());
    }

    #[test]
    fn an_unsigned_recording_is_neither_replayed_nor_exported_without_being_asked() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::load_or_create(dir.path()).unwrap();
        let public = key.public_hex();
        let file = truncated(&key, false);
        assert!(matches!(
            signed_part(&file, &public),
            Err(Unplayable::Unsigned)
        ));
        let text = dir.path().join("t.txt");
        let refused = export(&file, &public, Trust::default(), Some(&text), None).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("nothing in the recording is signed")
        );
        let trust = Trust {
            force: false,
            include_unsigned: true,
        };
        export(&file, &public, trust, Some(&text), None).unwrap();
        let t = std::fs::read_to_string(&text).unwrap();
        assert!(
            t.starts_with("----- NOT SIGNED from here (after 0.0 s)"),
            "{t}"
        );
    }
}
