//! Asking the user whether to trust a broker a link names for the first time: "Open a session
//! on broker.example?" in the window, with Open and Refuse. The question waits at most two
//! minutes; no answer is a refusal. Answers come from the window through `answer_broker`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tauri::{AppHandle, Manager as _};
use tokio::sync::oneshot;

/// How long a question waits for the user.
const ANSWER_WAIT: Duration = Duration::from_secs(120);

/// One open question, for the window.
#[derive(Debug, Clone, Serialize)]
pub struct Question {
    /// Its number, for the answer.
    pub id: u64,
    /// The broker's origin, e.g. `https://broker.example:8443`.
    pub origin: String,
}

/// The open questions, managed by Tauri.
#[derive(Default)]
pub struct Questions {
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, (String, oneshot::Sender<bool>)>>,
}

impl Questions {
    fn open(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (String, oneshot::Sender<bool>)>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The questions the window should show.
    pub fn list(&self) -> Vec<Question> {
        self.open()
            .iter()
            .map(|(id, (origin, _))| Question {
                id: *id,
                origin: origin.clone(),
            })
            .collect()
    }

    /// The user's answer to question `id`; false if there is no such question (any more).
    pub fn answer(&self, id: u64, yes: bool) -> bool {
        match self.open().remove(&id) {
            Some((_, tx)) => tx.send(yes).is_ok(),
            None => false,
        }
    }
}

/// Asks whether to open a session on `origin`: shows the window with the question (its title
/// says it too) and waits for the answer; no answer within two minutes is a no.
pub async fn ask(app: &AppHandle, origin: &str) -> bool {
    let questions = app.state::<Questions>();
    let id = questions.next.fetch_add(1, Ordering::Relaxed) + 1;
    let (tx, rx) = oneshot::channel();
    questions.open().insert(id, (origin.to_owned(), tx));
    crate::show(app);
    if let Some(w) = app.get_webview_window("main") {
        let _ = w.set_title(&format!("Passerelle — open a session on {origin}?"));
    }
    let answer = tokio::time::timeout(ANSWER_WAIT, rx).await;
    app.state::<Questions>().open().remove(&id);
    crate::tunnels::retitle(app);
    matches!(answer, Ok(Ok(true)))
}
