//! Domain steps that run inside the caller's one transaction, over a
//! `&rusqlite::Connection`: synchronous, no I/O but the store, no locks.
//!
//! This layer sits below `Service` and the domain files that extend it
//! (`service.rs`, `fleet.rs`, `rollout/`, `renewal/`, `inventory.rs`, …):
//! they call these steps inside their transactions, and nothing here
//! imports them, so no domain file needs another through `Service`.

pub mod inventory;
pub mod issuers;
pub mod renewal;
pub mod rollout;
