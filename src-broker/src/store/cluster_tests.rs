//! The cluster's shared state on both backends: leases, presence across nodes, and the sweep of
//! a dead node's sessions.

use passerelle_proto::api::{SessionInfo, SessionState};
use passerelle_proto::ids::{AgentId, ServiceName, TenantName};

use super::LEASE_MS;
use crate::store::sql::{Exec as _, params};
use crate::store::test_backends::each_shared;
use crate::store::test_fixtures::tenants_one_two;
use crate::store::{Store, now_ms, rfc3339};

fn session(id: &str, agent: &str) -> SessionInfo {
    SessionInfo {
        id: id.to_owned(),
        tenant: TenantName::new("one").unwrap(),
        agent: AgentId::new(agent).unwrap(),
        service: ServiceName::new("vnc").unwrap(),
        operator: "alice".to_owned(),
        state: SessionState::Pending,
        record: false,
        view_only: false,
        legacy: false,
        legacy_port: None,
        created_at: rfc3339(now_ms()),
        started_at: None,
        ended_at: None,
        expires_at: rfc3339(now_ms() + 60_000),
        end_reason: None,
        ended_by: None,
        client_addr: None,
        bytes_up: 0,
        bytes_down: 0,
    }
}

/// Makes `node`'s lease look older than the lease time.
fn expire(store: &Store, node: &str) {
    store
        .conn()
        .unwrap()
        .execute(
            "UPDATE cluster_nodes SET renewed_at = ?2 WHERE name = ?1",
            params![node, now_ms() - LEASE_MS - 1000],
        )
        .unwrap();
}

#[test]
fn presence_moves_between_nodes_and_dies_with_the_lease() {
    each_shared(|open| {
        let store = &open();
        let (one, two) = tenants_one_two(store);
        let a = open().with_node("a");
        let b = open().with_node("b");
        a.node_started("https://a:1").unwrap();
        b.node_started("https://b:1").unwrap();
        let pc = AgentId::new("pc-1").unwrap();
        let vnc = ServiceName::new("vnc").unwrap();

        assert_eq!(
            a.presence_claim(one, &pc, 1, "10.0.0.1:5", &[]).unwrap(),
            None
        );
        a.presence_services(one, &pc, 1, &[(vnc.clone(), 1)])
            .unwrap();
        let held = b.presence_holder(one, &pc).unwrap().expect("held by a");
        assert_eq!(held.node.name, "a");
        assert_eq!(held.services, vec![(vnc.clone(), 1)]);
        assert!(
            b.presence_holder(two, &pc).unwrap().is_none(),
            "tenants apart"
        );
        assert_eq!(b.presence_elsewhere(one).unwrap().len(), 1);
        assert!(
            a.presence_elsewhere(one).unwrap().is_empty(),
            "a holds it itself"
        );

        // The agent reconnects to b: a is named, to drop its connection; a's late release of
        // its old connection leaves b's row alone.
        let before = b.presence_claim(one, &pc, 7, "10.0.0.1:6", &[]).unwrap();
        assert_eq!(before.map(|p| p.name), Some("a".to_owned()));
        a.presence_release(one, &pc, 1).unwrap();
        assert_eq!(a.presence_holder(one, &pc).unwrap().unwrap().node.name, "b");
        // b's lease lapses: the agent is offline everywhere at once.
        expire(store, "b");
        assert!(a.presence_holder(one, &pc).unwrap().is_none());
        assert!(a.presence_elsewhere(one).unwrap().is_empty());
        assert_eq!(
            a.presence_claim(one, &pc, 2, "x", &[]).unwrap(),
            None,
            "b is dead"
        );
    });
}

#[test]
fn a_dead_nodes_sessions_end_once_and_a_restart_ends_only_its_own() {
    each_shared(|open| {
        let store = &open();
        let (one, _) = tenants_one_two(store);
        let a = open().with_node("a");
        let b = open().with_node("b");
        a.node_started("https://a:1").unwrap();
        b.node_started("https://b:1").unwrap();
        a.insert_session(one, &session("s-a", "pc-1")).unwrap();
        b.insert_session(one, &session("s-b", "pc-2")).unwrap();
        assert_eq!(
            b.session_elsewhere("s-a").unwrap().map(|p| p.url),
            Some("https://a:1".to_owned())
        );
        assert!(a.session_elsewhere("s-a").unwrap().is_none(), "its own");
        assert_eq!(a.live_peers().unwrap().len(), 1);

        // a restarts: only its own session is an orphan.
        assert_eq!(a.end_orphans(now_ms()).unwrap(), vec!["s-a".to_owned()]);
        assert_eq!(
            store.session("s-b").unwrap().unwrap().state,
            SessionState::Pending
        );

        b.insert_session(one, &session("s-b2", "pc-2")).unwrap();
        a.presence_claim(one, &AgentId::new("pc-9").unwrap(), 1, "x", &[])
            .unwrap();
        b.presence_claim(one, &AgentId::new("pc-2").unwrap(), 1, "x", &[])
            .unwrap();
        expire(store, "b");
        let swept = a.sweep_dead_nodes().unwrap();
        let mut ids: Vec<_> = swept.iter().map(|o| o.id.clone()).collect();
        ids.sort();
        assert_eq!(ids, vec!["s-b".to_owned(), "s-b2".to_owned()]);
        assert!(swept.iter().all(|o| o.node == "b" && o.tenant_id == one));
        assert!(a.sweep_dead_nodes().unwrap().is_empty(), "each ended once");
        let s = store.session("s-b").unwrap().unwrap();
        assert_eq!(s.end_reason.map(|r| r.as_str()), Some("broker_crash"));
        let nodes = a.cluster_nodes().unwrap();
        let row = |n: &str| nodes.iter().find(|r| r.name == n).unwrap().clone();
        assert_eq!(
            (row("a").agents, row("b").agents),
            (1, 0),
            "b's presence dropped"
        );
        assert!(row("a").alive(now_ms()) && !row("b").alive(now_ms()));

        // b comes back: its row is renewed; a clean stop removes it.
        assert!(b.node_renew("https://b:2").unwrap());
        assert!(b.cluster_nodes().unwrap().iter().all(|r| r.alive(now_ms())));
        b.node_stopped().unwrap();
        assert_eq!(a.cluster_nodes().unwrap().len(), 1);
        assert!(!b.node_renew("https://b:2").unwrap(), "re-announced");
    });
}

#[test]
fn agents_of_a_dead_or_restarted_node_were_last_seen_at_its_last_renewal() {
    use crate::store::test_fixtures::{KEY_A, KEY_B};
    each_shared(|open| {
        let store = &open();
        let (one, _) = tenants_one_two(store);
        let (pc1, pc2) = (AgentId::new("pc-1").unwrap(), AgentId::new("pc-2").unwrap());
        store.create_agent(one, &pc1, KEY_A, None).unwrap();
        store.create_agent(one, &pc2, KEY_B, None).unwrap();
        let last_seen = |id: &AgentId| store.agent(one, id).unwrap().unwrap().last_seen;
        let renewed = |node: &str| {
            let nodes = store.cluster_nodes().unwrap();
            nodes.iter().find(|n| n.name == node).unwrap().renewed_at
        };
        let a = open().with_node("a");
        let b = open().with_node("b");
        a.node_started("https://a:1").unwrap();
        b.node_started("https://b:1").unwrap();
        a.presence_claim(one, &pc1, 1, "x", &[]).unwrap();
        b.presence_claim(one, &pc2, 2, "y", &[]).unwrap();
        assert_eq!(last_seen(&pc1), None);

        // a dies: the survivor's sweep notes pc-1 as last seen at a's last renewal.
        expire(store, "a");
        let a_renewed = renewed("a");
        b.sweep_dead_nodes().unwrap();
        assert_eq!(last_seen(&pc1), Some(a_renewed));
        assert_eq!(last_seen(&pc2), None, "b's agent is online");

        // b is killed and started again at once: its agent was last seen at its renewal.
        let b_renewed = renewed("b");
        b.node_started("https://b:1").unwrap();
        assert_eq!(last_seen(&pc2), Some(b_renewed));

        // A later time (the agent's own disconnect) is never moved back.
        a.node_started("https://a:1").unwrap();
        a.presence_claim(one, &pc1, 3, "x", &[]).unwrap();
        let later = now_ms() + 60_000;
        store.set_last_seen(one, &pc1, later).unwrap();
        expire(store, "a");
        b.sweep_dead_nodes().unwrap();
        assert_eq!(last_seen(&pc1), Some(later));
    });
}
