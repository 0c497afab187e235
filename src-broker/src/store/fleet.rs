//! The agent list at fleet size: pages in id order (the primary key's order, so a page is one
//! index range however many agents a tenant has), an id-prefix search as a key range, the
//! records of given ids (the online filter pages from the registry, in memory), and when an
//! agent was last seen (written when its connection ends, for the console's offline rows).

use passerelle_proto::ids::AgentId;

use super::sql::{Exec as _, Value, params};

use super::agents::{COLUMNS, from_row, record};
use super::{AgentRecord, Store, TenantId};

/// Past the last character agent ids may contain (they are ASCII), as an exclusive upper bound.
const PAST_ID_ALPHABET: char = '\u{7f}';

impl Store {
    /// At most `limit` agents of a tenant in id order, after `after` (a cursor: the last id of
    /// the previous page), whose id starts with `prefix`.
    pub fn agents_page(
        &self,
        tenant_id: TenantId,
        after: Option<&AgentId>,
        prefix: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<AgentRecord>> {
        // Only the bounds given, so that SQLite reads one range of the (tenant_id, id) key.
        let mut conditions = String::new();
        let mut values = vec![Value::Integer(tenant_id)];
        if let Some(after) = after {
            conditions.push_str(" AND id > ?");
            values.push(Value::Text(after.as_str().to_owned()));
        }
        if let Some(p) = prefix.filter(|p| !p.is_empty()) {
            conditions.push_str(" AND id >= ? AND id < ?");
            values.push(Value::Text(p.to_owned()));
            values.push(Value::Text(format!("{p}{PAST_ID_ALPHABET}")));
        }
        values.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        let sql = format!(
            "SELECT {COLUMNS} FROM agents WHERE tenant_id = ?{conditions} ORDER BY id LIMIT ?"
        );
        let rows = self.conn()?.query_map(&sql, values, from_row)?;
        rows.into_iter().map(record).collect()
    }

    /// The agents of a tenant among `ids`, in id order (missing ones are skipped).
    pub fn agents_by_ids(
        &self,
        tenant_id: TenantId,
        ids: &[AgentId],
    ) -> anyhow::Result<Vec<AgentRecord>> {
        let mut out = Vec::with_capacity(ids.len());
        // Bounded statements: SQLite caps the number of parameters.
        for chunk in ids.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(",");
            let sql = format!(
                "SELECT {COLUMNS} FROM agents WHERE tenant_id = ? AND id IN ({marks}) ORDER BY id"
            );
            let mut values = vec![Value::Integer(tenant_id)];
            values.extend(chunk.iter().map(|id| Value::Text(id.as_str().to_owned())));
            let rows = self.conn()?.query_map(&sql, values, from_row)?;
            for row in rows {
                out.push(record(row)?);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Notes that the agent's connection ended at `at` (ms since the epoch).
    pub fn set_last_seen(&self, tenant_id: TenantId, id: &AgentId, at: i64) -> anyhow::Result<()> {
        self.conn()?.execute(
            "UPDATE agents SET last_seen = ?1 WHERE tenant_id = ?2 AND id = ?3",
            params![at, tenant_id, id.as_str()],
        )?;
        Ok(())
    }

    /// Registers many agents at once, in one transaction, with made-up distinct ed25519 keys
    /// (for tests and benchmarks of fleet-sized lists; such agents cannot log in).
    #[doc(hidden)]
    pub fn insert_agents_for_tests(
        &self,
        tenant_id: TenantId,
        ids: &[AgentId],
    ) -> anyhow::Result<()> {
        use russh::keys::ssh_key::public::Ed25519PublicKey;
        use russh::keys::{HashAlg, PublicKey};
        use sha2::{Digest as _, Sha256};
        let now = super::now_ms();
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        {
            for id in ids {
                let seed: [u8; 32] =
                    Sha256::digest(format!("{tenant_id}/{}", id.as_str()).as_bytes()).into();
                let key = PublicKey::from(Ed25519PublicKey(seed));
                let line = key.to_openssh()?;
                let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
                tx.execute(
                    "INSERT INTO agents (tenant_id, id, public_key, key_fingerprint, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![tenant_id, id.as_str(), line, fingerprint, now],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use passerelle_proto::ids::TenantName;

    use super::*;

    #[test]
    fn pages_prefixes_and_last_seen() {
        crate::store::test_backends::each(|store| {
            for name in ["one", "two"] {
                store
                    .create_tenant(&TenantName::new(name).unwrap())
                    .unwrap();
            }
            let one = store
                .tenant_id(&TenantName::new("one").unwrap())
                .unwrap()
                .unwrap();
            let ids: Vec<AgentId> = (0..250)
                .map(|i| AgentId::new(format!("pc-{i:04}")).unwrap())
                .chain(["lab-1", "pc", "pd-0"].map(|s| AgentId::new(s).unwrap()))
                .collect();
            store.insert_agents_for_tests(one, &ids).unwrap();
            store
                .insert_agents_for_tests(one + 1, &[AgentId::new("pc-0000").unwrap()])
                .unwrap();
            // Pages follow each other without gaps or repeats, in id order, in the tenant only.
            let mut seen = Vec::new();
            let mut after: Option<AgentId> = None;
            loop {
                let page = store.agents_page(one, after.as_ref(), None, 100).unwrap();
                if page.is_empty() {
                    break;
                }
                after = page.last().map(|a| a.id.clone());
                seen.extend(page.into_iter().map(|a| a.id));
            }
            let mut want = ids.clone();
            want.sort();
            assert_eq!(seen, want);
            // A prefix is a range: `pc-01` finds pc-0100..pc-0199, nothing else.
            let found = store.agents_page(one, None, Some("pc-01"), 1000).unwrap();
            assert_eq!(found.len(), 100);
            assert!(found.iter().all(|a| a.id.as_str().starts_with("pc-01")));
            let pc = store.agents_page(one, None, Some("pc"), 1000).unwrap();
            assert_eq!(pc.len(), 251, "pc and pc-*, not pd-0");
            let some = [
                ids[3].clone(),
                AgentId::new("nobody").unwrap(),
                ids[1].clone(),
            ];
            let got = store.agents_by_ids(one, &some).unwrap();
            assert_eq!(
                got.iter().map(|a| &a.id).collect::<Vec<_>>(),
                [&ids[1], &ids[3]]
            );
            assert_eq!(got[0].last_seen, None);
            store.set_last_seen(one, &ids[1], 1234).unwrap();
            assert_eq!(
                store.agent(one, &ids[1]).unwrap().unwrap().last_seen,
                Some(1234)
            );
        });
    }
}
