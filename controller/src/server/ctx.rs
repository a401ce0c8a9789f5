//! What every connection's task shares: the service, the store, the
//! identity CA and the limits on what peers may hold.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::admission::Admission;
use super::gate::Gate;
use super::intake::Budget;
use crate::identity::IdentityCa;
use crate::service::Service;
use crate::store::Store;

pub(super) struct Ctx {
    pub(super) service: Arc<Service>,
    pub(super) store: Store,
    pub(super) identity: Arc<IdentityCa>,
    /// Admin credentials just revoked, and the connection that revoked
    /// them: every other open connection of such a credential is closed.
    pub(super) admin_revoked: broadcast::Sender<Revoked>,
    /// Limits on connections without a certificate.
    pub(super) gate: Arc<Gate>,
    /// Limits on handshakes in progress, and their order.
    pub(super) admission: Arc<Admission>,
    /// Bytes all connections may hold in unfinished frames.
    pub(super) budget: Budget,
}

/// Serials revoked by one `AdminRevoke`, and the connection it came on.
#[derive(Debug, Clone)]
pub(super) struct Revoked {
    pub(super) serials: Vec<String>,
    pub(super) origin: usize,
}
