//! QUIC application close codes: why the controller closed a connection.
//!
//! The reason text beside the code is for people; peers decide on the code
//! alone. Codes are never reused for another meaning.

/// The peer's credential is unknown, revoked or expired (or the request it
/// sent is not allowed for its role). Another credential may work.
pub const UNAUTHORIZED: u32 = 1;
/// A malformed or oversized frame.
pub const PROTOCOL: u32 = 2;
/// No common protocol version.
pub const VERSION: u32 = 3;
/// The agent has been removed (`certfleet agent remove`): definitive. Its
/// identity will never be accepted again and re-enrolling it under the same
/// id is refused; an agent told this stops instead of retrying.
pub const AGENT_REMOVED: u32 = 4;
/// A limit of the controller's was reached: too many connections (overall
/// or from one source), a missed read deadline, a buffer budget exceeded.
/// Not definitive: the peer may retry later, with back-off.
pub const LIMIT: u32 = 5;
