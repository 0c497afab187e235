//! Recording a session's connections: every connection of a recorded session gets its own
//! segment (a file, `crate::recording::path_for`), started when it is bridged and finished
//! with a trailer when it ends (at the session's end at the latest); the tenant's policy
//! applies when a recording fails; recordings past the tenant's retention are deleted.

use std::sync::Arc;

use passerelle_proto::api::RecordingPolicy;
use passerelle_proto::close::{self, Closure, EndReason};
use passerelle_proto::recording::{Content, Header, Summary};

use super::live::{Actor, LiveSession};
use super::{Core, session_event};
use crate::bridge::Counters;
use crate::recording::{self, Recording};
use crate::store::{AuditKind, NewEvent, now_ms, rfc3339};

impl Core {
    /// Starts the recording of connection `segment` of a recorded session. `content` says what
    /// the bridge will feed it; a metadata recording keeps only events and byte counts. `Err`
    /// when the recording could not start and the tenant's policy is `fail_closed` (the
    /// connection is refused and the session ends).
    pub(crate) async fn start_recording(
        self: &Arc<Self>,
        session: &Arc<LiveSession>,
        segment: u32,
        content: Content,
    ) -> Result<Option<Arc<Recording>>, Closure> {
        if !session.record {
            return Ok(None);
        }
        let tenant_id = session.tenant_id;
        let tenant = self
            .db
            .run(move |s| Ok((s.tenant_info(tenant_id)?, s.tenant_name(tenant_id)?)))
            .await;
        let (policy, tenant_name) = match tenant {
            Ok((info, name)) => (info.recording_policy, name.to_string()),
            Err(_) => (RecordingPolicy::FailClosed, String::new()),
        };
        let header = Header {
            version: 1,
            session: session.id.clone(),
            tenant: tenant_name,
            agent: session.agent.to_string(),
            service: session.service.to_string(),
            operator: session.operator.clone(),
            view_only: session.view_only,
            started_at: rfc3339(now_ms()),
            content,
            signer: self.recording_key.public_hex(),
            segment,
        };
        let path = recording::path_for(
            &self.config.recordings_dir,
            session.tenant_id,
            &session.id,
            segment,
        );
        let (key, limit, writers) = (
            self.recording_key.clone(),
            self.config.recording_buffer_bytes,
            self.writers.clone(),
        );
        let started = tokio::task::spawn_blocking(move || {
            Recording::start(path, &header, key, limit, &writers)
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r);
        let rec = match started {
            Ok(rec) => rec,
            Err(e) => {
                // The path stays in the log and the audit, never in what the viewer is told.
                let why = format!("{e:#}");
                return match self.recording_failed(session, policy, &why) {
                    Ok(()) => Ok(None),
                    Err(()) => Err(Closure::ending_with(
                        EndReason::RecordingFailed,
                        close::RECORDING_FAILED,
                        "the session's recording could not start",
                    )),
                };
            }
        };
        if content == Content::Metadata {
            rec.event(&serde_json::json!({
                "note": format!("{} is carried as it is: only metadata and byte counts are recorded", session.service)
            }));
        }
        session.recording_opened(rec.clone());
        self.db.audit(session_event(
            session,
            AuditKind::RecordingStarted,
            format!("{content:?} recording, segment {segment}").to_lowercase(),
        ));
        self.watch_recording(session, &rec, policy);
        Ok(Some(rec))
    }

    /// Applies the policy if the recording fails later.
    fn watch_recording(
        self: &Arc<Self>,
        session: &Arc<LiveSession>,
        rec: &Arc<Recording>,
        policy: RecordingPolicy,
    ) {
        let (core, session, rec) = (self.clone(), session.clone(), rec.clone());
        self.tasks.spawn(async move {
            tokio::select! {
                () = rec.failed.cancelled() => {}
                () = session.ended.cancelled() => return,
                () = rec.finished.cancelled() => return,
            }
            let why = rec.failure().unwrap_or_default();
            if core.recording_failed(&session, policy, &why).is_err() {
                core.end(&session, EndReason::RecordingFailed, &Actor::broker())
                    .await;
            }
        });
    }

    /// Audits a failed recording; `Err` when the policy says the session must end.
    fn recording_failed(
        &self,
        session: &LiveSession,
        policy: RecordingPolicy,
        why: &str,
    ) -> Result<(), ()> {
        tracing::warn!(session = %session.id, %why, ?policy, "recording failed");
        let (detail, result) = match policy {
            RecordingPolicy::FailClosed => (format!("{why}; session ended (fail_closed)"), Err(())),
            RecordingPolicy::FailOpen => (
                format!("{why}; session continues unrecorded (fail_open)"),
                Ok(()),
            ),
        };
        if policy == RecordingPolicy::FailOpen {
            for rec in session.open_recordings() {
                rec.stop();
            }
        }
        self.db
            .audit(session_event(session, AuditKind::RecordingFailed, detail));
        result
    }

    /// Writes a connection's recording trailer (once: at the connection's end, or at the
    /// session's end for a connection still open then).
    pub(crate) async fn finish_recording(
        &self,
        session: &LiveSession,
        rec: &Arc<Recording>,
        bytes: &Counters,
        reason: EndReason,
    ) {
        if !session.recording_closed(rec) {
            return;
        }
        let (up, down) = bytes.get();
        if rec.content == Content::Metadata {
            rec.event(&serde_json::json!({ "bytes_up": up, "bytes_down": down }));
        }
        let summary = Summary {
            ended_at: rfc3339(now_ms()),
            end_reason: reason.to_string(),
            duration_us: rec.now_us(),
            bytes_up: up,
            bytes_down: down,
            // Filled in by the writer, which counts them.
            frames: 0,
        };
        rec.finish(summary).await;
        if rec.content == Content::Terminal {
            self.index_terminal(session, rec);
        }
    }

    /// Indexes a finished terminal recording for search, on the blocking pool.
    fn index_terminal(&self, session: &LiveSession, rec: &Recording) {
        let (store, tenant_id, id, segment) = (
            self.db.shared(),
            session.tenant_id,
            session.id.clone(),
            rec.segment,
        );
        let (path, key) = (rec.path.clone(), self.recording_key.public_hex());
        self.tasks.spawn_blocking(move || {
            match recording::terminal::index(&store, tenant_id, &id, segment, &path, &key) {
                Ok(lines) => tracing::debug!(session = %id, segment, lines, "terminal recording indexed"),
                Err(e) => tracing::warn!(session = %id, segment, error = %format!("{e:#}"), "could not index a terminal recording"),
            }
        });
    }

    /// Deletes recordings past each tenant's retention (a terminal's transcript leaves the
    /// search index with its recording); audits each deletion.
    pub async fn sweep_recordings(&self) {
        let dir = self.config.recordings_dir.clone();
        let swept = self
            .db
            .run(move |s| {
                let mut deleted = Vec::new();
                for name in s.tenants()? {
                    let Some(id) = s.tenant_id(&name)? else {
                        continue;
                    };
                    let days = s.tenant_info(id)?.retention_days;
                    for (session, segment, path) in recording::sweep(&dir, id, days) {
                        if let Err(e) = s.unindex_terminal(&session, segment) {
                            tracing::warn!(error = %e, "could not remove a transcript from the search index");
                        }
                        deleted.push((id, days, session, path));
                    }
                }
                Ok(deleted)
            })
            .await;
        for (tenant_id, days, session, path) in swept.unwrap_or_default() {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let mut ev = NewEvent::new(
                AuditKind::RecordingDeleted,
                format!("older than {days} days: {}", name.unwrap_or_default()),
            );
            ev.tenant_id = Some(tenant_id);
            ev.session = Some(session);
            self.db.audit(ev);
        }
    }
}
