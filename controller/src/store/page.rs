//! Keyset-paged reads for the list commands.
//!
//! Each function returns at most `limit` rows whose key sorts after
//! `after` (audit: before), in key order, with the filters in the SQL
//! `WHERE` clause; the caller passes the last key it returned as the next
//! `after`. A key is the table's primary key, so a page is an index range
//! scan however large the table, and rows added or removed between pages
//! never make a page repeat or skip a row that existed throughout.

use certfleet_protocol::message::{AuditEntry, DeploymentInfo, InstanceInfo, Timestamp};
use rusqlite::{params, Connection};

use super::{
    agent_from_row, cert_from_row, deployment_from_row, instance_from_row, issuer_from_row,
    rollout_from_row, AgentRow, CertRow, IssuerRow, RolloutRow, StoreError, AGENT_COLS,
    DEPLOYMENT_COLS, INSTANCE_COLS, ISSUER_COLS,
};

/// [`super::CERT_COLS`] with the PEMs and the sealed key left out (empty):
/// a list never needs them, and they are most of a row's bytes.
const CERT_SUMMARY_COLS: &str = "id, instance, issuer, domains, serial, fingerprint, key_type, \
     not_before, not_after, state, renews, revoked_at, revocation_reason, '', '', \
     application, x'', lineage, renewal_error, renewal_attempts, renewal_next_at, \
     renewal_blocked";

/// Certificates by id, without PEMs or key. With `not_after_before`, only
/// those still in service that expire before it.
pub fn cert_page(
    conn: &Connection,
    not_after_before: Option<i64>,
    after: &str,
    limit: u32,
) -> Result<Vec<CertRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CERT_SUMMARY_COLS} FROM certificates
         WHERE id > ?1 AND (?2 IS NULL OR (not_after < ?2 AND state = 'active'))
         ORDER BY id LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![after, not_after_before, limit], cert_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Agents that were not removed, by id.
pub fn agent_page(conn: &Connection, after: &str, limit: u32) -> Result<Vec<AgentRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {AGENT_COLS} FROM agents a WHERE a.id > ?1 AND a.removed_at IS NULL
         ORDER BY a.id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![after, limit], agent_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Deployments by id; `certificate` matches the desired or installed
/// certificate or the lineage, `agent` is an agent id.
pub fn deployment_page(
    conn: &Connection,
    certificate: Option<&str>,
    agent: Option<&str>,
    after: &str,
    limit: u32,
) -> Result<Vec<DeploymentInfo>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DEPLOYMENT_COLS} FROM deployments d JOIN agents a ON a.id = d.agent
         WHERE d.id > ?1
           AND (?2 IS NULL OR d.desired_cert = ?2 OR d.installed_cert = ?2 OR d.lineage = ?2)
           AND (?3 IS NULL OR d.agent = ?3)
         ORDER BY d.id LIMIT ?4"
    ))?;
    let rows = stmt.query_map(
        params![after, certificate, agent, limit],
        deployment_from_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Audit entries with an id below `before`, newest first.
pub fn audit_page(
    conn: &Connection,
    before: i64,
    limit: u32,
) -> Result<Vec<AuditEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, at, actor, action, target, outcome, detail FROM audit
         WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![before, limit], |r| {
        Ok(AuditEntry {
            id: r.get(0)?,
            at: Timestamp(r.get(1)?),
            actor: r.get(2)?,
            action: r.get(3)?,
            target: r.get(4)?,
            outcome: r.get(5)?,
            detail: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn instance_page(
    conn: &Connection,
    after: &str,
    limit: u32,
) -> Result<Vec<InstanceInfo>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {INSTANCE_COLS} FROM instances WHERE id > ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![after, limit], instance_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Issuers by name (their key).
pub fn issuer_page(
    conn: &Connection,
    after: &str,
    limit: u32,
) -> Result<Vec<IssuerRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ISSUER_COLS} FROM issuers WHERE name > ?1 ORDER BY name LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![after, limit], issuer_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn rollout_page(
    conn: &Connection,
    after: &str,
    limit: u32,
) -> Result<Vec<RolloutRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM rollouts WHERE id > ?1 ORDER BY id LIMIT ?2",
        super::ROLLOUT_COLS
    ))?;
    let rows = stmt.query_map(params![after, limit], rollout_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A rollout's target count, installed count and number of waves, counted
/// in SQL so a list does not load every target of a fleet-wide rollout.
pub fn rollout_counts(conn: &Connection, rollout: &str) -> Result<(u32, u32, u32), StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT count(*), coalesce(sum(state = 'installed'), 0), coalesce(max(wave) + 1, 0)
         FROM rollout_targets WHERE rollout = ?1",
        )?
        .query_row([rollout], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?)
}
