//! The search index of terminal sessions: every line of a recorded terminal's transcript (output,
//! and input when the tenant records it) with its time, in an SQLite FTS5 table with the trigram
//! tokenizer, so that `LIKE '%text%'` (any substring, case-insensitive for ASCII) is answered
//! from the index for three characters or more. Filled once per session, when it ends.

use rusqlite::params;

use super::{Store, TenantId};

/// The table (appended to the store's migrations).
pub(super) const MIGRATION: &str = r#"
CREATE VIRTUAL TABLE terminal_text USING fts5(
    text,
    tenant_id UNINDEXED,
    session_id UNINDEXED,
    t_us UNINDEXED,
    input UNINDEXED,
    tokenize = 'trigram'
);
"#;

/// Longest search text.
pub const MAX_QUERY: usize = 256;

/// A transcript line that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextMatch {
    pub session: String,
    /// Microseconds since the recording started.
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
    /// Indexes a session's transcript lines `(time_us, input, text)`, replacing what an earlier
    /// call indexed for it. Returns the number of lines.
    pub fn index_terminal<'a>(
        &self,
        tenant_id: TenantId,
        session: &str,
        lines: impl IntoIterator<Item = (u64, bool, &'a str)>,
    ) -> anyhow::Result<usize> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM terminal_text WHERE session_id = ?1",
            params![session],
        )?;
        let mut n = 0;
        {
            let mut insert = tx.prepare(
                "INSERT INTO terminal_text (text, tenant_id, session_id, t_us, input)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (t, input, text) in lines {
                let t = i64::try_from(t).unwrap_or(i64::MAX);
                insert.execute(params![text, tenant_id, session, t, input])?;
                n += 1;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// The tenant's transcript lines that contain `q`, by session then time; at most `limit`.
    pub fn search_terminal(
        &self,
        tenant_id: TenantId,
        q: &str,
        limit: u32,
    ) -> anyhow::Result<Vec<TextMatch>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT session_id, t_us, input, text FROM terminal_text
             WHERE text LIKE ?1 ESCAPE '\\' AND tenant_id = ?2
             ORDER BY session_id, t_us LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![like_pattern(q), tenant_id, limit], |r| {
            Ok(TextMatch {
                session: r.get(0)?,
                time_us: r.get(1)?,
                input: r.get(2)?,
                text: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use passerelle_proto::ids::TenantName;

    use super::*;

    #[test]
    fn finds_substrings_within_a_tenant_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for n in ["a", "b"] {
            store.create_tenant(&TenantName::new(n).unwrap()).unwrap();
        }
        let (a, b) = (1, 2);
        let lines = [
            (1_000_000, false, "$ cat /etc/hostname"),
            (1_200_000, false, "workstation-42"),
            (900_000, true, "cat /etc/hostname"),
        ];
        assert_eq!(store.index_terminal(a, "s1", lines).unwrap(), 3);
        store
            .index_terminal(b, "s2", [(5, false, "workstation-42 in b")])
            .unwrap();
        let hits = store.search_terminal(a, "STATION-4", 100).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(
            hits[0],
            TextMatch {
                session: "s1".into(),
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
        // Indexing again replaces.
        store.index_terminal(a, "s1", [(1, false, "x")]).unwrap();
        assert!(
            store
                .search_terminal(a, "hostname", 100)
                .unwrap()
                .is_empty()
        );
    }
}
