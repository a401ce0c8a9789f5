//! certfleet controller: the `certfleet` binary's library.
//!
//! `serve` runs the controller (store, issuers, QUIC endpoint, CRL endpoint,
//! reconcilers); every other subcommand is a client of a running controller.

pub mod activity;
pub mod admin;
pub mod agent_bus;
pub mod agent_identity;
pub mod atrisk;
pub mod backup;
pub mod ca;
pub mod challenge;
pub mod check;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod enrollment;
pub mod error;
pub mod fault;
pub mod fleet;
pub mod identity;
pub mod inventory;
pub mod issuer;
pub mod list;
pub mod mint;
pub mod ops;
pub mod plan;
pub mod renewal;
pub mod rollout;
pub mod seal;
pub mod seed;
pub mod server;
pub mod service;
pub mod step;
pub mod store;
