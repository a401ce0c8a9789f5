//! certfleet agent: enrolls with a controller, keeps one mutual-TLS QUIC
//! session to it, and installs the certificates deployed to this host into
//! the server software its config declares — proving each is served, and
//! rolling back when it is not.

pub mod challenge;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod discovery;
pub mod failpoints;
pub mod identity;
pub mod install;
pub mod manual;
pub mod sandbox;
pub mod session;
pub mod state;
pub mod transport;
