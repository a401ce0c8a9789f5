//! What a newly issued certificate sets going for the inventory: the
//! deployment of an adopted certificate's replacement.

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::Result;
use crate::ops::rollout;
use crate::rollout::policy::Strategy;
use crate::store::{self, AuditRecord};

/// Called inside the transaction that stores a newly issued certificate:
/// when its application came from an adoption, create the deployment of
/// the new lineage to the adopted target. Returns whether a rollout began.
pub(crate) fn on_issued(
    tx: &Connection,
    application: &str,
    certificate: &str,
    lineage: &str,
    now: i64,
) -> Result<bool> {
    let adoption: Option<(String, String, String)> = tx
        .query_row(
            "SELECT agent, target, actor FROM adoptions WHERE application = ?1 AND rollout IS NULL",
            [application],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((agent, target, actor)) = adoption else {
        return Ok(false);
    };
    let Some(row) = store::agent_get(tx, &agent)?.filter(|a| a.removed_at.is_none()) else {
        // The agent was removed meanwhile: nothing to deploy to.
        return Ok(false);
    };
    if store::deployment_of(tx, &row.id, &target)?.is_some() {
        // An operator deployed to the target after the adoption: theirs
        // stands. The adopted certificate stays issued, undeployed.
        store::audit_insert(
            tx,
            now,
            &AuditRecord {
                actor: &actor,
                action: "deploy",
                target: certificate,
                outcome: "skipped",
                detail: &format!(
                    "adoption agent={} target={target}: the target got another deployment \
                     meanwhile; deploy this certificate by hand if it is wanted",
                    row.id
                ),
            },
        )?;
        return Ok(false);
    }
    let rollout = rollout::create(
        tx,
        "deploy",
        lineage,
        certificate,
        None,
        vec![(row.id.clone(), row.name.clone(), target.clone())],
        &Strategy::default(),
        false,
        &actor,
        now,
    )?;
    tx.execute(
        "UPDATE adoptions SET rollout = ?1 WHERE application = ?2",
        params![rollout.id, application],
    )?;
    store::audit_insert(
        tx,
        now,
        &AuditRecord {
            actor: &actor,
            action: "deploy",
            target: certificate,
            outcome: "ok",
            detail: &format!(
                "adoption agent={} target={target} rollout={}",
                row.id, rollout.id
            ),
        },
    )?;
    Ok(true)
}
