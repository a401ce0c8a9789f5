//! Enrollment: a join token buys an agent identity.
//!
//! Anyone who can reach the controller can ask, so the order of the steps
//! is the defence: the token is checked (one read of the store, a constant-
//! time hash comparison) before anything is parsed beyond the request,
//! signed or written. A refusal at that stage writes nothing; the caller
//! counts it ([`crate::server`] aggregates refusals per source and minute
//! into the audit log). Only a request carrying a valid token goes on to
//! sign an identity and take a use of the token, in one transaction that
//! checks the token again (a concurrent use of the last one is refused and
//! audited there, which a valid secret bounds).

use certfleet_protocol::Secret;
use time::Duration;
use tracing::info;

use crate::agent_bus::SessionEvent;

use crate::error::{internal, ServiceError};
use crate::fleet::{
    new_agent_row, record_identity, removed_agent, token_hash, valid_hostname, AGENT_IDENTITY_DAYS,
    TOKEN_PREFIX,
};
use crate::identity::Role;
use crate::service::Service;
use crate::store::{self, AuditRecord};

/// Why an enrollment did not happen.
#[derive(Debug)]
pub enum EnrollFailure {
    /// The request was refused: a bad token, host name or CSR. `why` is
    /// for the audit log; the peer only sees `error`.
    Refused {
        why: &'static str,
        error: ServiceError,
    },
    /// The controller could not carry out a valid request.
    Failed(ServiceError),
}

impl EnrollFailure {
    pub fn error(&self) -> &ServiceError {
        match self {
            EnrollFailure::Refused { error, .. } | EnrollFailure::Failed(error) => error,
        }
    }
}

impl From<store::StoreError> for EnrollFailure {
    fn from(e: store::StoreError) -> Self {
        EnrollFailure::Failed(e.into())
    }
}

impl From<rusqlite::Error> for EnrollFailure {
    fn from(e: rusqlite::Error) -> Self {
        EnrollFailure::Failed(e.into())
    }
}

impl From<ServiceError> for EnrollFailure {
    fn from(e: ServiceError) -> Self {
        EnrollFailure::Failed(e)
    }
}

fn refused(why: &'static str) -> EnrollFailure {
    EnrollFailure::Refused {
        why,
        error: ServiceError::Invalid("join token is invalid, expired or used up".into()),
    }
}

/// Record, in the transaction that found it, a refusal reached with a
/// secret that matched a moment ago: a race on the token, rare and bounded
/// by its uses, so each one gets its own audit row.
fn refuse_in(
    tx: rusqlite::Transaction<'_>,
    hostname: &str,
    token: &str,
    ts: i64,
    why: &'static str,
) -> Result<EnrollFailure, EnrollFailure> {
    store::audit_insert(
        &tx,
        ts,
        &AuditRecord {
            actor: &format!("enroll:{hostname}"),
            action: "agent.enroll",
            target: token,
            outcome: &format!("refused: {why}"),
            detail: "",
        },
    )?;
    tx.commit()?;
    Ok(refused(why))
}

impl Service {
    /// Enroll an agent: check the token, issue the identity, then consume
    /// the token and record the agent in one transaction. Answers the new
    /// agent's id and identity certificate.
    pub async fn enroll(
        &self,
        token: Secret,
        csr_pem: String,
        hostname: String,
    ) -> Result<(String, String), EnrollFailure> {
        let text = token
            .expose_str()
            .ok_or_else(|| refused("token is not text"))?;
        let mut parts = text.splitn(3, '.');
        let (Some(TOKEN_PREFIX), Some(id), Some(secret)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(EnrollFailure::Refused {
                why: "malformed token",
                error: ServiceError::Invalid(
                    "join token is malformed: expected cfjt1.<id>.<secret>".into(),
                ),
            });
        };
        if !valid_hostname(&hostname) {
            return Err(EnrollFailure::Refused {
                why: "invalid host name",
                error: ServiceError::Invalid(format!(
                    "agent hostname {hostname:?} is not a valid host name"
                )),
            });
        }
        let presented = token_hash(secret);
        let now = self.now();
        let ts = now.unix_timestamp();
        // The token first, read-only: nothing is signed or written for a
        // peer without a valid one.
        let token_id = id.to_string();
        let row = self
            .store
            .call(move |c| store::token_get(c, &token_id))
            .await
            .map_err(ServiceError::from)?;
        let Some(row) = row else {
            return Err(refused("unknown token"));
        };
        if aws_lc_rs::constant_time::verify_slices_are_equal(&row.secret_hash, &presented).is_err()
        {
            return Err(refused("wrong secret"));
        }
        if row.expires_at <= ts {
            return Err(refused("expired"));
        }
        if row.uses_left <= 0 {
            return Err(refused("no uses left"));
        }
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&csr_pem).map_err(|e| {
            EnrollFailure::Refused {
                why: "invalid CSR",
                error: ServiceError::Invalid(format!(
                    "certificate signing request is invalid: {e}"
                )),
            }
        })?;
        // A re-enroll token names the agent the identity is for; the
        // binding is checked again in the transaction that consumes it.
        let bound = row.reenroll_agent.clone();
        let agent_id = bound.clone().unwrap_or_else(|| store::new_id("agent"));
        let issued = self
            .identity
            .issue_client(
                Role::Agent,
                &agent_id,
                &csr.public_key,
                now,
                Duration::days(AGENT_IDENTITY_DAYS),
            )
            .map_err(internal)?;
        let id = id.to_string();
        let cert_pem = issued.cert_pem.clone();
        let agent = agent_id.clone();
        let reenrolled = bound.is_some();
        self.store
            .call(move |c| -> Result<(), EnrollFailure> {
                let tx = c.transaction()?;
                let Some(row) = store::token_get(&tx, &id)? else {
                    return Err(refuse_in(tx, &hostname, &id, ts, "unknown token")?);
                };
                let same =
                    aws_lc_rs::constant_time::verify_slices_are_equal(&row.secret_hash, &presented)
                        .is_ok();
                let why = if !same {
                    Some("wrong secret")
                } else if row.expires_at <= ts {
                    Some("expired")
                } else if !store::token_consume(&tx, &id)? {
                    Some("no uses left")
                } else if row.reenroll_agent != bound {
                    Some("token changed during enrollment")
                } else {
                    None
                };
                if let Some(why) = why {
                    return Err(refuse_in(tx, &hostname, &id, ts, why)?);
                }
                let Some(bound) = bound else {
                    store::agent_insert(&tx, &new_agent_row(&agent, &hostname, &row.labels, ts))?;
                    record_identity(
                        &tx,
                        &agent,
                        &issued,
                        &format!("enroll:{hostname}"),
                        "agent.enroll",
                        &format!("token={id} "),
                        ts,
                    )?;
                    tx.commit()?;
                    return Ok(());
                };
                // Re-enrollment: the agent keeps its row (labels,
                // deployments); every earlier identity is refused from now.
                let removed = store::agent_get(&tx, &bound)?.map_or(Some(ts), |a| a.removed_at);
                if let Some(at) = removed {
                    refuse_in(tx, &hostname, &id, ts, "agent removed")?;
                    return Err(EnrollFailure::Refused {
                        why: "agent removed",
                        error: removed_agent(&bound, at),
                    });
                }
                let revoked = store::agent_credentials_revoke(&tx, &bound, ts)?;
                record_identity(
                    &tx,
                    &bound,
                    &issued,
                    &format!("enroll:{hostname}"),
                    "agent.reenroll",
                    &format!("token={id} revoked_identities={revoked} "),
                    ts,
                )?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        if reenrolled {
            // A session still open on the old identity ends now.
            self.sessions.send(&agent_id, SessionEvent::Kick);
            info!(agent = %agent_id, "agent re-enrolled");
        } else {
            info!(agent = %agent_id, "agent enrolled");
        }
        Ok((agent_id, cert_pem))
    }
}
