//! What the screen benchmark is doing, printed as it happens (stdout) with the time since it
//! started, and every error the moment it occurs (stderr), so that a stalled or failing run shows
//! where it is without waiting for the report.

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

fn stamp() -> String {
    let start = START.get_or_init(Instant::now);
    format!("screen [{:>6.1} s]", start.elapsed().as_secs_f64())
}

/// Starts the clock (the first call of any function here also does).
pub fn begin() {
    START.get_or_init(Instant::now);
}

pub fn step(what: &str) {
    println!("{} {what}", stamp());
}

pub fn error(what: &str) {
    eprintln!("{} ERROR {what}", stamp());
}
