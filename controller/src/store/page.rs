//! Keyset-paged reads for the list commands.
//!
//! Each function returns at most `limit` rows whose key sorts after
//! `after` (audit and rollouts: before), in key order, with the filters in
//! the SQL `WHERE` clause; the caller passes the last key it returned as
//! the next `after`. A key is unique (the primary key, or the order the
//! operator reads in with the primary key as tie-break, such as
//! `(not_after, id)`) and an index holds it in that order, so a page is
//! an index range scan however large the table, and rows added or removed
//! between pages never make a page repeat or skip a row that existed
//! throughout. `tests` checks the plans with `EXPLAIN QUERY PLAN`.

use certfleet_protocol::message::{AuditEntry, DeploymentInfo, InstanceInfo};
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

/// The key before every certificate: `(not_after, id) > (i64::MIN, "")`
/// holds for every row, ids being non-empty.
pub const CERT_FIRST: (i64, &str) = (i64::MIN, "");

/// Certificates soonest expiry first, ties by id, without PEMs or key,
/// after the key `(not_after, id)`. With `not_after_before`, only those
/// still in service that expire before it.
pub fn cert_page(
    conn: &Connection,
    not_after_before: Option<i64>,
    after: (i64, &str),
    limit: u32,
) -> Result<Vec<CertRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&cert_page_sql(not_after_before.is_some()))?;
    let rows = match not_after_before {
        None => stmt.query_map(params![after.0, after.1, limit], cert_from_row)?,
        Some(before) => stmt.query_map(params![after.0, after.1, limit, before], cert_from_row)?,
    };
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The statement of [`cert_page`]. Two rather than `?4 IS NULL OR …`: the
/// filter is an upper bound on the index's first column only when it is
/// written as one, so a page of a narrow filter stops at the bound instead
/// of walking the rest of the index.
fn cert_page_sql(filtered: bool) -> String {
    let filter = if filtered {
        "AND not_after < ?4 AND state = 'active'"
    } else {
        ""
    };
    format!(
        "SELECT {CERT_SUMMARY_COLS} FROM certificates
         WHERE (not_after, id) > (?1, ?2) {filter}
         ORDER BY not_after, id LIMIT ?3"
    )
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
    let rows = stmt.query_map(params![before, limit], super::audit_from_row)?;
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

/// The key before every rollout in newest-first order: no rollout is
/// created at `i64::MAX`.
pub const ROLLOUT_FIRST: (i64, &str) = (i64::MAX, "");

/// Rollouts newest first (`created_at`, ties by id, both descending),
/// before the key `(created_at, id)`.
pub fn rollout_page(
    conn: &Connection,
    before: (i64, &str),
    limit: u32,
) -> Result<Vec<RolloutRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&rollout_page_sql())?;
    let rows = stmt.query_map(params![before.0, before.1, limit], rollout_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn rollout_page_sql() -> String {
    format!(
        "SELECT {} FROM rollouts WHERE (created_at, id) < (?1, ?2)
         ORDER BY created_at DESC, id DESC LIMIT ?3",
        super::ROLLOUT_COLS
    )
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

/// The plan SQLite chooses for `sql`, one `detail` line per step.
#[cfg(test)]
pub(crate) fn query_plan(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Vec<String> {
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .expect("the statement under test prepares");
    let rows = stmt
        .query_map(params, |r| r.get::<_, String>(3))
        .expect("EXPLAIN QUERY PLAN runs");
    rows.collect::<Result<_, _>>().expect("plan rows read")
}

/// Asserts that a page of `sql` is a range scan of `index` in list order:
/// the index is used and nothing is sorted, so a page costs its rows, not
/// the table.
#[cfg(test)]
pub(crate) fn assert_index_order(plan: &[String], index: &str) {
    assert!(
        plan.iter().any(|d| d.contains(&format!("INDEX {index}"))),
        "the page does not use {index}: {plan:?}"
    );
    assert!(
        !plan.iter().any(|d| d.contains("TEMP B-TREE")),
        "the page sorts instead of reading {index} in order: {plan:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn list_orders_are_index_range_scans() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store.call_blocking(|c| {
            let plan = query_plan(c, &cert_page_sql(false), params![0, "", 10]);
            assert_index_order(&plan, "certificates_not_after");
            // Expiring soon: only the active ones, in the same order.
            let plan = query_plan(c, &cert_page_sql(true), params![0, "", 10, 100]);
            assert_index_order(&plan, "certificates_state_not_after");
            let plan = query_plan(c, &rollout_page_sql(), params![0, "", 10]);
            assert_index_order(&plan, "rollouts_created");
        });
    }
}
