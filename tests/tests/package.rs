//! The Debian package (packaging/deb/build.sh) as an administrator gets it: built from this
//! build's binary, checked with `dpkg-deb --info/--contents` (files, modes, conffiles, maintainer
//! scripts), unpacked into a throwaway root (never installed on this machine: CI runs as root),
//! its unit checked for the hardening it promises and by `systemd-analyze verify` when present,
//! and its binary run with the packaged configuration up to the banner and a clean SIGTERM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use passerelle::config::FileConfig;
use passerelle_e2e::process::{BrokerProcess, passerelle_bin};
use tokio::process::Command;
use tokio::time::timeout;

/// Building strips and compresses a debug binary of ~100 MB: slow on a loaded machine.
const BUILD_WAIT: Duration = Duration::from_secs(300);

fn repo_root() -> Result<PathBuf> {
    Ok(passerelle_e2e::manifest_dir()
        .parent()
        .context("tests crate has no parent dir")?
        .to_path_buf())
}

/// Runs `cmd` to completion within `limit`.
async fn output(cmd: &mut Command, limit: Duration) -> Result<Output> {
    cmd.kill_on_drop(true);
    timeout(limit, cmd.output())
        .await
        .with_context(|| format!("{cmd:?} did not finish in {limit:?}"))?
        .with_context(|| format!("running {cmd:?}"))
}

/// Runs `cmd`, which must succeed; returns its stdout.
async fn stdout_of(cmd: &mut Command) -> Result<String> {
    let out = output(cmd, BUILD_WAIT).await?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn build_script(args: &[&std::ffi::OsStr]) -> Result<Command> {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root()?.join("packaging/deb/build.sh"))
        .args(args);
    Ok(cmd)
}

/// `KEY=VALUE` lines of a systemd unit, every value of a repeated key in order.
fn unit_keys(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            keys.entry(k.to_owned()).or_default().push(v.to_owned());
        }
    }
    keys
}

/// The one value of `key` in a unit's keys.
fn one_value<'a>(unit: &'a BTreeMap<String, Vec<String>>, key: &str) -> Result<&'a str> {
    match unit.get(key).map(Vec::as_slice) {
        Some([v]) => Ok(v.as_str()),
        other => bail!("{key}: {other:?} in the unit, not one value"),
    }
}

/// Replaces the one line `from` of `text` with `to`.
fn replace_line(text: &str, from: &str, to: &str) -> Result<String> {
    let n = text.lines().filter(|l| *l == from).count();
    ensure!(
        n == 1,
        "the packaged config has {n} lines `{from}`, not one"
    );
    Ok(text
        .lines()
        .map(|l| if l == from { to } else { l })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// `systemd-analyze verify` on `unit`: its complaints (stderr), empty when the unit is clean.
async fn verify_unit(unit: &Path) -> Result<String> {
    let out = output(
        Command::new("systemd-analyze").arg("verify").arg(unit),
        BUILD_WAIT,
    )
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() && stderr.is_empty() {
        bail!("systemd-analyze verify failed silently: {}", out.status);
    }
    Ok(stderr)
}

#[tokio::test]
async fn package_contents_unit_and_installed_broker() -> Result<()> {
    passerelle_e2e::init();
    let dir = tempfile::tempdir()?;
    let bin = tokio::task::spawn_blocking(passerelle_bin).await??;

    // Build from this build's binary (gzip: faster than the default xz, same contents).
    let out_dir = dir.path().join("out");
    let deb = stdout_of(&mut build_script(&[
        "--binary".as_ref(),
        bin.as_os_str(),
        "--out".as_ref(),
        out_dir.as_os_str(),
        "--compress".as_ref(),
        "gzip".as_ref(),
    ])?)
    .await?;
    let deb = PathBuf::from(deb.trim());
    ensure!(
        deb.parent() == Some(out_dir.as_path())
            && deb
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("passerelle_") && n.ends_with(".deb")),
        "odd package path {}",
        deb.display()
    );

    // The control fields and the conffile list.
    let info = stdout_of(Command::new("dpkg-deb").arg("--info").arg(&deb)).await?;
    for needle in [
        "Package: passerelle",
        "Depends: adduser, libc6",
        "conffiles",
        "postinst",
        "prerm",
        "postrm",
    ] {
        ensure!(
            info.contains(needle),
            "no `{needle}` in dpkg-deb --info:\n{info}"
        );
    }
    let conffiles = stdout_of(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb)
            .arg("conffiles"),
    )
    .await?;
    ensure!(
        conffiles.trim() == "/etc/passerelle/passerelle.toml",
        "conffiles: {conffiles:?}"
    );

    // The files, root-owned, with their modes.
    let contents = stdout_of(Command::new("dpkg-deb").arg("--contents").arg(&deb)).await?;
    for (mode, path) in [
        ("-rwxr-xr-x", "./usr/bin/passerelle"),
        ("-rw-r--r--", "./lib/systemd/system/passerelle.service"),
        ("-rw-r--r--", "./etc/passerelle/passerelle.toml"),
        ("-rw-r--r--", "./usr/share/doc/passerelle/copyright"),
        ("-rw-r--r--", "./usr/share/doc/passerelle/README.md"),
    ] {
        let line = contents
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .with_context(|| format!("{path} missing from the package:\n{contents}"))?;
        ensure!(
            line.starts_with(mode) && line.contains(" root/root "),
            "{line}"
        );
    }

    // Unpack into a throwaway root; the maintainer scripts beside it.
    let root = dir.path().join("root");
    stdout_of(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root)).await?;
    let control = dir.path().join("control");
    stdout_of(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control)).await?;
    for script in ["postinst", "prerm", "postrm"] {
        stdout_of(Command::new("sh").arg("-n").arg(control.join(script))).await?;
    }
    let postrm = std::fs::read_to_string(control.join("postrm"))?;
    ensure!(
        postrm.contains("if [ \"$1\" = \"purge\" ]; then")
            && postrm.matches("rm -rf /var/lib/passerelle").count() == 1,
        "postrm must delete the state on purge only:\n{postrm}"
    );

    // The unit: who it runs as, where, and the hardening it promises.
    let unit_path = root.join("lib/systemd/system/passerelle.service");
    let unit_text = std::fs::read_to_string(&unit_path)?;
    let unit = unit_keys(&unit_text);
    let one = |k: &str| one_value(&unit, k);
    ensure!(
        one("ExecStart")? == "/usr/bin/passerelle serve --config /etc/passerelle/passerelle.toml"
    );
    // `systemctl reload` renews the HTTPS certificate (SIGHUP) without ending anything.
    ensure!(one("ExecReload")? == "/bin/kill -HUP $MAINPID");
    for (k, v) in [
        ("User", "passerelle"),
        ("Group", "passerelle"),
        ("StateDirectory", "passerelle"),
        ("StateDirectoryMode", "0700"),
        ("Restart", "on-failure"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("WantedBy", "multi-user.target"),
    ] {
        ensure!(one(k)? == v, "{k}={} in the unit, not {v}", one(k)?);
    }
    let nofile: u64 = one("LimitNOFILE")?.parse()?;
    ensure!(
        nofile >= 20_000 * 2 + 4096,
        "LimitNOFILE={nofile}: too few for 20,000 agents and their sessions"
    );

    // The conffile is the example configuration with the data in /var/lib/passerelle.
    let packaged_path = root.join("etc/passerelle/passerelle.toml");
    let packaged = FileConfig::load(&packaged_path)?;
    let example = FileConfig::load(&repo_root()?.join("passerelle.example.toml"))?;
    ensure!(packaged.data_dir.as_deref() == Some(Path::new("/var/lib/passerelle")));
    ensure!(
        packaged
            == FileConfig {
                data_dir: packaged.data_dir.clone(),
                ..example
            },
        "the packaged config differs from passerelle.example.toml beyond data_dir"
    );

    // `--help` of the installed binary names every command.
    let installed = root.join("usr/bin/passerelle");
    let help = stdout_of(Command::new(&installed).arg("--help")).await?;
    for command in [
        "serve",
        "tenant",
        "api-key",
        "agent",
        "enroll-token",
        "ca",
        "recording",
        "host-key",
    ] {
        ensure!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "`passerelle --help` does not list {command}:\n{help}"
        );
    }

    // Run it as the unit does, with the packaged config rewritten for a temp data dir and ports
    // chosen by the OS (three lines; everything else as packaged).
    let data = dir.path().join("var/lib/passerelle");
    let text = std::fs::read_to_string(&packaged_path)?;
    let text = replace_line(
        &text,
        "data_dir = \"/var/lib/passerelle\"",
        &format!("data_dir = {:?}", data.to_str().context("utf-8 temp path")?),
    )?;
    let text = replace_line(
        &text,
        "ssh_listen = \"0.0.0.0:2222\"     # where agents connect",
        "ssh_listen = \"127.0.0.1:0\"",
    )?;
    let text = replace_line(
        &text,
        "http_listen = \"0.0.0.0:8443\"    # console API, viewers, desktop helper",
        "http_listen = \"127.0.0.1:0\"",
    )?;
    let config = dir.path().join("passerelle.toml");
    std::fs::write(&config, text)?;
    let mut serve = Command::new(&installed);
    serve.arg("serve").arg("--config").arg(&config);
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("PASSERELLE_") {
            serve.env_remove(var);
        }
    }
    let (broker, banner) = BrokerProcess::spawn(serve).await?;
    ensure!(
        banner.ssh.starts_with("127.0.0.1:") && !banner.ssh.ends_with(":0"),
        "{banner:?}"
    );
    ensure!(banner.http.starts_with("https://127.0.0.1:"), "{banner:?}");
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(passerelle_e2e::WAIT)
        .build()?;
    let health = http.get(format!("{}/healthz", banner.http)).send().await?;
    ensure!(health.status() == 200, "healthz: {}", health.status());
    for file in ["passerelle.db", "ssh_host_ed25519_key", "admin-api-key"] {
        ensure!(data.join(file).exists(), "{file} not in the data dir");
    }
    let (status, log) = broker.terminate_with_log().await?;
    ensure!(status.success(), "exit {status} on SIGTERM; log:\n{log}");
    ensure!(log.contains("shutting down"), "log:\n{log}");

    // systemd's own check of the unit, when this machine has it (Debian package systemd).
    if which("systemd-analyze") {
        // ExecStart must name an existing file: only that path points into the throwaway root.
        let copy = dir.path().join("passerelle.service");
        let rewritten = unit_text.replace(
            "ExecStart=/usr/bin/passerelle ",
            &format!("ExecStart={} ", installed.display()),
        );
        ensure!(rewritten != unit_text);
        std::fs::write(&copy, &rewritten)?;
        let complaints = verify_unit(&copy).await?;
        ensure!(
            complaints.is_empty(),
            "systemd-analyze verify:\n{complaints}"
        );
        // The check can fail: systemd-analyze exits 0 on an unknown key, and says so on stderr.
        std::fs::write(
            &copy,
            format!("{rewritten}\n[Service]\nProtectSytem=strict\n"),
        )?;
        let complaints = verify_unit(&copy).await?;
        ensure!(complaints.contains("ProtectSytem"), "{complaints:?}");
    } else {
        eprintln!("skipped systemd-analyze verify: no systemd-analyze (Debian package systemd)");
    }
    Ok(())
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

#[tokio::test]
async fn build_script_refuses_bad_input() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("no-such-passerelle");
    let not_elf = dir.path().join("script");
    std::fs::write(&not_elf, "#!/bin/sh\n")?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&not_elf, std::fs::Permissions::from_mode(0o755))?;
    }
    let out = dir.path().join("out");
    let cases: [(Vec<&std::ffi::OsStr>, String); 5] = [
        (
            vec!["--binary".as_ref(), missing.as_os_str()],
            format!("no broker binary at {}", missing.display()),
        ),
        (
            vec!["--binary".as_ref(), dir.path().as_os_str()],
            "is not an executable file".to_owned(),
        ),
        (
            vec!["--binary".as_ref(), not_elf.as_os_str()],
            "is not an ELF executable".to_owned(),
        ),
        (
            vec!["--binary".as_ref()],
            "--binary needs a path".to_owned(),
        ),
        (
            vec![
                "--binary".as_ref(),
                not_elf.as_os_str(),
                "--compress".as_ref(),
                "lzma".as_ref(),
            ],
            "--compress: lzma is not".to_owned(),
        ),
    ];
    for (args, message) in cases {
        // --out first, so that a lone trailing --binary has no value.
        let mut all: Vec<&std::ffi::OsStr> = vec!["--out".as_ref(), out.as_os_str()];
        all.extend(args.iter().copied());
        let o = output(&mut build_script(&all)?, BUILD_WAIT).await?;
        let stderr = String::from_utf8_lossy(&o.stderr);
        ensure!(
            !o.status.success() && stderr.contains(&message),
            "{args:?}: {} stderr {stderr:?}",
            o.status
        );
        ensure!(o.stdout.is_empty(), "{args:?} printed a package path");
    }
    ensure!(!out.exists(), "a refused build left {}", out.display());
    Ok(())
}
