//! Single-threaded runtimes ("shards") that carry agent connections and their sessions' data.
//!
//! Every SSH packet from an agent is handed from russh's connection task to a session's bridge
//! task. On tokio's work-stealing runtime that hand-off wakes idle workers, which look for work,
//! find little and park again; on the 2-core benchmark machine this churn made the broker cost
//! about 40 % more CPU per byte than with a single worker (BENCHMARKS.md). So each agent
//! connection lives on one shard, and the bridges of its sessions are spawned on that same shard:
//! the hand-off is a same-thread wake. Connections are spread over the shards round-robin, so
//! the broker still uses every core. The API, the store and the HTTP listener stay on the main
//! runtime.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// A fixed set of current-thread runtimes, each on its own OS thread.
#[derive(Debug)]
pub struct Shards {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl Shards {
    /// Starts `n` shards (at least one); `0` means one per available CPU.
    pub fn start(n: usize) -> anyhow::Result<Self> {
        let n = match n {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        };
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a data runtime")?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("passerelle-data-{i}"))
                .spawn(move || runtime.block_on(stop.cancelled_owned()))
                .context("starting a data thread")?;
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// How many shards there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Never true: there is always at least one shard.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The shard for the next connection (round-robin).
    pub fn pick(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }

    /// Stops every shard; tasks still on them are dropped. Spawning afterwards yields a
    /// cancelled task.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_their_shard_thread_and_stop_with_it() {
        let shards = Shards::start(2).unwrap();
        assert_eq!(shards.len(), 2);
        let name = || std::thread::current().name().map(str::to_owned);
        let a = shards.pick().spawn(async move { name() }).await.unwrap();
        let b = shards.pick().spawn(async move { name() }).await.unwrap();
        let c = shards.pick().spawn(async move { name() }).await.unwrap();
        assert_eq!(a.as_deref(), Some("passerelle-data-0"));
        assert_eq!(b.as_deref(), Some("passerelle-data-1"));
        assert_eq!(c, a, "round-robin comes back to the first shard");
        shards.stop();
        let late = shards.pick().spawn(std::future::pending::<()>());
        let joined = tokio::time::timeout(std::time::Duration::from_secs(5), late).await;
        assert!(
            matches!(joined, Ok(Err(ref e)) if e.is_cancelled()),
            "a stopped shard cancels its tasks: {joined:?}"
        );
    }
}
