//! Rows of fallback issuers: which issuer each lineage renews from
//! (`lineage_issuers`) and which issuer an application was sent to
//! (`applications.issuer`).
//!
//! A lineage has a row only once it has failed over or failed with
//! fallback issuers configured; no row means "on the primary, never
//! failed". `fallback_since` is NULL exactly while the active issuer is the
//! primary, so "who renews from a fallback issuer, since when" is
//! [`on_fallback`], one indexed scan.

use certfleet_protocol::message::{InstanceInfo, IssuingStatus, Timestamp};
use rusqlite::{params, Connection, OptionalExtension};

use super::StoreError;

/// A lineage's stored fallback state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineageIssuer {
    pub lineage: String,
    pub active_issuer: String,
    pub active_since: i64,
    pub fallback_since: Option<i64>,
    pub failing_since: Option<i64>,
    pub rate_limited: bool,
}

impl LineageIssuer {
    /// Its public form, shown with the lineage's instances.
    pub fn status(&self) -> IssuingStatus {
        IssuingStatus {
            lineage: self.lineage.clone(),
            active_issuer: self.active_issuer.clone(),
            active_since: Timestamp(self.active_since),
            fallback_since: self.fallback_since.map(Timestamp),
            failing_since: self.failing_since.map(Timestamp),
        }
    }
}

const COLS: &str =
    "lineage, active_issuer, active_since, fallback_since, failing_since, rate_limited";

fn from_row(r: &rusqlite::Row<'_>) -> Result<LineageIssuer, rusqlite::Error> {
    Ok(LineageIssuer {
        lineage: r.get(0)?,
        active_issuer: r.get(1)?,
        active_since: r.get(2)?,
        fallback_since: r.get(3)?,
        failing_since: r.get(4)?,
        rate_limited: r.get(5)?,
    })
}

/// The fallback state of `lineage`, if it has one.
pub fn get(conn: &Connection, lineage: &str) -> Result<Option<LineageIssuer>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLS} FROM lineage_issuers WHERE lineage = ?1"
        ))?
        .query_row([lineage], from_row)
        .optional()?)
}

/// Store the fallback state of a lineage.
pub fn put(conn: &Connection, row: &LineageIssuer, at: i64) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO lineage_issuers ({COLS}, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (lineage) DO UPDATE SET active_issuer = ?2, active_since = ?3,
         fallback_since = ?4, failing_since = ?5, rate_limited = ?6, updated_at = ?7"
    ))?
    .execute(params![
        row.lineage,
        row.active_issuer,
        row.active_since,
        row.fallback_since,
        row.failing_since,
        row.rate_limited,
        at
    ])?;
    Ok(())
}

/// Every lineage renewing from a fallback issuer, longest first: the
/// lineage, the instance of its newest certificate, the active issuer and
/// when the lineage left its primary.
pub fn on_fallback(conn: &Connection) -> Result<Vec<OnFallback>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT li.lineage, li.active_issuer, li.fallback_since,
                (SELECT c.instance FROM certificates c WHERE c.lineage = li.lineage
                 ORDER BY c.created_at DESC, c.id DESC LIMIT 1)
         FROM lineage_issuers li WHERE li.fallback_since IS NOT NULL
         ORDER BY li.fallback_since, li.lineage",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(OnFallback {
            lineage: r.get(0)?,
            active_issuer: r.get(1)?,
            fallback_since: r.get(2)?,
            instance: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A lineage renewing from a fallback issuer ([`on_fallback`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnFallback {
    pub lineage: String,
    /// The instance of the lineage's newest certificate.
    pub instance: Option<String>,
    pub active_issuer: String,
    pub fallback_since: i64,
}

/// Record that application `app` goes to `issuer` rather than its
/// instance's issuer.
pub fn application_set_issuer(
    conn: &Connection,
    app: &str,
    issuer: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE applications SET issuer = ?2 WHERE id = ?1")?
        .execute(params![app, issuer])?;
    Ok(())
}

/// The issuer application `app` was sent to when it is not its instance's.
pub fn application_issuer(conn: &Connection, app: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT issuer FROM applications WHERE id = ?1")?
        .query_row([app], |r| r.get(0))
        .optional()?
        .flatten())
}

/// The fallback state of the lineage an instance belongs to: the lineage
/// of its certificate, or of the certificate its application renews.
pub fn of_instance(conn: &Connection, instance: &str) -> Result<Option<LineageIssuer>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLS} FROM lineage_issuers WHERE lineage IN (
                 SELECT c.lineage FROM certificates c WHERE c.instance = ?1
                 UNION
                 SELECT c.lineage FROM applications a JOIN certificates c ON c.id = a.renews
                 WHERE a.instance = ?1)
             LIMIT 1"
        ))?
        .query_row([instance], from_row)
        .optional()?)
}

/// Fill in `issuing` on instances about to be shown.
pub fn attach(conn: &Connection, instances: &mut [InstanceInfo]) -> Result<(), StoreError> {
    for i in instances {
        i.issuing = of_instance(conn, &i.id)?.map(|row| row.status());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrate(&mut conn).unwrap();
        conn
    }

    #[test]
    fn put_get_and_the_fallback_query() {
        let conn = store();
        conn.execute_batch(
            "INSERT INTO issuers (name, kind, key_type, root_pem, ca_pem, ca_key_sealed, created_at)
             VALUES ('a', 'builtin', 'ecdsa-p256', '', '', x'', 0),
                    ('b', 'builtin', 'ecdsa-p256', '', '', x'', 0);",
        )
        .unwrap();
        assert_eq!(get(&conn, "cert-1").unwrap(), None);
        let mut row = LineageIssuer {
            lineage: "cert-1".into(),
            active_issuer: "a".into(),
            active_since: 10,
            fallback_since: None,
            failing_since: Some(20),
            rate_limited: true,
        };
        put(&conn, &row, 20).unwrap();
        assert_eq!(get(&conn, "cert-1").unwrap(), Some(row.clone()));
        assert!(on_fallback(&conn).unwrap().is_empty(), "on the primary");
        row.active_issuer = "b".into();
        row.active_since = 30;
        row.fallback_since = Some(30);
        row.failing_since = None;
        row.rate_limited = false;
        put(&conn, &row, 30).unwrap();
        assert_eq!(get(&conn, "cert-1").unwrap(), Some(row));
        let on = on_fallback(&conn).unwrap();
        assert_eq!(on.len(), 1);
        assert_eq!(on[0].active_issuer, "b");
        assert_eq!(on[0].fallback_since, 30);
    }
}
