//! Audit retention: events older than `audit_retention_days` are deleted, and each pruning is
//! itself an audit event (`audit_pruned`, in each tenant that lost events, with the count), so
//! the trail says what it no longer holds. Session rows are not touched.

use super::sql::{Exec as _, params};

use super::{AuditKind, NewEvent, Store, TenantId, now_ms};

const DAY_MS: i64 = 86_400_000;

impl Store {
    /// Deletes audit events older than `days` days (0 keeps everything) and audits how many
    /// went, per tenant. Returns the number deleted.
    pub fn prune_audit(&self, days: u32) -> anyhow::Result<u64> {
        if days == 0 {
            return Ok(0);
        }
        let cutoff = now_ms().saturating_sub(i64::from(days).saturating_mul(DAY_MS));
        let counts: Vec<(Option<TenantId>, u64)> = {
            let mut conn = self.conn()?;
            let tx = conn.transaction()?;
            let counts = tx.query_map(
                "SELECT tenant_id, COUNT(*) FROM audit WHERE at < ?1 GROUP BY tenant_id",
                params![cutoff],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            tx.execute("DELETE FROM audit WHERE at < ?1", params![cutoff])?;
            tx.commit()?;
            counts
        };
        let mut total = 0;
        for (tenant_id, n) in counts {
            total += n;
            let mut ev = NewEvent::new(
                AuditKind::AuditPruned,
                format!("{n} audit events older than {days} days deleted (audit_retention_days)"),
            );
            ev.tenant_id = tenant_id;
            self.audit(ev);
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use passerelle_proto::ids::TenantName;

    use super::*;
    use crate::store::AuditFilter;

    #[test]
    fn old_events_go_and_the_pruning_is_counted_in_each_tenant() {
        crate::store::test_backends::each(|store| {
            let name = TenantName::new("t").unwrap();
            store.create_tenant(&name).unwrap();
            let t = store.tenant_id(&name).unwrap().unwrap();
            for (age_days, n) in [(500, 3), (10, 2)] {
                for _ in 0..n {
                    store
                    .conn()
                    .unwrap()
                    .execute(
                        "INSERT INTO audit (at, kind, tenant_id, detail) VALUES (?1, 'auth_failed', ?2, 'x')",
                        params![now_ms() - age_days * DAY_MS, t],
                    )
                    .unwrap();
                }
            }
            assert_eq!(store.prune_audit(0).unwrap(), 0, "0 keeps everything");
            assert_eq!(store.prune_audit(400).unwrap(), 3);
            let page = store.audit_page(t, &AuditFilter::default()).unwrap();
            let kinds: Vec<&str> = page.events.iter().map(|e| e.kind.as_str()).collect();
            assert_eq!(kinds, ["audit_pruned", "auth_failed", "auth_failed"]);
            assert!(
                page.events[0].detail.starts_with("3 audit events"),
                "{}",
                page.events[0].detail
            );
            assert_eq!(store.prune_audit(400).unwrap(), 0, "nothing left to prune");
        });
    }
}
