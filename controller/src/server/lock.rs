//! One controller per state directory.
//!
//! Two controllers on one state directory would each run their own renewal
//! and rollout loops against the same database and issue twice. `serve`
//! therefore takes an exclusive `flock` on `<state-dir>/controller.lock` before
//! it opens anything else, and holds it for the life of the process (the
//! kernel drops it when the process exits, however it exits, so a crash never
//! leaves a stale lock behind). The holder writes its PID into the file so a
//! refused second controller can say which process is in the way; the PID is
//! informational only — the lock, not the file's content, decides.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file inside the state directory.
pub const LOCK_FILE: &str = "controller.lock";

/// The held lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct StateLock {
    _file: Flock<File>,
    path: PathBuf,
}

impl StateLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Take the state directory's lock, creating the directory (mode 0700) and
/// the lock file if needed. Fails at once, naming the holder's PID, when
/// another process holds it.
pub fn acquire(state_dir: &Path) -> anyhow::Result<StateLock> {
    if !state_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    }
    let path = state_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            // The holder may not have written its PID yet; an unreadable or
            // empty file only makes the message less specific.
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                Ok(pid) => format!("PID {pid}"),
                Err(_) => "a process that has not written its PID yet".to_string(),
            };
            bail!(
                "state directory {} is in use by another certfleet controller ({holder}, lock \
                 file {}): only one controller may run on a state directory. Stop that \
                 controller first, or give this one another --state-dir",
                state_dir.display(),
                path.display()
            );
        }
        Err((_, errno)) => {
            return Err(std::io::Error::from(errno))
                .with_context(|| format!("cannot lock {}", path.display()));
        }
    };
    let pid = format!("{}\n", std::process::id());
    (|| -> std::io::Result<()> {
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(pid.as_bytes())?;
        file.sync_all()
    })()
    .with_context(|| format!("cannot write this controller's PID into {}", path.display()))?;
    Ok(StateLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_the_holders_pid_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let held = acquire(&state).unwrap();
        assert_eq!(
            std::fs::read_to_string(held.path()).unwrap().trim(),
            std::process::id().to_string()
        );
        // flock locks belong to the open file description, so a second open
        // in the same process conflicts just as another process would.
        let err = format!("{:#}", acquire(&state).unwrap_err());
        assert!(
            err.contains(&format!("PID {}", std::process::id())),
            "{err}"
        );
        drop(held);
        acquire(&state).unwrap();
    }
}
