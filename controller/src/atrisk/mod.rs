//! At-risk items: deployments that may serve an expired certificate,
//! computed from stored state, persisted, and shown by `status`,
//! `cert list --at-risk` and `deployment list --at-risk`.
//!
//! The pass is a reconciler: it gathers the facts of every deployment with
//! an installed certificate, asks [`policy::assess`] whether it is at risk,
//! and makes the `at_risk` table equal to the answer in one transaction.
//! An item raised is audited once (`at_risk.raise`) and once when it
//! clears (`at_risk.clear`), never on the passes in between; a change of
//! reason or text on a standing item is stored without an audit record.
//! Deployments whose certificate cannot be due yet are left out by the
//! query; only the few past their due time are looked at further
//! (successor, rollout target, failed applications), each by an index.

pub mod policy;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use certfleet_protocol::message::{AtRiskItem, AtRiskStatus, Timestamp, STATUS_AT_RISK_ITEMS};
use rusqlite::Connection;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::Result;
use crate::renewal::policy as renewal;
use crate::service::Service;
use crate::store::at_risk::{self as table, ServedDeployment, StoredItem};
use crate::store::{self, AuditRecord};
use policy::{Agent, Facts, OnFallback, Renewal, Replacement, Risk, Served};

/// How often the pass runs.
pub const TICK: Duration = Duration::from_secs(2);

/// Longest renewal chain followed from a served certificate to its newest
/// successor (each renewal adds one link; a target far behind is rare).
const MAX_CHAIN: usize = 64;

/// The configured `renew_before` as renewal reads it (whole days of the
/// instance's setting; see `renewal::due_at`).
fn configured_renew_before(secs: Option<i64>) -> Option<i64> {
    secs.map(|s| (s / 86_400) * 86_400)
}

/// The newest certificate renewing `cert`, following the chain; `None`
/// when nothing renews it.
fn newest_successor(conn: &Connection, cert: &str) -> Result<Option<String>> {
    let mut head: Option<String> = None;
    for _ in 0..MAX_CHAIN {
        let from = head.as_deref().unwrap_or(cert);
        match table::successor(conn, from)? {
            Some((id, _)) => head = Some(id),
            None => break,
        }
    }
    Ok(head)
}

/// What became of the newer certificate `newer` on this deployment.
fn replacement_by(conn: &Connection, d: &ServedDeployment, newer: &str) -> Result<Replacement> {
    let deployment_failed =
        d.desired == newer && matches!(d.status.as_str(), "failed" | "rolled_back");
    let deployment_error = || {
        format!(
            "{}: {}",
            d.status,
            d.last_error.as_deref().unwrap_or("no error reported")
        )
    };
    let Some(t) = table::rollout_of_target(conn, newer, &d.agent, &d.target)? else {
        return Ok(if deployment_failed {
            Replacement::Failed {
                error: Some(deployment_error()),
                since: d.updated_at,
            }
        } else {
            Replacement::Pending
        });
    };
    if t.state == "installed" {
        // The report is on its way into the deployment row.
        return Ok(Replacement::Pending);
    }
    if let Some(since) = t.failed_since {
        return Ok(Replacement::Failed {
            error: t.error.clone(),
            since,
        });
    }
    if t.state == "failed" {
        return Ok(Replacement::Failed {
            error: t.error.clone().or_else(|| Some(deployment_error())),
            since: t.rollout_updated_at,
        });
    }
    if matches!(t.state.as_str(), "waiting" | "skipped")
        && matches!(t.rollout_state.as_str(), "halted" | "aborted")
    {
        return Ok(Replacement::Halted {
            why: format!(
                "rollout {} {} before reaching this target: {}",
                t.rollout,
                t.rollout_state,
                t.rollout_reason.as_deref().unwrap_or("no reason given")
            ),
            since: t.rollout_updated_at,
        });
    }
    Ok(if deployment_failed {
        Replacement::Failed {
            error: Some(deployment_error()),
            since: d.updated_at,
        }
    } else {
        Replacement::Pending
    })
}

/// The facts of one deployment, or `None` when it is surely not at risk
/// at `now` (before its due time and its half window).
fn facts_of(
    conn: &Connection,
    d: &ServedDeployment,
    connected: &HashSet<String>,
    seen: &HashMap<String, i64>,
    on_fallback: &HashMap<String, OnFallback>,
    now: i64,
) -> Result<Option<Facts>> {
    let configured = configured_renew_before(d.renew_before_secs);
    let served = Served {
        not_after: d.not_after,
        due_at: renewal::due_at(&d.installed, d.not_before, d.not_after, configured, None),
        renew_before: renewal::renew_before(d.not_after - d.not_before, configured),
    };
    let fallback = on_fallback.get(&d.lineage).cloned();
    if now < served.due_at && now < policy::half_window_at(&served) && fallback.is_none() {
        return Ok(None);
    }
    let newer = if d.desired != d.installed {
        Some(d.desired.clone())
    } else {
        newest_successor(conn, &d.installed)?
    };
    let replacement = match newer {
        Some(newer) => replacement_by(conn, d, &newer)?,
        None => Replacement::NotIssued(match (&d.renewal_blocked, &d.renewal_error) {
            (Some(why), _) => Renewal::NoInstance { why: why.clone() },
            (None, Some(error)) => Renewal::Failing {
                error: error.clone(),
                first_failure: table::first_failed_renewal(conn, &d.installed)?.unwrap_or(now),
            },
            (None, None) => Renewal::Healthy,
        }),
    };
    let deadline = match store::lineage_strategy(conn, &d.lineage)? {
        Some(text) => crate::rollout::parse_strategy(&text)?.offline_deadline_secs,
        None => crate::rollout::policy::Strategy::default().offline_deadline_secs,
    };
    let last_contact = d
        .last_seen
        .max(seen.get(&d.agent).copied())
        .unwrap_or(d.enrolled_at);
    Ok(Some(Facts {
        served,
        replacement,
        agent: Agent {
            connected: connected.contains(&d.agent),
            last_contact,
            deadline_secs: i64::try_from(deadline).unwrap_or(i64::MAX),
        },
        fallback,
    }))
}

fn audit(conn: &Connection, action: &str, item: &StoredItem, now: i64) -> Result<()> {
    let detail = format!(
        "agent={} target={} certificate={} reason={}: {} since={}",
        item.agent,
        item.target,
        item.certificate,
        item.reason,
        item.reason_text,
        Timestamp(item.since)
    );
    store::audit_insert(
        conn,
        now,
        &AuditRecord {
            actor: "controller",
            action,
            target: &item.deployment,
            outcome: if action == "at_risk.raise" {
                "raised"
            } else {
                "cleared"
            },
            detail: &detail,
        },
    )?;
    Ok(())
}

/// One pass inside the caller's transaction; returns the items at risk.
fn pass(
    conn: &Connection,
    connected: &HashSet<String>,
    seen: &HashMap<String, i64>,
    now: i64,
) -> Result<usize> {
    let previous: HashMap<String, StoredItem> = table::stored_items(conn)?
        .into_iter()
        .map(|i| (i.deployment.clone(), i))
        .collect();
    let on_fallback: HashMap<String, OnFallback> = store::fallback::on_fallback(conn)?
        .into_iter()
        .map(|f| {
            let at = OnFallback {
                issuer: f.active_issuer,
                since: f.fallback_since,
            };
            (f.lineage, at)
        })
        .collect();
    let mut current: Vec<StoredItem> = Vec::new();
    for d in table::served_deployments(conn, now)? {
        let Some(facts) = facts_of(conn, &d, connected, seen, &on_fallback, now)? else {
            continue;
        };
        let before = previous
            .get(&d.deployment)
            .filter(|p| p.certificate == d.installed)
            .map(|p| Risk {
                reason: p.reason,
                text: p.reason_text.clone(),
                since: p.since,
            });
        if let Some(risk) = policy::assess(&facts, before.as_ref(), now) {
            current.push(StoredItem {
                deployment: d.deployment,
                agent: d.agent,
                target: d.target,
                certificate: d.installed,
                not_after: d.not_after,
                reason: risk.reason,
                reason_text: risk.text,
                since: risk.since,
            });
        }
    }
    let mut kept = HashSet::new();
    for item in &current {
        kept.insert(item.deployment.as_str());
        match previous.get(&item.deployment) {
            Some(p) if p == item => {}
            Some(p) if p.certificate == item.certificate => table::put(conn, item, now)?,
            other => {
                if let Some(p) = other {
                    audit(conn, "at_risk.clear", p, now)?;
                }
                table::put(conn, item, now)?;
                audit(conn, "at_risk.raise", item, now)?;
                warn!(
                    deployment = %item.deployment, agent = %item.agent, target = %item.target,
                    certificate = %item.certificate, reason = %item.reason,
                    text = %item.reason_text, "deployment at risk"
                );
            }
        }
    }
    for (deployment, p) in &previous {
        if !kept.contains(deployment.as_str()) {
            table::remove(conn, deployment)?;
            audit(conn, "at_risk.clear", p, now)?;
            info!(deployment = %deployment, certificate = %p.certificate, "no longer at risk");
        }
    }
    Ok(current.len())
}

impl Service {
    /// One at-risk pass: recompute every deployment's item and store the
    /// result in one transaction. Returns how many deployments are at risk.
    pub async fn reconcile_at_risk(&self) -> Result<usize> {
        let now = self.now().unix_timestamp();
        let connected = self.sessions.connected_ids();
        let seen = self.activity.snapshot();
        self.store
            .call(move |c| -> Result<usize> {
                let tx = c.transaction()?;
                let n = pass(&tx, &connected, &seen, now)?;
                tx.commit()?;
                Ok(n)
            })
            .await
    }

    /// Every stored at-risk item, soonest expiry first.
    pub async fn at_risk_items(&self) -> Result<Vec<AtRiskItem>> {
        Ok(self
            .store
            .call(|c| table::item_page(c, table::FIRST, u32::MAX))
            .await?)
    }

    /// The at-risk part of `status`: the count and the first items.
    pub(crate) async fn at_risk_status(&self) -> Result<AtRiskStatus> {
        let now = self.now().unix_timestamp();
        Ok(self
            .store
            .call(
                move |c| -> std::result::Result<AtRiskStatus, store::StoreError> {
                    Ok(AtRiskStatus {
                        total: table::count(c)?,
                        items: table::item_page(c, table::FIRST, STATUS_AT_RISK_ITEMS as u32)?,
                        now: Timestamp(now),
                    })
                },
            )
            .await?)
    }

    /// Run the at-risk pass every [`TICK`].
    pub async fn run_at_risk(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.reconcile_at_risk().await {
                warn!(error = %e.to_rpc().message, "at-risk pass failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests;
