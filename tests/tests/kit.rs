//! Agent kits (issue 18): a Linux kit made by `passerelle agent kit` with an enrolment token,
//! installed by its own script into a temporary root; the unit's ExecStart, run as it is (real
//! OpenSSH), brings the agent online; `systemd-analyze verify` accepts the unit.

use std::path::Path;
use std::process::Stdio;

use anyhow::{Context as _, Result, ensure};
use passerelle_e2e::process::run_cli;
use passerelle_e2e::{Method, POLL, StatusCode, TestBroker, WAIT, unique};
use serde_json::json;
use tokio::io::AsyncReadExt as _;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};

/// The unit's ExecStart, split on whitespace (the kit's paths and values have none).
fn exec_start(unit: &str) -> Result<Vec<String>> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .context("no ExecStart in the unit")?;
    Ok(line.split_whitespace().map(str::to_owned).collect())
}

/// Polls until `id` is online; fails early, with ssh's stderr, if ssh exits.
async fn agent_online(broker: &TestBroker, id: &str, ssh: &mut Child) -> Result<serde_json::Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = ssh.try_wait()? {
            let mut stderr = String::new();
            if let Some(mut pipe) = ssh.stderr.take() {
                pipe.read_to_string(&mut stderr).await?;
            }
            anyhow::bail!("the unit's ssh exited ({status}) before {id} was online:\n{stderr}");
        }
        let (status, body) = broker
            .api(
                Method::GET,
                &format!("/api/v1/agents/{id}"),
                Some(broker.admin_key()),
                None,
            )
            .await?;
        if status == StatusCode::OK && body["online"] == json!(true) {
            return Ok(body);
        }
        ensure!(
            Instant::now() < deadline,
            "agent {id} never online: {status} {body}"
        );
        sleep(POLL).await;
    }
}

#[tokio::test]
async fn a_linux_kit_with_a_token_brings_an_agent_online_from_a_clean_root() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (status, created) = broker
        .api(
            Method::POST,
            "/api/v1/enrollment-tokens",
            Some(broker.admin_key()),
            Some(&json!({"name": "kit test", "uses": 1})),
        )
        .await?;
    ensure!(status == StatusCode::CREATED, "{status} {created}");
    let token = created["token"].as_str().context("token")?.to_owned();

    let work = tempfile::tempdir()?;
    let kit = work.path().join("kit");
    let ssh = broker.ssh_addr();
    let out = run_cli(
        &[
            "--data-dir".as_ref(),
            broker.data_dir().as_os_str(),
            "agent".as_ref(),
            "kit".as_ref(),
            "--os".as_ref(),
            "linux".as_ref(),
            "--ssh-address".as_ref(),
            format!("{}:{}", ssh.ip(), ssh.port()).as_ref(),
            "--public-url".as_ref(),
            broker.base_url().as_ref(),
            "--vnc".as_ref(),
            "127.0.0.1:5900".as_ref(),
            "--ssh".as_ref(),
            "127.0.0.1:22".as_ref(),
            "--out".as_ref(),
            kit.as_os_str(),
        ],
        &[("PASSERELLE_ENROLL_TOKEN", token.as_str())],
    )
    .await?;
    ensure!(out.success(), "agent kit: {out:?}");
    ensure!(
        !out.stdout.contains(&token),
        "the token is printed: {out:?}"
    );
    let known = std::fs::read_to_string(kit.join("known_hosts"))?;
    ensure!(known.contains(broker.host_key()), "{known}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(kit.join("enroll-token"))?.permissions(),
    );
    ensure!(mode & 0o777 == 0o600, "enroll-token mode {mode:o}");

    let root = work.path().join("root");
    let id = unique("kit-pc");
    let install = Command::new("sh")
        .arg(kit.join("install.sh"))
        .args(["--id", &id, "--root"])
        .arg(&root)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let install = tokio::time::timeout(WAIT, install).await??;
    ensure!(
        install.status.success(),
        "install.sh: {}\n{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );
    let etc = root.join("etc/passerelle-agent");
    ensure!(etc.join("id_ed25519").exists(), "no key made in the root");
    let agent = broker
        .api(
            Method::GET,
            &format!("/api/v1/agents/{id}"),
            Some(broker.admin_key()),
            None,
        )
        .await?;
    ensure!(agent.0 == StatusCode::OK, "not enrolled: {agent:?}");

    let unit_path = root.join("etc/systemd/system/passerelle-agent.service");
    let unit = std::fs::read_to_string(&unit_path)?;
    verify_unit(&unit_path).await?;
    let argv = exec_start(&unit)?;
    ensure!(
        argv.iter()
            .any(|a| a.starts_with(&etc.display().to_string())),
        "the unit's paths are not in the root: {argv:?}"
    );
    let mut ssh = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let online = agent_online(&broker, &id, &mut ssh).await;
    let _ = ssh.start_kill();
    let online = online?;
    let services: Vec<&str> = online["services"]
        .as_array()
        .context("services")?
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    ensure!(
        services.contains(&"vnc") && services.contains(&"ssh"),
        "{online}"
    );

    // The token had one use: a second install (another root, another id) is refused.
    let again = Command::new("sh")
        .arg(kit.join("install.sh"))
        .args(["--id", &unique("kit-pc"), "--root"])
        .arg(work.path().join("root2"))
        .stdin(Stdio::null())
        .output();
    let again = tokio::time::timeout(WAIT, again).await??;
    let stderr = String::from_utf8_lossy(&again.stderr);
    ensure!(
        !again.status.success() && stderr.contains("token_spent"),
        "a spent token enrolled again: {stderr}"
    );
    // Nor is a new kit made with it.
    let out = run_cli(
        &[
            "--data-dir".as_ref(),
            broker.data_dir().as_os_str(),
            "agent".as_ref(),
            "kit".as_ref(),
            "--os".as_ref(),
            "windows".as_ref(),
            "--ssh-address".as_ref(),
            "broker.example:2222".as_ref(),
            "--public-url".as_ref(),
            broker.base_url().as_ref(),
            "--out".as_ref(),
            work.path().join("kit2").as_os_str(),
        ],
        &[("PASSERELLE_ENROLL_TOKEN", token.as_str())],
    )
    .await?;
    ensure!(
        !out.success() && out.stderr.contains("is spent"),
        "a kit with a spent token: {out:?}"
    );
    Ok(())
}

/// Without a token: the script prints the key it made; once an admin registers it, the unit's
/// command brings the agent online. Before that, the broker refuses it.
#[tokio::test]
async fn a_linux_kit_with_an_id_prints_the_key_for_an_admin() -> Result<()> {
    let broker = TestBroker::start().await?;
    let work = tempfile::tempdir()?;
    let kit = work.path().join("kit");
    let id = unique("kit-id");
    let ssh = broker.ssh_addr();
    let out = run_cli(
        &[
            "--data-dir".as_ref(),
            broker.data_dir().as_os_str(),
            "agent".as_ref(),
            "kit".as_ref(),
            "--os".as_ref(),
            "linux".as_ref(),
            "--id".as_ref(),
            id.as_ref(),
            "--ssh-address".as_ref(),
            format!("{}:{}", ssh.ip(), ssh.port()).as_ref(),
            "--public-url".as_ref(),
            broker.base_url().as_ref(),
            "--rdp".as_ref(),
            "127.0.0.1:3389".as_ref(),
            "--out".as_ref(),
            kit.as_os_str(),
        ],
        &[],
    )
    .await?;
    ensure!(out.success(), "agent kit: {out:?}");
    ensure!(
        !kit.join("enroll-token").exists(),
        "a token file without a token"
    );
    let root = work.path().join("root");
    let install = Command::new("sh")
        .arg(kit.join("install.sh"))
        .arg("--root")
        .arg(&root)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let install = tokio::time::timeout(WAIT, install).await??;
    let stdout = String::from_utf8_lossy(&install.stdout);
    ensure!(install.status.success(), "install.sh: {stdout}");
    let key = stdout
        .split_once("--public-key '")
        .and_then(|(_, rest)| rest.split_once('\''))
        .map(|(key, _)| key.to_owned())
        .with_context(|| format!("no key printed: {stdout}"))?;
    let made = std::fs::read_to_string(root.join("etc/passerelle-agent/id_ed25519.pub"))?;
    ensure!(made.trim() == key, "printed {key:?}, made {made:?}");
    ensure!(
        stdout.contains(&format!(" {id} ")),
        "the kit's id is not used: {stdout}"
    );

    let unit = std::fs::read_to_string(root.join("etc/systemd/system/passerelle-agent.service"))?;
    let argv = exec_start(&unit)?;
    let spawn = || {
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
    };
    // Not registered yet: refused (BatchMode: ssh exits, it never prompts).
    let refused = tokio::time::timeout(WAIT, spawn()?.wait_with_output()).await??;
    ensure!(!refused.status.success(), "an unregistered key got in");

    let (status, body) = broker
        .api(
            Method::POST,
            "/api/v1/agents",
            Some(broker.admin_key()),
            Some(&json!({"id": id, "public_key": key})),
        )
        .await?;
    ensure!(status == StatusCode::CREATED, "{status} {body}");
    let mut ssh = spawn()?;
    let online = agent_online(&broker, &id, &mut ssh).await;
    let _ = ssh.start_kill();
    let online = online?;
    ensure!(online["services"][0]["name"] == json!("rdp"), "{online}");
    Ok(())
}

/// A value a script would misread is refused with a clear error, and no kit is written.
#[tokio::test]
async fn a_kit_with_a_bad_value_is_refused() -> Result<()> {
    let broker = TestBroker::start().await?;
    let work = tempfile::tempdir()?;
    let out_dir = work.path().join("kit");
    for (flag, value, says) in [
        ("--ssh-address", "broker;id:2222", "not a host name"),
        ("--ssh-address", "broker.example", "HOST:PORT"),
        ("--public-url", "https://b.example/$(id)", "misread"),
        ("--vnc", "-oProxyCommand=x:1", "not a host name"),
        (
            "--enroll-token",
            "pet_000000000000_abc",
            "no enrolment token",
        ),
        ("--enroll-token", "not-a-token", "not an enrolment token"),
    ] {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--data-dir".into(),
            broker.data_dir().into(),
            "agent".into(),
            "kit".into(),
            "--os".into(),
            "linux".into(),
            "--out".into(),
            out_dir.clone().into(),
        ];
        if flag != "--ssh-address" {
            args.extend(["--ssh-address".into(), "broker.example:2222".into()]);
        }
        if flag != "--public-url" {
            args.extend(["--public-url".into(), "https://b.example".into()]);
        }
        args.push(format!("{flag}={value}").into());
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let out = run_cli(&args, &[]).await?;
        ensure!(
            !out.success() && out.stderr.contains(says),
            "{flag} {value}: {out:?}"
        );
        ensure!(
            !out_dir.join("install.sh").exists(),
            "{flag} {value} wrote a kit"
        );
    }
    Ok(())
}

/// `systemd-analyze verify` on the unit, when systemd is installed.
async fn verify_unit(unit: &Path) -> Result<()> {
    if which("systemd-analyze").is_none() {
        eprintln!("systemd-analyze not installed: unit not verified");
        return Ok(());
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .stdin(Stdio::null())
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("passerelle-agent"))
        .collect();
    ensure!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
    Ok(())
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}
