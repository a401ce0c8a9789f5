//! The audit log.

use super::*;

/// An audit record about to be written.
#[derive(Debug, Clone)]
pub struct AuditRecord<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub outcome: &'a str,
    pub detail: &'a str,
}

pub fn audit_insert(conn: &Connection, at: i64, a: &AuditRecord<'_>) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO audit (at, actor, action, target, outcome, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        at, a.actor, a.action, a.target, a.outcome, a.detail
    ])?;
    Ok(())
}

/// Insert an audit entry and answer its id.
pub fn audit_insert_id(conn: &Connection, at: i64, a: &AuditRecord<'_>) -> Result<i64, StoreError> {
    audit_insert(conn, at, a)?;
    Ok(conn.last_insert_rowid())
}

/// Replace the detail of an aggregate audit entry (the count of refused
/// enrollments of one source and minute, which grows while it lasts).
pub fn audit_set_detail(conn: &Connection, id: i64, detail: &str) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE audit SET detail = ?2 WHERE id = ?1")?
        .execute(params![id, detail])?;
    Ok(())
}

/// The newest `limit` audit entries, oldest first.
pub fn audit_list(conn: &Connection, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, at, actor, action, target, outcome, detail FROM
         (SELECT * FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id",
    )?;
    let rows = stmt.query_map([limit], audit_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// An audit entry from `SELECT id, at, actor, action, target, outcome,
/// detail`.
pub(crate) fn audit_from_row(r: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.get(0)?,
        at: Timestamp(r.get(1)?),
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        outcome: r.get(5)?,
        detail: r.get(6)?,
    })
}
