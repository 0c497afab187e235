//! The data dir's permissions, checked at start: what the broker keeps there (the store with its
//! WAL and SHM files, the keys, the certificate, recordings and screen streams) belongs to the
//! broker's user alone, files 0600 and directories 0700 ([`crate::secrets::PRIVATE_FILE_MODE`],
//! [`crate::secrets::PRIVATE_DIR_MODE`]), as OpenSSH's `StrictModes` wants of a user's keys.
//! New files are created with those modes ([`crate::secrets::create_private_file`]); this
//! narrows what an older version, a restored backup or a hand-made copy left wider, and says so.
//!
//! Only what the broker owns is touched, by name: the data dir, the files listed in
//! [`DATA_FILES`], and the recordings tree (`<tenant id>/<session>.psrec|.psscreen|…tmp`). A data
//! dir pointed at a shared place (a home directory, `/tmp`) therefore never has its neighbours'
//! modes changed; an outside recordings dir keeps its own mode (only its tenant directories and
//! recordings are narrowed). Only group, other and set-id bits are taken away, nothing is
//! widened, symbolic links are not followed, and what cannot be changed is logged, not fatal.

use std::path::{Path, PathBuf};

/// The files the broker keeps in its data dir.
pub const DATA_FILES: &[&str] = &[
    "passerelle.db",
    "passerelle.db-wal",
    "passerelle.db-shm",
    "passerelle.db-journal",
    "secret.key",
    crate::recording::KEY_FILE,
    crate::keys::HOST_KEY_FILE,
    "ssh_host_ed25519_key.pub",
    "tls-cert.pem",
    "tls-key.pem",
    crate::broker::ADMIN_KEY_FILE,
];

/// Creates the data dir (and missing parents) with mode 0700; existing ones are left alone,
/// for [`check_and_fix`] to narrow.
pub fn create_data_dir(dir: &Path) -> std::io::Result<()> {
    crate::secrets::create_private_dir_all(dir)
}

/// What the check changed or could not change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Paths whose mode was narrowed, with their mode before.
    pub fixed: Vec<(PathBuf, u32)>,
    /// Paths that were too open and could not be changed, with the error.
    pub failed: Vec<(PathBuf, String)>,
}

/// Narrows the data dir, its files and the recordings under `recordings_dir` to 0600 / 0700,
/// and logs what it changed, once. Missing paths are skipped.
pub fn check_and_fix(data_dir: &Path, recordings_dir: &Path) -> Report {
    let mut report = Report::default();
    narrow(data_dir, &mut report);
    for name in DATA_FILES {
        narrow(&data_dir.join(name), &mut report);
    }
    if recordings_dir.starts_with(data_dir) {
        narrow(recordings_dir, &mut report);
    }
    for tenant in entries(recordings_dir) {
        let is_tenant = tenant
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_tenant || !narrow(&tenant, &mut report) {
            continue;
        }
        for file in entries(&tenant) {
            let ours = file.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.ends_with(".psrec") || n.ends_with(".psscreen") || n.ends_with(".tmp")
            });
            if ours {
                narrow(&file, &mut report);
            }
        }
    }
    if !report.fixed.is_empty() {
        let shown: Vec<String> = report
            .fixed
            .iter()
            .take(5)
            .map(|(p, m)| format!("{} ({m:o})", p.display()))
            .collect();
        tracing::warn!(
            count = report.fixed.len(),
            examples = %shown.join(", "),
            "files in the data dir were open to other users; narrowed to 0600 (directories 0700)"
        );
    }
    for (path, error) in &report.failed {
        tracing::error!(path = %path.display(), %error, "cannot narrow the mode of a file in the data dir");
    }
    report
}

/// The entries of a directory (none if it is missing or unreadable).
fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Narrows one path (not following links). True if it is a directory to descend into.
#[cfg(unix)]
fn narrow(path: &Path, report: &mut Report) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = path.symlink_metadata() else {
        return false;
    };
    if meta.file_type().is_symlink() {
        return false;
    }
    let mode = meta.permissions().mode() & 0o7777;
    // Group and other bits go, and set-id and sticky bits with them; the owner's stay.
    if mode & !0o700 != 0 {
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700)) {
            Ok(()) => report.fixed.push((path.to_path_buf(), mode)),
            Err(e) => report.failed.push((path.to_path_buf(), e.to_string())),
        }
    }
    meta.is_dir()
}

#[cfg(not(unix))]
fn narrow(path: &Path, _report: &mut Report) -> bool {
    path.is_dir()
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn set(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    fn file(p: &Path, m: u32) {
        std::fs::write(p, b"x").unwrap();
        set(p, m);
    }

    #[test]
    fn wide_modes_are_narrowed_and_reported_and_others_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let recordings = data.join("recordings");
        let tenant = recordings.join("1");
        std::fs::create_dir_all(&tenant).unwrap();
        set(&data, 0o755);
        set(&recordings, 0o775);
        set(&tenant, 0o2750);
        file(&data.join("passerelle.db"), 0o644);
        file(&data.join("passerelle.db-wal"), 0o644);
        file(&tenant.join("s.psrec"), 0o666);
        file(&tenant.join("s.psscreen"), 0o640);
        file(&data.join("secret.key"), 0o600);
        // Not the broker's: left as they are.
        file(&data.join("notes.txt"), 0o644);
        file(&tenant.join("README"), 0o644);
        // A link to a file elsewhere is neither followed nor changed.
        let outside = tmp.path().join("outside");
        file(&outside, 0o644);
        std::os::unix::fs::symlink(&outside, data.join("tls-key.pem")).unwrap();

        let report = check_and_fix(&data, &recordings);
        assert_eq!(report.fixed.len(), 7, "{report:?}");
        assert!(report.failed.is_empty(), "{report:?}");
        for dir in [&data, &recordings, &tenant] {
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
        }
        for f in ["passerelle.db", "passerelle.db-wal", "secret.key"] {
            assert_eq!(mode(&data.join(f)), 0o600, "{f}");
        }
        assert_eq!(mode(&tenant.join("s.psrec")), 0o600);
        assert_eq!(mode(&tenant.join("s.psscreen")), 0o600);
        assert_eq!(mode(&data.join("notes.txt")), 0o644);
        assert_eq!(mode(&tenant.join("README")), 0o644);
        assert_eq!(mode(&outside), 0o644);
        // Run again: nothing left to do.
        assert_eq!(check_and_fix(&data, &recordings), Report::default());
        // Missing dirs are skipped.
        let none = tmp.path().join("none");
        assert_eq!(check_and_fix(&none, &none), Report::default());
    }

    #[test]
    fn an_outside_recordings_dir_keeps_its_own_mode_and_nothing_is_widened() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        set(&data, 0o700);
        let shared = tmp.path().join("shared");
        std::fs::create_dir_all(shared.join("7")).unwrap();
        set(&shared, 0o1777);
        file(&shared.join("7").join("a.psrec"), 0o644);
        // Read-only for its owner, readable by others: stays read-only.
        file(&data.join("admin-api-key"), 0o444);
        check_and_fix(&data, &shared);
        assert_eq!(mode(&shared), 0o1777);
        assert_eq!(mode(&shared.join("7")), 0o700);
        assert_eq!(mode(&shared.join("7").join("a.psrec")), 0o600);
        assert_eq!(mode(&data.join("admin-api-key")), 0o400);
    }
}
