//! Disk faults told as such: an SQLite error that comes from the file
//! system under the database (full, read-only, I/O error) becomes
//! [`StoreError::Disk`], naming the database file and what to do, instead
//! of SQLite's bare "database or disk is full".
//!
//! The path is known where the error is converted (a `?` inside a store
//! call) through a thread-local set by [`Store::call`](super::Store::call)
//! for the duration of the call: store calls run one at a time on the
//! thread holding the connection, so the path is always the database that
//! call was using. Outside a call (no path set) errors stay as they were.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

use super::StoreError;

thread_local! {
    static CURRENT: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// Name `db` as the database of every store error converted on this thread
/// until the guard is dropped.
pub(super) fn using(db: &Path) -> Using {
    let previous = CURRENT.with(|c| c.replace(Some(db.to_path_buf())));
    Using { previous }
}

/// Restores the previous path when dropped (calls do not nest today, but a
/// guard keeps that from mattering).
pub(super) struct Using {
    previous: Option<PathBuf>,
}

impl Drop for Using {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// What the operator should know about a disk fault, by SQLite's code.
fn advice(code: ErrorCode) -> Option<&'static str> {
    match code {
        ErrorCode::DiskFull => {
            Some("its file system is full; free space there and retry (the change was not made)")
        }
        ErrorCode::ReadOnly => Some(
            "it is read-only; remount its file system read-write (under systemd check \
             ReadWritePaths= / StateDirectory=) and retry",
        ),
        ErrorCode::SystemIoFailure => Some(
            "the disk returned an I/O error; check the device (dmesg), then restart the \
             controller",
        ),
        _ => None,
    }
}

/// Convert an SQLite error, naming the database when the disk is the cause.
pub(super) fn classify(e: rusqlite::Error) -> StoreError {
    let Some(advice) = e.sqlite_error_code().and_then(advice) else {
        return StoreError::Sqlite(e);
    };
    match CURRENT.with(|c| c.borrow().clone()) {
        Some(path) => StoreError::Disk {
            path: path.display().to_string(),
            advice,
            source: e,
        },
        None => StoreError::Sqlite(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_error(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn disk_errors_name_the_database_only_inside_a_call() {
        let full = sqlite_error(rusqlite::ffi::SQLITE_FULL);
        assert!(matches!(classify(full), StoreError::Sqlite(_)));
        {
            let _g = using(Path::new("/srv/state/certfleet.db"));
            let e = classify(sqlite_error(rusqlite::ffi::SQLITE_FULL));
            let text = e.to_string();
            assert!(text.contains("/srv/state/certfleet.db"), "{text}");
            assert!(text.contains("full"), "{text}");
            let ro = classify(sqlite_error(rusqlite::ffi::SQLITE_READONLY)).to_string();
            assert!(ro.contains("read-only"), "{ro}");
            let busy = classify(sqlite_error(rusqlite::ffi::SQLITE_BUSY));
            assert!(matches!(busy, StoreError::Sqlite(_)), "not a disk fault");
        }
        let after = classify(sqlite_error(rusqlite::ffi::SQLITE_FULL));
        assert!(matches!(after, StoreError::Sqlite(_)), "guard restored");
    }
}
