//! What the store's unit tests share: two tenants on a fresh store (of either backend, see
//! `test_backends::each`), and two keys.

use passerelle_proto::ids::TenantName;

use super::{Store, TenantId};

pub(crate) const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJylJeR0uUHfNCfg57oy+6Rr9aTK65v++92waft60cWZ a";
pub(crate) const KEY_B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINUqowRv7PeSZuhgByYzhqTx6g/vM8UbulA35Y9FiBZs b";

/// Tenants `one` and `two` in `store` (of any backend, see `test_backends::each`).
pub(crate) fn tenants_one_two(store: &Store) -> (TenantId, TenantId) {
    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let name = TenantName::new(name).unwrap();
        store.create_tenant(&name).unwrap();
        ids.push(store.tenant_id(&name).unwrap().unwrap());
    }
    (ids[0], ids[1])
}
