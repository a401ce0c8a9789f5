//! Every background reconcile pass once, on demand, and what is still in
//! flight afterwards — for programs that drive a controller on a simulated
//! clock (the soak benchmark) and must not wait for wall-clock ticks.
//!
//! The passes are the ones the background loops run ([`Service::expire`],
//! [`Service::reconcile_renewals`], [`Service::reconcile_rollouts`]);
//! calling them between ticks is harmless, as every pass recomputes from
//! stored state. The at-risk pass ([`Service::reconcile_at_risk`]) is the
//! caller's to run once the step's work has settled: run before, it would
//! judge a fleet in the middle of its installs. [`Service::pending`] says when the work a step started has
//! settled: no application in flight and no rollout target waiting on an
//! agent that is connected (an offline agent's targets wait for its
//! deadline, which only the clock moving on can bring).

use std::sync::Arc;

use crate::error::Result;
use crate::rollout::policy::TargetState;
use crate::service::Service;
use crate::store;

/// What a step left in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    /// Applications not yet issued or failed.
    pub applications: usize,
    /// Targets of running rollouts, on connected agents, that are waiting
    /// or sent and not yet reported.
    pub targets: usize,
}

impl Pending {
    pub fn settled(&self) -> bool {
        self.applications == 0 && self.targets == 0
    }
}

/// What one [`Service::reconcile_step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepWork {
    /// Certificates marked expired.
    pub expired: usize,
    /// Renewal applications started.
    pub renewals: usize,
}

impl Service {
    /// Run the expiry, renewal and rollout passes once, now.
    pub async fn reconcile_step(self: &Arc<Self>) -> Result<StepWork> {
        let expired = self.expire().await?;
        let renewals = self.reconcile_renewals().await?;
        self.reconcile_rollouts().await?;
        Ok(StepWork { expired, renewals })
    }

    /// What is still in flight (see the module comment).
    pub async fn pending(self: &Arc<Self>) -> Result<Pending> {
        let applications = self.applications_in_flight().await?;
        let svc = self.clone();
        let targets = self
            .store
            .call(move |c| -> Result<usize> {
                let mut n = 0;
                for row in store::rollout_list(c, Some(&["running"]))? {
                    n += store::rollout_targets(c, &row.id)?
                        .iter()
                        .filter(|t| {
                            (t.state == TargetState::Waiting.as_str()
                                || t.state == TargetState::InProgress.as_str())
                                && svc.sessions.is_connected(&t.agent)
                        })
                        .count();
                }
                Ok(n)
            })
            .await?;
        Ok(Pending {
            applications,
            targets,
        })
    }
}
