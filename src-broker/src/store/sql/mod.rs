//! The store's backend-neutral SQL layer: one synchronous API ([`Exec`]: `execute`,
//! `query_row`, `query_map`, transactions) over SQLite (rusqlite, one connection behind a
//! mutex) and PostgreSQL (tokio-postgres clients driven from the calling thread, see [`pg`]).
//!
//! SQL is written once, in SQLite's dialect with `?N` (or `?`) placeholders; for PostgreSQL
//! [`placeholders`] turns them into `$N` and [`ddl_for_postgres`] maps the column types of
//! migrations. Values cross the layer as [`Value`]; rows as [`Row`]. Where the dialects differ
//! (full-text search, `PRAGMA`), callers branch on [`Conn::backend`].

pub(crate) mod pg;
mod pg_tls;
mod sqlite;
mod text;
mod url;
mod value;

use std::sync::MutexGuard;

pub(super) use text::{ddl_for_postgres, placeholders, row_chunks, value_rows};
pub use url::PgUrl;
pub use value::{FromValue, ToValue};

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A parameter or a column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// Why a statement failed. Callers branch on [`Error::NoRows`] (see [`OptionalExtension`]) and
/// [`Error::is_unique_violation`]; the rest is reported.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the query returned no rows")]
    NoRows,
    #[error("column {column}: {why}")]
    Conversion { column: usize, why: String },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// Shown with its causes (tokio-postgres says only "db error" or "error performing TLS
    /// handshake" itself); not linked as a source, so that a `{:#}` does not repeat them.
    #[error("postgresql: {}", with_causes(.0))]
    Postgres(tokio_postgres::Error),
    #[error("postgresql: {0}")]
    Pool(String),
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Postgres(e)
    }
}

/// `e: its cause: the cause's cause...`
fn with_causes(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl Error {
    /// A UNIQUE or PRIMARY KEY constraint refused the write.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
                f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                    || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            }
            Self::Postgres(e) => {
                e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
            }
            _ => false,
        }
    }

    /// The database's disk is full (SQLITE_FULL, PostgreSQL's disk_full).
    pub fn is_disk_full(&self) -> bool {
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
                f.code == rusqlite::ErrorCode::DiskFull
            }
            Self::Postgres(e) => e.code() == Some(&tokio_postgres::error::SqlState::DISK_FULL),
            _ => false,
        }
    }

    pub(crate) fn conversion(column: usize, why: impl Into<String>) -> Self {
        Self::Conversion {
            column,
            why: why.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `.optional()` on a single-row query: no row is `Ok(None)`.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row {
    values: Vec<Value>,
}

impl Row {
    pub(crate) fn new(values: Vec<Value>) -> Self {
        Self { values }
    }

    /// Column `i` (from 0) as `T`.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T> {
        let v = self
            .values
            .get(i)
            .ok_or_else(|| Error::conversion(i, "no such column"))?;
        T::from_value(v).map_err(|why| Error::conversion(i, why))
    }
}

/// Statement parameters: `params![a, b]`, `[x]`, `()` or a `Vec<Value>`.
pub trait Params {
    fn into_values(self) -> Vec<Value>;
}
impl Params for () {
    fn into_values(self) -> Vec<Value> {
        Vec::new()
    }
}
impl Params for &[&dyn ToValue] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(|v| v.to_value()).collect()
    }
}
impl<const N: usize> Params for &[&dyn ToValue; N] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(|v| v.to_value()).collect()
    }
}
impl<T: ToValue, const N: usize> Params for [T; N] {
    fn into_values(self) -> Vec<Value> {
        self.iter().map(ToValue::to_value).collect()
    }
}
impl Params for Vec<Value> {
    fn into_values(self) -> Vec<Value> {
        self
    }
}

/// `params![a, b, c]`: parameters of mixed types.
#[macro_export]
#[doc(hidden)]
macro_rules! sql_params {
    ($($v:expr),* $(,)?) => {
        &[$(&$v as &dyn $crate::store::sql::ToValue),*] as &[&dyn $crate::store::sql::ToValue]
    };
}
pub use crate::sql_params as params;

/// What runs statements: a connection ([`Conn`]) or a transaction ([`Tx`]).
pub trait Exec {
    /// Which database this is.
    fn backend(&self) -> Backend;
    /// Runs one statement; the number of rows it changed.
    fn execute_values(&self, sql: &str, params: Vec<Value>) -> Result<usize>;
    /// Runs a query; its rows.
    fn query_values(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>>;
    /// Runs several statements without parameters.
    fn execute_batch(&self, sql: &str) -> Result<()>;

    /// Runs one statement; the number of rows it changed.
    fn execute(&self, sql: &str, params: impl Params) -> Result<usize> {
        self.execute_values(sql, params.into_values())
    }

    /// The first row of a query, mapped; [`Error::NoRows`] when there is none.
    fn query_row<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<T> {
        let rows = self.query_values(sql, params.into_values())?;
        rows.first().map_or(Err(Error::NoRows), f)
    }

    /// Every row of a query, mapped.
    fn query_map<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnMut(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let rows = self.query_values(sql, params.into_values())?;
        rows.iter().map(f).collect()
    }
}

/// A connection of the store, held for a few statements (see `Store::conn`).
pub enum Conn<'a> {
    Sqlite(MutexGuard<'a, rusqlite::Connection>),
    Postgres(pg::Pooled<'a>),
}

impl Conn<'_> {
    /// Starts a transaction (rolled back unless committed).
    pub fn transaction(&mut self) -> Result<Tx<'_>> {
        self.begin(false)
    }

    /// Starts a transaction that writes alone: SQLite's `BEGIN IMMEDIATE`; on PostgreSQL a
    /// transaction-scoped advisory lock that every such transaction takes, so that a
    /// check-then-write inside it sees no other one in between, from any node.
    pub fn transaction_immediate(&mut self) -> Result<Tx<'_>> {
        self.begin(true)
    }

    fn begin(&mut self, immediate: bool) -> Result<Tx<'_>> {
        match self {
            Self::Sqlite(c) => sqlite::begin(c, immediate).map(Tx::Sqlite),
            Self::Postgres(c) => c.begin(immediate).map(Tx::Postgres),
        }
    }

    /// The SQLite connection, for what only SQLite has (`PRAGMA`).
    pub fn sqlite(&self) -> Option<&rusqlite::Connection> {
        match self {
            Self::Sqlite(c) => Some(&**c),
            Self::Postgres(_) => None,
        }
    }
}

/// [`Exec`] for an enum of a SQLite connection (or a transaction, which derefs to one) and its
/// PostgreSQL counterpart, which have the same methods.
macro_rules! exec_over_both {
    ($ty:ty) => {
        impl Exec for $ty {
            fn backend(&self) -> Backend {
                match self {
                    Self::Sqlite(_) => Backend::Sqlite,
                    Self::Postgres(_) => Backend::Postgres,
                }
            }
            fn execute_values(&self, sql: &str, params: Vec<Value>) -> Result<usize> {
                match self {
                    Self::Sqlite(c) => sqlite::execute(c, sql, params),
                    Self::Postgres(c) => c.execute(sql, params),
                }
            }
            fn query_values(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
                match self {
                    Self::Sqlite(c) => sqlite::query(c, sql, params),
                    Self::Postgres(c) => c.query(sql, params),
                }
            }
            fn execute_batch(&self, sql: &str) -> Result<()> {
                match self {
                    Self::Sqlite(c) => Ok(c.execute_batch(sql)?),
                    Self::Postgres(c) => c.batch(sql),
                }
            }
        }
    };
}

exec_over_both!(Conn<'_>);
exec_over_both!(Tx<'_>);

/// A transaction: rolled back when dropped without [`Tx::commit`].
pub enum Tx<'a> {
    Sqlite(rusqlite::Transaction<'a>),
    Postgres(pg::PgTx<'a>),
}

impl Tx<'_> {
    pub fn commit(self) -> Result<()> {
        match self {
            Self::Sqlite(t) => Ok(t.commit()?),
            Self::Postgres(t) => t.commit(),
        }
    }
}
