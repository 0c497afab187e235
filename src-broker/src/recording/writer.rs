//! Session recordings: one append-only file per recorded session, in the format of
//! `passerelle_proto::recording`, signed with the broker's recording key.
//!
//! The live session never waits on the disk: bridges hand frames to a queue bounded in bytes (per
//! recording, and over all recordings), and one of a few writer threads ([`super::pool`])
//! appends them, with a signed checkpoint about every second (so a crash leaves an
//! authenticated prefix) and a signed trailer at the end. When the queue overflows (a disk slower
//! than the session) or a write fails (a full disk), the recording fails, and the tenant's policy
//! decides: `fail_closed` ends the session, `fail_open` lets it go on unrecorded; either is audited.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use passerelle_proto::recording::{Content, Header, Kind, Summary, Writer};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use tokio_util::sync::CancellationToken;

use super::pool::{Item, Open, Writers};

use crate::secrets::write_private_file;

/// File name of the recording key inside the data dir.
pub const KEY_FILE: &str = "recording-key.pk8";

/// The Ed25519 key that signs recordings.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public_hex())
    }
}

impl SigningKey {
    /// Loads the key, creating it (mode 0600) on first use.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        if !path.exists() {
            let rng = ring::rand::SystemRandom::new();
            let doc = Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| anyhow::anyhow!("generating the recording key"))?;
            write_private_file(&path, doc.as_ref())?;
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let pair = Ed25519KeyPair::from_pkcs8(&bytes)
            .map_err(|_| anyhow::anyhow!("{} is not an Ed25519 key", path.display()))?;
        Ok(Self { pair })
    }

    /// Hex of the public key.
    pub fn public_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    /// Signs a message.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

/// Checks an Ed25519 signature with a hex public key.
pub fn check_signature(public_hex: &str, message: &[u8], signature: &[u8]) -> bool {
    let Ok(public) = hex::decode(public_hex) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, public)
        .verify(message, signature)
        .is_ok()
}

/// Why a recording failed, and the token that says it did.
#[derive(Debug, Default)]
pub(super) struct Failure {
    why: Mutex<Option<String>>,
    /// Cancelled when the recording fails.
    pub(super) token: CancellationToken,
}

impl Failure {
    /// Records the first reason and cancels the token.
    pub(super) fn fail(&self, why: String) {
        let mut f = self.why.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(why);
        }
        self.token.cancel();
    }
}

/// A recording in progress.
pub struct Recording {
    pub path: PathBuf,
    pub content: Content,
    /// Which connection of its session (from 1).
    pub segment: u32,
    id: u64,
    writers: Arc<Writers>,
    /// Bytes queued for this recording's writer.
    queued: Arc<AtomicUsize>,
    limit: usize,
    started: Instant,
    /// Cancelled when the recording fails; `failure` says why.
    pub failed: CancellationToken,
    /// Cancelled once the trailer is written (or the writer gave up).
    pub finished: CancellationToken,
    failure: Arc<Failure>,
    stopped: AtomicBool,
    closed: AtomicBool,
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Recording {
    /// Creates the file (blocking: call it off the async threads) and hands it to one of the
    /// `writers`. `limit` bounds the bytes queued for this recording.
    pub fn start(
        path: PathBuf,
        header: &Header,
        key: Arc<SigningKey>,
        limit: usize,
        writers: &Arc<Writers>,
    ) -> anyhow::Result<Arc<Self>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let (writer, head) = Writer::start(header);
        file.write_all(&head)
            .with_context(|| format!("writing {}", path.display()))?;
        let failure = Arc::new(Failure::default());
        let queued = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let id = writers.open(Open {
            path: path.clone(),
            file,
            writer,
            key,
            started,
            queued: queued.clone(),
            failure: failure.clone(),
        })?;
        Ok(Arc::new(Self {
            path,
            content: header.content,
            segment: header.segment,
            id,
            writers: writers.clone(),
            queued,
            limit,
            started,
            failed: failure.token.clone(),
            finished: CancellationToken::new(),
            failure,
            stopped: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }))
    }

    /// Microseconds since the recording started.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Queues a frame; never waits. Over this recording's queue limit, or the writers' limit
    /// over all recordings, the recording fails.
    pub fn record(&self, kind: Kind, data: bytes::Bytes) {
        if self.failed.is_cancelled() || self.stopped.load(Ordering::Acquire) {
            return;
        }
        let n = data.len();
        let queued = self.queued.fetch_add(n, Ordering::AcqRel) + n;
        if queued > self.limit || !self.writers.reserve(n) {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            self.failure
                .fail("the recording fell behind the session (disk too slow)".into());
            return;
        }
        if !self
            .writers
            .send(self.id, Item::Frame(kind, self.now_us(), data))
        {
            self.writers.release(n);
            self.failure.fail("the recording writer stopped".into());
        }
    }

    /// Queues a JSON event.
    pub fn event(&self, json: &serde_json::Value) {
        self.record(Kind::Event, bytes::Bytes::from(json.to_string()));
    }

    /// Why the recording failed, once it has.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .why
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops taking frames (fail_open after a failure).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Writes the trailer and waits (bounded) for the file to be synced.
    pub async fn finish(&self, summary: Summary) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let sent = self.writers.send(self.id, Item::Finish(summary, done_tx));
        if sent
            && tokio::time::timeout(Duration::from_secs(10), done_rx)
                .await
                .is_err()
        {
            tracing::warn!(path = %self.path.display(), "recording trailer not written within 10 s");
        }
        self.finished.cancel();
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // Dropped without a trailer: the writer leaves a consistent, truncated file.
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.writers.send(self.id, Item::Abandon);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use passerelle_proto::recording::{Verdict, verify};

    fn header(key: &SigningKey) -> Header {
        Header {
            version: 1,
            session: "s".into(),
            tenant: "default".into(),
            agent: "pc1".into(),
            service: "vnc".into(),
            operator: "alice".into(),
            view_only: false,
            started_at: "2026-11-28T00:00:00.000Z".into(),
            content: Content::Rfb,
            signer: key.public_hex(),
            segment: 1,
        }
    }

    #[tokio::test]
    async fn writes_a_signed_recording_that_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(SigningKey::load_or_create(dir.path()).unwrap());
        let public = key.public_hex();
        let writers = Writers::start(1, 64 << 20).unwrap();
        let path = dir.path().join("r/s.psrec");
        let rec = Recording::start(path.clone(), &header(&key), key, 1 << 20, &writers).unwrap();
        rec.record(Kind::Down, bytes::Bytes::from_static(b"hello"));
        rec.record(Kind::Up, bytes::Bytes::from_static(b"world"));
        let summary = Summary {
            ended_at: "x".into(),
            end_reason: "viewer_closed".into(),
            duration_us: 1,
            bytes_up: 5,
            bytes_down: 5,
            frames: 2,
        };
        rec.finish(summary).await;
        let file = std::fs::read(&path).unwrap();
        let verdict = verify(&file, |m, s| check_signature(&public, m, s));
        assert!(
            matches!(verdict, Verdict::Intact { frames: 3, .. }),
            "{verdict:?}"
        );
        // Another key does not verify it.
        let other = SigningKey::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        let verdict = verify(&file, |m, s| check_signature(&other.public_hex(), m, s));
        assert!(matches!(verdict, Verdict::Tampered(_)));
    }

    #[tokio::test]
    async fn overflow_fails_the_recording_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(SigningKey::load_or_create(dir.path()).unwrap());
        let writers = Writers::start(1, 64 << 20).unwrap();
        let rec = Recording::start(
            dir.path().join("o.psrec"),
            &header(&key),
            key.clone(),
            10,
            &writers,
        )
        .unwrap();
        rec.record(Kind::Down, bytes::Bytes::from(vec![0u8; 11]));
        assert!(rec.failed.is_cancelled());
        assert!(rec.failure().unwrap().contains("fell behind"));
        // Over the writers' limit across recordings, a recording fails too.
        let small = Writers::start(1, 100).unwrap();
        let a = Recording::start(
            dir.path().join("a.psrec"),
            &header(&key),
            key.clone(),
            1 << 20,
            &small,
        )
        .unwrap();
        small.stall_for_tests(std::time::Duration::from_millis(300));
        a.record(Kind::Down, bytes::Bytes::from(vec![0u8; 80]));
        assert!(!a.failed.is_cancelled());
        let b = Recording::start(
            dir.path().join("b.psrec"),
            &header(&key),
            key,
            1 << 20,
            &small,
        )
        .unwrap();
        b.record(Kind::Down, bytes::Bytes::from(vec![0u8; 80]));
        assert!(
            b.failed.is_cancelled(),
            "160 queued bytes are over the writers' 100"
        );
    }

    #[tokio::test]
    async fn many_recordings_share_a_few_threads() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(SigningKey::load_or_create(dir.path()).unwrap());
        let public = key.public_hex();
        let writers = Writers::start(2, 64 << 20).unwrap();
        let recs: Vec<_> = (0..600)
            .map(|i| {
                let path = dir.path().join(format!("{i}.psrec"));
                Recording::start(path, &header(&key), key.clone(), 1 << 20, &writers).unwrap()
            })
            .collect();
        for rec in &recs {
            rec.record(Kind::Down, bytes::Bytes::from_static(b"frame"));
        }
        let writer_threads = thread_names()
            .iter()
            .filter(|n| n.starts_with("passerelle-rec"))
            .count();
        assert!(
            (1..=8).contains(&writer_threads),
            "600 recordings are written by {writer_threads} threads"
        );
        let summary = Summary {
            ended_at: "x".into(),
            end_reason: "viewer_closed".into(),
            duration_us: 1,
            bytes_up: 0,
            bytes_down: 5,
            frames: 0,
        };
        for rec in &recs {
            rec.finish(summary.clone()).await;
        }
        for i in 0..600 {
            let file = std::fs::read(dir.path().join(format!("{i}.psrec"))).unwrap();
            let verdict = verify(&file, |m, s| check_signature(&public, m, s));
            assert!(
                matches!(verdict, Verdict::Intact { .. }),
                "{i}: {verdict:?}"
            );
        }
    }

    /// Names of this process's threads.
    fn thread_names() -> Vec<String> {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Vec::new();
        };
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|n| n.trim().to_owned())
            .collect()
    }
}
