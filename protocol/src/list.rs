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
//!
//! This file holds what a client asks (it depends on nothing else of the
//! protocol); the page that comes back, [`crate::message::ListPage`], lives
//! with the other answers in [`crate::message`].

use serde::{Deserialize, Serialize};

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
    /// Certificates served by an at-risk deployment, soonest expiry first
    /// (ties by id), each with its earliest item's reason and since.
    AtRiskCertificates,
    /// At-risk deployments, soonest expiry first (ties by deployment id).
    AtRiskDeployments,
}

/// One page of a list request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    /// At most this many rows (the controller caps it at [`MAX_PAGE_ROWS`]).
    pub limit: u32,
    /// The token of the previous page; `None` for the first.
    pub continue_token: Option<String>,
}
