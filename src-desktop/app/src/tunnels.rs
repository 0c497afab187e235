//! The app's live tunnels: opened from launch URLs (deep links, a second instance, the paste
//! box), each with its native client launched, listed for the window, closed on request, and
//! dropped with a notification when the broker ends the session.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use passerelle_desktop::config::Config;
use passerelle_desktop::launcher::{self, Os};
use passerelle_desktop::trust::{Trust, Verdict};
use passerelle_desktop::{Tunnel, TunnelEnd, TunnelOptions};
use serde::Serialize;
use tauri::{AppHandle, Manager as _};
use tauri_plugin_notification::NotificationExt as _;

/// One row of the window's table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The app's number for the tunnel (for the close button).
    pub id: u64,
    /// The broker's host.
    pub broker: String,
    /// The session id.
    pub session: String,
    /// The session's agent, when the launch URL names it (display only).
    pub agent: Option<String>,
    /// The service, e.g. `rdp`.
    pub service: String,
    /// `127.0.0.1:PORT`.
    pub local: String,
    /// Bytes from the client to the broker.
    pub bytes_up: u64,
    /// Bytes from the broker to the client.
    pub bytes_down: u64,
    /// Seconds since the tunnel opened.
    pub seconds: u64,
    /// Connections so far, and open now.
    pub connections: u64,
    /// Connections open now.
    pub active: usize,
    /// The client that was started, or why none was.
    pub client: String,
}

struct Entry {
    tunnel: Arc<Tunnel>,
    client: String,
}

/// The app's state, managed by Tauri.
#[derive(Default)]
pub struct Tunnels {
    next: AtomicU64,
    live: Mutex<BTreeMap<u64, Entry>>,
}

impl Tunnels {
    fn live(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The rows for the window.
    pub fn rows(&self) -> Vec<Row> {
        self.live()
            .iter()
            .map(|(id, e)| {
                let stats = e.tunnel.stats();
                let launch = e.tunnel.launch();
                Row {
                    id: *id,
                    broker: launch
                        .broker
                        .split("://")
                        .nth(1)
                        .unwrap_or(&launch.broker)
                        .to_owned(),
                    session: launch.session.clone(),
                    agent: launch.agent.as_ref().map(ToString::to_string),
                    service: launch.service.to_string(),
                    local: e.tunnel.local_addr().to_string(),
                    bytes_up: stats.bytes_up,
                    bytes_down: stats.bytes_down,
                    seconds: SystemTime::now()
                        .duration_since(stats.started_at)
                        .map_or(0, |d| d.as_secs()),
                    connections: stats.connections,
                    active: stats.active,
                    client: e.client.clone(),
                }
            })
            .collect()
    }

    /// Closes tunnel `id`; false if there is none.
    pub fn close(&self, id: u64) -> bool {
        match self.live().remove(&id) {
            Some(e) => {
                e.tunnel.close();
                true
            }
            None => false,
        }
    }

    fn count(&self) -> usize {
        self.live().len()
    }
}

/// Sets the window title to the number of live tunnels (also what tests look for), unless a
/// question about a broker is open (its title stays until it is answered).
pub fn retitle(app: &AppHandle) {
    if !app.state::<crate::confirm::Questions>().list().is_empty() {
        return;
    }
    let n = app.state::<Tunnels>().count();
    let title = match n {
        0 => "Passerelle".to_owned(),
        1 => "Passerelle — 1 tunnel".to_owned(),
        n => format!("Passerelle — {n} tunnels"),
    };
    if let Some(w) = app.get_webview_window("main") {
        let _ = w.set_title(&title);
    }
}

fn notify(app: &AppHandle, title: &str, body: &str) {
    if let Err(e) = app.notification().builder().title(title).body(body).show() {
        tracing::warn!(error = %e, "could not show a notification");
    }
}

/// Opens a tunnel for `url` and launches the configured or detected client on it.
pub async fn open(app: AppHandle, url: String) -> Result<u64, String> {
    let launch = passerelle_desktop::parse_launch_url(&url).map_err(|e| e.to_string())?;
    let config_path = std::env::var_os("PASSERELLE_DESKTOP_CONFIG").map(std::path::PathBuf::from);
    let config = Config::load(config_path.as_deref()).map_err(|e| e.to_string())?;
    // Any web page can open a passerelle:// link: only brokers the user trusts are used.
    let trust = Trust::new(&config);
    if let Verdict::Unknown { origin } = trust.check(&launch).map_err(|e| e.to_string())? {
        if !crate::confirm::ask(&app, &origin).await {
            return Err(trust.refusal(&origin, true).to_string());
        }
        trust.remember(&origin).map_err(|e| e.to_string())?;
    }
    let opts = TunnelOptions {
        connect_timeout: config.connect_timeout,
        local_connections: config.local_connections,
        ..TunnelOptions::default()
    };
    let service = launch.service.to_string();
    let tunnel = Arc::new(
        Tunnel::start(launch, opts)
            .await
            .map_err(|e| e.to_string())?,
    );
    let addr = tunnel.local_addr();
    let path = std::env::var_os("PATH");
    let client = match launcher::choose(&service, Os::current(), &config, |p| {
        launcher::on_path(p, path.as_ref())
    })
    .and_then(|choice| launcher::launch(&choice, addr, &service, &config))
    {
        Ok(launched) => {
            let name = launched.argv.first().cloned().unwrap_or_default();
            // The client lives on its own; keep its .rdp file until it exits.
            tauri::async_runtime::spawn(async move {
                let mut launched = launched;
                let _ = launched.child.wait().await;
            });
            name
        }
        Err(e) => {
            notify(&app, "Passerelle: no client started", &e.to_string());
            format!("none: connect a client to {addr}")
        }
    };
    let state = app.state::<Tunnels>();
    let id = state.next.fetch_add(1, Ordering::Relaxed) + 1;
    state.live().insert(
        id,
        Entry {
            tunnel: tunnel.clone(),
            client,
        },
    );
    retitle(&app);
    let watcher = app.clone();
    tauri::async_runtime::spawn(async move {
        let end = tunnel.wait().await;
        let removed = watcher.state::<Tunnels>().live().remove(&id).is_some();
        retitle(&watcher);
        // A tunnel closed from the window needs no notice.
        if removed && end != TunnelEnd::Closed {
            let what = format!(
                "{} session {}",
                tunnel.launch().service,
                tunnel.launch().session
            );
            notify(
                &watcher,
                &format!("Passerelle: {what} ended"),
                &end.to_string(),
            );
        }
    });
    Ok(id)
}
