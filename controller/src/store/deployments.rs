//! Deployments: what each agent target should serve, and its report.

use super::*;

pub(super) const DEPLOYMENT_COLS: &str =
    "d.id, d.agent, a.name, d.target, d.lineage, d.desired_cert, \
    d.installed_cert, d.status, d.last_error, d.served_fingerprint, d.updated_at";

pub(super) fn deployment_from_row(
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
