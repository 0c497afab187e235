//! Opening a store: SQLite in the data dir or PostgreSQL at a URL, its migrations (on
//! PostgreSQL one node at a time, under an advisory lock), and the connection each call takes.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context as _, bail};
use rusqlite::Connection;

use super::sql::{self, Backend, Conn, Exec as _};
use super::{Database, MIGRATIONS, PgUrl, Store};
use crate::secrets::SecretBox;

/// The session advisory lock PostgreSQL migrations run under.
const MIGRATION_LOCK: i64 = 0x7061_7373_0000;

fn check_version(done: usize) -> anyhow::Result<()> {
    if done > MIGRATIONS.len() {
        bail!(
            "the database schema (version {done}) is newer than this broker knows ({}); \
             upgrade the broker",
            MIGRATIONS.len()
        );
    }
    Ok(())
}

/// Applies pending migrations on PostgreSQL (the caller holds [`MIGRATION_LOCK`]), each in a
/// transaction with its version.
fn migrate_postgres(conn: &sql::pg::Pooled<'_>) -> anyhow::Result<()> {
    conn.batch("CREATE TABLE IF NOT EXISTS passerelle_schema (version BIGINT NOT NULL)")?;
    let done: Option<i64> = conn
        .query("SELECT version FROM passerelle_schema", Vec::new())?
        .first()
        .map(|r| r.get(0))
        .transpose()?;
    if done.is_none() {
        conn.batch("INSERT INTO passerelle_schema (version) VALUES (0)")?;
    }
    let done = usize::try_from(done.unwrap_or(0)).unwrap_or(usize::MAX);
    check_version(done)?;
    for (i, m) in MIGRATIONS.iter().enumerate().skip(done) {
        let sql = format!(
            "BEGIN;\n{}\nUPDATE passerelle_schema SET version = {};\nCOMMIT;",
            m.postgres(),
            i + 1
        );
        if let Err(e) = conn.batch(&sql) {
            let _ = conn.batch("ROLLBACK");
            return Err(e).with_context(|| format!("applying migration {}", i + 1));
        }
    }
    Ok(())
}

impl Store {
    /// Opens the store `url` names (PostgreSQL), else `<data_dir>/passerelle.db` (SQLite).
    /// The data dir keeps `secret.key` either way.
    pub fn open_with(data_dir: &Path, url: Option<&PgUrl>) -> anyhow::Result<Self> {
        Self::open_keyed(data_dir, data_dir, url)
    }

    /// [`Store::open_with`], with the sealing key in `key_dir` (a cluster's shared directory)
    /// for PostgreSQL.
    pub fn open_keyed(
        data_dir: &Path,
        key_dir: &Path,
        url: Option<&PgUrl>,
    ) -> anyhow::Result<Self> {
        match url {
            Some(url) => Self::postgres_keyed(data_dir, key_dir, url),
            None => Self::open(data_dir),
        }
    }

    /// Opens (creating if needed) `<data_dir>/passerelle.db` and applies pending migrations.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        crate::secrets::create_private_dir_all(data_dir)
            .with_context(|| format!("creating data dir {}", data_dir.display()))?;
        let path = data_dir.join("passerelle.db");
        // Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the
        // database file's mode, so they are private from their creation too.
        crate::secrets::private_file_options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("creating database {}", path.display()))?;
        let conn = Connection::open(&path)
            .with_context(|| format!("opening database {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let secret_box = SecretBox::load_or_create(&data_dir.join("secret.key"))?;
        let store = Self {
            db: Database::Sqlite(Mutex::new(conn)),
            secret_box,
            node: "local".to_owned(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Connects to PostgreSQL at `url` (failing within [`sql::pg::CONNECT_TIMEOUT`] when it is
    /// unreachable) and applies pending migrations, one node at a time.
    pub fn open_postgres(data_dir: &Path, url: &PgUrl) -> anyhow::Result<Self> {
        Self::postgres_keyed(data_dir, data_dir, url)
    }

    fn postgres_keyed(data_dir: &Path, key_dir: &Path, url: &PgUrl) -> anyhow::Result<Self> {
        crate::secrets::create_private_dir_all(data_dir)
            .with_context(|| format!("creating data dir {}", data_dir.display()))?;
        let pool = sql::pg::Pool::connect(url)?;
        let secret_box = SecretBox::load_or_create(&key_dir.join("secret.key"))?;
        let store = Self {
            db: Database::Postgres(Box::new(pool)),
            secret_box,
            node: "local".to_owned(),
        };
        store
            .migrate()
            .with_context(|| format!("migrating the store {url}"))?;
        Ok(store)
    }

    /// Which database this store runs on.
    pub fn backend(&self) -> Backend {
        match self.db {
            Database::Sqlite(_) => Backend::Sqlite,
            Database::Postgres(_) => Backend::Postgres,
        }
    }

    fn migrate(&self) -> anyhow::Result<()> {
        match &self.db {
            Database::Sqlite(conn) => {
                let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                let done: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
                check_version(done)?;
                for (i, m) in MIGRATIONS.iter().enumerate().skip(done) {
                    let tx = conn.transaction()?;
                    tx.execute_batch(m.sqlite())
                        .with_context(|| format!("applying migration {}", i + 1))?;
                    tx.pragma_update(None, "user_version", i + 1)?;
                    tx.commit()?;
                }
                Ok(())
            }
            Database::Postgres(pool) => {
                let conn = pool.get()?;
                let mut result = Ok(());
                conn.with_lock(MIGRATION_LOCK, || {
                    result = migrate_postgres(&conn);
                    Ok(())
                })?;
                result
            }
        }
    }

    /// SQLite's `PRAGMA quick_check`: "ok", or what is damaged. On PostgreSQL, "ok" when the
    /// server answers (it checks its own pages).
    pub fn quick_check(&self) -> anyhow::Result<String> {
        let conn = self.conn()?;
        let Some(sqlite) = conn.sqlite() else {
            conn.query_row("SELECT 1", (), |r| r.get::<i64>(0))?;
            return Ok("ok".into());
        };
        let rows: Vec<String> = {
            let mut stmt = sqlite.prepare("PRAGMA quick_check")?;
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<_, _>>()?
        };
        Ok(rows.join("; "))
    }

    /// Holds the store's lock for `d`, as a long write on a slow disk would: for tests of what
    /// must never wait on the store.
    #[doc(hidden)]
    pub fn stall_for_tests(&self, d: std::time::Duration) {
        let _conn = self.conn();
        std::thread::sleep(d);
    }

    /// Moves SQLite's write-ahead log into the database file and empties it (a clean stop
    /// leaves one self-contained `passerelle.db`). PostgreSQL keeps its own log: nothing to do.
    pub fn checkpoint(&self) -> anyhow::Result<()> {
        let conn = self.conn()?;
        if let Some(sqlite) = conn.sqlite() {
            sqlite.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        }
        Ok(())
    }

    /// A connection for a few statements: SQLite's (under its lock), or a pooled PostgreSQL
    /// client.
    pub(crate) fn conn(&self) -> sql::Result<Conn<'_>> {
        match &self.db {
            // A panic while holding the lock leaves SQLite consistent (statements are atomic).
            Database::Sqlite(c) => Ok(Conn::Sqlite(
                c.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
            )),
            Database::Postgres(pool) => pool.get().map(Conn::Postgres),
        }
    }
}
