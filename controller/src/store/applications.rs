//! Applications to an issuer and their progress.

use super::*;

pub(super) const APPLICATION_COLS: &str =
    "id, instance, domains, state, attempts, last_error, certificate, created_at, updated_at";

pub(super) fn application_from_row(r: &Row<'_>) -> Result<ApplicationInfo, rusqlite::Error> {
    Ok(ApplicationInfo {
        id: r.get(0)?,
        instance: r.get(1)?,
        domains: json_list(r.get(2)?)?,
        state: parse(r.get(3)?)?,
        attempts: r.get(4)?,
        last_error: r.get(5)?,
        certificate: r.get(6)?,
        created_at: Timestamp(r.get(7)?),
        updated_at: Timestamp(r.get(8)?),
    })
}

pub fn application_insert(conn: &Connection, a: &ApplicationInfo) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO applications ({APPLICATION_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    ))?
    .execute(params![
        a.id,
        a.instance,
        to_json(&a.domains),
        a.state.as_str(),
        a.attempts,
        a.last_error,
        a.certificate,
        a.created_at.0,
        a.updated_at.0
    ])?;
    Ok(())
}

pub fn application_get(conn: &Connection, id: &str) -> Result<Option<ApplicationInfo>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {APPLICATION_COLS} FROM applications WHERE id = ?1"
        ))?
        .query_row([id], application_from_row)
        .optional()?)
}

pub fn application_update(conn: &Connection, a: &ApplicationInfo) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE applications SET state = ?2, attempts = ?3, last_error = ?4, certificate = ?5,
         updated_at = ?6 WHERE id = ?1",
    )?
    .execute(params![
        a.id,
        a.state.as_str(),
        a.attempts,
        a.last_error,
        a.certificate,
        a.updated_at.0
    ])?;
    Ok(())
}

pub fn applications_in_flight(conn: &Connection) -> Result<Vec<ApplicationInfo>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {APPLICATION_COLS} FROM applications
         WHERE state IN ('pending', 'validating') ORDER BY created_at"
    ))?;
    let rows = stmt.query_map([], application_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The number of applications in flight.
pub fn applications_in_flight_count(conn: &Connection) -> Result<usize, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM applications WHERE state IN ('pending', 'validating')",
        [],
        |r| r.get(0),
    )?;
    Ok(n.max(0) as usize)
}
