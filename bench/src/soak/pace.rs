//! The pace of the step loop: waiting until the fleet has settled after a
//! step (woken by the agents' progress, so a quiet step costs no polling
//! interval), and the wall time each phase of a step took, reported in the
//! result so a slow run says where its time went.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use certfleet_controller::service::Service;
use serde_json::json;

use super::agents::SoakAgent;
use super::rpc;

/// Wall time of the step loop by phase, for finding where a slow run
/// spends it.
#[derive(Debug, Default)]
pub(super) struct Phases {
    /// Applying the faults due (restarts included).
    pub(super) faults: Duration,
    /// The endpoint certificate check, the step signal and the passes.
    pub(super) passes: Duration,
    /// Waiting for the agents and the work started to settle.
    pub(super) settle: Duration,
    /// Reading the at-risk items back.
    pub(super) at_risk: Duration,
    /// Reading what every target serves and judging it.
    pub(super) ledger: Duration,
}

impl Phases {
    pub(super) fn json(&self) -> serde_json::Value {
        let s = |d: Duration| (d.as_secs_f64() * 100.0).round() / 100.0;
        json!({
            "faults": s(self.faults),
            "passes": s(self.passes),
            "settle": s(self.settle),
            "at_risk": s(self.at_risk),
            "ledger": s(self.ledger),
        })
    }
}

/// A stopwatch read in laps.
pub(super) struct Lap(Instant);

impl Lap {
    pub(super) fn start() -> Lap {
        Lap(Instant::now())
    }

    /// The time since the last lap.
    pub(super) fn next(&mut self) -> Duration {
        let now = Instant::now();
        let lap = now - self.0;
        self.0 = now;
        lap
    }
}

/// Wait until every host that is up is connected and synced.
pub(super) async fn wait_ready(hosts: &[Arc<SoakAgent>], timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while !hosts.iter().all(|h| !h.online() || h.ready()) {
        if start.elapsed() > timeout {
            let h = hosts.iter().find(|h| h.online() && !h.ready());
            bail!(
                "agents did not connect within {timeout:?}; e.g. {:?}",
                h.map(|h| (h.name(), h.last_error.lock().ok().and_then(|e| e.clone())))
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Wait until every host that is up is connected, synced and done with
/// step `step`, and nothing the step started is in flight, driving
/// rollouts meanwhile. `false` when `timeout` passed first. Woken by the
/// agents' progress; the controller's side (an application issuing, an
/// install report arriving) is looked at again every millisecond.
pub(super) async fn settle(
    svc: &Arc<Service>,
    hosts: &[Arc<SoakAgent>],
    progress: &tokio::sync::Notify,
    step: u64,
    now: i64,
    timeout: Duration,
) -> Result<bool> {
    let start = Instant::now();
    loop {
        if hosts.iter().all(|h| !h.online() || h.settled(step, now)) {
            svc.reconcile_rollouts().await.map_err(rpc)?;
            if svc.pending().await.map_err(rpc)?.settled() {
                return Ok(true);
            }
        }
        if start.elapsed() > timeout {
            return Ok(false);
        }
        let _ = tokio::time::timeout(Duration::from_millis(1), progress.notified()).await;
    }
}
