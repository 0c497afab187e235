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
        Self::with_queue(store, AUDIT_QUEUE)
    }

    fn with_queue(store: Arc<Store>, queue: usize) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(queue);
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
        self.audit_all(std::iter::once(event));
    }

    /// Queues events in order; never waits. Those that find the queue full wait for room
    /// together, in one task of the blocking pool (a bulk import's thousand events must not
    /// take a thousand of its threads).
    pub fn audit_all<I>(&self, events: I)
    where
        I: IntoIterator<Item = NewEvent>,
        I::IntoIter: Send + 'static,
    {
        let mut events = events.into_iter();
        let Some(full) =
            events
                .by_ref()
                .find_map(|ev| match self.audit.try_send(Item::Event(ev)) {
                    Ok(()) => None,
                    Err(mpsc::TrySendError::Full(item)) => Some(Ok(item)),
                    Err(mpsc::TrySendError::Disconnected(_)) => Some(Err(())),
                })
        else {
            return;
        };
        let Ok(first) = full else {
            return tracing::error!("the audit writer stopped; events were not written");
        };
        let tx = self.audit.clone();
        let wait = move || {
            for item in std::iter::once(first).chain(events.map(Item::Event)) {
                if tx.send(item).is_err() {
                    return tracing::error!("the audit writer stopped; events were not written");
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(wait)),
            Err(_) => wait(),
        }
    }

    /// Waits (bounded) until every event queued so far is written: reads of the audit see what
    /// the caller did before. (Events still waiting for room in a full queue may come after.)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuditFilter, AuditKind};

    /// Events that find the queue full (the writer held up by the store) wait for room and go
    /// in, all of them and in order, once the store is free again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_beyond_a_full_queue_wait_and_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let name = passerelle_proto::ids::TenantName::new("t").unwrap();
        store.create_tenant(&name).unwrap();
        let tenant = store.tenant_id(&name).unwrap().unwrap();
        let db = Db::with_queue(store.clone(), 2).unwrap();
        let events = |from: usize, to: usize| -> Vec<NewEvent> {
            (from..to)
                .map(|i| {
                    let mut ev = NewEvent::new(AuditKind::AgentRegistered, format!("event {i}"));
                    ev.tenant_id = Some(tenant);
                    ev
                })
                .collect()
        };
        {
            // The writer takes the first event, then waits for the store: the queue fills.
            let held = store.conn().unwrap();
            db.audit_all(events(0, 50));
            drop(held);
        }
        let f = AuditFilter {
            limit: Some(500),
            ..Default::default()
        };
        // A flush may pass the events still waiting for room: poll, within a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < 50 && std::time::Instant::now() < deadline {
            db.audit_flushed().await;
            got = store.audit_page(tenant, &f).unwrap().events;
        }
        got.sort_by_key(|e| e.id);
        let details: Vec<String> = got.into_iter().map(|e| e.detail).collect();
        let want: Vec<String> = (0..50).map(|i| format!("event {i}")).collect();
        assert_eq!(details, want);
    }
}
