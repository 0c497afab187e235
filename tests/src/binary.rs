//! The `passerelle` binary, for tests that run it as an operator does.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context as _, Result, bail, ensure};

/// The `passerelle` binary of this build profile: `target/<profile>/passerelle`, next to the
/// `deps/` directory this test runs from. It belongs to another package, so `cargo test` does
/// not build it: this runs `cargo build --workspace --bin passerelle` once per test process (a
/// no-op when it is fresh, e.g. after `scripts/test.sh` has built it).
/// `PASSERELLE_BIN` overrides all of this.
pub fn passerelle_bin() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("PASSERELLE_BIN") {
        return Ok(bin.into());
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test exe has no profile dir")?;
    let target_dir = profile_dir.parent().context("profile dir has no parent")?;
    let mut cargo = std::process::Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
    // `--workspace` resolves features as `cargo test --workspace` does, so this build reuses
    // the dependencies the tests were built with.
    cargo.args([
        "build",
        "--quiet",
        "--workspace",
        "--bin",
        "passerelle",
        "--target-dir",
    ]);
    cargo
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cargo.arg("--release");
        }
        Some(other) => {
            cargo.args(["--profile", other]);
        }
        None => bail!("odd profile dir {}", profile_dir.display()),
    }
    let out = cargo
        .output()
        .context("running cargo build for the passerelle binary")?;
    ensure!(
        out.status.success(),
        "cargo build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = profile_dir.join("passerelle");
    ensure!(bin.exists(), "{} missing after cargo build", bin.display());
    Ok(bin)
}
