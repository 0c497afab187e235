//! The store as async code uses it. SQLite calls block, and the data threads (single-threaded
//! runtimes that also carry live bridges) must never wait on them: every query of [`Db::run`]
//! runs on the blocking pool, and audit events go to one writer thread that batches them
//! ([`Db::audit`] never waits). A slow disk or a long write then delays only the call that
//! needed the store, not the bridges of the thread it came from.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;

use super::{NewEvent, Store};

/// Audit events queued before a sender starts waiting (off the async threads) for room.
const AUDIT_QUEUE: usize = 4096;
/// Events written in one transaction at most.
const AUDIT_BATCH: usize = 256;

enum Item {
    Event(NewEvent),
    /// Answered once every event queued before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The store for async callers; cheap to clone.
#[derive(Clone)]
pub struct Db {
    store: Arc<Store>,
    audit: mpsc::SyncSender<Item>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Db {
    /// Wraps the store and starts its audit writer thread, which ends when the last `Db` is
    /// dropped (after writing what was queued).
    pub fn new(store: Arc<Store>) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(AUDIT_QUEUE);
        let writer = store.clone();
        std::thread::Builder::new()
            .name("passerelle-audit".into())
            .spawn(move || write_audit(&writer, &rx))
            .context("starting the audit writer")?;
        Ok(Self { store, audit: tx })
    }

    /// Runs `f` with the store on the blocking pool.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> anyhow::Result<R> + Send + 'static,
    ) -> anyhow::Result<R> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .context("a store call panicked or was cancelled")?
    }

    /// Queues an audit event; never waits. When the queue is full (the disk is far behind), the
    /// event waits for room on the blocking pool rather than being lost.
    pub fn audit(&self, event: NewEvent) {
        match self.audit.try_send(Item::Event(event)) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(item)) => {
                let tx = self.audit.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => drop(rt.spawn_blocking(move || {
                        let _ = tx.send(item);
                    })),
                    Err(_) => {
                        let _ = tx.send(item);
                    }
                }
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                tracing::error!("the audit writer stopped; an event was not written");
            }
        }
    }

    /// Waits (bounded) until every event queued so far is written: reads of the audit see what
    /// the caller did before.
    pub async fn audit_flushed(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        let tx = self.audit.clone();
        let queued = tokio::task::spawn_blocking(move || tx.send(Item::Flush(done)).is_ok());
        if matches!(queued.await, Ok(true))
            && tokio::time::timeout(Duration::from_secs(10), wait)
                .await
                .is_err()
        {
            tracing::warn!("the audit writer is more than 10 s behind");
        }
    }

    /// The store itself, for start-up, shutdown and tests (never on an async thread's hot path).
    pub fn blocking(&self) -> &Store {
        &self.store
    }

    /// The store itself, to hand to a thread of its own.
    pub fn shared(&self) -> Arc<Store> {
        self.store.clone()
    }
}

fn write_audit(store: &Store, rx: &mpsc::Receiver<Item>) {
    let mut batch = Vec::with_capacity(AUDIT_BATCH);
    let mut flushes = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Item::Event(ev) => batch.push(ev),
                Item::Flush(done) => flushes.push(done),
            }
            if batch.len() < AUDIT_BATCH {
                next = rx.try_recv().ok();
            }
        }
        store.audit_many(&mut batch);
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}
