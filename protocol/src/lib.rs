//! Wire types, framing, protocol versions and limits shared by the certfleet
//! controller, its CLI and its agents.
//!
//! This crate owns no sockets and reads no clocks: time always arrives as an
//! argument (Unix seconds), and byte streams arrive as generic readers. What it
//! guarantees is that nothing a peer sends can make it panic or allocate more
//! than the frame limit, and
//! that a request is decoded only within the limits of its role
//! ([`limits`], [`bounded`]).

pub mod bounded;
pub mod cert;
pub mod close;
pub mod frame;
pub mod limits;
pub mod list;
pub mod message;
pub mod name;
#[cfg(any(test, feature = "sample"))]
pub mod sample;
pub mod secret;
pub mod skew;
pub mod version;

#[cfg(test)]
mod proptests;

pub use frame::{FrameError, DEFAULT_MAX_FRAME};
pub use secret::Secret;
pub use version::{VersionRange, ALPN, PROTOCOL};
