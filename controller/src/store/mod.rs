//! The controller's store: SQLite in WAL mode behind one connection.
//!
//! One connection means one writer; every state transition is one
//! transaction. The connection is only used from blocking threads
//! ([`Store::call`]), so SQLite work never stalls the async runtime. Rows are
//! mapped to the protocol's types, which are also the controller's nouns.
//! Private keys arrive here already sealed (`seal.rs`).
//!
//! Durability is a group commit: SQLite commits without waiting for the
//! disk (`synchronous=NORMAL`, which in WAL mode keeps the database
//! consistent across a power loss), and a call that wrote returns only
//! after the write-ahead log holding its commit has been fsynced. One fsync
//! covers every commit made before it started, so many concurrent writers
//! (thousands of agents reporting at once) share a handful of fsyncs
//! instead of paying one each, and nothing is acknowledged before it is on
//! disk — the same promise as `synchronous=FULL`.

mod agents;
mod applications;
pub mod at_risk;
mod audit;
mod certificates;
mod deployments;
mod disk;
pub mod fallback;
mod identity;
mod instances;
pub mod integrity;
mod issuers;
mod migrations;
pub mod page;
mod renewal;
mod rollouts;
mod tokens;
pub use agents::*;
pub use applications::*;
pub use audit::*;
pub use certificates::*;
pub use deployments::*;
pub use identity::*;
pub use instances::*;
pub use issuers::*;
pub use renewal::*;
pub use rollouts::*;
pub use tokens::*;

use std::path::Path;
use std::sync::{Arc, Mutex};

use certfleet_protocol::message::{
    ApplicationInfo, AuditEntry, CertInfo, CertState, InstanceInfo, InstanceSpec, InstanceState,
    IssuerKind, KeyType, RevocationReason, Timestamp, ValidationType,
};
use rusqlite::{params, Connection, OptionalExtension, Row};

pub use rusqlite::Connection as Conn;

use crate::renewal::policy::EARLIEST_DUE_PERCENT;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Sqlite(#[source] rusqlite::Error),
    /// The file system under the database failed (full, read-only, EIO).
    #[error("cannot write the database {path}: {advice}")]
    Disk {
        path: String,
        advice: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot open database {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database is newer than this build (schema {found}, this build knows {known}); upgrade certfleet")]
    TooNew { found: i64, known: i64 },
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("database worker stopped")]
    Worker,
    #[error("cannot flush {path} to disk")]
    Sync {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A file operation on the database file as a whole (backup, restore).
    #[error("cannot {what} {path}")]
    File {
        what: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        disk::classify(e)
    }
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    durable: Arc<GroupCommit>,
}

/// The group commit: which commits are known to be on disk.
struct GroupCommit {
    /// The write-ahead log whose fsync makes commits durable (named after
    /// the database file as SQLite resolved it, symlinks followed).
    wal: std::path::PathBuf,
    /// The database file, synced instead when there is no log.
    db: std::path::PathBuf,
    /// Set by the first failed fsync: after it the kernel may have dropped
    /// the unwritten pages and cleared the error, so no later fsync can
    /// vouch for the commits before it, and the store refuses all calls.
    failed: std::sync::atomic::AtomicBool,
    /// Sequence number of the last commit made (bumped after it is made).
    committed: std::sync::atomic::AtomicU64,
    /// Sequence number of the last commit known to be on disk; held while
    /// an fsync runs, so writers arriving meanwhile wait for it and then
    /// find themselves covered or run the next one for everyone waiting.
    synced: Mutex<u64>,
    /// fsyncs done, for tests and benchmarks.
    syncs: std::sync::atomic::AtomicU64,
}

impl GroupCommit {
    /// Note a commit; returns its sequence number.
    fn committed(&self) -> u64 {
        self.committed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1
    }

    /// Return once commit `seq` is on disk. `injectable`: the `store.commit`
    /// failpoint applies (calls made while serving, not the start's).
    fn sync_through(&self, seq: u64, injectable: bool) -> Result<(), StoreError> {
        // A panic while holding this lock leaves a valid number behind.
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if self.failed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Sync {
                path: self.wal.display().to_string(),
                source: std::io::Error::other(
                    "an earlier fsync failed; restart the controller once the disk is healthy",
                ),
            });
        }
        if *synced >= seq {
            return Ok(());
        }
        // Every commit numbered up to here has already been written to
        // the log, so this fsync covers all of them.
        let upto = self.committed.load(std::sync::atomic::Ordering::SeqCst);
        let sync = |path: &Path| std::fs::File::open(path).and_then(|f| f.sync_all());
        // Test builds: the commit is in the log, not yet durable; `abort`
        // crashes here, `return(eio)` fails the fsync.
        let injected = if injectable {
            certfleet_agent::failpoints::check_io("store.commit")
        } else {
            Ok(())
        };
        let result = match injected.and_then(|()| sync(&self.wal)) {
            // No log: the commits are in the database file itself.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                sync(&self.db).map_err(|source| StoreError::Sync {
                    path: self.db.display().to_string(),
                    source,
                })
            }
            other => other.map_err(|source| StoreError::Sync {
                path: self.wal.display().to_string(),
                source,
            }),
        };
        if let Err(e) = result {
            self.failed.store(true, std::sync::atomic::Ordering::SeqCst);
            let cause = std::error::Error::source(&e)
                .map(ToString::to_string)
                .unwrap_or_default();
            tracing::error!(error = %e, %cause, "fsync failed; the store refuses every further call");
            return Err(e);
        }
        self.syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *synced = upto;
        Ok(())
    }
}

/// Run `f` on the connection, then wait for what it committed (if
/// anything) to be on disk. A failed sync wins over `f`'s result: nothing
/// may be reported done that the disk may not hold. A call that only read
/// also waits for the commits made before it, so nobody is shown a row
/// that is not yet on disk.
fn run_durably<R, E>(
    conn: &Mutex<Connection>,
    durable: &GroupCommit,
    f: impl FnOnce(&mut Connection) -> Result<R, E>,
) -> Result<R, E>
where
    E: From<StoreError>,
{
    let (result, seq) = {
        // A poisoned lock means a panic inside a previous transaction;
        // SQLite rolled that transaction back, so the connection is usable.
        let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
        let before = guard.total_changes();
        let result = {
            let _db = disk::using(&durable.db);
            f(&mut guard)
        };
        let wrote = guard.total_changes() != before;
        let seq = if wrote {
            durable.committed()
        } else {
            durable.committed.load(std::sync::atomic::Ordering::SeqCst)
        };
        (result, seq)
    };
    durable.sync_through(seq, true)?;
    result
}

impl Store {
    /// Open (creating if needed) the database at `path` and bring its schema
    /// up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Durability comes from the group commit (see the module docs).
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Hot statements are prepared once (`prepare_cached`) and reused.
        conn.set_prepared_statement_cache_capacity(64);
        migrate(&mut conn)?;
        // SQLite names its log after the database file it opened, with
        // symlinks resolved.
        let db = conn
            .path()
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| path.to_path_buf());
        let store = Store {
            conn: Arc::new(Mutex::new(conn)),
            durable: Arc::new(GroupCommit {
                wal: std::path::PathBuf::from(format!("{}-wal", db.display())),
                failed: std::sync::atomic::AtomicBool::new(false),
                committed: std::sync::atomic::AtomicU64::new(0),
                synced: Mutex::new(0),
                syncs: std::sync::atomic::AtomicU64::new(0),
                db: db.clone(),
            }),
        };
        // The migrations committed above: on disk before anything relies on them.
        let seq = store.durable.committed();
        store.durable.sync_through(seq, false)?;
        // And the log's directory entry, created with the log: SQLite in
        // NORMAL mode syncs it only at the first checkpoint.
        if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| StoreError::Sync {
                    path: dir.display().to_string(),
                    source,
                })?;
        }
        Ok(store)
    }

    /// The database file (as SQLite resolved it).
    pub fn path(&self) -> &Path {
        &self.durable.db
    }

    /// fsyncs of the write-ahead log so far (each covers every commit
    /// before it).
    pub fn syncs(&self) -> u64 {
        self.durable
            .syncs
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Run `f` with the connection on a blocking thread.
    pub async fn call<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&mut Connection) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        let durable = self.durable.clone();
        tokio::task::spawn_blocking(move || run_durably(&conn, &durable, f))
            .await
            .map_err(|_| E::from(StoreError::Worker))?
    }

    /// Run `f` synchronously (startup, tests); what it commits is on disk
    /// when this returns. A failed sync panics here: startup cannot go on
    /// with a store it cannot make durable.
    pub fn call_blocking<R>(&self, f: impl FnOnce(&mut Connection) -> R) -> R {
        let (result, seq) = {
            let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            let before = guard.total_changes();
            let result = f(&mut guard);
            let wrote = guard.total_changes() != before;
            let seq = if wrote {
                self.durable.committed()
            } else {
                self.durable
                    .committed
                    .load(std::sync::atomic::Ordering::SeqCst)
            };
            (result, seq)
        };
        if let Err(e) = self.durable.sync_through(seq, false) {
            panic!("cannot make the store durable: {e}");
        }
        result
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = migrations::MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::TooNew {
            found: current,
            known,
        });
    }
    for (i, sql) in migrations::MIGRATIONS
        .iter()
        .enumerate()
        .skip(current as usize)
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// A new random identifier with a readable prefix, like `cert-5f1c…`.
pub fn new_id(prefix: &str) -> String {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 8];
    // The system RNG failing leaves no safe way to continue issuing ids.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random number generator");
    format!("{prefix}-{}", hex::encode(bytes))
}

fn parse<T: std::str::FromStr<Err = String>>(s: String) -> Result<T, rusqlite::Error> {
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

fn json_list(s: String) -> Result<Vec<String>, rusqlite::Error> {
    serde_json::from_str(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

fn to_json(list: &[String]) -> String {
    // Serializing a list of strings cannot fail.
    serde_json::to_string(list).expect("string list serializes")
}

// ---------------------------------------------------------------- meta

pub fn meta_get(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

pub fn meta_put(conn: &Connection, key: &str, value: &[u8]) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(conn: &Connection) -> String {
        let mut stmt = conn
            .prepare(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL
                 AND name NOT LIKE 'sqlite_%' ORDER BY type DESC, name",
            )
            .unwrap();
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.join(";\n\n") + ";\n"
    }

    #[test]
    fn schema_matches_expected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let actual = store.call_blocking(|c| schema(c));
        let expected_path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/store/schema.sql");
        if std::env::var_os("CERTFLEET_BLESS").is_some() {
            std::fs::write(expected_path, &actual).unwrap();
        }
        let expected = std::fs::read_to_string(expected_path).unwrap();
        assert_eq!(
            actual, expected,
            "schema differs from src/store/schema.sql; if the change is intended, \
             add a migration and rerun with CERTFLEET_BLESS=1"
        );
        let version: i64 = store
            .call_blocking(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))
            .unwrap();
        assert_eq!(version, migrations::MIGRATIONS.len() as i64);
    }

    #[test]
    fn reopening_does_not_reapply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(Store::open(&path).unwrap());
        Store::open(&path).unwrap();
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        store
            .call_blocking(|c| c.pragma_update(None, "user_version", 999))
            .unwrap();
        drop(store);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 999, .. })
        ));
    }

    #[test]
    fn one_application_in_flight_per_instance() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store.call_blocking(|c| {
            c.execute_batch(
                "PRAGMA foreign_keys = OFF;
                 INSERT INTO applications (id, instance, domains, state, created_at, updated_at)
                 VALUES ('a1', 'i1', '[]', 'pending', 0, 0);",
            )
            .unwrap();
            let second = c.execute(
                "INSERT INTO applications (id, instance, domains, state, created_at, updated_at)
                 VALUES ('a2', 'i1', '[]', 'validating', 0, 0)",
                [],
            );
            assert!(second.is_err());
        });
    }

    fn counter_table(store: &Store) {
        store.call_blocking(|c| {
            c.execute_batch("CREATE TABLE IF NOT EXISTS n (v INTEGER NOT NULL)")
                .unwrap()
        });
    }

    // The sync lock is held across awaits on purpose: it stands for an
    // fsync in progress while the writers run on blocking threads.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_share_fsyncs_and_every_commit_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        counter_table(&store);
        let syncs_before = store.syncs();
        let committed_before = store
            .durable
            .committed
            .load(std::sync::atomic::Ordering::SeqCst);
        // Hold the sync lock as if an fsync were running: every writer
        // commits, then waits behind it.
        let held = store.durable.synced.lock().unwrap();
        let mut tasks = Vec::new();
        for i in 0..32i64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .call(move |c| -> Result<(), StoreError> {
                        let tx = c.transaction()?;
                        tx.execute("INSERT INTO n (v) VALUES (?1)", [i])?;
                        tx.commit()?;
                        Ok(())
                    })
                    .await
            }));
        }
        while store
            .durable
            .committed
            .load(std::sync::atomic::Ordering::SeqCst)
            < committed_before + 32
        {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(
            tasks.iter().all(|t| !t.is_finished()),
            "acknowledged before fsync"
        );
        drop(held);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        // The first waiter's fsync covered all 32 commits.
        assert_eq!(store.syncs() - syncs_before, 1);
        // Reads cost no fsync.
        let n: i64 = store
            .call(|c| -> Result<i64, StoreError> {
                Ok(c.query_row("SELECT COUNT(*) FROM n", [], |r| r.get(0))?)
            })
            .await
            .unwrap();
        assert_eq!(n, 32);
        assert_eq!(store.syncs() - syncs_before, 1);
        drop(store);
        let again = Store::open(&path).unwrap();
        let n: i64 = again.call_blocking(|c| {
            c.query_row("SELECT COUNT(*) FROM n", [], |r| r.get(0))
                .unwrap()
        });
        assert_eq!(n, 32);
    }

    #[test]
    fn a_failed_transaction_is_not_acknowledged_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        counter_table(&store);
        let r = run_durably(&store.conn, &store.durable, |c| -> Result<(), StoreError> {
            let tx = c.transaction()?;
            tx.execute("INSERT INTO n (v) VALUES (1)", [])?;
            tx.execute("INSERT INTO missing (v) VALUES (1)", [])?;
            tx.commit()?;
            Ok(())
        });
        assert!(r.is_err());
        let n: i64 = store.call_blocking(|c| {
            c.query_row("SELECT COUNT(*) FROM n", [], |r| r.get(0))
                .unwrap()
        });
        assert_eq!(n, 0);
    }
}
