//! The data dir is the broker's user's alone: the directory 0700, and every file in it 0600 from
//! its creation (the store with its WAL and SHM files, keys, certificate, recordings); modes left
//! wider by an older version are narrowed at start. The first admin key reaches a terminal, but
//! never a captured stdout (a service manager's journal, a CI log): then only its file has it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use passerelle::file_modes::DATA_FILES;
use passerelle_e2e::process::{BrokerProcess, passerelle_bin};
use passerelle_e2e::{
    Agent, EchoServer, Forward, TestBroker, WAIT, Ws, admin_key_file, pattern, session_request,
};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;
use tokio::time::{Instant, sleep, timeout};

fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::symlink_metadata(path)
        .with_context(|| path.display().to_string())?
        .permissions()
        .mode()
        & 0o7777)
}

/// Every entry under `dir` (itself included) has mode 0700 (directories) or 0600 (files).
fn all_private(dir: &Path) -> Result<usize> {
    let mut seen = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        let m = mode(&path)?;
        if path.is_dir() {
            ensure!(m == 0o700, "directory {} has mode {m:o}", path.display());
            for entry in std::fs::read_dir(&path)? {
                todo.push(entry?.path());
            }
        } else {
            ensure!(m == 0o600, "file {} has mode {m:o}", path.display());
        }
        seen += 1;
    }
    Ok(seen)
}

#[tokio::test]
async fn the_binary_creates_everything_private_and_keeps_the_admin_key_off_a_pipe() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // A usual umask: what the broker creates must not depend on it.
    let (serve, banner) = BrokerProcess::serve(
        &data,
        &[
            "--ssh-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
    )
    .await?;
    ensure!(
        banner.admin_key.is_none(),
        "the admin key was printed to a pipe"
    );
    let key = admin_key_file(&data)?;
    ensure!(key.starts_with("psk_"), "admin-api-key holds {key:?}");
    // The log says where the key is, and never the key.
    let deadline = Instant::now() + WAIT;
    while !serve.stderr().contains("admin-api-key") {
        ensure!(
            Instant::now() < deadline,
            "the log does not say where the admin key is:\n{}",
            serve.stderr()
        );
        sleep(Duration::from_millis(20)).await;
    }
    ensure!(!serve.stderr().contains(&key), "the admin key was logged");

    // While it runs: the store's WAL and SHM files exist, and all is private.
    for name in [
        "passerelle.db",
        "passerelle.db-wal",
        "passerelle.db-shm",
        "tls-key.pem",
    ] {
        ensure!(data.join(name).exists(), "no {name} in the data dir");
    }
    let n = all_private(&data)?;
    ensure!(n >= 11, "only {n} entries checked");
    let (status, log) = serve.terminate_with_log().await?;
    ensure!(status.success(), "{status}: {log}");
    all_private(&data)?;
    // A clean stop folds the write-ahead log into the store's file.
    let wal = std::fs::metadata(data.join("passerelle.db-wal")).map_or(0, |m| m.len());
    ensure!(
        wal == 0,
        "the WAL still holds {wal} bytes after a clean stop"
    );
    Ok(())
}

#[tokio::test]
async fn a_terminal_is_shown_the_first_admin_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let bin = tokio::task::spawn_blocking(passerelle_bin).await??;
    // `script` gives the broker a pseudo-terminal as stdout and copies it to ours.
    let line = format!(
        "exec {} serve --data-dir {} --ssh-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --insecure-http",
        bin.display(),
        data.display()
    );
    let mut child = Command::new("script")
        .args(["-qfec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting script (util-linux)")?;
    let pgid = child.id().context("script exited at once")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let shown = timeout(WAIT, async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("ssh listening on") {
                bail!("the banner went on without the admin key");
            }
            if let Some((_, key)) = line
                .strip_prefix("admin API key (tenant default, shown once, also in ")
                .and_then(|rest| rest.rsplit_once(": "))
            {
                return Ok(key.trim().to_owned());
            }
        }
        bail!("the broker's terminal closed without the admin key")
    })
    .await
    .context("no admin key line on the terminal")??;
    ensure!(
        shown == admin_key_file(&data)?,
        "the terminal and the file differ"
    );
    // SIGTERM to the whole group (script and the broker): a clean stop.
    let status = Command::new("kill")
        .args(["-TERM", "--", &format!("-{pgid}")])
        .status()
        .await?;
    ensure!(status.success(), "kill failed");
    timeout(WAIT, child.wait())
        .await
        .context("the broker under script did not stop")??;
    Ok(())
}

#[tokio::test]
async fn wide_modes_left_behind_are_narrowed_at_start_and_recordings_are_private() -> Result<()> {
    let broker = TestBroker::start().await?;
    let data = broker.data_dir().to_path_buf();
    // A recorded session leaves a recording in a tenant directory.
    let echo = EchoServer::start().await?;
    let mut agent = Agent::registered(&broker, "pc-modes").await?;
    agent.connect(&[Forward::named("rdp", echo.port())])?;
    agent.wait_online(&broker, &["rdp"]).await?;
    let mut req = session_request(&agent.id, "rdp");
    req.record = Some(true);
    let created = broker.create_session(&req).await?;
    let mut ws = Ws::connect(&created.raw_ws_url).await?;
    ws.round_trip(&pattern(10_000, 1)).await?;
    ws.close().await?;
    broker.wait_ended(&created.id).await?;
    let recordings = data.join("recordings");
    ensure!(
        all_private(&recordings)? >= 3,
        "no recording under {}",
        recordings.display()
    );
    all_private(&data)?;

    // What an older version (or a restored backup) left: the umask's modes.
    let tenant_dir = std::fs::read_dir(&recordings)?
        .next()
        .context("a tenant directory")??
        .path();
    let recording = std::fs::read_dir(&tenant_dir)?
        .next()
        .context("a recording")??
        .path();
    let mut widened = vec![
        (data.clone(), 0o755),
        (recordings.clone(), 0o755),
        (tenant_dir.clone(), 0o775),
        (recording.clone(), 0o644),
    ];
    for name in DATA_FILES {
        let path = data.join(name);
        if path.exists() {
            widened.push((path, 0o644));
        }
    }
    let broker = broker
        .restart(|_| {
            for (path, m) in &widened {
                let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(*m));
            }
        })
        .await?;
    all_private(broker.data_dir())?;
    // The broker works on as before.
    ensure!(
        broker.session(&created.id).await?.record,
        "the store lost the session"
    );
    Ok(())
}
