//! The threads that write recordings: a fixed few (`recording_writer_threads`), whatever the
//! number of recordings, each owning a share of the open files. A recording's frames are queued
//! to its thread, which appends them, signs a checkpoint about every second while frames arrive
//! (so that a crash leaves an authenticated prefix), and writes the signed trailer at the end.
//!
//! Memory is bounded twice: per recording (`recording_buffer_bytes`) and over every recording
//! (`recording_buffer_total_bytes`); a recording over either fails, and the tenant's policy
//! decides what happens to its session. Each open file holds at most [`FLUSH_AT`] bytes of
//! encoded frames between writes.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use passerelle_proto::recording::{Kind, Summary, Writer};

use super::writer::{Failure, SigningKey};

/// How often a checkpoint is written while frames arrive.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Encoded bytes a file holds before they are written.
const FLUSH_AT: usize = 64 * 1024;

/// What a recording's thread is told.
pub(super) enum Item {
    Frame(Kind, u64, bytes::Bytes),
    /// Write the trailer, sync, close; answer when done.
    Finish(Summary, tokio::sync::oneshot::Sender<()>),
    /// Close without a trailer (the recording was dropped): a truncated, consistent file.
    Abandon,
}

/// A file handed to a thread.
pub(super) struct Open {
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) writer: Writer,
    pub(super) key: Arc<SigningKey>,
    pub(super) started: Instant,
    /// The recording's queued bytes, given back as they are written.
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) failure: Arc<Failure>,
}

enum Msg {
    Open(u64, Box<Open>),
    Item(u64, Item),
    #[cfg(test)]
    Stall(Duration),
}

/// The recording threads.
pub struct Writers {
    threads: Vec<mpsc::Sender<Msg>>,
    next_id: AtomicU64,
    /// Bytes queued over every recording.
    queued: Arc<AtomicUsize>,
    limit: usize,
}

impl std::fmt::Debug for Writers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writers")
            .field("threads", &self.threads.len())
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .finish()
    }
}

impl Writers {
    /// Starts `threads` writer threads (at least one); `limit` bounds the bytes queued over
    /// every recording. The threads end once `Writers` and every recording are dropped.
    pub fn start(threads: usize, limit: usize) -> anyhow::Result<Arc<Self>> {
        let queued = Arc::new(AtomicUsize::new(0));
        let senders = (0..threads.max(1))
            .map(|i| {
                let (tx, rx) = mpsc::channel();
                let total = queued.clone();
                std::thread::Builder::new()
                    .name(format!("passerelle-rec-{i}"))
                    .spawn(move || run(&rx, &total))
                    .context("starting a recording writer thread")?;
                Ok(tx)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Arc::new(Self {
            threads: senders,
            next_id: AtomicU64::new(1),
            queued,
            limit,
        }))
    }

    fn thread(&self, id: u64) -> &mpsc::Sender<Msg> {
        &self.threads[(id % self.threads.len() as u64) as usize]
    }

    /// Hands an open file to a thread; returns its recording's id.
    pub(super) fn open(&self, open: Open) -> anyhow::Result<u64> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.thread(id)
            .send(Msg::Open(id, Box::new(open)))
            .map_err(|_| anyhow::anyhow!("the recording writers stopped"))?;
        Ok(id)
    }

    /// Counts `n` bytes about to be queued; false (and nothing counted) over the limit.
    pub(super) fn reserve(&self, n: usize) -> bool {
        let total = self.queued.fetch_add(n, Ordering::AcqRel) + n;
        if total > self.limit {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Gives back bytes [`Writers::reserve`] counted that were not queued after all.
    pub(super) fn release(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
    }

    /// Sends an item to a recording's thread; false when the thread is gone.
    pub(super) fn send(&self, id: u64, item: Item) -> bool {
        self.thread(id).send(Msg::Item(id, item)).is_ok()
    }

    /// Makes every thread sleep for `d` (a disk slower than the session), for tests.
    #[cfg(test)]
    pub(super) fn stall_for_tests(&self, d: Duration) {
        for t in &self.threads {
            let _ = t.send(Msg::Stall(d));
        }
    }
}

/// An open recording on its thread.
struct Active {
    open: Open,
    buf: Vec<u8>,
    last_checkpoint: Instant,
    dirty: bool,
    broken: bool,
}

impl Active {
    fn now_us(&self) -> u64 {
        u64::try_from(self.open.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Writes what is buffered; a failure breaks the recording (policy applies).
    fn write_out(&mut self) {
        if self.broken || self.buf.is_empty() {
            return;
        }
        if let Err(e) = self.open.file.write_all(&self.buf) {
            self.broken = true;
            let path = self.open.path.display();
            self.open.failure.fail(format!("writing {path}: {e}"));
        }
        self.buf.clear();
    }

    fn frame(&mut self, kind: Kind, t: u64, data: &[u8]) {
        if self.broken {
            return;
        }
        self.open.writer.frame(kind, t, data, &mut self.buf);
        self.dirty = true;
        if self.buf.len() >= FLUSH_AT {
            self.write_out();
        }
    }

    /// Signs the chain if frames came since the last checkpoint and a second has passed.
    fn tick(&mut self) {
        if self.broken || !self.dirty || self.last_checkpoint.elapsed() < CHECKPOINT_EVERY {
            return;
        }
        let now = self.now_us();
        let key = self.open.key.clone();
        self.open
            .writer
            .checkpoint(now, |m| key.sign(m), &mut self.buf);
        self.last_checkpoint = Instant::now();
        self.dirty = false;
        self.write_out();
    }

    fn finish(mut self, summary: Summary) {
        if self.broken {
            return;
        }
        let summary = Summary {
            frames: self.open.writer.frames(),
            ..summary
        };
        let now = self.now_us();
        let key = self.open.key.clone();
        let writer = self.open.writer;
        let mut buf = std::mem::take(&mut self.buf);
        writer.finish(now, &summary, |m| key.sign(m), &mut buf);
        let result = self
            .open
            .file
            .write_all(&buf)
            .and_then(|()| self.open.file.sync_all());
        if let Err(e) = result {
            let path = self.open.path.display();
            self.open.failure.fail(format!("writing {path}: {e}"));
        }
    }

    fn abandon(mut self) {
        if !self.broken && self.dirty {
            let now = self.now_us();
            let key = self.open.key.clone();
            self.open
                .writer
                .checkpoint(now, |m| key.sign(m), &mut self.buf);
        }
        self.write_out();
    }
}

/// One writer thread: its files, in order of the messages.
fn run(rx: &mpsc::Receiver<Msg>, total: &AtomicUsize) {
    let mut files: HashMap<u64, Active> = HashMap::new();
    let mut swept = Instant::now();
    loop {
        let msg = match rx.recv_timeout(CHECKPOINT_EVERY / 4) {
            Ok(msg) => Some(msg),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match msg {
            None => {}
            Some(Msg::Open(id, open)) => {
                files.insert(
                    id,
                    Active {
                        open: *open,
                        buf: Vec::new(),
                        last_checkpoint: Instant::now(),
                        dirty: false,
                        broken: false,
                    },
                );
            }
            Some(Msg::Item(id, Item::Frame(kind, t, data))) => {
                total.fetch_sub(data.len(), Ordering::AcqRel);
                if let Some(f) = files.get_mut(&id) {
                    f.open.queued.fetch_sub(data.len(), Ordering::AcqRel);
                    f.frame(kind, t, &data);
                }
            }
            Some(Msg::Item(id, Item::Finish(summary, done))) => {
                if let Some(f) = files.remove(&id) {
                    f.finish(summary);
                }
                let _ = done.send(());
            }
            Some(Msg::Item(id, Item::Abandon)) => {
                if let Some(f) = files.remove(&id) {
                    f.abandon();
                }
            }
            #[cfg(test)]
            Some(Msg::Stall(d)) => std::thread::sleep(d),
        }
        // Checkpoints are due once a second: look at every file a few times a second, not at
        // every message.
        if swept.elapsed() >= CHECKPOINT_EVERY / 4 {
            for f in files.values_mut() {
                f.tick();
            }
            swept = Instant::now();
        }
    }
    for (_, f) in files.drain() {
        f.abandon();
    }
}
