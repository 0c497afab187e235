//! Every process a benchmark run starts ends with it — on success, on an error, on Ctrl-C
//! and on SIGTERM. The harness makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`), so that
//! processes that leave their parent's process group and outlive it (sshd's connection children
//! call `setsid`, Playwright starts Chromium as a group leader of its own) are re-parented to it
//! rather than to init, and [`sweep`] then finds them all below this process.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

use crate::host::descendants_of;

/// Makes this process the reaper of its orphaned descendants.
pub fn become_subreaper() -> anyhow::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| anyhow::anyhow!("prctl(PR_SET_CHILD_SUBREAPER): {e}"))
}

/// Resolves on the first SIGINT or SIGTERM, with its name.
pub async fn interrupted() -> &'static str {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without handlers the default action (exit) applies; nothing to wait for here.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Ends every process below this one: SIGTERM (x11vnc then removes its shared-memory
/// segments), up to `grace` for them to go, then SIGKILL. The tree is read once, before any
/// signal, so that a child re-parented meanwhile is still in the list. Returns the processes
/// that were still running when called, as `name (pid)`.
pub async fn sweep(grace: Duration) -> Vec<String> {
    sweep_below(std::process::id(), grace).await
}

/// [`sweep`] of `root`'s descendants (not `root` itself).
pub async fn sweep_below(root: u32, grace: Duration) -> Vec<String> {
    let pids: Vec<Pid> = descendants_of(root)
        .into_iter()
        .filter(|&p| p != root && !is_zombie(p))
        .filter_map(|p| i32::try_from(p).ok().map(Pid::from_raw))
        .collect();
    // A process gone since the scan has no name left: it is not listed.
    let names = pids
        .iter()
        .filter_map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).ok()?;
            Some(format!("{} ({p})", comm.trim()))
        })
        .collect();
    for &p in &pids {
        let _ = kill(p, Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for &p in &pids {
        if alive(p) {
            let _ = kill(p, Signal::SIGKILL);
        }
    }
    names
}

/// SIGKILL to `root`'s descendants, now (for `Drop`: no waiting).
pub fn kill_below(root: u32) {
    for p in descendants_of(root) {
        if p != root
            && let Ok(p) = i32::try_from(p)
        {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

fn alive(p: Pid) -> bool {
    u32::try_from(p.as_raw())
        .is_ok_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists() && !is_zombie(p))
}

/// A process that has exited and waits for its parent (this harness, as subreaper) to reap it.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sweep_ends_a_grandchild_that_ignores_its_group() {
        // sh starts a sleep in a new session (as sshd's children do) and waits.
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "setsid sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line)
            .await
            .unwrap();
        let sleeper: u32 = line.trim().parse().unwrap();
        assert!(descendants_of(pid).contains(&sleeper));
        let ended = sweep_below(pid, Duration::from_secs(2)).await;
        let tag = format!("({sleeper})");
        assert!(ended.iter().any(|n| n.ends_with(&tag)), "{ended:?}");
        assert!(!alive(Pid::from_raw(i32::try_from(sleeper).unwrap())));
    }
}
