//! `passerelle-desktop`: the desktop helper without a GUI. `open URL` starts a tunnel for a
//! `passerelle://open?...` launch URL and either launches the native client on it or, with
//! `--no-launch`, prints `127.0.0.1:PORT` alone on stdout and forwards until Ctrl-C or the end
//! of the session. Everything else lives in the library.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use passerelle_desktop::config::Config;
use passerelle_desktop::launcher::{self, Os, Source};
use passerelle_desktop::trust::{Trust, Verdict};
use passerelle_desktop::{Error, Tunnel, TunnelEnd, TunnelOptions};
use tokio::time::Instant;

/// How long a launched client that has exited (terminals and `open` hand over and exit at once)
/// may take to make its first connection before the helper gives up.
const FIRST_CONNECTION_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "passerelle-desktop",
    version,
    about = "Opens Passerelle remote-control sessions in native clients through a local port",
    after_help = "Exit codes: 0 closed, or the session was stopped or timed out; 1 other failure; \
                  2 bad launch URL or configuration; 3 TLS or pinned certificate mismatch; \
                  4 token refused; 5 broker unreachable or gone; 6 no client or client failed; \
                  7 the session ended abnormally (agent lost, broker shut down, ...); \
                  8 the broker is not trusted (or plain HTTP without allow_http)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Opens a session from its launch URL (passerelle://open?...).
    Open {
        /// The launch URL, as given by the console.
        url: String,
        /// Do not launch a client: print the local address (127.0.0.1:PORT) alone on a line of
        /// stdout and forward until interrupted or the session ends.
        #[arg(long)]
        no_launch: bool,
        /// The configuration file (default: ~/.config/passerelle/desktop.toml if it exists).
        #[arg(long, env = "PASSERELLE_DESKTOP_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("passerelle-desktop: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Command::Open {
        url,
        no_launch,
        config,
    } = cli.command;
    let code = runtime.block_on(open(&url, no_launch, config));
    // Connections were closed by the tunnel; do not wait for stray blocking tasks.
    runtime.shutdown_timeout(Duration::from_secs(1));
    ExitCode::from(code)
}

fn say(message: impl std::fmt::Display) {
    eprintln!("passerelle-desktop: {message}");
}

async fn open(url: &str, no_launch: bool, config: Option<PathBuf>) -> u8 {
    match try_open(url, no_launch, config).await {
        Ok(code) => code,
        Err(e) => {
            say(format_args!("error: {e}"));
            e.exit_code()
        }
    }
}

async fn try_open(url: &str, no_launch: bool, config: Option<PathBuf>) -> Result<u8, Error> {
    let config = Config::load(config.as_deref())?;
    let launch = passerelle_desktop::parse_launch_url(url)?;
    let trust = Trust::new(&config);
    if let Verdict::Unknown { origin } = trust.check(&launch)? {
        if !confirm(&origin).await {
            let asked = is_terminal();
            return Err(trust.refusal(&origin, asked));
        }
        trust.remember(&origin)?;
    }
    let service = launch.service.to_string();
    // Find the client before opening anything, so that "nothing installed" costs nothing.
    let choice = if no_launch {
        None
    } else {
        let path = std::env::var_os("PATH");
        Some(launcher::choose(&service, Os::current(), &config, |p| {
            launcher::on_path(p, path.as_ref())
        })?)
    };
    let opts = TunnelOptions {
        connect_timeout: config.connect_timeout,
        local_connections: config.local_connections,
        ..TunnelOptions::default()
    };
    let tunnel = Tunnel::start(launch, opts).await?;
    let addr = tunnel.local_addr();
    let Some(choice) = choice else {
        let mut out = std::io::stdout().lock();
        let printed = writeln!(out, "{addr}").and_then(|()| out.flush());
        drop(out);
        if printed.is_err() {
            tunnel.close();
        }
        say(format_args!(
            "forwarding {addr} to the {service} session on {}; Ctrl-C to stop",
            tunnel.launch().broker
        ));
        let end = tokio::select! {
            end = tunnel.wait() => end,
            () = interrupted() => tunnel.shutdown().await,
        };
        return Ok(report(&end));
    };
    let mut launched = launcher::launch(&choice, addr, &service, &config)?;
    let from = match choice.source {
        Source::Configured => "configured".to_owned(),
        Source::Detected(p) => format!("found {p} on PATH"),
    };
    say(format_args!(
        "{service} session forwarded on {addr}; started {} ({from})",
        launched.argv.join(" ")
    ));
    let mut client_exit: Option<Instant> = None;
    let mut stop = std::pin::pin!(interrupted());
    loop {
        tokio::select! {
            end = tunnel.wait() => return Ok(report(&end)),
            () = &mut stop => {
                let _ = launched.child.start_kill();
                return Ok(report(&tunnel.shutdown().await));
            }
            status = launched.child.wait(), if client_exit.is_none() => {
                client_exit = Some(Instant::now());
                let stats = tunnel.stats();
                match status {
                    Ok(s) if !s.success() && stats.connections == 0 => {
                        say(format_args!("the client exited ({s}) without connecting"));
                        tunnel.shutdown().await;
                        return Ok(6);
                    }
                    Ok(s) => say(format_args!("the client exited ({s})")),
                    Err(e) => say(format_args!("cannot wait for the client: {e}")),
                }
            }
            () = tokio::time::sleep(Duration::from_millis(200)), if client_exit.is_some() => {
                // The client has gone (or handed over to a terminal or another app): stop once
                // its connections are over.
                let stats = tunnel.stats();
                let waited = client_exit.map_or(Duration::ZERO, |t| t.elapsed());
                if stats.active == 0 && (stats.connections > 0 || waited > FIRST_CONNECTION_WAIT) {
                    say("the client has closed its connection; closing the tunnel");
                    tunnel.shutdown().await;
                    return Ok(0);
                }
            }
        }
    }
}

/// Whether a person is at this terminal to answer (stdin and stderr both terminals).
fn is_terminal() -> bool {
    use std::io::IsTerminal as _;
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks the person at the terminal whether to trust `origin`; false without a terminal.
async fn confirm(origin: &str) -> bool {
    if !is_terminal() {
        return false;
    }
    let question = format!(
        "passerelle-desktop: open a session on {origin}? It is not among your trusted brokers; \
         answering yes remembers it. [y/N] "
    );
    let answer = tokio::task::spawn_blocking(move || {
        let mut err = std::io::stderr().lock();
        let _ = err
            .write_all(question.as_bytes())
            .and_then(|()| err.flush());
        drop(err);
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await;
    matches!(answer, Ok(Ok(line)) if matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// Tells the user how the tunnel ended and picks the exit code.
fn report(end: &TunnelEnd) -> u8 {
    match end {
        TunnelEnd::Closed => {
            say("tunnel closed");
            0
        }
        TunnelEnd::SessionEnded(e) if e.is_normal() => {
            say(format_args!("session ended: {e}"));
            0
        }
        TunnelEnd::SessionEnded(e) => {
            say(format_args!("error: the broker ended the session: {e}"));
            7
        }
        TunnelEnd::Failed(e) => {
            say(format_args!("error: {e}"));
            e.exit_code()
        }
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
