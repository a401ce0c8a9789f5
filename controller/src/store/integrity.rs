//! The database file as a whole: integrity checks, consistent backups, and
//! putting a backup back.
//!
//! - [`check`] runs SQLite's `quick_check` (every start of `serve`) or the
//!   full `integrity_check` plus `foreign_key_check` (`admin check`) on a
//!   connection of its own. A file SQLite cannot read at all is reported as
//!   a problem too, never as a pass.
//! - [`backup`] copies a live database with SQLite's online backup API in a
//!   single step from a connection of its own: one read transaction, so the
//!   copy is one consistent snapshot, and in WAL mode the controller's
//!   writers are not blocked meanwhile. The copy is written beside its
//!   destination as `<out>.partial` (mode 0600), switched to a rollback
//!   journal so it is one self-contained file, checked, fsynced and only
//!   then renamed to its name: a file at `out` is always a whole backup.
//! - [`replace`] puts a backup in place of a database: the current file and
//!   its `-wal`/`-shm` are moved aside first (a stale write-ahead log left
//!   beside the restored file would be replayed into it), the backup is
//!   copied in as `<db>.restoring` (0600, fsynced) and renamed over.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// How thorough a [`check`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// `PRAGMA quick_check`: page structure and record format, without
    /// matching indexes against their tables. O(size), run at every start.
    Quick,
    /// `PRAGMA integrity_check` and `PRAGMA foreign_key_check`.
    Full,
}

/// At most this many problems are reported; one is enough to refuse.
const MAX_PROBLEMS: u32 = 20;

/// The problems SQLite finds in the database at `path`; empty when it is
/// sound. Opening or reading a file that is not a database is a problem,
/// not an error; only a missing file is an error.
pub fn check(path: &Path, depth: Depth) -> Result<Vec<String>, StoreError> {
    if !path.exists() {
        return Err(StoreError::Open {
            path: path.display().to_string(),
            source: rusqlite::Error::InvalidPath(path.to_path_buf()),
        });
    }
    let conn = match Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        Err(e) => return Ok(vec![format!("cannot open it: {e}")]),
    };
    let mut problems = match pragma_rows(&conn, depth) {
        Ok(rows) => rows,
        Err(e) => vec![e.to_string()],
    };
    if problems.len() == 1 && problems[0] == "ok" {
        problems.clear();
    }
    Ok(problems)
}

fn pragma_rows(conn: &Connection, depth: Depth) -> rusqlite::Result<Vec<String>> {
    let pragma = match depth {
        Depth::Quick => format!("PRAGMA quick_check({MAX_PROBLEMS})"),
        Depth::Full => format!("PRAGMA integrity_check({MAX_PROBLEMS})"),
    };
    let mut rows: Vec<String> = conn
        .prepare(&pragma)?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if depth == Depth::Full {
        let mut stmt = conn.prepare("PRAGMA foreign_key_check")?;
        let dangling = stmt.query_map([], |r| {
            Ok(format!(
                "row {} of table {} refers to a missing row of {}",
                r.get::<_, Option<i64>>(1)?
                    .map_or_else(|| "?".into(), |n| n.to_string()),
                r.get::<_, String>(0)?,
                r.get::<_, String>(2)?
            ))
        })?;
        for d in dangling.take(MAX_PROBLEMS as usize) {
            if rows.len() == 1 && rows[0] == "ok" {
                rows.clear();
            }
            rows.push(d?);
        }
    }
    Ok(rows)
}

/// Refuse a database whose schema is newer than this build knows (a
/// backup taken by a newer controller).
pub fn schema_known(path: &Path) -> Result<(), StoreError> {
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|source| {
            StoreError::Open {
                path: path.display().to_string(),
                source,
            }
        })?;
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = super::migrations::MIGRATIONS.len() as i64;
    if found > known {
        return Err(StoreError::TooNew { found, known });
    }
    Ok(())
}

/// What [`backup`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// Size of the backup file in bytes.
    pub bytes: u64,
}

/// Copy the database at `db` (live or not) to `out`, which must not exist.
/// See the module docs for how the copy is made consistent and whole.
pub fn backup(db: &Path, out: &Path) -> Result<BackupInfo, StoreError> {
    let io = |what: &str, path: &Path| {
        let what = what.to_owned();
        let path = path.display().to_string();
        move |source: std::io::Error| StoreError::File { what, path, source }
    };
    if out.exists() {
        return Err(StoreError::File {
            what: "write the backup to".into(),
            path: out.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the file exists; a backup is never written over a file",
            ),
        });
    }
    let partial = sibling(out, ".partial");
    // A leftover of an interrupted backup is ours to replace.
    match std::fs::remove_file(&partial) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove", &partial)(e)),
    }
    // Created 0600 before SQLite writes a byte of it.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io("create", &partial))?;
    let result = (|| -> Result<BackupInfo, StoreError> {
        let src = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: db.display().to_string(),
            source,
        })?;
        src.busy_timeout(std::time::Duration::from_secs(10))?;
        let mut dst = Connection::open(&partial).map_err(|source| StoreError::Open {
            path: partial.display().to_string(),
            source,
        })?;
        {
            let copy = rusqlite::backup::Backup::new(&src, &mut dst)?;
            // All pages in one step: one read transaction on the source. A
            // step that finds the source locked is retried for up to 10 s.
            let mut tries = 0;
            while copy.step(-1)? != rusqlite::backup::StepResult::Done {
                tries += 1;
                if tries > 200 {
                    return Err(StoreError::Corrupt(format!(
                        "{} stayed locked for 10 s; try the backup again",
                        db.display()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        drop(src);
        // One self-contained file: no write-ahead log beside it.
        dst.pragma_update(None, "journal_mode", "DELETE")?;
        let problems = pragma_rows(&dst, Depth::Quick)?;
        if problems != ["ok"] {
            return Err(StoreError::Corrupt(format!(
                "the backup copy failed its check: {}",
                problems.join("; ")
            )));
        }
        dst.close().map_err(|(_, e)| StoreError::Sqlite(e))?;
        let file = std::fs::File::open(&partial).map_err(io("open", &partial))?;
        file.sync_all().map_err(io("fsync", &partial))?;
        Ok(BackupInfo {
            bytes: file.metadata().map_err(io("inspect", &partial))?.len(),
        })
    })();
    let info = match result {
        Ok(info) => info,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    // No-clobber rename: a file that appeared meanwhile is kept.
    std::fs::hard_link(&partial, out).map_err(io("write the backup to", out))?;
    std::fs::remove_file(&partial).map_err(io("remove", &partial))?;
    sync_parent(out).map_err(io("fsync the directory of", out))?;
    Ok(info)
}

/// `<path><suffix>`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// The database's companion files SQLite keeps beside it.
pub const COMPANIONS: [&str; 2] = ["-wal", "-shm"];

/// Put the backup `from` in place of the database `db`. The current
/// database (and its `-wal`/`-shm`) is moved aside to `<db><aside>` (and
/// `<db><aside>-wal`, …, so the set still opens together); returns the
/// paths moved aside. The caller holds the state directory's lock.
pub fn replace(db: &Path, from: &Path, aside: &str) -> Result<Vec<PathBuf>, StoreError> {
    let io = |what: &str, path: &Path| {
        let what = what.to_owned();
        let path = path.display().to_string();
        move |source: std::io::Error| StoreError::File { what, path, source }
    };
    let restoring = sibling(db, ".restoring");
    {
        let mut src = std::fs::File::open(from).map_err(io("read", from))?;
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&restoring)
            .map_err(io("create", &restoring))?;
        std::io::copy(&mut src, &mut dst).map_err(io("write", &restoring))?;
        dst.flush().map_err(io("write", &restoring))?;
        dst.sync_all().map_err(io("fsync", &restoring))?;
    }
    let mut moved = Vec::new();
    let aside_db = sibling(db, aside);
    for (suffix, path) in std::iter::once(("", db.to_path_buf()))
        .chain(COMPANIONS.iter().map(|s| (*s, sibling(db, s))))
    {
        let target = sibling(&aside_db, suffix);
        match std::fs::rename(&path, &target) {
            Ok(()) => moved.push(target),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("move aside", &path)(e)),
        }
    }
    std::fs::rename(&restoring, db).map_err(io("rename into place", db))?;
    sync_parent(db).map_err(io("fsync the directory of", db))?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(dir: &Path) -> (super::super::Store, PathBuf) {
        let db = dir.join("certfleet.db");
        let store = super::super::Store::open(&db).unwrap();
        store.call_blocking(|c| {
            c.execute_batch("CREATE TABLE t (x TEXT); CREATE INDEX t_x ON t(x);")
                .unwrap();
            for i in 0..2000 {
                c.execute(
                    "INSERT INTO t VALUES (?1)",
                    [format!("row {i} {}", "x".repeat(200))],
                )
                .unwrap();
            }
        });
        (store, db)
    }

    #[test]
    fn a_sound_database_passes_both_checks() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, db) = filled(dir.path());
        assert_eq!(check(&db, Depth::Quick).unwrap(), Vec::<String>::new());
        assert_eq!(check(&db, Depth::Full).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn overwritten_pages_fail_the_quick_check() {
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = filled(dir.path());
        store.call_blocking(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap());
        drop(store);
        let mut bytes = std::fs::read(&db).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid..mid + 8192].fill(0x5a);
        std::fs::write(&db, &bytes).unwrap();
        assert!(!check(&db, Depth::Quick).unwrap().is_empty());
        assert!(!check(&db, Depth::Full).unwrap().is_empty());
        // Not a database at all.
        std::fs::write(&db, vec![7u8; 65536]).unwrap();
        let problems = check(&db, Depth::Quick).unwrap();
        assert!(!problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn backup_is_whole_private_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (store, db) = filled(dir.path());
        let out = dir.path().join("b.db");
        let info = backup(&db, &out).unwrap();
        assert_eq!(info.bytes, std::fs::metadata(&out).unwrap().len());
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!sibling(&out, ".partial").exists());
        assert!(!sibling(&out, "-wal").exists());
        let rows: i64 = Connection::open(&out)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2000);
        let err = backup(&db, &out).unwrap_err();
        assert!(
            matches!(&err, StoreError::File { source, .. }
                if source.kind() == std::io::ErrorKind::AlreadyExists),
            "{err:?}"
        );

        // Put it back over a database that changed since.
        store.call_blocking(|c| c.execute("DELETE FROM t", []).unwrap());
        drop(store);
        let moved = replace(&db, &out, ".before-restore").unwrap();
        assert!(
            moved.contains(&sibling(&db, ".before-restore")),
            "{moved:?}"
        );
        assert!(!sibling(&db, "-wal").exists());
        let store = super::super::Store::open(&db).unwrap();
        let rows: i64 = store.call_blocking(|c| {
            c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap()
        });
        assert_eq!(rows, 2000);
    }
}
