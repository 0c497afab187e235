use super::*;
use passerelle_proto::recording::{Header, Writer};

fn header(content: Content) -> Header {
    Header {
        version: 1,
        session: "s1".into(),
        tenant: "default".into(),
        agent: "a".into(),
        service: if content == Content::Rfb {
            "vnc"
        } else {
            "rdp"
        }
        .into(),
        operator: "alice".into(),
        view_only: false,
        started_at: "2026-01-01T00:00:00Z".into(),
        content,
        signer: String::new(),
        segment: 1,
    }
}

/// A 4x2 ServerInit: 32 bpp, depth 24, little endian, red at bit 16 (the server's BGRX).
fn server_init() -> Vec<u8> {
    let mut m = vec![
        0, 4, 0, 2, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
    ];
    m.extend(4u32.to_be_bytes());
    m.extend(b"test");
    m
}

/// noVNC's ClientInit and SetPixelFormat: red at bit 0 (RGBX in memory).
fn viewer_start() -> Vec<u8> {
    vec![
        1, 0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 0, 8, 16, 0, 0, 0,
    ]
}

/// A FramebufferUpdate with one Raw rectangle covering the 4x2 screen in one colour, in the
/// viewer's format (R, G, B, X).
fn fill(r: u8, g: u8, b: u8) -> Vec<u8> {
    let mut m = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 4, 0, 2, 0, 0, 0, 0];
    for _ in 0..8 {
        m.extend([r, g, b, 0]);
    }
    m
}

fn recording(frames: &[(Kind, u64, Vec<u8>)]) -> Vec<u8> {
    let (mut w, mut out) = Writer::start(&header(Content::Rfb));
    for (kind, t, payload) in frames {
        w.frame(*kind, *t, payload, &mut out);
    }
    out
}

/// Per decoded frame: its time, its operations and the screen's first pixel after it.
type Seen = Vec<(u64, Vec<Op>, [u8; 4])>;

fn timeline(file: &[u8]) -> (Seen, Played) {
    let mut seen = Vec::new();
    let played = play(file, |u| {
        let px = [
            u.screen.rgba.first().copied().unwrap_or(0),
            u.screen.rgba.get(1).copied().unwrap_or(0),
            u.screen.rgba.get(2).copied().unwrap_or(0),
            u.screen.rgba.get(3).copied().unwrap_or(0),
        ];
        seen.push((u.time_us, u.ops.to_vec(), px));
        ControlFlow::Continue(())
    })
    .expect("plays");
    (seen, played)
}

fn colours(ops: &[Op]) -> Vec<[u8; 3]> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Rect { rgba, .. } => Some([rgba[0], rgba[1], rgba[2]]),
            _ => None,
        })
        .collect()
}

#[test]
fn events_are_attributed_to_the_frame_that_completes_them() {
    let red = fill(255, 0, 0);
    let (red_a, red_b) = red.split_at(20);
    let mut two = fill(0, 255, 0);
    two.extend(fill(0, 0, 255));
    two.push(2); // Bell
    let mut init_and_half = server_init();
    init_and_half.extend(&fill(9, 9, 9)[..10]);
    let file = recording(&[
        (Kind::Down, 1_000, server_init()[..10].to_vec()),
        (Kind::Up, 1_500, viewer_start()),
        (Kind::Down, 2_000, server_init()[10..].to_vec()),
        (Kind::Down, 3_000, red_a.to_vec()),
        (Kind::Event, 3_500, br#"{"input":1}"#.to_vec()),
        (Kind::Down, 4_000, red_b.to_vec()),
        (Kind::Down, 5_000, two),
    ]);
    let (seen, played) = timeline(&file);
    assert_eq!(played.frames, 4);
    assert_eq!(played.decode_error, None);
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        [2_000, 3_000, 4_000, 5_000]
    );
    assert_eq!(
        seen[0].1,
        [Op::Resize {
            width: 4,
            height: 2
        }]
    );
    assert!(seen[1].1.is_empty(), "half a rectangle draws nothing");
    assert_eq!(colours(&seen[2].1), [[255, 0, 0]]);
    assert_eq!(seen[2].2, [255, 0, 0, 255], "the screen is red at 4 ms");
    assert_eq!(colours(&seen[3].1), [[0, 255, 0], [0, 0, 255]]);
    assert_eq!(seen[3].1.last(), Some(&Op::Bell));
    assert_eq!(seen[3].2, [0, 0, 255, 255]);
}

#[test]
fn every_split_of_the_stream_gives_the_same_screens() {
    let mut stream = server_init();
    let updates = [fill(255, 0, 0), fill(0, 255, 0), fill(0, 0, 255)];
    let mut ends = Vec::new();
    for u in &updates {
        stream.extend(u);
        ends.push(stream.len());
    }
    for size in [1, 2, 3, 7, 16, 23, 64] {
        let mut frames = vec![(Kind::Up, 0, viewer_start())];
        for (i, chunk) in stream.chunks(size).enumerate() {
            frames.push((Kind::Down, (i as u64 + 1) * 10, chunk.to_vec()));
        }
        let (seen, _) = timeline(&recording(&frames));
        let got: Vec<(u64, [u8; 3])> = seen
            .iter()
            .flat_map(|(t, ops, _)| colours(ops).into_iter().map(move |c| (*t, c)))
            .collect();
        // Each update belongs to the frame holding its last byte.
        let want: Vec<(u64, [u8; 3])> = ends
            .iter()
            .zip([[255, 0, 0], [0, 255, 0], [0, 0, 255]])
            .map(|(end, c)| (((end - 1) / size) as u64 * 10 + 10, c))
            .collect();
        assert_eq!(got, want, "chunks of {size}");
    }
}

#[test]
fn a_truncated_recording_plays_to_its_last_whole_frame() {
    let file = recording(&[
        (Kind::Up, 0, viewer_start()),
        (Kind::Down, 10, server_init()),
        (Kind::Down, 20, fill(255, 0, 0)),
        (Kind::Down, 30, fill(0, 255, 0)),
    ]);
    for cut in [file.len() - 1, file.len() - 30] {
        let (seen, played) = timeline(&file[..cut]);
        assert_eq!(
            seen.last().map(|s| (s.0, s.2)),
            Some((20, [255, 0, 0, 255]))
        );
        assert_eq!(played.end_us, 20);
        assert!(played.damage.is_none());
    }
    let mut bad = file.clone();
    let at = bad.len() - 10;
    bad[at] ^= 1;
    let (seen, played) = timeline(&bad);
    assert_eq!(seen.len(), 2);
    assert!(played.damage.is_some());
}

#[test]
fn without_set_pixel_format_the_server_format_is_used() {
    // The server's format: red at bit 16, so bytes are B, G, R, X.
    let file = recording(&[
        (Kind::Down, 10, server_init()),
        (Kind::Down, 20, fill(0, 0, 255)),
    ]);
    let (seen, _) = timeline(&file);
    assert_eq!(seen[1].2, [255, 0, 0, 255]);
}

#[test]
fn what_cannot_be_played_says_why() {
    let (_, meta) = Writer::start(&header(Content::Metadata));
    assert!(matches!(
        play(&meta, |_| ControlFlow::Continue(())),
        Err(PlaybackError::MetadataOnly(_))
    ));
    assert!(matches!(
        play(b"hello", |_| ControlFlow::Continue(())),
        Err(PlaybackError::Damaged(_))
    ));
    let file = recording(&[(Kind::Down, 10, server_init()[..5].to_vec())]);
    assert!(matches!(
        play(&file, |_| ControlFlow::Continue(())),
        Err(PlaybackError::NoScreen)
    ));
    // Hextile (5) is not decodable: playback stops there with the reason, no panic.
    let mut hextile = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 4, 0, 2, 0, 0, 0, 5];
    hextile.extend([1; 40]);
    let file = recording(&[
        (Kind::Down, 10, server_init()),
        (Kind::Down, 20, fill(1, 2, 3)),
        (Kind::Down, 30, hextile),
        (Kind::Down, 40, fill(1, 2, 3)),
    ]);
    let (seen, played) = timeline(&file);
    assert_eq!(seen.len(), 3);
    assert!(played.decode_error.is_some());
}
