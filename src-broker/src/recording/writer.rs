//! Session recordings: one append-only file per recorded session, in the format of
//! `passerelle_proto::recording`, signed with the broker's recording key.
//!
//! The live session never waits on the disk: bridges hand frames to a queue bounded in bytes, and
//! a writer thread appends them, with a signed checkpoint about every second (so a crash leaves an
//! authenticated prefix) and a signed trailer at the end. When the queue overflows (a disk slower
//! than the session) or a write fails (a full disk), the recording fails, and the tenant's policy
//! decides: `fail_closed` ends the session, `fail_open` lets it go on unrecorded; either is audited.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use passerelle_proto::recording::{Content, Header, Kind, Summary, Writer};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use tokio_util::sync::CancellationToken;

use crate::secrets::write_private_file;

/// File name of the recording key inside the data dir.
pub const KEY_FILE: &str = "recording-key.pk8";
/// How often a checkpoint is written while frames arrive.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

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

enum Item {
    Frame(Kind, u64, bytes::Bytes),
    Finish(Summary, tokio::sync::oneshot::Sender<()>),
}

/// A recording in progress.
pub struct Recording {
    pub path: PathBuf,
    pub content: Content,
    tx: Mutex<Option<mpsc::Sender<Item>>>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    started: Instant,
    /// Cancelled when the recording fails; `failure` says why.
    pub failed: CancellationToken,
    /// Cancelled once the trailer is written (or the writer gave up).
    pub finished: CancellationToken,
    failure: Arc<Mutex<Option<String>>>,
    stopped: AtomicBool,
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn fail(failure: &Mutex<Option<String>>, token: &CancellationToken, why: String) {
    let mut f = failure.lock().unwrap_or_else(|p| p.into_inner());
    if f.is_none() {
        *f = Some(why);
    }
    token.cancel();
}

impl Recording {
    /// Creates the file and starts its writer on `tasks`. `limit` bounds the bytes queued.
    pub fn start(
        path: PathBuf,
        header: &Header,
        key: Arc<SigningKey>,
        limit: usize,
        tasks: &tokio_util::task::TaskTracker,
    ) -> anyhow::Result<Arc<Self>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let (mut writer, head) = Writer::start(header);
        file.write_all(&head)
            .with_context(|| format!("writing {}", path.display()))?;
        let (tx, rx) = mpsc::channel::<Item>();
        let rec = Arc::new(Self {
            path: path.clone(),
            content: header.content,
            tx: Mutex::new(Some(tx)),
            queued: Arc::new(AtomicUsize::new(0)),
            limit,
            started: Instant::now(),
            failed: CancellationToken::new(),
            finished: CancellationToken::new(),
            failure: Arc::new(Mutex::new(None)),
            stopped: AtomicBool::new(false),
        });
        let (queued, failure, token, started) = (
            rec.queued.clone(),
            rec.failure.clone(),
            rec.failed.clone(),
            rec.started,
        );
        tasks.spawn_blocking(move || {
            let mut file = std::io::BufWriter::with_capacity(256 * 1024, file);
            let mut buf = Vec::with_capacity(256 * 1024);
            let mut last_checkpoint = Instant::now();
            let mut dirty = false;
            let mut broken = false;
            loop {
                let item = rx.recv_timeout(CHECKPOINT_EVERY);
                let now_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                match item {
                    Ok(Item::Frame(kind, t, data)) => {
                        queued.fetch_sub(data.len(), Ordering::AcqRel);
                        if broken {
                            continue;
                        }
                        writer.frame(kind, t, &data, &mut buf);
                        dirty = true;
                    }
                    Ok(Item::Finish(summary, done)) => {
                        if !broken {
                            let summary = Summary {
                                frames: writer.frames(),
                                ..summary
                            };
                            writer.finish(now_us, &summary, |m| key.sign(m), &mut buf);
                            let result = file
                                .write_all(&buf)
                                .and_then(|()| file.flush())
                                .and_then(|()| file.get_ref().sync_all());
                            if let Err(e) = result {
                                fail(&failure, &token, format!("writing {}: {e}", path.display()));
                            }
                        }
                        let _ = done.send(());
                        return;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        // Dropped without a trailer: leave a consistent, truncated file.
                        if !broken && dirty {
                            writer.checkpoint(now_us, |m| key.sign(m), &mut buf);
                            let _ = file.write_all(&buf).and_then(|()| file.flush());
                        }
                        return;
                    }
                }
                if broken {
                    continue;
                }
                if dirty && (last_checkpoint.elapsed() >= CHECKPOINT_EVERY || buf.len() >= 1 << 20)
                {
                    if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                        writer.checkpoint(now_us, |m| key.sign(m), &mut buf);
                        last_checkpoint = Instant::now();
                        dirty = false;
                    }
                    let result = file.write_all(&buf).and_then(|()| file.flush());
                    buf.clear();
                    if let Err(e) = result {
                        broken = true;
                        fail(&failure, &token, format!("writing {}: {e}", path.display()));
                    }
                }
            }
        });
        Ok(rec)
    }

    fn send(&self, item: Item) -> bool {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.as_ref().is_some_and(|tx| tx.send(item).is_ok())
    }

    /// Microseconds since the recording started.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Queues a frame; never waits. Over the queue's limit, the recording fails.
    pub fn record(&self, kind: Kind, data: bytes::Bytes) {
        if self.failed.is_cancelled() || self.stopped.load(Ordering::Acquire) {
            return;
        }
        let queued = self.queued.fetch_add(data.len(), Ordering::AcqRel) + data.len();
        if queued > self.limit {
            self.queued.fetch_sub(data.len(), Ordering::AcqRel);
            fail(
                &self.failure,
                &self.failed,
                "the recording fell behind the session (disk too slow)".into(),
            );
            return;
        }
        if !self.send(Item::Frame(kind, self.now_us(), data)) {
            fail(
                &self.failure,
                &self.failed,
                "the recording writer stopped".into(),
            );
        }
    }

    /// Queues a JSON event.
    pub fn event(&self, json: &serde_json::Value) {
        self.record(Kind::Event, bytes::Bytes::from(json.to_string()));
    }

    /// Why the recording failed, once it has.
    pub fn failure(&self) -> Option<String> {
        self.failure
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
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let sent = self.send(Item::Finish(summary, done_tx));
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
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
        let tasks = tokio_util::task::TaskTracker::new();
        let path = dir.path().join("r/s.psrec");
        let rec = Recording::start(path.clone(), &header(&key), key, 1 << 20, &tasks).unwrap();
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
        let tasks = tokio_util::task::TaskTracker::new();
        let rec =
            Recording::start(dir.path().join("o.psrec"), &header(&key), key, 10, &tasks).unwrap();
        rec.record(Kind::Down, bytes::Bytes::from(vec![0u8; 11]));
        assert!(rec.failed.is_cancelled());
        assert!(rec.failure().unwrap().contains("fell behind"));
    }
}
