//! Issued certificates: insert, read, list, revoke, expire.

use super::*;

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

pub(super) const CERT_COLS: &str = "id, instance, issuer, domains, serial, fingerprint, key_type, \
     not_before, not_after, state, renews, revoked_at, revocation_reason, leaf_pem, chain_pem, \
     application, key_sealed, lineage, renewal_error, renewal_attempts, renewal_next_at, \
     renewal_blocked";

pub(super) fn cert_from_row(r: &Row<'_>) -> Result<CertRow, rusqlite::Error> {
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
