//! The origins a tenant allows to embed its viewer pages in a frame (`frame_ancestors`), kept
//! as one space-separated column of origins that [`passerelle_proto::origin`] has checked.

use super::sql::{Exec, params};
use super::{Store, TenantId};

/// Replaces a tenant's list; `origins` must already be normalized.
pub(super) fn set(conn: &impl Exec, tenant_id: TenantId, origins: &[String]) -> anyhow::Result<()> {
    conn.execute(
        "UPDATE tenants SET frame_ancestors = ?1 WHERE id = ?2",
        params![origins.join(" "), tenant_id],
    )?;
    Ok(())
}

impl Store {
    /// The origins allowed to embed the tenant's viewer pages (none by default).
    pub fn frame_ancestors(&self, tenant_id: TenantId) -> anyhow::Result<Vec<String>> {
        let text: String = self.conn()?.query_row(
            "SELECT frame_ancestors FROM tenants WHERE id = ?1",
            [tenant_id],
            |r| r.get(0),
        )?;
        Ok(text.split_whitespace().map(str::to_owned).collect())
    }
}

#[cfg(test)]
mod tests {
    use passerelle_proto::api::PatchTenant;
    use passerelle_proto::ids::TenantName;

    #[test]
    fn origins_are_kept_per_tenant_and_cleared() {
        crate::store::test_backends::each(|store| {
            let mut ids = Vec::new();
            for name in ["a", "b"] {
                let name = TenantName::new(name).unwrap();
                store.create_tenant(&name).unwrap();
                ids.push(store.tenant_id(&name).unwrap().unwrap());
            }
            assert!(store.frame_ancestors(ids[0]).unwrap().is_empty());
            let list = vec![
                "https://a.example".to_owned(),
                "https://b.example:8443".to_owned(),
            ];
            let patch = PatchTenant {
                frame_ancestors: Some(list.clone()),
                ..Default::default()
            };
            store.patch_tenant(ids[0], &patch).unwrap();
            assert_eq!(store.frame_ancestors(ids[0]).unwrap(), list);
            assert_eq!(store.tenant_info(ids[0]).unwrap().frame_ancestors, list);
            assert!(store.frame_ancestors(ids[1]).unwrap().is_empty());
            let clear = PatchTenant {
                frame_ancestors: Some(Vec::new()),
                ..Default::default()
            };
            store.patch_tenant(ids[0], &clear).unwrap();
            assert!(store.frame_ancestors(ids[0]).unwrap().is_empty());
        });
    }
}
