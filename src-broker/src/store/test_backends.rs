//! The store's unit tests on both backends: [`each`] runs a test on a SQLite store and, when
//! `PASSERELLE_TEST_PG` names a PostgreSQL server (`postgres://user@host:port`, as
//! `scripts/test.sh` starts one), again on a fresh database of it.

use std::path::Path;

use super::Store;
use super::sql::{Backend, PgUrl, pg};

/// The server the test command started, if any.
pub(crate) fn pg_base() -> Option<String> {
    std::env::var("PASSERELLE_TEST_PG")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A new, empty database on the test server; its URL.
pub(crate) fn fresh_pg_database(base: &str) -> PgUrl {
    let admin = PgUrl::parse(&format!("{base}/postgres")).expect("PASSERELLE_TEST_PG");
    let pool = pg::Pool::connect(&admin).expect("the test PostgreSQL server");
    let name = format!("t_{}", hex::encode(rand::random::<[u8; 8]>()));
    pool.get()
        .expect("a client")
        .batch(&format!("CREATE DATABASE {name}"))
        .expect("CREATE DATABASE");
    PgUrl::parse(&format!("{base}/{name}")).expect("the test database's URL")
}

/// A store on `backend` with `dir` as its data dir; `None` for PostgreSQL without a server.
pub(crate) fn open(backend: Backend, dir: &Path) -> Option<Store> {
    match backend {
        Backend::Sqlite => Some(Store::open(dir).expect("a SQLite store")),
        Backend::Postgres => {
            let url = fresh_pg_database(&pg_base()?);
            Some(Store::open_postgres(dir, &url).expect("a PostgreSQL store"))
        }
    }
}

/// Runs `test` on a fresh store of each backend available (see the module's header).
pub(crate) fn each(test: impl Fn(&Store)) {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let dir = tempfile::tempdir().expect("a temp dir");
        if let Some(store) = open(backend, dir.path()) {
            eprintln!("on {backend:?}");
            test(&store);
        }
    }
}

/// Runs `test` on each backend available with a way to open more handles on the same database
/// (as several nodes of a cluster do).
pub(crate) fn each_shared(test: impl Fn(&dyn Fn() -> Store)) {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let dir = tempfile::tempdir().expect("a temp dir");
        let url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => match pg_base() {
                Some(base) => Some(fresh_pg_database(&base)),
                None => continue,
            },
        };
        eprintln!("on {backend:?}");
        test(&|| Store::open_with(dir.path(), url.as_ref()).expect("a store"));
    }
}
