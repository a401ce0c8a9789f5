//! What `serve` demands of its state directory before it opens anything in
//! it, each refusal naming the path and the fix:
//!
//! - the directory is a directory of mode 0700 (created so if missing); a
//!   looser one is refused with the `chmod` that fixes it: it holds the
//!   master key and every private key's sealed copy;
//! - it is writable: a probe file is created, written and fsynced, so a
//!   read-only file system, missing permissions or a full disk are told as
//!   such instead of as SQLite's "unable to open database file";
//! - the state files (database, its `-wal` and `-shm`, `runtime.json`,
//!   the master key, the first admin credential) are 0600: a looser one is
//!   narrowed, and the database is created 0600 before SQLite opens it
//!   (SQLite gives its `-wal` and `-shm` the database file's mode);
//! - the database passes SQLite's `quick_check`; a damaged one is refused
//!   with the restore procedure (`certfleet admin restore`), before a
//!   request can meet the damage half-way through a transition.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context};
use nix::errno::Errno;
use tracing::info;

use super::{ADMIN_CREDENTIAL_FILE, DB_FILE, MASTER_KEY_FILE, RUNTIME_FILE};
use crate::store::integrity::{self, Depth};

/// The probe file written to check the directory is writable (with the
/// PID appended, so two controllers starting at once do not collide before
/// the lock decides between them).
const PROBE: &str = ".certfleet-write-check";

/// Make sure `dir` is a private, writable state directory with private
/// files and a sound database (see the module docs).
pub fn prepare(dir: &Path) -> anyhow::Result<()> {
    prepare_dir(dir)?;
    tighten_files(dir)?;
    check_database(dir)
}

/// The directory checks of [`prepare`] alone (private, writable), for
/// before the state directory's lock is taken: the lock file is the first
/// thing written there.
pub fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    ensure_private_dir(dir)?;
    probe_writable(dir)
}

fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| not_writable(dir, "create", &e))?;
        // The mode given to mkdir is cut by the umask; 0700 only narrows.
        return Ok(());
    }
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read state directory {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("state directory {} is not a directory", dir.display());
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "state directory {} has mode {mode:03o}: other users can reach the master key and \
             the sealed private keys in it. Make it private with `chmod 700 {}` and start \
             again",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// The error for a state directory the controller cannot write, by cause.
fn not_writable(dir: &Path, op: &str, e: &std::io::Error) -> anyhow::Error {
    let errno = e.raw_os_error().map(Errno::from_raw);
    match errno {
        Some(Errno::EROFS) => anyhow::anyhow!(
            "state directory {} is read-only (it is on a read-only file system; {op}: {e}). \
             Remount it read-write, or under systemd check the unit's ReadWritePaths= / \
             StateDirectory=",
            dir.display()
        ),
        Some(Errno::ENOSPC | Errno::EDQUOT) => anyhow::anyhow!(
            "state directory {} is full (no space left on its file system; {op}: {e}). Free \
             space there and start again: the controller writes every change there before it \
             answers",
            dir.display()
        ),
        Some(Errno::EACCES | Errno::EPERM) => anyhow::anyhow!(
            "state directory {} is not writable by this process (uid {}; {op}: {e}). Run the \
             controller as the directory's owner (the packaged unit runs it as user certfleet)",
            dir.display(),
            nix::unistd::geteuid()
        ),
        _ => anyhow::anyhow!("cannot {op} in state directory {}: {e}", dir.display()),
    }
}

fn probe_writable(dir: &Path) -> anyhow::Result<()> {
    let probe = dir.join(format!("{PROBE}.{}", std::process::id()));
    // A leftover of a crash during an earlier probe.
    let _ = std::fs::remove_file(&probe);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .and_then(|mut f| {
            f.write_all(b"certfleet")?;
            f.sync_all()
        });
    let removed = std::fs::remove_file(&probe);
    written.map_err(|e| not_writable(dir, "write a file", &e))?;
    removed.map_err(|e| not_writable(dir, "remove a file", &e))
}

/// The state files, each of which must be 0600.
const PRIVATE_FILES: [&str; 6] = [
    DB_FILE,
    "certfleet.db-wal",
    "certfleet.db-shm",
    RUNTIME_FILE,
    MASTER_KEY_FILE,
    ADMIN_CREDENTIAL_FILE,
];

fn tighten_files(dir: &Path) -> anyhow::Result<()> {
    for name in PRIVATE_FILES {
        let path = dir.join(name);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        if !meta.is_file() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode != 0o600 && mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot chmod 600 {}", path.display()))?;
            info!(path = %path.display(), was = %format!("{mode:03o}"), "state file made private (0600)");
        }
    }
    let db = dir.join(DB_FILE);
    if !db.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&db)
            .map_err(|e| not_writable(dir, "create the database", &e))?;
    }
    Ok(())
}

fn check_database(dir: &Path) -> anyhow::Result<()> {
    let db = dir.join(DB_FILE);
    if std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) == 0 {
        // Created just now (or by the step above): nothing to check yet.
        return Ok(());
    }
    let problems = integrity::check(&db, Depth::Quick)?;
    if problems.is_empty() {
        return Ok(());
    }
    bail!("{}", damaged(&db, dir, "quick_check", &problems))
}

/// The refusal of a damaged database, naming the restore procedure.
pub fn damaged(db: &Path, dir: &Path, check: &str, problems: &[String]) -> String {
    let shown: Vec<&str> = problems.iter().take(3).map(String::as_str).collect();
    format!(
        "database {} is damaged (SQLite's {check} found {} problem(s): {}). The controller does \
         not start on a damaged database. Restore the latest backup: with the controller \
         stopped, run `certfleet admin restore BACKUP --state-dir {}`, then start it again \
         (docs/operations.md, \"Backup and restore\"); `certfleet admin check --state-dir {}` \
         runs the full check",
        db.display(),
        problems.len(),
        shown.join("; "),
        dir.display(),
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loose_directory_is_refused_naming_the_chmod() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = prepare(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&format!("chmod 700 {}", dir.display())),
            "{err}"
        );
        assert!(!dir.join(DB_FILE).exists(), "nothing created in it");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        prepare(&dir).unwrap();
    }

    #[test]
    fn missing_directory_and_database_are_created_private_and_loose_files_narrowed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/state");
        prepare(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(DB_FILE)), 0o600);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "only the database"
        );
        std::fs::write(dir.join(RUNTIME_FILE), b"{}").unwrap();
        std::fs::set_permissions(
            dir.join(RUNTIME_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        prepare(&dir).unwrap();
        assert_eq!(mode(&dir.join(RUNTIME_FILE)), 0o600);
    }

    #[test]
    fn read_only_and_full_are_told_as_such() {
        let dir = Path::new("/srv/state");
        let ro = not_writable(dir, "write a file", &std::io::Error::from_raw_os_error(30));
        assert!(
            ro.to_string()
                .starts_with("state directory /srv/state is read-only"),
            "{ro}"
        );
        let full = not_writable(dir, "write a file", &std::io::Error::from_raw_os_error(28));
        assert!(
            full.to_string()
                .starts_with("state directory /srv/state is full"),
            "{full}"
        );
    }
}
