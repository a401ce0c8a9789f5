//! What the agent has installed, per target, kept in `<state_dir>/installed.json`
//! so it survives restarts and `certfleet-agent status` can show it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use certfleet_protocol::message::{DeploymentStatus, Timestamp};
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "installed.json";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentState {
    pub targets: BTreeMap<String, TargetState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetState {
    /// The certificate the live files hold.
    pub certificate: Option<String>,
    pub fingerprint: Option<String>,
    pub not_after: Option<Timestamp>,
    pub deployment: Option<String>,
    /// Outcome of the last install attempt.
    pub last_result: DeploymentStatus,
    pub last_error: Option<String>,
    pub at: Timestamp,
}

impl AgentState {
    pub fn load(state_dir: &Path) -> anyhow::Result<AgentState> {
        let path = state_dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is corrupt; move it aside to start over", path.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        crate::identity::write_atomic(&state_dir.join(STATE_FILE), &bytes, 0o600)
    }
}
