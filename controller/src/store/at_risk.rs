//! The `at_risk` table and the reads the at-risk pass makes.
//!
//! One row per deployment at risk (keyed by deployment), written only by
//! the at-risk pass (`crate::atrisk`) inside its one transaction. Rows
//! carry `not_after` so the lists read the `(not_after, …)` indexes in
//! order: a page is a range scan, as in [`super::page`].

use certfleet_protocol::message::{
    AtRiskCertificate, AtRiskItem, AtRiskReason, CertState, Timestamp,
};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{json_list, parse, StoreError};

/// A deployment with an installed certificate, and what the pass needs of
/// that certificate and its agent.
#[derive(Debug, Clone)]
pub struct ServedDeployment {
    pub deployment: String,
    pub agent: String,
    pub target: String,
    pub desired: String,
    pub installed: String,
    pub status: String,
    pub last_error: Option<String>,
    pub updated_at: i64,
    pub not_before: i64,
    pub not_after: i64,
    pub lineage: String,
    pub renewal_error: Option<String>,
    pub renewal_blocked: Option<String>,
    pub renew_before_secs: Option<i64>,
    pub last_seen: Option<i64>,
    pub enrolled_at: i64,
}

/// Every deployment of an agent not removed whose installed certificate
/// may be due for renewal at `now`. Renewal is never due before
/// `not_after − 0.35 × lifetime` (`renew_before` is at most a third of the
/// lifetime, its jitter at most a twentieth of that), and the half window
/// comes later still, so the rest cannot be at risk and are left out here
/// rather than looked at one by one — except where the lineage renews from
/// a fallback issuer, which is at risk whenever it is.
pub fn served_deployments(
    conn: &Connection,
    now: i64,
) -> Result<Vec<ServedDeployment>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.id, d.agent, d.target, d.desired_cert, d.installed_cert, d.status,
                d.last_error, d.updated_at, c.not_before, c.not_after,
                COALESCE(c.lineage, c.id), c.renewal_error, c.renewal_blocked,
                i.renew_before_secs, a.last_seen, a.enrolled_at
         FROM deployments d
         JOIN agents a ON a.id = d.agent
         JOIN certificates c ON c.id = d.installed_cert
         LEFT JOIN instances i ON i.id = c.instance
         WHERE a.removed_at IS NULL
           AND (c.not_after - ((c.not_after - c.not_before) * 7 + 19) / 20 <= ?1
                OR COALESCE(c.lineage, c.id) IN
                   (SELECT lineage FROM lineage_issuers WHERE fallback_since IS NOT NULL))
         ORDER BY d.id",
    )?;
    let rows = stmt.query_map([now], |r| {
        Ok(ServedDeployment {
            deployment: r.get(0)?,
            agent: r.get(1)?,
            target: r.get(2)?,
            desired: r.get(3)?,
            installed: r.get(4)?,
            status: r.get(5)?,
            last_error: r.get(6)?,
            updated_at: r.get(7)?,
            not_before: r.get(8)?,
            not_after: r.get(9)?,
            lineage: r.get(10)?,
            renewal_error: r.get(11)?,
            renewal_blocked: r.get(12)?,
            renew_before_secs: r.get(13)?,
            last_seen: r.get(14)?,
            enrolled_at: r.get(15)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The newest certificate renewing `cert`, with its state.
pub fn successor(conn: &Connection, cert: &str) -> Result<Option<(String, CertState)>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT id, state FROM certificates WHERE renews = ?1
             ORDER BY not_before DESC, id DESC LIMIT 1",
        )?
        .query_row([cert], |r| Ok((r.get(0)?, parse::<CertState>(r.get(1)?)?)))
        .optional()?)
}

/// When the first failed application renewing `cert` failed.
pub fn first_failed_renewal(conn: &Connection, cert: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT min(updated_at) FROM applications WHERE renews = ?1 AND state = 'failed'",
        )?
        .query_row([cert], |r| r.get(0))?)
}

/// One (agent, target) in the newest rollout of a certificate.
#[derive(Debug, Clone)]
pub struct RolloutOfTarget {
    pub rollout: String,
    pub rollout_state: String,
    pub rollout_reason: Option<String>,
    pub rollout_updated_at: i64,
    pub state: String,
    pub error: Option<String>,
    pub failed_since: Option<i64>,
}

/// (agent, target) in the newest rollout of `certificate` that has it.
pub fn rollout_of_target(
    conn: &Connection,
    certificate: &str,
    agent: &str,
    target: &str,
) -> Result<Option<RolloutOfTarget>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT r.id, r.state, r.reason, r.updated_at, t.state, t.error, t.failed_since
             FROM rollouts r JOIN rollout_targets t
               ON t.rollout = r.id AND t.agent = ?2 AND t.target = ?3
             WHERE r.certificate = ?1
             ORDER BY r.created_at DESC, r.id DESC LIMIT 1",
        )?
        .query_row(params![certificate, agent, target], |r| {
            Ok(RolloutOfTarget {
                rollout: r.get(0)?,
                rollout_state: r.get(1)?,
                rollout_reason: r.get(2)?,
                rollout_updated_at: r.get(3)?,
                state: r.get(4)?,
                error: r.get(5)?,
                failed_since: r.get(6)?,
            })
        })
        .optional()?)
}

/// A stored item, as the pass compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredItem {
    pub deployment: String,
    pub agent: String,
    pub target: String,
    pub certificate: String,
    pub not_after: i64,
    pub reason: AtRiskReason,
    pub reason_text: String,
    pub since: i64,
}

/// Every stored item.
pub fn stored_items(conn: &Connection) -> Result<Vec<StoredItem>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT deployment, agent, target, certificate, not_after, reason, reason_text, since
         FROM at_risk ORDER BY deployment",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(StoredItem {
            deployment: r.get(0)?,
            agent: r.get(1)?,
            target: r.get(2)?,
            certificate: r.get(3)?,
            not_after: r.get(4)?,
            reason: parse(r.get(5)?)?,
            reason_text: r.get(6)?,
            since: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Insert or replace the item of `item.deployment`.
pub fn put(conn: &Connection, item: &StoredItem, now: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO at_risk (deployment, agent, target, certificate, not_after, reason,
                              reason_text, since, raised_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (deployment) DO UPDATE SET agent = excluded.agent,
           target = excluded.target, certificate = excluded.certificate,
           not_after = excluded.not_after, reason = excluded.reason,
           reason_text = excluded.reason_text, since = excluded.since,
           raised_at = CASE WHEN at_risk.certificate = excluded.certificate
                            THEN at_risk.raised_at ELSE excluded.raised_at END",
    )?
    .execute(params![
        item.deployment,
        item.agent,
        item.target,
        item.certificate,
        item.not_after,
        item.reason.as_str(),
        item.reason_text,
        item.since,
        now
    ])?;
    Ok(())
}

pub fn remove(conn: &Connection, deployment: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM at_risk WHERE deployment = ?1")?
        .execute([deployment])?;
    Ok(())
}

pub fn count(conn: &Connection) -> Result<u32, StoreError> {
    Ok(conn.query_row("SELECT count(*) FROM at_risk", [], |r| r.get(0))?)
}

/// The key before every item: `(not_after, key) > (i64::MIN, "")`.
pub const FIRST: (i64, &str) = (i64::MIN, "");

fn item_from_row(r: &Row<'_>) -> Result<AtRiskItem, rusqlite::Error> {
    Ok(AtRiskItem {
        deployment: r.get(0)?,
        agent: r.get(1)?,
        agent_name: r.get(2)?,
        target: r.get(3)?,
        certificate: r.get(4)?,
        domains: json_list(r.get(5)?)?,
        not_after: Timestamp(r.get(6)?),
        reason: parse(r.get(7)?)?,
        reason_text: r.get(8)?,
        since: Timestamp(r.get(9)?),
    })
}

/// Items soonest expiry first (ties by deployment id), after the key
/// `(not_after, deployment)`.
pub fn item_page(
    conn: &Connection,
    after: (i64, &str),
    limit: u32,
) -> Result<Vec<AtRiskItem>, StoreError> {
    let mut stmt = conn.prepare_cached(ITEM_PAGE_SQL)?;
    let rows = stmt.query_map(params![after.0, after.1, limit], item_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

const ITEM_PAGE_SQL: &str =
    "SELECT r.deployment, r.agent, COALESCE(a.name, r.agent), r.target, r.certificate,
            COALESCE(c.domains, '[]'), r.not_after, r.reason, r.reason_text, r.since
     FROM at_risk r
     LEFT JOIN agents a ON a.id = r.agent
     LEFT JOIN certificates c ON c.id = r.certificate
     WHERE (r.not_after, r.deployment) > (?1, ?2)
     ORDER BY r.not_after, r.deployment LIMIT ?3";

/// Certificates served by an at-risk deployment, soonest expiry first
/// (ties by id), after the key `(not_after, certificate)`; each carries
/// the reason of its earliest item.
pub fn certificate_page(
    conn: &Connection,
    after: (i64, &str),
    limit: u32,
) -> Result<Vec<AtRiskCertificate>, StoreError> {
    let mut stmt = conn.prepare_cached(CERT_PAGE_SQL)?;
    let rows = stmt.query_map(params![after.0, after.1, limit], |r| {
        Ok(AtRiskCertificate {
            id: r.get(0)?,
            domains: json_list(r.get(1)?)?,
            issuer: r.get(2)?,
            state: parse(r.get(3)?)?,
            not_after: Timestamp(r.get(4)?),
            // SQLite takes the bare columns from the row holding min(since).
            since: Timestamp(r.get(5)?),
            reason: parse(r.get(6)?)?,
            reason_text: r.get(7)?,
            deployments: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

const CERT_PAGE_SQL: &str =
    "SELECT r.certificate, COALESCE(c.domains, '[]'), COALESCE(c.issuer, ''),
            COALESCE(c.state, 'active'), r.not_after, min(r.since), r.reason, r.reason_text,
            count(*)
     FROM at_risk r LEFT JOIN certificates c ON c.id = r.certificate
     WHERE (r.not_after, r.certificate) > (?1, ?2)
     GROUP BY r.not_after, r.certificate
     ORDER BY r.not_after, r.certificate LIMIT ?3";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::page::{assert_index_order, query_plan};
    use crate::store::Store;

    fn item(deployment: &str, certificate: &str, not_after: i64, since: i64) -> StoredItem {
        StoredItem {
            deployment: deployment.into(),
            agent: "agent-1".into(),
            target: "web".into(),
            certificate: certificate.into(),
            not_after,
            reason: AtRiskReason::RolloutFailed,
            reason_text: format!("failed on {deployment}"),
            since,
        }
    }

    #[test]
    fn pages_are_index_range_scans_in_expiry_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store.call_blocking(|c| {
            let plan = query_plan(c, ITEM_PAGE_SQL, params![0, "", 10]);
            assert_index_order(&plan, "at_risk_not_after");
            let plan = query_plan(c, CERT_PAGE_SQL, params![0, "", 10]);
            assert_index_order(&plan, "at_risk_certificate");

            put(c, &item("dep-b", "cert-1", 200, 50), 1).unwrap();
            put(c, &item("dep-a", "cert-1", 200, 40), 1).unwrap();
            put(c, &item("dep-c", "cert-0", 100, 60), 1).unwrap();
            let items = item_page(c, FIRST, 10).unwrap();
            let order: Vec<&str> = items.iter().map(|i| i.deployment.as_str()).collect();
            assert_eq!(order, ["dep-c", "dep-a", "dep-b"]);
            let next = item_page(c, (200, "dep-a"), 10).unwrap();
            assert_eq!(next.len(), 1);
            assert_eq!(next[0].deployment, "dep-b");

            let certs = certificate_page(c, FIRST, 10).unwrap();
            assert_eq!(certs.len(), 2);
            assert_eq!(certs[0].id, "cert-0");
            assert_eq!(certs[1].id, "cert-1");
            assert_eq!(certs[1].deployments, 2);
            assert_eq!(certs[1].since, Timestamp(40));
            assert_eq!(certs[1].reason_text, "failed on dep-a");
            assert_eq!(count(c).unwrap(), 3);
            remove(c, "dep-a").unwrap();
            assert_eq!(stored_items(c).unwrap().len(), 2);
        });
    }
}
