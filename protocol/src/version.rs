//! Protocol versions and the skew rule.
//!
//! The ALPN `certfleet/1` fixes the major version; within it, each side states
//! the range of minor versions it speaks in the first exchange of every
//! connection, and the controller picks the highest common one. The rule for
//! fleets in the middle of an upgrade: an agent or CLI may be one minor version
//! older than the controller, never newer. Upgrade the controller first.

use serde::{Deserialize, Serialize};

/// ALPN protocol identifier; the `1` is the major version.
pub const ALPN: &[u8] = b"certfleet/1";

/// The minor versions this build speaks.
pub const PROTOCOL: VersionRange = VersionRange { min: 0, max: 0 };

/// An inclusive range of minor protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    pub min: u16,
    pub max: u16,
}

/// Why two version ranges cannot talk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionMismatch {
    #[error(
        "peer speaks protocol 1.{}..1.{} but this controller speaks 1.{}..1.{}; \
         the peer is newer than the controller: upgrade the controller first",
        peer.min, peer.max, ours.min, ours.max
    )]
    PeerNewer {
        ours: VersionRange,
        peer: VersionRange,
    },
    #[error(
        "peer speaks protocol 1.{}..1.{} but this controller needs at least 1.{}; \
         upgrade the peer (agents may be at most one minor version behind)",
        peer.min, peer.max, ours.min
    )]
    PeerTooOld {
        ours: VersionRange,
        peer: VersionRange,
    },
    #[error("peer sent an empty version range 1.{}..1.{}", peer.min, peer.max)]
    Empty { peer: VersionRange },
}

impl VersionRange {
    /// The controller's choice of version for a peer: the highest minor
    /// version both speak, subject to the skew rule (peer at most one minor
    /// version older, never newer).
    pub fn negotiate(self, peer: VersionRange) -> Result<u16, VersionMismatch> {
        if peer.min > peer.max {
            return Err(VersionMismatch::Empty { peer });
        }
        if peer.min > self.max {
            return Err(VersionMismatch::PeerNewer { ours: self, peer });
        }
        let chosen = self.max.min(peer.max);
        if chosen < self.min || chosen + 1 < self.max {
            return Err(VersionMismatch::PeerTooOld { ours: self, peer });
        }
        Ok(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(min: u16, max: u16) -> VersionRange {
        VersionRange { min, max }
    }

    #[test]
    fn same_range_picks_highest() {
        assert_eq!(r(0, 3).negotiate(r(0, 3)), Ok(3));
    }

    #[test]
    fn peer_one_minor_older_is_accepted() {
        assert_eq!(r(0, 3).negotiate(r(0, 2)), Ok(2));
    }

    #[test]
    fn peer_two_minors_older_is_refused() {
        assert!(matches!(
            r(0, 3).negotiate(r(0, 1)),
            Err(VersionMismatch::PeerTooOld { .. })
        ));
    }

    #[test]
    fn peer_newer_only_is_refused_with_advice() {
        let err = r(0, 1).negotiate(r(2, 4)).unwrap_err();
        assert!(err.to_string().contains("upgrade the controller"));
    }

    #[test]
    fn newer_peer_that_still_speaks_ours_is_accepted() {
        assert_eq!(r(0, 1).negotiate(r(1, 4)), Ok(1));
    }

    #[test]
    fn empty_range_is_refused() {
        assert!(matches!(
            r(0, 1).negotiate(r(3, 2)),
            Err(VersionMismatch::Empty { .. })
        ));
    }
}
