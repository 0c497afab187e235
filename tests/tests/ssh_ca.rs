//! Agents that sign in with OpenSSH certificates from their tenant's CA: real `ssh-keygen -s`
//! certificates and a stock `ssh` client. A valid one signs in without registration; each
//! refused one says why on ssh's stderr (or, for validity, which russh checks before the
//! broker sees the certificate, in the audit) and is audited; a CA names its tenant.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, ensure};
use passerelle_e2e::{Agent, Forward, Method, StatusCode, TestBroker, WAIT, passerelle_bin};
use passerelle_proto::api::Role;
use serde_json::{Value, json};
use tokio::process::Command;
use tokio::time::timeout;

/// Runs a command to success, bounded by [`WAIT`]; its stdout.
async fn run(cmd: &mut Command) -> Result<String> {
    let out = timeout(WAIT, cmd.output())
        .await
        .context("command timed out")??;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An OpenSSH CA key pair made with `ssh-keygen`.
struct Ca {
    dir: tempfile::TempDir,
    key: PathBuf,
    public_key: String,
}

impl Ca {
    async fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("ca");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test ca", "-f"])
            .arg(&key))
        .await?;
        let public_key = std::fs::read_to_string(key.with_extension("pub"))?;
        Ok(Self {
            dir,
            key,
            public_key,
        })
    }

    /// `ssh-keygen -Y sign` of `message`: the proof that we hold this CA.
    async fn proof(&self, message: &str) -> Result<String> {
        let file = self.dir.path().join("message");
        std::fs::write(&file, message)?;
        // ssh-keygen asks before overwriting a signature, and keeps the old one unasked.
        let _ = std::fs::remove_file(file.with_extension("sig"));
        run(Command::new("ssh-keygen")
            .args(["-Y", "sign", "-n", "passerelle-ssh-ca", "-f"])
            .arg(&self.key)
            .arg(&file))
        .await?;
        Ok(std::fs::read_to_string(file.with_extension("sig"))?)
    }

    /// Signs `agent`'s key with `ssh-keygen -s` (principal, validity, serial and options as
    /// given); the certificate lands where ssh looks for it, beside the key.
    async fn sign(
        &self,
        agent: &Agent,
        principal: &str,
        validity: &str,
        serial: u64,
        options: &[&str],
    ) -> Result<()> {
        let public = agent.key.path.with_extension("pub");
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-q", "-s"]).arg(&self.key).args([
            "-I",
            "test cert",
            "-n",
            principal,
            "-V",
            validity,
            "-z",
            &serial.to_string(),
        ]);
        for o in options {
            cmd.args(["-O", o]);
        }
        run(cmd.arg(&public)).await?;
        Ok(())
    }

    /// Its public key with a proof made for the tenant of `api_key`: the body that trusts it.
    async fn offer(&self, broker: &TestBroker, api_key: &str) -> Result<Value> {
        let (status, list) = broker
            .api(Method::GET, "/api/v1/tenant/ssh-ca", Some(api_key), None)
            .await?;
        ensure!(status == StatusCode::OK, "{status} {list}");
        let message = list["proof_message"].as_str().context("proof_message")?;
        let proof = self.proof(message).await?;
        Ok(json!({"public_key": self.public_key, "proof": proof}))
    }

    /// Trusts this CA in the tenant of `api_key`, with its proof.
    async fn trust(&self, broker: &TestBroker, api_key: &str) -> Result<Value> {
        let body = self.offer(broker, api_key).await?;
        let (status, ca) = post_ca(broker, api_key, &body).await?;
        ensure!(status == StatusCode::CREATED, "{status} {ca}");
        Ok(ca)
    }
}

/// `POST /api/v1/tenant/ssh-ca` as `api_key`.
async fn post_ca(broker: &TestBroker, api_key: &str, body: &Value) -> Result<(StatusCode, Value)> {
    broker
        .api(
            Method::POST,
            "/api/v1/tenant/ssh-ca",
            Some(api_key),
            Some(body),
        )
        .await
}

/// Starts the agent's tunnel and expects ssh to fail with `needle` on stderr.
async fn refused_with(agent: &mut Agent, needle: &str) -> Result<String> {
    agent.connect(&[Forward::named("vnc", 5900)])?;
    let status = agent.process()?.wait(WAIT).await?;
    let stderr = agent.process()?.stderr();
    agent.disconnect().await?;
    ensure!(
        !status.success() && stderr.contains(needle),
        "expected {needle:?}: {status}; stderr:\n{stderr}"
    );
    Ok(stderr)
}

/// Waits for a `certificate_refused` event of `agent` whose detail contains `needle`.
async fn refusal(broker: &TestBroker, agent: &str, needle: &str) -> Result<()> {
    broker
        .wait_event("certificate_refused", |e| {
            e.agent.as_deref() == Some(agent) && e.detail.contains(needle)
        })
        .await?;
    Ok(())
}

async fn online(broker: &TestBroker, agent: &mut Agent) -> Result<()> {
    agent.connect(&[Forward::named("vnc", 5900)])?;
    agent.wait_online(broker, &["vnc"]).await?;
    Ok(())
}

#[tokio::test]
async fn a_trusted_ca_signs_an_agent_in_without_registration() -> Result<()> {
    let broker = TestBroker::start().await?;
    let ca = Ca::new().await?;
    let admin = broker.admin_key().to_owned();

    // Trusting a CA takes a proof that the tenant holds it.
    let (status, body) = post_ca(&broker, &admin, &json!({"public_key": ca.public_key})).await?;
    ensure!(
        status == StatusCode::BAD_REQUEST && body.to_string().contains("proof"),
        "{status} {body}"
    );
    let other = ca
        .proof("passerelle ssh-ca for tenant someone-else")
        .await?;
    let (status, body) = post_ca(
        &broker,
        &admin,
        &json!({"public_key": ca.public_key, "proof": other}),
    )
    .await?;
    ensure!(
        status == StatusCode::BAD_REQUEST && body.to_string().contains("not a signature"),
        "{status} {body}"
    );
    let (status, body) = post_ca(
        &broker,
        &admin,
        &json!({"public_key": ca.public_key, "proof": "garbage"}),
    )
    .await?;
    ensure!(status == StatusCode::BAD_REQUEST, "{status} {body}");
    let helpdesk = broker.create_key("default", Role::Helpdesk)?;
    let (status, _) = broker
        .api(Method::GET, "/api/v1/tenant/ssh-ca", Some(&helpdesk), None)
        .await?;
    ensure!(status == StatusCode::FORBIDDEN, "{status}");
    let trusted = ca.trust(&broker, &admin).await?;
    let fingerprint = trusted["fingerprint"]
        .as_str()
        .context("fingerprint")?
        .to_owned();
    broker
        .wait_event("ssh_ca_added", |e| e.detail.contains(&fingerprint))
        .await?;

    // Nobody registered pc-1: its certificate is enough.
    let mut agent = Agent::new(&broker, "pc-1").await?;
    ca.sign(&agent, "pc-1", "-5m:+1h", 11, &[]).await?;
    online(&broker, &mut agent).await?;
    let info = broker.agent_as(&admin, "pc-1").await?;
    ensure!(
        info.ssh_ca.as_deref() == Some(fingerprint.as_str()),
        "{info:#?}"
    );
    broker
        .wait_event("agent_registered", |e| {
            e.agent.as_deref() == Some("pc-1") && e.detail.contains("serial 11")
        })
        .await?;

    // Its bare key is no login of its own: without the certificate, refused.
    agent.disconnect().await?;
    agent.wait_offline(&broker).await?;
    let cert = PathBuf::from(format!("{}-cert.pub", agent.key.path.display()));
    std::fs::remove_file(&cert)?;
    refused_with(&mut agent, "Permission denied").await?;
    refusal(&broker, "pc-1", "bare key").await?;
    Ok(())
}

#[tokio::test]
async fn each_refused_certificate_says_why_and_is_audited() -> Result<()> {
    let broker = TestBroker::start().await?;
    let ca = Ca::new().await?;
    let admin = broker.admin_key().to_owned();
    ca.trust(&broker, &admin).await?;
    let mut agent = Agent::new(&broker, "pc-2").await?;

    ca.sign(&agent, "pc-9", "-5m:+1h", 1, &[]).await?;
    refused_with(&mut agent, "certificate is for pc-9, not pc-2").await?;
    refusal(&broker, "pc-2", "for pc-9, not pc-2").await?;

    ca.sign(&agent, "pc-2", "-5m:+1h", 2, &["no-port-forwarding"])
        .await?;
    refused_with(&mut agent, "does not permit port forwarding").await?;

    ca.sign(
        &agent,
        "pc-2",
        "-5m:+1h",
        3,
        &["source-address=192.0.2.0/24"],
    )
    .await?;
    refused_with(&mut agent, "allows only source-address 192.0.2.0/24").await?;

    // A good one signs in; revoking its serial disconnects it at once and refuses it after.
    ca.sign(&agent, "pc-2", "-5m:+1h", 4, &["source-address=127.0.0.1"])
        .await?;
    online(&broker, &mut agent).await?;
    let (status, body) = broker
        .api(
            Method::POST,
            "/api/v1/tenant/ssh-ca/revoked",
            Some(&admin),
            Some(&json!({"serial": 4})),
        )
        .await?;
    ensure!(status == StatusCode::CREATED, "{status} {body}");
    agent.process()?.wait(WAIT).await?;
    agent.disconnect().await?;
    agent.wait_offline(&broker).await?;
    refused_with(&mut agent, "serial 4 is revoked").await?;
    broker
        .wait_event("ssh_cert_revoked", |e| {
            e.detail.contains("serial 4; 1 agents disconnected")
        })
        .await?;

    // Revoking the key refuses every certificate of it.
    ca.sign(&agent, "pc-2", "-5m:+1h", 5, &[]).await?;
    let (status, body) = broker
        .api(
            Method::POST,
            "/api/v1/tenant/ssh-ca/revoked",
            Some(&admin),
            Some(&json!({"public_key": agent.key.public_key})),
        )
        .await?;
    ensure!(status == StatusCode::CREATED, "{status} {body}");
    refused_with(&mut agent, "is revoked").await?;
    refusal(&broker, "pc-2", "key SHA256:").await?;
    for bad in [
        json!({"serial": 1, "public_key": agent.key.public_key}),
        json!({"public_key": "nonsense"}),
        json!({"key_fingerprint": "SHA256:not base64!"}),
        json!({"serial": "seven"}),
    ] {
        let (status, body) = broker
            .api(
                Method::POST,
                "/api/v1/tenant/ssh-ca/revoked",
                Some(&admin),
                Some(&bad),
            )
            .await?;
        ensure!(status == StatusCode::BAD_REQUEST, "{bad}: {status} {body}");
    }
    let (status, list) = broker
        .api(
            Method::GET,
            "/api/v1/tenant/ssh-ca/revoked",
            Some(&admin),
            None,
        )
        .await?;
    ensure!(
        status == StatusCode::OK && list.as_array().map(Vec::len) == Some(2),
        "{status} {list}"
    );

    // Outside its validity: russh refuses the certificate before the broker sees it, so
    // ssh only says "Permission denied"; the audit says why once the connection gives up.
    let mut late = Agent::new(&broker, "pc-3").await?;
    ca.sign(&late, "pc-3", "-5m:+1h", 6, &[]).await?;
    online(&broker, &mut late).await?;
    late.disconnect().await?;
    late.wait_offline(&broker).await?;
    for (validity, serial) in [("20200101:20200102", 7), ("+1d:+2d", 8)] {
        ca.sign(&late, "pc-3", validity, serial, &[]).await?;
        refused_with(&mut late, "Permission denied").await?;
    }
    let page = broker.audit("kind=certificate_refused").await?;
    let late_refusals = page
        .events
        .iter()
        .filter(|e| {
            e.agent.as_deref() == Some("pc-3")
                && e.detail
                    .contains("no valid certificate (expired, not yet valid")
        })
        .count();
    ensure!(late_refusals == 2, "{:#?}", page.events);
    // The broker still serves a good certificate.
    ca.sign(&late, "pc-3", "-5m:+1h", 9, &[]).await?;
    online(&broker, &mut late).await?;
    Ok(())
}

#[tokio::test]
async fn a_certificate_names_its_tenant_by_its_ca_never_by_the_id_alone() -> Result<()> {
    let broker = TestBroker::start().await?;
    let beta_admin = broker.create_tenant_with_key("beta", Role::Admin)?;
    let (alpha_ca, beta_ca) = (Ca::new().await?, Ca::new().await?);
    alpha_ca.trust(&broker, broker.admin_key()).await?;
    beta_ca.trust(&broker, &beta_admin).await?;
    // One CA, one tenant: beta cannot trust alpha's CA, even with a proof.
    let offer = alpha_ca.offer(&broker, &beta_admin).await?;
    let (status, body) = post_ca(&broker, &beta_admin, &offer).await?;
    ensure!(status == StatusCode::CONFLICT, "{status} {body}");

    // Beta has a key-based pc-7; alpha's certificate for pc-7 is alpha's pc-7.
    let _beta_pc7 = Agent::registered_in(&broker, &beta_admin, "pc-7").await?;
    let mut alpha_pc7 = Agent::new(&broker, "pc-7").await?;
    alpha_ca.sign(&alpha_pc7, "pc-7", "-5m:+1h", 1, &[]).await?;
    online(&broker, &mut alpha_pc7).await?;
    let in_beta = broker.agent_as(&beta_admin, "pc-7").await?;
    ensure!(!in_beta.online && in_beta.ssh_ca.is_none(), "{in_beta:#?}");
    // Removing the CA disconnects its agents and refuses their certificates.
    let id = broker.agent_as(broker.admin_key(), "pc-7").await?;
    ensure!(id.ssh_ca.is_some(), "{id:#?}");
    let (_, cas) = broker
        .api(
            Method::GET,
            "/api/v1/tenant/ssh-ca",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    let ca_id = cas["authorities"][0]["id"]
        .as_str()
        .context("id")?
        .to_owned();
    let (status, _) = broker
        .api(
            Method::DELETE,
            &format!("/api/v1/tenant/ssh-ca/{ca_id}"),
            Some(&beta_admin),
            None,
        )
        .await?;
    ensure!(
        status == StatusCode::NOT_FOUND,
        "beta cannot remove alpha's CA: {status}"
    );
    let (status, _) = broker
        .api(
            Method::DELETE,
            &format!("/api/v1/tenant/ssh-ca/{ca_id}"),
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(status == StatusCode::NO_CONTENT, "{status}");
    alpha_pc7.process()?.wait(WAIT).await?;
    alpha_pc7.disconnect().await?;
    refused_with(&mut alpha_pc7, "Permission denied").await?;
    Ok(())
}

#[tokio::test]
async fn the_cli_signs_with_a_ca_the_broker_generated() -> Result<()> {
    let broker = TestBroker::start().await?;
    let cli = |args: &[&str], data: &Path| -> Result<std::process::Output> {
        Ok(std::process::Command::new(passerelle_bin()?)
            .arg("--data-dir")
            .arg(data)
            .args(args)
            .output()?)
    };
    let mut agent = Agent::new(&broker, "pc-4").await?;
    let public = agent.key.path.with_extension("pub");
    let public = public.to_str().context("path")?;
    let out = cli(&["ca", "sign", "--id", "pc-4", public], broker.data_dir())?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("ca init"),
        "{out:?}"
    );
    let out = cli(&["ca", "init"], broker.data_dir())?;
    ensure!(out.status.success(), "{out:?}");
    let out = cli(
        &["ca", "sign", "--id", "pc-4", "--validity", "2h", public],
        broker.data_dir(),
    )?;
    ensure!(out.status.success(), "{out:?}");
    let written = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(written.ends_with("id_ed25519-cert.pub"), "{written}");
    let shown = run(Command::new("ssh-keygen").args(["-L", "-f", &written])).await?;
    ensure!(
        shown.contains("Serial: 1")
            && shown.contains("pc-4")
            && shown.contains("permit-port-forwarding"),
        "{shown}"
    );
    online(&broker, &mut agent).await?;
    let (_, cas) = broker
        .api(
            Method::GET,
            "/api/v1/tenant/ssh-ca",
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(cas["authorities"][0]["generated"] == json!(true), "{cas}");
    broker
        .wait_event("ssh_cert_issued", |e| {
            e.detail.contains("serial 1 for pc-4")
        })
        .await?;
    Ok(())
}
