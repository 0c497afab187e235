//! `perf record` on a stack's server processes for one measuring window, and `perf report`'s
//! flat profile (by process, library and symbol) next to it: where a stack's CPU goes.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

use crate::host::descendants_of;

/// Starts `perf record` (999 Hz, no call graphs: release builds have no frame pointers) on every
/// process of the `servers` trees, for `window`; `out` is a directory.
pub fn start(
    out: &Path,
    servers: &[(&'static str, u32)],
    window: Duration,
) -> anyhow::Result<Child> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let pids: Vec<String> = servers
        .iter()
        .flat_map(|&(_, pid)| descendants_of(pid))
        .map(|p| p.to_string())
        .collect();
    if pids.is_empty() {
        bail!("no server process to profile");
    }
    Command::new("perf")
        .args(["record", "-q", "-F", "999", "-p", &pids.join(","), "-o"])
        .arg(out.join("perf.data"))
        .args(["--", "sleep"])
        .arg(format!("{:.1}", window.as_secs_f64()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting perf record (package linux-perf)")
}

/// Waits for `perf record` and writes `perf report`'s flat profile to `out/perf.txt`.
pub async fn finish(mut record: Child, out: &Path) -> anyhow::Result<()> {
    let status = tokio::time::timeout(Duration::from_secs(120), record.wait())
        .await
        .context("perf record did not end")??;
    if !status.success() {
        bail!("perf record failed: {status}");
    }
    let report = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "comm,dso,sym",
            "-i",
        ])
        .arg(out.join("perf.data"))
        .output()
        .await
        .context("running perf report")?;
    std::fs::write(out.join("perf.txt"), &report.stdout)?;
    Ok(())
}
