//! Certificate instances: what may be issued under them.

use super::*;

pub(super) const INSTANCE_COLS: &str = "id, issuer, validation, max_domains, wildcard, validity_days, \
                             key_type, state, application, certificate, created_at, renew_before_secs, \
                             fallback_issuers, fallback_after_secs";

pub(super) fn instance_from_row(r: &Row<'_>) -> Result<InstanceInfo, rusqlite::Error> {
    Ok(InstanceInfo {
        id: r.get(0)?,
        spec: InstanceSpec {
            issuer: r.get(1)?,
            validation: parse::<ValidationType>(r.get(2)?)?,
            max_domains: r.get(3)?,
            wildcard: r.get(4)?,
            validity_days: r.get(5)?,
            key: parse(r.get(6)?)?,
            renew_before_days: r.get::<_, Option<i64>>(11)?.map(|s| (s / 86_400) as u32),
            fallback_issuers: json_list(r.get(12)?)?,
            fallback_after_secs: r.get::<_, Option<i64>>(13)?.map(|s| s.max(0) as u64),
        },
        state: parse(r.get(7)?)?,
        application: r.get(8)?,
        certificate: r.get(9)?,
        created_at: Timestamp(r.get(10)?),
        // Filled in by `fallback::attach` where it is shown.
        issuing: None,
    })
}

pub fn instance_insert(conn: &Connection, i: &InstanceInfo) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO instances ({INSTANCE_COLS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
    ))?
    .execute(params![
        i.id,
        i.spec.issuer,
        i.spec.validation.as_str(),
        i.spec.max_domains,
        i.spec.wildcard,
        i.spec.validity_days,
        i.spec.key.as_str(),
        i.state.as_str(),
        i.application,
        i.certificate,
        i.created_at.0,
        i.spec.renew_before_days.map(|d| i64::from(d) * 86_400),
        to_json(&i.spec.fallback_issuers),
        i.spec
            .fallback_after_secs
            .map(|s| i64::try_from(s).unwrap_or(i64::MAX))
    ])?;
    Ok(())
}

pub fn instance_get(conn: &Connection, id: &str) -> Result<Option<InstanceInfo>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {INSTANCE_COLS} FROM instances WHERE id = ?1"
        ))?
        .query_row([id], instance_from_row)
        .optional()?)
}

pub fn instance_list(conn: &Connection) -> Result<Vec<InstanceInfo>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {INSTANCE_COLS} FROM instances ORDER BY created_at, id"
    ))?;
    let rows = stmt.query_map([], instance_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn instance_update(
    conn: &Connection,
    id: &str,
    state: InstanceState,
    application: Option<&str>,
    certificate: Option<&str>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE instances SET state = ?2, application = ?3, certificate = ?4 WHERE id = ?1",
    )?
    .execute(params![id, state.as_str(), application, certificate])?;
    Ok(())
}
