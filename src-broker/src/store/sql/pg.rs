//! The SQL layer over PostgreSQL: tokio-postgres clients in a small pool, driven from the
//! calling thread.
//!
//! The store's API is synchronous (it runs on tokio's blocking pool through `Db::run`), so each
//! call blocks its thread on a tokio-postgres future ([`block_on`], bounded by
//! [`QUERY_TIMEOUT`]). The clients' connection tasks (the sockets) run on a private one-thread
//! runtime, which makes this usable from any thread, inside a runtime or not. Clients are kept
//! in an idle list and made on demand (at most [`MAX_CLIENTS`]), each with its prepared
//! statements; those beyond [`KEEP_IDLE`] close after [`IDLE_CLOSE`] unused; a client whose
//! connection ended, or that timed out, is dropped rather than reused.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::str::FromStr as _;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Statement};

use super::{Error, PgUrl, Result, Row, Value, placeholders};

/// Longest wait for a connection (TCP, then authentication).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for one statement (also the server's `statement_timeout`).
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle clients kept however long they stay idle. Beyond these, a client given back stays open
/// for the next call until it has been idle for [`IDLE_CLOSE`]: a burst of calls (thousands of
/// agents reconnecting at once) reuses its clients instead of opening and closing a PostgreSQL
/// connection (a server process, an authentication, every statement prepared again) per call.
const KEEP_IDLE: usize = 8;
/// How long a client beyond [`KEEP_IDLE`] stays open unused.
const IDLE_CLOSE: Duration = Duration::from_secs(60);
/// Clients open at once; a call waits (up to [`QUERY_TIMEOUT`]) for one to come back beyond.
/// The blocking pool has far more threads than a database has connections to give.
pub(crate) const MAX_CLIENTS: usize = 32;
/// Prepared statements kept per client (the store has fewer distinct statements than this).
const MAX_PREPARED: usize = 512;
/// The advisory lock of [`super::Conn::transaction_immediate`].
const WRITE_LOCK: i64 = 0x7061_7373_0001;

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `fut` on this thread until it is ready or `limit` passes (`None`).
pub(crate) fn block_on<F: Future>(fut: F, limit: Duration) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let deadline = Instant::now() + limit;
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::park_timeout(deadline - now);
    }
}

fn timed<T>(fut: impl Future<Output = Result<T, tokio_postgres::Error>>) -> Result<T> {
    block_on(fut, QUERY_TIMEOUT)
        .ok_or_else(|| Error::Pool(format!("no answer within {QUERY_TIMEOUT:?}")))?
        .map_err(Error::from)
}

/// A new client over `tls` (or `NoTls`) within `limit`; its connection (the socket) runs in a
/// task of `tasks` until it ends.
async fn connect<T>(
    config: &tokio_postgres::Config,
    tls: T,
    limit: Duration,
    tasks: &tokio_util::task::TaskTracker,
) -> Result<Client>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, conn) = tokio::time::timeout(limit, config.connect(tls))
        .await
        .map_err(|_| Error::Pool(format!("no connection within {limit:?}")))??;
    tasks.spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "a PostgreSQL connection of the store ended");
        }
    });
    Ok(client)
}

/// The clients of one database.
pub(crate) struct Pool {
    config: tokio_postgres::Config,
    /// The URL's `connect_timeout`, else [`CONNECT_TIMEOUT`]: for the handshake too.
    connect_timeout: Duration,
    /// TLS to the server (the URL's `sslmode=require`/`verify-*`), else plain TCP.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    shown: String,
    runtime: Option<tokio::runtime::Runtime>,
    tasks: tokio_util::task::TaskTracker,
    slots: Mutex<Slots>,
    /// Signalled when a client comes back or is dropped.
    freed: Condvar,
}

/// The pool's clients: those idle, and how many are open (idle or lent).
#[derive(Default)]
struct Slots {
    /// The most recently given back last, and lent first: the others age, and close after
    /// [`IDLE_CLOSE`] (see [`KEEP_IDLE`]).
    idle: VecDeque<Idle>,
    open: usize,
}

/// An idle client and since when.
struct Idle {
    // Boxed: lent out and given back as a pointer (a client is a few hundred bytes).
    client: Box<PgClient>,
    since: Instant,
}

impl Slots {
    /// Closes the clients beyond [`KEEP_IDLE`] that have been idle for [`IDLE_CLOSE`].
    fn close_stale(&mut self, now: Instant) {
        while self.idle.len() > KEEP_IDLE
            && self
                .idle
                .front()
                .is_some_and(|i| now.duration_since(i.since) >= IDLE_CLOSE)
        {
            self.idle.pop_front();
            self.open = self.open.saturating_sub(1);
        }
    }
}

/// A client and the statements it has prepared (a statement is one round trip, not two, once
/// prepared).
pub(crate) struct PgClient {
    client: Client,
    prepared: Mutex<HashMap<String, Statement>>,
}

impl PgClient {
    fn statement(&self, sql: &str) -> Result<Statement> {
        let sql = placeholders(sql);
        let cached = self
            .prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&sql)
            .cloned();
        if let Some(st) = cached {
            return Ok(st);
        }
        let st = timed(self.client.prepare(&sql))?;
        let mut prepared = self
            .prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if prepared.len() >= MAX_PREPARED {
            prepared.clear();
        }
        prepared.insert(sql, st.clone());
        Ok(st)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.slots().idle.clear();
        self.tasks.close();
        // Never blocks (a store may be dropped on an async thread): the connection tasks end
        // with their clients.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Pool {
    /// Connects once (so that a wrong URL or an unreachable server fails here, within
    /// [`CONNECT_TIMEOUT`]) and keeps that client.
    pub(crate) fn connect(url: &PgUrl) -> anyhow::Result<Self> {
        let mut config = tokio_postgres::Config::from_str(url.expose())
            .map_err(|e| anyhow::anyhow!("bad store URL {url}: {e}"))?;
        let connect_timeout = *config.get_connect_timeout().unwrap_or(&CONNECT_TIMEOUT);
        config.connect_timeout(connect_timeout);
        config.keepalives_idle(Duration::from_secs(30));
        let timeout_ms = QUERY_TIMEOUT.as_millis();
        // Notices (e.g. "already exists, skipping") would reach the log as INFO lines.
        config.options(format!(
            "-c statement_timeout={timeout_ms} -c client_min_messages=warning"
        ));
        config.application_name("passerelle");
        let tls = url
            .tls()
            .map(super::pg_tls::connector)
            .transpose()
            .map_err(|e| anyhow::anyhow!("store URL {url}: {e:#}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("passerelle-pg")
            .enable_all()
            .build()
            .map_err(|e| anyhow::anyhow!("starting the PostgreSQL client thread: {e}"))?;
        let pool = Self {
            config,
            connect_timeout,
            tls,
            shown: url.to_string(),
            runtime: Some(runtime),
            tasks: tokio_util::task::TaskTracker::new(),
            slots: Mutex::new(Slots::default()),
            freed: Condvar::new(),
        };
        let first = pool
            .new_client()
            .map_err(|e| anyhow::anyhow!("connecting to the store {}: {e}", pool.shown))?;
        {
            let mut slots = pool.slots();
            slots.idle.push_back(Idle {
                client: first,
                since: Instant::now(),
            });
            slots.open = 1;
        }
        Ok(pool)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gives a lent client back (`None`: it is gone) and wakes a waiting caller.
    fn give_back(&self, client: Option<Box<PgClient>>) {
        let now = Instant::now();
        let mut slots = self.slots();
        match client.filter(|c| !c.client.is_closed()) {
            Some(client) => slots.idle.push_back(Idle { client, since: now }),
            None => slots.open = slots.open.saturating_sub(1),
        }
        slots.close_stale(now);
        drop(slots);
        self.freed.notify_one();
    }

    fn new_client(&self) -> Result<Box<PgClient>> {
        let rt = self
            .runtime
            .as_ref()
            .ok_or_else(|| Error::Pool("the pool is closed".into()))?;
        let config = self.config.clone();
        let tasks = self.tasks.clone();
        let limit = self.connect_timeout;
        let tls = self.tls.clone();
        let join = rt.spawn(async move {
            match tls {
                Some(tls) => connect(&config, tls, limit, &tasks).await,
                None => connect(&config, NoTls, limit, &tasks).await,
            }
        });
        match block_on(join, limit + Duration::from_secs(1)) {
            Some(Ok(result)) => result.map(|client| {
                Box::new(PgClient {
                    client,
                    prepared: Mutex::new(HashMap::new()),
                })
            }),
            Some(Err(e)) => Err(Error::Pool(format!("connecting: {e}"))),
            None => Err(Error::Pool(format!("no connection within {limit:?}"))),
        }
    }

    /// Clients open now (idle or lent).
    #[cfg(test)]
    pub(crate) fn open_clients(&self) -> usize {
        self.slots().open
    }

    /// Closes the idle clients that would be stale at `now` (see [`IDLE_CLOSE`]).
    #[cfg(test)]
    pub(crate) fn close_stale_as_of(&self, now: Instant) {
        self.slots().close_stale(now);
    }

    /// A client for a few statements, back in the idle list when dropped: an idle one, a new
    /// one while fewer than [`MAX_CLIENTS`] are open, else the next one given back.
    pub(crate) fn get(&self) -> Result<Pooled<'_>> {
        self.get_within(QUERY_TIMEOUT)
    }

    /// [`Pool::get`], waiting at most `limit` for a busy pool.
    pub(crate) fn get_within(&self, limit: Duration) -> Result<Pooled<'_>> {
        let lend = |client| Pooled {
            pool: self,
            client: Some(client),
            broken: Cell::new(false),
        };
        let deadline = Instant::now() + limit;
        let mut slots = self.slots();
        loop {
            while let Some(Idle { client, .. }) = slots.idle.pop_back() {
                if !client.client.is_closed() {
                    return Ok(lend(client));
                }
                slots.open = slots.open.saturating_sub(1);
            }
            if slots.open < MAX_CLIENTS {
                slots.open += 1;
                drop(slots);
                return match self.new_client() {
                    Ok(client) => Ok(lend(client)),
                    Err(e) => {
                        self.give_back(None);
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Pool(format!(
                    "all {MAX_CLIENTS} clients stayed busy for {limit:?}"
                )));
            }
            slots = self
                .freed
                .wait_timeout(slots, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// A client taken from the pool.
pub struct Pooled<'a> {
    pool: &'a Pool,
    client: Option<Box<PgClient>>,
    /// A statement timed out: the client's state is unknown, it is not reused.
    broken: Cell<bool>,
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let client = self.client.take().filter(|_| !self.broken.get());
        self.pool.give_back(client);
    }
}

/// Notes a timeout (see [`Pooled::broken`]).
fn noting<T>(broken: &Cell<bool>, r: Result<T>) -> Result<T> {
    if matches!(r, Err(Error::Pool(_))) {
        broken.set(true);
    }
    r
}

impl Pooled<'_> {
    fn client(&self) -> Result<&PgClient> {
        self.client
            .as_deref()
            .ok_or_else(|| Error::Pool("the client was lost".into()))
    }

    pub(crate) fn execute(&self, sql: &str, params: Vec<Value>) -> Result<usize> {
        noting(&self.broken, execute(self.client()?, sql, &params))
    }

    pub(crate) fn query(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        noting(&self.broken, query(self.client()?, sql, &params))
    }

    pub(crate) fn batch(&self, sql: &str) -> Result<()> {
        noting(
            &self.broken,
            timed(self.client()?.client.batch_execute(sql)),
        )
    }

    pub(crate) fn begin(&mut self, immediate: bool) -> Result<PgTx<'_>> {
        self.batch("BEGIN")?;
        let tx = PgTx {
            client: self.client()?,
            broken: &self.broken,
            done: false,
        };
        if immediate {
            tx.batch(&format!("SELECT pg_advisory_xact_lock({WRITE_LOCK})"))?;
        }
        Ok(tx)
    }

    /// Runs `f` holding the session advisory lock `key` (migrations: one node at a time).
    pub(crate) fn with_lock<T>(&self, key: i64, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.batch(&format!("SELECT pg_advisory_lock({key})"))?;
        let r = f();
        let unlocked = self.batch(&format!("SELECT pg_advisory_unlock({key})"));
        let v = r?;
        unlocked?;
        Ok(v)
    }
}

/// An open transaction on a pooled client: `BEGIN` was sent; `COMMIT` on [`PgTx::commit`],
/// `ROLLBACK` when dropped without it.
pub struct PgTx<'a> {
    client: &'a PgClient,
    broken: &'a Cell<bool>,
    done: bool,
}

impl Drop for PgTx<'_> {
    fn drop(&mut self) {
        if !self.done && !self.client.client.is_closed() {
            let r = timed(self.client.client.batch_execute("ROLLBACK"));
            if r.is_err() {
                self.broken.set(true);
            }
        }
    }
}

impl PgTx<'_> {
    pub(crate) fn execute(&self, sql: &str, params: Vec<Value>) -> Result<usize> {
        noting(self.broken, execute(self.client, sql, &params))
    }

    pub(crate) fn query(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        noting(self.broken, query(self.client, sql, &params))
    }

    pub(crate) fn batch(&self, sql: &str) -> Result<()> {
        noting(self.broken, timed(self.client.client.batch_execute(sql)))
    }

    pub(crate) fn commit(mut self) -> Result<()> {
        self.batch("COMMIT")?;
        self.done = true;
        Ok(())
    }
}

fn refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

fn execute(c: &PgClient, sql: &str, params: &[Value]) -> Result<usize> {
    let st = c.statement(sql)?;
    let n = timed(c.client.execute(&st, &refs(params)))?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

fn query(c: &PgClient, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
    let st = c.statement(sql)?;
    let rows = timed(c.client.query(&st, &refs(params)))?;
    rows.iter().map(row).collect()
}

fn row(r: &tokio_postgres::Row) -> Result<Row> {
    let mut values = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let t = col.type_();
        let v = if *t == Type::INT8 {
            r.try_get::<_, Option<i64>>(i)?.map(Value::Integer)
        } else if *t == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Integer(v.into()))
        } else if *t == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Integer(v.into()))
        } else if *t == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Integer(v.into()))
        } else if *t == Type::FLOAT8 {
            r.try_get::<_, Option<f64>>(i)?.map(Value::Real)
        } else if *t == Type::FLOAT4 {
            r.try_get::<_, Option<f32>>(i)?
                .map(|v| Value::Real(v.into()))
        } else if *t == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob)
        } else if [
            Type::TEXT,
            Type::VARCHAR,
            Type::BPCHAR,
            Type::NAME,
            Type::UNKNOWN,
        ]
        .contains(t)
        {
            r.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else {
            return Err(Error::conversion(i, format!("unsupported column type {t}")));
        };
        values.push(v.unwrap_or(Value::Null));
    }
    Ok(Row::new(values))
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Self::Null => Ok(IsNull::Yes),
            Self::Integer(i) => {
                if *ty == Type::INT8 {
                    i.to_sql(ty, out)
                } else if *ty == Type::INT4 {
                    i32::try_from(*i)?.to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(*i)?.to_sql(ty, out)
                } else if *ty == Type::BOOL {
                    (*i != 0).to_sql(ty, out)
                } else if *ty == Type::FLOAT8 {
                    #[allow(clippy::cast_precision_loss)]
                    let f = *i as f64;
                    f.to_sql(ty, out)
                } else {
                    i.to_string().to_sql(ty, out)
                }
            }
            Self::Real(f) => f.to_sql(ty, out),
            Self::Text(s) => s.as_str().to_sql(ty, out),
            Self::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}
