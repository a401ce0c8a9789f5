//! Identity CA and credentials of admins and agents.

use super::*;

pub struct IdentityCaRow {
    pub cert_pem: String,
    pub key_sealed: Vec<u8>,
}

pub fn identity_ca_get(conn: &Connection) -> Result<Option<IdentityCaRow>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT cert_pem, key_sealed FROM identity_ca WHERE id = 1",
            [],
            |r| {
                Ok(IdentityCaRow {
                    cert_pem: r.get(0)?,
                    key_sealed: r.get(1)?,
                })
            },
        )
        .optional()?)
}

pub fn identity_ca_put(conn: &Connection, row: &IdentityCaRow, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO identity_ca (id, cert_pem, key_sealed, created_at) VALUES (1, ?1, ?2, ?3)",
        params![row.cert_pem, row.key_sealed, now],
    )?;
    Ok(())
}

/// A client credential the identity CA issued.
#[derive(Debug, Clone)]
pub struct CredentialRow {
    pub serial: String,
    pub role: String,
    pub subject: String,
    pub not_after: i64,
    pub revoked_at: Option<i64>,
}

pub fn credential_insert(conn: &Connection, c: &CredentialRow, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO credentials (serial, role, subject, not_after, created_at, revoked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![c.serial, c.role, c.subject, c.not_after, now, c.revoked_at],
    )?;
    Ok(())
}

pub fn credential_get(
    conn: &Connection,
    serial: &str,
) -> Result<Option<CredentialRow>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT serial, role, subject, not_after, revoked_at FROM credentials WHERE serial = ?1",
        )?
        .query_row(
            [serial],
            |r| {
                Ok(CredentialRow {
                    serial: r.get(0)?,
                    role: r.get(1)?,
                    subject: r.get(2)?,
                    not_after: r.get(3)?,
                    revoked_at: r.get(4)?,
                })
            },
        )
        .optional()?)
}
