//! Join tokens: stored as a hash, used once.

use super::*;

pub struct TokenRow {
    pub id: String,
    pub secret_hash: Vec<u8>,
    pub labels: Vec<(String, String)>,
    pub uses_left: i64,
    pub expires_at: i64,
    /// The agent a re-enroll token brings back; `None` enrolls a new agent.
    pub reenroll_agent: Option<String>,
}

pub fn token_insert(conn: &Connection, t: &TokenRow, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO join_tokens (id, secret_hash, labels, uses_left, expires_at, created_at,
                                  reenroll_agent)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            t.id,
            t.secret_hash,
            labels_to_json(&t.labels),
            t.uses_left,
            t.expires_at,
            now,
            t.reenroll_agent
        ],
    )?;
    Ok(())
}

pub fn token_get(conn: &Connection, id: &str) -> Result<Option<TokenRow>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, secret_hash, labels, uses_left, expires_at, reenroll_agent
             FROM join_tokens WHERE id = ?1",
            [id],
            |r| {
                Ok(TokenRow {
                    id: r.get(0)?,
                    secret_hash: r.get(1)?,
                    labels: labels_from_json(r.get(2)?)?,
                    uses_left: r.get(3)?,
                    expires_at: r.get(4)?,
                    reenroll_agent: r.get(5)?,
                })
            },
        )
        .optional()?)
}

/// Take one use of a token; false when none is left.
pub fn token_consume(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn.execute(
        "UPDATE join_tokens SET uses_left = uses_left - 1 WHERE id = ?1 AND uses_left > 0",
        [id],
    )? == 1)
}
