//! Faults a test can inject for real: a size-limited disk (a tmpfs) and a network namespace
//! whose link can be cut. Both need root (CI runs as root) and clean up when dropped.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, Result, ensure};

/// A tmpfs of a given size, mounted until dropped.
pub struct TinyDisk(tempfile::TempDir);

impl TinyDisk {
    /// Mounts a tmpfs of `size` (e.g. "96k", "8m").
    pub fn mount(size: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()?;
        ensure!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Ok(Self(dir))
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Writes a file of zeros named `name` until the disk is full; returns its path.
    pub fn fill(&self, name: &str) -> Result<std::path::PathBuf> {
        use std::io::Write as _;
        let path = self.path().join(name);
        let mut file = std::fs::File::create(&path)?;
        let chunk = vec![0u8; 4096];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => return Err(e).context("filling the disk"),
            }
        }
        let _ = file.sync_all();
        Ok(path)
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// A network namespace joined to this one by a veth pair on a private /30: the host side is
/// [`NetNs::host_ip`], the namespace side [`NetNs::ns_ip`]. Deleted when dropped.
pub struct NetNs {
    name: String,
    inner_link: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?} (is iproute2 installed?)"))?;
    ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl NetNs {
    /// Creates the namespace and its link, up.
    pub fn create() -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:x}{n}", pid % 0xffff);
        let name = format!("pz{tag}");
        let host_link = format!("ph{tag}");
        let inner_link = format!("pn{tag}");
        // 10.<pid-derived>.<n>.0/30: unlikely to meet another test process's choice.
        let b = u8::try_from(pid % 200).unwrap_or(0) + 20;
        let c = u8::try_from(n % 250).unwrap_or(0);
        let host_ip = Ipv4Addr::new(10, b, c, 1);
        let ns_ip = Ipv4Addr::new(10, b, c, 2);
        run(&["ip", "netns", "add", &name]).context("creating a network namespace needs root")?;
        let ns = Self {
            name,
            inner_link,
            host_ip,
            ns_ip,
        };
        run(&[
            "ip",
            "link",
            "add",
            &host_link,
            "type",
            "veth",
            "peer",
            "name",
            &ns.inner_link,
        ])?;
        run(&["ip", "link", "set", &ns.inner_link, "netns", &ns.name])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &host_link,
        ])?;
        run(&["ip", "link", "set", &host_link, "up"])?;
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns.inner_link,
        ])?;
        ns.exec(&["ip", "link", "set", &ns.inner_link, "up"])?;
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs a command inside the namespace to completion.
    pub fn exec(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// The prefix that runs a program inside the namespace.
    pub fn prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    }

    /// This side's address on the link.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The namespace's address on the link.
    pub fn ns_ip(&self) -> Ipv4Addr {
        self.ns_ip
    }

    /// Cuts the link: packets are silently lost both ways, as when a network drops (no RST,
    /// no FIN reaches either side).
    pub fn cut(&self) -> Result<()> {
        self.exec(&["ip", "link", "set", &self.inner_link, "down"])
    }

    /// Restores the link.
    pub fn restore(&self) -> Result<()> {
        self.exec(&["ip", "link", "set", &self.inner_link, "up"])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth pair, and with it the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
