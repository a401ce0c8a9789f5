//! `certfleet admin check | backup | restore`: the controller's database as
//! a whole.
//!
//! - `check --state-dir DIR` runs SQLite's full `integrity_check` (and
//!   `foreign_key_check`) on this host; it exits 1 when it finds damage.
//! - `backup --out FILE` asks the running controller for a snapshot
//!   (`AdminBackup`, taken with SQLite's online backup API) and copies it
//!   piece by piece; with `--state-dir DIR` it takes the snapshot itself,
//!   on the controller host, running controller or not. Either way FILE is
//!   written as `FILE.partial` (0600), checked, fsynced and renamed, never
//!   over an existing file: a file named FILE is a whole, sound backup.
//!   The master key is not in it; keep a copy of the key apart.
//! - `restore FILE --state-dir DIR` checks FILE fully, checks that the
//!   state directory's master key opens its keys, takes the state
//!   directory's lock (so the controller must be stopped), moves the
//!   current database aside and puts FILE in its place.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use certfleet_protocol::message::{Request, Response};
use serde::{Deserialize, Serialize};

use super::output::{fields, Output};
use crate::client::Client;
use crate::server::{lock, state_dir, DB_FILE};
use crate::store::integrity::{self, Depth};

/// What `admin check` found.
#[derive(Debug, Serialize, Deserialize)]
pub struct DatabaseCheck {
    /// The database checked.
    pub database: PathBuf,
    /// Whether it passed.
    pub ok: bool,
    /// What SQLite reported (at most 20 problems); empty when it passed.
    pub problems: Vec<String>,
}

/// What `admin backup` wrote.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupWritten {
    /// The backup file.
    pub file: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file, hex, to check a copy against.
    pub sha256: String,
}

/// What `admin restore` did.
#[derive(Debug, Serialize, Deserialize)]
pub struct Restored {
    /// The database now in place.
    pub database: PathBuf,
    /// The backup it came from.
    pub from: PathBuf,
    /// Where the files it replaced were moved.
    pub moved_aside: Vec<PathBuf>,
}

/// `admin check --state-dir DIR`.
pub(super) async fn check(dir: PathBuf, out: &Output) -> anyhow::Result<()> {
    let db = dir.join(DB_FILE);
    let problems = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || {
            if !db.exists() {
                bail!(
                    "{} holds no controller state ({} is missing): name the directory \
                     `certfleet serve` uses with --state-dir",
                    dir.display(),
                    db.display()
                );
            }
            refuse_foreign_owner(&db)?;
            Ok((integrity::check(&db, Depth::Full)?, dir))
        })
        .await??
    };
    let (problems, dir) = problems;
    let report = DatabaseCheck {
        database: db.clone(),
        ok: problems.is_empty(),
        problems,
    };
    out.emit(&report, || {
        if report.ok {
            format!(
                "{}: ok (integrity_check, foreign_key_check)\n",
                db.display()
            )
        } else {
            report
                .problems
                .iter()
                .map(|p| format!("{}: {p}\n", db.display()))
                .collect()
        }
    })?;
    if !report.ok {
        bail!(
            "{}",
            state_dir::damaged(&db, &dir, "integrity_check", &report.problems)
        );
    }
    Ok(())
}

/// `admin backup --out FILE --state-dir DIR`: the snapshot taken here.
pub(super) async fn backup_offline(
    dir: PathBuf,
    file: PathBuf,
    out: &Output,
) -> anyhow::Result<()> {
    let written = tokio::task::spawn_blocking(move || -> anyhow::Result<BackupWritten> {
        let db = dir.join(DB_FILE);
        if !db.exists() {
            bail!(
                "{} holds no controller state ({} is missing)",
                dir.display(),
                db.display()
            );
        }
        // SQLite may create the -wal and -shm files: they must be the
        // controller user's.
        refuse_foreign_owner(&db)?;
        let info = integrity::backup(&db, &file)
            .with_context(|| format!("cannot back up {}", db.display()))?;
        Ok(BackupWritten {
            sha256: sha256_of(&file)?,
            bytes: info.bytes,
            file,
        })
    })
    .await??;
    print_backup(out, &written)
}

/// `admin backup --out FILE`: the running controller's snapshot, copied.
pub(super) async fn backup_online(
    client: &Client,
    file: PathBuf,
    out: &Output,
) -> anyhow::Result<()> {
    if file.exists() {
        bail!(
            "{} already exists; a backup is never written over a file: choose another --out",
            file.display()
        );
    }
    let partial = PathBuf::from(format!("{}.partial", file.display()));
    let _ = std::fs::remove_file(&partial);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let copied = async {
        let mut snapshot = None;
        let mut offset = 0u64;
        loop {
            let r = client
                .call(&Request::AdminBackup {
                    snapshot: snapshot.clone(),
                    offset,
                })
                .await?;
            let chunk = expect_response!(r, Backup);
            if chunk.offset != offset {
                bail!(
                    "the controller sent the piece at {} when {offset} was asked",
                    chunk.offset
                );
            }
            f.write_all(&chunk.data)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            offset += chunk.data.len() as u64;
            snapshot = Some(chunk.snapshot);
            if offset >= chunk.size {
                break;
            }
            if chunk.data.is_empty() {
                bail!(
                    "the controller's snapshot ended at {offset} of {} bytes",
                    chunk.size
                );
            }
        }
        f.sync_all()
            .with_context(|| format!("cannot fsync {}", partial.display()))?;
        let problems = integrity::check(&partial, Depth::Quick)?;
        if !problems.is_empty() {
            bail!(
                "the copied backup failed its check: {}",
                problems.join("; ")
            );
        }
        Ok(offset)
    }
    .await;
    let bytes = match copied {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    // Checking opened it: no journal may be left beside it.
    for suffix in integrity::COMPANIONS {
        let _ = std::fs::remove_file(format!("{}{suffix}", partial.display()));
    }
    std::fs::hard_link(&partial, &file)
        .with_context(|| format!("cannot write the backup to {}", file.display()))?;
    std::fs::remove_file(&partial)?;
    let written = BackupWritten {
        sha256: sha256_of(&file)?,
        bytes,
        file,
    };
    print_backup(out, &written)
}

fn print_backup(out: &Output, w: &BackupWritten) -> anyhow::Result<()> {
    out.emit(w, || {
        format!(
            "{}\nThe backup holds every private key sealed under the master key, and not the \
             key itself: keep a copy of the master key apart from the backups.\n",
            fields(&[
                ("wrote", w.file.display().to_string()),
                ("bytes", w.bytes.to_string()),
                ("sha256", w.sha256.clone()),
            ])
        )
    })
}

/// `admin restore FILE --state-dir DIR`.
pub(super) async fn restore(
    file: PathBuf,
    dir: PathBuf,
    master_key_file: Option<PathBuf>,
    out: &Output,
) -> anyhow::Result<()> {
    let done = tokio::task::spawn_blocking(move || restore_blocking(&file, &dir, master_key_file))
        .await??;
    out.emit(&done, || {
        let mut text = fields(&[
            ("restored", done.database.display().to_string()),
            ("from", done.from.display().to_string()),
        ]);
        for m in &done.moved_aside {
            text.push_str(&format!("\nprevious file kept as {}", m.display()));
        }
        text.push_str("\nStart the controller again.\n");
        text
    })
}

fn restore_blocking(
    file: &Path,
    dir: &Path,
    master_key_file: Option<PathBuf>,
) -> anyhow::Result<Restored> {
    if !file.is_file() {
        bail!("backup {} does not exist or is not a file", file.display());
    }
    let problems = integrity::check(file, Depth::Full)?;
    if !problems.is_empty() {
        bail!(
            "{} is not a sound backup (SQLite's integrity_check: {}); nothing was changed: \
             restore another backup",
            file.display(),
            problems.join("; ")
        );
    }
    integrity::schema_known(file)?;
    let key = crate::server::master_key_location(dir, master_key_file.as_deref());
    if !key.exists() {
        bail!(
            "master key {} is missing: the backup's private keys are sealed under the master key \
             of the controller it came from; put that key there (mode 0600) or name it with \
             --master-key-file",
            key.display()
        );
    }
    crate::server::verify_master_key_of(file, &key)?;
    state_dir::prepare_dir(dir)?;
    let me = nix::unistd::getuid().as_raw();
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir)?);
    if owner != me {
        bail!(
            "state directory {} belongs to {}, and this command runs as uid {me}: the restored \
             database would not be the controller's; run it as that user (sudo -u {} certfleet …)",
            dir.display(),
            user_name(owner),
            user_name(owner)
        );
    }
    let _lock = lock::acquire(dir).context(
        "`admin restore` replaces the database under the controller's feet: stop the \
         controller first",
    )?;
    let db = dir.join(DB_FILE);
    let now = crate::clock::from_env().now().unix_timestamp();
    let moved = integrity::replace(&db, file, &format!(".before-restore-{now}"))?;
    // The restore itself goes into the restored audit log.
    let store = crate::store::Store::open(&db)?;
    let actor = format!("local:{}", user_name(me));
    let detail = format!("from={}", file.display());
    store.call_blocking(|c| {
        crate::store::audit_insert(
            c,
            now,
            &crate::store::AuditRecord {
                actor: &actor,
                action: "admin.restore",
                target: "",
                outcome: "ok",
                detail: &detail,
            },
        )
    })?;
    Ok(Restored {
        database: db,
        from: file.to_path_buf(),
        moved_aside: moved,
    })
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Refuse to open `db` as another user than its owner: SQLite files made
/// by root would lock the controller's own user out of its database.
fn refuse_foreign_owner(db: &Path) -> anyhow::Result<()> {
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(db).with_context(|| format!("cannot read {}", db.display()))?,
    );
    let me = nix::unistd::getuid().as_raw();
    if owner != me {
        let name = user_name(owner);
        bail!(
            "{} belongs to {name}, and this command runs as uid {me}: files it creates there \
             would lock the controller out of its database; run it as that user (sudo -u \
             {name} certfleet …)",
            db.display()
        );
    }
    Ok(())
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_refuses_a_damaged_backup_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.db");
        std::fs::write(&bad, vec![9u8; 8192]).unwrap();
        let state = dir.path().join("state");
        let err = format!("{:#}", restore_blocking(&bad, &state, None).unwrap_err());
        assert!(err.contains("is not a sound backup"), "{err}");
        assert!(!state.exists());
    }

    #[test]
    fn the_digest_is_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            sha256_of(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
