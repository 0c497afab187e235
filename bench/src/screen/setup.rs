//! The three stacks in front of the workstation's x11vnc: starting them (a stack that fails to
//! start is skipped with the reason in the report), a new session's page URL on each, the server
//! processes whose CPU is each stack's cost per session, and stopping them.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;

use super::{ScreenPlan, Stack, display, guac, progress};
use crate::stacks::openssh::Baseline;
use crate::stacks::passerelle::{BrokerCmd, PasserelleStack};

/// Running stacks and the processes whose CPU is measured.
pub struct Stacks {
    pub passerelle: Option<PasserelleStack>,
    pub baseline: Option<Baseline>,
    pub guac: Option<guac::Guacamole>,
    pub guacd_version: Option<String>,
}

impl Stacks {
    /// Starts (a), (b) and (c) in front of `vnc`; what fails is noted in `problems` (and printed).
    pub async fn start(
        plan: &ScreenPlan,
        broker: &BrokerCmd,
        dir: &Path,
        vnc: SocketAddr,
        problems: &mut Vec<String>,
    ) -> Self {
        let mut problem = |p: String| {
            progress::error(&p);
            problems.push(p);
        };
        progress::step("starting (a): the broker and a stock OpenSSH agent");
        let passerelle = if broker.bin.exists() {
            PasserelleStack::start(broker, dir, vnc, plan.cipher, &plan.agent_options, 0)
                .await
                .map_err(|e| problem(format!("stack (a) did not start: {e:#}")))
                .ok()
        } else {
            problem(format!(
                "{} not found: stack (a) skipped",
                broker.bin.display()
            ));
            None
        };
        progress::step("starting (b): sshd with the agent's `ssh -R`, websockify");
        let baseline = Baseline::start(dir, vnc, plan.cipher, &plan.agent_options, 0)
            .await
            .map_err(|e| problem(format!("stack (b) did not start: {e:#}")))
            .ok();
        let mut guacd_version = None;
        let guac = match (&plan.guacd, &baseline) {
            (Some(bin), Some(b)) => {
                progress::step("starting (c): guacd and guacamole-lite");
                let size = (display::WIDTH, display::HEIGHT);
                match guac::Guacamole::start(bin, &plan.screen_dir, dir, b.forwarded, size).await {
                    Ok(g) => {
                        guacd_version = Some(g.version.clone());
                        Some(g)
                    }
                    Err(e) => {
                        problem(format!("stack (c) did not start: {e:#}"));
                        None
                    }
                }
            }
            (None, _) => {
                problem(
                    "no guacd (build it with bench/guacd/build.sh, pass --guacd): stack (c) skipped"
                        .to_owned(),
                );
                None
            }
            (Some(_), None) => None,
        };
        Self {
            passerelle,
            baseline,
            guac,
            guacd_version,
        }
    }

    pub fn present(&self) -> Vec<Stack> {
        let mut out = Vec::new();
        if self.passerelle.is_some() {
            out.push(Stack::Passerelle);
        }
        if self.baseline.is_some() {
            out.push(Stack::Websockify);
        }
        if self.guac.is_some() {
            out.push(Stack::Guacamole);
        }
        out
    }

    /// The page URL of a new session on `stack`.
    pub async fn url(&self, stack: Stack) -> anyhow::Result<String> {
        match stack {
            Stack::Passerelle => {
                let p = self.passerelle.as_ref().context("no stack (a)")?;
                Ok(p.api
                    .create_session(&p.agent_id)
                    .await
                    .context("creating a session on the broker")?
                    .viewer_url)
            }
            Stack::Websockify => {
                let b = self.baseline.as_ref().context("no stack (b)")?;
                Ok(format!(
                    "http://screen.bench/novnc.html#ws={}",
                    guac::url_escape(&b.ws_url)
                ))
            }
            Stack::Guacamole => Ok(self.guac.as_ref().context("no stack (c)")?.page_url()),
        }
    }

    /// The server processes of `stack`, by name, each a process tree.
    pub fn servers(&self, stack: Stack) -> Vec<(&'static str, u32)> {
        let sshd = self.baseline.as_ref().map(|b| ("sshd", b.sshd_pid()));
        match stack {
            Stack::Passerelle => self
                .passerelle
                .iter()
                .map(|p| ("broker", p.broker.pid()))
                .collect(),
            Stack::Websockify => sshd
                .into_iter()
                .chain(
                    self.baseline
                        .as_ref()
                        .map(|b| ("websockify", b.websockify_pid())),
                )
                .collect(),
            Stack::Guacamole => sshd
                .into_iter()
                .chain(
                    self.guac
                        .iter()
                        .flat_map(|g| [("guacd", g.guacd_pid()), ("guacamole-lite", g.lite_pid())]),
                )
                .collect(),
        }
    }

    /// The broker's warnings and errors, if any.
    pub fn broker_log(&self) -> Option<String> {
        self.passerelle
            .as_ref()
            .and_then(PasserelleStack::log_summary)
    }

    pub async fn stop(self) {
        if let Some(g) = self.guac {
            g.stop().await;
        }
        if let Some(p) = self.passerelle {
            p.stop().await;
        }
        if let Some(b) = self.baseline {
            b.stop().await;
        }
    }
}
