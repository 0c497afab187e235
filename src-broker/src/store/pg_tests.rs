//! Tests of what only the PostgreSQL backend has: migrations once under the advisory lock,
//! the same schema as SQLite, clear failures for bad URLs and unreachable servers. The
//! server ones run when `PASSERELLE_TEST_PG` is set (see `test_backends`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use passerelle_proto::ids::TenantName;

use super::sql::{Backend, Exec as _, PgUrl, pg};
use super::test_backends::{fresh_pg_database, pg_base};
use super::{MIGRATIONS, Store};

type Schema = BTreeMap<String, Vec<String>>;

fn schema_of(store: &Store) -> Schema {
    let conn = store.conn().unwrap();
    let rows: Vec<(String, String)> = match conn.backend() {
        Backend::Sqlite => conn
            .query_map(
                "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'
                 AND m.name NOT LIKE 'terminal_text_%' ORDER BY m.name, p.cid",
                (),
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap(),
        Backend::Postgres => conn
            .query_map(
                "SELECT table_name::text, column_name::text FROM information_schema.columns
                 WHERE table_schema = 'public' AND table_name <> 'passerelle_schema'
                 ORDER BY table_name, ordinal_position",
                (),
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap(),
    };
    let mut schema = Schema::new();
    for (table, column) in rows {
        schema.entry(table).or_default().push(column);
    }
    schema
}

#[test]
fn both_backends_reach_the_same_tables_and_columns() {
    let Some(base) = pg_base() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(dir.path()).unwrap();
    let pg = Store::open_postgres(dir.path(), &fresh_pg_database(&base)).unwrap();
    let (a, b) = (schema_of(&sqlite), schema_of(&pg));
    assert!(
        a.contains_key("agents") && a.contains_key("terminal_text"),
        "{a:?}"
    );
    assert_eq!(a, b);
}

#[test]
fn nodes_starting_at_once_migrate_once_and_share_the_data() {
    let Some(base) = pg_base() else { return };
    let url = fresh_pg_database(&base);
    let stores: Vec<Store> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let url = url.clone();
                s.spawn(move || {
                    let dir = tempfile::tempdir().unwrap();
                    Store::open_postgres(dir.path(), &url).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let version: i64 = stores[0]
        .conn()
        .unwrap()
        .query_row("SELECT version FROM passerelle_schema", (), |r| r.get(0))
        .unwrap();
    assert_eq!(usize::try_from(version).unwrap(), MIGRATIONS.len());
    let rows: i64 = stores[1]
        .conn()
        .unwrap()
        .query_row("SELECT COUNT(*) FROM passerelle_schema", (), |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);
    let t = TenantName::new("shared").unwrap();
    stores[0].create_tenant(&t).unwrap();
    assert!(stores[2].tenant_id(&t).unwrap().is_some());
    assert!(stores[1].create_tenant(&t).is_err(), "one tenant of a name");
}

#[test]
fn a_schema_newer_than_the_broker_is_refused() {
    let Some(base) = pg_base() else { return };
    let url = fresh_pg_database(&base);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_postgres(dir.path(), &url).unwrap();
    store
        .conn()
        .unwrap()
        .execute("UPDATE passerelle_schema SET version = version + 1", ())
        .unwrap();
    drop(store);
    let err = Store::open_postgres(dir.path(), &url).unwrap_err();
    assert!(
        format!("{err:#}").contains("newer than this broker"),
        "{err:#}"
    );
}

#[test]
fn an_unreachable_server_fails_fast_and_keeps_the_password_out_of_the_error() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens: refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = PgUrl::parse(&format!("postgres://app:s3cret@127.0.0.1:{port}/db")).unwrap();
    let err = format!("{:#}", Store::open_postgres(dir.path(), &url).unwrap_err());
    assert!(err.contains("connecting to the store"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    // A listener that never answers: the connect timeout ends the wait.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let url = PgUrl::parse(&format!(
        "postgres://app:s3cret@127.0.0.1:{port}/db?connect_timeout=1"
    ))
    .unwrap();
    let started = Instant::now();
    let err = format!("{:#}", Store::open_postgres(dir.path(), &url).unwrap_err());
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    assert!(err.contains("no connection within"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    drop(silent);
}

#[test]
fn the_pool_lends_at_most_its_clients_and_waits_for_one_back() {
    let Some(base) = pg_base() else { return };
    let url = fresh_pg_database(&base);
    let pool = pg::Pool::connect(&url).unwrap();
    let mut lent: Vec<_> = (0..pg::MAX_CLIENTS)
        .map(|_| pool.get_within(Duration::from_secs(5)).unwrap())
        .collect();
    let started = Instant::now();
    let Err(busy) = pool.get_within(Duration::from_millis(300)) else {
        panic!("a client beyond MAX_CLIENTS");
    };
    assert!(busy.to_string().contains("stayed busy"), "{busy}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // One given back from another thread wakes the waiting caller.
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let c = pool.get_within(Duration::from_secs(10)).unwrap();
            c.query("SELECT 1", Vec::new()).unwrap().len()
        });
        drop(lent.pop());
        assert_eq!(waiter.join().unwrap(), 1);
    });
}

/// The server process behind a lent client.
fn backend_pid(c: &pg::Pooled<'_>) -> i64 {
    let rows = c
        .query("SELECT pg_backend_pid()::bigint", Vec::new())
        .unwrap();
    rows[0].get(0).unwrap()
}

#[test]
fn a_burst_reuses_its_clients_and_they_close_after_a_minute_idle() {
    let Some(base) = pg_base() else { return };
    let url = fresh_pg_database(&base);
    let pool = pg::Pool::connect(&url).unwrap();
    let burst = |pool: &pg::Pool| {
        let lent: Vec<_> = (0..pg::MAX_CLIENTS)
            .map(|_| pool.get_within(Duration::from_secs(5)).unwrap())
            .collect();
        let mut pids: Vec<i64> = lent.iter().map(backend_pid).collect();
        pids.sort_unstable();
        pids
    };
    let first = burst(&pool);
    assert_eq!(pool.open_clients(), pg::MAX_CLIENTS);
    // Every client of the burst stays open for the next one: the same server processes, no new
    // connection (a PostgreSQL connection is a process, an authentication, statements prepared
    // again).
    let second = burst(&pool);
    assert_eq!(first, second);
    assert_eq!(pool.open_clients(), pg::MAX_CLIENTS);
    // A minute later, unused, the pool is back to the few it keeps.
    pool.close_stale_as_of(Instant::now() + Duration::from_secs(61));
    let kept = pool.open_clients();
    assert!((1..pg::MAX_CLIENTS / 2).contains(&kept), "{kept} kept");
    let c = pool.get().unwrap();
    assert_eq!(c.query("SELECT 1", Vec::new()).unwrap().len(), 1);
}
