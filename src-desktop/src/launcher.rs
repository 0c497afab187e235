//! Native clients: which one to run for a service ([`choose`], a pure function of the OS, the
//! configuration and what is on PATH), and starting it on the tunnel's port ([`launch`]), with
//! a generated `.rdp` file for clients that take one (mstsc).

use std::ffi::OsString;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::Error;
use crate::config::Config;
use crate::template::{self, Vars};

/// The operating systems with different client lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    /// Linux and the BSDs (X11 or Wayland desktops).
    Linux,
    /// macOS.
    MacOs,
    /// Windows.
    Windows,
}

impl Os {
    /// The OS this binary was built for.
    pub fn current() -> Self {
        if cfg!(windows) {
            Self::Windows
        } else if cfg!(target_os = "macos") {
            Self::MacOs
        } else {
            Self::Linux
        }
    }
}

/// A known client: the program looked for on PATH and the command template to run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// The program looked for on PATH.
    pub program: &'static str,
    /// The command template.
    pub template: &'static str,
}

/// `Known` literals (a struct literal, unlike a `const fn` call, is promoted to `'static`).
macro_rules! k {
    ($program:literal, $template:expr $(,)?) => {
        Known {
            program: $program,
            template: $template,
        }
    };
}

/// The clients tried for `service` on `os`, best first.
pub fn known_clients(service: &str, os: Os) -> &'static [Known] {
    match (service, os) {
        ("rdp", Os::Linux) => &[
            // FreeRDP 3, then FreeRDP 2 (both understand /cert:tofu; the port is new each time,
            // so a stored certificate would never match anyway).
            k!(
                "xfreerdp3",
                "xfreerdp3 /v:{host}:{port} /cert:tofu /dynamic-resolution"
            ),
            k!(
                "sdl-freerdp3",
                "sdl-freerdp3 /v:{host}:{port} /cert:tofu /dynamic-resolution"
            ),
            k!(
                "xfreerdp",
                "xfreerdp /v:{host}:{port} /cert:tofu /dynamic-resolution"
            ),
            k!("remmina", "remmina -c rdp://{host}:{port}"),
        ],
        ("rdp", Os::MacOs) => &[
            k!("xfreerdp", "xfreerdp /v:{host}:{port} /cert:tofu"),
            // Microsoft's Remote Desktop / Windows App opens .rdp files.
            k!("open", "open {rdp_file}"),
        ],
        ("rdp", Os::Windows) => &[k!("mstsc", "mstsc {rdp_file}")],
        ("vnc", Os::Linux) => &[
            k!("vncviewer", "vncviewer {host}::{port}"),
            k!("remmina", "remmina -c vnc://{host}:{port}"),
        ],
        ("vnc", Os::MacOs) => &[
            k!("vncviewer", "vncviewer {host}::{port}"),
            // Screen Sharing.
            k!("open", "open vnc://{host}:{port}"),
        ],
        ("vnc", Os::Windows) => &[k!("vncviewer", "vncviewer {host}::{port}")],
        ("ssh", Os::Linux) => &[
            k!(
                "x-terminal-emulator",
                "x-terminal-emulator -e ssh -p {port} {target}"
            ),
            k!("gnome-terminal", "gnome-terminal -- ssh -p {port} {target}"),
            k!("konsole", "konsole -e ssh -p {port} {target}"),
            k!("xterm", "xterm -e ssh -p {port} {target}"),
        ],
        ("ssh", Os::MacOs) => &[k!(
            "osascript",
            r#"osascript -e "tell application \"Terminal\" to do script \"ssh -p {port} {target}\"" -e "tell application \"Terminal\" to activate""#,
        )],
        ("ssh", Os::Windows) => &[k!(
            "cmd",
            r#"cmd /c start "Passerelle SSH" ssh -p {port} {target}"#
        )],
        _ => &[],
    }
}

/// Where a chosen command came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `[clients]` in the configuration file.
    Configured,
    /// Found on PATH.
    Detected(&'static str),
}

/// The command chosen for a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The command template.
    pub template: String,
    /// Where it came from.
    pub source: Source,
}

/// Picks the client for `service`: the configured template if any, else the first known client
/// that `on_path` finds. Fails with what to install or configure.
pub fn choose(
    service: &str,
    os: Os,
    config: &Config,
    on_path: impl Fn(&str) -> bool,
) -> Result<Choice, Error> {
    if let Some(t) = config.clients.get(service) {
        return Ok(Choice {
            template: t.clone(),
            source: Source::Configured,
        });
    }
    let known = known_clients(service, os);
    if let Some(c) = known.iter().find(|c| on_path(c.program)) {
        return Ok(Choice {
            template: c.template.to_owned(),
            source: Source::Detected(c.program),
        });
    }
    let names: Vec<&str> = known.iter().map(|c| c.program).collect();
    let hint = if names.is_empty() {
        format!("no client is known for {service:?}; ")
    } else {
        format!(
            "none of {} is installed; install one, or ",
            names.join(", ")
        )
    };
    Err(Error::NoClient {
        service: service.to_owned(),
        hint: format!(
            "{hint}set a command under [clients] in {} (or use --no-launch and point any \
             client at the printed address)",
            Config::default_path()
                .map_or("the configuration file".into(), |p| p.display().to_string())
        ),
    })
}

/// Whether `program` is an executable file in one of the directories of `path` (a PATH value).
pub fn on_path(program: &str, path: Option<&OsString>) -> bool {
    let Some(path) = path else { return false };
    let exts: &[&str] = if cfg!(windows) {
        &["exe", "com", "bat", "cmd"]
    } else {
        &[""]
    };
    std::env::split_paths(path).any(|dir| {
        exts.iter().any(|ext| {
            let mut file = dir.join(program);
            if !ext.is_empty() {
                file.set_extension(ext);
            }
            is_executable(&file)
        })
    })
}

fn is_executable(file: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        file.is_file()
    }
}

/// The contents of a `.rdp` file for mstsc and friends.
pub fn rdp_file_contents(addr: SocketAddr) -> String {
    format!(
        "full address:s:{addr}\r\nprompt for credentials:i:1\r\nauthentication level:i:2\r\n\
         screen mode id:i:1\r\ndynamic resolution:i:1\r\n"
    )
}

/// A started client, and the `.rdp` file it was given (removed when this drops).
#[derive(Debug)]
pub struct Launched {
    /// The client process.
    pub child: Child,
    /// The command, for messages.
    pub argv: Vec<String>,
    rdp_file: Option<tempfile::TempPath>,
}

impl Launched {
    /// The generated `.rdp` file, if any.
    pub fn rdp_file(&self) -> Option<&Path> {
        self.rdp_file.as_deref()
    }
}

/// Renders `choice` for the tunnel at `addr` and starts it, stdin detached.
pub fn launch(
    choice: &Choice,
    addr: SocketAddr,
    service: &str,
    config: &Config,
) -> Result<Launched, Error> {
    let program = template::split(&choice.template)
        .ok()
        .and_then(|w| w.into_iter().next())
        .unwrap_or_default();
    let fail = |detail: String| Error::Launch {
        program: program.clone(),
        detail,
    };
    let rdp_file = if template::uses_rdp_file(&choice.template) {
        let mut file = tempfile::Builder::new()
            .prefix("passerelle-")
            .suffix(".rdp")
            .tempfile()
            .map_err(|e| fail(format!("cannot write the .rdp file: {e}")))?;
        file.write_all(rdp_file_contents(addr).as_bytes())
            .map_err(|e| fail(format!("cannot write the .rdp file: {e}")))?;
        Some(file.into_temp_path())
    } else {
        None
    };
    let host = addr.ip().to_string();
    let vars = Vars {
        host: &host,
        port: addr.port(),
        user: config.ssh_user.as_deref(),
        rdp_file: rdp_file.as_deref(),
        service,
    };
    let argv = template::render(&choice.template, &vars).map_err(fail)?;
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| fail("empty command".into()))?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    Ok(Launched {
        child,
        argv,
        rdp_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(programs: &'static [&'static str]) -> impl Fn(&str) -> bool {
        move |p| programs.contains(&p)
    }

    #[test]
    fn detection_prefers_the_best_installed_client() {
        let c = Config::default();
        let pick = |service, os, installed| choose(service, os, &c, only(installed)).unwrap();
        let rdp = pick("rdp", Os::Linux, &["remmina", "xfreerdp"]);
        assert_eq!(rdp.source, Source::Detected("xfreerdp"));
        assert_eq!(
            pick("rdp", Os::Linux, &["xfreerdp", "xfreerdp3"]).source,
            Source::Detected("xfreerdp3")
        );
        assert_eq!(
            pick("rdp", Os::Linux, &["sdl-freerdp3"]).template,
            "sdl-freerdp3 /v:{host}:{port} /cert:tofu /dynamic-resolution"
        );
        assert_eq!(
            pick("rdp", Os::Linux, &["remmina"]).template,
            "remmina -c rdp://{host}:{port}"
        );
        assert_eq!(
            pick("rdp", Os::Windows, &["mstsc"]).template,
            "mstsc {rdp_file}"
        );
        assert_eq!(
            pick("vnc", Os::Linux, &["vncviewer", "remmina"]).template,
            "vncviewer {host}::{port}"
        );
        assert_eq!(
            pick("vnc", Os::Linux, &["remmina"]).template,
            "remmina -c vnc://{host}:{port}"
        );
        assert_eq!(
            pick("ssh", Os::Linux, &["xterm", "konsole"]).source,
            Source::Detected("konsole")
        );
        assert!(
            pick("ssh", Os::MacOs, &["osascript"])
                .template
                .contains("Terminal")
        );
    }

    #[test]
    fn every_known_template_is_valid() {
        for service in ["rdp", "vnc", "ssh"] {
            for os in [Os::Linux, Os::MacOs, Os::Windows] {
                let known = known_clients(service, os);
                assert!(!known.is_empty(), "{service} on {os:?}");
                for c in known {
                    template::check(c.template).unwrap();
                    assert_eq!(template::split(c.template).unwrap()[0], c.program);
                }
            }
        }
    }

    #[test]
    fn configured_templates_win_and_render() {
        let mut c = Config::default();
        c.clients
            .insert("rdp".into(), "my-rdp --port {port} {host}".into());
        c.ssh_user = Some("admin".into());
        let choice = choose("rdp", Os::Linux, &c, only(&["xfreerdp"])).unwrap();
        assert_eq!(choice.source, Source::Configured);
        let vars = Vars {
            host: "127.0.0.1",
            port: 5,
            user: None,
            rdp_file: None,
            service: "rdp",
        };
        assert_eq!(
            template::render(&choice.template, &vars).unwrap(),
            ["my-rdp", "--port", "5", "127.0.0.1"]
        );
        let ssh = choose("ssh", Os::Linux, &c, only(&["xterm"])).unwrap();
        let vars = Vars {
            user: c.ssh_user.as_deref(),
            service: "ssh",
            ..vars
        };
        assert_eq!(
            template::render(&ssh.template, &vars).unwrap(),
            ["xterm", "-e", "ssh", "-p", "5", "admin@127.0.0.1"]
        );
    }

    #[test]
    fn nothing_installed_says_what_to_do() {
        let e = choose("vnc", Os::Linux, &Config::default(), only(&[])).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("no vnc client found: none of vncviewer, remmina is installed"),
            "{msg}"
        );
        assert!(
            msg.contains("[clients]") && msg.contains("--no-launch"),
            "{msg}"
        );
        let e = choose("telnet", Os::Linux, &Config::default(), only(&["xterm"])).unwrap_err();
        assert!(
            e.to_string().contains("no client is known for \"telnet\""),
            "{e}"
        );
    }

    #[test]
    fn rdp_files_name_the_tunnel() {
        let text = rdp_file_contents("127.0.0.1:40123".parse().unwrap());
        assert!(
            text.starts_with("full address:s:127.0.0.1:40123\r\n"),
            "{text}"
        );
    }

    #[test]
    fn path_lookup_finds_executables_only() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("myviewer");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::write(dir.path().join("notexec"), "").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).unwrap();
        assert!(on_path("myviewer", Some(&path)));
        assert!(!on_path("notexec", Some(&path)) || cfg!(windows));
        assert!(!on_path("absent", Some(&path)));
        assert!(!on_path("myviewer", None));
    }
}
