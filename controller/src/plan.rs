//! `--dry-run`: a state change planned by the very code that would carry it
//! out. Each planned operation runs its whole transaction — lookups,
//! refusals, rows, waves, audit records — and then rolls it back instead of
//! committing, skipping what happens after a commit (waking reconcilers,
//! starting applications, calling a CA). So the plan cannot say anything
//! the real request would not do, and a dry run changes nothing.

use certfleet_protocol::message::{Plan, PlanOutcome, Planned};

use crate::error::{Result, ServiceError};

use crate::service::{Mode, Service};
use crate::store;

/// The audit action and target of a planned request.
pub fn action(request: &Planned) -> (&'static str, &str) {
    match request {
        Planned::Deploy { certificate, .. } => ("deploy", certificate),
        Planned::CertRenew { id } => ("cert.renew", id),
        Planned::CertRevoke { id, .. } => ("cert.revoke", id),
        Planned::InventoryAdopt { agent, .. } => ("inventory.adopt", agent),
    }
}

impl Service {
    /// Plan `request` as `actor` would make it. A refusal is part of the
    /// plan, not an error: the answer says what would be refused and why.
    pub async fn plan(&self, actor: String, request: Planned) -> Plan {
        let (action, target) = action(&request);
        let (action, target) = (action.to_owned(), target.to_owned());
        match self.run_planned(actor, request).await {
            Ok(outcome) => Plan {
                action,
                target,
                refused: None,
                outcome: Some(outcome),
            },
            Err(e) => Plan {
                action,
                target,
                refused: Some(e.to_rpc()),
                outcome: None,
            },
        }
    }

    async fn run_planned(&self, actor: String, request: Planned) -> Result<PlanOutcome> {
        const MODE: Mode = Mode::DryRun;
        match request {
            Planned::Deploy {
                certificate,
                selector,
                target,
                strategy,
            } => {
                let strategy =
                    crate::rollout::strategy_from_spec(&strategy).map_err(ServiceError::Invalid)?;
                self.deploy(actor, certificate, selector, target, strategy, MODE)
                    .await
                    .map(PlanOutcome::Rollout)
            }
            Planned::CertRenew { id } => {
                let application = self.cert_renew(actor, id.clone(), MODE).await?;
                // Where the new certificate would go: the lineage's
                // deployments, which the renewal rollout follows.
                let rollout_to = self
                    .store
                    .call(move |c| -> Result<_> {
                        let lineage = store::cert_get(c, &id)?.map(|c| c.lineage).unwrap_or(id);
                        Ok(store::deployment_list(c, Some(&lineage), None)?)
                    })
                    .await?;
                Ok(PlanOutcome::Renewal {
                    application,
                    rollout_to,
                })
            }
            Planned::CertRevoke { id, reason, force } => self
                .cert_revoke(actor, id, reason, force, MODE)
                .await
                .map(PlanOutcome::Certificate),
            Planned::InventoryAdopt {
                agent,
                certificate,
                issuer,
                validity_days,
                key,
            } => self
                .inventory_adopt(
                    actor,
                    crate::inventory::AdoptRequest {
                        agent,
                        certificate,
                        issuer,
                        validity_days,
                        key,
                    },
                    MODE,
                )
                .await
                .map(PlanOutcome::Adoption),
        }
    }
}
