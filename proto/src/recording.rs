//! The session recording format, version 1: one append-only file per session.
//!
//! ```text
//! file      = MAGIC header_len:u32le header:json frame*
//! frame     = kind:u8 time_us:u64le len:u32le head_tag[4] payload[len] tag[8]
//! ```
//!
//! - `time_us` counts microseconds since the recording started; `kind` is [`Kind`].
//! - Every frame extends a SHA-256 hash chain, `chain = SHA256(chain || kind || time || len ||
//!   payload)`, starting from `SHA256(DOMAIN || MAGIC || header_len || header)`; `tag` is the first
//!   8 bytes of the chain after the frame, so a flipped bit is found at the frame it hit;
//!   `head_tag` is the first 4 bytes of `SHA256(chain || kind || time || len)`, so a damaged length
//!   is told from a file cut short.
//! - A [`Kind::Checkpoint`] frame (written every second or so) carries the chain head before it and
//!   the broker's Ed25519 signature of it: after a crash, everything up to the last checkpoint is
//!   authenticated, and the file stays readable up to its last whole frame.
//! - A [`Kind::Trailer`] frame ends a complete recording: a JSON summary, the chain head, and a
//!   signature over both. Nothing may follow it.
//!
//! This module has no I/O and no signing key: [`Writer`] returns bytes to append and asks a
//! closure for signatures; [`verify`] takes a closure that checks them.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The first 8 bytes of every recording.
pub const MAGIC: &[u8; 8] = b"PSREC\x00\x01\n";
/// Largest header accepted.
pub const MAX_HEADER: usize = 64 * 1024;
/// Largest frame payload accepted.
pub const MAX_PAYLOAD: usize = 16 << 20;
const DOMAIN: &[u8] = b"passerelle-recording-v1";
const FRAME_OVERHEAD: usize = 1 + 8 + 4 + 4 + 8;

fn head_tag(chain: &[u8; 32], head: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(chain);
    h.update(head);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bytes from the workstation to the viewer.
    Down = 1,
    /// Bytes from the viewer to the workstation.
    Up = 2,
    /// A JSON event (input activity, byte counts of raw sessions, notes).
    Event = 3,
    /// Chain head and signature.
    Checkpoint = 4,
    /// Summary, chain head and signature; the last frame.
    Trailer = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Down,
            2 => Self::Up,
            3 => Self::Event,
            4 => Self::Checkpoint,
            5 => Self::Trailer,
            _ => return None,
        })
    }
}

/// What a recording holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Content {
    /// The RFB stream after the broker-terminated handshake (replayable).
    Rfb,
    /// Metadata and byte counts only: the service's bytes are encrypted end to end (raw
    /// sessions, and SSH carried as raw bytes).
    Metadata,
    /// A terminal that the broker ran as the SSH client (`ssh` sessions in the browser): Down
    /// frames are the terminal's output, Up frames what was typed (only when the tenant records
    /// input), Event frames `crate::terminal::RecordedEvent`s (resizes, the exit). Converted to
    /// asciicast v2 by `crate::terminal::asciicast`.
    Terminal,
    /// The plaintext RDP stream after the broker's TLS with the workstation, both directions:
    /// X.224/MCS/slow-path and fast-path PDUs as they went, except that the Client Info PDU
    /// has an empty password and every CredSSP message is an empty `TSRequest` (see
    /// `rdp::filter`). A player decodes it as an RDP client would after TLS.
    Rdp,
}

/// The session metadata at the head of a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Header {
    pub version: u32,
    pub session: String,
    pub tenant: String,
    pub agent: String,
    pub service: String,
    pub operator: String,
    pub view_only: bool,
    /// RFC 3339.
    pub started_at: String,
    pub content: Content,
    /// Hex Ed25519 public key of the signer.
    pub signer: String,
    /// Which connection of the session this file records, from 1 (each connection of a
    /// recorded session has its own file; files older than segments have none: 1).
    #[serde(default = "first_segment")]
    pub segment: u32,
}

fn first_segment() -> u32 {
    1
}

/// The summary in the trailer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// RFC 3339.
    pub ended_at: String,
    pub end_reason: String,
    pub duration_us: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub frames: u64,
}

fn signed_message(tag: &[u8], chain: &[u8; 32], extra: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(tag.len() + 64);
    m.extend_from_slice(tag);
    m.extend_from_slice(chain);
    m.extend_from_slice(&Sha256::digest(extra));
    m
}

/// Builds a recording's bytes; the caller appends them to the file in order.
#[derive(Debug)]
pub struct Writer {
    chain: [u8; 32],
    frames: u64,
}

impl Writer {
    /// Starts a recording: returns the writer and the bytes of the file's head.
    pub fn start(header: &Header) -> (Self, Vec<u8>) {
        let json = serde_json::to_vec(header).unwrap_or_default();
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_le_bytes());
        head.extend_from_slice(&json);
        let mut h = Sha256::new();
        h.update(DOMAIN);
        h.update(&head);
        (
            Self {
                chain: h.finalize().into(),
                frames: 0,
            },
            head,
        )
    }

    /// Frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// A writer that continues a file after its last whole frame, as the broker's own writer
    /// would have. The chain is not keyed: this is what anyone who can write a recording can
    /// do, which is why only signed frames count (see [`Verdict::Truncated`]). `None` for a
    /// damaged file.
    pub fn after(file: &[u8]) -> Option<(Self, usize)> {
        let (_, mut frames) = Frames::new(file).ok()?;
        let count = frames.by_ref().count() as u64;
        if frames.damage.is_some() {
            return None;
        }
        let end = file.len() - frames.remaining();
        Some((
            Self {
                chain: frames.head(),
                frames: count,
            },
            end,
        ))
    }

    /// Appends one frame's bytes to `out`. Payloads over [`MAX_PAYLOAD`] are split.
    pub fn frame(&mut self, kind: Kind, time_us: u64, payload: &[u8], out: &mut Vec<u8>) {
        let mut rest = payload;
        loop {
            let (part, tail) = rest.split_at(rest.len().min(MAX_PAYLOAD));
            self.one(kind, time_us, part, out);
            if tail.is_empty() {
                return;
            }
            rest = tail;
        }
    }

    fn one(&mut self, kind: Kind, time_us: u64, payload: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.push(kind as u8);
        out.extend_from_slice(&time_us.to_le_bytes());
        out.extend_from_slice(
            &u32::try_from(payload.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        let tag = head_tag(&self.chain, &out[start..]);
        let mut h = Sha256::new();
        h.update(self.chain);
        h.update(&out[start..]);
        h.update(payload);
        out.extend_from_slice(&tag);
        out.extend_from_slice(payload);
        self.chain = h.finalize().into();
        out.extend_from_slice(&self.chain[..8]);
        self.frames += 1;
    }

    /// Appends a checkpoint: the chain head so far, signed by `sign`.
    pub fn checkpoint(
        &mut self,
        time_us: u64,
        sign: impl FnOnce(&[u8]) -> [u8; 64],
        out: &mut Vec<u8>,
    ) {
        let head = self.chain;
        let sig = sign(&signed_message(
            b"checkpoint",
            &head,
            &self.frames.to_le_bytes(),
        ));
        let mut payload = head.to_vec();
        payload.extend_from_slice(&sig);
        self.one(Kind::Checkpoint, time_us, &payload, out);
    }

    /// Appends the trailer; nothing may follow.
    pub fn finish(
        mut self,
        time_us: u64,
        summary: &Summary,
        sign: impl FnOnce(&[u8]) -> [u8; 64],
        out: &mut Vec<u8>,
    ) {
        let json = serde_json::to_vec(summary).unwrap_or_default();
        let head = self.chain;
        let sig = sign(&signed_message(b"trailer", &head, &json));
        let mut payload = u32::try_from(json.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes()
            .to_vec();
        payload.extend_from_slice(&json);
        payload.extend_from_slice(&head);
        payload.extend_from_slice(&sig);
        self.one(Kind::Trailer, time_us, &payload, out);
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: Kind,
    pub time_us: u64,
    pub payload: &'a [u8],
    /// Byte offset of the frame in the file.
    pub offset: usize,
}

/// Why a file is not (wholly) a valid recording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    #[error("not a Passerelle recording (bad magic)")]
    NotARecording,
    #[error("header is damaged: {0}")]
    BadHeader(String),
    #[error("frame {frame} at byte {offset}: {why}")]
    Frame {
        frame: u64,
        offset: usize,
        why: &'static str,
    },
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Complete, every frame and signature checks.
    Intact {
        header: Header,
        summary: Summary,
        frames: u64,
    },
    /// No trailer (the broker stopped during the session): every whole frame checks, and the
    /// frames up to the last checkpoint are signed. The frames after it are NOT authenticated:
    /// the hash chain is not keyed, so whoever can write the file can cut it after a checkpoint
    /// and append frames with a recomputed chain. Only the signed part is evidence; replay and
    /// export show it alone unless asked otherwise.
    Truncated {
        header: Header,
        frames: u64,
        /// Frames covered by the last checkpoint's signature (the checkpoint included).
        signed_frames: u64,
        /// Bytes of the file that the signatures cover (the header and the signed frames).
        signed_len: usize,
        /// Recorded time of the last signed frame.
        signed_end_us: u64,
        trailing_bytes: usize,
        /// Recorded time of the last whole frame (0 with none).
        end_us: u64,
    },
    /// No trailer and no checkpoint: nothing in the file is signed, so nothing in it is
    /// authenticated (a broker that stopped within its first second of recording, or a forgery).
    Unsigned {
        header: Header,
        frames: u64,
        trailing_bytes: usize,
        end_us: u64,
    },
    /// Something was altered or damaged.
    Tampered(Damage),
}

/// Reads a recording's header; returns it, its raw length and the initial chain.
pub fn read_header(file: &[u8]) -> Result<(Header, usize, [u8; 32]), Damage> {
    if file.len() < 12 || &file[..8] != MAGIC {
        return Err(Damage::NotARecording);
    }
    let len = u32::from_le_bytes([file[8], file[9], file[10], file[11]]) as usize;
    if len > MAX_HEADER || file.len() < 12 + len {
        return Err(Damage::BadHeader(format!("length {len} is impossible")));
    }
    let header: Header = serde_json::from_slice(&file[12..12 + len])
        .map_err(|e| Damage::BadHeader(e.to_string()))?;
    if header.version != 1 {
        return Err(Damage::BadHeader(format!(
            "version {} is not supported",
            header.version
        )));
    }
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(&file[..12 + len]);
    Ok((header, 12 + len, h.finalize().into()))
}

/// Reads frames in order, checking tags; stops at the first damaged or partial frame.
#[derive(Debug)]
pub struct Frames<'a> {
    file: &'a [u8],
    pos: usize,
    chain: [u8; 32],
    index: u64,
    /// Set when reading stopped on damage (not on a clean or partial end).
    pub damage: Option<Damage>,
}

impl<'a> Frames<'a> {
    /// Frames of `file` (header already checked by [`read_header`]).
    pub fn new(file: &'a [u8]) -> Result<(Header, Self), Damage> {
        let (header, pos, chain) = read_header(file)?;
        Ok((
            header,
            Self {
                file,
                pos,
                chain,
                index: 0,
                damage: None,
            },
        ))
    }

    /// Bytes after the last whole frame read.
    pub fn remaining(&self) -> usize {
        self.file.len() - self.pos
    }

    /// The chain head after the frames read so far.
    pub fn head(&self) -> [u8; 32] {
        self.chain
    }

    fn fail(&mut self, why: &'static str) -> Option<Frame<'a>> {
        self.damage = Some(Damage::Frame {
            frame: self.index,
            offset: self.pos,
            why,
        });
        None
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Frame<'a>;

    fn next(&mut self) -> Option<Frame<'a>> {
        if self.damage.is_some() {
            return None;
        }
        let rest = &self.file[self.pos..];
        if rest.len() < 17 {
            return None;
        }
        if rest[13..17] != head_tag(&self.chain, &rest[..13]) {
            return self.fail("frame header altered");
        }
        let Some(kind) = Kind::from_u8(rest[0]) else {
            return self.fail("unknown frame kind");
        };
        let time_us = u64::from_le_bytes(rest[1..9].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(rest[9..13].try_into().unwrap_or_default()) as usize;
        if len > MAX_PAYLOAD {
            return self.fail("payload length over the limit");
        }
        if rest.len() < FRAME_OVERHEAD + len {
            return None;
        }
        let payload = &rest[17..17 + len];
        let mut h = Sha256::new();
        h.update(self.chain);
        h.update(&rest[..13]);
        h.update(payload);
        let chain: [u8; 32] = h.finalize().into();
        if rest[17 + len..25 + len] != chain[..8] {
            return self.fail("hash chain broken (content altered)");
        }
        let frame = Frame {
            kind,
            time_us,
            payload,
            offset: self.pos,
        };
        self.chain = chain;
        self.pos += FRAME_OVERHEAD + len;
        self.index += 1;
        Some(frame)
    }
}

/// Checks a whole recording. `check` verifies an Ed25519 signature of a message with the
/// signer's key (`check(message, signature) -> valid`).
pub fn verify(file: &[u8], check: impl Fn(&[u8], &[u8]) -> bool) -> Verdict {
    let (header, mut frames) = match Frames::new(file) {
        Ok(x) => x,
        Err(d) => return Verdict::Tampered(d),
    };
    let (mut count, mut signed, mut end_us) = (0u64, 0u64, 0u64);
    let (mut signed_len, mut signed_end_us) = (0usize, 0u64);
    let mut before = frames.head();
    while let Some(f) = frames.next() {
        end_us = f.time_us;
        let bad = |why| {
            Verdict::Tampered(Damage::Frame {
                frame: count,
                offset: f.offset,
                why,
            })
        };
        match f.kind {
            Kind::Checkpoint => {
                if f.payload.len() != 96 || f.payload[..32] != before {
                    return bad("checkpoint does not match the chain");
                }
                if !check(
                    &signed_message(b"checkpoint", &before, &count.to_le_bytes()),
                    &f.payload[32..],
                ) {
                    return bad("checkpoint signature invalid");
                }
                signed = count + 1;
                signed_len = file.len() - frames.remaining();
                signed_end_us = f.time_us;
            }
            Kind::Trailer => {
                let p = f.payload;
                let Some(jlen) = p
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                else {
                    return bad("trailer too short");
                };
                if p.len() != 4 + jlen + 96 || p[4 + jlen..4 + jlen + 32] != before {
                    return bad("trailer does not match the chain");
                }
                let json = &p[4..4 + jlen];
                if !check(
                    &signed_message(b"trailer", &before, json),
                    &p[4 + jlen + 32..],
                ) {
                    return bad("trailer signature invalid");
                }
                let Ok(summary) = serde_json::from_slice::<Summary>(json) else {
                    return bad("trailer summary unreadable");
                };
                if frames.remaining() != 0 {
                    return bad("bytes follow the trailer");
                }
                return Verdict::Intact {
                    header,
                    summary,
                    frames: count + 1,
                };
            }
            Kind::Down | Kind::Up | Kind::Event => {}
        }
        count += 1;
        before = frames.head();
    }
    if let Some(d) = frames.damage.take() {
        return Verdict::Tampered(d);
    }
    if signed == 0 {
        return Verdict::Unsigned {
            header,
            frames: count,
            trailing_bytes: frames.remaining(),
            end_us,
        };
    }
    Verdict::Truncated {
        header,
        frames: count,
        signed_frames: signed,
        signed_len,
        signed_end_us,
        trailing_bytes: frames.remaining(),
        end_us,
    }
}

impl Verdict {
    /// The part of the file a signature vouches for: the bytes and the recorded time they end
    /// at. `None` when nothing is signed (an unsigned or a tampered file).
    pub fn signed_part(&self, file_len: usize) -> Option<(usize, u64)> {
        match self {
            Self::Intact { summary, .. } => Some((file_len, summary.duration_us)),
            Self::Truncated {
                signed_len,
                signed_end_us,
                ..
            } => Some((*signed_len, *signed_end_us)),
            Self::Unsigned { .. } | Self::Tampered(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            version: 1,
            session: "s1".into(),
            tenant: "default".into(),
            agent: "pc1".into(),
            service: "vnc".into(),
            operator: "alice".into(),
            view_only: false,
            started_at: "2026-11-28T00:00:00.000Z".into(),
            content: Content::Rfb,
            signer: "00".into(),
            segment: 1,
        }
    }

    // A stand-in signature for the codec's own tests: the broker signs with Ed25519.
    fn sign(m: &[u8]) -> [u8; 64] {
        let d: [u8; 32] = Sha256::digest(m).into();
        let mut s = [0u8; 64];
        s[..32].copy_from_slice(&d);
        s[32..].copy_from_slice(&d);
        s
    }
    fn check(m: &[u8], s: &[u8]) -> bool {
        s == sign(m)
    }

    fn sample(finish: bool) -> Vec<u8> {
        let (mut w, mut out) = Writer::start(&header());
        w.frame(Kind::Down, 10, b"RFB server init", &mut out);
        w.frame(Kind::Up, 20, b"\x03\x00", &mut out);
        w.checkpoint(30, sign, &mut out);
        w.frame(Kind::Down, 40, &[7; 1000], &mut out);
        w.frame(Kind::Event, 50, br#"{"input":"key"}"#, &mut out);
        if finish {
            let summary = Summary {
                ended_at: "x".into(),
                end_reason: "viewer_closed".into(),
                duration_us: 60,
                bytes_up: 2,
                bytes_down: 1015,
                frames: w.frames(),
            };
            w.finish(60, &summary, sign, &mut out);
        }
        out
    }

    #[test]
    fn a_complete_recording_is_intact_and_readable() {
        let file = sample(true);
        match verify(&file, check) {
            Verdict::Intact {
                header: h,
                summary,
                frames,
            } => {
                assert_eq!(h, header());
                assert_eq!(frames, 6);
                assert_eq!(summary.bytes_down, 1015);
            }
            other => panic!("{other:?}"),
        }
        let (_, frames) = Frames::new(&file).unwrap();
        let kinds: Vec<_> = frames.map(|f| (f.kind, f.time_us)).collect();
        assert_eq!(kinds[0], (Kind::Down, 10));
        assert_eq!(kinds[3], (Kind::Down, 40));
    }

    #[test]
    fn a_cut_recording_says_which_frames_are_signed_at_every_length() {
        let file = sample(false);
        let (_, head_len, _) = read_header(&file).unwrap();
        let checkpoint_end = {
            let (_, frames) = Frames::new(&file).unwrap();
            let cp = frames.take(3).last().unwrap();
            cp.offset + FRAME_OVERHEAD + cp.payload.len()
        };
        for cut in head_len..=file.len() {
            match verify(&file[..cut], check) {
                Verdict::Truncated {
                    frames,
                    signed_frames,
                    signed_len,
                    signed_end_us,
                    end_us,
                    ..
                } => {
                    assert!(
                        cut >= checkpoint_end,
                        "signed before the checkpoint at {cut}"
                    );
                    assert_eq!(
                        (signed_frames, signed_len, signed_end_us),
                        (3, checkpoint_end, 30)
                    );
                    let last = Frames::new(&file[..cut]).unwrap().1.last();
                    assert_eq!(end_us, last.map_or(0, |f| f.time_us), "cut at {cut}");
                    if cut == file.len() {
                        assert_eq!((frames, signed_frames), (5, 3));
                    }
                }
                // Before the first checkpoint nothing is signed: not "consistent".
                Verdict::Unsigned { frames, .. } => {
                    assert!(cut < checkpoint_end, "cut at {cut}");
                    assert!(frames <= 2);
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        // A complete recording cut anywhere is truncated too, never tampered.
        let full = sample(true);
        assert!(matches!(
            verify(&full[..full.len() - 1], check),
            Verdict::Truncated { .. }
        ));
        // In a cut file too, a flipped byte in a whole frame is tampering, not truncation.
        let mut cut = file.clone();
        let at = cut.len() - 30;
        cut[at] ^= 1;
        assert!(matches!(verify(&cut, check), Verdict::Tampered(_)));
    }

    #[test]
    fn flipping_any_byte_is_detected() {
        let file = sample(true);
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x01;
            let v = verify(&bad, check);
            assert!(matches!(v, Verdict::Tampered(_)), "flip at {i} gave {v:?}");
        }
        let mut extra = file.clone();
        extra.push(0);
        assert!(matches!(verify(&extra, check), Verdict::Tampered(_)));
        assert!(matches!(
            verify(b"GIF89a", check),
            Verdict::Tampered(Damage::NotARecording)
        ));
    }

    #[test]
    fn frames_appended_after_a_checkpoint_are_reported_unsigned() {
        // The attack: cut a recording after a checkpoint, append frames with a recomputed
        // chain. Every frame checks, but the signatures cover the prefix only, and say so.
        let file = sample(false);
        let (signed_len, signed_end) = verify(&file, check).signed_part(file.len()).unwrap();
        let (mut forger, end) = Writer::after(&file[..signed_len]).unwrap();
        assert_eq!(end, signed_len);
        let mut forged = file[..signed_len].to_vec();
        forger.frame(Kind::Down, 9_000_000, b"what never happened", &mut forged);
        forger.frame(Kind::Event, 9_500_000, br#"{"input":1}"#, &mut forged);
        match verify(&forged, check) {
            Verdict::Truncated {
                frames,
                signed_frames,
                signed_len: len,
                signed_end_us,
                end_us,
                ..
            } => {
                assert_eq!((frames, signed_frames), (5, 3));
                assert_eq!((len, signed_end_us), (signed_len, signed_end));
                assert_eq!(
                    end_us, 9_500_000,
                    "the forged frames are read, and told apart"
                );
            }
            other => panic!("{other:?}"),
        }
        // A forged trailer needs the broker's key.
        let summary = Summary {
            ended_at: "x".into(),
            end_reason: "viewer_closed".into(),
            duration_us: 9_600_000,
            bytes_up: 0,
            bytes_down: 0,
            frames: forger.frames(),
        };
        forger.finish(9_600_000, &summary, |_| [7; 64], &mut forged);
        assert!(matches!(verify(&forged, check), Verdict::Tampered(_)));
    }

    #[test]
    fn a_recording_without_any_signature_is_unsigned() {
        let (mut w, mut out) = Writer::start(&header());
        w.frame(Kind::Down, 10, b"RFB server init", &mut out);
        assert!(matches!(
            verify(&out, check),
            Verdict::Unsigned { frames: 1, .. }
        ));
        assert_eq!(verify(&out, check).signed_part(out.len()), None);
    }

    #[test]
    fn forged_signatures_are_refused() {
        let file = sample(true);
        assert!(matches!(verify(&file, |_, _| false), Verdict::Tampered(_)));
    }
}
