//! A rollout's steps inside the caller's transaction: a strategy checked
//! and converted, a rollout created (superseding the one before on the
//! lineage), a target sent its certificate, its answer shown.

use certfleet_protocol::message::{RolloutInfo, RolloutTargetInfo, StrategySpec, Timestamp};
use rusqlite::Connection;

use crate::error::{internal, Result, ServiceError};
use crate::rollout::policy::{self, Strategy, TargetState, WaveSize};
use crate::store::{self, AuditRecord, RolloutRow, RolloutTargetRow};

/// Upper bound of a rollout's offline deadline.
pub const MAX_OFFLINE_DEADLINE_SECS: u64 = 7 * 86_400;

/// Check and convert an operator's strategy.
pub fn strategy_from_spec(spec: &StrategySpec) -> std::result::Result<Strategy, String> {
    let wave = WaveSize::parse(&spec.wave)?;
    if spec.offline_deadline_secs == 0 || spec.offline_deadline_secs > MAX_OFFLINE_DEADLINE_SECS {
        return Err("--offline-deadline must be between 1s and 7d".into());
    }
    if spec.pause_secs > MAX_OFFLINE_DEADLINE_SECS {
        return Err("--pause must be at most 7d".into());
    }
    Ok(Strategy {
        canary: spec.canary,
        wave,
        pause_secs: spec.pause_secs,
        max_failures: spec.max_failures,
        offline_deadline_secs: spec.offline_deadline_secs,
    })
}

pub fn spec_from_strategy(s: &Strategy) -> StrategySpec {
    StrategySpec {
        canary: s.canary,
        wave: s.wave.render(),
        pause_secs: s.pause_secs,
        max_failures: s.max_failures,
        offline_deadline_secs: s.offline_deadline_secs,
    }
}

pub(crate) fn parse_strategy(text: &str) -> Result<Strategy> {
    serde_json::from_str(text).map_err(|e| internal(format!("stored rollout strategy: {e}")))
}

/// Rollout as the operator sees it.
pub fn info(conn: &Connection, row: &RolloutRow) -> Result<RolloutInfo> {
    let strategy = parse_strategy(&row.strategy)?;
    let targets = store::rollout_targets(conn, &row.id)?;
    let waves = targets.iter().map(|t| t.wave + 1).max().unwrap_or(0);
    Ok(RolloutInfo {
        id: row.id.clone(),
        kind: row.kind.clone(),
        lineage: row.lineage.clone(),
        certificate: row.certificate.clone(),
        previous: row.previous.clone(),
        state: row.state.clone(),
        reason: row.reason.clone(),
        strategy: spec_from_strategy(&strategy),
        current_wave: row.current_wave,
        waves,
        targets: targets
            .into_iter()
            .map(|t| RolloutTargetInfo {
                agent: t.agent,
                agent_name: t.agent_name,
                target: t.target,
                wave: t.wave,
                state: t.state,
                error: t.error,
            })
            .collect(),
        created_at: Timestamp(row.created_at),
        updated_at: Timestamp(row.updated_at),
    })
}

/// Create a rollout inside the caller's transaction. `targets` are
/// (agent, agent name, target); they are ordered and planned here. A
/// running or paused rollout of the same lineage refuses the new one unless
/// `supersede` (renewals replace what was in progress).
#[allow(clippy::too_many_arguments)]
pub fn create(
    conn: &Connection,
    kind: &str,
    lineage: &str,
    certificate: &str,
    previous: Option<&str>,
    mut targets: Vec<(String, String, String)>,
    strategy: &Strategy,
    supersede: bool,
    actor: &str,
    now: i64,
) -> Result<RolloutRow> {
    if let Some(active) = store::rollout_active_for(conn, lineage)? {
        if !supersede {
            return Err(ServiceError::Conflict(format!(
                "rollout {} of this certificate's lineage is {}; wait for it, or pause/abort it \
                 (certfleet rollout abort {}) before starting another",
                active.id, active.state, active.id
            )));
        }
        let mut old = active;
        old.state = "aborted".into();
        old.reason = Some(format!("superseded by a new {kind} rollout"));
        old.updated_at = now;
        store::rollout_update(conn, &old)?;
        skip_waiting(conn, &old.id, now)?;
    }
    targets.sort_by(|a, b| (&a.1, &a.2, &a.0).cmp(&(&b.1, &b.2, &b.0)));
    let waves = policy::plan(targets.len(), strategy);
    let row = RolloutRow {
        id: store::new_id("roll"),
        kind: kind.to_string(),
        lineage: lineage.to_string(),
        certificate: certificate.to_string(),
        previous: previous.map(str::to_string),
        strategy: serde_json::to_string(strategy).map_err(internal)?,
        state: "running".into(),
        reason: None,
        current_wave: -1,
        wave_started_at: None,
        wave_done_at: None,
        created_at: now,
        updated_at: now,
        retry_attempts: 0,
        retry_at: None,
    };
    store::rollout_insert(conn, &row)?;
    // The new rollout decides what the lineage's targets get from now on;
    // an earlier one waiting for a retry must not fight it.
    store::rollout_supersede_retries(conn, lineage, &row.id, now)?;
    for (i, ((agent, agent_name, target), wave)) in targets.into_iter().zip(waves).enumerate() {
        store::rollout_target_insert(
            conn,
            &row.id,
            &RolloutTargetRow {
                agent,
                agent_name,
                target,
                position: i as i64,
                wave,
                state: TargetState::Waiting.as_str().into(),
                error: None,
                sent_at: None,
            },
        )?;
    }
    store::audit_insert(
        conn,
        now,
        &AuditRecord {
            actor,
            action: "rollout.start",
            target: &row.id,
            outcome: "ok",
            detail: &format!("kind={kind} certificate={certificate} lineage={lineage}"),
        },
    )?;
    Ok(row)
}

/// Point one target's deployment at the rollout's certificate and mark the
/// target in progress (a wave starting, or a failed target retried).
pub(crate) fn send_to_target(
    conn: &Connection,
    row: &RolloutRow,
    agent: &str,
    target: &str,
    now: i64,
) -> Result<()> {
    store::deployment_upsert(conn, agent, target, &row.lineage, &row.certificate, now)?;
    store::rollout_target_set(
        conn,
        &row.id,
        agent,
        target,
        TargetState::InProgress.as_str(),
        None,
        now,
    )?;
    Ok(())
}

pub(crate) fn skip_waiting(conn: &Connection, rollout: &str, now: i64) -> Result<()> {
    for t in store::rollout_targets(conn, rollout)? {
        if t.state == TargetState::Waiting.as_str() {
            store::rollout_target_set(conn, rollout, &t.agent, &t.target, "skipped", None, now)?;
        }
    }
    Ok(())
}
