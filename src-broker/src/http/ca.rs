//! A tenant's SSH certificate authorities over HTTP (admin keys): `/api/v1/tenant/ssh-ca`
//! (list, trust one with its proof, generate one, stop trusting one) and
//! `/api/v1/tenant/ssh-ca/revoked` (the revocation list). What a CA means for sign-in is in
//! `ssh::certs`; the store side in `store::ca`.
//!
//! Revoking a serial or a key, or removing a CA, disconnects the live agents that signed in
//! with what was revoked: a revocation takes effect now, not at the next reconnection.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use passerelle_proto::api::{ErrorBody, Role};
use passerelle_proto::ssh_ca::{
    AddSshCa, PROOF_NAMESPACE, Revoke, RevokedEntry, RevokedKind, SshCaInfo, SshCaList,
    proof_message,
};
use russh::keys::PublicKey;
use russh::keys::ssh_key::SshSig;

use super::api::ApiResult;
use super::auth::Caller;
use super::body::JsonBody;
use super::{ApiError, App};
use crate::cluster::DropCertified;
use crate::store::{AuditKind, key_fingerprint_of};

#[utoipa::path(get, path = "/api/v1/tenant/ssh-ca", tag = "tenant",
    description = "The tenant's SSH certificate authorities, and the message a CA's holder signs to prove it holds one. Roles: admin.",
    security(("api_key" = ["admin"])),
    responses((status = 200, description = "The CAs and the proof message", body = SshCaList)))]
pub(super) async fn list(caller: Caller, State(app): State<App>) -> ApiResult<Json<SshCaList>> {
    caller.require(&[Role::Admin])?;
    let tenant_id = caller.tenant_id;
    let (cas, name) = app
        .db
        .run(move |s| Ok((s.ssh_cas(tenant_id)?, s.tenant_name(tenant_id)?)))
        .await?;
    Ok(Json(SshCaList {
        authorities: cas.iter().map(|c| c.info()).collect(),
        proof_message: proof_message(&name),
        proof_namespace: PROOF_NAMESPACE.to_owned(),
    }))
}

#[utoipa::path(post, path = "/api/v1/tenant/ssh-ca", tag = "tenant",
    description = "Trusts an SSH user CA: one the tenant holds, with a proof (an `ssh-keygen -Y sign -n passerelle-ssh-ca` signature of the tenant's proof message), or one the broker generates (`generate`). Agents with a certificate it signed, whose principal is their id, sign in without registration. Roles: admin.",
    security(("api_key" = ["admin"])),
    request_body = AddSshCa,
    responses((status = 201, description = "The CA", body = SshCaInfo),
        (status = 409, description = "`conflict`: a tenant already trusts this CA", body = ErrorBody)))]
pub(super) async fn add(
    caller: Caller,
    State(app): State<App>,
    body: Result<JsonBody<AddSshCa>, ApiError>,
) -> ApiResult<(StatusCode, Json<SshCaInfo>)> {
    caller.require(&[Role::Admin])?;
    let JsonBody(req) = body?;
    req.check().map_err(ApiError::bad_request)?;
    let tenant_id = caller.tenant_id;
    let ca = match (req.public_key, req.proof) {
        (Some(public_key), Some(proof)) => {
            let name = app.db.run(move |s| s.tenant_name(tenant_id)).await?;
            check_proof(&public_key, &proof, &proof_message(&name))?;
            app.db
                .run(move |s| s.add_ssh_ca(tenant_id, &public_key))
                .await?
        }
        _ => app.db.run(move |s| s.generate_ssh_ca(tenant_id)).await?,
    };
    let how = if ca.generated {
        "generated"
    } else {
        "brought with its proof"
    };
    app.db.audit(caller.event(
        AuditKind::SshCaAdded,
        format!("CA {} ({how}), key {}", ca.id, ca.fingerprint),
    ));
    Ok((StatusCode::CREATED, Json(ca.info())))
}

/// Checks that `proof` is an SSHSIG by `public_key`'s private half of `message`.
fn check_proof(public_key: &str, proof: &str, message: &str) -> Result<(), ApiError> {
    let key = PublicKey::from_openssh(public_key.trim()).map_err(|e| {
        ApiError::bad_request(format!("public_key is not an OpenSSH public key: {e}"))
    })?;
    let sig = SshSig::from_pem(proof.trim()).map_err(|e| {
        ApiError::bad_request(format!(
            "proof is not an SSH signature (ssh-keygen -Y sign output): {e}"
        ))
    })?;
    key.verify(PROOF_NAMESPACE, message.as_bytes(), &sig)
        .map_err(|_| {
            ApiError::bad_request(format!(
                "proof is not a signature of {message:?} by this CA in namespace {PROOF_NAMESPACE}"
            ))
        })
}

#[utoipa::path(delete, path = "/api/v1/tenant/ssh-ca/{id}", tag = "tenant",
    description = "Stops trusting a CA: the agents it signed are disconnected and its certificates refused (they stay registered). Roles: admin.",
    security(("api_key" = ["admin"])),
    params(("id" = String, Path, description = "The CA's id")),
    responses((status = 204, description = "Removed"),
        (status = 404, description = "`not_found`: no such CA in the caller's tenant", body = ErrorBody)))]
pub(super) async fn remove(
    caller: Caller,
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    let tenant_id = caller.tenant_id;
    let removed = app.db.run(move |s| s.delete_ssh_ca(tenant_id, &id)).await?;
    let Some(ca) = removed else {
        return Err(ApiError::not_found("CA"));
    };
    let dropped = drop_certified(
        &app,
        DropCertified {
            tenant_id,
            ca: Some(ca.fingerprint.clone()),
            serial: None,
            key: None,
            why: "its CA is no longer trusted".to_owned(),
        },
    )
    .await;
    app.db.audit(caller.event(
        AuditKind::SshCaRemoved,
        format!(
            "CA {} (key {}); {dropped} agents disconnected",
            ca.id, ca.fingerprint
        ),
    ));
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/tenant/ssh-ca/revoked", tag = "tenant",
    description = "The tenant's certificate revocation list: serials and keys. Roles: admin, auditor.",
    security(("api_key" = ["admin", "auditor"])),
    responses((status = 200, description = "The list, newest first", body = Vec<RevokedEntry>)))]
pub(super) async fn revoked(
    caller: Caller,
    State(app): State<App>,
) -> ApiResult<Json<Vec<RevokedEntry>>> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let tenant_id = caller.tenant_id;
    Ok(Json(app.db.run(move |s| s.ssh_revoked(tenant_id)).await?))
}

#[utoipa::path(post, path = "/api/v1/tenant/ssh-ca/revoked", tag = "tenant",
    description = "Revokes a certificate serial or a key (an OpenSSH public key line or its SHA256 fingerprint): live agents that signed in with it are disconnected, and no certificate of it signs in again. Roles: admin.",
    security(("api_key" = ["admin"])),
    request_body = Revoke,
    responses((status = 201, description = "Added to the list"),
        (status = 200, description = "Already on the list")))]
pub(super) async fn revoke(
    caller: Caller,
    State(app): State<App>,
    body: Result<JsonBody<Revoke>, ApiError>,
) -> ApiResult<StatusCode> {
    caller.require(&[Role::Admin])?;
    let JsonBody(req) = body?;
    req.check().map_err(ApiError::bad_request)?;
    let (kind, value) = match (req.serial, req.public_key.or(req.key_fingerprint)) {
        (Some(serial), _) => (RevokedKind::Serial, serial.to_string()),
        (None, Some(key)) => (RevokedKind::Key, key_fingerprint_of(&key)?),
        (None, None) => return Err(ApiError::bad_request("nothing to revoke")),
    };
    let serial = req.serial;
    let tenant_id = caller.tenant_id;
    let stored = value.clone();
    let new = app
        .db
        .run(move |s| s.revoke_ssh_cert(tenant_id, kind, &stored))
        .await?;
    let dropped = drop_certified(
        &app,
        DropCertified {
            tenant_id,
            ca: None,
            serial,
            key: serial.is_none().then(|| value.clone()),
            why: "its certificate was revoked".to_owned(),
        },
    )
    .await;
    if new {
        let what = if serial.is_some() { "serial" } else { "key" };
        app.db.audit(caller.event(
            AuditKind::SshCertRevoked,
            format!("{what} {value}; {dropped} agents disconnected"),
        ));
    }
    Ok(if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    })
}

/// Disconnects the tenant's live agents whose certificate matches, here and (over the node
/// link) on the cluster's other nodes; how many here.
async fn drop_certified(app: &App, what: DropCertified) -> usize {
    let n = disconnect_certified(app, &what);
    if let Some(cluster) = &app.cluster {
        cluster.drop_certified(&what).await;
    }
    n
}

/// Disconnects this node's live agents whose certificate matches; how many.
pub(super) fn disconnect_certified(app: &App, what: &DropCertified) -> usize {
    let mut n = 0;
    for conn in app.registry.all() {
        if conn.tenant_id == what.tenant_id
            && conn.certificate.as_ref().is_some_and(|c| what.matches(c))
        {
            conn.disconnect(&what.why);
            n += 1;
        }
    }
    n
}
