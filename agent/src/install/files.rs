//! Atomic installation of one target's set of files (e.g. key + chain).
//!
//! Invariant: whatever point the agent crashes at, once [`recover`] has run at
//! the next start the live files of a target are the whole old set or the
//! whole new set, never a mix.
//!
//! How it holds: each new file is first staged as `.<name>.certfleet-new`
//! beside its live path (created exclusively with `O_NOFOLLOW`, owner and mode
//! set on the open descriptor) and fsynced. Only then is the journal
//! `<journal_dir>/<target>.json` written atomically; it lists every live path
//! and whether an old file existed. Each old file is hard-linked to
//! `.<name>.certfleet-old` before the new one is renamed over it, and every
//! rename is made durable with a directory fsync. While the journal exists the
//! old set can be rebuilt from the backups, so [`recover`] restores it.
//! [`Swap::commit`] deletes the journal first (the commit point) and only then
//! the backups; a backup left by a crash in between is removed by the next
//! install of that file.
//!
//! Paths come from the agent's own config, never from the controller. They
//! are still confined to the allowed directories, and directories below an
//! allowed directory are opened one component at a time with `O_NOFOLLOW`, so
//! a symlink swapped in after [`check_path`] cannot redirect a write.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, openat, renameat, AtFlags, OFlag};
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::{fchmod, fstatat, Mode, SFlag};
use nix::unistd::{fchown, fsync, getpid, linkat, unlinkat, Gid, Group, Uid, UnlinkatFlags, User};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Test hook: the environment variable that makes [`swap_in`] kill its own
/// process. With the value `crash-after-first-swap`, the process sends itself
/// `SIGKILL` right after the first file has been renamed into place (and its
/// directory fsynced), leaving a mixed set on disk for crash-recovery tests.
/// Never set it in production.
pub const FAILPOINT_ENV: &str = "CERTFLEET_AGENT_FAILPOINT";

const FAILPOINT_CRASH_AFTER_FIRST_SWAP: &str = "crash-after-first-swap";
const NEW_SUFFIX: &str = ".certfleet-new";
const OLD_SUFFIX: &str = ".certfleet-old";
const JOURNAL_VERSION: u32 = 1;

/// One file of a target's set: where it goes and what it must look like.
pub struct FileSpec {
    /// Absolute path of the live file.
    pub live: PathBuf,
    /// The new contents; zeroized on drop because this may be a private key.
    pub contents: Zeroizing<Vec<u8>>,
    /// Permission bits (at most `0o777`), e.g. `0o600` for keys, `0o644` for
    /// certificates. Applied with `fchmod`, so the umask does not matter.
    pub mode: u32,
    /// Owner to set, or `None` to keep the agent's.
    pub uid: Option<u32>,
    /// Group to set, or `None` to keep the agent's.
    pub gid: Option<u32>,
}

impl fmt::Debug for FileSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSpec")
            .field("live", &self.live)
            .field("contents", &"[redacted]")
            .field("mode", &format_args!("{:#o}", self.mode))
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .finish()
    }
}

/// Why installing, restoring or recovering a set of files failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The configured path is relative.
    #[error("install path {path:?} is not absolute; use an absolute path in the target config")]
    NotAbsolute {
        /// The offending path.
        path: PathBuf,
    },
    /// The configured path has `.`/`..` components or a trailing `/`.
    #[error(
        "install path {path:?} contains `.` or `..` components or ends in `/`; \
         write it as a plain absolute file path"
    )]
    NotNormalized {
        /// The offending path.
        path: PathBuf,
    },
    /// The configured path cannot be recorded in the journal.
    #[error("install path {path:?} is not valid UTF-8; use a UTF-8 path")]
    NotUtf8 {
        /// The offending path.
        path: PathBuf,
    },
    /// The path is not inside any allowed directory.
    #[error(
        "install path {path:?} is outside the allowed directories {allowed:?}; \
         use a path inside one of them or add its directory to the agent's allowed directories"
    )]
    OutsideAllowed {
        /// The offending path.
        path: PathBuf,
        /// The configured allowed directories.
        allowed: Vec<PathBuf>,
    },
    /// The file or one of its directories is a symbolic link.
    #[error(
        "{path:?} is a symbolic link; certfleet does not write through symlinks, \
         point the config at the real path"
    )]
    Symlink {
        /// The symlink.
        path: PathBuf,
    },
    /// The live path exists but is a directory, socket, device, ...
    #[error("{path:?} exists but is not a regular file; remove it or fix the path in the config")]
    NotRegularFile {
        /// The offending path.
        path: PathBuf,
    },
    /// A directory on the way to the file does not exist or is not a directory.
    #[error(
        "{path:?} does not exist or is not a directory; create the directory before installing"
    )]
    MissingDirectory {
        /// The missing directory.
        path: PathBuf,
    },
    /// The mode has bits beyond the permission bits.
    #[error("mode {mode:#o} for {path:?} is not a permission mode; use at most 0o777")]
    InvalidMode {
        /// The file the mode was given for.
        path: PathBuf,
        /// The rejected mode.
        mode: u32,
    },
    /// The same live path appears twice in one set.
    #[error("{path:?} appears more than once in the file set of one target; list each file once")]
    DuplicatePath {
        /// The repeated path.
        path: PathBuf,
    },
    /// The set is empty.
    #[error("no files given to install for target {target:?}")]
    NoFiles {
        /// The target.
        target: String,
    },
    /// The target name cannot be used as a journal file name.
    #[error("invalid target name {target:?}: use only letters, digits, `_` and `-`")]
    InvalidTarget {
        /// The rejected name.
        target: String,
    },
    /// A previous swap of this target has neither been committed nor restored.
    #[error(
        "an unfinished install of target {target:?} is recorded in {journal:?}; \
         restart the agent so it restores the old files, then install again"
    )]
    Unfinished {
        /// The target.
        target: String,
        /// Its journal.
        journal: PathBuf,
    },
    /// A system call failed. The OS error is part of the message (not only
    /// a `source`): install errors travel to the controller as one string,
    /// and "cannot remove X" alone hides whether the file system is
    /// read-only or the permissions are wrong.
    #[error("cannot {op} {path:?}: {}", os_error_advice(error, path))]
    Io {
        /// What was being done, e.g. "create staged file".
        op: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// A journal is not valid JSON of the expected shape.
    #[error(
        "install journal {path:?} is unreadable; restore the files it lists by hand \
         (backups are named .<name>.certfleet-old), then delete it"
    )]
    CorruptJournal {
        /// The journal file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A journal parses but its contents are not acceptable.
    #[error(
        "install journal {path:?} is invalid ({reason}); restore the files it lists by hand \
         (backups are named .<name>.certfleet-old), then delete it"
    )]
    InvalidJournal {
        /// The journal file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No such user.
    #[error("user {name:?} does not exist; create it or fix the owner in the target config")]
    UnknownUser {
        /// The user name.
        name: String,
    },
    /// No such group.
    #[error("group {name:?} does not exist; create it or fix the group in the target config")]
    UnknownGroup {
        /// The group name.
        name: String,
    },
    /// The user or group database could not be read.
    #[error("cannot look up {kind} {name:?}")]
    OwnerLookup {
        /// "user" or "group".
        kind: &'static str,
        /// The name looked up.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A swap failed half-way and putting the old files back failed too.
    #[error(
        "install of target {target:?} failed and the old files could not all be put back \
         ({rollback}); the journal {journal:?} is kept and the agent restores them at next start"
    )]
    RollbackFailed {
        /// The target.
        target: String,
        /// Its journal.
        journal: PathBuf,
        /// Why putting the old files back failed.
        rollback: Box<FileError>,
        /// Why the install failed.
        #[source]
        source: Box<FileError>,
    },
}

fn sys_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(Errno) -> FileError {
    let path = path.into();
    move |errno| FileError::Io {
        op,
        path,
        error: io::Error::from(errno),
    }
}

fn io_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> FileError {
    let path = path.into();
    move |error| FileError::Io { op, path, error }
}

/// The OS error of a failed file operation on `path`, and what to do about
/// the two an operator meets on a packaged host. A read-only file system is
/// almost always the agent unit's sandbox (`ProtectSystem=strict` leaves
/// only its `ReadWritePaths=` writable), so the drop-in that allows the
/// directory is named.
fn os_error_advice(error: &io::Error, path: &Path) -> String {
    let dir = path.parent().unwrap_or(path);
    match error.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EROFS) => format!(
            "{error}; under systemd the certfleet-agent unit makes every path outside its \
             ReadWritePaths= read-only: allow this directory with `systemctl edit \
             certfleet-agent` adding \"[Service]\" and \"ReadWritePaths={}\", then \
             `systemctl restart certfleet-agent` (docs/packaging.md)",
            dir.display()
        ),
        Some(Errno::EACCES | Errno::EPERM) => format!(
            "{error}; the agent (uid {}) may not write in {}: check that directory's \
             owner and mode, and the unit's CapabilityBoundingSet= if it runs under systemd",
            nix::unistd::geteuid(),
            dir.display()
        ),
        _ => error.to_string(),
    }
}

/// Check a path is allowed: absolute, no `..` or `.` components, inside one of
/// `allowed_dirs` (lexical prefix by components), the path itself if it exists
/// is not a symlink (lstat), and its parent directory exists, is a directory
/// and is not a symlink (lstat). Also rejects a symlink anywhere between the
/// allowed directory and the parent.
pub fn check_path(path: &Path, allowed_dirs: &[PathBuf]) -> Result<(), FileError> {
    check_path_root(path, allowed_dirs).map(drop)
}

/// [`check_path`], returning the allowed directory the path is in (the most
/// specific one, if several match).
fn check_path_root(path: &Path, allowed_dirs: &[PathBuf]) -> Result<PathBuf, FileError> {
    check_lexical(path)?;
    let root = allowed_dirs
        .iter()
        .filter(|dir| dir.is_absolute() && path.starts_with(dir) && path != dir.as_path())
        .max_by_key(|dir| dir.components().count())
        .ok_or_else(|| FileError::OutsideAllowed {
            path: path.to_owned(),
            allowed: allowed_dirs.to_vec(),
        })?;

    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(FileError::Symlink {
                path: path.to_owned(),
            })
        }
        Ok(meta) if !meta.is_file() => {
            return Err(FileError::NotRegularFile {
                path: path.to_owned(),
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", path)(e)),
    }

    let parent = parent_of(path)?;
    // Top-down, so the error names the highest missing or linked directory.
    let mut dirs: Vec<&Path> = parent
        .ancestors()
        .take_while(|dir| *dir == parent || (dir.starts_with(root) && *dir != root.as_path()))
        .collect();
    dirs.reverse();
    for dir in dirs {
        match fs::symlink_metadata(dir) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(FileError::Symlink {
                    path: dir.to_owned(),
                })
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(FileError::MissingDirectory {
                    path: dir.to_owned(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(FileError::MissingDirectory {
                    path: dir.to_owned(),
                })
            }
            Err(e) => return Err(io_err("inspect", dir)(e)),
        }
    }
    Ok(root.clone())
}

/// The checks that need no file system: absolute, UTF-8, no `.`/`..`, names a file.
fn check_lexical(path: &Path) -> Result<(), FileError> {
    if !path.is_absolute() {
        return Err(FileError::NotAbsolute {
            path: path.to_owned(),
        });
    }
    if path.to_str().is_none() {
        return Err(FileError::NotUtf8 {
            path: path.to_owned(),
        });
    }
    // Raw bytes, because `Path::components` silently drops `.` components.
    let bytes = path.as_os_str().as_bytes();
    if bytes.ends_with(b"/")
        || bytes
            .split(|b| *b == b'/')
            .any(|segment| segment == b"." || segment == b"..")
    {
        return Err(FileError::NotNormalized {
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn parent_of(path: &Path) -> Result<&Path, FileError> {
    path.parent().ok_or_else(|| FileError::NotNormalized {
        path: path.to_owned(),
    })
}

fn file_name_of(path: &Path) -> Result<&OsStr, FileError> {
    path.file_name().ok_or_else(|| FileError::NotNormalized {
        path: path.to_owned(),
    })
}

/// `.<name><suffix>`, the staging/backup name beside a live file.
fn sibling_name(name: &OsStr, suffix: &str) -> OsString {
    let mut bytes = Vec::with_capacity(name.len() + suffix.len() + 1);
    bytes.push(b'.');
    bytes.extend_from_slice(name.as_bytes());
    bytes.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(bytes)
}

/// Open `dir` (at or below `root`) without following symlinks below `root`:
/// `root` is opened by path, every further component with `O_NOFOLLOW`.
fn open_dir_below(root: &Path, dir: &Path) -> Result<OwnedFd, FileError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let rest = dir
        .strip_prefix(root)
        .map_err(|_| FileError::OutsideAllowed {
            path: dir.to_owned(),
            allowed: vec![root.to_owned()],
        })?;
    let root_flags = if rest.as_os_str().is_empty() {
        flags | OFlag::O_NOFOLLOW
    } else {
        flags
    };
    let mut fd = open(root, root_flags, Mode::empty()).map_err(|e| dir_open_err(root, e))?;
    let mut current = root.to_owned();
    for component in rest.components() {
        current.push(component);
        fd = openat(
            &fd,
            component.as_os_str(),
            flags | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| dir_open_err(&current, e))?;
    }
    Ok(fd)
}

fn dir_open_err(path: &Path, errno: Errno) -> FileError {
    // With O_DIRECTORY, Linux reports a symlink as ENOTDIR rather than ELOOP.
    let is_symlink = || fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink());
    match errno {
        Errno::ELOOP | Errno::ENOTDIR if is_symlink() => FileError::Symlink {
            path: path.to_owned(),
        },
        Errno::ENOENT | Errno::ENOTDIR => FileError::MissingDirectory {
            path: path.to_owned(),
        },
        _ => sys_err("open directory", path)(errno),
    }
}

/// Unlink `name` in `dir`; a missing entry is fine.
fn remove_if_exists(dir: &OwnedFd, dir_path: &Path, name: &OsStr) -> Result<(), FileError> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(sys_err("remove", dir_path.join(name))(e)),
    }
}

/// Set owner and exact mode on the open staged file, write it and fsync it.
fn fill(fd: OwnedFd, spec: &FileSpec, mode: Mode, path: &Path) -> Result<(), FileError> {
    if spec.uid.is_some() || spec.gid.is_some() {
        fchown(
            &fd,
            spec.uid.map(Uid::from_raw),
            spec.gid.map(Gid::from_raw),
        )
        .map_err(sys_err("set owner of", path))?;
    }
    // The umask only narrowed the mode given to openat; set it exactly.
    fchmod(&fd, mode).map_err(sys_err("set mode of", path))?;
    let mut file = fs::File::from(fd);
    crate::failpoints::check_io("install.write")
        .and_then(|()| file.write_all(&spec.contents))
        .and_then(|()| file.sync_all())
        .map_err(io_err("write", path))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    Swapping,
    Reloaded,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Journal {
    version: u32,
    target: String,
    phase: Phase,
    files: Vec<JournalEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalEntry {
    /// The live path.
    live: PathBuf,
    /// The allowed directory it was checked against; recovery re-opens the
    /// parent from here with `O_NOFOLLOW`.
    root: PathBuf,
    /// Whether an old file existed, i.e. whether `.<name>.certfleet-old` is
    /// (or is about to be) its backup.
    backup: bool,
}

fn validate_target(target: &str) -> Result<(), FileError> {
    if target.is_empty()
        || !target
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(FileError::InvalidTarget {
            target: target.to_owned(),
        });
    }
    Ok(())
}

fn journal_path(journal_dir: &Path, target: &str) -> PathBuf {
    journal_dir.join(format!("{target}.json"))
}

fn sync_dir(path: &Path) -> Result<(), FileError> {
    fs::File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(io_err("fsync directory", path))
}

/// Write the journal atomically: temp file, fsync, rename, fsync directory.
fn write_journal(journal_dir: &Path, journal: &Journal) -> Result<(), FileError> {
    let path = journal_path(journal_dir, &journal.target);
    let tmp = journal_dir.join(format!(".{}.json.tmp", journal.target));
    let bytes = serde_json::to_vec_pretty(journal)
        .map_err(|e| io_err("encode journal", &path)(io::Error::other(e)))?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(io_err("create journal", &tmp))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err("write journal", &tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_err("rename journal into place", &path))?;
    sync_dir(journal_dir)
}

fn remove_journal(journal_dir: &Path, path: &Path) -> Result<(), FileError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove journal", path)(e)),
    }
    sync_dir(journal_dir)
}

/// One file of a swap: its open parent directory and names.
#[derive(Debug)]
struct Entry {
    dir: OwnedFd,
    dir_path: PathBuf,
    live: PathBuf,
    root: PathBuf,
    name: OsString,
    new_name: OsString,
    old_name: OsString,
    backup: bool,
}

impl Entry {
    fn open(live: &Path, root: &Path, backup: bool) -> Result<Self, FileError> {
        let dir_path = parent_of(live)?.to_owned();
        let name = file_name_of(live)?.to_owned();
        let dir = open_dir_below(root, &dir_path)?;
        Ok(Self {
            dir,
            new_name: sibling_name(&name, NEW_SUFFIX),
            old_name: sibling_name(&name, OLD_SUFFIX),
            dir_path,
            live: live.to_owned(),
            root: root.to_owned(),
            name,
            backup,
        })
    }

    fn path_of(&self, name: &OsStr) -> PathBuf {
        self.dir_path.join(name)
    }

    /// Does the live file exist? Errors if it is a symlink or not a regular file.
    fn live_exists(&self) -> Result<bool, FileError> {
        match fstatat(
            &self.dir,
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(stat) => {
                let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
                if kind == SFlag::S_IFREG {
                    Ok(true)
                } else if kind == SFlag::S_IFLNK {
                    Err(FileError::Symlink {
                        path: self.live.clone(),
                    })
                } else {
                    Err(FileError::NotRegularFile {
                        path: self.live.clone(),
                    })
                }
            }
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(sys_err("inspect", &self.live)(e)),
        }
    }

    /// Create, fill and fsync `.<name>.certfleet-new`; on failure remove it.
    fn stage(&self, spec: &FileSpec) -> Result<(), FileError> {
        let new_path = self.path_of(&self.new_name);
        // Leftovers of an earlier crash: a stale backup must go before the
        // journal is written, or recovery would mistake it for this swap's.
        remove_if_exists(&self.dir, &self.dir_path, &self.new_name)?;
        remove_if_exists(&self.dir, &self.dir_path, &self.old_name)?;
        let mode = Mode::from_bits_truncate(spec.mode);
        let fd = openat(
            &self.dir,
            self.new_name.as_os_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            mode,
        )
        .map_err(sys_err("create staged file", &new_path))?;
        let filled = fill(fd, spec, mode, &new_path);
        if filled.is_err() {
            let _ = remove_if_exists(&self.dir, &self.dir_path, &self.new_name);
        }
        filled
    }

    /// Back up the live file (if any) and rename the staged one over it.
    fn swap(&self) -> Result<(), FileError> {
        if self.backup {
            linkat(
                &self.dir,
                self.name.as_os_str(),
                &self.dir,
                self.old_name.as_os_str(),
                AtFlags::empty(),
            )
            .map_err(sys_err("back up", &self.live))?;
        }
        renameat(
            &self.dir,
            self.new_name.as_os_str(),
            &self.dir,
            self.name.as_os_str(),
        )
        .map_err(sys_err("rename new file into place at", &self.live))?;
        fsync(&self.dir).map_err(sys_err("fsync directory", &self.dir_path))
    }

    /// Put the old file back. Idempotent, so recovery can repeat it after a
    /// crash in any step of a swap or of an earlier restore.
    fn restore(&self) -> Result<(), FileError> {
        if self.backup {
            // No backup: already restored, or never swapped; live is old.
            match renameat(
                &self.dir,
                self.old_name.as_os_str(),
                &self.dir,
                self.name.as_os_str(),
            ) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(sys_err("restore backup to", &self.live)(e)),
            }
            // A crash between link and rename leaves backup and live as links
            // to one inode; rename(2) then does nothing, so unlink explicitly.
            remove_if_exists(&self.dir, &self.dir_path, &self.old_name)?;
        } else {
            remove_if_exists(&self.dir, &self.dir_path, &self.name)?;
        }
        remove_if_exists(&self.dir, &self.dir_path, &self.new_name)?;
        fsync(&self.dir).map_err(sys_err("fsync directory", &self.dir_path))
    }

    fn discard_staged(&self) {
        if let Err(e) = remove_if_exists(&self.dir, &self.dir_path, &self.new_name) {
            tracing::warn!(error = %e, "cannot remove staged file");
        }
    }
}

/// A swapped-in set of files whose old versions are still kept.
///
/// Finish it with [`Swap::commit`] or [`Swap::restore`]. Dropping it leaves
/// the journal in place, so [`recover`] restores the old set at next start.
#[derive(Debug)]
#[must_use = "a swap must be committed or restored, or recovery will restore the old files"]
pub struct Swap {
    journal_dir: PathBuf,
    journal_path: PathBuf,
    journal: Journal,
    entries: Vec<Entry>,
}

impl Swap {
    /// The target this swap is for.
    pub fn target(&self) -> &str {
        &self.journal.target
    }

    /// Mark that the server was reloaded with the new files (journal phase
    /// "reloaded"), so recovery knows a reload is needed after restoring.
    pub fn mark_reloaded(&mut self) -> Result<(), FileError> {
        self.journal.phase = Phase::Reloaded;
        write_journal(&self.journal_dir, &self.journal)
    }

    /// Put the old set back: each backup is renamed over its live file (or
    /// the live file is removed if there was no old one), directories are
    /// fsynced, then the journal is removed. If this fails the journal stays
    /// and [`recover`] finishes the job at next start.
    pub fn restore(self) -> Result<(), FileError> {
        for entry in &self.entries {
            entry.restore()?;
        }
        remove_journal(&self.journal_dir, &self.journal_path)
    }

    /// Keep the new set: remove the journal (the commit point), then the
    /// backups. A backup that cannot be removed is only logged: the commit has
    /// happened, and the next install of that file removes it.
    pub fn commit(self) -> Result<(), FileError> {
        crate::failpoints::check_io("install.before_commit").map_err(|error| FileError::Io {
            op: "commit the journal",
            path: self.journal_path.clone(),
            error,
        })?;
        remove_journal(&self.journal_dir, &self.journal_path)?;
        for entry in self.entries.iter().filter(|entry| entry.backup) {
            let removed =
                remove_if_exists(&entry.dir, &entry.dir_path, &entry.old_name).and_then(|()| {
                    fsync(&entry.dir).map_err(sys_err("fsync directory", &entry.dir_path))
                });
            if let Err(e) = removed {
                tracing::warn!(target_name = %self.journal.target, error = %e, "cannot remove backup after commit");
            }
        }
        Ok(())
    }

    /// Undo after a failure in the middle of [`swap_in`] and return `cause`.
    fn rollback(self, cause: FileError) -> FileError {
        let target = self.journal.target.clone();
        let journal = self.journal_path.clone();
        match self.restore() {
            Ok(()) => cause,
            Err(rollback) => FileError::RollbackFailed {
                target,
                journal,
                rollback: Box::new(rollback),
                source: Box::new(cause),
            },
        }
    }
}

/// Stage all files next to their live paths, then swap them in, in the order
/// given (the caller puts the key first).
///
/// Each path is checked with [`check_path`]. Each file is staged as
/// `.<name>.certfleet-new` (`O_CREAT|O_EXCL|O_NOFOLLOW`, owner and mode set on
/// the descriptor, written, fsynced). Then the journal
/// `<journal_dir>/<target>.json` is written atomically, and each old file is
/// hard-linked to `.<name>.certfleet-old` before the new one is renamed over
/// it and the directory fsynced. If a step fails the old set is put back
/// before the error is returned.
///
/// Test hook: see [`FAILPOINT_ENV`].
pub fn swap_in(
    journal_dir: &Path,
    target: &str,
    files: Vec<FileSpec>,
    allowed_dirs: &[PathBuf],
) -> Result<Swap, FileError> {
    swap_in_until(journal_dir, target, files, allowed_dirs, None)
}

/// [`swap_in`], stopping (as if crashed) before swapping file `stop_before`.
fn swap_in_until(
    journal_dir: &Path,
    target: &str,
    files: Vec<FileSpec>,
    allowed_dirs: &[PathBuf],
    stop_before: Option<usize>,
) -> Result<Swap, FileError> {
    validate_target(target)?;
    if files.is_empty() {
        return Err(FileError::NoFiles {
            target: target.to_owned(),
        });
    }
    let mut roots = Vec::with_capacity(files.len());
    for (i, spec) in files.iter().enumerate() {
        if spec.mode & !0o777 != 0 {
            return Err(FileError::InvalidMode {
                path: spec.live.clone(),
                mode: spec.mode,
            });
        }
        if files[..i].iter().any(|earlier| earlier.live == spec.live) {
            return Err(FileError::DuplicatePath {
                path: spec.live.clone(),
            });
        }
        roots.push(check_path_root(&spec.live, allowed_dirs)?);
    }

    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(journal_dir)
        .map_err(io_err("create journal directory", journal_dir))?;
    let journal_path = journal_path(journal_dir, target);
    match fs::symlink_metadata(&journal_path) {
        Ok(_) => {
            return Err(FileError::Unfinished {
                target: target.to_owned(),
                journal: journal_path,
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", &journal_path)(e)),
    }

    let mut entries: Vec<Entry> = Vec::with_capacity(files.len());
    for (spec, root) in files.iter().zip(&roots) {
        let staged = Entry::open(&spec.live, root, false).and_then(|mut entry| {
            entry.backup = entry.live_exists()?;
            entry.stage(spec)?;
            Ok(entry)
        });
        match staged {
            Ok(entry) => entries.push(entry),
            Err(e) => {
                entries.iter().for_each(Entry::discard_staged);
                return Err(e);
            }
        }
    }
    // The contents are on disk; zeroize our copy now.
    drop(files);
    // Test builds: every file staged, no journal yet.
    if let Err(error) = crate::failpoints::check_io("install.staged") {
        entries.iter().for_each(Entry::discard_staged);
        return Err(FileError::Io {
            op: "stage",
            path: entries
                .first()
                .map_or_else(|| journal_path.clone(), |e| e.live.clone()),
            error,
        });
    }

    let journal = Journal {
        version: JOURNAL_VERSION,
        target: target.to_owned(),
        phase: Phase::Swapping,
        files: entries
            .iter()
            .map(|entry| JournalEntry {
                live: entry.live.clone(),
                root: entry.root.clone(),
                backup: entry.backup,
            })
            .collect(),
    };
    if let Err(e) = write_journal(journal_dir, &journal) {
        entries.iter().for_each(Entry::discard_staged);
        return Err(e);
    }

    let swap = Swap {
        journal_dir: journal_dir.to_owned(),
        journal_path,
        journal,
        entries,
    };
    for (i, entry) in swap.entries.iter().enumerate() {
        if stop_before == Some(i) {
            break;
        }
        if let Err(e) = entry.swap() {
            return Err(swap.rollback(e));
        }
        if i == 0
            && std::env::var_os(FAILPOINT_ENV)
                .is_some_and(|value| value == FAILPOINT_CRASH_AFTER_FIRST_SWAP)
        {
            tracing::error!("{FAILPOINT_ENV} set: killing the agent after the first swap");
            // If kill fails, carry on as if the hook were unset.
            let _ = kill(getpid(), Signal::SIGKILL);
        }
    }
    Ok(swap)
}

/// A target whose unfinished install [`recover`] rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The target whose old files were put back.
    pub target: String,
    /// The server had been reloaded with the new files, so it must be
    /// reloaded again to serve the restored old ones.
    pub needs_reload: bool,
}

/// At agent start: for every journal in `journal_dir`, restore the old set as
/// [`Swap::restore`] does (tolerating files already restored and removing
/// staged `.certfleet-new` leftovers), delete the journal, and return what was
/// recovered.
///
/// All journals are attempted; if any fails, the first error is returned (it
/// names the journal) and the rest are logged. Use [`recover_each`] to get
/// every result.
pub fn recover(journal_dir: &Path) -> Result<Vec<Recovered>, FileError> {
    let mut recovered = Vec::new();
    let mut first_error = None;
    for result in recover_each(journal_dir)? {
        match result {
            Ok(done) => recovered.push(done),
            Err(e) if first_error.is_none() => first_error = Some(e),
            Err(e) => tracing::error!(error = %e, "install recovery failed"),
        }
    }
    match first_error {
        None => Ok(recovered),
        Some(e) => {
            for done in &recovered {
                tracing::warn!(
                    target_name = %done.target,
                    needs_reload = done.needs_reload,
                    "restored old files of an unfinished install"
                );
            }
            Err(e)
        }
    }
}

/// Like [`recover`], but returns one result per journal (in file name order),
/// so one bad journal does not hide the others. The outer error is for an
/// unreadable journal directory; a missing one means nothing to recover.
pub fn recover_each(journal_dir: &Path) -> Result<Vec<Result<Recovered, FileError>>, FileError> {
    let listing = match fs::read_dir(journal_dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list journal directory", journal_dir)(e)),
    };
    let mut journals = Vec::new();
    for dirent in listing {
        let dirent = dirent.map_err(io_err("list journal directory", journal_dir))?;
        let name = dirent.file_name();
        let bytes = name.as_bytes();
        if bytes.starts_with(b".") && bytes.ends_with(b".json.tmp") {
            // A journal write that never reached its rename: nothing was swapped.
            let path = dirent.path();
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove stale journal temp file");
            }
        } else if bytes.ends_with(b".json") {
            journals.push(dirent.path());
        }
    }
    journals.sort();
    Ok(journals
        .iter()
        .map(|path| recover_one(journal_dir, path))
        .collect())
}

fn recover_one(journal_dir: &Path, path: &Path) -> Result<Recovered, FileError> {
    let invalid = |reason: String| FileError::InvalidJournal {
        path: path.to_owned(),
        reason,
    };
    let bytes = fs::read(path).map_err(io_err("read journal", path))?;
    let journal: Journal =
        serde_json::from_slice(&bytes).map_err(|source| FileError::CorruptJournal {
            path: path.to_owned(),
            source,
        })?;
    if journal.version != JOURNAL_VERSION {
        return Err(invalid(format!("unknown version {}", journal.version)));
    }
    let stem = path.file_stem().and_then(OsStr::to_str).unwrap_or_default();
    if validate_target(stem).is_err() || journal.target != stem {
        return Err(invalid(format!(
            "target {:?} does not match the file name",
            journal.target
        )));
    }
    let mut entries = Vec::with_capacity(journal.files.len());
    for file in &journal.files {
        if check_lexical(&file.live).is_err()
            || !file.root.is_absolute()
            || !file.live.starts_with(&file.root)
            || file.live == file.root
        {
            return Err(invalid(format!(
                "file {:?} is not a clean absolute path inside {:?}",
                file.live, file.root
            )));
        }
        entries.push(Entry::open(&file.live, &file.root, file.backup)?);
    }
    for entry in &entries {
        entry.restore()?;
    }
    remove_journal(journal_dir, path)?;
    tracing::warn!(target_name = %journal.target, "restored the old files of an unfinished install");
    Ok(Recovered {
        target: journal.target,
        needs_reload: journal.phase == Phase::Reloaded,
    })
}

/// Create the directories from `root` down to `dir` that are missing (mode
/// `mode`, set exactly on the new directory whatever the umask), walking
/// one component at a time with `O_NOFOLLOW` as [`swap_in`] does: a symlink
/// anywhere below `root` is refused, never followed. `root` itself must
/// exist; it is opened by path.
pub fn create_dirs_below(root: &Path, dir: &Path, mode: u32) -> Result<(), FileError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let rest = dir
        .strip_prefix(root)
        .map_err(|_| FileError::OutsideAllowed {
            path: dir.to_owned(),
            allowed: vec![root.to_owned()],
        })?;
    // The root comes from the agent's config and is opened by path, as the
    // allowed directories of a swap are.
    let mut fd =
        open(root, flags & !OFlag::O_NOFOLLOW, Mode::empty()).map_err(|e| dir_open_err(root, e))?;
    let mut current = root.to_owned();
    for component in rest.components() {
        current.push(component);
        let name = component.as_os_str();
        let created = match nix::sys::stat::mkdirat(&fd, name, Mode::from_bits_truncate(mode)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(sys_err("create directory", &current)(e)),
        };
        fd = openat(&fd, name, flags, Mode::empty()).map_err(|e| dir_open_err(&current, e))?;
        if created {
            fchmod(&fd, Mode::from_bits_truncate(mode))
                .map_err(sys_err("set mode of", &current))?;
        }
    }
    Ok(())
}

/// Write one file below `root` in place of any earlier one: staged as
/// `.<name>.certfleet-new` (`O_CREAT|O_EXCL|O_NOFOLLOW`, exact mode,
/// fsynced) in its directory opened component by component with
/// `O_NOFOLLOW`, then renamed over the live name. No journal: for files
/// that are replaced whole and need no rollback (HTTP-01 challenges).
pub fn write_below(root: &Path, spec: &FileSpec) -> Result<(), FileError> {
    check_lexical(&spec.live)?;
    if spec.mode & !0o777 != 0 {
        return Err(FileError::InvalidMode {
            path: spec.live.clone(),
            mode: spec.mode,
        });
    }
    let entry = Entry::open(&spec.live, root, false)?;
    // A symlink, directory or device where the file should be: leave it.
    entry.live_exists()?;
    entry.stage(spec)?;
    entry.swap().inspect_err(|_| entry.discard_staged())
}

/// Remove the file `path` below `root`, its directories opened with
/// `O_NOFOLLOW` as in [`write_below`]. `Ok(false)` when it (or a directory
/// on its way) does not exist; a symlinked directory is an error, a
/// symlink at `path` itself is removed, not followed.
pub fn remove_below(root: &Path, path: &Path) -> Result<bool, FileError> {
    check_lexical(path)?;
    let entry = match Entry::open(path, root, false) {
        Ok(entry) => entry,
        Err(FileError::MissingDirectory { .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    match unlinkat(
        &entry.dir,
        entry.name.as_os_str(),
        UnlinkatFlags::NoRemoveDir,
    ) {
        Ok(()) => {}
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(sys_err("remove", path)(e)),
    }
    fsync(&entry.dir).map_err(sys_err("fsync directory", &entry.dir_path))?;
    Ok(true)
}

/// Look up user and group names to numeric ids for [`FileSpec`].
pub fn resolve_owner(
    owner: Option<&str>,
    group: Option<&str>,
) -> Result<(Option<u32>, Option<u32>), FileError> {
    let uid = owner
        .map(|name| match User::from_name(name) {
            Ok(Some(user)) => Ok(user.uid.as_raw()),
            Ok(None) => Err(FileError::UnknownUser {
                name: name.to_owned(),
            }),
            Err(e) => Err(FileError::OwnerLookup {
                kind: "user",
                name: name.to_owned(),
                source: io::Error::from(e),
            }),
        })
        .transpose()?;
    let gid = group
        .map(|name| match Group::from_name(name) {
            Ok(Some(group)) => Ok(group.gid.as_raw()),
            Ok(None) => Err(FileError::UnknownGroup {
                name: name.to_owned(),
            }),
            Err(e) => Err(FileError::OwnerLookup {
                kind: "group",
                name: name.to_owned(),
                source: io::Error::from(e),
            }),
        })
        .transpose()?;
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, ExitStatus};

    /// Set in a re-executed test binary: the directory the child works in.
    const CHILD_ENV: &str = "CERTFLEET_FILES_TEST_CHILD_DIR";

    struct Fixture {
        _tmp: Option<tempfile::TempDir>,
        journal: PathBuf,
        live: PathBuf,
        allowed: Vec<PathBuf>,
    }

    impl Fixture {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            Self::at(tmp.path().to_owned(), Some(tmp))
        }

        fn at(base: PathBuf, tmp: Option<tempfile::TempDir>) -> Self {
            let live = base.join("live");
            fs::create_dir_all(&live).unwrap();
            Self {
                _tmp: tmp,
                journal: base.join("journal"),
                allowed: vec![live.clone()],
                live,
            }
        }

        fn key(&self) -> PathBuf {
            self.live.join("privkey.pem")
        }

        fn cert(&self) -> PathBuf {
            self.live.join("fullchain.pem")
        }

        fn write_old(&self) {
            fs::write(self.key(), b"old key").unwrap();
            fs::write(self.cert(), b"old cert").unwrap();
        }

        fn new_set(&self) -> Vec<FileSpec> {
            vec![
                spec(&self.key(), b"new key", 0o600),
                spec(&self.cert(), b"new cert", 0o644),
            ]
        }

        fn swap(&self) -> Result<Swap, FileError> {
            swap_in(&self.journal, "web", self.new_set(), &self.allowed)
        }

        fn journal_exists(&self) -> bool {
            journal_path(&self.journal, "web").exists()
        }
    }

    fn spec(live: &Path, contents: &[u8], mode: u32) -> FileSpec {
        FileSpec {
            live: live.to_owned(),
            contents: Zeroizing::new(contents.to_vec()),
            mode,
            uid: None,
            gid: None,
        }
    }

    fn read(path: &Path) -> String {
        String::from_utf8(fs::read(path).unwrap()).unwrap()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".certfleet-"))
            .collect()
    }

    /// Names, types and contents of everything in `dir` (not following links).
    fn snapshot(dir: &Path) -> BTreeMap<String, String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let path = e.path();
                let meta = fs::symlink_metadata(&path).unwrap();
                let what = if meta.file_type().is_symlink() {
                    format!("link {:?}", fs::read_link(&path).unwrap())
                } else if meta.is_dir() {
                    "dir".to_owned()
                } else {
                    format!("file {:?} {:o}", fs::read(&path).unwrap(), meta.mode())
                };
                (e.file_name().to_string_lossy().into_owned(), what)
            })
            .collect()
    }

    /// Re-run test `name` of this module in a child process with `CHILD_ENV`
    /// pointing at `dir`.
    fn run_child(name: &str, dir: &Path, env: &[(&str, &str)]) -> ExitStatus {
        let module = module_path!();
        let module = module.split_once("::").map_or(module, |(_, rest)| rest);
        Command::new(std::env::current_exe().unwrap())
            .args([
                &format!("{module}::{name}"),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir)
            .envs(env.iter().copied())
            .status()
            .unwrap()
    }

    fn child_dir() -> Option<PathBuf> {
        std::env::var_os(CHILD_ENV).map(PathBuf::from)
    }

    #[test]
    fn swap_then_commit_installs_new_set() {
        let fx = Fixture::new();
        fx.write_old();
        fs::set_permissions(fx.key(), fs::Permissions::from_mode(0o640)).unwrap();
        let swap = fx.swap().unwrap();
        assert_eq!(swap.target(), "web");
        assert!(fx.journal_exists());
        swap.commit().unwrap();

        assert_eq!(read(&fx.key()), "new key");
        assert_eq!(read(&fx.cert()), "new cert");
        assert_eq!(mode(&fx.key()), 0o600);
        assert_eq!(mode(&fx.cert()), 0o644);
        assert_eq!(leftovers(&fx.live), Vec::<String>::new());
        assert!(!fx.journal_exists());
        assert_eq!(mode(&fx.journal), 0o700);
    }

    #[test]
    fn modes_are_exact_under_a_restrictive_umask() {
        if let Some(dir) = child_dir() {
            nix::sys::stat::umask(Mode::from_bits_truncate(0o277));
            let fx = Fixture::at(dir, None);
            fx.swap().unwrap().commit().unwrap();
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let status = run_child("modes_are_exact_under_a_restrictive_umask", tmp.path(), &[]);
        assert!(status.success(), "child failed: {status:?}");
        let fx = Fixture::at(tmp.path().to_owned(), None);
        assert_eq!(read(&fx.key()), "new key");
        assert_eq!(mode(&fx.key()), 0o600);
        assert_eq!(mode(&fx.cert()), 0o644);
    }

    #[test]
    fn swap_then_restore_puts_old_set_back() {
        let fx = Fixture::new();
        fx.write_old();
        let extra = fx.live.join("ocsp.der");
        let mut files = fx.new_set();
        files.push(spec(&extra, b"new ocsp", 0o644));
        let swap = swap_in(&fx.journal, "web", files, &fx.allowed).unwrap();
        assert_eq!(read(&fx.key()), "new key");
        assert_eq!(read(&extra), "new ocsp");
        swap.restore().unwrap();

        assert_eq!(read(&fx.key()), "old key");
        assert_eq!(read(&fx.cert()), "old cert");
        assert!(
            !extra.exists(),
            "a file that did not exist before is removed"
        );
        assert_eq!(leftovers(&fx.live), Vec::<String>::new());
        assert!(!fx.journal_exists());
    }

    #[test]
    fn first_install_then_restore_leaves_nothing() {
        let fx = Fixture::new();
        let before = snapshot(&fx.live);
        let swap = fx.swap().unwrap();
        assert_eq!(read(&fx.cert()), "new cert");
        swap.restore().unwrap();
        assert_eq!(snapshot(&fx.live), before);
        assert!(!fx.journal_exists());
    }

    #[test]
    fn unfinished_swap_blocks_the_next_one() {
        let fx = Fixture::new();
        let swap = fx.swap().unwrap();
        drop(swap);
        let err = fx.swap().unwrap_err();
        assert!(matches!(err, FileError::Unfinished { .. }), "{err}");
        assert_eq!(recover(&fx.journal).unwrap().len(), 1);
        fx.swap().unwrap().commit().unwrap();
    }

    #[test]
    fn symlinked_target_is_rejected_and_nothing_written() {
        let fx = Fixture::new();
        fs::write(fx.live.join("real.pem"), b"real").unwrap();
        symlink(fx.live.join("real.pem"), fx.cert()).unwrap();
        let before = snapshot(&fx.live);

        let err = fx.swap().unwrap_err();
        assert!(
            matches!(&err, FileError::Symlink { path } if *path == fx.cert()),
            "{err}"
        );
        assert!(err.to_string().contains("fullchain.pem"), "{err}");
        assert_eq!(snapshot(&fx.live), before);
        assert!(!fx.journal_exists());
    }

    #[test]
    fn symlinked_directories_are_rejected() {
        let fx = Fixture::new();
        fs::create_dir_all(fx.live.join("real/sub")).unwrap();
        symlink(fx.live.join("real"), fx.live.join("link")).unwrap();

        let parent = fx.live.join("link/key.pem");
        let err = check_path(&parent, &fx.allowed).unwrap_err();
        assert!(
            matches!(&err, FileError::Symlink { path } if *path == fx.live.join("link")),
            "{err}"
        );

        let ancestor = fx.live.join("link/sub/key.pem");
        let err = check_path(&ancestor, &fx.allowed).unwrap_err();
        assert!(
            matches!(&err, FileError::Symlink { path } if *path == fx.live.join("link")),
            "{err}"
        );

        let files = vec![spec(&ancestor, b"k", 0o600)];
        assert!(swap_in(&fx.journal, "web", files, &fx.allowed).is_err());
        assert!(!fx.live.join("real/sub/key.pem").exists());

        // Race: the directory became a symlink after check_path.
        let err = open_dir_below(&fx.live, &fx.live.join("link/sub")).unwrap_err();
        assert!(matches!(err, FileError::Symlink { .. }), "{err}");
        check_path(&fx.live.join("real/sub/key.pem"), &fx.allowed).unwrap();
    }

    #[test]
    fn paths_outside_allowed_or_unclean_are_rejected() {
        let fx = Fixture::new();
        let sibling = fx.live.with_file_name("live2");
        fs::create_dir_all(&sibling).unwrap();
        for path in [
            sibling.join("key.pem"),
            PathBuf::from("/etc/passwd"),
            fx.live.clone(),
        ] {
            let err = check_path(&path, &fx.allowed).unwrap_err();
            assert!(
                matches!(err, FileError::OutsideAllowed { .. }),
                "{path:?}: {err}"
            );
        }
        for raw in ["live/../live/key.pem", "live/./key.pem", "live/key.pem/"] {
            let path = PathBuf::from(format!("{}/{raw}", fx.live.parent().unwrap().display()));
            let err = check_path(&path, &fx.allowed).unwrap_err();
            assert!(
                matches!(err, FileError::NotNormalized { .. }),
                "{path:?}: {err}"
            );
        }
        let err = check_path(Path::new("live/key.pem"), &fx.allowed).unwrap_err();
        assert!(matches!(err, FileError::NotAbsolute { .. }), "{err}");
        let err = check_path(&fx.live.join("missing/key.pem"), &fx.allowed).unwrap_err();
        assert!(matches!(err, FileError::MissingDirectory { .. }), "{err}");
        fs::create_dir(fx.live.join("dir.pem")).unwrap();
        let err = check_path(&fx.live.join("dir.pem"), &fx.allowed).unwrap_err();
        assert!(matches!(err, FileError::NotRegularFile { .. }), "{err}");

        let files = vec![spec(&fx.live.join("../x.pem"), b"x", 0o600)];
        assert!(swap_in(&fx.journal, "web", files, &fx.allowed).is_err());
        assert!(!fx.live.with_file_name("x.pem").exists());
    }

    #[test]
    fn bad_input_is_rejected() {
        let fx = Fixture::new();
        for target in ["", "../web", "web.json", "a/b"] {
            let err = swap_in(&fx.journal, target, fx.new_set(), &fx.allowed).unwrap_err();
            assert!(
                matches!(err, FileError::InvalidTarget { .. }),
                "{target}: {err}"
            );
        }
        let err = swap_in(&fx.journal, "web", Vec::new(), &fx.allowed).unwrap_err();
        assert!(matches!(err, FileError::NoFiles { .. }), "{err}");
        let files = vec![spec(&fx.key(), b"k", 0o4755)];
        let err = swap_in(&fx.journal, "web", files, &fx.allowed).unwrap_err();
        assert!(matches!(err, FileError::InvalidMode { .. }), "{err}");
        let files = vec![spec(&fx.key(), b"k", 0o600), spec(&fx.key(), b"k", 0o600)];
        let err = swap_in(&fx.journal, "web", files, &fx.allowed).unwrap_err();
        assert!(matches!(err, FileError::DuplicatePath { .. }), "{err}");
        assert_eq!(snapshot(&fx.live), BTreeMap::new());
    }

    #[test]
    fn stale_leftovers_are_replaced() {
        let fx = Fixture::new();
        fx.write_old();
        fs::write(fx.live.join(".privkey.pem.certfleet-new"), b"stale").unwrap();
        fs::write(fx.live.join(".privkey.pem.certfleet-old"), b"ancient").unwrap();
        fx.swap().unwrap().restore().unwrap();
        assert_eq!(read(&fx.key()), "old key");
        assert_eq!(leftovers(&fx.live), Vec::<String>::new());
    }

    #[test]
    fn recover_after_partial_swap_restores_whole_old_set() {
        let fx = Fixture::new();
        fx.write_old();
        let swap = swap_in_until(&fx.journal, "web", fx.new_set(), &fx.allowed, Some(1)).unwrap();
        drop(swap);
        assert_eq!(read(&fx.key()), "new key");
        assert_eq!(read(&fx.cert()), "old cert");

        let recovered = recover(&fx.journal).unwrap();
        assert_eq!(
            recovered,
            vec![Recovered {
                target: "web".into(),
                needs_reload: false
            }]
        );
        assert_eq!(read(&fx.key()), "old key");
        assert_eq!(read(&fx.cert()), "old cert");
        assert_eq!(leftovers(&fx.live), Vec::<String>::new());
        assert!(!fx.journal_exists());
        assert_eq!(recover(&fx.journal).unwrap(), Vec::new());
    }

    #[test]
    fn recover_after_reload_asks_for_reload() {
        let fx = Fixture::new();
        let mut swap = fx.swap().unwrap();
        swap.mark_reloaded().unwrap();
        drop(swap);
        let recovered = recover(&fx.journal).unwrap();
        assert_eq!(
            recovered,
            vec![Recovered {
                target: "web".into(),
                needs_reload: true
            }]
        );
        assert!(!fx.key().exists());
        assert!(!fx.cert().exists());
        assert_eq!(leftovers(&fx.live), Vec::<String>::new());
    }

    #[test]
    fn recover_handles_crash_between_backup_link_and_rename() {
        let fx = Fixture::new();
        fx.write_old();
        let swap = swap_in_until(&fx.journal, "web", fx.new_set(), &fx.allowed, Some(0)).unwrap();
        drop(swap);
        // First file: linked to its backup, not yet renamed.
        fs::hard_link(fx.key(), fx.live.join(".privkey.pem.certfleet-old")).unwrap();
        assert_eq!(recover(&fx.journal).unwrap().len(), 1);
        assert_eq!(read(&fx.key()), "old key");
        assert_eq!(read(&fx.cert()), "old cert");
        assert_eq!(leftovers(&fx.live), Vec::<String>::new());
    }

    #[test]
    fn recover_repeats_an_interrupted_restore() {
        let fx = Fixture::new();
        fx.write_old();
        let swap = fx.swap().unwrap();
        // Crash after the first file was restored.
        swap.entries[0].restore().unwrap();
        drop(swap);
        assert_eq!(recover(&fx.journal).unwrap().len(), 1);
        assert_eq!(read(&fx.key()), "old key");
        assert_eq!(read(&fx.cert()), "old cert");
        assert_eq!(leftovers(&fx.live), Vec::<String>::new());
    }

    #[test]
    fn recover_reports_garbage_journal_by_name() {
        let fx = Fixture::new();
        fx.write_old();
        drop(swap_in_until(&fx.journal, "web", fx.new_set(), &fx.allowed, Some(1)).unwrap());
        let garbage = fx.journal.join("broken.json");
        fs::write(&garbage, b"{ not json").unwrap();
        let mismatched = fx.journal.join("other.json");
        fs::write(
            &mismatched,
            br#"{"version":1,"target":"web","phase":"swapping","files":[]}"#,
        )
        .unwrap();

        let results = recover_each(&fx.journal).unwrap();
        assert_eq!(results.len(), 3);
        let err = results[0].as_ref().unwrap_err();
        assert!(matches!(err, FileError::CorruptJournal { .. }), "{err}");
        assert!(err.to_string().contains("broken.json"), "{err}");
        let err = results[1].as_ref().unwrap_err();
        assert!(matches!(err, FileError::InvalidJournal { .. }), "{err}");
        assert!(err.to_string().contains("other.json"), "{err}");
        assert_eq!(results[2].as_ref().unwrap().target, "web");
        assert_eq!(read(&fx.key()), "old key");

        let err = recover(&fx.journal).unwrap_err();
        assert!(err.to_string().contains("broken.json"), "{err}");
        assert!(garbage.exists(), "a bad journal is kept for the operator");
    }

    #[test]
    fn sigkill_after_first_swap_then_recover() {
        if let Some(dir) = child_dir() {
            let fx = Fixture::at(dir, None);
            let result = fx.swap();
            panic!("the failpoint should have killed this process, got {result:?}");
        }
        let tmp = tempfile::tempdir().unwrap();
        let fx = Fixture::at(tmp.path().to_owned(), None);
        fx.write_old();
        let status = run_child(
            "sigkill_after_first_swap_then_recover",
            tmp.path(),
            &[(FAILPOINT_ENV, FAILPOINT_CRASH_AFTER_FIRST_SWAP)],
        );
        assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{status:?}");
        assert_eq!(read(&fx.key()), "new key");
        assert_eq!(read(&fx.cert()), "old cert");
        assert!(fx.journal_exists());

        let recovered = recover(&fx.journal).unwrap();
        assert_eq!(
            recovered,
            vec![Recovered {
                target: "web".into(),
                needs_reload: false
            }]
        );
        assert_eq!(read(&fx.key()), "old key");
        assert_eq!(read(&fx.cert()), "old cert");
        assert_eq!(leftovers(&fx.live), Vec::<String>::new());
        assert!(!fx.journal_exists());
    }

    #[test]
    fn owner_is_set_on_staged_files() {
        let fx = Fixture::new();
        let (uid, gid) = if nix::unistd::geteuid().is_root() {
            (65534, 65534)
        } else {
            (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            )
        };
        let mut files = fx.new_set();
        for file in &mut files {
            file.uid = Some(uid);
            file.gid = Some(gid);
        }
        swap_in(&fx.journal, "web", files, &fx.allowed)
            .unwrap()
            .commit()
            .unwrap();
        let meta = fs::metadata(fx.key()).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
        assert_eq!(mode(&fx.key()), 0o600);
    }

    #[test]
    fn resolve_owner_names() {
        assert_eq!(resolve_owner(None, None).unwrap(), (None, None));
        let root_group = Group::from_gid(Gid::from_raw(0)).unwrap().unwrap().name;
        assert_eq!(
            resolve_owner(Some("root"), Some(&root_group)).unwrap(),
            (Some(0), Some(0))
        );
        let err = resolve_owner(Some("certfleet-no-such-user"), None).unwrap_err();
        assert!(err.to_string().contains("certfleet-no-such-user"), "{err}");
        let err = resolve_owner(None, Some("certfleet-no-such-group")).unwrap_err();
        assert!(err.to_string().contains("certfleet-no-such-group"), "{err}");
    }

    #[test]
    fn debug_hides_contents() {
        let shown = format!("{:?}", spec(Path::new("/k.pem"), b"SECRET", 0o600));
        assert!(
            !shown.contains("SECRET") && !shown.contains("83, 69"),
            "{shown}"
        );
        assert!(shown.contains("[redacted]"), "{shown}");
    }

    #[test]
    fn io_errors_name_the_os_error_and_the_drop_in_for_a_read_only_file_system() {
        let path = Path::new("/etc/apache2/tls/www/.privkey.pem.certfleet-new");
        let erofs = sys_err("remove", path)(Errno::EROFS).to_string();
        assert!(
            erofs.starts_with(
                "cannot remove \"/etc/apache2/tls/www/.privkey.pem.certfleet-new\": \
                 Read-only file system"
            ),
            "{erofs}"
        );
        assert!(erofs.contains("systemctl edit certfleet-agent"), "{erofs}");
        assert!(
            erofs.contains("ReadWritePaths=/etc/apache2/tls/www\""),
            "{erofs}"
        );

        let eacces = sys_err("create staged file", path)(Errno::EACCES).to_string();
        assert!(eacces.contains("Permission denied"), "{eacces}");
        assert!(
            eacces.contains("may not write in /etc/apache2/tls/www"),
            "{eacces}"
        );
        assert!(!eacces.contains("ReadWritePaths"), "{eacces}");

        // Anything else: just the OS error, no advice that would mislead.
        let enospc = sys_err("write staged file", path)(Errno::ENOSPC).to_string();
        assert!(
            enospc.ends_with("No space left on device (os error 28)"),
            "{enospc}"
        );
    }
}
