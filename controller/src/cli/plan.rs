//! `--dry-run` on `deploy`, `cert renew`, `cert revoke` and `inventory
//! adopt`: the controller plans the request with the code that would carry
//! it out; this prints the plan and fails when the request would be refused.

use anyhow::bail;
use certfleet_protocol::message::{Plan, PlanOutcome, Planned, Request, Response, RpcError};
use serde::Serialize;

use super::output::Output;
use crate::client::Client;

/// The JSON shape of a plan (docs/cli.md): the protocol's `Plan` and a
/// `dry_run: true` marker, so a script cannot take it for a real answer.
#[derive(Serialize)]
struct PlanJson<'a> {
    dry_run: bool,
    action: &'a str,
    target: &'a str,
    refused: Option<&'a RpcError>,
    outcome: Option<&'a PlanOutcome>,
}

/// Ask for the plan of `planned`, print it, and fail (after printing) when
/// the request would be refused.
pub(super) async fn run(client: &Client, planned: Planned, out: &Output) -> anyhow::Result<()> {
    let r = client.call(&Request::DryRun(planned)).await?;
    let plan = expect_response!(r, Plan);
    show(out, &plan)?;
    if let Some(refused) = &plan.refused {
        bail!(
            "dry run: {} {} would be refused ({:?}); nothing was changed",
            plan.action,
            plan.target,
            refused.kind
        );
    }
    Ok(())
}

fn show(out: &Output, plan: &Plan) -> anyhow::Result<()> {
    if !out.is_table() {
        return out.emit(
            &PlanJson {
                dry_run: true,
                action: &plan.action,
                target: &plan.target,
                refused: plan.refused.as_ref(),
                outcome: plan.outcome.as_ref(),
            },
            String::new,
        );
    }
    match (&plan.refused, &plan.outcome) {
        (Some(refused), _) => {
            println!(
                "DRY RUN, nothing was changed: {} {} would be refused:\n  {}",
                plan.action,
                plan.target,
                refused.message.replace('\n', "\n  ")
            );
            Ok(())
        }
        (None, Some(outcome)) => {
            println!(
                "DRY RUN, nothing was changed: {} {} would go ahead as follows \
                 (the ids below were not stored):\n",
                plan.action, plan.target
            );
            match outcome {
                PlanOutcome::Rollout(r) => out.rollout(r),
                PlanOutcome::Renewal {
                    application,
                    rollout_to,
                } => {
                    out.application(application)?;
                    if rollout_to.is_empty() {
                        println!("\nThe certificate is not deployed: nothing would be rolled out.");
                        Ok(())
                    } else {
                        println!("\nOnce issued, it would be rolled out to:\n");
                        out.deployments(rollout_to)
                    }
                }
                PlanOutcome::Certificate(c) => out.cert(c),
                PlanOutcome::Adoption(a) => out.adoption(a),
            }
        }
        (None, None) => bail!("the controller sent a plan with neither outcome nor refusal"),
    }
}
