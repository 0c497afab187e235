//! The search index of terminal sessions: every line of a recorded terminal's transcript (output,
//! and input when the tenant records it) with its time, in an SQLite FTS5 table with the trigram
//! tokenizer, so that `LIKE '%text%'` (any substring, case-insensitive for ASCII) is answered
//! from the index for three characters or more. Filled once per recorded connection (a
//! recording segment), when it ends. On PostgreSQL, a plain table with a `pg_trgm` GIN index
//! answers `ILIKE '%text%'` the same way.

use super::sql::{Backend, Exec as _, params};
use super::{Store, TenantId};

/// The table (appended to the store's migrations).
pub(super) const MIGRATION: &str = r#"
CREATE VIRTUAL TABLE terminal_text USING fts5(
    text,
    tenant_id UNINDEXED,
    session_id UNINDEXED,
    segment UNINDEXED,
    t_us UNINDEXED,
    input UNINDEXED,
    tokenize = 'trigram',
    detail = none
);
"#;

/// The same table on PostgreSQL: a trigram index (the `pg_trgm` extension, in PostgreSQL's
/// contrib modules, trusted: the database owner may create it) over the text.
pub(super) const PG_MIGRATION: &str = r#"
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE TABLE terminal_text (
    text TEXT COLLATE "C" NOT NULL,
    tenant_id BIGINT,
    session_id TEXT COLLATE "C",
    segment BIGINT,
    t_us BIGINT,
    input BIGINT
);
CREATE INDEX terminal_text_trigrams ON terminal_text USING gin (text gin_trgm_ops);
CREATE INDEX terminal_text_by_segment ON terminal_text (session_id, segment);
"#;

/// Longest search text.
pub const MAX_QUERY: usize = 256;

/// A transcript line that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextMatch {
    pub session: String,
    /// The connection (recording segment, from 1).
    pub segment: u32,
    /// Microseconds since the segment's recording started.
    pub time_us: i64,
    /// A typed line (recorded input), not output.
    pub input: bool,
    pub text: String,
}

fn like_pattern(q: &str) -> String {
    let mut p = String::with_capacity(q.len() + 2);
    p.push('%');
    for c in q.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

impl Store {
    /// Indexes the transcript lines `(time_us, input, text)` of a session's connection
    /// `segment`, replacing what an earlier call indexed for it. Returns the number of lines.
    pub fn index_terminal<'a>(
        &self,
        tenant_id: TenantId,
        session: &str,
        segment: u32,
        lines: impl IntoIterator<Item = (u64, bool, &'a str)>,
    ) -> anyhow::Result<usize> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM terminal_text WHERE session_id = ?1 AND segment = ?2",
            params![session, segment],
        )?;
        let mut n = 0;
        for (t, input, text) in lines {
            let t = i64::try_from(t).unwrap_or(i64::MAX);
            tx.execute(
                "INSERT INTO terminal_text (text, tenant_id, session_id, segment, t_us, input)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![text, tenant_id, session, segment, t, input],
            )?;
            n += 1;
        }
        tx.commit()?;
        Ok(n)
    }

    /// Forgets the transcript of a session's connection `segment` (its recording was
    /// deleted); the lines removed.
    pub fn unindex_terminal(&self, session: &str, segment: u32) -> anyhow::Result<usize> {
        Ok(self.conn()?.execute(
            "DELETE FROM terminal_text WHERE session_id = ?1 AND segment = ?2",
            params![session, segment],
        )?)
    }

    /// The tenant's transcript lines that contain `q`, by session, connection and time; at most
    /// `limit`.
    pub fn search_terminal(
        &self,
        tenant_id: TenantId,
        q: &str,
        limit: u32,
    ) -> anyhow::Result<Vec<TextMatch>> {
        let conn = self.conn()?;
        // SQLite's LIKE ignores ASCII case; PostgreSQL's ILIKE does the same (and more).
        let like = match conn.backend() {
            Backend::Sqlite => "LIKE",
            Backend::Postgres => "ILIKE",
        };
        let sql = format!(
            "SELECT session_id, segment, t_us, input, text FROM terminal_text
             WHERE text {like} ?1 ESCAPE '\\' AND tenant_id = ?2
             ORDER BY session_id, segment, t_us LIMIT ?3"
        );
        let rows = conn.query_map(&sql, params![like_pattern(q), tenant_id, limit], |r| {
            Ok(TextMatch {
                session: r.get(0)?,
                segment: r.get(1)?,
                time_us: r.get(2)?,
                input: r.get(3)?,
                text: r.get(4)?,
            })
        })?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use passerelle_proto::ids::TenantName;

    use super::*;

    #[test]
    fn finds_substrings_within_a_tenant_only() {
        crate::store::test_backends::each(|store| {
            for n in ["a", "b"] {
                store.create_tenant(&TenantName::new(n).unwrap()).unwrap();
            }
            let (a, b) = (1, 2);
            let lines = [
                (1_000_000, false, "$ cat /etc/hostname"),
                (1_200_000, false, "workstation-42"),
                (900_000, true, "cat /etc/hostname"),
            ];
            assert_eq!(store.index_terminal(a, "s1", 1, lines).unwrap(), 3);
            store
                .index_terminal(b, "s2", 1, [(5, false, "workstation-42 in b")])
                .unwrap();
            let hits = store.search_terminal(a, "STATION-4", 100).unwrap();
            assert_eq!(hits.len(), 1);
            assert_eq!(
                hits[0],
                TextMatch {
                    session: "s1".into(),
                    segment: 1,
                    time_us: 1_200_000,
                    input: false,
                    text: "workstation-42".into()
                }
            );
            assert_eq!(store.search_terminal(a, "hostname", 100).unwrap().len(), 2);
            assert_eq!(store.search_terminal(a, "ho", 100).unwrap().len(), 2);
            // Wildcards are text.
            assert!(store.search_terminal(a, "%", 100).unwrap().is_empty());
            assert!(store.search_terminal(a, "in b", 100).unwrap().is_empty());
            // Indexing a connection again replaces it, and only it.
            store
                .index_terminal(a, "s1", 2, [(7, false, "xyz second")])
                .unwrap();
            store
                .index_terminal(a, "s1", 1, [(1, false, "xyz first")])
                .unwrap();
            assert!(
                store
                    .search_terminal(a, "hostname", 100)
                    .unwrap()
                    .is_empty()
            );
            let both = store.search_terminal(a, "xyz", 100).unwrap();
            let found: Vec<_> = both.iter().map(|m| (m.segment, m.time_us)).collect();
            assert_eq!(found, [(1, 1), (2, 7)], "by connection, then time");
            // A deleted recording takes its transcript along, and only its own.
            assert_eq!(store.unindex_terminal("s1", 1).unwrap(), 1);
            let left = store.search_terminal(a, "xyz", 100).unwrap();
            assert_eq!(left.len(), 1);
            assert_eq!(left[0].segment, 2);
        });
    }

    /// Measures the index per MB of recording (README, "Search"): the file named by
    /// `PASSERELLE_INDEX_SAMPLE` (or a synthetic listing) played as terminal output in 4 KiB
    /// pieces, recorded, then indexed.
    /// `PASSERELLE_INDEX_SAMPLE=FILE cargo test -p passerelle --lib index_size -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn index_size_per_megabyte_of_recording() {
        use passerelle_proto::recording::{Content, Header, Kind, Writer};
        use passerelle_proto::terminal::transcript;

        let sample = match std::env::var_os("PASSERELLE_INDEX_SAMPLE") {
            Some(path) => std::fs::read(path).unwrap(),
            None => (0..100_000)
                .map(|i| {
                    format!(
                        "-rw-r--r-- 1 root root {i:>8} Dec  1 20:{:02} file-{i}.txt\r\n",
                        i % 60
                    )
                })
                .collect::<String>()
                .into_bytes(),
        };
        // LF as a terminal prints it.
        let mut output = Vec::with_capacity(sample.len() * 11 / 10);
        for &b in &sample {
            if b == b'\n' && output.last() != Some(&b'\r') {
                output.push(b'\r');
            }
            output.push(b);
        }
        let header = Header {
            version: 1,
            session: "s".into(),
            tenant: "t".into(),
            agent: "a".into(),
            service: "ssh".into(),
            operator: "o".into(),
            view_only: false,
            started_at: "2026-12-01T00:00:00.000Z".into(),
            content: Content::Terminal,
            signer: "00".into(),
            segment: 1,
        };
        let (mut w, mut file) = Writer::start(&header);
        for (i, chunk) in output.chunks(4096).enumerate() {
            w.frame(Kind::Down, i as u64 * 1000, chunk, &mut file);
        }
        let t = transcript::of_recording(&file).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_tenant(&TenantName::new("t").unwrap()).unwrap();
        let used = |store: &Store| -> i64 {
            let guard = store.conn().unwrap();
            let conn = guard.sqlite().unwrap();
            let pages: i64 = conn
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .unwrap();
            let free: i64 = conn
                .query_row("PRAGMA freelist_count", [], |r| r.get(0))
                .unwrap();
            let size: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .unwrap();
            (pages - free) * size
        };
        let before = used(&store);
        let lines = t.output.iter().map(|l| (l.time_us, false, l.text.as_str()));
        let n = store.index_terminal(1, "s", 1, lines).unwrap();
        store
            .conn()
            .unwrap()
            .execute_batch("INSERT INTO terminal_text(terminal_text) VALUES('optimize'); PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        let index = used(&store) - before;
        let mb = file.len() as f64 / (1 << 20) as f64;
        eprintln!(
            "recording {:.2} MiB ({} bytes of text), {n} lines: index {:.2} MiB, {:.2} MiB per MiB of recording",
            mb,
            sample.len(),
            index as f64 / (1 << 20) as f64,
            index as f64 / (1 << 20) as f64 / mb
        );
        let needle = t.output[t.output.len() / 2].text.clone();
        let started = std::time::Instant::now();
        let hits = store.search_terminal(1, &needle, 1000).unwrap();
        eprintln!(
            "a search for one of its lines ({} hits): {:.1} ms",
            hits.len(),
            started.elapsed().as_secs_f64() * 1000.0
        );
        assert!(index > 0 && !hits.is_empty());
    }
}
