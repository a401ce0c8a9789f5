//! Paged lists: the request a CLI sends page after page, and the rows it
//! gets back.
//!
//! Like Kubernetes' chunked lists (`limit` and `continue`), a client asks
//! for at most `limit` rows and gets, with a page, an opaque continuation
//! token to pass back for the next one; no token means the list is done.
//! The controller may return fewer rows than asked (it also stops before a
//! byte budget, so a page always fits in one frame), never more. Rows are
//! summaries: a certificate row carries no PEM (`cert show` and
//! `cert download` do).

use serde::{Deserialize, Serialize};

use crate::message::{
    AgentInfo, AuditEntry, CertState, DeploymentInfo, InstanceInfo, InventoryItem, IssuerInfo,
    KeyType, RenewalInfo, RevocationReason, StrategySpec, Timestamp,
};

/// Rows per page when a client does not say; also the most a controller
/// returns in one page, whatever the client asks.
pub const MAX_PAGE_ROWS: u32 = 1000;

/// Which list, with its filters. Filters are ids, applied in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListQuery {
    /// Certificates soonest expiry first (ties by id); with
    /// `expiring_within_secs`, only those still in service that expire
    /// within that many seconds from now.
    Certificates {
        expiring_within_secs: Option<i64>,
    },
    /// Agents that were not removed, by id.
    Agents,
    /// Deployments by id; `certificate` matches the desired or installed
    /// certificate or the lineage.
    Deployments {
        certificate: Option<String>,
        agent: Option<String>,
    },
    /// Audit entries, newest first.
    Audit,
    Instances,
    Issuers,
    /// Rollouts newest first (by creation time, ties by id), each with
    /// counts instead of its targets.
    Rollouts,
    /// Discovered certificates soonest expiry first, unreadable ones (no
    /// expiry) last, ties by agent id and position in its report;
    /// `agent` is an id or a unique name; with `expiring_within_secs`,
    /// only readable ones that expire within that many seconds from now.
    Inventory {
        expiring_within_secs: Option<i64>,
        agent: Option<String>,
    },
    /// Problems of the agents' latest scans, by agent id.
    InventoryProblems {
        agent: Option<String>,
    },
}

/// One page of a list request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    /// At most this many rows (the controller caps it at [`MAX_PAGE_ROWS`]).
    pub limit: u32,
    /// The token of the previous page; `None` for the first.
    pub continue_token: Option<String>,
}

/// A certificate as listed: [`crate::message::CertInfo`] without its PEMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSummary {
    pub id: String,
    pub instance: String,
    pub issuer: String,
    pub domains: Vec<String>,
    pub serial: String,
    pub fingerprint: String,
    pub key: KeyType,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub state: CertState,
    pub renews: Option<String>,
    pub revoked_at: Option<Timestamp>,
    pub revocation_reason: Option<RevocationReason>,
    pub renewal: Option<RenewalInfo>,
}

/// A rollout as listed: [`crate::message::RolloutInfo`] with counts
/// instead of one entry per target (a fleet-wide rollout has thousands).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutSummary {
    pub id: String,
    pub kind: String,
    pub lineage: String,
    pub certificate: String,
    pub previous: Option<String>,
    pub state: String,
    pub reason: Option<String>,
    pub strategy: StrategySpec,
    pub current_wave: i64,
    pub waves: u32,
    /// Targets in the rollout.
    pub targets: u32,
    /// Targets that have installed the certificate.
    pub installed: u32,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The rows of one page; the variant matches the [`ListQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PageRows {
    Certificates(Vec<CertSummary>),
    Agents(Vec<AgentInfo>),
    Deployments(Vec<DeploymentInfo>),
    Audit(Vec<AuditEntry>),
    Instances(Vec<InstanceInfo>),
    Issuers(Vec<IssuerInfo>),
    Rollouts(Vec<RolloutSummary>),
    Inventory(Vec<InventoryItem>),
    /// `(agent name, problem)`.
    InventoryProblems(Vec<(String, String)>),
}

impl PageRows {
    pub fn len(&self) -> usize {
        match self {
            PageRows::Certificates(r) => r.len(),
            PageRows::Agents(r) => r.len(),
            PageRows::Deployments(r) => r.len(),
            PageRows::Audit(r) => r.len(),
            PageRows::Instances(r) => r.len(),
            PageRows::Issuers(r) => r.len(),
            PageRows::Rollouts(r) => r.len(),
            PageRows::Inventory(r) => r.len(),
            PageRows::InventoryProblems(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One page of a list answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPage {
    pub rows: PageRows,
    /// Pass back for the next page; `None` when this page is the last.
    pub continue_token: Option<String>,
}
