//! Self-healing renewal rollouts: a renewal rollout that halted, or
//! completed with failed targets, is restarted on its own until every
//! target serves the new certificate or an operator aborts it.
//!
//! The schedule lives in the rollout's row (`retry_at`, `retry_attempts`),
//! set by the reconciler when the rollout ends (see [`policy::retry_at`]),
//! so a restarted controller keeps it. A retry is a plain state change in
//! one transaction — failed targets back to in progress, their deployments
//! pointed at the certificate again, the rollout running — after which the
//! ordinary reconcile pass drives it; running it twice is harmless because
//! a rollout whose retry was taken has no `retry_at` any more. An agent
//! that reconnects or reports a successful install brings its rollouts'
//! retries forward to now.

use std::sync::Arc;

use certfleet_protocol::message::CertState;
use rusqlite::Connection;
use time::OffsetDateTime;
use tracing::info;

use super::policy::TargetState;
use crate::agent_bus::SessionEvent;
use crate::error::Result;
use crate::service::Service;
use crate::store::{self, AuditRecord, RolloutRow};

/// `reason` followed by when the next automatic retry is due, if one is.
pub(super) fn with_retry_note(reason: &str, row: &RolloutRow) -> String {
    match row.retry_at {
        Some(at) => {
            let when = OffsetDateTime::from_unix_timestamp(at)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| at.to_string());
            format!(
                "{reason}; automatic retry {} at {when} (certfleet rollout abort {} stops it)",
                row.retry_attempts + 1,
                row.id
            )
        }
        None => reason.to_string(),
    }
}

/// Restart one rollout whose retry is due, inside the caller's
/// transaction. Returns the agents to poke.
fn retry_one(conn: &Connection, mut row: RolloutRow, now: i64) -> Result<Vec<String>> {
    row.retry_at = None;
    row.updated_at = now;
    let current =
        store::cert_get(conn, &row.certificate)?.is_some_and(|c| c.info.state == CertState::Active);
    if !current || !matches!(row.state.as_str(), "halted" | "completed") {
        // Revoked or expired meanwhile, or the operator took over: there is
        // nothing left to heal towards.
        store::rollout_update(conn, &row)?;
        return Ok(Vec::new());
    }
    let live = store::rollout_live_agents(conn, &row.id)?;
    let mut poke = Vec::new();
    for t in store::rollout_targets(conn, &row.id)? {
        if t.state != TargetState::Failed.as_str() {
            continue;
        }
        if !live.contains(&t.agent) {
            // A removed agent has no deployment to heal; retrying it would
            // fail forever.
            store::rollout_target_set(
                conn,
                &row.id,
                &t.agent,
                &t.target,
                TargetState::Skipped.as_str(),
                Some("agent was removed"),
                now,
            )?;
            continue;
        }
        super::send_to_target(conn, &row, &t.agent, &t.target, now)?;
        poke.push(t.agent);
    }
    row.retry_attempts = row.retry_attempts.saturating_add(1);
    row.state = "running".into();
    row.wave_done_at = None;
    row.reason = Some(format!(
        "automatic retry {} of {} failed target(s)",
        row.retry_attempts,
        poke.len()
    ));
    store::rollout_update(conn, &row)?;
    store::audit_insert(
        conn,
        now,
        &AuditRecord {
            actor: "controller",
            action: "rollout.retry",
            target: &row.id,
            outcome: "ok",
            detail: &format!("attempt={} targets={}", row.retry_attempts, poke.len()),
        },
    )?;
    info!(rollout = %row.id, attempt = row.retry_attempts, targets = poke.len(), "retrying rollout");
    Ok(poke)
}

impl Service {
    /// Restart every rollout whose automatic retry is due at `now`.
    pub(super) async fn retry_due_rollouts(self: &Arc<Self>, now: i64) -> Result<()> {
        let poke = self
            .store
            .call(move |c| -> Result<Vec<String>> {
                let tx = c.transaction()?;
                let mut poke = Vec::new();
                for row in store::rollout_retries_due(&tx, now)? {
                    poke.extend(retry_one(&tx, row, now)?);
                }
                tx.commit()?;
                Ok(poke)
            })
            .await?;
        for agent in &poke {
            self.sessions.send(agent, SessionEvent::Poke);
        }
        Ok(())
    }

    /// `agent` is back or has just installed something: retry at once the
    /// rollouts where it failed.
    pub(crate) async fn retry_rollouts_of_agent(&self, agent: String) -> Result<()> {
        let now = self.now().unix_timestamp();
        let moved = self
            .store
            .call(move |c| -> Result<usize> {
                Ok(store::rollout_retry_now_for_agent(c, &agent, now)?)
            })
            .await?;
        if moved > 0 {
            self.rollout_wake.notify_one();
        }
        Ok(())
    }
}
