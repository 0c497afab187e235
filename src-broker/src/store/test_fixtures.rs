//! What the store's unit tests share: two tenants on a fresh store, and two keys.

use passerelle_proto::ids::TenantName;

use super::{Store, TenantId};

pub(super) const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJylJeR0uUHfNCfg57oy+6Rr9aTK65v++92waft60cWZ a";
pub(super) const KEY_B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINUqowRv7PeSZuhgByYzhqTx6g/vM8UbulA35Y9FiBZs b";

/// A store in a temporary dir with tenants `one` and `two`.
pub(super) fn two_tenants() -> (tempfile::TempDir, Store, TenantId, TenantId) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (one, two) = tenants_one_two(&store);
    (dir, store, one, two)
}

/// Tenants `one` and `two` in `store` (of any backend, see `test_backends::each`).
pub(super) fn tenants_one_two(store: &Store) -> (TenantId, TenantId) {
    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let name = TenantName::new(name).unwrap();
        store.create_tenant(&name).unwrap();
        ids.push(store.tenant_id(&name).unwrap().unwrap());
    }
    (ids[0], ids[1])
}
