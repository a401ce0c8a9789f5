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

pub mod at_risk;
mod disk;
pub mod fallback;
pub mod integrity;
mod migrations;
pub mod page;

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

// ---------------------------------------------------------------- identity

pub struct IdentityCaRow {
    pub cert_pem: String,
    pub key_sealed: Vec<u8>,
}

pub fn identity_ca_get(conn: &Connection) -> Result<Option<IdentityCaRow>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT cert_pem, key_sealed FROM identity_ca WHERE id = 1",
            [],
            |r| {
                Ok(IdentityCaRow {
                    cert_pem: r.get(0)?,
                    key_sealed: r.get(1)?,
                })
            },
        )
        .optional()?)
}

pub fn identity_ca_put(conn: &Connection, row: &IdentityCaRow, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO identity_ca (id, cert_pem, key_sealed, created_at) VALUES (1, ?1, ?2, ?3)",
        params![row.cert_pem, row.key_sealed, now],
    )?;
    Ok(())
}

/// A client credential the identity CA issued.
#[derive(Debug, Clone)]
pub struct CredentialRow {
    pub serial: String,
    pub role: String,
    pub subject: String,
    pub not_after: i64,
    pub revoked_at: Option<i64>,
}

pub fn credential_insert(conn: &Connection, c: &CredentialRow, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO credentials (serial, role, subject, not_after, created_at, revoked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![c.serial, c.role, c.subject, c.not_after, now, c.revoked_at],
    )?;
    Ok(())
}

pub fn credential_get(
    conn: &Connection,
    serial: &str,
) -> Result<Option<CredentialRow>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT serial, role, subject, not_after, revoked_at FROM credentials WHERE serial = ?1",
        )?
        .query_row(
            [serial],
            |r| {
                Ok(CredentialRow {
                    serial: r.get(0)?,
                    role: r.get(1)?,
                    subject: r.get(2)?,
                    not_after: r.get(3)?,
                    revoked_at: r.get(4)?,
                })
            },
        )
        .optional()?)
}

// ---------------------------------------------------------------- issuers

#[derive(Debug, Clone)]
pub struct IssuerRow {
    pub name: String,
    pub kind: IssuerKind,
    pub key: KeyType,
    pub root_pem: String,
    pub ca_pem: String,
    pub ca_key_sealed: Vec<u8>,
    pub crl_number: i64,
    pub crl_der: Option<Vec<u8>>,
    pub crl_at: Option<i64>,
    pub created_at: i64,
    pub acme: Option<AcmeIssuer>,
}

/// The ACME side of an issuer.
#[derive(Debug, Clone)]
pub struct AcmeIssuer {
    pub directory: String,
    /// Sealed `instant_acme::AccountCredentials` JSON.
    pub account_sealed: Vec<u8>,
    pub account_url: String,
    /// PEM of the CA that signs the ACME server's HTTPS certificate, when
    /// it is not publicly trusted.
    pub ca_bundle: Option<String>,
    pub default_challenge: String,
    /// Sealed RFC 2136 settings for DNS-01.
    pub dns_update_sealed: Option<Vec<u8>>,
}

const ISSUER_COLS: &str = "name, kind, key_type, root_pem, ca_pem, ca_key_sealed, \
                           crl_number, crl_der, crl_at, created_at, acme_directory, \
                           acme_account_sealed, acme_account_url, acme_ca_bundle, \
                           default_challenge, dns_update_sealed";

fn issuer_from_row(r: &Row<'_>) -> Result<IssuerRow, rusqlite::Error> {
    Ok(IssuerRow {
        name: r.get(0)?,
        kind: parse(r.get(1)?)?,
        key: parse(r.get(2)?)?,
        root_pem: r.get(3)?,
        ca_pem: r.get(4)?,
        ca_key_sealed: r.get(5)?,
        crl_number: r.get(6)?,
        crl_der: r.get(7)?,
        crl_at: r.get(8)?,
        created_at: r.get(9)?,
        acme: match r.get::<_, Option<String>>(10)? {
            Some(directory) => Some(AcmeIssuer {
                directory,
                account_sealed: r.get::<_, Option<Vec<u8>>>(11)?.unwrap_or_default(),
                account_url: r.get::<_, Option<String>>(12)?.unwrap_or_default(),
                ca_bundle: r.get(13)?,
                default_challenge: r
                    .get::<_, Option<String>>(14)?
                    .unwrap_or_else(|| "http-01".into()),
                dns_update_sealed: r.get(15)?,
            }),
            None => None,
        },
    })
}

pub fn issuer_insert(conn: &Connection, i: &IssuerRow) -> Result<(), StoreError> {
    conn.execute(
        &format!(
            "INSERT INTO issuers ({ISSUER_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
        ),
        params![
            i.name,
            i.kind.as_str(),
            i.key.as_str(),
            i.root_pem,
            i.ca_pem,
            i.ca_key_sealed,
            i.crl_number,
            i.crl_der,
            i.crl_at,
            i.created_at,
            i.acme.as_ref().map(|a| a.directory.clone()),
            i.acme.as_ref().map(|a| a.account_sealed.clone()),
            i.acme.as_ref().map(|a| a.account_url.clone()),
            i.acme.as_ref().and_then(|a| a.ca_bundle.clone()),
            i.acme.as_ref().map(|a| a.default_challenge.clone()),
            i.acme.as_ref().and_then(|a| a.dns_update_sealed.clone())
        ],
    )?;
    Ok(())
}

pub fn issuer_get(conn: &Connection, name: &str) -> Result<Option<IssuerRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {ISSUER_COLS} FROM issuers WHERE name = ?1"
        ))?
        .query_row([name], issuer_from_row)
        .optional()?)
}

pub fn issuer_list(conn: &Connection) -> Result<Vec<IssuerRow>, StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {ISSUER_COLS} FROM issuers ORDER BY name"))?;
    let rows = stmt.query_map([], issuer_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn issuer_set_crl(
    conn: &Connection,
    name: &str,
    number: i64,
    der: &[u8],
    at: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE issuers SET crl_number = ?2, crl_der = ?3, crl_at = ?4 WHERE name = ?1",
        params![name, number, der, at],
    )?;
    Ok(())
}

// ---------------------------------------------------------------- instances

const INSTANCE_COLS: &str = "id, issuer, validation, max_domains, wildcard, validity_days, \
                             key_type, state, application, certificate, created_at, renew_before_secs, \
                             fallback_issuers, fallback_after_secs";

fn instance_from_row(r: &Row<'_>) -> Result<InstanceInfo, rusqlite::Error> {
    Ok(InstanceInfo {
        id: r.get(0)?,
        spec: InstanceSpec {
            issuer: r.get(1)?,
            validation: parse::<ValidationType>(r.get(2)?)?,
            max_domains: r.get(3)?,
            wildcard: r.get(4)?,
            validity_days: r.get(5)?,
            key: parse(r.get(6)?)?,
            renew_before_days: r.get::<_, Option<i64>>(11)?.map(|s| (s / 86_400) as u32),
            fallback_issuers: json_list(r.get(12)?)?,
            fallback_after_secs: r.get::<_, Option<i64>>(13)?.map(|s| s.max(0) as u64),
        },
        state: parse(r.get(7)?)?,
        application: r.get(8)?,
        certificate: r.get(9)?,
        created_at: Timestamp(r.get(10)?),
        // Filled in by `fallback::attach` where it is shown.
        issuing: None,
    })
}

pub fn instance_insert(conn: &Connection, i: &InstanceInfo) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO instances ({INSTANCE_COLS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
    ))?
    .execute(params![
        i.id,
        i.spec.issuer,
        i.spec.validation.as_str(),
        i.spec.max_domains,
        i.spec.wildcard,
        i.spec.validity_days,
        i.spec.key.as_str(),
        i.state.as_str(),
        i.application,
        i.certificate,
        i.created_at.0,
        i.spec.renew_before_days.map(|d| i64::from(d) * 86_400),
        to_json(&i.spec.fallback_issuers),
        i.spec
            .fallback_after_secs
            .map(|s| i64::try_from(s).unwrap_or(i64::MAX))
    ])?;
    Ok(())
}

pub fn instance_get(conn: &Connection, id: &str) -> Result<Option<InstanceInfo>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {INSTANCE_COLS} FROM instances WHERE id = ?1"
        ))?
        .query_row([id], instance_from_row)
        .optional()?)
}

pub fn instance_list(conn: &Connection) -> Result<Vec<InstanceInfo>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {INSTANCE_COLS} FROM instances ORDER BY created_at, id"
    ))?;
    let rows = stmt.query_map([], instance_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn instance_update(
    conn: &Connection,
    id: &str,
    state: InstanceState,
    application: Option<&str>,
    certificate: Option<&str>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE instances SET state = ?2, application = ?3, certificate = ?4 WHERE id = ?1",
    )?
    .execute(params![id, state.as_str(), application, certificate])?;
    Ok(())
}

// ---------------------------------------------------------------- applications

const APPLICATION_COLS: &str =
    "id, instance, domains, state, attempts, last_error, certificate, created_at, updated_at";

fn application_from_row(r: &Row<'_>) -> Result<ApplicationInfo, rusqlite::Error> {
    Ok(ApplicationInfo {
        id: r.get(0)?,
        instance: r.get(1)?,
        domains: json_list(r.get(2)?)?,
        state: parse(r.get(3)?)?,
        attempts: r.get(4)?,
        last_error: r.get(5)?,
        certificate: r.get(6)?,
        created_at: Timestamp(r.get(7)?),
        updated_at: Timestamp(r.get(8)?),
    })
}

pub fn application_insert(conn: &Connection, a: &ApplicationInfo) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO applications ({APPLICATION_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    ))?
    .execute(params![
        a.id,
        a.instance,
        to_json(&a.domains),
        a.state.as_str(),
        a.attempts,
        a.last_error,
        a.certificate,
        a.created_at.0,
        a.updated_at.0
    ])?;
    Ok(())
}

pub fn application_get(conn: &Connection, id: &str) -> Result<Option<ApplicationInfo>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {APPLICATION_COLS} FROM applications WHERE id = ?1"
        ))?
        .query_row([id], application_from_row)
        .optional()?)
}

pub fn application_update(conn: &Connection, a: &ApplicationInfo) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE applications SET state = ?2, attempts = ?3, last_error = ?4, certificate = ?5,
         updated_at = ?6 WHERE id = ?1",
    )?
    .execute(params![
        a.id,
        a.state.as_str(),
        a.attempts,
        a.last_error,
        a.certificate,
        a.updated_at.0
    ])?;
    Ok(())
}

pub fn applications_in_flight(conn: &Connection) -> Result<Vec<ApplicationInfo>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {APPLICATION_COLS} FROM applications
         WHERE state IN ('pending', 'validating') ORDER BY created_at"
    ))?;
    let rows = stmt.query_map([], application_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The number of applications in flight.
pub fn applications_in_flight_count(conn: &Connection) -> Result<usize, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM applications WHERE state IN ('pending', 'validating')",
        [],
        |r| r.get(0),
    )?;
    Ok(n.max(0) as usize)
}

// ---------------------------------------------------------------- certificates

/// A stored certificate: its public description plus the sealed key and
/// renewal bookkeeping.
#[derive(Debug, Clone)]
pub struct CertRow {
    pub info: CertInfo,
    pub application: String,
    pub key_sealed: Vec<u8>,
    /// First certificate of the renewal chain this one belongs to.
    pub lineage: String,
    pub renewal_error: Option<String>,
    pub renewal_attempts: u32,
    pub renewal_next_at: Option<i64>,
    pub renewal_blocked: Option<String>,
}

const CERT_COLS: &str = "id, instance, issuer, domains, serial, fingerprint, key_type, \
     not_before, not_after, state, renews, revoked_at, revocation_reason, leaf_pem, chain_pem, \
     application, key_sealed, lineage, renewal_error, renewal_attempts, renewal_next_at, \
     renewal_blocked";

fn cert_from_row(r: &Row<'_>) -> Result<CertRow, rusqlite::Error> {
    let reason: Option<String> = r.get(12)?;
    Ok(CertRow {
        info: CertInfo {
            id: r.get(0)?,
            instance: r.get(1)?,
            issuer: r.get(2)?,
            domains: json_list(r.get(3)?)?,
            serial: r.get(4)?,
            fingerprint: r.get(5)?,
            key: parse(r.get(6)?)?,
            not_before: Timestamp(r.get(7)?),
            not_after: Timestamp(r.get(8)?),
            state: parse::<CertState>(r.get(9)?)?,
            renews: r.get(10)?,
            revoked_at: r.get::<_, Option<i64>>(11)?.map(Timestamp),
            revocation_reason: reason.map(parse::<RevocationReason>).transpose()?,
            leaf_pem: r.get(13)?,
            chain_pem: r.get(14)?,
            renewal: None,
        },
        application: r.get(15)?,
        key_sealed: r.get(16)?,
        lineage: match r.get::<_, Option<String>>(17)? {
            Some(l) => l,
            None => r.get(0)?,
        },
        renewal_error: r.get(18)?,
        renewal_attempts: r.get(19)?,
        renewal_next_at: r.get(20)?,
        renewal_blocked: r.get(21)?,
    })
}

pub fn cert_insert(conn: &Connection, c: &CertRow, now: i64) -> Result<(), StoreError> {
    let i = &c.info;
    conn.prepare_cached(&format!(
        "INSERT INTO certificates ({CERT_COLS}, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                     ?18, ?19, ?20, ?21, ?22, ?23)"
    ))?
    .execute(params![
        i.id,
        i.instance,
        i.issuer,
        to_json(&i.domains),
        i.serial,
        i.fingerprint,
        i.key.as_str(),
        i.not_before.0,
        i.not_after.0,
        i.state.as_str(),
        i.renews,
        i.revoked_at.map(|t| t.0),
        i.revocation_reason.map(|r| r.as_str()),
        i.leaf_pem,
        i.chain_pem,
        c.application,
        c.key_sealed,
        c.lineage,
        c.renewal_error,
        c.renewal_attempts,
        c.renewal_next_at,
        c.renewal_blocked,
        now
    ])?;
    Ok(())
}

pub fn cert_get(conn: &Connection, id: &str) -> Result<Option<CertRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {CERT_COLS} FROM certificates WHERE id = ?1"
        ))?
        .query_row([id], cert_from_row)
        .optional()?)
}

/// Certificates, soonest expiry first; with `not_after_before`, only those
/// that expire before that time and are still in service.
pub fn cert_list(
    conn: &Connection,
    not_after_before: Option<i64>,
) -> Result<Vec<CertRow>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {CERT_COLS} FROM certificates
         WHERE ?1 IS NULL OR (not_after < ?1 AND state = 'active')
         ORDER BY not_after, id"
    ))?;
    let rows = stmt.query_map([not_after_before], cert_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn cert_revoke(
    conn: &Connection,
    id: &str,
    at: i64,
    reason: RevocationReason,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE certificates SET state = 'revoked', revoked_at = ?2, revocation_reason = ?3
         WHERE id = ?1",
        params![id, at, reason.as_str()],
    )?;
    Ok(())
}

/// Serial, revocation time and reason of every revoked certificate of an issuer.
pub fn revoked_of_issuer(
    conn: &Connection,
    issuer: &str,
) -> Result<Vec<(String, i64, RevocationReason)>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT serial, revoked_at, revocation_reason FROM certificates
         WHERE issuer = ?1 AND state = 'revoked' ORDER BY revoked_at, serial",
    )?;
    let rows = stmt.query_map([issuer], |r| Ok((r.get(0)?, r.get(1)?, parse(r.get(2)?)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Mark active certificates past their `not_after` (and their instances) expired.
pub fn expire_certificates(conn: &Connection, now: i64) -> Result<usize, StoreError> {
    conn.execute(
        "UPDATE instances SET state = 'expired' WHERE state = 'issued' AND certificate IN
         (SELECT id FROM certificates WHERE state = 'active' AND not_after <= ?1)",
        [now],
    )?;
    Ok(conn.execute(
        "UPDATE certificates SET state = 'expired' WHERE state = 'active' AND not_after <= ?1",
        [now],
    )?)
}

// ---------------------------------------------------------------- agents

fn labels_from_json(s: String) -> Result<Vec<(String, String)>, rusqlite::Error> {
    serde_json::from_str(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

pub fn labels_to_json(labels: &[(String, String)]) -> String {
    // Serializing string pairs cannot fail.
    serde_json::to_string(labels).expect("label pairs serialize")
}

/// An enrolled agent as stored.
#[derive(Debug, Clone)]
pub struct AgentRow {
    pub id: String,
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub targets: Vec<certfleet_protocol::message::TargetInfo>,
    pub version: Option<String>,
    pub enrolled_at: i64,
    pub last_seen: Option<i64>,
    pub removed_at: Option<i64>,
    pub skew_secs: Option<i64>,
    /// Expiry of the agent's newest unrevoked identity certificate.
    pub identity_expires: Option<i64>,
}

const AGENT_COLS: &str = "a.id, a.name, a.labels, a.targets, a.version, a.enrolled_at, \
    a.last_seen, a.removed_at, a.skew_secs, \
    (SELECT max(not_after) FROM credentials c WHERE c.role = 'agent' AND c.subject = a.id \
     AND c.revoked_at IS NULL)";

fn agent_from_row(r: &Row<'_>) -> Result<AgentRow, rusqlite::Error> {
    let targets: String = r.get(3)?;
    Ok(AgentRow {
        id: r.get(0)?,
        name: r.get(1)?,
        labels: labels_from_json(r.get(2)?)?,
        targets: serde_json::from_str(&targets).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
        })?,
        version: r.get(4)?,
        enrolled_at: r.get(5)?,
        last_seen: r.get(6)?,
        removed_at: r.get(7)?,
        skew_secs: r.get(8)?,
        identity_expires: r.get(9)?,
    })
}

pub fn agent_insert(conn: &Connection, a: &AgentRow) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO agents (id, name, labels, enrolled_at, targets) VALUES (?1, ?2, ?3, ?4, '[]')",
        params![a.id, a.name, labels_to_json(&a.labels), a.enrolled_at],
    )?;
    Ok(())
}

pub fn agent_get(conn: &Connection, id: &str) -> Result<Option<AgentRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {AGENT_COLS} FROM agents a WHERE a.id = ?1"
        ))?
        .query_row([id], agent_from_row)
        .optional()?)
}

/// Agents that have not been removed, by name.
pub fn agent_list(conn: &Connection) -> Result<Vec<AgentRow>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {AGENT_COLS} FROM agents a WHERE a.removed_at IS NULL ORDER BY a.name, a.id"
    ))?;
    let rows = stmt.query_map([], agent_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Agents that have not been removed and carry this name (names are not
/// unique: two hosts may enroll with the same hostname).
pub fn agents_named(conn: &Connection, name: &str) -> Result<Vec<AgentRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {AGENT_COLS} FROM agents a WHERE a.name = ?1 AND a.removed_at IS NULL \
         ORDER BY a.id"
    ))?;
    let rows = stmt.query_map([name], agent_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn agent_seen(
    conn: &Connection,
    id: &str,
    hello: &certfleet_protocol::message::AgentHello,
    labels: &[(String, String)],
    now: i64,
) -> Result<(), StoreError> {
    let targets =
        serde_json::to_string(&hello.targets).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    conn.execute(
        "UPDATE agents SET last_seen = ?2, version = ?3, targets = ?4, labels = ?5,
         skew_secs = ?6 WHERE id = ?1",
        params![
            id,
            now,
            hello.version,
            targets,
            labels_to_json(labels),
            hello.now.0 - now
        ],
    )?;
    Ok(())
}

pub fn agent_remove(conn: &Connection, id: &str, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE agents SET removed_at = ?2 WHERE id = ?1",
        params![id, now],
    )?;
    agent_credentials_revoke(conn, id, now)?;
    conn.execute("DELETE FROM deployments WHERE agent = ?1", [id])?;
    Ok(())
}

/// Revoke every agent credential of `id` still valid; returns how many.
pub fn agent_credentials_revoke(
    conn: &Connection,
    id: &str,
    now: i64,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE credentials SET revoked_at = ?2
         WHERE role = 'agent' AND subject = ?1 AND revoked_at IS NULL",
        params![id, now],
    )?)
}

/// Revoke every still-valid agent credential of `agent` issued before
/// `serial` (in insertion order); returns how many.
pub fn agent_credentials_revoke_older(
    conn: &Connection,
    agent: &str,
    serial: &str,
    now: i64,
) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(
            "UPDATE credentials SET revoked_at = ?3
             WHERE role = 'agent' AND subject = ?1 AND revoked_at IS NULL
               AND rowid < (SELECT rowid FROM credentials WHERE serial = ?2)",
        )?
        .execute(params![agent, serial, now])?)
}

/// Revoke every still-valid agent credential of `agent` but `keep`;
/// returns how many.
pub fn agent_credentials_revoke_except(
    conn: &Connection,
    agent: &str,
    keep: &str,
    now: i64,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE credentials SET revoked_at = ?3
         WHERE role = 'agent' AND subject = ?1 AND revoked_at IS NULL AND serial != ?2",
        params![agent, keep, now],
    )?)
}

/// The serials of `agent`'s credentials that are neither revoked nor
/// expired at `now`, oldest first.
pub fn agent_credentials_valid(
    conn: &Connection,
    agent: &str,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT serial FROM credentials
         WHERE role = 'agent' AND subject = ?1 AND revoked_at IS NULL AND not_after > ?2
         ORDER BY rowid",
    )?;
    let rows = stmt.query_map(params![agent, now], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

// ---------------------------------------------------------------- join tokens

pub struct TokenRow {
    pub id: String,
    pub secret_hash: Vec<u8>,
    pub labels: Vec<(String, String)>,
    pub uses_left: i64,
    pub expires_at: i64,
    /// The agent a re-enroll token brings back; `None` enrolls a new agent.
    pub reenroll_agent: Option<String>,
}

pub fn token_insert(conn: &Connection, t: &TokenRow, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO join_tokens (id, secret_hash, labels, uses_left, expires_at, created_at,
                                  reenroll_agent)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            t.id,
            t.secret_hash,
            labels_to_json(&t.labels),
            t.uses_left,
            t.expires_at,
            now,
            t.reenroll_agent
        ],
    )?;
    Ok(())
}

pub fn token_get(conn: &Connection, id: &str) -> Result<Option<TokenRow>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, secret_hash, labels, uses_left, expires_at, reenroll_agent
             FROM join_tokens WHERE id = ?1",
            [id],
            |r| {
                Ok(TokenRow {
                    id: r.get(0)?,
                    secret_hash: r.get(1)?,
                    labels: labels_from_json(r.get(2)?)?,
                    uses_left: r.get(3)?,
                    expires_at: r.get(4)?,
                    reenroll_agent: r.get(5)?,
                })
            },
        )
        .optional()?)
}

/// Take one use of a token; false when none is left.
pub fn token_consume(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE join_tokens SET uses_left = uses_left - 1 WHERE id = ?1 AND uses_left > 0",
        [id],
    )? == 1)
}

// ---------------------------------------------------------------- deployments

const DEPLOYMENT_COLS: &str = "d.id, d.agent, a.name, d.target, d.lineage, d.desired_cert, \
    d.installed_cert, d.status, d.last_error, d.served_fingerprint, d.updated_at";

fn deployment_from_row(
    r: &Row<'_>,
) -> Result<certfleet_protocol::message::DeploymentInfo, rusqlite::Error> {
    Ok(certfleet_protocol::message::DeploymentInfo {
        id: r.get(0)?,
        agent: r.get(1)?,
        agent_name: r.get(2)?,
        target: r.get(3)?,
        lineage: r.get(4)?,
        desired: r.get(5)?,
        installed: r.get(6)?,
        status: parse(r.get(7)?)?,
        last_error: r.get(8)?,
        served_fingerprint: r.get(9)?,
        updated_at: Timestamp(r.get(10)?),
    })
}

/// Point (agent, target) at `desired`; keeps `installed` so the controller
/// knows what the server has until the agent reports.
pub fn deployment_upsert(
    conn: &Connection,
    agent: &str,
    target: &str,
    lineage: &str,
    desired: &str,
    now: i64,
) -> Result<String, StoreError> {
    conn.execute(
        "INSERT INTO deployments (id, agent, target, lineage, desired_cert, status, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6)
         ON CONFLICT (agent, target) DO UPDATE SET
           lineage = excluded.lineage,
           desired_cert = excluded.desired_cert,
           status = CASE WHEN deployments.installed_cert = excluded.desired_cert
                         AND deployments.status = 'installed' THEN 'installed' ELSE 'pending' END,
           last_error = NULL,
           updated_at = excluded.updated_at",
        params![new_id("dep"), agent, target, lineage, desired, now],
    )?;
    Ok(conn.query_row(
        "SELECT id FROM deployments WHERE agent = ?1 AND target = ?2",
        params![agent, target],
        |r| r.get(0),
    )?)
}

pub fn deployment_list(
    conn: &Connection,
    certificate: Option<&str>,
    agent: Option<&str>,
) -> Result<Vec<certfleet_protocol::message::DeploymentInfo>, StoreError> {
    // With an agent, a plain `d.agent = ?2` term lets SQLite use the
    // (agent, target) index: every agent's desired-state fetch comes here,
    // and `?2 IS NULL OR …` would scan every deployment of the fleet.
    let agent_filter = if agent.is_some() {
        "d.agent = ?2"
    } else {
        "?2 IS NULL"
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT {DEPLOYMENT_COLS} FROM deployments d JOIN agents a ON a.id = d.agent
         WHERE (?1 IS NULL OR d.desired_cert = ?1 OR d.installed_cert = ?1 OR d.lineage = ?1)
           AND {agent_filter}
         ORDER BY a.name, d.target"
    ))?;
    let rows = stmt.query_map(params![certificate, agent], deployment_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn deployment_report(
    conn: &Connection,
    agent: &str,
    report: &certfleet_protocol::message::InstallReport,
    now: i64,
) -> Result<bool, StoreError> {
    use certfleet_protocol::message::DeploymentStatus;
    let installed = report.status == DeploymentStatus::Installed;
    let changed = conn.execute(
        "UPDATE deployments SET
           status = ?3,
           installed_cert = CASE WHEN ?4 THEN ?5 ELSE installed_cert END,
           last_error = ?6,
           served_fingerprint = COALESCE(?7, served_fingerprint),
           updated_at = ?8
         WHERE id = ?1 AND agent = ?2 AND desired_cert = ?5",
        params![
            report.deployment,
            agent,
            report.status.as_str(),
            installed,
            report.certificate,
            report.error,
            report.served_fingerprint,
            now
        ],
    )?;
    Ok(changed == 1)
}

// ---------------------------------------------------------------- renewal

pub fn cert_set_state(conn: &Connection, id: &str, state: CertState) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE certificates SET state = ?2 WHERE id = ?1")?
        .execute(params![id, state.as_str()])?;
    Ok(())
}

/// Record the outcome of a renewal attempt on the certificate it renews.
pub fn cert_set_renewal(
    conn: &Connection,
    id: &str,
    error: Option<&str>,
    attempts: u32,
    next_at: Option<i64>,
    blocked: Option<&str>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE certificates SET renewal_error = ?2, renewal_attempts = ?3, renewal_next_at = ?4,
         renewal_blocked = ?5 WHERE id = ?1",
    )?
    .execute(params![id, error, attempts, next_at, blocked])?;
    Ok(())
}

/// Certificates in service (or expired in place) that no other certificate
/// renews yet: the heads of their lineages, the ones renewal looks at. An
/// expired head still renews, so a controller that was down through the
/// renewal window catches up.
///
/// Only heads that may be due at `now` are read: renewal never comes due
/// earlier than [`EARLIEST_DUE_PERCENT`] of a certificate's lifetime before
/// its expiry, so the rest are left in the database; the exact due time is
/// the caller's to check.
pub fn renewal_candidates(conn: &Connection, now: i64) -> Result<Vec<CertRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CERT_COLS} FROM certificates c
         WHERE c.state IN ('active', 'expired')
           AND c.not_after - (c.not_after - c.not_before) * {EARLIEST_DUE_PERCENT} / 100 <= ?1
           AND NOT EXISTS (SELECT 1 FROM certificates n WHERE n.renews = c.id)
         ORDER BY not_after, id"
    ))?;
    let rows = stmt.query_map([now], cert_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The in-flight application renewing `cert`, if any.
pub fn renewal_in_flight(conn: &Connection, cert: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT id FROM applications WHERE renews = ?1 AND state IN ('pending', 'validating')",
        )?
        .query_row([cert], |r| r.get(0))
        .optional()?)
}

pub fn application_set_renews(
    conn: &Connection,
    app: &str,
    renews: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE applications SET renews = ?2 WHERE id = ?1")?
        .execute(params![app, renews])?;
    Ok(())
}

/// ACME progress of an application: challenge type, order URL, sealed key,
/// and when the CA said to retry.
#[derive(Debug, Clone, Default)]
pub struct AcmeProgress {
    pub challenge: Option<String>,
    pub order_url: Option<String>,
    pub key_sealed: Option<Vec<u8>>,
    pub retry_at: Option<i64>,
    /// The CA was asked to validate this order's challenges.
    pub answered: bool,
}

pub fn application_acme(conn: &Connection, app: &str) -> Result<AcmeProgress, StoreError> {
    Ok(conn
        .query_row(
            "SELECT challenge, order_url, key_sealed, retry_at, challenges_answered
             FROM applications WHERE id = ?1",
            [app],
            |r| {
                Ok(AcmeProgress {
                    challenge: r.get(0)?,
                    order_url: r.get(1)?,
                    key_sealed: r.get(2)?,
                    retry_at: r.get(3)?,
                    answered: r.get(4)?,
                })
            },
        )
        .optional()?
        .unwrap_or_default())
}

pub fn application_set_acme(
    conn: &Connection,
    app: &str,
    p: &AcmeProgress,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE applications SET challenge = ?2, order_url = ?3, key_sealed = ?4, retry_at = ?5,
         challenges_answered = ?6 WHERE id = ?1",
        params![
            app,
            p.challenge,
            p.order_url,
            p.key_sealed,
            p.retry_at,
            p.answered
        ],
    )?;
    Ok(())
}

pub fn application_renews(conn: &Connection, app: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT renews FROM applications WHERE id = ?1")?
        .query_row([app], |r| r.get(0))
        .optional()?
        .flatten())
}

/// An unused instance with exactly this spec (the purchased pool).
pub fn instance_from_pool(
    conn: &Connection,
    spec: &InstanceSpec,
) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT id FROM instances WHERE state = 'unused' AND issuer = ?1 AND validation = ?2
             AND max_domains = ?3 AND wildcard = ?4 AND validity_days = ?5 AND key_type = ?6
             AND fallback_issuers = ?7
             ORDER BY created_at LIMIT 1",
        )?
        .query_row(
            params![
                spec.issuer,
                spec.validation.as_str(),
                spec.max_domains,
                spec.wildcard,
                spec.validity_days,
                spec.key.as_str(),
                to_json(&spec.fallback_issuers)
            ],
            |r| r.get(0),
        )
        .optional()?)
}

// ---------------------------------------------------------------- rollouts

/// A stored rollout.
#[derive(Debug, Clone)]
pub struct RolloutRow {
    pub id: String,
    pub kind: String,
    pub lineage: String,
    pub certificate: String,
    pub previous: Option<String>,
    pub strategy: String,
    pub state: String,
    pub reason: Option<String>,
    pub current_wave: i64,
    pub wave_started_at: Option<i64>,
    pub wave_done_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Automatic retries made so far (renewal rollouts only).
    pub retry_attempts: u32,
    /// When the next automatic retry is due; `None` when none is planned.
    pub retry_at: Option<i64>,
}

/// One (agent, target) of a rollout.
#[derive(Debug, Clone)]
pub struct RolloutTargetRow {
    pub agent: String,
    pub agent_name: String,
    pub target: String,
    pub position: i64,
    pub wave: u32,
    pub state: String,
    pub error: Option<String>,
    pub sent_at: Option<i64>,
}

const ROLLOUT_COLS: &str = "id, kind, lineage, certificate, previous, strategy, state, reason, \
    current_wave, wave_started_at, wave_done_at, created_at, updated_at, retry_attempts, retry_at";

fn rollout_from_row(r: &Row<'_>) -> Result<RolloutRow, rusqlite::Error> {
    Ok(RolloutRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        lineage: r.get(2)?,
        certificate: r.get(3)?,
        previous: r.get(4)?,
        strategy: r.get(5)?,
        state: r.get(6)?,
        reason: r.get(7)?,
        current_wave: r.get(8)?,
        wave_started_at: r.get(9)?,
        wave_done_at: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
        retry_attempts: r.get(13)?,
        retry_at: r.get(14)?,
    })
}

pub fn rollout_insert(conn: &Connection, r: &RolloutRow) -> Result<(), StoreError> {
    conn.execute(
        &format!("INSERT INTO rollouts ({ROLLOUT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"),
        params![
            r.id,
            r.kind,
            r.lineage,
            r.certificate,
            r.previous,
            r.strategy,
            r.state,
            r.reason,
            r.current_wave,
            r.wave_started_at,
            r.wave_done_at,
            r.created_at,
            r.updated_at,
            r.retry_attempts,
            r.retry_at
        ],
    )?;
    Ok(())
}

pub fn rollout_update(conn: &Connection, r: &RolloutRow) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE rollouts SET state = ?2, reason = ?3, current_wave = ?4, wave_started_at = ?5,
         wave_done_at = ?6, updated_at = ?7, retry_attempts = ?8, retry_at = ?9 WHERE id = ?1",
        params![
            r.id,
            r.state,
            r.reason,
            r.current_wave,
            r.wave_started_at,
            r.wave_done_at,
            r.updated_at,
            r.retry_attempts,
            r.retry_at
        ],
    )?;
    Ok(())
}

pub fn rollout_get(conn: &Connection, id: &str) -> Result<Option<RolloutRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {ROLLOUT_COLS} FROM rollouts WHERE id = ?1"),
            [id],
            rollout_from_row,
        )
        .optional()?)
}

/// Rollouts, newest first; with `states`, only those in one of them.
pub fn rollout_list(
    conn: &Connection,
    states: Option<&[&str]>,
) -> Result<Vec<RolloutRow>, StoreError> {
    // The filter is in SQL: the reconciler asks for the running few among
    // every rollout ever made.
    let filter = match states {
        Some(states) => format!(
            "WHERE state IN ({})",
            (1..=states.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => String::new(),
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ROLLOUT_COLS} FROM rollouts {filter} ORDER BY created_at DESC, id"
    ))?;
    let params = rusqlite::params_from_iter(states.unwrap_or(&[]).iter());
    let rows = stmt.query_map(params, rollout_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Rollouts with an automatic retry due at or before `now`.
pub fn rollout_retries_due(conn: &Connection, now: i64) -> Result<Vec<RolloutRow>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {ROLLOUT_COLS} FROM rollouts WHERE retry_at IS NOT NULL AND retry_at <= ?1
         ORDER BY retry_at, id"
    ))?;
    let rows = stmt.query_map([now], rollout_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Bring forward to `now` the retry of every rollout with a failed target
/// on `agent`: the agent is back, or it just installed something, so the
/// cause of the failure may be gone. Returns how many were brought forward.
pub fn rollout_retry_now_for_agent(
    conn: &Connection,
    agent: &str,
    now: i64,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        // Candidates come from the partial index on `retry_at` (a handful),
        // each checked by a primary-key lookup: every agent's hello runs
        // this, so it must not scan the targets of every rollout ever made.
        "UPDATE rollouts SET retry_at = ?2
         WHERE retry_at IS NOT NULL AND retry_at > ?2
           AND EXISTS (SELECT 1 FROM rollout_targets t
                       WHERE t.rollout = rollouts.id AND t.agent = ?1 AND t.state = 'failed')",
        params![agent, now],
    )?)
}

/// End every earlier rollout of `lineage` that still waits for a retry: a
/// newer rollout (a deploy or the next renewal) now decides what its
/// targets get. A halted one becomes `aborted` so `status` stops counting
/// it; a completed one stays completed.
pub fn rollout_supersede_retries(
    conn: &Connection,
    lineage: &str,
    by: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE rollouts SET
           state = CASE WHEN state = 'halted' THEN 'aborted' ELSE state END,
           reason = CASE WHEN state = 'halted' THEN 'superseded by rollout ' || ?2 ELSE reason END,
           retry_at = NULL, updated_at = ?3
         WHERE lineage = ?1 AND id != ?2 AND (state = 'halted' OR retry_at IS NOT NULL)",
        params![lineage, by, now],
    )?;
    Ok(())
}

/// The strategy of a lineage's last deploy, as stored JSON.
pub fn lineage_strategy(conn: &Connection, lineage: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT strategy FROM lineage_strategies WHERE lineage = ?1",
            [lineage],
            |r| r.get(0),
        )
        .optional()?)
}

/// Remember `strategy` (JSON) as the lineage's deploy strategy.
pub fn lineage_strategy_set(
    conn: &Connection,
    lineage: &str,
    strategy: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO lineage_strategies (lineage, strategy, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (lineage) DO UPDATE SET strategy = excluded.strategy,
           updated_at = excluded.updated_at",
        params![lineage, strategy, now],
    )?;
    Ok(())
}

/// The running or paused rollout of a lineage.
pub fn rollout_active_for(
    conn: &Connection,
    lineage: &str,
) -> Result<Option<RolloutRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {ROLLOUT_COLS} FROM rollouts
                 WHERE lineage = ?1 AND state IN ('running', 'paused')"
            ),
            [lineage],
            rollout_from_row,
        )
        .optional()?)
}

pub fn rollout_target_insert(
    conn: &Connection,
    rollout: &str,
    t: &RolloutTargetRow,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO rollout_targets (rollout, agent, target, position, wave, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![rollout, t.agent, t.target, t.position, t.wave, t.state],
    )?;
    Ok(())
}

pub fn rollout_targets(
    conn: &Connection,
    rollout: &str,
) -> Result<Vec<RolloutTargetRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT t.agent, COALESCE(a.name, t.agent), t.target, t.position, t.wave, t.state, t.error,
                t.sent_at
         FROM rollout_targets t LEFT JOIN agents a ON a.id = t.agent
         WHERE t.rollout = ?1 ORDER BY t.position",
    )?;
    let rows = stmt.query_map([rollout], |r| {
        Ok(RolloutTargetRow {
            agent: r.get(0)?,
            agent_name: r.get(1)?,
            target: r.get(2)?,
            position: r.get(3)?,
            wave: r.get(4)?,
            state: r.get(5)?,
            error: r.get(6)?,
            sent_at: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn rollout_target_set(
    conn: &Connection,
    rollout: &str,
    agent: &str,
    target: &str,
    state: &str,
    error: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE rollout_targets SET state = ?4, error = ?5,
           sent_at = CASE WHEN ?4 = 'in_progress' THEN ?6 ELSE sent_at END,
           failed_since = CASE WHEN ?4 = 'failed' THEN COALESCE(failed_since, ?6)
                               WHEN ?4 = 'installed' THEN NULL ELSE failed_since END,
           done_at = CASE WHEN ?4 IN ('installed', 'failed', 'skipped') THEN ?6 ELSE done_at END
         WHERE rollout = ?1 AND agent = ?2 AND target = ?3",
        params![rollout, agent, target, state, error, now],
    )?;
    Ok(())
}

/// (agent, agent name, target) of every deployment of a lineage, on agents
/// that have not been removed.
pub fn lineage_deployments(
    conn: &Connection,
    lineage: &str,
) -> Result<Vec<(String, String, String)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.agent, a.name, d.target FROM deployments d JOIN agents a ON a.id = d.agent
         WHERE d.lineage = ?1 AND a.removed_at IS NULL ORDER BY a.name, d.target",
    )?;
    let rows = stmt.query_map([lineage], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Where one deployment stands.
#[derive(Debug, Clone)]
pub struct DeploymentState {
    pub desired: String,
    pub installed: Option<String>,
    pub status: String,
    pub last_error: Option<String>,
}

/// Every deployment of a lineage by (agent, target): one query for a
/// rollout pass instead of one per target.
pub fn deployments_of_lineage(
    conn: &Connection,
    lineage: &str,
) -> Result<std::collections::HashMap<(String, String), DeploymentState>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT agent, target, desired_cert, installed_cert, status, last_error
         FROM deployments WHERE lineage = ?1",
    )?;
    let rows = stmt.query_map([lineage], |r| {
        Ok((
            (r.get(0)?, r.get(1)?),
            DeploymentState {
                desired: r.get(2)?,
                installed: r.get(3)?,
                status: r.get(4)?,
                last_error: r.get(5)?,
            },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Ids of the agents that are enrolled and not removed, among `rollout`'s
/// targets.
pub fn rollout_live_agents(
    conn: &Connection,
    rollout: &str,
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT DISTINCT t.agent FROM rollout_targets t JOIN agents a ON a.id = t.agent
         WHERE t.rollout = ?1 AND a.removed_at IS NULL",
    )?;
    let rows = stmt.query_map([rollout], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The deployment of (agent, target), if any.
pub fn deployment_of(
    conn: &Connection,
    agent: &str,
    target: &str,
) -> Result<Option<DeploymentState>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT desired_cert, installed_cert, status, last_error FROM deployments
             WHERE agent = ?1 AND target = ?2",
            params![agent, target],
            |r| {
                Ok(DeploymentState {
                    desired: r.get(0)?,
                    installed: r.get(1)?,
                    status: r.get(2)?,
                    last_error: r.get(3)?,
                })
            },
        )
        .optional()?)
}

/// Deployments that hold or want a certificate: (agent name, target).
pub fn deployments_using(
    conn: &Connection,
    cert: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT a.name, d.target FROM deployments d JOIN agents a ON a.id = d.agent
         WHERE (d.installed_cert = ?1 OR d.desired_cert = ?1) AND a.removed_at IS NULL
         ORDER BY a.name, d.target",
    )?;
    let rows = stmt.query_map([cert], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

// ---------------------------------------------------------------- audit

/// An audit record about to be written.
#[derive(Debug, Clone)]
pub struct AuditRecord<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub outcome: &'a str,
    pub detail: &'a str,
}

pub fn audit_insert(conn: &Connection, at: i64, a: &AuditRecord<'_>) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO audit (at, actor, action, target, outcome, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        at, a.actor, a.action, a.target, a.outcome, a.detail
    ])?;
    Ok(())
}

/// Insert an audit entry and answer its id.
pub fn audit_insert_id(conn: &Connection, at: i64, a: &AuditRecord<'_>) -> Result<i64, StoreError> {
    audit_insert(conn, at, a)?;
    Ok(conn.last_insert_rowid())
}

/// Replace the detail of an aggregate audit entry (the count of refused
/// enrollments of one source and minute, which grows while it lasts).
pub fn audit_set_detail(conn: &Connection, id: i64, detail: &str) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE audit SET detail = ?2 WHERE id = ?1")?
        .execute(params![id, detail])?;
    Ok(())
}

/// The newest `limit` audit entries, oldest first.
pub fn audit_list(conn: &Connection, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, at, actor, action, target, outcome, detail FROM
         (SELECT * FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id",
    )?;
    let rows = stmt.query_map([limit], audit_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// An audit entry from `SELECT id, at, actor, action, target, outcome,
/// detail`.
pub(crate) fn audit_from_row(r: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.get(0)?,
        at: Timestamp(r.get(1)?),
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        outcome: r.get(5)?,
        detail: r.get(6)?,
    })
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
