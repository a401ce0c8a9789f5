//! Rollouts: putting one certificate onto a set of (agent, target) pairs in
//! waves, persisted per target so a restarted controller continues exactly
//! where it was.
//!
//! The reconciler is level-triggered: every pass reloads each running
//! rollout, folds what agents reported into its targets, asks
//! [`policy::next_step`] what to do and commits the result before poking any
//! agent. A target's deployment is pointed at the new certificate only when
//! its wave starts, so a halted rollout has touched no agent of a later wave.

pub mod policy;
mod retry;

use std::sync::Arc;
use std::time::Duration;

use certfleet_protocol::message::RolloutInfo;
use rusqlite::Connection;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::agent_bus::SessionEvent;
use crate::error::{internal, Result, ServiceError};
pub(crate) use crate::ops::rollout::parse_strategy;
pub use crate::ops::rollout::{
    create, info, spec_from_strategy, strategy_from_spec, MAX_OFFLINE_DEADLINE_SECS,
};
use crate::ops::rollout::{send_to_target, skip_waiting};
use crate::service::Service;
use crate::store::{self, AuditRecord, RolloutRow, RolloutTargetRow};
use policy::{Step, Strategy, TargetState};

/// How often running rollouts are re-examined without a poke.
pub const TICK: Duration = Duration::from_secs(1);
/// After a pass, the next one waits this many times as long as the pass
/// took (see [`Service::run_rollouts`]).
const HOLD_FACTOR: f64 = 4.0;
/// Longest hold-off between two passes.
const MAX_HOLD: Duration = Duration::from_millis(250);

/// What a reconcile pass decided, for the caller to act on after commit.
struct PassResult {
    poke: Vec<String>,
    next_wake: Option<i64>,
}

/// One pass over one running rollout, inside a transaction.
fn reconcile_one(
    conn: &Connection,
    mut row: RolloutRow,
    connected: &dyn Fn(&str) -> bool,
    now: i64,
) -> Result<PassResult> {
    let strategy = parse_strategy(&row.strategy)?;
    let mut result = PassResult {
        poke: Vec::new(),
        next_wake: None,
    };
    // Fold agents' reports into the targets of the current wave. Agents and
    // deployments are read in one query each, not one per target: a pass
    // over a 10k-target wave runs after every report.
    let in_progress: Vec<RolloutTargetRow> = store::rollout_targets(conn, &row.id)?
        .into_iter()
        .filter(|t| t.state == TargetState::InProgress.as_str())
        .collect();
    let (live, mut deployments) = if in_progress.is_empty() {
        Default::default()
    } else {
        (
            store::rollout_live_agents(conn, &row.id)?,
            store::deployments_of_lineage(conn, &row.lineage)?,
        )
    };
    for t in in_progress {
        let agent_alive = live.contains(&t.agent);
        let outcome = if !agent_alive {
            Some(("failed", Some("agent was removed".to_string())))
        } else {
            match deployments.remove(&(t.agent.clone(), t.target.clone())) {
                Some(d) if d.desired == row.certificate => match d.status.as_str() {
                    "installed" if d.installed.as_deref() == Some(row.certificate.as_str()) => {
                        Some(("installed", None))
                    }
                    "rolled_back" | "failed" => Some((
                        "failed",
                        Some(format!(
                            "{}: {}",
                            d.status,
                            d.last_error.unwrap_or_default()
                        )),
                    )),
                    _ => None,
                },
                _ => None,
            }
        };
        let outcome = outcome.or_else(|| {
            let sent = t.sent_at.unwrap_or(now);
            let deadline = sent.saturating_add(strategy.offline_deadline_secs as i64);
            if !connected(&t.agent) && now >= deadline {
                Some((
                    "failed",
                    Some(format!(
                        "agent offline: no report within the offline deadline of {}s",
                        strategy.offline_deadline_secs
                    )),
                ))
            } else {
                if !connected(&t.agent) {
                    result.next_wake = Some(result.next_wake.map_or(deadline, |w| w.min(deadline)));
                }
                None
            }
        });
        if let Some((state, error)) = outcome {
            store::rollout_target_set(
                conn,
                &row.id,
                &t.agent,
                &t.target,
                state,
                error.as_deref(),
                now,
            )?;
        }
    }

    let targets = store::rollout_targets(conn, &row.id)?;
    let views: Vec<(u32, TargetState)> = targets
        .iter()
        .map(|t| {
            (
                t.wave,
                TargetState::parse(&t.state).unwrap_or(TargetState::Waiting),
            )
        })
        .collect();
    let step = policy::next_step(
        &strategy,
        &policy::Progress {
            targets: &views,
            current_wave: row.current_wave,
            wave_done_at: row.wave_done_at,
        },
        now,
    );
    match step {
        Step::Wait { until } => {
            if let Some(u) = until {
                result.next_wake = Some(result.next_wake.map_or(u, |w| w.min(u)));
            }
            return Ok(result);
        }
        Step::WaveDone => {
            row.wave_done_at = Some(now);
            result.next_wake = Some(now.saturating_add(strategy.pause_secs as i64));
        }
        Step::StartWave(wave) => {
            for t in targets.iter().filter(|t| t.wave == wave) {
                send_to_target(conn, &row, &t.agent, &t.target, now)?;
                result.poke.push(t.agent.clone());
            }
            row.current_wave = i64::from(wave);
            row.wave_started_at = Some(now);
            row.wave_done_at = None;
            info!(rollout = %row.id, wave, targets = result.poke.len(), "starting wave");
        }
        Step::Halt(reason) => {
            warn!(rollout = %row.id, %reason, "rollout halted");
            row.state = "halted".into();
            row.retry_at = policy::retry_at(&row.kind, &views, row.retry_attempts, now);
            row.reason = Some(retry::with_retry_note(&reason, &row));
            store::audit_insert(
                conn,
                now,
                &AuditRecord {
                    actor: "controller",
                    action: "rollout.halt",
                    target: &row.id,
                    outcome: "halted",
                    detail: &reason,
                },
            )?;
        }
        Step::Complete => {
            info!(rollout = %row.id, "rollout completed");
            row.state = "completed".into();
            row.retry_at = policy::retry_at(&row.kind, &views, row.retry_attempts, now);
            if row.retry_at.is_some() {
                let failed = views
                    .iter()
                    .filter(|(_, s)| *s == TargetState::Failed)
                    .count();
                row.reason = Some(retry::with_retry_note(
                    &format!("{failed} target(s) failed within the budget"),
                    &row,
                ));
            } else if row.retry_attempts > 0 {
                row.reason = Some(format!(
                    "every target installed after {} automatic retr{}",
                    row.retry_attempts,
                    if row.retry_attempts == 1 { "y" } else { "ies" }
                ));
            }
            store::audit_insert(
                conn,
                now,
                &AuditRecord {
                    actor: "controller",
                    action: "rollout.complete",
                    target: &row.id,
                    outcome: "ok",
                    detail: "",
                },
            )?;
        }
    }
    row.updated_at = now;
    store::rollout_update(conn, &row)?;
    Ok(result)
}

impl Service {
    /// One reconcile pass over every running rollout. Returns when the next
    /// timed step is due, if any.
    pub async fn reconcile_rollouts(self: &Arc<Self>) -> Result<Option<i64>> {
        let now = self.now().unix_timestamp();
        // Due retries first: they turn halted rollouts back into running
        // ones that this same pass then drives.
        self.retry_due_rollouts(now).await?;
        let running = self
            .store
            .call(|c| store::rollout_list(c, Some(&["running"])))
            .await?;
        let mut wake: Option<i64> = None;
        for row in running {
            // A step may enable the next at once (a finished wave with no
            // pause), so keep stepping while the rollout progresses.
            for _ in 0..64 {
                let svc = self.clone();
                let id = row.id.clone();
                let pass = self
                    .store
                    .call(move |c| -> Result<Option<(PassResult, bool)>> {
                        let tx = c.transaction()?;
                        let Some(row) = store::rollout_get(&tx, &id)? else {
                            return Ok(None);
                        };
                        if row.state != "running" {
                            return Ok(None);
                        }
                        let before = (row.current_wave, row.wave_done_at, row.state.clone());
                        let connected = |a: &str| svc.sessions.is_connected(a);
                        let result = reconcile_one(&tx, row, &connected, now)?;
                        let after = store::rollout_get(&tx, &id)?
                            .map(|r| (r.current_wave, r.wave_done_at, r.state));
                        if !result.poke.is_empty() {
                            // A wave's targets are decided, not yet committed.
                            crate::error::failpoint("rollout.before_send")?;
                        }
                        tx.commit()?;
                        Ok(Some((result, after.as_ref() != Some(&before))))
                    })
                    .await?;
                let Some((pass, progressed)) = pass else {
                    break;
                };
                if !pass.poke.is_empty() {
                    // Committed; the agents are not yet told.
                    crate::error::failpoint("rollout.after_send")?;
                }
                for agent in &pass.poke {
                    self.sessions.send(agent, SessionEvent::Poke);
                }
                if let Some(w) = pass.next_wake {
                    wake = Some(wake.map_or(w, |x| x.min(w)));
                }
                if !progressed || !pass.poke.is_empty() {
                    break;
                }
            }
        }
        Ok(wake)
    }

    /// Reconcile rollouts on every change and every [`TICK`].
    ///
    /// Passes are coalesced: wake-ups that arrive while a pass runs, or
    /// while the loop holds off after one, are all served by the next single
    /// pass. The hold-off is [`HOLD_FACTOR`] times what the last pass took
    /// (at most [`MAX_HOLD`]), so a pass over a small rollout follows a
    /// change at once, while a large wave whose agents report thousands of
    /// times a second is re-read a few times a second rather than back to
    /// back, which left the store busy re-reading the wave instead of
    /// committing the reports.
    pub async fn run_rollouts(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let started = tokio::time::Instant::now();
            if let Err(e) = self.reconcile_rollouts().await {
                warn!(error = %e.to_rpc().message, "rollout pass failed");
            }
            let earliest =
                tokio::time::Instant::now() + started.elapsed().mul_f64(HOLD_FACTOR).min(MAX_HOLD);
            // The tick also covers timed steps (pauses, offline deadlines).
            tokio::select! {
                _ = self.rollout_wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep_until(earliest) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    pub async fn rollout_list(&self) -> Result<Vec<RolloutInfo>> {
        self.store
            .call(|c| -> Result<Vec<RolloutInfo>> {
                store::rollout_list(c, None)?
                    .iter()
                    .map(|r| info(c, r))
                    .collect()
            })
            .await
    }

    pub async fn rollout_show(&self, id: String) -> Result<RolloutInfo> {
        self.store
            .call(move |c| -> Result<RolloutInfo> {
                let row = store::rollout_get(c, &id)?.ok_or(ServiceError::NotFound {
                    what: "rollout",
                    id,
                })?;
                info(c, &row)
            })
            .await
    }

    /// pause, resume or abort.
    pub async fn rollout_control(
        &self,
        actor: String,
        id: String,
        action: &'static str,
    ) -> Result<RolloutInfo> {
        let now = self.now().unix_timestamp();
        let out = self
            .store
            .call(move |c| -> Result<RolloutInfo> {
                let tx = c.transaction()?;
                let mut row = store::rollout_get(&tx, &id)?.ok_or_else(|| ServiceError::NotFound {
                    what: "rollout",
                    id: id.clone(),
                })?;
                let allowed: &[&str] = match action {
                    "pause" => &["running"],
                    "resume" => &["paused"],
                    // A completed renewal rollout still retrying failed
                    // targets can be stopped too.
                    _ if row.retry_at.is_some() => &["running", "paused", "halted", "completed"],
                    _ => &["running", "paused", "halted"],
                };
                if !allowed.contains(&row.state.as_str()) {
                    let hint = match (action, row.state.as_str()) {
                        ("resume", "halted") if row.retry_at.is_some() => "; it is retried on its own (see its reason for when); fix the failing servers, or abort it to stop the retries",
                        ("resume", "halted") => "; a halted rollout stays halted — fix the failing servers and deploy again, or roll back",
                        ("resume", "aborted") => "; start a new deploy instead",
                        _ => "",
                    };
                    return Err(ServiceError::Conflict(format!(
                        "cannot {action} rollout {id}: it is {}{hint}",
                        row.state
                    )));
                }
                row.state = match action {
                    "pause" => "paused",
                    "resume" => "running",
                    _ => "aborted",
                }
                .into();
                if action == "abort" {
                    // An explicit abort is the one thing that stops a
                    // renewal rollout's automatic retries.
                    row.retry_at = None;
                }
                row.reason = Some(format!("{action} by {actor}"));
                row.updated_at = now;
                store::rollout_update(&tx, &row)?;
                if action == "abort" {
                    skip_waiting(&tx, &row.id, now)?;
                }
                store::audit_insert(
                    &tx,
                    now,
                    &AuditRecord {
                        actor: &actor,
                        action: match action {
                            "pause" => "rollout.pause",
                            "resume" => "rollout.resume",
                            _ => "rollout.abort",
                        },
                        target: &row.id,
                        outcome: "ok",
                        detail: "",
                    },
                )?;
                let out = info(&tx, &row)?;
                tx.commit()?;
                Ok(out)
            })
            .await?;
        self.rollout_wake.notify_one();
        Ok(out)
    }

    /// Re-deploy the lineage's previous certificate to every target the
    /// rollout touched, as a rollout of its own.
    pub async fn rollout_rollback(
        &self,
        actor: String,
        id: String,
        strategy: Strategy,
    ) -> Result<RolloutInfo> {
        let now = self.now().unix_timestamp();
        let out = self
            .store
            .call(move |c| -> Result<RolloutInfo> {
                let tx = c.transaction()?;
                let mut row =
                    store::rollout_get(&tx, &id)?.ok_or_else(|| ServiceError::NotFound {
                        what: "rollout",
                        id: id.clone(),
                    })?;
                let Some(previous) = row.previous.clone() else {
                    return Err(ServiceError::Conflict(format!(
                        "rollout {id} has no previous certificate to roll back to (certificate {} \
                         renews nothing)",
                        row.certificate
                    )));
                };
                let prev = store::cert_get(&tx, &previous)?
                    .ok_or_else(|| internal(format!("certificate {previous} vanished")))?;
                if matches!(
                    prev.info.state,
                    certfleet_protocol::message::CertState::Revoked
                        | certfleet_protocol::message::CertState::Expired
                ) {
                    return Err(ServiceError::Conflict(format!(
                        "the previous certificate {previous} is {}; it cannot be rolled back to",
                        prev.info.state
                    )));
                }
                let touched: Vec<(String, String, String)> = store::rollout_targets(&tx, &id)?
                    .into_iter()
                    .filter(|t| matches!(t.state.as_str(), "in_progress" | "installed" | "failed"))
                    .map(|t| (t.agent, t.agent_name, t.target))
                    .collect();
                if touched.is_empty() {
                    return Err(ServiceError::Conflict(format!(
                        "rollout {id} touched no target; there is nothing to roll back"
                    )));
                }
                if matches!(row.state.as_str(), "running" | "paused") {
                    row.state = "aborted".into();
                    row.reason = Some("rolled back".into());
                    row.updated_at = now;
                    store::rollout_update(&tx, &row)?;
                    skip_waiting(&tx, &row.id, now)?;
                }
                let new = create(
                    &tx,
                    "rollback",
                    &row.lineage,
                    &previous,
                    Some(&row.certificate),
                    touched,
                    &strategy,
                    false,
                    &actor,
                    now,
                )?;
                let out = info(&tx, &new)?;
                tx.commit()?;
                Ok(out)
            })
            .await?;
        self.rollout_wake.notify_one();
        Ok(out)
    }
}
