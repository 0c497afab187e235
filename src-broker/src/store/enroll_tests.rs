//! Tests of enrolment tokens and enrolment in the store (`store::enroll`).

use passerelle_proto::ids::TenantName;

use super::*;

const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJylJeR0uUHfNCfg57oy+6Rr9aTK65v++92waft60cWZ a";
const KEY_B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINUqowRv7PeSZuhgByYzhqTx6g/vM8UbulA35Y9FiBZs b";
const KEY_C: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGvBvH/lAtwXOyzf4xGiV8hb0W4P8ifHfzZR4U24Y1Wz";

fn tenant(store: &Store) -> TenantId {
    let name = TenantName::new("t").unwrap();
    store.create_tenant(&name).unwrap();
    store.tenant_id(&name).unwrap().unwrap()
}

fn token(uses: u32) -> NewToken {
    NewToken {
        name: "gpo".into(),
        uses,
        expires_at: None,
        id_pattern: None,
        reenrol: false,
    }
}

fn id(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

fn refused(r: anyhow::Result<Result<Enrollment, Refusal>>) -> Refused {
    r.unwrap().unwrap_err().why
}

#[test]
fn a_token_enrols_its_uses_then_is_spent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let t = tenant(&store);
    let (rec, secret) = store.create_enrollment_token(t, &token(2)).unwrap();
    assert!(secret.starts_with("pet_") && secret.contains(&rec.id));
    let done = store
        .enroll(&secret, &id("pc-1"), KEY_A, 100)
        .unwrap()
        .unwrap();
    assert_eq!(done.agent.enrolled_by.as_deref(), Some(rec.id.as_str()));
    assert!(!done.reenrolled);
    // The id is taken; the same key for another id is another agent's key.
    assert_eq!(
        refused(store.enroll(&secret, &id("pc-1"), KEY_B, 100)),
        Refused::IdTaken(id("pc-1"))
    );
    assert_eq!(
        refused(store.enroll(&secret, &id("pc-2"), KEY_A, 100)),
        Refused::KeyTaken
    );
    // Refusals spent nothing.
    assert_eq!(store.enrollment_token(t, &rec.id).unwrap().unwrap().used, 1);
    store
        .enroll(&secret, &id("pc-2"), KEY_B, 100)
        .unwrap()
        .unwrap();
    assert_eq!(
        refused(store.enroll(&secret, &id("pc-3"), KEY_C, 100)),
        Refused::Spent(2)
    );
    // Wrong secrets of a real id name the token's tenant; garbage names nothing.
    let mut forged = secret.clone();
    forged.pop();
    forged.push(if secret.ends_with('A') { 'B' } else { 'A' });
    let wrong = store
        .enroll(&forged, &id("pc-3"), KEY_C, 100)
        .unwrap()
        .unwrap_err();
    assert_eq!(
        (wrong.why, wrong.token),
        (Refused::Unknown, Some((t, rec.id.clone())))
    );
    let garbage = store
        .enroll("nonsense", &id("pc-3"), KEY_C, 100)
        .unwrap()
        .unwrap_err();
    assert_eq!((garbage.why, garbage.token), (Refused::Unknown, None));
    // No secret in the store's file.
    drop(store);
    let db = std::fs::read(dir.path().join("passerelle.db")).unwrap();
    // The whole random part: the base64url alphabet has '_', so splitting on it could leave a
    // few characters, which random bytes of the file match by chance.
    let tail = secret
        .strip_prefix(crate::secrets::ENROLL_TOKEN_PREFIX)
        .unwrap()
        .as_bytes();
    assert!(tail.len() >= 40, "{} characters", tail.len());
    assert!(!db.windows(tail.len()).any(|w| w == tail));
}

#[test]
fn revoked_expired_patterns_keys_and_quota_are_refused() {
    crate::store::test_backends::each(|store| {
        let t = tenant(store);
        let (rec, secret) = store.create_enrollment_token(t, &token(10)).unwrap();
        store.revoke_enrollment_token(t, &rec.id).unwrap().unwrap();
        assert_eq!(
            refused(store.enroll(&secret, &id("pc-1"), KEY_A, 100)),
            Refused::Revoked
        );
        assert!(
            store
                .revoke_enrollment_token(t + 1, &rec.id)
                .unwrap()
                .is_none()
        );

        let mut expired = token(10);
        expired.expires_at = Some(now_ms() - 1);
        let (_, secret) = store.create_enrollment_token(t, &expired).unwrap();
        assert!(matches!(
            refused(store.enroll(&secret, &id("pc-1"), KEY_A, 100)),
            Refused::Expired(_)
        ));

        let mut lab = token(10);
        lab.id_pattern = Some(IdPattern::new("lab-*").unwrap());
        let (_, secret) = store.create_enrollment_token(t, &lab).unwrap();
        assert!(matches!(
            refused(store.enroll(&secret, &id("pc-1"), KEY_A, 100)),
            Refused::IdNotAllowed { .. }
        ));
        assert!(matches!(
            refused(store.enroll(&secret, &id("lab-1"), "ssh-ed25519 AAAA", 100)),
            Refused::BadKey(_)
        ));
        store
            .enroll(&secret, &id("lab-1"), KEY_A, 100)
            .unwrap()
            .unwrap();
        assert_eq!(
            refused(store.enroll(&secret, &id("lab-2"), KEY_B, 1)),
            Refused::Quota(1)
        );
        let listed = store.enrollment_tokens(t).unwrap();
        assert_eq!(listed.len(), 3);
        assert_eq!(listed.iter().map(|r| r.used).sum::<u32>(), 1);
    });
}

#[test]
fn re_enrolment_replaces_the_key_when_the_token_allows_it() {
    crate::store::test_backends::each(|store| {
        let t = tenant(store);
        store.create_agent(t, &id("pc-1"), KEY_A, None).unwrap();
        let mut again = token(5);
        again.reenrol = true;
        let (_, secret) = store.create_enrollment_token(t, &again).unwrap();
        let done = store
            .enroll(&secret, &id("pc-1"), KEY_B, 100)
            .unwrap()
            .unwrap();
        assert!(done.reenrolled && done.key_changed);
        let fp_b = parse_public_key(KEY_B).unwrap().1;
        assert_eq!(
            store
                .agent_for_key("pc-1", &fp_b)
                .unwrap()
                .unwrap()
                .tenant_id,
            t
        );
        let fp_a = parse_public_key(KEY_A).unwrap().1;
        assert!(store.agent_for_key("pc-1", &fp_a).unwrap().is_none());
        let same = store
            .enroll(&secret, &id("pc-1"), KEY_B, 100)
            .unwrap()
            .unwrap();
        assert!(same.reenrolled && !same.key_changed);
    });
}

#[test]
fn a_store_of_the_previous_version_opens_and_keeps_its_agents() {
    let dir = tempfile::tempdir().unwrap();
    let before = super::super::MIGRATIONS.len() - 1;
    {
        let conn = rusqlite::Connection::open(dir.path().join("passerelle.db")).unwrap();
        for m in &super::super::MIGRATIONS[..before] {
            conn.execute_batch(m.sqlite()).unwrap();
        }
        conn.execute_batch(&format!(
            "INSERT INTO tenants (id, name, created_at) VALUES (1, 'one', 0);
             PRAGMA user_version = {before};"
        ))
        .unwrap();
        let (line, fingerprint) = parse_public_key(KEY_A).unwrap();
        conn.execute(
            "INSERT INTO agents (tenant_id, id, public_key, key_fingerprint, created_at)
             VALUES (1, 'pc-1', ?1, ?2, 7)",
            rusqlite::params![line, fingerprint],
        )
        .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let agent = store.agent(1, &id("pc-1")).unwrap().unwrap();
    assert_eq!(
        (agent.created_at, agent.last_seen, agent.enrolled_by),
        (7, None, None)
    );
    let (_, secret) = store.create_enrollment_token(1, &token(1)).unwrap();
    store
        .enroll(&secret, &id("pc-2"), KEY_B, 100)
        .unwrap()
        .unwrap();
}
