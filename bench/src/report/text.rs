//! The fixed prose of BENCHMARKS.md: how to run the harness, and how the figures are made.

/// The "How to run" section.
pub const HOW_TO_RUN: &str = "## How to run\n\n\
```sh\n\
scripts/install-bench-deps.sh                       # sshd, ssh, websockify (apt)\n\
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}\n\
cargo build --release -p passerelle -p passerelle-bench\n\
$CARGO_TARGET_DIR/release/passerelle-bench --wait-for-load 1.5 --out BENCHMARKS.md  # full, ~15 min\n\
$CARGO_TARGET_DIR/release/passerelle-bench --quick --out /tmp/quick.md             # smoke run, ~3 min\n\
```\n\n\
Run it as root (sshd needs it) on a machine where nothing else runs: every figure is CPU-bound \
on loopback. `--wait-for-load 1.5` waits (up to 20 minutes) for the 1-minute load average to drop \
to 1.5 before starting; the \"Other work on the machine\" table then shows how much CPU other \
processes took during each phase. `--help` lists the knobs (runs, sizes, concurrency levels, `--sessions-per-agent`, \
idle-agent scales, cipher, `--passerelle-bin` to measure another broker build, `--keep-tmp` to \
keep every process's log). 10,000 idle agents need `ulimit -Hn` of at least 14,100.\n\n";

/// How the figures are made.
pub const NOTES: &str = "## Notes\n\n\
- MB/s = 10^6 bytes per second of payload at the client. Each figure is the median over the runs; \
round-trip percentiles are per run, then the median; set-up percentiles are over all samples.\n\
- Set-up of (a) is the API call `POST /api/v1/sessions` -> first byte of the service at the \
WebSocket client. Stack (b) has no API: its real set-up is the console's 30 s sleep while the \
agent starts `ssh -R`; what compares is WebSocket connect -> first byte, shown for both.\n\
- Concurrent sessions: all sessions are opened, then all download at once; per-session MB/s is \
counted during a fixed window after a warm-up of a quarter of it. Jain's index is 1 when all \
sessions get the same share. \"over N agents\": sessions spread round-robin over N OpenSSH agents \
(in practice each session is a different workstation); each stack gets its own pool of agents \
(for (b), one websockify with a token file in front of every agent's forwarded port; the ceiling \
connects to those ports). \"on ONE agent\": every session multiplexed on a single agent's SSH \
connection (for (a) a dedicated agent that carried nothing before).\n\
- Idle agents: russh clients, each one SSH connection with its own ed25519 key and one \
`tcpip_forward(\"vnc\", 0)`. Per-agent memory = (broker VmRSS with N agents - VmRSS before they \
connected) / N. Restart = SIGKILL, then `serve` again on the same data dir and SSH port; agents \
retry with a backoff (100 ms doubling to 1 s, plus up to 250 ms of per-agent jitter).\n\n";
