//! Agent identity credentials after enrollment: renewal and retirement.
//!
//! Invariant: an agent holds at most two valid identity credentials, the
//! one it connects with and at most one newer one it has been issued but
//! may not have used yet. Renewing (`RenewIdentity`, made over a session
//! authenticated by credential C) revokes every other valid credential of
//! the agent but C before the new one N is stored, in one transaction.
//! The first connection authenticated by N retires C (and anything older
//! still valid) in the transaction that checks N, so once the new identity
//! has been used, a copy of the old key (a stolen one) is refused. Until
//! then C stays valid: the agent may not have stored N (crash, lost answer)
//! and must be able to reconnect with C and renew again.

use time::Duration;
use tracing::info;

use crate::error::{internal, Result, ServiceError};
use crate::fleet::{record_identity, AGENT_IDENTITY_DAYS};
use crate::identity::Role;
use crate::service::Service;
use crate::store::{self, AuditRecord, StoreError};

impl Service {
    /// Issue a fresh identity certificate to an agent connected with the
    /// credential `in_use`; every other credential of the agent still
    /// valid is revoked, so at most `in_use` and the new one remain.
    pub async fn renew_identity(
        &self,
        agent: String,
        in_use: String,
        csr_pem: String,
    ) -> Result<String> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&csr_pem).map_err(|e| {
            ServiceError::Invalid(format!("certificate signing request is invalid: {e}"))
        })?;
        let now = self.now();
        let issued = self
            .identity
            .issue_client(
                Role::Agent,
                &agent,
                &csr.public_key,
                now,
                Duration::days(AGENT_IDENTITY_DAYS),
            )
            .map_err(internal)?;
        let ts = now.unix_timestamp();
        let cert_pem = issued.cert_pem.clone();
        self.store
            .call(move |c| -> Result<()> {
                let tx = c.transaction()?;
                // An earlier renewal whose certificate never reached the
                // agent (it still connects with `in_use`) is dropped here.
                let unused = store::agent_credentials_revoke_except(&tx, &agent, &in_use, ts)?;
                record_identity(
                    &tx,
                    &agent,
                    &issued,
                    &format!("agent:{agent}"),
                    "agent.identity.renew",
                    &format!("in_use={in_use} revoked_unused={unused} "),
                    ts,
                )?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        Ok(cert_pem)
    }
}

/// The agent `agent` has just authenticated with credential `serial`:
/// retire every credential of it issued before that one, in one
/// transaction with its audit row. Returns how many were retired (0, and
/// nothing written, in the common case of an agent using its newest
/// identity with no older one left).
pub fn retire_superseded(
    conn: &mut rusqlite::Connection,
    agent: &str,
    serial: &str,
    now: i64,
) -> std::result::Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let retired = store::agent_credentials_revoke_older(&tx, agent, serial, now)?;
    if retired == 0 {
        return Ok(0);
    }
    store::audit_insert(
        &tx,
        now,
        &AuditRecord {
            actor: &format!("agent:{agent}"),
            action: "agent.identity.retire",
            target: agent,
            outcome: "ok",
            detail: &format!("in_use={serial} retired={retired}"),
        },
    )?;
    tx.commit()?;
    info!(%agent, retired, "older agent identities retired on first use of the newer one");
    Ok(retired)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_with_credentials(conn: &rusqlite::Connection, serials: &[&str]) {
        for s in serials {
            store::credential_insert(
                conn,
                &store::CredentialRow {
                    serial: (*s).into(),
                    role: "agent".into(),
                    subject: "agent-1".into(),
                    not_after: 1_000_000,
                    revoked_at: None,
                },
                0,
            )
            .unwrap();
        }
    }

    #[test]
    fn using_the_newer_identity_retires_the_older_ones_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = store::Store::open(&dir.path().join("db")).unwrap();
        store.call_blocking(|c| {
            agent_with_credentials(c, &["old", "mid", "new"]);
            // The middle one connecting retires only what came before it.
            assert_eq!(retire_superseded(c, "agent-1", "mid", 10).unwrap(), 1);
            assert_eq!(
                store::agent_credentials_valid(c, "agent-1", 10).unwrap(),
                ["mid", "new"]
            );
            assert_eq!(retire_superseded(c, "agent-1", "new", 11).unwrap(), 1);
            assert_eq!(
                store::agent_credentials_valid(c, "agent-1", 11).unwrap(),
                ["new"]
            );
            // Nothing left to retire: nothing written, no audit row.
            let audits = |c: &rusqlite::Connection| -> i64 {
                c.query_row(
                    "SELECT count(*) FROM audit WHERE action = 'agent.identity.retire'",
                    [],
                    |r| r.get(0),
                )
                .unwrap()
            };
            assert_eq!(audits(c), 2);
            let before = c.total_changes();
            assert_eq!(retire_superseded(c, "agent-1", "new", 12).unwrap(), 0);
            assert_eq!(c.total_changes(), before);
            assert_eq!(audits(c), 2);
        });
    }

    /// A renewal over a session of `in_use` revokes an earlier renewal the
    /// agent never stored, so at most two identities are ever valid.
    #[test]
    fn renewing_again_drops_the_unused_renewal() {
        let dir = tempfile::tempdir().unwrap();
        let store = store::Store::open(&dir.path().join("db")).unwrap();
        store.call_blocking(|c| {
            agent_with_credentials(c, &["in-use", "lost-renewal"]);
            assert_eq!(
                store::agent_credentials_revoke_except(c, "agent-1", "in-use", 5).unwrap(),
                1
            );
            assert_eq!(
                store::agent_credentials_valid(c, "agent-1", 5).unwrap(),
                ["in-use"]
            );
        });
    }
}
