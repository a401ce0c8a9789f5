//! Agents: enrollment rows, what they last said, their credentials.

use super::*;

pub(super) fn labels_from_json(s: String) -> Result<Vec<(String, String)>, rusqlite::Error> {
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

pub(super) const AGENT_COLS: &str = "a.id, a.name, a.labels, a.targets, a.version, a.enrolled_at, \
    a.last_seen, a.removed_at, a.skew_secs, \
    (SELECT max(not_after) FROM credentials c WHERE c.role = 'agent' AND c.subject = a.id \
     AND c.revoked_at IS NULL)";

pub(super) fn agent_from_row(r: &Row<'_>) -> Result<AgentRow, rusqlite::Error> {
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

/// Move each agent's last activity forward to the time given (never back).
pub fn agents_touch(conn: &Connection, seen: &[(String, i64)]) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE agents SET last_seen = ?2 WHERE id = ?1 \
         AND (last_seen IS NULL OR last_seen < ?2)",
    )?;
    for (id, at) in seen {
        stmt.execute(params![id, at])?;
    }
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
