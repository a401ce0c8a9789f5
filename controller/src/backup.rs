//! Online backups through the running controller (`certfleet admin backup`
//! without `--state-dir`).
//!
//! The first `AdminBackup` request takes a snapshot with SQLite's backup
//! API (`store/integrity.rs`: one consistent copy, the controller's writers
//! not blocked) into `backup-<id>.snapshot` beside the database (mode
//! 0600; the state directory is the one place the packaged unit may
//! write), audits it, and answers with its first piece; each later request
//! names the snapshot and the offset it wants. A snapshot is deleted once
//! its last piece has been sent; one abandoned half-way (the CLI died) is
//! deleted by the next backup once it is an hour old. Snapshot ids are 16
//! hex digits, checked before they become part of a path.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use certfleet_protocol::message::{BackupChunk, BACKUP_CHUNK};
use tracing::{info, warn};

use crate::error::{internal, Result, ServiceError};

use crate::service::Service;
use crate::store::{self, AuditRecord};

/// An abandoned snapshot older than this is deleted by the next backup.
const STALE_SECS: u64 = 3600;

fn snapshot_path(db: &Path, id: &str) -> PathBuf {
    db.with_file_name(format!("backup-{id}.snapshot"))
}

fn valid_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Delete snapshots in `dir` that were abandoned more than an hour ago.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("backup-") && name.ends_with(".snapshot")) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > STALE_SECS);
        if old {
            if let Err(err) = std::fs::remove_file(e.path()) {
                warn!(path = %e.path().display(), error = %err, "cannot remove an abandoned backup snapshot");
            }
        }
    }
}

/// Read the piece of `path` at `offset`; the whole size too.
fn read_piece(path: &Path, offset: u64) -> std::io::Result<(u64, Vec<u8>)> {
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    f.seek(SeekFrom::Start(offset.min(size)))?;
    let mut data = Vec::with_capacity(BACKUP_CHUNK.min((size - offset.min(size)) as usize));
    f.take(BACKUP_CHUNK as u64).read_to_end(&mut data)?;
    Ok((size, data))
}

impl Service {
    /// One piece of an online backup; see the module docs.
    pub async fn backup_chunk(
        &self,
        actor: String,
        snapshot: Option<String>,
        offset: u64,
    ) -> Result<BackupChunk> {
        let db = self.store.path().to_path_buf();
        let id = match snapshot {
            Some(id) if valid_id(&id) => id,
            Some(id) => {
                return Err(ServiceError::Invalid(format!(
                    "{id:?} is not a backup snapshot id"
                )))
            }
            None => self.take_snapshot(actor, &db).await?,
        };
        let path = snapshot_path(&db, &id);
        let (size, data) = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || read_piece(&path, offset))
                .await
                .map_err(internal)?
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => ServiceError::NotFound {
                        what: "backup snapshot",
                        id: id.clone(),
                    },
                    _ => internal(e),
                })?
        };
        if offset > size {
            return Err(ServiceError::Invalid(format!(
                "offset {offset} is past the end of backup snapshot {id} ({size} bytes)"
            )));
        }
        if offset + data.len() as u64 >= size {
            if let Err(e) = std::fs::remove_file(&path) {
                warn!(path = %path.display(), error = %e, "cannot remove a sent backup snapshot");
            }
        }
        Ok(BackupChunk {
            snapshot: id,
            size,
            offset,
            data,
        })
    }

    async fn take_snapshot(&self, actor: String, db: &Path) -> Result<String> {
        let id = store::new_id("b").trim_start_matches("b-").to_string();
        let path = snapshot_path(db, &id);
        let bytes = {
            let db = db.to_path_buf();
            tokio::task::spawn_blocking(move || {
                if let Some(dir) = db.parent() {
                    remove_stale(dir);
                }
                store::integrity::backup(&db, &path)
            })
            .await
            .map_err(internal)??
            .bytes
        };
        let now = self.now().unix_timestamp();
        let detail = format!("snapshot={id} bytes={bytes}");
        self.store
            .call(move |c| {
                store::audit_insert(
                    c,
                    now,
                    &AuditRecord {
                        actor: &actor,
                        action: "admin.backup",
                        target: "",
                        outcome: "ok",
                        detail: &detail,
                    },
                )
            })
            .await?;
        info!(snapshot = %id, bytes, "database snapshot taken for a backup");
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_are_hex_only() {
        assert!(valid_id("0123456789abcdef"));
        for bad in [
            "",
            "../../etc/passwd",
            "0123456789abcdeg",
            "0123456789abcdef0",
        ] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        assert_eq!(
            snapshot_path(Path::new("/s/certfleet.db"), "0123456789abcdef"),
            Path::new("/s/backup-0123456789abcdef.snapshot")
        );
    }
}
