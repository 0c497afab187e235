//! Certificate sign-in for [`AgentHandler`]: the CA that signed a certificate names the tenant,
//! [`certs::check`] the rules, and a valid certificate signs in as that tenant's agent,
//! registering it on its first connection. Refusals are audited in the CA's tenant.

use std::time::{SystemTime, UNIX_EPOCH};

use russh::keys::{Certificate, HashAlg, PublicKey};
use russh::server::Auth;

use super::super::certs::printable;
use super::{AgentHandler, AgentId, certs};
use crate::registry::SignedInWith;
use crate::store::{AuditKind, CertAgent, TenantId, key_data_fingerprint};

impl AgentHandler {
    /// Decides a signed certificate request (its signature and holder already verified by
    /// russh, which also refused it if it was outside its validity).
    pub(super) async fn certificate(
        &mut self,
        user: &str,
        cert: &Certificate,
    ) -> anyhow::Result<Auth> {
        let holder = PublicKey::new(cert.public_key().clone(), "");
        let key_fp = holder.fingerprint(HashAlg::Sha256).to_string();
        let ca_fp = key_data_fingerprint(cert.signature_key());
        let (ca_q, key_q, serial) = (ca_fp.clone(), key_fp.clone(), cert.serial());
        let found = self
            .state
            .db
            .run(move |s| s.cert_sign_in(&ca_q, serial, &key_q))
            .await;
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(parent: &self.span, error = %format!("{e:#}"), "certificate lookup failed");
                return Ok(Auth::reject());
            }
        };
        let Some(found) = found else {
            tracing::info!(parent: &self.span, ca = %ca_fp, "certificate from a CA no tenant trusts");
            self.key_rejected(user, &holder).await;
            return Ok(Auth::reject());
        };
        let tenant_id = found.ca.tenant_id;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let cx = certs::Context {
            user,
            peer: crate::netaddr::canonical(self.peer.ip()),
            now,
            revoked: found.revoked,
            key_fingerprint: &key_fp,
        };
        let id = match certs::check(cert, &cx) {
            Err(why) => return Ok(self.cert_refused(tenant_id, user, cert, why.to_string())),
            Ok(()) => match AgentId::new(user) {
                Ok(id) => id,
                Err(e) => {
                    let why = format!("the certificate's principal is no agent id: {e}");
                    return Ok(self.cert_refused(tenant_id, user, cert, why));
                }
            },
        };
        let line = holder.to_openssh()?;
        let max_agents = self.state.config.quotas.agents_per_tenant;
        let (ca, agent_id) = (found.ca.clone(), id.clone());
        let signed_in = self
            .state
            .db
            .run(move |s| s.cert_agent(&ca, &agent_id, &line, &key_fp, max_agents))
            .await;
        match signed_in {
            Ok(Ok(agent)) => {
                self.note_sign_in(&agent, cert, &found.ca.id);
                self.certificate = Some(SignedInWith {
                    ca: found.ca.fingerprint.clone(),
                    serial: cert.serial(),
                    key: agent.record.key_fingerprint.clone(),
                });
                self.record = Some(agent.record);
                Ok(Auth::Accept)
            }
            Ok(Err(refused)) => Ok(self.cert_refused(tenant_id, user, cert, refused.to_string())),
            Err(e) => {
                tracing::error!(parent: &self.span, error = %format!("{e:#}"), "certificate sign-in failed");
                Ok(Auth::reject())
            }
        }
    }

    /// Audits a new or re-keyed certificate-based agent.
    fn note_sign_in(&self, agent: &CertAgent, cert: &Certificate, ca_id: &str) {
        let what = match (agent.registered, agent.rekeyed) {
            (true, _) => "registered on its first connection",
            (false, true) => "signed in with a new key",
            (false, false) => return,
        };
        let detail = format!(
            "{what} with a certificate of CA {ca_id} (serial {}, key id {:?}, key {})",
            cert.serial(),
            printable(cert.key_id()),
            agent.record.key_fingerprint
        );
        let kind = if agent.registered {
            AuditKind::AgentRegistered
        } else {
            AuditKind::AgentChanged
        };
        let mut ev = self.event(kind, detail);
        ev.tenant_id = Some(agent.record.tenant_id);
        ev.agent = Some(agent.record.id.to_string());
        self.state.db.audit(ev);
    }

    /// Audits a refused certificate of a trusted CA and lets authentication through to
    /// disconnect with `why` (see the handler's header).
    fn cert_refused(
        &mut self,
        tenant_id: TenantId,
        user: &str,
        cert: &Certificate,
        why: String,
    ) -> Auth {
        self.state
            .metrics
            .auth_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let detail = format!(
            "{why} (serial {}, key id {:?})",
            cert.serial(),
            printable(cert.key_id())
        );
        tracing::info!(parent: &self.span, user = %super::super::guard::clean_user(user), reason = %detail, "certificate refused");
        let mut ev = self.event(AuditKind::CertificateRefused, detail);
        ev.tenant_id = Some(tenant_id);
        ev.agent = AgentId::new(user).ok().map(|id| id.to_string());
        self.state.db.audit(ev);
        self.refusal = Some(format!("passerelle: certificate refused: {why}"));
        Auth::Accept
    }

    /// A certificate-based agent's bare key was refused. It is no guess (not counted toward
    /// a lockout: a fleet behind one address would lock itself out), and if the connection ends
    /// without signing in, the agent's tenant learns why: its certificate was expired or not yet
    /// valid (which russh refuses before the handler sees it), or was not presented at all.
    pub(super) fn bare_key_of_certificate_agents(
        &mut self,
        agents: Vec<(TenantId, AgentId)>,
        key: &PublicKey,
    ) {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        for (tenant_id, id) in agents {
            let mut ev = self.event(
                AuditKind::CertificateRefused,
                format!(
                    "agent {id} signs in with a certificate only; it offered its bare key {fingerprint} \
                     and no valid certificate (expired, not yet valid, or not presented)"
                ),
            );
            ev.tenant_id = Some(tenant_id);
            ev.agent = Some(id.to_string());
            self.unless_signed_in.push(ev);
        }
    }
}
