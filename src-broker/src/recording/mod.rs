//! Recordings, from the file to the screen: the writer that appends a connection's frames to a
//! signed file ([`writer`]), verification with the broker's key ([`verify_file`], the one place
//! that checks a file), the screen stream that replays decode into ([`screen_stream`], built by
//! [`playback`]), export to images and video ([`export`]), and what is made of terminal
//! recordings: text and asciicast export, the search index ([`terminal`]).
//!
//! Every connection of a recorded session is recorded, each in its own file (a segment), named
//! after the session: `<tenant>/<session>.psrec` for the first, `<session>.<n>.psrec` for the
//! n-th. When a recording starts, ends and what the tenant's policy does when it fails is the
//! session core's business (`crate::session::recording`).

pub mod export;
pub mod playback;
mod pool;
pub mod screen_stream;
pub mod terminal;
mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use passerelle_proto::api::RecordingSegment;
use passerelle_proto::recording::Verdict;

pub use pool::Writers;
pub use writer::{KEY_FILE, Recording, SigningKey, check_signature};

/// Verifies a recording's bytes with a signer's public key (hex).
pub fn verify_file(bytes: &[u8], public_hex: &str) -> Verdict {
    passerelle_proto::recording::verify(bytes, |m, s| check_signature(public_hex, m, s))
}

/// Where segment `segment` (from 1) of a session's recording lives.
pub fn path_for(dir: &Path, tenant_id: i64, session: &str, segment: u32) -> PathBuf {
    let name = if segment <= 1 {
        format!("{session}.psrec")
    } else {
        format!("{session}.{segment}.psrec")
    };
    dir.join(tenant_id.to_string()).join(name)
}

/// The session and segment a recording's file name says, if it is one.
fn parse_name(path: &Path) -> Option<(String, u32)> {
    let name = path.file_name()?.to_str()?.strip_suffix(".psrec")?;
    match name.split_once('.') {
        None => Some((name.to_owned(), 1)),
        Some((session, n)) => Some((session.to_owned(), n.parse().ok().filter(|n| *n > 1)?)),
    }
}

/// The segments of a session's recording that exist, in order.
pub fn segments(dir: &Path, tenant_id: i64, session: &str) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir.join(tenant_id.to_string())) else {
        return Vec::new();
    };
    let mut found: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let (s, n) = parse_name(&path)?;
            (s == session).then_some((n, path))
        })
        .collect();
    found.sort();
    found
}

/// What a segment's file says of itself (its header only; nothing is verified).
pub fn describe(segment: u32, path: &Path) -> RecordingSegment {
    use std::io::Read as _;
    let mut head = Vec::new();
    let limit = (passerelle_proto::recording::MAX_HEADER + 12) as u64;
    let opened = std::fs::File::open(path);
    let bytes = opened
        .as_ref()
        .ok()
        .and_then(|f| f.metadata().ok())
        .map_or(0, |m| m.len());
    if let Ok(f) = opened {
        let _ = f.take(limit).read_to_end(&mut head);
    }
    let header = passerelle_proto::recording::read_header(&head).ok();
    RecordingSegment {
        segment,
        started_at: header.as_ref().map(|(h, _, _)| h.started_at.clone()),
        content: header.map(|(h, _, _)| h.content),
        bytes,
    }
}

/// Deletes recordings of `tenant_id` last written more than `days` ago; returns the session id,
/// segment and path of each file deleted.
pub fn sweep(dir: &Path, tenant_id: i64, days: u32) -> Vec<(String, u32, PathBuf)> {
    let cutoff = std::time::SystemTime::now() - Duration::from_secs(u64::from(days) * 86_400);
    let mut deleted = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join(tenant_id.to_string())) else {
        return deleted;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some((session, segment)) = parse_name(&path) else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < cutoff);
        if old && std::fs::remove_file(&path).is_ok() {
            // Its derived screen stream (replays) goes with it.
            let _ = std::fs::remove_file(screen_stream::path_for(&path));
            deleted.push((session, segment, path));
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_named_after_their_session() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = path_for(dir.path(), 7, "abc", 1);
        assert!(first.ends_with("7/abc.psrec"));
        assert!(path_for(dir.path(), 7, "abc", 3).ends_with("7/abc.3.psrec"));
        std::fs::create_dir_all(first.parent().expect("parent")).expect("mkdir");
        for p in [
            first.clone(),
            path_for(dir.path(), 7, "abc", 2),
            path_for(dir.path(), 7, "abc", 10),
            path_for(dir.path(), 7, "abcd", 1),
            first.with_extension("psscreen"),
        ] {
            std::fs::write(p, b"x").expect("write");
        }
        let found: Vec<u32> = segments(dir.path(), 7, "abc")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(found, [1, 2, 10]);
        assert_eq!(
            parse_name(Path::new("x.1.psrec")),
            None,
            "segment 1 has no number"
        );
        assert_eq!(parse_name(Path::new("x.psscreen")), None);
    }
}
