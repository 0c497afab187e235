//! The app's Debian package as a technician gets it: built by `packaging/desktop/build.sh` (the
//! Tauri bundler) from this build's binary, its contents checked (binary, `.desktop` file that
//! claims `x-scheme-handler/passerelle` and passes the URL, icon, Depends naming the package of
//! every library the binary links), unpacked into a throwaway root (never installed on this
//! machine: CI runs as root) with the MIME database pointed there, and a real `passerelle://`
//! link opened with `xdg-open` under Xvfb and a D-Bus session: the packaged app starts, opens
//! the tunnel to the broker and the agent's service, and is stopped; the root is then removed.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use common::Setup;
use common::x11::{Bus, Proc, Xvfb, wait_window};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use passerelle_e2e::{EchoServer, POLL, TestBroker, WAIT};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::{Instant, sleep, timeout};

/// Bundling packs a debug binary of ~100 MB: slow on a loaded machine.
const BUILD_WAIT: Duration = Duration::from_secs(300);
/// How long the first window may take (WebKitGTK's first start is slow on a loaded machine).
const WINDOW_WAIT: Duration = Duration::from_secs(90);
/// The packaged names (tauri.conf.json's `mainBinaryName`, tauri.linux.conf.json's
/// `productName`).
const BIN: &str = "passerelle-desktop-app";
const PACKAGE: &str = "passerelle-desktop";
const DESKTOP_FILE: &str = "passerelle-desktop.desktop";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `program args` to completion within `limit`; its stdout. It must succeed.
async fn run(
    program: &str,
    args: &[&str],
    envs: &[(&str, &Path)],
    limit: Duration,
) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(envs.iter().map(|(k, v)| (*k, *v)))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = timeout(limit, cmd.output())
        .await
        .with_context(|| format!("{program} {args:?} did not finish in {limit:?}"))?
        .with_context(|| format!("running {program} (scripts/install-desktop-deps.sh)"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The `.deb` built by packaging/desktop/build.sh from the binary this test run built. The
/// bundler rewrites the binary in place (it marks the bundle type in it), so it works on a
/// copy in a target folder of its own, not on the binary other tests are running.
async fn build_deb(work: &Path) -> Result<PathBuf> {
    let built = Path::new(env!("CARGO_BIN_EXE_passerelle-desktop-app"));
    let target = work.join("target");
    std::fs::create_dir_all(target.join("debug"))?;
    std::fs::copy(built, target.join("debug").join(BIN))?;
    let out = work.join("out");
    let script = repo_root().join("packaging/desktop/build.sh");
    let printed = run(
        "bash",
        &[
            script.to_str().context("non-UTF-8 path")?,
            "--debug",
            "--no-build",
            "--bundles",
            "deb",
            "--out",
            out.to_str().context("non-UTF-8 path")?,
        ],
        &[("CARGO_TARGET_DIR", &target)],
        BUILD_WAIT,
    )
    .await?;
    let deb = PathBuf::from(printed.trim());
    ensure!(deb.is_file(), "build.sh printed {printed:?}, not a .deb");
    Ok(deb)
}

/// `Key=Value` lines of a `.desktop` file's `[Desktop Entry]` group.
fn desktop_entry(text: &str) -> Result<BTreeMap<String, String>> {
    let mut group = None;
    let mut keys = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            group = Some(line);
        } else if group == Some("[Desktop Entry]")
            && let Some((k, v)) = line.split_once('=')
        {
            ensure!(
                keys.insert(k.to_owned(), v.to_owned()).is_none(),
                "{k} twice in the .desktop file"
            );
        }
    }
    ensure!(!keys.is_empty(), "no [Desktop Entry] in:\n{text}");
    Ok(keys)
}

/// Package names of a `Depends` field, each alternative of `a | b` as one entry.
fn depends_names(field: &str) -> Vec<Vec<String>> {
    field
        .split(',')
        .map(|alts| {
            alts.split('|')
                .filter_map(|d| d.split_whitespace().next())
                .map(|n| n.split(':').next().unwrap_or(n).to_owned())
                .collect()
        })
        .filter(|v: &Vec<String>| !v.is_empty())
        .collect()
}

/// The installed packages that hold a file named `soname` (`dpkg -S`).
async fn owners_of(soname: &str) -> Result<Vec<String>> {
    let found = run("dpkg", &["-S", &format!("*/{soname}")], &[], WAIT).await?;
    Ok(found
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(pkgs, _)| pkgs))
        .flat_map(|pkgs| pkgs.split(", "))
        .map(|p| p.split(':').next().unwrap_or(p).to_owned())
        .collect())
}

/// Checks the Depends field: every library the binary links comes from a package it names,
/// the libraries loaded at run time and the tools the app runs are there, and each entry is
/// a package this machine has (so the package installs where the tests run).
async fn check_depends(depends: &str, binary: &Path) -> Result<()> {
    let names = depends_names(depends);
    let named = |pkg: &str| names.iter().flatten().any(|n| n == pkg);
    let dynamic = run(
        "readelf",
        &["-d", binary.to_str().context("path")?],
        &[],
        WAIT,
    )
    .await?;
    let needed: Vec<&str> = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next())
        .collect();
    ensure!(
        needed.iter().any(|n| n.starts_with("libwebkit2gtk-4.1")),
        "{needed:?}"
    );
    for soname in &needed {
        let owners = owners_of(soname).await?;
        ensure!(
            owners.iter().any(|o| named(o)),
            "{soname} (from {owners:?}) is linked but no package of it is in Depends: {depends}"
        );
    }
    // The tray's library is loaded at run time; the app registers the scheme with xdg-mime.
    for pkg in [
        "libayatana-appindicator3-1",
        "xdg-utils",
        "desktop-file-utils",
    ] {
        ensure!(named(pkg), "{pkg} is not in Depends: {depends}");
    }
    for alternatives in &names {
        let mut any = false;
        for pkg in alternatives {
            let status = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", pkg])
                .stderr(Stdio::null())
                .output()
                .await?;
            any |= String::from_utf8_lossy(&status.stdout) == "install ok installed";
        }
        ensure!(any, "Depends names {alternatives:?}, not installed here");
    }
    Ok(())
}

/// The process running `exe` (by `/proc/PID/exe`), polled until it appears.
async fn pid_of(exe: &Path, proc: &mut Proc) -> Result<Pid> {
    let exe = exe.canonicalize()?;
    let deadline = Instant::now() + WAIT;
    loop {
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if std::fs::read_link(entry.path().join("exe")).is_ok_and(|p| p == exe) {
                return Ok(Pid::from_raw(pid));
            }
        }
        proc.check_running()?;
        ensure!(
            Instant::now() < deadline,
            "no process runs {}",
            exe.display()
        );
        sleep(POLL).await;
    }
}

/// Kills a process group when dropped (xdg-open runs the app as its child).
struct Group(Pid);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = killpg(self.0, Signal::SIGKILL);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deb_opens_passerelle_links_with_xdg_open() -> Result<()> {
    let work = tempfile::tempdir()?;
    let deb = build_deb(work.path()).await?;
    let deb_s = deb.to_str().context("non-UTF-8 path")?;

    // The control fields and the files, as dpkg sees them.
    let fields = run(
        "dpkg-deb",
        &["-f", deb_s, "Package", "Architecture", "Depends"],
        &[],
        WAIT,
    )
    .await?;
    ensure!(
        fields.contains(&format!("Package: {PACKAGE}\n")),
        "{fields}"
    );
    let depends = fields
        .lines()
        .find_map(|l| l.strip_prefix("Depends: "))
        .with_context(|| format!("no Depends in {fields}"))?
        .to_owned();
    let listing = run("dpkg-deb", &["-c", deb_s], &[], WAIT).await?;
    let icon = "usr/share/icons/hicolor/128x128/apps/passerelle-desktop-app.png";
    for (path, mode) in [
        (format!("usr/bin/{BIN}"), "-rwxr-xr-x"),
        (
            format!("usr/share/applications/{DESKTOP_FILE}"),
            "-rw-r--r--",
        ),
        (icon.to_owned(), "-rw-r--r--"),
    ] {
        ensure!(
            listing.lines().any(|l| l.starts_with(mode)
                && l.split_whitespace()
                    .last()
                    .map(|p| p.trim_start_matches("./"))
                    == Some(&path)),
            "no {path} ({mode}) in the package:\n{listing}"
        );
    }

    // A throwaway root instead of `dpkg -i`: nothing of the package outlives the test.
    let root = work.path().join("root");
    run(
        "dpkg-deb",
        &["-x", deb_s, root.to_str().context("path")?],
        &[],
        WAIT,
    )
    .await?;
    let binary = root.join("usr/bin").join(BIN);
    check_depends(&depends, &binary).await?;
    ensure!(root.join(icon).is_file(), "no icon");
    let apps = root.join("usr/share/applications");
    let desktop_path = apps.join(DESKTOP_FILE);
    let entry = desktop_entry(&std::fs::read_to_string(&desktop_path)?)?;
    let exec: Vec<&str> = entry
        .get("Exec")
        .context("no Exec")?
        .split_whitespace()
        .collect();
    // Desktops that launch by the spec (GLib, KDE) pass the link only through a field code.
    ensure!(exec == [BIN, "%u"], "Exec={exec:?}");
    ensure!(
        entry
            .get("MimeType")
            .is_some_and(|m| m.split(';').any(|t| t == "x-scheme-handler/passerelle")),
        "{entry:?}"
    );
    ensure!(
        entry.get("Icon").map(String::as_str) == Some(BIN),
        "{entry:?}"
    );
    run(
        "desktop-file-validate",
        &[desktop_path.to_str().context("path")?],
        &[],
        WAIT,
    )
    .await?;

    // The broker, an agent in front of an echo service, a session, and the link to it.
    let broker = TestBroker::start().await?;
    let echo = EchoServer::start().await?;
    let s = Setup::new(&broker, "rdp", echo.port()).await?;
    let display = Xvfb::start(1024, 768, &["-br"]).await?;
    let bus = Bus::start().await?;
    let home = work.path().join("home");
    let config = home.join("config/passerelle");
    std::fs::create_dir_all(&config)?;
    // A client that starts and exits at once; the test broker is plain HTTP, trusted here.
    std::fs::write(
        config.join("desktop.toml"),
        format!(
            "{}[clients]\nrdp = \"true\"\n",
            common::trusting(&s.session.launch_url)
        ),
    )?;
    let path = format!(
        "{}:{}",
        root.join("usr/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let data_dirs = format!("{}:/usr/share", root.join("usr/share").display());
    let session_env = |cmd: &mut Command, data_dirs: &str| {
        cmd.env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_CACHE_HOME", home.join("cache"))
            .env("XDG_RUNTIME_DIR", &home)
            .env("XDG_DATA_DIRS", data_dirs)
            .env("PATH", &path)
            .env("DISPLAY", &display.display)
            .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
            // A link nothing handles fails instead of reaching a browser.
            .env("BROWSER", "false")
            .env("WEBKIT_DISABLE_COMPOSITING_MODE", "1")
            .env("LIBGL_ALWAYS_SOFTWARE", "1")
            .env("RUST_LOG", "info");
        // xdg-utils' generic mode, as on a desktop it does not know.
        for var in [
            "XDG_CURRENT_DESKTOP",
            "DESKTOP_SESSION",
            "KDE_FULL_SESSION",
            "GNOME_DESKTOP_SESSION_ID",
        ] {
            cmd.env_remove(var);
        }
    };
    let query = async |data_dirs: &str| -> Result<String> {
        let mut cmd = Command::new("xdg-mime");
        cmd.args(["query", "default", "x-scheme-handler/passerelle"]);
        session_env(&mut cmd, data_dirs);
        let out = timeout(WAIT, cmd.kill_on_drop(true).output()).await??;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    std::fs::create_dir_all(&home)?;
    ensure!(
        query("/usr/share").await?.is_empty(),
        "this machine already handles passerelle:// without the package"
    );
    // What dpkg's desktop-file-utils trigger does on installation.
    run(
        "update-desktop-database",
        &[apps.to_str().context("path")?],
        &[],
        WAIT,
    )
    .await?;
    let handler = query(&data_dirs).await?;
    ensure!(
        handler == DESKTOP_FILE,
        "the package's handler is {handler:?}"
    );

    // The technician clicks the link: xdg-open runs the packaged app with it.
    let mut cmd = Command::new("xdg-open");
    cmd.arg(&s.session.launch_url).process_group(0);
    session_env(&mut cmd, &data_dirs);
    let mut opener = Proc::spawn(cmd, "xdg-open")?;
    let _group = Group(Pid::from_raw(i32::try_from(
        opener.id().context("xdg-open already gone")?,
    )?));
    wait_window(&display, "Passerelle — 1 tunnel", WINDOW_WAIT, &mut opener).await?;
    let app = pid_of(&binary, &mut opener).await?;

    // Bytes through the tunnel reach the echo service behind the agent.
    let addr = common::tunnel_addr(&opener.output(), &s.session.id)?;
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(b"from the package").await?;
    let mut back = [0u8; 16];
    timeout(WAIT, conn.read_exact(&mut back)).await??;
    ensure!(&back == b"from the package", "{back:?}");
    drop(conn);

    // Stopped: the app exits (xdg-open, which waited for it, returns) and the port closes.
    kill(app, Signal::SIGTERM)?;
    opener.wait_exit(WAIT).await?;
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).await.is_ok() {
        if Instant::now() >= deadline {
            bail!("{addr} still accepts after the app stopped");
        }
        sleep(POLL).await;
    }
    // Removed: the root and the session's home go; the machine never had the handler.
    work.close()?;
    ensure!(
        query("/usr/share").await.unwrap_or_default().is_empty(),
        "a handler was left"
    );
    Ok(())
}
