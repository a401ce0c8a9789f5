//! A certificate's renewal facts, read inside the caller's transaction.

use certfleet_protocol::message::{CertState, RenewalInfo, Timestamp};
use rusqlite::Connection;

use crate::error::Result;
use crate::renewal::policy;
use crate::store::{self, CertRow};

/// When `row` is due, from its instance's setting.
pub fn due_at(conn: &Connection, row: &CertRow) -> Result<i64> {
    let configured = store::instance_get(conn, &row.info.instance)?
        .and_then(|i| i.spec.renew_before_days)
        .map(|d| i64::from(d) * 86_400);
    Ok(policy::due_at(
        &row.info.id,
        row.info.not_before.0,
        row.info.not_after.0,
        configured,
        None,
    ))
}

/// Renewal facts shown with a certificate in service.
pub fn info(conn: &Connection, row: &CertRow) -> Result<Option<RenewalInfo>> {
    if !matches!(row.info.state, CertState::Active | CertState::Expired) {
        return Ok(None);
    }
    Ok(Some(RenewalInfo {
        due_at: Timestamp(due_at(conn, row)?),
        blocked: row.renewal_blocked.clone(),
        last_error: row.renewal_error.clone(),
        attempts: row.renewal_attempts,
        next_attempt_at: row.renewal_next_at.map(Timestamp),
    }))
}
