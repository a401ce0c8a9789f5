//! Rollouts, their targets, and the strategy each lineage remembers.

use super::*;

/// A stored rollout.
#[derive(Debug, Clone)]
pub struct RolloutRow {
    pub id: String,
    pub kind: String,
    pub lineage: String,
    pub certificate: String,
    pub previous: Option<String>,
    pub strategy: String,
    pub state: String,
    pub reason: Option<String>,
    pub current_wave: i64,
    pub wave_started_at: Option<i64>,
    pub wave_done_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Automatic retries made so far (renewal rollouts only).
    pub retry_attempts: u32,
    /// When the next automatic retry is due; `None` when none is planned.
    pub retry_at: Option<i64>,
}

/// One (agent, target) of a rollout.
#[derive(Debug, Clone)]
pub struct RolloutTargetRow {
    pub agent: String,
    pub agent_name: String,
    pub target: String,
    pub position: i64,
    pub wave: u32,
    pub state: String,
    pub error: Option<String>,
    pub sent_at: Option<i64>,
}

pub(super) const ROLLOUT_COLS: &str =
    "id, kind, lineage, certificate, previous, strategy, state, reason, \
    current_wave, wave_started_at, wave_done_at, created_at, updated_at, retry_attempts, retry_at";

pub(super) fn rollout_from_row(r: &Row<'_>) -> Result<RolloutRow, rusqlite::Error> {
    Ok(RolloutRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        lineage: r.get(2)?,
        certificate: r.get(3)?,
        previous: r.get(4)?,
        strategy: r.get(5)?,
        state: r.get(6)?,
        reason: r.get(7)?,
        current_wave: r.get(8)?,
        wave_started_at: r.get(9)?,
        wave_done_at: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
        retry_attempts: r.get(13)?,
        retry_at: r.get(14)?,
    })
}

pub fn rollout_insert(conn: &Connection, r: &RolloutRow) -> Result<(), StoreError> {
    conn.execute(
        &format!("INSERT INTO rollouts ({ROLLOUT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"),
        params![
            r.id,
            r.kind,
            r.lineage,
            r.certificate,
            r.previous,
            r.strategy,
            r.state,
            r.reason,
            r.current_wave,
            r.wave_started_at,
            r.wave_done_at,
            r.created_at,
            r.updated_at,
            r.retry_attempts,
            r.retry_at
        ],
    )?;
    Ok(())
}

pub fn rollout_update(conn: &Connection, r: &RolloutRow) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE rollouts SET state = ?2, reason = ?3, current_wave = ?4, wave_started_at = ?5,
         wave_done_at = ?6, updated_at = ?7, retry_attempts = ?8, retry_at = ?9 WHERE id = ?1",
        params![
            r.id,
            r.state,
            r.reason,
            r.current_wave,
            r.wave_started_at,
            r.wave_done_at,
            r.updated_at,
            r.retry_attempts,
            r.retry_at
        ],
    )?;
    Ok(())
}

pub fn rollout_get(conn: &Connection, id: &str) -> Result<Option<RolloutRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {ROLLOUT_COLS} FROM rollouts WHERE id = ?1"),
            [id],
            rollout_from_row,
        )
        .optional()?)
}

/// Rollouts, newest first; with `states`, only those in one of them.
pub fn rollout_list(
    conn: &Connection,
    states: Option<&[&str]>,
) -> Result<Vec<RolloutRow>, StoreError> {
    // The filter is in SQL: the reconciler asks for the running few among
    // every rollout ever made.
    let filter = match states {
        Some(states) => format!(
            "WHERE state IN ({})",
            (1..=states.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => String::new(),
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ROLLOUT_COLS} FROM rollouts {filter} ORDER BY created_at DESC, id"
    ))?;
    let params = rusqlite::params_from_iter(states.unwrap_or(&[]).iter());
    let rows = stmt.query_map(params, rollout_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Rollouts with an automatic retry due at or before `now`.
pub fn rollout_retries_due(conn: &Connection, now: i64) -> Result<Vec<RolloutRow>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {ROLLOUT_COLS} FROM rollouts WHERE retry_at IS NOT NULL AND retry_at <= ?1
         ORDER BY retry_at, id"
    ))?;
    let rows = stmt.query_map([now], rollout_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Bring forward to `now` the retry of every rollout with a failed target
/// on `agent`: the agent is back, or it just installed something, so the
/// cause of the failure may be gone. Returns how many were brought forward.
pub fn rollout_retry_now_for_agent(
    conn: &Connection,
    agent: &str,
    now: i64,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        // Candidates come from the partial index on `retry_at` (a handful),
        // each checked by a primary-key lookup: every agent's hello runs
        // this, so it must not scan the targets of every rollout ever made.
        "UPDATE rollouts SET retry_at = ?2
         WHERE retry_at IS NOT NULL AND retry_at > ?2
           AND EXISTS (SELECT 1 FROM rollout_targets t
                       WHERE t.rollout = rollouts.id AND t.agent = ?1 AND t.state = 'failed')",
        params![agent, now],
    )?)
}

/// End every earlier rollout of `lineage` that still waits for a retry: a
/// newer rollout (a deploy or the next renewal) now decides what its
/// targets get. A halted one becomes `aborted` so `status` stops counting
/// it; a completed one stays completed.
pub fn rollout_supersede_retries(
    conn: &Connection,
    lineage: &str,
    by: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE rollouts SET
           state = CASE WHEN state = 'halted' THEN 'aborted' ELSE state END,
           reason = CASE WHEN state = 'halted' THEN 'superseded by rollout ' || ?2 ELSE reason END,
           retry_at = NULL, updated_at = ?3
         WHERE lineage = ?1 AND id != ?2 AND (state = 'halted' OR retry_at IS NOT NULL)",
        params![lineage, by, now],
    )?;
    Ok(())
}

/// The strategy of a lineage's last deploy, as stored JSON.
pub fn lineage_strategy(conn: &Connection, lineage: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT strategy FROM lineage_strategies WHERE lineage = ?1",
            [lineage],
            |r| r.get(0),
        )
        .optional()?)
}

/// Remember `strategy` (JSON) as the lineage's deploy strategy.
pub fn lineage_strategy_set(
    conn: &Connection,
    lineage: &str,
    strategy: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO lineage_strategies (lineage, strategy, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (lineage) DO UPDATE SET strategy = excluded.strategy,
           updated_at = excluded.updated_at",
        params![lineage, strategy, now],
    )?;
    Ok(())
}

/// The running or paused rollout of a lineage.
pub fn rollout_active_for(
    conn: &Connection,
    lineage: &str,
) -> Result<Option<RolloutRow>, StoreError> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {ROLLOUT_COLS} FROM rollouts
                 WHERE lineage = ?1 AND state IN ('running', 'paused')"
            ),
            [lineage],
            rollout_from_row,
        )
        .optional()?)
}

pub fn rollout_target_insert(
    conn: &Connection,
    rollout: &str,
    t: &RolloutTargetRow,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO rollout_targets (rollout, agent, target, position, wave, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![rollout, t.agent, t.target, t.position, t.wave, t.state],
    )?;
    Ok(())
}

pub fn rollout_targets(
    conn: &Connection,
    rollout: &str,
) -> Result<Vec<RolloutTargetRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT t.agent, COALESCE(a.name, t.agent), t.target, t.position, t.wave, t.state, t.error,
                t.sent_at
         FROM rollout_targets t LEFT JOIN agents a ON a.id = t.agent
         WHERE t.rollout = ?1 ORDER BY t.position",
    )?;
    let rows = stmt.query_map([rollout], |r| {
        Ok(RolloutTargetRow {
            agent: r.get(0)?,
            agent_name: r.get(1)?,
            target: r.get(2)?,
            position: r.get(3)?,
            wave: r.get(4)?,
            state: r.get(5)?,
            error: r.get(6)?,
            sent_at: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn rollout_target_set(
    conn: &Connection,
    rollout: &str,
    agent: &str,
    target: &str,
    state: &str,
    error: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE rollout_targets SET state = ?4, error = ?5,
           sent_at = CASE WHEN ?4 = 'in_progress' THEN ?6 ELSE sent_at END,
           failed_since = CASE WHEN ?4 = 'failed' THEN COALESCE(failed_since, ?6)
                               WHEN ?4 = 'installed' THEN NULL ELSE failed_since END,
           done_at = CASE WHEN ?4 IN ('installed', 'failed', 'skipped') THEN ?6 ELSE done_at END
         WHERE rollout = ?1 AND agent = ?2 AND target = ?3",
        params![rollout, agent, target, state, error, now],
    )?;
    Ok(())
}

/// (agent, agent name, target) of every deployment of a lineage, on agents
/// that have not been removed.
pub fn lineage_deployments(
    conn: &Connection,
    lineage: &str,
) -> Result<Vec<(String, String, String)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.agent, a.name, d.target FROM deployments d JOIN agents a ON a.id = d.agent
         WHERE d.lineage = ?1 AND a.removed_at IS NULL ORDER BY a.name, d.target",
    )?;
    let rows = stmt.query_map([lineage], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Where one deployment stands.
#[derive(Debug, Clone)]
pub struct DeploymentState {
    pub desired: String,
    pub installed: Option<String>,
    pub status: String,
    pub last_error: Option<String>,
}

/// Every deployment of a lineage by (agent, target): one query for a
/// rollout pass instead of one per target.
pub fn deployments_of_lineage(
    conn: &Connection,
    lineage: &str,
) -> Result<std::collections::HashMap<(String, String), DeploymentState>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT agent, target, desired_cert, installed_cert, status, last_error
         FROM deployments WHERE lineage = ?1",
    )?;
    let rows = stmt.query_map([lineage], |r| {
        Ok((
            (r.get(0)?, r.get(1)?),
            DeploymentState {
                desired: r.get(2)?,
                installed: r.get(3)?,
                status: r.get(4)?,
                last_error: r.get(5)?,
            },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Ids of the agents that are enrolled and not removed, among `rollout`'s
/// targets.
pub fn rollout_live_agents(
    conn: &Connection,
    rollout: &str,
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT DISTINCT t.agent FROM rollout_targets t JOIN agents a ON a.id = t.agent
         WHERE t.rollout = ?1 AND a.removed_at IS NULL",
    )?;
    let rows = stmt.query_map([rollout], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The deployment of (agent, target), if any.
pub fn deployment_of(
    conn: &Connection,
    agent: &str,
    target: &str,
) -> Result<Option<DeploymentState>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT desired_cert, installed_cert, status, last_error FROM deployments
             WHERE agent = ?1 AND target = ?2",
            params![agent, target],
            |r| {
                Ok(DeploymentState {
                    desired: r.get(0)?,
                    installed: r.get(1)?,
                    status: r.get(2)?,
                    last_error: r.get(3)?,
                })
            },
        )
        .optional()?)
}

/// Deployments that hold or want a certificate: (agent name, target).
pub fn deployments_using(
    conn: &Connection,
    cert: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT a.name, d.target FROM deployments d JOIN agents a ON a.id = d.agent
         WHERE (d.installed_cert = ?1 OR d.desired_cert = ?1) AND a.removed_at IS NULL
         ORDER BY a.name, d.target",
    )?;
    let rows = stmt.query_map([cert], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
