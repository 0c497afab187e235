//! Passerelle's desktop helper as a Tauri 2 app: it registers the `passerelle://` scheme
//! (deep-link plugin), stays a single instance (a second launch hands its URL to the running
//! one), sits in the tray, and shows a window listing live tunnels with their bytes and
//! duration and a close button. The tunnels themselves are `passerelle_desktop`'s.

#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

mod confirm;
mod tunnels;

use tauri::menu::{Menu, MenuItem};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Manager as _, WindowEvent};
use tauri_plugin_deep_link::DeepLinkExt as _;
use tunnels::{Row, Tunnels};

#[tauri::command]
fn list_tunnels(state: tauri::State<'_, Tunnels>) -> Vec<Row> {
    state.rows()
}

#[tauri::command]
fn close_tunnel(app: AppHandle, state: tauri::State<'_, Tunnels>, id: u64) -> bool {
    let closed = state.close(id);
    tunnels::retitle(&app);
    closed
}

#[tauri::command]
async fn open_url(app: AppHandle, url: String) -> Result<u64, String> {
    tunnels::open(app, url).await
}

#[tauri::command]
fn pending_brokers(state: tauri::State<'_, confirm::Questions>) -> Vec<confirm::Question> {
    state.list()
}

#[tauri::command]
fn answer_broker(state: tauri::State<'_, confirm::Questions>, id: u64, open: bool) -> bool {
    state.answer(id, open)
}

pub(crate) fn show(app: &AppHandle) {
    if let Some(w) = app.get_webview_window("main") {
        let _ = w.show();
        let _ = w.unminimize();
        let _ = w.set_focus();
    }
}

/// Opens each `passerelle://` URL among `urls` (deep links, or a second instance's argv).
fn handle_urls(app: &AppHandle, urls: impl IntoIterator<Item = String>) {
    for url in urls.into_iter().filter(|u| u.starts_with("passerelle:")) {
        let app = app.clone();
        tauri::async_runtime::spawn(async move {
            if let Err(e) = tunnels::open(app.clone(), url).await {
                tracing::warn!(error = %e, "could not open the session");
                use tauri_plugin_notification::NotificationExt as _;
                let _ = app
                    .notification()
                    .builder()
                    .title("Passerelle: the session could not be opened")
                    .body(&e)
                    .show();
            }
        });
    }
    show(app);
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = tauri::Builder::default()
        // First, so that a second instance exits before it does anything else. With the
        // deep-link feature, the URL it was started with reaches `on_open_url` below.
        .plugin(tauri_plugin_single_instance::init(|app, _argv, _cwd| {
            show(app)
        }))
        .plugin(tauri_plugin_deep_link::init())
        .plugin(tauri_plugin_notification::init())
        .manage(Tunnels::default())
        .manage(confirm::Questions::default())
        .invoke_handler(tauri::generate_handler![
            list_tunnels,
            close_tunnel,
            open_url,
            pending_brokers,
            answer_broker
        ])
        .setup(|app| {
            let handle = app.handle().clone();
            #[cfg(any(target_os = "linux", windows))]
            if let Err(e) = app.deep_link().register_all() {
                tracing::warn!(error = %e, "could not register the passerelle:// scheme");
            }
            let on_link = handle.clone();
            app.deep_link().on_open_url(move |event| {
                handle_urls(&on_link, event.urls().iter().map(ToString::to_string));
            });
            // The URL this first instance was started with.
            if let Ok(Some(urls)) = app.deep_link().get_current() {
                handle_urls(&handle, urls.iter().map(ToString::to_string));
            }
            let show_item = MenuItem::with_id(app, "show", "Show tunnels", true, None::<&str>)?;
            let quit_item = MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?;
            let menu = Menu::with_items(app, &[&show_item, &quit_item])?;
            let mut tray = TrayIconBuilder::with_id("passerelle")
                .tooltip("Passerelle")
                .menu(&menu)
                .on_menu_event(|app, event| match event.id().as_ref() {
                    "show" => show(app),
                    "quit" => app.exit(0),
                    _ => {}
                });
            if let Some(icon) = app.default_window_icon() {
                tray = tray.icon(icon.clone());
            }
            tray.build(app)?;
            Ok(())
        })
        .on_window_event(|window, event| {
            // Closing the window keeps the app (and its tunnels) in the tray.
            if let WindowEvent::CloseRequested { api, .. } = event {
                api.prevent_close();
                let _ = window.hide();
            }
        })
        .run(tauri::generate_context!());
    if let Err(e) = result {
        eprintln!("passerelle-desktop-app: {e}");
        std::process::exit(1);
    }
}
