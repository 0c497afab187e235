//! `passerelle-bench`: measures Passerelle against the OpenSSH + websockify stack it replaces, on
//! loopback, and writes BENCHMARKS.md. See issue 6 and `--help`.
//!
//! ```text
//! scripts/install-bench-deps.sh
//! cargo build --release -p passerelle -p passerelle-bench
//! target/release/passerelle-bench --wait-for-load 1.5 --out BENCHMARKS.md  # full, ~15 min
//! target/release/passerelle-bench --quick --out /tmp/quick.md             # ~3 min
//! ```
#![expect(
    clippy::print_stdout,
    reason = "a command-line tool that prints its report"
)]

mod cli;
mod cluster;
mod host;
mod loadgen;
mod loadprocs;
mod measure;
mod reap;
mod recording;
mod report;
mod run;
mod screen;
mod service;
mod soak;
mod stacks;

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::cli::Args;
use crate::measure::Endpoint;
use crate::report::Report;
use crate::run::Target;
use crate::stacks::openssh::Baseline;
use crate::stacks::passerelle::{BrokerCmd, PasserelleStack};

/// N agents need N sockets here and as many in the broker (which inherits the limit).
fn raise_nofile(want: u64) -> anyhow::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want {
        return Ok(soft);
    }
    if setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard)).is_err() {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

/// Waits until the 1-minute load average is at most `max` (polls every 60 s, 20 minutes at most).
async fn wait_for_load(max: f64) -> String {
    let start = std::time::Instant::now();
    for _ in 0..=20 {
        let load = host::load_average();
        let l1: f64 = load
            .split(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        if l1 <= max {
            return format!(
                "{load} after waiting {:.0} s for a 1-min load ≤ {max}",
                start.elapsed().as_secs_f64()
            );
        }
        println!("1-min load {l1} > {max}: waiting 60 s");
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    format!(
        "{} (still above {max} after 20 minutes of waiting: started anyway)",
        host::load_average()
    )
}

/// How long the processes of an ending run get to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// Runs the benchmark that the command line names. Every process it starts (brokers, sshd,
/// agents, browsers, HAProxy, PostgreSQL...) ends with it: on success, on an error, and on
/// Ctrl-C or SIGTERM, which drop the run mid-way.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(spec) = &args.loadgen_child {
        // As many sockets as the hard limit allows.
        raise_nofile(u64::MAX >> 1)?;
        return loadprocs::child(spec, args.child_settings()?).await;
    }
    reap::become_subreaper()?;
    let outcome = tokio::select! {
        r = bench(args) => r,
        sig = reap::interrupted() => Err(anyhow::anyhow!("interrupted by {sig}")),
    };
    let left = reap::sweep(GRACE).await;
    if !left.is_empty() {
        eprintln!("ended what was left: {}", left.join(", "));
    }
    outcome
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let plan = args.plan();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let max_agents = plan.agents.iter().copied().max().unwrap_or(0) as u64;
    // --cluster: HAProxy inherits it and holds two sockets per agent (over as many processes
    // as this limit requires, see cluster/stack.rs).
    let nofile = raise_nofile(max_agents * if args.cluster { 4 } else { 1 } + 4096)?;
    let bin = match &args.passerelle_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("passerelle"),
    };
    let broker_cmd = BrokerCmd {
        bin: bin.clone(),
        env: args.broker_env.clone(),
    };
    let tmp = tempfile::Builder::new()
        .prefix("passerelle-bench-")
        .tempdir()?;
    let dir = tmp.path().to_owned();
    println!(
        "passerelle-bench: work dir {}, RLIMIT_NOFILE {nofile}",
        dir.display()
    );
    let waited = match args.wait_for_load {
        Some(max) => Some(wait_for_load(max).await),
        None => None,
    };

    let mut report = Report {
        machine: host::machine(),
        ..Default::default()
    };
    if let Some(w) = waited {
        report.machine.push(("load before starting".to_owned(), w));
    }
    let commit = host::git_commit();
    report
        .machine
        .push(("commit (harness)".to_owned(), commit.clone()));
    report.machine.push((
        "broker".to_owned(),
        format!(
            "{}, built from {}",
            bin.display(),
            args.broker_rev.clone().unwrap_or(commit)
        ),
    ));
    if !args.broker_env.is_empty() {
        let env: Vec<String> = args
            .broker_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        report
            .machine
            .push(("broker environment".to_owned(), env.join(" ")));
    }
    report.command = std::env::args().collect::<Vec<_>>().join(" ");
    report.settings = format!(
        "cipher {}, {} runs, bulk {} MiB, {} round trips/run, {} set-ups, sessions {:?} over {:.1} s windows \
         ({} per agent{}), idle agents {:?} ({}) from {} source addresses, {} connects in flight{}",
        plan.cipher,
        plan.runs,
        plan.bulk_bytes >> 20,
        plan.rtt_count,
        plan.setup_count,
        plan.sessions,
        plan.window.as_secs_f64(),
        plan.sessions_per_agent,
        if plan.one_agent {
            ", and all on ONE agent"
        } else {
            ""
        },
        plan.agents,
        plan.agent_kex,
        plan.source_ips,
        plan.parallel_connects,
        if args.agent_option.is_empty() {
            String::new()
        } else {
            format!(
                ", OpenSSH agents with -o {}",
                args.agent_option.join(" -o ")
            )
        }
    );

    let section = if let Some(mib) = args.recording_mib {
        Some((
            "Recording on vs off",
            recording::recording_on_off(&broker_cmd, &dir, plan.cipher, mib, plan.runs).await?,
        ))
    } else if args.screen {
        let screen = args.screen_plan();
        Some((
            "The operator's screen: Passerelle, noVNC + websockify, Guacamole",
            screen::run(&screen, &broker_cmd, &dir).await?,
        ))
    } else if args.cluster {
        Some((
            "The cluster: same node against cross node; idle agents with a node killed",
            cluster::run(&plan, &args.cluster_plan(), &bin, &dir).await?,
        ))
    } else if args.fleet {
        let n = max_agents as usize;
        let nodes = args.fleet_nodes as usize;
        // Each node and each generator process holds its share of the agents' sockets.
        if (n.div_ceil(nodes) as u64) + 1024 > nofile {
            anyhow::bail!(
                "RLIMIT_NOFILE is {nofile}: {n} agents over {nodes} nodes is {} sockets per \
                 process; give more --fleet-nodes",
                n.div_ceil(nodes)
            );
        }
        Some((
            "A fleet: idle agents over cluster nodes, every node killed and restarted",
            cluster::fleet(&plan, &bin, &dir, n, nodes, args.pg_statements).await?,
        ))
    } else if let Some(minutes) = args.soak_minutes {
        let service = service::Service::start().await?;
        Some((
            "Soak",
            soak::soak(&plan, &broker_cmd, &dir, service.addr(), minutes).await?,
        ))
    } else {
        None
    };
    if let Some((title, body)) = section {
        let md = format!(
            "## {title}\n\n`{}` on {}\n\n{body}",
            report.command,
            report
                .machine
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
        std::fs::write(&args.out, &md)
            .with_context(|| format!("writing {}", args.out.display()))?;
        println!("{md}\nwritten to {}", args.out.display());
        return Ok(());
    }

    if nofile < max_agents + 1024 {
        // The agents' sockets live in this process and as many in the broker: fail now rather
        // than after minutes of connecting.
        anyhow::bail!(
            "RLIMIT_NOFILE is {nofile} and could not be raised (raising the hard limit takes \
             root with CAP_SYS_RESOURCE, up to fs.nr_open): at most {} idle agents here, not \
             {max_agents}",
            nofile.saturating_sub(1024)
        );
    }
    let mut watch = host::CpuWatch::start();
    watch.phase("start-up");
    let service = service::Service::start().await?;
    let mut problems = Vec::new();
    let pool = if args.no_streams { 0 } else { plan.pool_size() };
    let baseline = if args.no_baseline || args.no_streams {
        None
    } else {
        println!("starting sshd + {} x ssh -R + websockify", pool + 1);
        Baseline::start(&dir, service.addr(), plan.cipher, &args.agent_option, pool)
            .await
            .map_err(|e| problems.push(format!("stack (b) did not start: {e:#}")))
            .ok()
    };
    let passerelle = if args.no_passerelle || args.no_streams {
        None
    } else if !bin.exists() {
        problems.push(format!(
            "{} not found: build it with `cargo build --release -p passerelle`",
            bin.display()
        ));
        None
    } else {
        println!(
            "starting passerelle ({}) + {} x ssh -R vnc:0:...",
            bin.display(),
            pool + 2
        );
        PasserelleStack::start(
            &broker_cmd,
            &dir,
            service.addr(),
            plan.cipher,
            &args.agent_option,
            pool,
        )
        .await
        .map_err(|e| problems.push(format!("stack (a) did not start: {e:#}")))
        .ok()
    };

    let negotiated = [
        ("(a)", passerelle.as_ref().map(PasserelleStack::cipher)),
        ("(b)", baseline.as_ref().map(Baseline::cipher)),
    ];
    let shown: Vec<String> = negotiated
        .iter()
        .filter_map(|(stack, c)| {
            let c = c.as_ref()?;
            if !c
                .as_deref()
                .is_some_and(|c| c.starts_with(&format!("{} both", plan.cipher)))
            {
                problems.push(format!(
                    "{stack}: the agent negotiated {c:?}, not {}",
                    plan.cipher
                ));
            }
            Some(format!("{stack} {}", c.as_deref().unwrap_or("unknown")))
        })
        .collect();
    if !shown.is_empty() {
        report.machine.push((
            "cipher negotiated (agent's `ssh -v` log)".to_owned(),
            shown.join("; "),
        ));
    }

    {
        let (a, b, c) = (&mut report.a, &mut report.b, &mut report.ceiling);
        let mut targets = Vec::new();
        if let Some(p) = &passerelle {
            let ep = |agent: &String| Endpoint::Passerelle {
                api: p.api.clone(),
                agent: agent.clone(),
            };
            targets.push(Target {
                label: "(a) passerelle",
                ep: ep(&p.agent_id),
                one: ep(&p.one_agent_id),
                pool: p.pool_ids.iter().map(ep).collect(),
                out: a,
            });
        }
        if let Some(base) = &baseline {
            targets.push(Target {
                label: "(b) websockify",
                ep: Endpoint::Ws(base.ws_url.clone()),
                one: Endpoint::Ws(base.ws_url.clone()),
                pool: base
                    .pool_ws_urls
                    .iter()
                    .cloned()
                    .map(Endpoint::Ws)
                    .collect(),
                out: b,
            });
            targets.push(Target {
                label: "ceiling",
                ep: Endpoint::Tcp(base.forwarded),
                one: Endpoint::Tcp(base.forwarded),
                pool: base
                    .pool_forwarded
                    .iter()
                    .copied()
                    .map(Endpoint::Tcp)
                    .collect(),
                out: c,
            });
        }
        println!(
            "measuring {} stacks: bulk, round trips, set-up, concurrent sessions",
            targets.len()
        );
        run::streams(&plan, &mut targets, &mut problems, &mut watch).await;
    }
    if let Some(p) = passerelle {
        problems.extend(p.agent_drops());
        if let Some(l) = p.log_summary() {
            problems.push(format!("(a): the broker logged {l}"));
        }
        p.stop().await;
    }
    if let Some(b) = baseline {
        b.stop().await;
    }

    if !args.no_passerelle && bin.exists() {
        for &n in &plan.agents {
            println!("idle agents: {n}");
            watch.phase(format!("idle agents, {n}"));
            match run::idle_agents(&plan, &broker_cmd, &dir, n).await {
                Ok(f) => {
                    if let Some(l) = &f.broker_log {
                        problems.push(format!("idle agents ({n}): the broker logged {l}"));
                    }
                    let incomplete = f.connected < f.agents || f.reconnect_from_kill_s.is_none();
                    if let Some(e) = f.last_error.as_ref().filter(|_| incomplete) {
                        problems.push(format!(
                            "idle agents ({n}): {} failed connection attempts, the last: {e}",
                            f.failures
                        ));
                    }
                    report.idle.push(f);
                }
                Err(e) => problems.push(format!("idle agents ({n}): {e:#}")),
            }
        }
    }
    drop(service);

    (report.phases, report.whole_run) = watch.finish().await;
    report
        .machine
        .push(("load average at end".to_owned(), host::load_average()));
    report.problems = problems;
    let md = report.to_markdown();
    std::fs::write(&args.out, &md).with_context(|| format!("writing {}", args.out.display()))?;
    println!("{md}");
    println!("written to {}", args.out.display());
    if args.keep_tmp {
        println!("kept {}", tmp.keep().display());
    }
    Ok(())
}
