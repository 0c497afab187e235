//! Recording a session: starting the recorder when the first viewer is bridged, applying the
//! tenant's policy when the recording fails, writing the trailer when the session ends, and
//! deleting recordings past the tenant's retention.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use passerelle_proto::api::RecordingPolicy;
use passerelle_proto::close::EndReason;
use passerelle_proto::recording::{Content, Header, Summary};

use crate::broker::State;
use crate::recorder::{self, Recording};
use crate::sessions::LiveSession;
use crate::store::{AuditKind, NewEvent, now_ms, rfc3339};

fn event(session: &LiveSession, kind: AuditKind, detail: String) -> NewEvent {
    let mut ev = NewEvent::new(kind, detail);
    ev.tenant_id = Some(session.tenant_id);
    ev.agent = Some(session.agent.to_string());
    ev.session = Some(session.id.clone());
    ev.operator = Some(session.operator.clone());
    ev
}

impl State {
    /// Starts the session's recording (once). `rfb` says whether the stream is replayable RFB;
    /// otherwise only metadata and byte counts are kept. Returns `Err` with a reason when the
    /// recording could not start and the policy is `fail_closed` (the caller ends the session).
    pub fn start_recording(
        self: &Arc<Self>,
        session: &Arc<LiveSession>,
        rfb: bool,
    ) -> Result<Option<Arc<Recording>>, String> {
        let content = if rfb { Content::Rfb } else { Content::Metadata };
        self.start_recording_as(session, content)
    }

    /// [`Self::start_recording`] for any content kind (`Content::Rdp` for RDP sessions).
    pub fn start_recording_as(
        self: &Arc<Self>,
        session: &Arc<LiveSession>,
        content: Content,
    ) -> Result<Option<Arc<Recording>>, String> {
        if !session.record {
            return Ok(None);
        }
        if let Some(rec) = session.recording.get() {
            return Ok(Some(rec.clone()));
        }
        let policy = self
            .store
            .tenant_info(session.tenant_id)
            .map(|t| t.recording_policy)
            .unwrap_or(RecordingPolicy::FailClosed);
        let header = Header {
            version: 1,
            session: session.id.clone(),
            tenant: self
                .store
                .tenant_name(session.tenant_id)
                .map(|t| t.to_string())
                .unwrap_or_default(),
            agent: session.agent.to_string(),
            service: session.service.to_string(),
            operator: session.operator.clone(),
            view_only: session.view_only,
            started_at: rfc3339(now_ms()),
            content,
            signer: self.recording_key.public_hex(),
        };
        let path = recorder::path_for(&self.config.recordings_dir, session.tenant_id, &session.id);
        let started = Recording::start(
            path,
            &header,
            self.recording_key.clone(),
            self.config.recording_buffer_bytes,
            &self.tasks,
        );
        let rec = match started {
            Ok(rec) => rec,
            Err(e) => {
                let why = format!("{e:#}");
                return self.recording_failed(session, policy, why).map(|()| None);
            }
        };
        if content == Content::Metadata {
            rec.event(&serde_json::json!({
                "note": format!("{} is encrypted end to end: only metadata and byte counts are recorded", session.service)
            }));
        }
        let _ = session.recording.set(rec.clone());
        self.store.audit(event(
            session,
            AuditKind::RecordingStarted,
            format!("{:?} recording", header.content).to_lowercase(),
        ));
        // Apply the policy if the recording fails later.
        let (state, watched, failed) = (self.clone(), session.clone(), rec.failed.clone());
        self.tasks.spawn(async move {
            tokio::select! {
                () = failed.cancelled() => {}
                () = watched.ended.cancelled() => return,
            }
            let why = watched
                .recording
                .get()
                .and_then(|r| r.failure())
                .unwrap_or_default();
            if state.recording_failed(&watched, policy, why).is_err() {
                state
                    .end_session(&watched, EndReason::RecordingFailed, "broker")
                    .await;
            }
        });
        Ok(Some(rec))
    }

    /// Audits a failed recording; `Err` when the policy says the session must end.
    fn recording_failed(
        &self,
        session: &LiveSession,
        policy: RecordingPolicy,
        why: String,
    ) -> Result<(), String> {
        tracing::warn!(session = %session.id, %why, ?policy, "recording failed");
        let (detail, result) = match policy {
            RecordingPolicy::FailClosed => {
                (format!("{why}; session ended (fail_closed)"), Err(why))
            }
            RecordingPolicy::FailOpen => {
                if let Some(rec) = session.recording.get() {
                    rec.stop();
                }
                (
                    format!("{why}; session continues unrecorded (fail_open)"),
                    Ok(()),
                )
            }
        };
        self.store
            .audit(event(session, AuditKind::RecordingFailed, detail));
        result
    }

    /// Writes the recording's trailer when its session ends.
    pub async fn finish_recording(&self, session: &LiveSession, reason: EndReason) {
        let Some(rec) = session.recording.get() else {
            return;
        };
        let (up, down) = (
            session.bytes_up.load(Ordering::Relaxed),
            session.bytes_down.load(Ordering::Relaxed),
        );
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
    }

    /// Deletes recordings past each tenant's retention; audits each deletion.
    pub fn sweep_recordings(&self) {
        let Ok(tenants) = self.store.tenants() else {
            return;
        };
        for name in tenants {
            let Ok(Some(id)) = self.store.tenant_id(&name) else {
                continue;
            };
            let Ok(info) = self.store.tenant_info(id) else {
                continue;
            };
            for (session, path) in
                recorder::sweep(&self.config.recordings_dir, id, info.retention_days)
            {
                let mut ev = NewEvent::new(
                    AuditKind::RecordingDeleted,
                    format!(
                        "older than {} days: {}",
                        info.retention_days,
                        path.display()
                    ),
                );
                ev.tenant_id = Some(id);
                ev.session = Some(session);
                self.store.audit(ev);
            }
        }
    }
}
