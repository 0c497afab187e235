//! Agents as a fleet runs them, for tests where nodes come and go: [`LoopingAgent`], a plain
//! `ssh` started again a second after each exit, forever (the README's service definition and
//! the agent kits do the same), and [`wait_agent`], which polls an agent's presence through any
//! node or load balancer with a caller's deadline.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context as _, Result, bail};
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::time::{Duration, Instant, sleep};

use crate::{Agent, AgentInfo, Forward, POLL, TestBroker};
/// Polls `GET /api/v1/agents/{id}` on `api` until `done` holds, within `within`.
pub async fn wait_agent(
    api: &TestBroker,
    id: &str,
    what: &str,
    within: Duration,
    done: impl Fn(&AgentInfo) -> bool,
) -> Result<AgentInfo> {
    let deadline = Instant::now() + within;
    loop {
        // A node killed a moment ago may still be in the load balancer's rotation: an error
        // is retried until the deadline.
        let got = api.agent_as(api.admin_key(), id).await;
        match got {
            Ok(info) if done(&info) => return Ok(info),
            _ if Instant::now() >= deadline => {
                bail!("agent {id} never {what} within {within:?}; last: {got:#?}")
            }
            _ => sleep(POLL).await,
        }
    }
}

/// An agent as the README's service definition runs it: `ssh -N -R ...` in a loop that starts
/// it again a second after each exit. The loop and its ssh are killed when this drops.
pub struct LoopingAgent {
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl LoopingAgent {
    /// Starts the loop with `agent`'s key, known hosts and address, announcing `forwards`.
    pub fn start(agent: &Agent, forwards: &[Forward]) -> Result<Self> {
        let mut args = vec!["-N".to_owned()];
        for f in forwards {
            args.push("-R".into());
            args.push(f.arg());
        }
        let ssh = agent.ssh_command(&agent.id, &args);
        let ssh = ssh.as_std();
        let dir = tempfile::Builder::new()
            .prefix("passerelle-agent-loop-")
            .tempdir()?;
        let log = dir.path().join("ssh.log");
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new("sh");
        // `"$@"` is ssh and its arguments, unquoted by nobody.
        cmd.args([
            "-c",
            "while :; do \"$@\"; echo \"ssh exited: $?\" >&2; sleep 1; done",
        ])
        .arg("passerelle-agent")
        .arg(ssh.get_program())
        .args(ssh.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .process_group(0)
        .kill_on_drop(true);
        let child = cmd.spawn().context("starting the agent's loop")?;
        Ok(Self {
            child,
            log,
            _dir: dir,
        })
    }

    /// What the loop's ssh runs have written to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LoopingAgent {
    fn drop(&mut self) {
        // The loop leads its own process group: one signal ends it and the ssh it runs.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}
