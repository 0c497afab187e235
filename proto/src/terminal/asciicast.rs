//! asciicast v2 (the format of asciinema) from a terminal recording: a JSON header line
//! `{"version":2,"width":W,"height":H,"timestamp":T,"env":{"TERM":...}}`, then one JSON array
//! per event, `[seconds, code, data]`: `"o"` output (the recording's Down frames), `"i"` input
//! (Up frames, present only when the tenant records input), `"r"` resize (`"COLSxROWS"`).
//!
//! The size in the header is the recording's first resize event (80x24 when there is none).
//! Output split in the middle of a UTF-8 sequence is joined before it is written, so that every
//! event is valid text.

use std::fmt::Write as _;

use super::{RecordedEvent, TERM, Utf8Stream};
use crate::recording::{Content, Damage, Frames, Kind};

/// Why a recording cannot be turned into asciicast.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CastError {
    #[error("this recording holds no terminal (content {0:?})")]
    NotTerminal(Content),
    #[error(transparent)]
    Damaged(#[from] Damage),
}

/// The header line (without its newline).
pub fn header_line(width: u16, height: u16, timestamp: Option<i64>) -> String {
    let mut h = serde_json::json!({
        "version": 2,
        "width": width,
        "height": height,
        "env": { "TERM": TERM },
    });
    if let (Some(t), Some(map)) = (timestamp, h.as_object_mut()) {
        map.insert("timestamp".into(), t.into());
    }
    h.to_string()
}

/// Appends one event line (with its newline).
pub fn event_line(time_us: u64, code: &str, data: &str, out: &mut String) {
    let data = serde_json::to_string(data).unwrap_or_default();
    let _ = writeln!(
        out,
        "[{}.{:06}, \"{code}\", {data}]",
        time_us / 1_000_000,
        time_us % 1_000_000
    );
}

/// The first terminal size a recording gives.
pub fn initial_size(file: &[u8]) -> Result<(u16, u16), CastError> {
    let (_, frames) = Frames::new(file)?;
    for f in frames {
        if f.kind == Kind::Event
            && let Some(RecordedEvent::Resize { cols, rows }) = RecordedEvent::parse(f.payload)
        {
            return Ok((cols, rows));
        }
    }
    Ok((80, 24))
}

/// The whole recording as asciicast v2 (every whole frame; the caller verifies the file first).
/// `timestamp` is the session's start in seconds since the Unix epoch.
pub fn from_recording(file: &[u8], timestamp: Option<i64>) -> Result<String, CastError> {
    let (header, frames) = Frames::new(file)?;
    if header.content != Content::Terminal {
        return Err(CastError::NotTerminal(header.content));
    }
    let (width, height) = initial_size(file)?;
    let mut out = header_line(width, height, timestamp);
    out.push('\n');
    let (mut down, mut up) = (Utf8Stream::default(), Utf8Stream::default());
    let mut text = String::new();
    let mut first_resize = true;
    for f in frames {
        text.clear();
        let code = match f.kind {
            Kind::Down => {
                down.decode(f.payload, &mut text);
                "o"
            }
            Kind::Up => {
                up.decode(f.payload, &mut text);
                "i"
            }
            Kind::Event => match RecordedEvent::parse(f.payload) {
                // The first size is the header's.
                Some(RecordedEvent::Resize { cols, rows })
                    if !std::mem::take(&mut first_resize) =>
                {
                    let _ = write!(text, "{cols}x{rows}");
                    "r"
                }
                _ => continue,
            },
            Kind::Checkpoint | Kind::Trailer => continue,
        };
        if !text.is_empty() {
            event_line(f.time_us, code, &text, &mut out);
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::recording::{Header, Writer};

    pub(crate) fn terminal_recording(frames: &[(Kind, u64, &[u8])]) -> Vec<u8> {
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
            signer: "00".into(),
            segment: 1,
        };
        let (mut w, mut out) = Writer::start(&header);
        for (kind, t, data) in frames {
            w.frame(*kind, *t, data, &mut out);
        }
        out
    }

    #[test]
    fn a_recording_becomes_asciicast_v2() {
        let resize = RecordedEvent::Resize {
            cols: 100,
            rows: 30,
        }
        .to_json();
        let later = RecordedEvent::Resize { cols: 90, rows: 20 }.to_json();
        let file = terminal_recording(&[
            (Kind::Event, 0, &resize),
            (Kind::Down, 1_500_000, b"$ \xe2\x82"),
            (Kind::Down, 1_600_000, b"\xac \"q\"\r\n"),
            (Kind::Up, 2_000_000, b"ls\r"),
            (Kind::Event, 3_000_000, &later),
            (Kind::Event, 3_100_000, br#"{"note":"x"}"#),
        ]);
        let cast = from_recording(&file, Some(1_700_000_000)).unwrap();
        let lines: Vec<&str> = cast.lines().collect();
        let head: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(head["version"], 2);
        assert_eq!(
            (head["width"].as_u64(), head["height"].as_u64()),
            (Some(100), Some(30))
        );
        assert_eq!(head["timestamp"], 1_700_000_000);
        assert_eq!(lines[1], r#"[1.500000, "o", "$ "]"#);
        assert_eq!(lines[2], "[1.600000, \"o\", \"€ \\\"q\\\"\\r\\n\"]");
        assert_eq!(lines[3], r#"[2.000000, "i", "ls\r"]"#);
        assert_eq!(lines[4], r#"[3.000000, "r", "90x20"]"#);
        assert_eq!(lines.len(), 5);
        for line in &lines[1..] {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v[0].is_f64() && v[1].is_string() && v[2].is_string());
        }
    }

    #[test]
    fn other_recordings_are_refused() {
        let mut file = terminal_recording(&[]);
        // Same header with another content: rebuild it.
        let (mut h, _, _) = crate::recording::read_header(&file).unwrap();
        h.content = Content::Rfb;
        file = Writer::start(&h).1;
        assert_eq!(
            from_recording(&file, None),
            Err(CastError::NotTerminal(Content::Rfb))
        );
        assert!(matches!(
            from_recording(b"nope", None),
            Err(CastError::Damaged(Damage::NotARecording))
        ));
    }
}
