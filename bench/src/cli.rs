//! The command line: every knob of a benchmark run, and the [`Plan`] it makes.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::measure::Direction;
use crate::run::Plan;
use crate::screen::{ScreenPlan, Workload};

/// Benchmark Passerelle against sshd + `ssh -R` + websockify on 127.0.0.1.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Args {
    /// Where to write the markdown report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// Small sizes and counts, 1,000 idle agents only: a smoke run of every figure.
    #[arg(long)]
    pub quick: bool,
    /// Runs per figure (the median is reported). Default 5, quick 3.
    #[arg(long)]
    pub runs: Option<usize>,
    /// Bytes per bulk transfer, in MiB. Default 1024 (about 2 s at the speeds seen here: shorter
    /// transfers let one slow spell of the machine decide a median), quick 64.
    #[arg(long)]
    pub bulk_mib: Option<u64>,
    /// Also measure viewer -> workstation throughput.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub upload: bool,
    /// 64-byte round trips per run. Default 1000, quick 200.
    #[arg(long)]
    pub rtt_count: Option<usize>,
    /// Sessions set up (in total over the runs) for the set-up percentiles. Default 100, quick 30.
    #[arg(long)]
    pub setup_count: Option<usize>,
    /// Concurrency levels, comma-separated (0 to skip). Default 10,100; quick 10.
    #[arg(long, value_delimiter = ',')]
    pub sessions: Option<Vec<usize>>,
    /// Concurrent sessions per agent in the spread figures: N sessions use N / this agents, as
    /// sessions of different workstations do. 1 = every session its own agent.
    #[arg(long, default_value_t = 1)]
    pub sessions_per_agent: usize,
    /// Also measure each concurrency level with every session on ONE agent connection.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub one_agent: bool,
    /// Measuring window for concurrent sessions, seconds. Default 3, quick 1.
    #[arg(long)]
    pub window_secs: Option<f64>,
    /// Idle-agent scales, comma-separated (0 or empty to skip). Default 1000,10000; quick 1000.
    #[arg(long, value_delimiter = ',')]
    pub agents: Option<Vec<usize>>,
    /// Source addresses 127.0.0.2..N+1 for the idle agents' connections (at most 253).
    #[arg(long, default_value_t = 8)]
    pub source_ips: u8,
    /// The idle agents' key exchange: ML-KEM hybrid as OpenSSH 9.9+ negotiates with the broker,
    /// or curve25519 as OpenSSH 9.2–9.8 agents (Debian 12, Ubuntu 24.04) do.
    #[arg(long, default_value = "mlkem768x25519-sha256", value_parser = crate::loadgen::KEXES)]
    pub agent_kex: String,
    /// Idle-agent connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    pub parallel_connects: usize,
    /// The broker binary. Default: `passerelle` next to this executable.
    #[arg(long)]
    pub passerelle_bin: Option<PathBuf>,
    /// Cipher for every SSH connection, both stacks.
    #[arg(long, default_value = "aes128-gcm@openssh.com", value_parser = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"])]
    pub cipher: String,
    /// Skip stack (a) (e.g. before the broker builds).
    #[arg(long)]
    pub no_passerelle: bool,
    /// Skip stack (b) and the ceiling.
    #[arg(long)]
    pub no_baseline: bool,
    /// Skip the session figures (throughput, round trips, set-up, concurrency): idle agents only.
    #[arg(long)]
    pub no_streams: bool,
    /// An extra `-o` option for every OpenSSH agent of both stacks (repeatable), e.g.
    /// `--agent-option RekeyLimit=512M` to make agents rekey before the broker does.
    #[arg(long)]
    pub agent_option: Vec<String>,
    /// An environment variable for the broker alone, `NAME=VALUE` (repeatable), e.g.
    /// `--broker-env GLIBC_TUNABLES=glibc.malloc.trim_threshold=268435456`.
    #[arg(long, value_parser = parse_env)]
    pub broker_env: Vec<(String, String)>,
    /// What the broker binary was built from, for the report (e.g. a commit); default: this
    /// checkout's commit.
    #[arg(long)]
    pub broker_rev: Option<String>,
    /// Before starting, wait (polling every 60 s, at most 20 minutes) until the 1-minute load
    /// average is at most this: on a shared machine, other work skews every figure.
    #[arg(long)]
    pub wait_for_load: Option<f64>,
    /// Instead of the benchmarks: a VNC-like stream of this many MiB per session with recording
    /// off and on (`--runs` pairs).
    #[arg(long)]
    pub recording_mib: Option<u64>,
    /// Instead of the benchmarks: a soak of this many minutes (agents connecting and
    /// disconnecting, sessions opening and closing), sampling the broker's RSS and open files.
    #[arg(long)]
    pub soak_minutes: Option<f64>,
    /// Instead of the benchmarks: the operator's screen (issue 17) — one x11vnc + Xvfb 1920x1080
    /// display through (a) the broker's noVNC page, (b) noVNC + websockify and (c) Apache
    /// Guacamole (guacd + guacamole-lite), in one headless Chromium: update latency, canvas
    /// updates per second, bytes to the browser, server and browser CPU (`--runs` runs).
    #[arg(long)]
    pub screen: bool,
    /// Screen benchmark: seconds each stack is measured per workload and run. Default 10, quick 4.
    #[arg(long)]
    pub screen_secs: Option<f64>,
    /// Screen benchmark: the workloads, comma-separated, from square, video, terminal.
    #[arg(long, value_delimiter = ',', default_value = "square,video,terminal", value_parser = ["square", "video", "terminal"])]
    pub screen_workloads: Vec<String>,
    /// Screen benchmark: guacd for stack (c), e.g. PREFIX/sbin/guacd of `bench/guacd/build.sh SRC
    /// PREFIX`. Default: `guacd` on PATH; without one, stack (c) is skipped.
    #[arg(long)]
    pub guacd: Option<PathBuf>,
    /// Screen benchmark: after each workload, profile each stack's server processes for one more
    /// window with `perf record` (not counted in the figures); reports go under this directory.
    #[arg(long)]
    pub screen_perf: Option<PathBuf>,
    /// Screen benchmark: the Node side (driver, pages, guacamole-lite) with `npm ci` done.
    /// Default: bench/screen of the checkout this harness was built from.
    #[arg(long)]
    pub screen_dir: Option<PathBuf>,
    /// Instead of the benchmarks: the cluster (issue 16) — PostgreSQL, `cluster init`, three
    /// nodes and HAProxy; same node against cross node (bulk, round trips, set-up, CPU per node),
    /// then the largest `--agents` scale of idle agents through HAProxy with one node killed.
    #[arg(long)]
    pub cluster: bool,
    /// Instead of the benchmarks: the largest `--agents` scale of idle agents (e.g. 50000) on
    /// `--fleet-nodes` cluster nodes of one PostgreSQL, from as many load-generator processes,
    /// so that no process needs more open files than its limit; then `kill -9` of every node,
    /// their restart, and the time until every agent is back.
    #[arg(long)]
    pub fleet: bool,
    /// Fleet: the nodes (and load-generator processes) the agents are spread over.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=6))]
    pub fleet_nodes: u64,
    /// Fleet: also count PostgreSQL's statements in each phase (`pg_stat_statements`): calls
    /// and execution time per connection, by statement.
    #[arg(long, requires = "fleet")]
    pub pg_statements: bool,
    /// Internal (`--fleet`): run as one load-generator process, ADDR,FIRST,COUNT.
    #[arg(long, hide = true)]
    pub loadgen_child: Option<String>,
    /// Internal (`--fleet`): the broker's host key (OpenSSH public key line).
    #[arg(long, hide = true)]
    pub loadgen_host_key: Option<String>,
    /// Screen benchmark: more x11vnc options, for every stack alike, e.g. "-defer 5 -wait 5"
    /// (x11vnc's defaults are 20 ms each).
    #[arg(long, allow_hyphen_values = true)]
    pub screen_x11vnc: Option<String>,
    /// Keep the temporary directory (configs, keys, logs of every process) and print its path.
    #[arg(long)]
    pub keep_tmp: bool,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

/// `given`, or `name` found on PATH.
fn find_on_path(given: Option<&std::path::Path>, name: &str) -> Option<PathBuf> {
    if let Some(g) = given {
        return Some(g.to_owned());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn cipher_name(s: &str) -> &'static str {
    match s {
        "aes256-gcm@openssh.com" => "aes256-gcm@openssh.com",
        "chacha20-poly1305@openssh.com" => "chacha20-poly1305@openssh.com",
        _ => "aes128-gcm@openssh.com",
    }
}

impl Args {
    /// The screen benchmark's plan (`--screen`).
    pub fn screen_plan(&self) -> ScreenPlan {
        let q = self.quick;
        ScreenPlan {
            runs: self.runs.unwrap_or(if q { 3 } else { 5 }).max(1),
            window: Duration::from_secs_f64(
                self.screen_secs
                    .unwrap_or(if q { 4.0 } else { 10.0 })
                    .clamp(2.0, 600.0),
            ),
            workloads: self
                .screen_workloads
                .iter()
                .filter_map(|w| Workload::parse(w))
                .collect(),
            guacd: find_on_path(self.guacd.as_deref(), "guacd"),
            screen_dir: self
                .screen_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("screen")),
            cipher: cipher_name(&self.cipher),
            agent_options: self.agent_option.clone(),
            perf: self.screen_perf.clone(),
            x11vnc_args: self
                .screen_x11vnc
                .iter()
                .flat_map(|a| a.split_whitespace().map(str::to_owned))
                .collect(),
        }
    }

    /// The cluster benchmark's plan (`--cluster`).
    pub fn cluster_plan(&self) -> crate::cluster::ClusterPlan {
        crate::cluster::ClusterPlan {
            streams: !self.no_streams,
            agents: self.plan().agents.into_iter().max().unwrap_or(0),
            agent_options: self.agent_option.clone(),
        }
    }

    /// A `--loadgen-child` process's settings.
    pub fn child_settings(&self) -> anyhow::Result<crate::loadprocs::ChildSettings> {
        let plan = self.plan();
        Ok(crate::loadprocs::ChildSettings {
            host_key: (self.loadgen_host_key.clone())
                .ok_or_else(|| anyhow::anyhow!("--loadgen-child needs --loadgen-host-key"))?,
            source_ips: plan.source_ips,
            parallel_connects: plan.parallel_connects,
            cipher: plan.cipher,
            kex: plan.agent_kex,
        })
    }

    pub fn plan(&self) -> Plan {
        let q = self.quick;
        let mut directions = vec![Direction::Down];
        if self.upload {
            directions.push(Direction::Up);
        }
        Plan {
            runs: self.runs.unwrap_or(if q { 3 } else { 5 }).max(1),
            bulk_bytes: self.bulk_mib.unwrap_or(if q { 64 } else { 1024 }).max(1) << 20,
            directions,
            rtt_count: self.rtt_count.unwrap_or(if q { 200 } else { 1000 }).max(1),
            setup_count: self.setup_count.unwrap_or(if q { 30 } else { 100 }).max(1),
            sessions: self
                .sessions
                .clone()
                .unwrap_or(if q { vec![10] } else { vec![10, 100] })
                .into_iter()
                .filter(|&n| n > 0)
                .collect(),
            window: Duration::from_secs_f64(
                self.window_secs
                    .unwrap_or(if q { 1.0 } else { 3.0 })
                    .clamp(0.2, 60.0),
            ),
            agents: self
                .agents
                .clone()
                .unwrap_or(if q { vec![1000] } else { vec![1000, 10_000] })
                .into_iter()
                .filter(|&n| n > 0)
                .collect(),
            source_ips: self.source_ips.max(1),
            parallel_connects: self.parallel_connects,
            cipher: cipher_name(&self.cipher),
            agent_kex: crate::loadgen::KEXES
                .into_iter()
                .find(|k| *k == self.agent_kex)
                .unwrap_or(crate::loadgen::KEXES[0]),
            sessions_per_agent: self.sessions_per_agent.max(1),
            one_agent: self.one_agent,
        }
    }
}
