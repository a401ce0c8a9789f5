//! Renewal state of certificates and the applications that renew them.

use super::*;

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
