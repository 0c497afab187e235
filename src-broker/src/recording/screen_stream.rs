//! Screen streams: a VNC recording turned, once, into something a browser can start anywhere.
//!
//! noVNC cannot start in the middle of an RFB stream (ZRLE and Tight keep zlib state), so the
//! replay page does not read the recording. The broker decodes it ([`super::playback`]) into a
//! sidecar file next to it, `<session>.psscreen`: an index, then timestamped records, each
//! stateless — rectangles as PNG, copies, resizes — with a full-screen PNG keyframe at least
//! every [`KEYFRAME_EVERY_US`] of recorded time when the screen changes. Seeking fetches from
//! the last keyframe at or before the target, so it never decodes from the start.
//!
//! ```text
//! file    = MAGIC index_len:u32le index:json record*
//! record  = kind:u8 time_us:u64le len:u32le payload
//! payload = keyframe/rect: x y w h (u16le each) png | copy: x y w h src_x src_y (u16le)
//!         | resize: w h (u16le)
//! ```
//!
//! The sidecar is derived data: built on the first replay after checking the recording's hash
//! chain and signatures, rebuilt when missing or when the recording has grown (a session still
//! being recorded), and deleted with the recording by retention.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use passerelle_proto::recording::{Content, Damage, Frames, Header, Kind, Verdict};
use serde::{Deserialize, Serialize};

use super::playback::{self, Op, Screen};

/// The first 8 bytes of a screen stream.
pub const MAGIC: &[u8; 8] = b"PSSCRN\x00\x01";
/// Recorded time between keyframes, at most (when the screen changes).
pub const KEYFRAME_EVERY_US: u64 = 2_000_000;

/// Record kinds.
pub mod kind {
    pub const KEYFRAME: u8 = 1;
    pub const RECT: u8 = 2;
    pub const COPY: u8 = 3;
    pub const RESIZE: u8 = 4;
}

/// What the replay page needs before any pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Index {
    pub version: u32,
    /// Length of the recording this was built from (a longer one is rebuilt).
    pub source_len: u64,
    pub header: Header,
    /// Whether the recording has its trailer.
    pub complete: bool,
    pub end_reason: Option<String>,
    pub duration_us: u64,
    /// Times of the operator's input activity.
    pub marks: Vec<u64>,
    /// `(time_us, offset)` of each keyframe; offsets count from the first record.
    #[schema(value_type = Vec<Vec<u64>>)]
    pub keyframes: Vec<(u64, u64)>,
    /// Bytes of records.
    pub records_len: u64,
    /// Set when decoding stopped early; the stream is right up to there.
    pub decode_error: Option<String>,
    /// Frames of a truncated recording that no signature covers, left out of the replay.
    #[serde(default)]
    pub unsigned_frames: u64,
}

/// Why a screen stream cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the recording is tampered or damaged: {0}")]
    Tampered(Damage),
    #[error("nothing in the recording is signed: it cannot be replayed as evidence")]
    Unsigned,
    #[error("{0}")]
    Playback(#[from] playback::PlaybackError),
}

/// The sidecar's path for a recording's path.
pub fn path_for(recording: &Path) -> PathBuf {
    recording.with_extension("psscreen")
}

/// A rectangle as PNG, fast (an empty image if it cannot be encoded).
fn png(width: u32, height: u32, rgba: &[u8]) -> Vec<u8> {
    playback::png(width, height, rgba, png::Compression::Fast).unwrap_or_default()
}

fn u16s(values: &[u32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| u16::try_from(*v).unwrap_or(u16::MAX).to_le_bytes())
        .collect()
}

fn record(out: &mut Vec<u8>, kind: u8, time_us: u64, head: &[u32], image: &[u8]) {
    let mut payload = u16s(head);
    payload.extend_from_slice(image);
    out.push(kind);
    out.extend_from_slice(&time_us.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&payload);
}

/// Builds a recording's screen stream; `public_hex` is the broker's recording key.
pub fn build(file: &[u8], public_hex: &str) -> Result<Vec<u8>, BuildError> {
    let source_len = file.len() as u64;
    let (header, complete, end_reason, duration_us, signed_len, unsigned_frames) =
        match super::verify_file(file, public_hex) {
            Verdict::Intact {
                header, summary, ..
            } => (
                header,
                true,
                Some(summary.end_reason),
                summary.duration_us,
                file.len(),
                0,
            ),
            // Only what a signature covers is replayed.
            Verdict::Truncated {
                header,
                frames,
                signed_frames,
                signed_len,
                signed_end_us,
                ..
            } => (
                header,
                false,
                None,
                signed_end_us,
                signed_len,
                frames - signed_frames,
            ),
            Verdict::Unsigned { .. } => return Err(BuildError::Unsigned),
            Verdict::Tampered(d) => return Err(BuildError::Tampered(d)),
        };
    let file = &file[..signed_len];
    let marks = Frames::new(file)
        .map(|(_, frames)| {
            frames
                .filter(|f| f.kind == Kind::Event && f.payload.starts_with(b"{\"input\""))
                .map(|f| f.time_us)
                .collect()
        })
        .unwrap_or_default();
    let mut index = Index {
        version: 1,
        source_len,
        header,
        complete,
        end_reason,
        duration_us,
        marks,
        keyframes: Vec::new(),
        records_len: 0,
        decode_error: None,
        unsigned_frames,
    };
    let mut records = Vec::new();
    if index.header.content == Content::Rfb {
        let mut last_key: Option<u64> = None;
        let played = playback::play(file, |u| {
            let changed = u.ops.iter().any(|op| !matches!(op, Op::Bell | Op::Text(_)));
            if changed && last_key.is_none_or(|k| u.time_us >= k + KEYFRAME_EVERY_US) {
                let s: &Screen = u.screen;
                index.keyframes.push((u.time_us, records.len() as u64));
                let image = png(s.width, s.height, &s.rgba);
                record(
                    &mut records,
                    kind::KEYFRAME,
                    u.time_us,
                    &[0, 0, s.width, s.height],
                    &image,
                );
                last_key = Some(u.time_us);
                return ControlFlow::Continue(());
            }
            for op in u.ops {
                match op {
                    Op::Resize { width, height } => {
                        record(
                            &mut records,
                            kind::RESIZE,
                            u.time_us,
                            &[*width, *height],
                            &[],
                        );
                    }
                    Op::Rect {
                        x,
                        y,
                        width,
                        height,
                        rgba,
                    } => {
                        let image = png(*width, *height, rgba);
                        record(
                            &mut records,
                            kind::RECT,
                            u.time_us,
                            &[*x, *y, *width, *height],
                            &image,
                        );
                    }
                    Op::Copy {
                        x,
                        y,
                        width,
                        height,
                        src_x,
                        src_y,
                    } => record(
                        &mut records,
                        kind::COPY,
                        u.time_us,
                        &[*x, *y, *width, *height, *src_x, *src_y],
                        &[],
                    ),
                    Op::Bell | Op::Text(_) => {}
                }
            }
            ControlFlow::Continue(())
        })?;
        index.decode_error = played.decode_error;
    }
    index.records_len = records.len() as u64;
    let json = serde_json::to_vec(&index).unwrap_or_default();
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&records);
    Ok(out)
}

/// Reads a screen stream's index; returns it and where its records start.
pub fn read_index(stream: &[u8]) -> Option<(Index, usize)> {
    if stream.get(..8)? != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(stream.get(8..12)?.try_into().ok()?) as usize;
    let index = serde_json::from_slice(stream.get(12..12 + len)?).ok()?;
    Some((index, 12 + len))
}

/// The keyframe to start from to show `from_us`: its number, time and record offset.
pub fn keyframe_for(index: &Index, from_us: u64) -> Option<(usize, u64, u64)> {
    let n = index.keyframes.partition_point(|(t, _)| *t <= from_us);
    let k = n.saturating_sub(1);
    index.keyframes.get(k).map(|(t, off)| (k, *t, *off))
}

/// A screen stream on disk: its index, and where in the file its records start.
#[derive(Debug)]
pub struct Built {
    pub path: PathBuf,
    pub index: Index,
    /// Offset of the first record in the file.
    pub base: u64,
}

impl Built {
    /// The records from `start` to `end` (offsets from the first record), read from the file
    /// alone: a fetch costs what it sends, not the whole stream.
    pub fn records(&self, start: u64, end: u64) -> anyhow::Result<Vec<u8>> {
        use anyhow::Context as _;
        use std::io::{Read as _, Seek as _, SeekFrom};
        let end = end.min(self.index.records_len);
        let len = usize::try_from(end.saturating_sub(start)).unwrap_or(0);
        let mut file = std::fs::File::open(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        file.seek(SeekFrom::Start(self.base + start))?;
        let mut out = vec![0; len];
        file.read_exact(&mut out)
            .with_context(|| format!("reading {}", self.path.display()))?;
        Ok(out)
    }
}

/// The largest index a sidecar may hold (a keyframe every 2 s of a day is a few MiB).
const MAX_INDEX: usize = 64 << 20;

/// Reads a sidecar's index from its file, without its records.
fn read_index_file(path: &Path) -> Option<(Index, u64)> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).ok()?;
    let mut head = [0u8; 12];
    file.read_exact(&mut head).ok()?;
    if head[..8] != MAGIC[..] {
        return None;
    }
    let len = u32::from_le_bytes(head[8..12].try_into().ok()?) as usize;
    if len > MAX_INDEX {
        return None;
    }
    let mut json = vec![0; len];
    file.read_exact(&mut json).ok()?;
    let index = serde_json::from_slice(&json).ok()?;
    Some((index, 12 + len as u64))
}

/// Replays decoded at once, at most: each holds its recording in memory while it decodes.
const BUILDS_AT_ONCE: usize = 2;

/// Waits for a build slot; the slot frees on drop.
fn build_slot() -> impl Drop {
    use std::sync::{Condvar, Mutex, OnceLock};
    static SLOTS: OnceLock<(Mutex<usize>, Condvar)> = OnceLock::new();
    struct Slot(&'static (Mutex<usize>, Condvar));
    impl Drop for Slot {
        fn drop(&mut self) {
            let mut used = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
            *used -= 1;
            self.0.1.notify_one();
        }
    }
    let slots = SLOTS.get_or_init(|| (Mutex::new(0), Condvar::new()));
    let mut used = slots.0.lock().unwrap_or_else(|p| p.into_inner());
    while *used >= BUILDS_AT_ONCE {
        used = slots.1.wait(used).unwrap_or_else(|p| p.into_inner());
    }
    *used += 1;
    Slot(slots)
}

/// The screen stream for the recording at `recording` (blocking): the cached sidecar if it was
/// built from a recording of the same length, otherwise a new one, written next to it
/// atomically. At most [`BUILDS_AT_ONCE`] builds run at once.
pub fn ensure_built(recording: &Path, public_hex: &str) -> anyhow::Result<Built> {
    use anyhow::Context as _;
    let sidecar = path_for(recording);
    // One build per recording at a time: simultaneous first replays wait for the first build
    // and then read its result.
    let lock = build_lock(&sidecar);
    let _building = lock.lock().unwrap_or_else(|p| p.into_inner());
    // Every fetch of the replay page comes here: the recording is read only to build.
    let source_len = std::fs::metadata(recording)
        .with_context(|| format!("reading {}", recording.display()))?
        .len();
    if let Some((index, base)) = read_index_file(&sidecar)
        && index.source_len == source_len
    {
        return Ok(Built {
            path: sidecar,
            index,
            base,
        });
    }
    let _slot = build_slot();
    let file =
        std::fs::read(recording).with_context(|| format!("reading {}", recording.display()))?;
    let built = build(&file, public_hex)?;
    drop(file);
    let (index, base) = read_index(&built).context("a screen stream without an index")?;
    // A name of this process's own, so that another broker on the same dir cannot interleave.
    let tmp = sidecar.with_extension(format!("psscreen.{}.tmp", std::process::id()));
    crate::secrets::write_private(&tmp, &built)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &sidecar).with_context(|| format!("writing {}", sidecar.display()))?;
    Ok(Built {
        path: sidecar,
        index,
        base: base as u64,
    })
}

/// The lock that serializes building the sidecar `sidecar` within this process.
fn build_lock(sidecar: &Path) -> std::sync::Arc<std::sync::Mutex<()>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock, Weak};
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Weak<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    locks.retain(|_, lock| lock.strong_count() > 0);
    if let Some(lock) = locks.get(sidecar).and_then(Weak::upgrade) {
        return lock;
    }
    let lock = Arc::new(Mutex::new(()));
    locks.insert(sidecar.to_owned(), Arc::downgrade(&lock));
    lock
}

#[cfg(test)]
mod tests {
    use super::*;
    use passerelle_proto::recording::{Summary, Writer};

    /// A signed 2x1 recording whose screen changes colour every second for `seconds`.
    fn recording(key: &crate::recording::SigningKey, seconds: u64) -> Vec<u8> {
        let header = Header {
            version: 1,
            session: "s".into(),
            tenant: "t".into(),
            agent: "a".into(),
            service: "vnc".into(),
            operator: "o".into(),
            view_only: false,
            started_at: String::new(),
            content: Content::Rfb,
            signer: key.public_hex(),
            segment: 1,
        };
        let (mut w, mut out) = Writer::start(&header);
        // ServerInit: 2x1, 32 bpp, red at bit 0.
        let mut init = vec![
            0, 2, 0, 1, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 0, 8, 16, 0, 0, 0,
        ];
        init.extend(0u32.to_be_bytes());
        w.frame(Kind::Down, 0, &init, &mut out);
        for s in 0..seconds {
            let shade = u8::try_from(s * 10).unwrap_or(255);
            let mut update = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0];
            update.extend([shade, 0, 0, 0, shade, 0, 0, 0]);
            w.frame(Kind::Down, s * 1_000_000 + 500_000, &update, &mut out);
            w.checkpoint(s * 1_000_000 + 600_000, |m| key.sign(m), &mut out);
        }
        let summary = Summary {
            ended_at: String::new(),
            end_reason: "viewer_closed".into(),
            duration_us: seconds * 1_000_000,
            bytes_up: 0,
            bytes_down: 0,
            frames: 0,
        };
        w.finish(seconds * 1_000_000, &summary, |m| key.sign(m), &mut out);
        out
    }

    /// Decodes records from `offset` on and returns the first pixel's red after those up to
    /// `until_us`.
    fn red_at(records: &[u8], until_us: u64) -> Option<u8> {
        let mut pos = 0;
        let mut red = None;
        while pos + 13 <= records.len() {
            let kind = records[pos];
            let t = u64::from_le_bytes(records[pos + 1..pos + 9].try_into().ok()?);
            let len = u32::from_le_bytes(records[pos + 9..pos + 13].try_into().ok()?) as usize;
            if t > until_us {
                break;
            }
            if kind == kind::KEYFRAME || kind == kind::RECT {
                let png = &records[pos + 13 + 8..pos + 13 + len];
                let mut reader = png::Decoder::new(std::io::Cursor::new(png))
                    .read_info()
                    .ok()?;
                let mut buf = vec![0; reader.output_buffer_size()?];
                reader.next_frame(&mut buf).ok()?;
                red = Some(buf[0]);
            }
            pos += 13 + len;
        }
        red
    }

    #[test]
    fn seeking_starts_at_a_keyframe_that_holds_the_whole_screen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = crate::recording::SigningKey::load_or_create(dir.path()).expect("key");
        let file = recording(&key, 10);
        let stream = build(&file, &key.public_hex()).expect("builds");
        let (index, base) = read_index(&stream).expect("index");
        assert!(index.complete && index.duration_us == 10_000_000);
        let times: Vec<u64> = index.keyframes.iter().map(|k| k.0).collect();
        assert_eq!(times, [0, 2_500_000, 4_500_000, 6_500_000, 8_500_000]);
        // From the keyframe before 7.2 s alone, the screen is what it was at 7.2 s.
        let (n, t, offset) = keyframe_for(&index, 7_200_000).expect("keyframe");
        assert_eq!((n, t), (3, 6_500_000));
        let records = &stream[base + offset as usize..];
        assert_eq!(red_at(records, 7_200_000), Some(60));
        assert_eq!(
            red_at(&stream[base..], 7_200_000),
            Some(60),
            "same as from the start"
        );
        // Tampering is refused; metadata-only recordings have no keyframes.
        let mut bad = file.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        assert!(matches!(
            build(&bad, &key.public_hex()),
            Err(BuildError::Tampered(_))
        ));
        let other_dir = tempfile::tempdir().expect("tempdir");
        let other = crate::recording::SigningKey::load_or_create(other_dir.path()).expect("key");
        assert!(matches!(
            build(&file, &other.public_hex()),
            Err(BuildError::Tampered(_))
        ));
    }

    #[test]
    fn simultaneous_first_replays_agree_and_leave_no_temporary_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = crate::recording::SigningKey::load_or_create(dir.path()).expect("key");
        let path = dir.path().join("s.psrec");
        std::fs::write(&path, recording(&key, 6)).expect("write");
        let public = key.public_hex();
        let results: Vec<Built> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| s.spawn(|| ensure_built(&path, &public).expect("builds")))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        assert!(results.windows(2).all(|w| w[0].index == w[1].index));
        let on_disk = std::fs::read(path_for(&path)).expect("sidecar");
        let (index, base) = read_index(&on_disk).expect("index");
        assert_eq!(index, results[0].index);
        let all = results[0].records(0, index.records_len).expect("records");
        assert_eq!(all, on_disk[base..], "records read from the file alone");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn keyframe_lookup_takes_the_last_at_or_before() {
        let index = Index {
            version: 1,
            source_len: 0,
            header: serde_json::from_value(serde_json::json!({
                "version": 1, "session": "s", "tenant": "t", "agent": "a", "service": "vnc",
                "operator": "o", "view_only": false, "started_at": "", "content": "rfb", "signer": ""
            }))
            .expect("header"),
            complete: true,
            end_reason: None,
            duration_us: 10,
            marks: vec![],
            keyframes: vec![(100, 0), (2_500, 50), (6_000, 90)],
            records_len: 100,
            decode_error: None,
            unsigned_frames: 0,
        };
        assert_eq!(keyframe_for(&index, 0), Some((0, 100, 0)));
        assert_eq!(keyframe_for(&index, 2_499), Some((0, 100, 0)));
        assert_eq!(keyframe_for(&index, 2_500), Some((1, 2_500, 50)));
        assert_eq!(keyframe_for(&index, 99_999), Some((2, 6_000, 90)));
    }
}
