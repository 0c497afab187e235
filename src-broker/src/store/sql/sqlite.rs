//! The SQL layer over rusqlite: statements cached per connection, values converted both ways.

use rusqlite::types::{Value as SqlValue, ValueRef};

use super::{Result, Row, Value};

fn to_sql(v: Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Integer(i) => SqlValue::Integer(i),
        Value::Real(f) => SqlValue::Real(f),
        Value::Text(s) => SqlValue::Text(s),
        Value::Blob(b) => SqlValue::Blob(b),
    }
}

fn from_sql(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

pub(super) fn begin(
    conn: &mut rusqlite::Connection,
    immediate: bool,
) -> Result<rusqlite::Transaction<'_>> {
    let behavior = if immediate {
        rusqlite::TransactionBehavior::Immediate
    } else {
        rusqlite::TransactionBehavior::Deferred
    };
    Ok(conn.transaction_with_behavior(behavior)?)
}

pub(super) fn execute(conn: &rusqlite::Connection, sql: &str, params: Vec<Value>) -> Result<usize> {
    let mut stmt = conn.prepare_cached(sql)?;
    Ok(stmt.execute(rusqlite::params_from_iter(params.into_iter().map(to_sql)))?)
}

pub(super) fn query(
    conn: &rusqlite::Connection,
    sql: &str,
    params: Vec<Value>,
) -> Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let n = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(params.into_iter().map(to_sql)))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let values = (0..n)
            .map(|i| r.get_ref(i).map(from_sql))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        out.push(Row::new(values));
    }
    Ok(out)
}
