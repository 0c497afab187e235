//! Playback of RFB recordings: the screen over recorded time, decoded with vnc-rs.
//!
//! vnc-rs is a client, so the broker plays the server to it over an in-memory stream: it hands
//! out "RFB 003.008\n", security type None, SecurityResult OK, then the recorded Down stream
//! (which starts with the workstation's ServerInit), and discards what vnc-rs writes. vnc-rs is
//! told the pixel format the viewer asked for (its recorded SetPixelFormat), since that is the
//! format the server's updates are in.
//!
//! Exact time attribution: vnc-rs reads through three tasks (a network task copying our stream
//! into a channel, a decoder task, and an output channel of two events). The stream hands out
//! one recorded frame at a time and stays `Pending` until the next is released. After each
//! frame, the driver waits until the (current-thread) runtime is about to park: tokio calls the
//! `on_thread_park` hook only when no task is runnable, so at that moment the network task
//! waits on our stream, the decoder waits on an empty channel, and every complete message read
//! so far has been decoded. Its events are drained (which may wake the decoder, so this repeats
//! until a park finds no event) and attributed to that frame's time.
//!
//! Only frames up to the last whole, hash-consistent one are read: a truncated recording plays
//! up to where it was cut. Signatures are the caller's business ([`passerelle_proto::recording::verify`]).

use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use passerelle_proto::recording::{Content, Damage, Frames, Header, Kind};
use passerelle_proto::rfb;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use vnc::{PixelFormat, VncConnector, VncEncoding, VncError, VncEvent};

mod screen;
pub use screen::{Op, Screen};

/// The screen after the Down frame recorded at `time_us`, and the operations that frame made.
#[derive(Debug)]
pub struct Update<'a> {
    pub time_us: u64,
    /// When the next Down frame comes (`None` after the last): the screen stays as it is until
    /// then.
    pub next_us: Option<u64>,
    pub ops: &'a [Op],
    pub screen: &'a Screen,
}

/// Why a recording cannot be played.
#[derive(Debug, thiserror::Error)]
pub enum PlaybackError {
    #[error("{0}")]
    Damaged(Damage),
    #[error(
        "{0} recordings hold metadata only (the session is encrypted end to end); nothing to play"
    )]
    MetadataOnly(String),
    #[error("the recording ends before the workstation's first screen (no ServerInit)")]
    NoScreen,
    #[error("the recording's RFB stream cannot be decoded: {0}")]
    Decode(String),
}

/// How far a recording played.
#[derive(Debug, Clone, PartialEq)]
pub struct Played {
    pub header: Header,
    /// Time of the last whole frame read (any kind).
    pub end_us: u64,
    /// Down frames decoded.
    pub frames: u64,
    /// Set when reading stopped on damage rather than at the end.
    pub damage: Option<Damage>,
    /// Set when vnc-rs stopped on data it cannot decode; the screen is right up to there.
    pub decode_error: Option<String>,
}

/// Encodings vnc-rs is told it may receive (all it can decode).
const ENCODINGS: [VncEncoding; 9] = [
    VncEncoding::Tight,
    VncEncoding::Zrle,
    VncEncoding::Trle,
    VncEncoding::CopyRect,
    VncEncoding::Raw,
    VncEncoding::CursorPseudo,
    VncEncoding::DesktopSizePseudo,
    VncEncoding::LastRectPseudo,
    VncEncoding::ExtendedDesktopSizePseudo,
];

/// The pixel format the viewer asked for, from the recorded viewer-to-server stream (which
/// starts with ClientInit); `None` if it kept the server's.
pub fn viewer_pixel_format(up: &[u8]) -> Option<[u8; 16]> {
    rfb::client_messages(up.get(1..)?)
        .find(|m| m.first() == Some(&rfb::msg::SET_PIXEL_FORMAT) && m.len() == 20)
        .and_then(|m| m[4..20].try_into().ok())
}

/// The length of a complete ServerInit at the start of `down`, if there is one.
fn server_init_len(down: &[u8]) -> Option<usize> {
    let name = u32::from_be_bytes(down.get(20..24)?.try_into().ok()?) as usize;
    (down.len() >= 24 + name).then_some(24 + name)
}

/// Converts pixels in `pf` (true colour, 8/16/32 bits) to RGBA.
fn to_rgba(pf: &[u8; 16], data: &[u8], pixels: usize) -> Option<Vec<u8>> {
    let bpp = usize::from(pf[0] / 8);
    if !matches!(bpp, 1 | 2 | 4) || data.len() < pixels * bpp {
        return None;
    }
    let big = pf[2] != 0;
    let max = |i: usize| u32::from(u16::from_be_bytes([pf[i], pf[i + 1]])).max(1);
    let (rmax, gmax, bmax) = (max(4), max(6), max(8));
    let (rs, gs, bs) = (
        u32::from(pf[10]) & 31,
        u32::from(pf[11]) & 31,
        u32::from(pf[12]) & 31,
    );
    let mut out = Vec::with_capacity(pixels * 4);
    for px in data.chunks_exact(bpp).take(pixels) {
        let v = match (bpp, big) {
            (1, _) => u32::from(px[0]),
            (2, false) => u32::from(u16::from_le_bytes([px[0], px[1]])),
            (2, true) => u32::from(u16::from_be_bytes([px[0], px[1]])),
            (_, false) => u32::from_le_bytes([px[0], px[1], px[2], px[3]]),
            (_, true) => u32::from_be_bytes([px[0], px[1], px[2], px[3]]),
        };
        let c = |s: u32, m: u32| u8::try_from(((v >> s) & m) * 255 / m).unwrap_or(255);
        out.extend_from_slice(&[c(rs, rmax), c(gs, gmax), c(bs, bmax), 255]);
    }
    Some(out)
}

/// Encodes `width * height` RGBA pixels as a PNG.
pub fn png(
    width: u32,
    height: u32,
    rgba: &[u8],
    compression: png::Compression,
) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(compression);
    let mut w = enc.write_header()?;
    w.write_image_data(rgba)?;
    w.finish()?;
    Ok(out)
}

fn jpeg_to_rgba(data: &[u8], pixels: usize) -> Option<Vec<u8>> {
    let mut decoder = jpeg_decoder::Decoder::new(data);
    let decoded = decoder.decode().ok()?;
    let info = decoder.info()?;
    let mut out = Vec::with_capacity(pixels * 4);
    match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => {
            for p in decoded.chunks_exact(3) {
                out.extend_from_slice(&[p[0], p[1], p[2], 255]);
            }
        }
        jpeg_decoder::PixelFormat::L8 => {
            for &l in &decoded {
                out.extend_from_slice(&[l, l, l, 255]);
            }
        }
        _ => return None,
    }
    out.resize(pixels * 4, 0);
    Some(out)
}

/// Bytes released to vnc-rs so far; what it reads beyond them waits.
#[derive(Default)]
struct FeedState {
    data: Vec<u8>,
    pos: usize,
    waker: Option<Waker>,
}

#[derive(Clone, Default)]
struct Feed(Arc<Mutex<FeedState>>);

impl Feed {
    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release(&self, bytes: &[u8]) {
        let mut s = self.lock();
        if s.pos == s.data.len() {
            s.data.clear();
            s.pos = 0;
        }
        s.data.extend_from_slice(bytes);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }
}

impl AsyncRead for Feed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut s = self.lock();
        let n = buf.remaining().min(s.data.len() - s.pos);
        if n == 0 {
            s.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let start = s.pos;
        buf.put_slice(&s.data[start..start + n]);
        s.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Feed {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Counts the runtime's parks (moments when no task can run) and wakes whoever waits for one.
#[derive(Default)]
struct Idle {
    parks: AtomicU64,
    waker: Mutex<Option<Waker>>,
}

impl Idle {
    fn parked(&self) {
        self.parks.fetch_add(1, Ordering::SeqCst);
        if let Some(w) = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            w.wake();
        }
    }

    /// Resolves once every task of the runtime is waiting.
    async fn settled(&self) {
        let mut since = None;
        std::future::poll_fn(|cx| {
            let now = self.parks.load(Ordering::SeqCst);
            match since {
                Some(s) if now > s => return Poll::Ready(()),
                None => since = Some(now),
                Some(_) => {}
            }
            *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

/// Turns vnc-rs events into operations.
struct Ops<'a> {
    pf: &'a [u8; 16],
    ops: Vec<Op>,
    error: Option<String>,
}

impl Ops<'_> {
    /// New pixels for `r`, or why they are unusable.
    fn rect(&mut self, r: &vnc::Rect, rgba: Option<Vec<u8>>, unusable: &str) {
        match rgba {
            Some(rgba) => self.ops.push(Op::Rect {
                x: u32::from(r.x),
                y: u32::from(r.y),
                width: u32::from(r.width),
                height: u32::from(r.height),
                rgba,
            }),
            None => self.error = Some(unusable.to_owned()),
        }
    }

    fn event(&mut self, ev: VncEvent) {
        let pixels = |r: &vnc::Rect| usize::from(r.width) * usize::from(r.height);
        match ev {
            VncEvent::SetResolution(s) => self.ops.push(Op::Resize {
                width: u32::from(s.width),
                height: u32::from(s.height),
            }),
            VncEvent::DesktopUpdate(u) => {
                if let Some(l) = u.layout {
                    self.ops.push(Op::Resize {
                        width: u32::from(l.width),
                        height: u32::from(l.height),
                    });
                }
            }
            VncEvent::RawImage(r, data) => {
                let rgba = to_rgba(self.pf, &data, pixels(&r));
                self.rect(&r, rgba, "a rectangle's pixels do not match its size");
            }
            VncEvent::JpegImage(r, data) => {
                let rgba = jpeg_to_rgba(&data, pixels(&r));
                self.rect(&r, rgba, "a Tight JPEG rectangle is not a JPEG");
            }
            VncEvent::Copy(dst, src) => self.ops.push(Op::Copy {
                x: u32::from(dst.x),
                y: u32::from(dst.y),
                width: u32::from(dst.width),
                height: u32::from(dst.height),
                src_x: u32::from(src.x),
                src_y: u32::from(src.y),
            }),
            VncEvent::Bell => self.ops.push(Op::Bell),
            VncEvent::Text(t) => self.ops.push(Op::Text(t)),
            VncEvent::Error(e) => self.error = Some(e),
            // The cursor is drawn by the workstation's server (x11vnc) or not at all; the pixel
            // format is known already.
            _ => {}
        }
    }
}

/// Plays a recording: calls `sink` after each decoded Down frame with the operations it made
/// and the screen after them, until the recording ends, is damaged, cannot be decoded, or
/// `sink` breaks. Runs its own current-thread runtime: call it from a blocking context.
pub fn play(
    file: &[u8],
    mut sink: impl FnMut(Update<'_>) -> ControlFlow<()>,
) -> Result<Played, PlaybackError> {
    let (header, mut frames) = Frames::new(file).map_err(PlaybackError::Damaged)?;
    if header.content != Content::Rfb {
        return Err(PlaybackError::MetadataOnly(header.service.clone()));
    }
    let all: Vec<_> = frames.by_ref().collect();
    let mut played = Played {
        header,
        end_us: all.last().map_or(0, |f| f.time_us),
        frames: 0,
        damage: frames.damage.take(),
        decode_error: None,
    };
    let mut up = Vec::new();
    for f in all.iter().filter(|f| f.kind == Kind::Up) {
        if up.len() > 1 << 20 {
            break;
        }
        up.extend_from_slice(f.payload);
    }
    let downs: Vec<_> = all.iter().filter(|f| f.kind == Kind::Down).collect();
    // The frames that hold the whole ServerInit go first, in one piece.
    let mut head = Vec::new();
    let mut first = 0;
    while server_init_len(&head).is_none() {
        let f = downs.get(first).ok_or(PlaybackError::NoScreen)?;
        head.extend_from_slice(f.payload);
        first += 1;
    }
    let server_pf: [u8; 16] = head[4..20]
        .try_into()
        .map_err(|_| PlaybackError::NoScreen)?;
    let pf_bytes = viewer_pixel_format(&up).unwrap_or(server_pf);
    let pf = PixelFormat::try_from(pf_bytes).map_err(|e| PlaybackError::Decode(e.to_string()))?;
    if pf_bytes[3] == 0 {
        return Err(PlaybackError::Decode(
            "the viewer asked for a colour map, which playback does not read".into(),
        ));
    }

    let idle = Arc::new(Idle::default());
    let hook = idle.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .on_thread_park(move || hook.parked())
        .build()
        .map_err(|e| PlaybackError::Decode(format!("starting the decoder: {e}")))?;
    let feed = Feed::default();
    let mut screen = Screen::default();
    runtime.block_on(async {
        feed.release(b"RFB 003.008\n\x01\x01\x00\x00\x00\x00");
        feed.release(&head);
        let mut connector =
            VncConnector::<Feed, std::future::Ready<Result<String, VncError>>>::new(feed.clone())
                .set_pixel_format(pf)
                .allow_shared(true);
        for e in ENCODINGS {
            connector = connector.add_encoding(e);
        }
        let client = match connector.build() {
            Ok(state) => match state.try_start().await.and_then(|s| s.finish()) {
                Ok(c) => c,
                Err(e) => {
                    played.decode_error = Some(e.to_string());
                    return;
                }
            },
            Err(e) => {
                played.decode_error = Some(e.to_string());
                return;
            }
        };
        let mut next = first;
        loop {
            let mut ops = Ops {
                pf: &pf_bytes,
                ops: Vec::new(),
                error: None,
            };
            loop {
                idle.settled().await;
                let mut any = false;
                loop {
                    match client.poll_event().await {
                        Ok(Some(ev)) => {
                            any = true;
                            ops.event(ev);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            ops.error.get_or_insert_with(|| e.to_string());
                            break;
                        }
                    }
                }
                if !any {
                    break;
                }
            }
            // `next - 1` is the frame released last (the one completing ServerInit at first).
            let time_us = downs[next - 1].time_us;
            for op in &ops.ops {
                screen.apply(op);
            }
            played.frames += 1;
            let flow = sink(Update {
                time_us,
                next_us: downs.get(next).map(|f| f.time_us),
                ops: &ops.ops,
                screen: &screen,
            });
            if let Some(e) = ops.error {
                played.decode_error = Some(e);
                break;
            }
            if flow.is_break() || next >= downs.len() {
                break;
            }
            feed.release(downs[next].payload);
            next += 1;
        }
        let _ = client.close().await;
    });
    Ok(played)
}

#[cfg(test)]
mod tests;
