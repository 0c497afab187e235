//! `--pg-statements` (with `--fleet`): what PostgreSQL spent on each statement in a phase, from
//! its `pg_stat_statements` extension (loaded at the server's start, reset at the phase's start,
//! read at its end). Execution time only: parsing, planning and the protocol's own work are in
//! the PostgreSQL CPU of the bench's CPU table, not here.

use std::fmt::Write as _;

use anyhow::Context as _;
use passerelle_e2e::cluster::TestCluster;

/// Server settings that load the extension.
pub const SETTINGS: &str = " -c shared_preload_libraries=pg_stat_statements \
                            -c pg_stat_statements.track=all -c pg_stat_statements.max=1000";

/// One statement's figures over a phase.
#[derive(Debug, Clone)]
pub struct Statement {
    pub calls: u64,
    pub total_ms: f64,
    pub rows: u64,
    /// Whitespace squeezed, so that it fits a table's cell.
    pub query: String,
}

/// Creates the extension in the cluster's database.
pub async fn enable(cluster: &TestCluster) -> anyhow::Result<()> {
    cluster
        .psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .context("creating pg_stat_statements (is postgresql-contrib installed?)")?;
    Ok(())
}

/// Starts a phase: forgets what was counted so far.
pub async fn reset(cluster: &TestCluster) -> anyhow::Result<()> {
    cluster
        .psql("SELECT pg_stat_statements_reset()")
        .await
        .map(drop)
}

/// Ends a phase: every statement counted since the last [`reset`], the costliest first (the
/// extension's own queries left out).
pub async fn read(cluster: &TestCluster) -> anyhow::Result<Vec<Statement>> {
    let rows = cluster
        .psql(
            "SELECT calls, round(total_exec_time::numeric, 3), rows, \
                    regexp_replace(query, '\\s+', ' ', 'g') \
             FROM pg_stat_statements \
             WHERE query NOT LIKE '%pg_stat_statements%' \
             ORDER BY total_exec_time DESC",
        )
        .await?;
    rows.lines().filter(|l| !l.is_empty()).map(parse).collect()
}

/// One `psql -At` line: `calls|total_ms|rows|query` (the query last: it may hold `|`).
fn parse(line: &str) -> anyhow::Result<Statement> {
    let mut f = line.splitn(4, '|');
    let mut next = |what: &str| f.next().with_context(|| format!("no {what} in {line:?}"));
    Ok(Statement {
        calls: next("calls")?.parse().context("calls")?,
        total_ms: next("time")?.parse().context("time")?,
        rows: next("rows")?.parse().context("rows")?,
        query: next("query")?.trim().to_owned(),
    })
}

/// The phase's table: per statement, its calls and time per `per` events (connections).
pub fn table(phase: &str, stmts: &[Statement], per: usize) -> String {
    let mut out = String::new();
    let calls: u64 = stmts.iter().map(|s| s.calls).sum();
    let ms: f64 = stmts.iter().map(|s| s.total_ms).sum();
    let per = per.max(1) as f64;
    let _ = writeln!(
        out,
        "\nPostgreSQL's statements, {phase} (`pg_stat_statements`, execution time only): {calls} \
         calls, {:.2} per connection, {:.1} s in all, {:.3} ms per connection.\n\n\
         | calls | per connection | ms in all | ms per call | rows | statement |\n\
         |---:|---:|---:|---:|---:|---|",
        calls as f64 / per,
        ms / 1000.0,
        ms / per
    );
    for s in stmts.iter().filter(|s| s.calls as f64 > per / 100.0) {
        let mut q: String = s.query.chars().take(160).collect();
        if q.len() < s.query.len() {
            q.push('…');
        }
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.0} | {:.3} | {} | `{}` |",
            s.calls,
            s.calls as f64 / per,
            s.total_ms,
            s.total_ms / s.calls.max(1) as f64,
            s.rows,
            q.replace('|', "\\|").replace('`', "'")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_keeps_the_bars_of_its_query() {
        let s = parse("12|3.5|12|SELECT a || b FROM t WHERE x = $1").unwrap();
        assert_eq!((s.calls, s.rows), (12, 12));
        assert!((s.total_ms - 3.5).abs() < 1e-9);
        assert_eq!(s.query, "SELECT a || b FROM t WHERE x = $1");
        assert!(parse("12|x|1|q").is_err());
        assert!(parse("12|1").is_err());
    }

    #[test]
    fn the_table_counts_per_connection_and_hides_the_rare() {
        let stmts = [
            Statement {
                calls: 200,
                total_ms: 20.0,
                rows: 200,
                query: "SELECT 1".into(),
            },
            Statement {
                calls: 1,
                total_ms: 5.0,
                rows: 0,
                query: "VACUUM".into(),
            },
        ];
        let t = table("connect", &stmts, 100);
        assert!(t.contains("201 calls, 2.01 per connection"), "{t}");
        assert!(
            t.contains("| 200 | 2.00 | 20 | 0.100 | 200 | `SELECT 1` |"),
            "{t}"
        );
        assert!(!t.contains("VACUUM"), "{t}");
    }
}
