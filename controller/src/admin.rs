//! Admin credentials, one operator per name: issue, list, renew, revoke.
//!
//! The credentials table is the only truth: the endpoint looks a client's
//! serial up on every connection and every admin request, so a credential
//! minted by another process (`certfleet admin create --state-dir`, which
//! writes the same SQLite database through its own WAL locking) is accepted
//! at once, and a revoked one is refused at once (the endpoint also closes
//! its open connections, see `server::rpc`). Nothing here caches the set
//! of valid admins.
//!
//! Every change is one `BEGIN IMMEDIATE` transaction, so "is this name
//! taken" and "would a valid admin be left" hold against a concurrent
//! writer in another process too.
//!
//! Renewal policy: `admin renew` adds a credential and leaves the old one
//! valid until it expires or is revoked. Replacing the old one at once would
//! lock the operator out whenever the new file never reaches its place (a
//! full disk, a lost answer); the overlap is at most the old one's remaining
//! life (the CLI suggests renewing within 30 days of expiry).

use certfleet_protocol::message::{AdminCredentialInfo, AdminIssued, Timestamp};
use rcgen::PublicKeyData;
use rusqlite::{params, Connection, TransactionBehavior};
use time::{Duration, OffsetDateTime};

use crate::error::{internal, Result, ServiceError};
use crate::identity::{IdentityCa, Role};
use crate::service::{Issue, Service};
use crate::store::{self, AuditRecord, CredentialRow};

/// How long an admin credential stays valid.
pub const ADMIN_CREDENTIAL_DAYS: i64 = 365;

/// An operator name: it becomes part of a URI SAN and of the audit log's
/// actor, so it is kept to a plain, unambiguous alphabet.
pub fn validate_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::Invalid(format!(
            "admin name {name:?} is invalid: use 1-63 lower-case letters, digits, '-', '_' or \
             '.', starting with a letter or digit"
        )))
    }
}

fn info(row: &AdminRow) -> AdminCredentialInfo {
    AdminCredentialInfo {
        name: row.name.clone(),
        serial: row.serial.clone(),
        created_at: Timestamp(row.created_at),
        not_after: Timestamp(row.not_after),
        revoked_at: row.revoked_at.map(Timestamp),
    }
}

struct AdminRow {
    name: String,
    serial: String,
    created_at: i64,
    not_after: i64,
    revoked_at: Option<i64>,
}

fn rows(conn: &Connection, name: Option<&str>) -> Result<Vec<AdminRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT subject, serial, created_at, not_after, revoked_at FROM credentials
         WHERE role = 'admin' AND (?1 IS NULL OR subject = ?1)
         ORDER BY subject, created_at, serial",
    )?;
    let rows = stmt
        .query_map(params![name], |r| {
            Ok(AdminRow {
                name: r.get(0)?,
                serial: r.get(1)?,
                created_at: r.get(2)?,
                not_after: r.get(3)?,
                revoked_at: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

fn valid(row: &AdminRow, now: i64) -> bool {
    row.revoked_at.is_none() && row.not_after > now
}

/// Every admin credential, revoked and expired ones included.
pub fn list(conn: &Connection) -> Result<Vec<AdminCredentialInfo>> {
    Ok(rows(conn, None)?.iter().map(info).collect())
}

/// Issue an admin credential for `public_key` and record it, in one
/// transaction.
pub fn issue(
    conn: &mut Connection,
    ca: &IdentityCa,
    kind: Issue,
    name: &str,
    public_key: &impl PublicKeyData,
    actor: &str,
    now: OffsetDateTime,
) -> Result<AdminIssued> {
    validate_name(name)?;
    let ts = now.unix_timestamp();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let existing = rows(&tx, Some(name))?;
    if matches!(kind, Issue::Create) {
        if let Some(row) = existing.iter().find(|r| valid(r, ts)) {
            return Err(ServiceError::Conflict(format!(
                "admin {name:?} already has a valid credential (serial {}, valid until {}): \
                 choose another name, or renew it with `certfleet admin renew` using that \
                 credential",
                row.serial,
                Timestamp(row.not_after).to_rfc3339()
            )));
        }
    }
    let issued = ca
        .issue_client(
            Role::Admin,
            name,
            public_key,
            now,
            Duration::days(ADMIN_CREDENTIAL_DAYS),
        )
        .map_err(internal)?;
    store::credential_insert(
        &tx,
        &CredentialRow {
            serial: issued.serial.clone(),
            role: Role::Admin.as_str().into(),
            subject: name.into(),
            not_after: issued.not_after,
            revoked_at: None,
        },
        ts,
    )?;
    let action = match kind {
        Issue::Create => "admin.credential.create",
        Issue::Renew => "admin.credential.renew",
    };
    store::audit_insert(
        &tx,
        ts,
        &AuditRecord {
            actor,
            action,
            target: name,
            outcome: "ok",
            detail: &format!(
                "serial={} not_after={}",
                issued.serial,
                Timestamp(issued.not_after).to_rfc3339()
            ),
        },
    )?;
    tx.commit()?;
    Ok(AdminIssued {
        credential: AdminCredentialInfo {
            name: name.into(),
            serial: issued.serial,
            created_at: Timestamp(ts),
            not_after: Timestamp(issued.not_after),
            revoked_at: None,
        },
        cert_pem: issued.cert_pem,
        ca_pem: ca.cert_pem().to_string(),
    })
}

/// Revoke every valid credential of `name`. Without `force`, refused when
/// no valid admin credential would be left (nobody could then manage the
/// controller except from its host).
pub fn revoke(
    conn: &mut Connection,
    name: &str,
    force: bool,
    actor: &str,
    now: i64,
) -> Result<Vec<AdminCredentialInfo>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let all = rows(&tx, None)?;
    let target: Vec<&AdminRow> = all
        .iter()
        .filter(|r| r.name == name && r.revoked_at.is_none())
        .collect();
    if target.is_empty() {
        return Err(if all.iter().any(|r| r.name == name) {
            ServiceError::Conflict(format!(
                "admin {name:?} has no credential left to revoke (see `certfleet admin list`)"
            ))
        } else {
            ServiceError::NotFound {
                what: "admin",
                id: name.into(),
            }
        });
    }
    let left = all
        .iter()
        .filter(|r| r.name != name && valid(r, now))
        .count();
    if left == 0 && !force {
        return Err(ServiceError::Conflict(format!(
            "revoking admin {name:?} would leave no valid admin credential, and nobody could \
             manage this controller except with `certfleet admin create NAME --state-dir DIR` \
             on its host: create another admin first, or pass --force"
        )));
    }
    tx.execute(
        "UPDATE credentials SET revoked_at = ?2
         WHERE role = 'admin' AND subject = ?1 AND revoked_at IS NULL",
        params![name, now],
    )?;
    let serials: Vec<&str> = target.iter().map(|r| r.serial.as_str()).collect();
    store::audit_insert(
        &tx,
        now,
        &AuditRecord {
            actor,
            action: "admin.credential.revoke",
            target: name,
            outcome: "ok",
            detail: &format!(
                "serials={}{}",
                serials.join(","),
                if force { " forced" } else { "" }
            ),
        },
    )?;
    let revoked = target
        .iter()
        .map(|r| {
            let mut i = info(r);
            i.revoked_at = Some(Timestamp(now));
            i
        })
        .collect();
    tx.commit()?;
    Ok(revoked)
}

/// The public key of a certificate signing request from the CLI.
fn csr_key(csr_pem: &str) -> Result<rcgen::PublicKey> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
        ServiceError::Invalid(format!("certificate signing request is invalid: {e}"))
    })?;
    Ok(csr.public_key)
}

impl Service {
    /// Issue a credential for operator `name`: a new operator
    /// ([`Issue::Create`]) or the one making the request ([`Issue::Renew`]).
    pub async fn admin_issue(
        &self,
        why: Issue,
        actor: String,
        name: String,
        csr_pem: String,
    ) -> Result<AdminIssued> {
        let key = csr_key(&csr_pem)?;
        let ca = self.identity.clone();
        let now = self.now();
        self.store
            .call(move |c| issue(c, &ca, why, &name, &key, &actor, now))
            .await
    }

    pub async fn admin_list(&self) -> Result<Vec<AdminCredentialInfo>> {
        self.store.call(|c| list(c)).await
    }

    pub async fn admin_revoke(
        &self,
        actor: String,
        name: String,
        force: bool,
    ) -> Result<Vec<AdminCredentialInfo>> {
        let now = self.now().unix_timestamp();
        self.store
            .call(move |c| revoke(c, &name, force, &actor, now))
            .await
    }

    /// Whether the admin credential `serial` is still known and not
    /// revoked: asked on every admin request, so a revocation refuses a
    /// live connection's next request at once.
    pub async fn admin_credential_valid(&self, serial: String) -> Result<bool> {
        let row = self
            .store
            .call(move |c| -> Result<_> { Ok(store::credential_get(c, &serial)?) })
            .await?;
        Ok(row.is_some_and(|r| r.role == Role::Admin.as_str() && r.revoked_at.is_none()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::MasterKey;

    /// A state directory with an identity CA and no admin yet.
    fn state() -> (tempfile::TempDir, store::Store, IdentityCa) {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::create(&dir.path().join("k")).unwrap();
        let (ca, _) = IdentityCa::create(&master, OffsetDateTime::now_utc()).unwrap();
        let store = store::Store::open(&dir.path().join("db")).unwrap();
        (dir, store, ca)
    }

    fn create(
        store: &store::Store,
        ca: &IdentityCa,
        name: &str,
        now: OffsetDateTime,
    ) -> Result<AdminIssued> {
        let key = rcgen::KeyPair::generate().unwrap();
        store.call_blocking(|c| issue(c, ca, Issue::Create, name, &key, "test", now))
    }

    #[test]
    fn a_name_is_taken_while_it_holds_a_valid_credential() {
        let (_dir, store, ca) = state();
        let now = OffsetDateTime::now_utc();
        create(&store, &ca, "alice", now).unwrap();
        assert!(matches!(
            create(&store, &ca, "alice", now),
            Err(ServiceError::Conflict(_))
        ));
        // Expired: the name is free again (a locked-out operator keeps it).
        let later = now + Duration::days(ADMIN_CREDENTIAL_DAYS + 1);
        create(&store, &ca, "alice", later).unwrap();
        // Revoked: free again too.
        store
            .call_blocking(|c| revoke(c, "alice", true, "test", later.unix_timestamp()))
            .unwrap();
        create(&store, &ca, "alice", later).unwrap();
    }

    #[test]
    fn the_last_valid_credential_needs_force() {
        let (_dir, store, ca) = state();
        let now = OffsetDateTime::now_utc();
        let ts = now.unix_timestamp();
        create(&store, &ca, "alice", now).unwrap();
        create(&store, &ca, "bob", now).unwrap();
        let revoked = store
            .call_blocking(|c| revoke(c, "bob", false, "test", ts))
            .unwrap();
        assert_eq!(revoked.len(), 1);
        assert!(matches!(
            store.call_blocking(|c| revoke(c, "alice", false, "test", ts)),
            Err(ServiceError::Conflict(m)) if m.contains("--force")
        ));
        assert!(matches!(
            store.call_blocking(|c| revoke(c, "bob", false, "test", ts)),
            Err(ServiceError::Conflict(_))
        ));
        assert!(matches!(
            store.call_blocking(|c| revoke(c, "nobody", false, "test", ts)),
            Err(ServiceError::NotFound { .. })
        ));
        store
            .call_blocking(|c| revoke(c, "alice", true, "test", ts))
            .unwrap();
        let all = store.call_blocking(|c| list(c)).unwrap();
        assert!(all.iter().all(|c| c.revoked_at.is_some()), "{all:?}");
    }

    #[test]
    fn names() {
        for ok in ["alice", "bob-2", "ops.oncall", "a", "0day"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Alice", "-x", "a b", "a:b", "a/b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
