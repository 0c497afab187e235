//! [`Store::create_agents`] on both backends: a batch is written whole or not at all, with
//! every bad item named, under the same rules as one by one.

use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::Ed25519Keypair;

use super::*;
use crate::store::test_backends::each;
use crate::store::test_fixtures::{KEY_A, tenants_one_two};

/// A distinct public key line per `i`.
fn key(i: usize) -> String {
    let mut seed = [0x42u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    PrivateKey::from(Ed25519Keypair::from_seed(&seed))
        .public_key()
        .to_openssh()
        .unwrap()
}

fn item(id: &str, public_key: &str) -> NewAgent {
    NewAgent {
        id: AgentId::new(id).unwrap(),
        public_key: public_key.to_owned(),
        vnc_password: None,
    }
}

fn batch(range: std::ops::Range<usize>) -> Vec<NewAgent> {
    range.map(|i| item(&format!("pc-{i}"), &key(i))).collect()
}

fn refused(err: &anyhow::Error) -> Vec<(usize, &str, ItemFault)> {
    match err.downcast_ref::<ImportRefused>() {
        Some(ImportRefused::Items { items, .. }) => items
            .iter()
            .map(|e| (e.index, e.id.as_str(), e.fault))
            .collect(),
        other => panic!("not an item refusal: {other:?} ({err:#})"),
    }
}

#[test]
fn a_batch_is_registered_whole_and_logs_in() {
    each(|store| {
        let (one, _) = tenants_one_two(store);
        // Over a chunk and not a power of two: every chunk size is exercised.
        let mut items = batch(0..300);
        items[7].vnc_password = Some("s3cret".into());
        assert!(!format!("{:?}", items[7]).contains("s3cret"));
        let mut seen = Vec::new();
        let done = store
            .create_agents_with(
                one,
                &items,
                ImportOptions {
                    max_agents: 10_000,
                    refused: Vec::new(),
                    progress: &mut |n| seen.push(n),
                },
            )
            .unwrap();
        assert_eq!(done.len(), 300);
        assert_eq!(seen.last(), Some(&300));
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(store.agent_count(one).unwrap(), 300);
        for i in [0, 7, 255, 299] {
            let fp = key_fingerprint(&key(i)).unwrap();
            assert_eq!(done[i].key_fingerprint, fp);
            let agent = store.agent_for_key(&format!("pc-{i}"), &fp).unwrap();
            assert_eq!(agent.unwrap().tenant_id, one, "pc-{i}");
        }
        let pc7 = AgentId::new("pc-7").unwrap();
        assert_eq!(
            store.vnc_password(one, &pc7).unwrap().as_deref(),
            Some(&b"s3cret"[..])
        );
    });
}

#[test]
fn a_conflict_with_a_registered_agent_refuses_the_batch_naming_each_item() {
    each(|store| {
        let (one, _) = tenants_one_two(store);
        store
            .create_agent(one, &AgentId::new("pc-2").unwrap(), KEY_A, None)
            .unwrap();
        let mut items = batch(0..5);
        // Item 4 has the key of tenant one's pc-2 under a new id; item 5's key does not parse.
        items[4] = item("pc-new", KEY_A);
        items.push(item("pc-bad", "ssh-ed25519 AAAAnotbase64!"));
        let err = store.create_agents(one, &items, 10_000).unwrap_err();
        assert_eq!(
            refused(&err),
            vec![
                (2, "pc-2", ItemFault::Conflict),
                (4, "pc-new", ItemFault::Conflict),
                (5, "pc-bad", ItemFault::Invalid),
            ]
        );
        assert!(err.to_string().contains("3 of the 6"), "{err}");
        // Nothing of it was written.
        assert_eq!(store.agent_count(one).unwrap(), 1);
    });
}

#[test]
fn an_id_or_key_twice_in_the_batch_is_refused() {
    each(|store| {
        let (one, _) = tenants_one_two(store);
        let mut items = batch(0..4);
        items.push(item("pc-1", &key(99)));
        items.push(item("pc-98", &key(2)));
        let err = store.create_agents(one, &items, 10_000).unwrap_err();
        assert_eq!(
            refused(&err),
            vec![
                (4, "pc-1", ItemFault::Conflict),
                (5, "pc-98", ItemFault::Conflict)
            ]
        );
        let ImportRefused::Items { items: errors, .. } = err.downcast_ref().unwrap() else {
            unreachable!()
        };
        assert!(
            errors[1].message.contains("item 2"),
            "{}",
            errors[1].message
        );
        assert_eq!(store.agent_count(one).unwrap(), 0);
    });
}

#[test]
fn the_quota_counts_the_whole_batch() {
    each(|store| {
        let (one, _) = tenants_one_two(store);
        store.create_agents(one, &batch(0..3), 10).unwrap();
        let err = store.create_agents(one, &batch(3..11), 10).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<ImportRefused>(),
                Some(ImportRefused::Quota {
                    count: 3,
                    adding: 8,
                    max: 10
                })
            ),
            "{err:#}"
        );
        assert_eq!(store.agent_count(one).unwrap(), 3);
        store.create_agents(one, &batch(3..10), 10).unwrap();
        assert_eq!(store.agent_count(one).unwrap(), 10);
    });
}

#[test]
fn a_login_active_in_another_tenant_is_shadowed_as_one_by_one() {
    each(|store| {
        let (one, two) = tenants_one_two(store);
        let pc = AgentId::new("pc-1").unwrap();
        store.create_agent(one, &pc, &key(1), None).unwrap();
        // Tenant two imports the same login (pc-1, key 1) and the same key under another id.
        let items = vec![item("pc-1", &key(1)), item("pc-5", &key(2))];
        store.create_agents(two, &items, 10).unwrap();
        let login = store
            .agent_for_key("pc-1", &key_fingerprint(&key(1)).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(
            login.tenant_id, one,
            "the first registration keeps the login"
        );
        let five = store
            .agent_for_key("pc-5", &key_fingerprint(&key(2)).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(five.tenant_id, two);
        // The shadowed registration is listed like any agent.
        assert_eq!(store.agents(two).unwrap().len(), 2);
        // And it does not wake up when tenant one lets go, as with create_agent.
        store.delete_agent(one, &pc).unwrap();
        assert!(
            store
                .agent_for_key("pc-1", &key_fingerprint(&key(1)).unwrap())
                .unwrap()
                .is_none()
        );
    });
}

#[test]
fn chunks_are_powers_of_two_after_full_ones() {
    let items: Vec<usize> = (0..(256 * 2 + 37)).collect();
    let sizes: Vec<usize> = row_chunks(&items, &CHUNKS).map(<[usize]>::len).collect();
    assert_eq!(sizes, vec![256, 256, 32, 4, 1]);
    assert!(row_chunks::<usize>(&[], &CHUNKS).next().is_none());
}
