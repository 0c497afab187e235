//! The session core without HTTP or SSH: creation's rules and quotas, admission, what a
//! failed connection does to the session (by token kind), and the end. The agent is a test
//! double whose channels never open; the data path itself is tested in `crate::bridge`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use passerelle_proto::api::{PatchTenant, Role};
use passerelle_proto::close::{self, EndReason};
use passerelle_proto::ids::{AgentId, ServiceName, TenantName};

use super::*;
use crate::ends::pipe;
use crate::registry::{AgentChannel, AgentConn, AgentLink};
use crate::store::{AuditFilter, Store};

const PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000);

/// An agent whose service refuses every channel.
pub(crate) struct Refusing;

impl AgentLink for Refusing {
    fn open(
        &self,
        _address: String,
        _port: u32,
        _originator: SocketAddr,
    ) -> futures_util::future::BoxFuture<'static, anyhow::Result<AgentChannel>> {
        Box::pin(async { Err(anyhow::anyhow!("connection refused")) })
    }

    fn disconnect(&self, _reason: &str) {}
}

struct Fixture {
    core: Arc<Core>,
    tenant: crate::store::TenantId,
    _dir: tempfile::TempDir,
}

fn fixture(tweak: impl FnOnce(&mut Config)) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::for_tests(dir.path());
    tweak(&mut config);
    let store = Store::open(dir.path()).expect("store");
    let name = TenantName::new("t").expect("name");
    store.create_tenant(&name).expect("tenant");
    let tenant = store.tenant_id(&name).expect("id").expect("tenant id");
    store.create_api_key(&name, Role::Admin).expect("key");
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILHCc4sRaIPJ6xLCrCKy/zOhSjHH4EH6ixhA3rzIUPK2";
    let pc1 = AgentId::new("pc1").expect("id");
    store.create_agent(tenant, &pc1, key, None).expect("agent");
    let db = Db::new(Arc::new(store)).expect("db");
    let metrics = Arc::new(Metrics::default());
    let config = Arc::new(config);
    let guard = Arc::new(Guard::new(
        crate::throttle::Throttle::new(3, Duration::from_secs(60), Duration::from_secs(60)),
        Duration::from_secs(60),
        metrics.clone(),
        db.clone(),
    ));
    let core = Arc::new(Core {
        recording_key: Arc::new(SigningKey::load_or_create(dir.path()).expect("key")),
        writers: crate::recording::Writers::start(1, 1 << 20).expect("writers"),
        config,
        db,
        registry: Arc::default(),
        table: Table::default(),
        metrics,
        guard,
        tasks: TaskTracker::new(),
        shutdown: CancellationToken::new(),
    });
    Fixture {
        core,
        tenant,
        _dir: dir,
    }
}

impl Fixture {
    /// Puts agent pc1 online, announcing `services`.
    fn online(&self, services: &[&str]) -> Arc<AgentConn> {
        let record = self
            .core
            .db
            .blocking()
            .agent(self.tenant, &AgentId::new("pc1").expect("id"))
            .expect("lookup")
            .expect("pc1");
        let conn = Arc::new(AgentConn::new(1, &record, PEER, Box::new(Refusing)));
        for (i, s) in services.iter().enumerate() {
            conn.add_service(ServiceName::new(*s).expect("service"), 10_000 + i as u32);
        }
        self.core.registry.insert(conn.clone());
        conn
    }

    fn request(&self, service: &str) -> NewSession {
        NewSession {
            tenant_id: self.tenant,
            agent: AgentId::new("pc1").expect("id"),
            service: ServiceName::new(service).expect("service"),
            operator: "alice".into(),
            record: None,
            view_only: false,
            legacy: false,
            ttl_secs: None,
            ssh_user: None,
        }
    }

    async fn events(&self, kind: &str) -> Vec<passerelle_proto::api::AuditEvent> {
        self.core.db.audit_flushed().await;
        let f = AuditFilter {
            kind: Some(kind.into()),
            ..AuditFilter::default()
        };
        self.core
            .db
            .blocking()
            .audit_page(self.tenant, &f)
            .expect("audit")
            .events
    }
}

fn alice() -> Actor {
    Actor {
        name: "alice".into(),
        api_key: Some("k1".into()),
    }
}

#[tokio::test]
async fn creation_checks_the_agent_the_tenant_rules_and_quotas() {
    let f = fixture(|c| c.quotas.pending_sessions_per_tenant = 2);
    let mut unknown = f.request("vnc");
    unknown.agent = AgentId::new("nobody").expect("id");
    assert!(matches!(
        f.core.create(unknown, &alice()).await,
        Err(CreateError::UnknownAgent)
    ));
    assert!(matches!(
        f.core.create(f.request("vnc"), &alice()).await,
        Err(CreateError::AgentOffline(_))
    ));
    let _conn = f.online(&["vnc"]);
    assert!(matches!(
        f.core.create(f.request("rdp"), &alice()).await,
        Err(CreateError::ServiceUnavailable(..))
    ));
    // view_only is enforced for vnc, ssh and rdp only: not for a service the broker carries as
    // it is.
    let mut view_only_other = f.request("printer");
    view_only_other.view_only = true;
    assert!(matches!(
        f.core.create(view_only_other, &alice()).await,
        Err(CreateError::Invalid(_))
    ));
    let mut view_only_rdp = f.request("rdp");
    view_only_rdp.view_only = true;
    assert!(matches!(
        f.core.create(view_only_rdp, &alice()).await,
        Err(CreateError::ServiceUnavailable(..))
    ));
    // `ssh_user` names the login of an `ssh` terminal only, and is checked.
    for (service, user) in [("vnc", "bob"), ("ssh", "a\nb"), ("ssh", "")] {
        let mut req = f.request(service);
        req.ssh_user = Some(user.into());
        let refused = f.core.create(req, &alice()).await;
        assert!(
            matches!(refused, Err(CreateError::Invalid(_))),
            "{service} {user:?}: {refused:?}"
        );
    }
    let created = f
        .core
        .create(f.request("vnc"), &alice())
        .await
        .expect("created");
    let row = f
        .core
        .db
        .blocking()
        .session(&created.session.id)
        .expect("row");
    assert_eq!(row.expect("row").operator, "alice");
    let events = f.events("session_created").await;
    assert_eq!(events[0].api_key.as_deref(), Some("k1"), "{events:?}");

    // Mandatory recording: `record: false` is refused and audited; no `record` records.
    let required = PatchTenant {
        recording_required: Some(true),
        ..PatchTenant::default()
    };
    f.core
        .db
        .blocking()
        .patch_tenant(f.tenant, &required)
        .expect("patch");
    let mut unrecorded = f.request("vnc");
    unrecorded.record = Some(false);
    assert!(matches!(
        f.core.create(unrecorded, &alice()).await,
        Err(CreateError::RecordingRequired)
    ));
    assert_eq!(f.events("request_refused").await.len(), 1);
    let second = f
        .core
        .create(f.request("vnc"), &alice())
        .await
        .expect("created");
    assert!(second.session.record);

    // Two sessions nobody joined: the third is over the tenant's quota.
    assert!(matches!(
        f.core.create(f.request("vnc"), &alice()).await,
        Err(CreateError::Quota(_))
    ));
}

#[tokio::test]
async fn admission_refuses_guesses_spent_tokens_and_raw_streams_of_recorded_vnc() {
    let f = fixture(|_| {});
    let _conn = f.online(&["vnc"]);
    let mut req = f.request("vnc");
    req.record = Some(true);
    let created = f.core.create(req, &alice()).await.expect("created");
    let id = created.session.id.clone();
    let raw = f
        .core
        .join(&id, &created.tokens.viewer, PEER, Endpoint::Raw)
        .await
        .expect_err("raw refused");
    assert_eq!((raw.code, raw.end), (close::RAW_REFUSED, None));
    // Guesses lock the address out after 3 (the fixture's limit), valid token included.
    for _ in 0..3 {
        let c = f
            .core
            .join(&id, "guess", PEER, Endpoint::Viewer)
            .await
            .expect_err("guess");
        assert_eq!(c.code, close::TOKEN_INVALID);
    }
    let locked = f
        .core
        .join(&id, &created.tokens.launch, PEER, Endpoint::Viewer)
        .await
        .expect_err("locked out");
    assert_eq!(locked.code, close::TOO_MANY_ATTEMPTS);
    assert_eq!(f.events("token_guessing").await.len(), 1);
    assert!(
        !created.session.ended.is_cancelled(),
        "refusals end nothing"
    );
}

#[tokio::test]
async fn a_failed_connection_ends_the_session_for_a_viewer_token_only() {
    let f = fixture(|_| {});
    let _conn = f.online(&["rdp"]);
    let created = f
        .core
        .create(f.request("rdp"), &alice())
        .await
        .expect("created");
    let id = created.session.id.clone();
    let serve = |token: String| {
        let core = f.core.clone();
        let id = id.clone();
        async move {
            let joined = core
                .join(&id, &token, PEER, Endpoint::Viewer)
                .await
                .expect("admitted");
            let (viewer_tx, _viewer_out) = pipe(4);
            let (_viewer_in, viewer_rx) = pipe(4);
            let (_, closure) = joined
                .serve((viewer_rx, viewer_tx), || {})
                .await
                .expect("served");
            closure
        }
    };
    // The desktop helper's launch token: the workstation's service is down for this
    // connection only; the helper may try again.
    let c = serve(created.tokens.launch.clone()).await;
    assert_eq!(c.code, close::SERVICE_UNAVAILABLE);
    assert!(c.connection_only());
    assert!(!created.session.ended.is_cancelled());
    // A one-time viewer token: the session ends with the reason.
    let c = serve(created.tokens.viewer.clone()).await;
    assert_eq!(c.end, Some(EndReason::ServiceUnavailable));
    tokio::time::timeout(Duration::from_secs(5), created.session.ended.cancelled())
        .await
        .expect("the session ended");
    f.core.tasks.close();
    f.core.tasks.wait().await;
    let row = f
        .core
        .db
        .blocking()
        .session(&id)
        .expect("row")
        .expect("row");
    assert_eq!(row.end_reason, Some(EndReason::ServiceUnavailable));
    assert_eq!(row.ended_by.as_deref(), Some("broker"));
}

#[tokio::test]
async fn a_session_ends_once_and_says_who_ended_it() {
    let f = fixture(|_| {});
    let _conn = f.online(&["vnc"]);
    let created = f
        .core
        .create(f.request("vnc"), &alice())
        .await
        .expect("created");
    let s = created.session.clone();
    assert!(f.core.end(&s, EndReason::Stopped, &alice()).await);
    assert!(
        !f.core
            .end(&s, EndReason::TtlExpired, &Actor::broker())
            .await
    );
    assert_eq!(s.closure().reason, "session stopped by alice");
    let refused = f
        .core
        .join(&s.id, &created.tokens.viewer, PEER, Endpoint::Viewer)
        .await
        .expect_err("ended");
    assert_eq!(refused.code, close::SESSION_ENDED);
    let ended = f.events("session_ended").await;
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].api_key.as_deref(), Some("k1"));
    assert!(f.core.live(f.tenant, &s.id).is_none());
}

#[tokio::test(start_paused = true)]
async fn an_unjoined_session_ends_after_the_grace_period() {
    let f = fixture(|c| c.join_grace = Duration::from_secs(5));
    let _conn = f.online(&["vnc"]);
    let created = f
        .core
        .create(f.request("vnc"), &alice())
        .await
        .expect("created");
    tokio::time::timeout(Duration::from_secs(10), created.session.ended.cancelled())
        .await
        .expect("ended by the grace period");
    assert_eq!(
        created.session.end_state().map(|(r, _)| r),
        Some(EndReason::NotJoined)
    );
}
