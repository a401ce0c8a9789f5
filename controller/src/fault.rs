//! Fault seam: make an issuer refuse every application, in-process.
//!
//! A benchmark (the soak's "one issuer refuses for three days") or a unit
//! test calls [`set_issuer_outage`]; the issuing worker asks
//! [`check_issuer`] right before it sends an application to an issuer, and
//! an issuer under an injected outage fails the application exactly where
//! a refusing CA would, with "issuer NAME refused: injected outage".
//!
//! Like `clock::OffsetClock`, this is a test and benchmark seam only:
//! nothing in configuration, the CLI or the protocol turns it on, and with
//! no outage set the check is one uncontended read of an empty set.

use std::collections::BTreeSet;
use std::sync::{PoisonError, RwLock};

/// Issuers currently refusing, process-wide.
static OUTAGES: RwLock<BTreeSet<String>> = RwLock::new(BTreeSet::new());

/// Make `issuer` refuse every application (`refusing = true`) or accept
/// them again (`false`). Affects every controller in this process.
pub fn set_issuer_outage(issuer: &str, refusing: bool) {
    // A panic while holding the lock cannot leave the set half-updated
    // (insert and remove are single calls), so a poisoned lock is usable.
    let mut set = OUTAGES.write().unwrap_or_else(PoisonError::into_inner);
    if refusing {
        set.insert(issuer.to_string());
    } else {
        set.remove(issuer);
    }
}

/// Whether `issuer` is under an injected outage.
pub fn issuer_refusing(issuer: &str) -> bool {
    OUTAGES
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(issuer)
}

/// The refusal an application gets from an issuer under an injected
/// outage (the caller reports it as the CA's refusal), or `Ok` when the
/// issuer is not under one.
pub fn check_issuer(issuer: &str) -> Result<(), String> {
    if issuer_refusing(issuer) {
        return Err(format!("issuer {issuer} refused: injected outage"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_refuses_until_lifted_and_only_for_its_issuer() {
        // Names unique to this test: the registry is process-wide and other
        // tests run in parallel.
        let down = "fault-test-down";
        let up = "fault-test-up";
        assert!(check_issuer(down).is_ok());
        set_issuer_outage(down, true);
        let err = check_issuer(down).unwrap_err();
        assert_eq!(err, "issuer fault-test-down refused: injected outage");
        assert!(check_issuer(up).is_ok(), "another issuer is unaffected");
        set_issuer_outage(down, true);
        set_issuer_outage(down, false);
        assert!(check_issuer(down).is_ok(), "lifted after one call");
        assert!(!issuer_refusing(down));
    }
}
