use super::*;
use crate::store::KeyLogin;
use crate::store::test_fixtures::{KEY_A, KEY_B, tenants_one_two};

fn parsed(key: &str) -> (String, String) {
    crate::store::agents::parse_public_key(key).unwrap()
}

#[test]
fn a_ca_belongs_to_one_tenant_and_names_it() {
    crate::store::test_backends::each(|store| {
        let (one, two) = tenants_one_two(store);
        let ca = store.add_ssh_ca(one, KEY_A).unwrap();
        let err = store.add_ssh_ca(two, KEY_A).unwrap_err();
        assert!(err.downcast_ref::<Conflict>().is_some(), "{err:#}");
        let found = store.cert_sign_in(&ca.fingerprint, 1, "SHA256:x").unwrap();
        assert_eq!(found.unwrap().ca.tenant_id, one);
        assert!(store.cert_sign_in("SHA256:none", 1, "x").unwrap().is_none());
        assert_eq!(store.ssh_cas(one).unwrap().len(), 1);
        assert!(store.ssh_cas(two).unwrap().is_empty());
        assert!(
            store.delete_ssh_ca(two, &ca.id).unwrap().is_none(),
            "not tenant two's"
        );
        assert!(store.delete_ssh_ca(one, &ca.id).unwrap().is_some());
    });
}

#[test]
fn revocations_are_per_tenant_by_serial_or_key() {
    crate::store::test_backends::each(|store| {
        let (one, two) = tenants_one_two(store);
        let ca = store.add_ssh_ca(one, KEY_A).unwrap();
        let key_fp = parsed(KEY_B).1;
        assert!(
            store
                .revoke_ssh_cert(one, RevokedKind::Serial, "7")
                .unwrap()
        );
        assert!(
            !store
                .revoke_ssh_cert(one, RevokedKind::Serial, "7")
                .unwrap()
        );
        store
            .revoke_ssh_cert(two, RevokedKind::Key, &key_fp)
            .unwrap();
        let at = |serial, key: &str| {
            store
                .cert_sign_in(&ca.fingerprint, serial, key)
                .unwrap()
                .unwrap()
                .revoked
        };
        assert_eq!(at(7, "SHA256:other"), Some(RevokedKind::Serial));
        assert_eq!(
            at(8, &key_fp),
            None,
            "tenant two's list is not tenant one's"
        );
        store
            .revoke_ssh_cert(one, RevokedKind::Key, &key_fp)
            .unwrap();
        assert_eq!(at(8, &key_fp), Some(RevokedKind::Key));
        assert_eq!(store.ssh_revoked(one).unwrap().len(), 2);
    });
}

#[test]
fn a_certificate_agent_is_registered_once_follows_its_key_and_has_no_bare_key_login() {
    crate::store::test_backends::each(|store| {
        let (one, _two) = tenants_one_two(store);
        let ca = store.generate_ssh_ca(one).unwrap();
        let pc = AgentId::new("pc-1").unwrap();
        let (line_a, fp_a) = parsed(KEY_A);
        let first = store
            .cert_agent(&ca, &pc, &line_a, &fp_a, 10)
            .unwrap()
            .unwrap();
        assert!(first.registered && !first.rekeyed);
        assert_eq!(
            first.record.ssh_ca.as_deref(),
            Some(ca.fingerprint.as_str())
        );
        // Its bare key is no login: that would outlive the certificate.
        assert!(store.agent_for_key("pc-1", &fp_a).unwrap().is_none());
        let KeyLogin::CertificateOnly(agents) = store.key_login("pc-1", &fp_a).unwrap() else {
            panic!("not a certificate-only key");
        };
        assert_eq!(agents, vec![(one, pc.clone())]);
        let again = store
            .cert_agent(&ca, &pc, &line_a, &fp_a, 10)
            .unwrap()
            .unwrap();
        assert!(!again.registered && !again.rekeyed);
        let (line_b, fp_b) = parsed(KEY_B);
        let moved = store
            .cert_agent(&ca, &pc, &line_b, &fp_b, 10)
            .unwrap()
            .unwrap();
        assert!(moved.rekeyed);
        assert_eq!(moved.record.key_fingerprint, fp_b);
        // A registration with a key (by an admin) makes it key-based again.
        store.update_agent(one, &pc, Some(KEY_A), None).unwrap();
        assert!(store.agent_for_key("pc-1", &fp_a).unwrap().is_some());
    });
}

#[test]
fn the_cap_and_a_taken_key_refuse_a_new_certificate_agent() {
    crate::store::test_backends::each(|store| {
        let (one, _two) = tenants_one_two(store);
        let ca = store.add_ssh_ca(one, KEY_B).unwrap();
        store
            .create_agent(one, &AgentId::new("pc-1").unwrap(), KEY_A, None)
            .unwrap();
        let (line, fp) = parsed(KEY_A);
        let pc2 = AgentId::new("pc-2").unwrap();
        let refused = store.cert_agent(&ca, &pc2, &line, &fp, 10).unwrap();
        assert!(matches!(refused, Err(CertAgentRefused::KeyTaken)));
        let refused = store.cert_agent(&ca, &pc2, &line, &fp, 1).unwrap();
        assert!(matches!(refused, Err(CertAgentRefused::TooManyAgents(1))));
    });
}

#[test]
fn a_generated_ca_signs_with_counted_serials_and_keeps_its_key_sealed() {
    crate::store::test_backends::each(|store| {
        let (one, two) = tenants_one_two(store);
        assert!(store.ssh_ca_signer(one).unwrap().is_none());
        let ca = store.generate_ssh_ca(one).unwrap();
        assert!(ca.generated);
        let (found, key, s1) = store.ssh_ca_signer(one).unwrap().unwrap();
        let (_, _, s2) = store.ssh_ca_signer(one).unwrap().unwrap();
        assert_eq!((found.id, s1, s2), (ca.id, 1, 2));
        assert_eq!(fingerprint(key.public_key().key_data()), ca.fingerprint);
        assert!(store.ssh_ca_signer(two).unwrap().is_none());
        let raw: Vec<u8> = store
            .conn()
            .unwrap()
            .query_row("SELECT private_key FROM ssh_cas", (), |r| r.get(0))
            .unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("OPENSSH PRIVATE KEY"));
    });
}

#[test]
fn fingerprints_are_given_as_a_key_line_or_as_text() {
    let fp = parsed(KEY_A).1;
    assert_eq!(key_fingerprint_of(KEY_A).unwrap(), fp);
    assert_eq!(key_fingerprint_of(&fp).unwrap(), fp);
    assert!(key_fingerprint_of("SHA256:bad fp").is_err());
    assert!(key_fingerprint_of("nonsense").is_err());
}
