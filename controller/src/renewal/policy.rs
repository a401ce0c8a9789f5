//! When a certificate is due for renewal — a pure function of the
//! certificate, its instance and `now`.
//!
//! `renew_before` is the instance's setting (default 30 days, the
//! convention for one-year certificates) but never more than a third of the
//! certificate's lifetime, so 90-, 45- and 6-day certificates (and the
//! one-hour ones tests use) renew in time instead of at issuance. A
//! deterministic per-certificate jitter of up to 1/20 of `renew_before`
//! moves the due time earlier, never later, to spread a fleet's renewals.
//! When the CA offers an ACME Renewal Information window, its start wins.

/// Default `renew_before`: 30 days.
pub const DEFAULT_RENEW_BEFORE_SECS: i64 = 30 * 86_400;

/// After a CA's rate-limit refusal (which carries no usable Retry-After in
/// the problem document), renewal waits at least this long.
pub const RATE_LIMIT_BACKOFF_SECS: i64 = 3600;

/// Renewal attempts back off from a minute to six hours.
pub const MIN_RETRY_SECS: i64 = 60;
pub const MAX_RETRY_SECS: i64 = 6 * 3600;

/// Without a CA's renewal window, renewal never comes due earlier than
/// this percentage of a certificate's lifetime before its expiry: a third
/// at most, moved earlier by a jitter of at most a twentieth of that (35 %),
/// plus a margin for rounding. The renewal pass reads only certificates
/// this close to expiry.
pub const EARLIEST_DUE_PERCENT: i64 = 36;

/// The effective `renew_before` for a certificate of the given lifetime.
pub fn renew_before(lifetime_secs: i64, configured_secs: Option<i64>) -> i64 {
    let configured = configured_secs.unwrap_or(DEFAULT_RENEW_BEFORE_SECS).max(0);
    configured.min(lifetime_secs.max(0) / 3)
}

/// A stable number in [0, 1) derived from the certificate id.
pub fn jitter_fraction(cert_id: &str) -> f64 {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert_id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest.as_ref()[..8]);
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// ACME Renewal Information (RFC 9773) suggested window, when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalWindow {
    pub start: i64,
    pub end: i64,
}

/// When renewal is due.
pub fn due_at(
    cert_id: &str,
    not_before: i64,
    not_after: i64,
    configured_secs: Option<i64>,
    ari: Option<RenewalWindow>,
) -> i64 {
    if let Some(w) = ari.filter(|w| w.start <= w.end) {
        // Spread inside the CA's window, as RFC 9773 §4.2 asks.
        let span = (w.end - w.start) as f64;
        return w.start + (span * jitter_fraction(cert_id)) as i64;
    }
    let before = renew_before(not_after - not_before, configured_secs);
    let jitter = (before as f64 / 20.0 * jitter_fraction(cert_id)) as i64;
    not_after - before - jitter
}

/// Whether renewal is due at `now`.
pub fn is_due(due_at: i64, now: i64) -> bool {
    now >= due_at
}

/// Delay before retrying after `attempts` failed renewal attempts:
/// exponential from a minute, capped at six hours, and never later than
/// halfway to expiry (but at least a minute away).
pub fn retry_delay(attempts: u32, now: i64, not_after: i64) -> i64 {
    let exp = MIN_RETRY_SECS.saturating_mul(1i64 << attempts.min(20).saturating_sub(1));
    let capped = exp.min(MAX_RETRY_SECS);
    let until_expiry = (not_after - now) / 2;
    capped.min(until_expiry).max(MIN_RETRY_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const T0: i64 = 1_800_000_000;

    fn due(days: i64) -> i64 {
        due_at("cert-x", T0, T0 + days * DAY, None, None)
    }

    #[test]
    fn one_year_renews_thirty_days_early() {
        let d = due(365);
        let rb = 30 * DAY;
        assert!((T0 + 365 * DAY - rb - rb / 20..=T0 + 365 * DAY - rb).contains(&d));
    }

    #[test]
    fn ninety_days_renew_at_day_sixty() {
        assert_eq!(renew_before(90 * DAY, None), 30 * DAY);
        let d = due(90);
        assert!((T0 + 60 * DAY - 30 * DAY / 20..=T0 + 60 * DAY).contains(&d));
    }

    #[test]
    fn short_lifetimes_keep_two_thirds() {
        assert_eq!(renew_before(45 * DAY, None), 15 * DAY);
        assert_eq!(renew_before(6 * DAY, None), 2 * DAY);
        assert_eq!(renew_before(3600, None), 1200);
        assert!(due(6) > T0 + 3 * DAY, "a 6-day cert is not due at issuance");
        let hour = due_at("c", T0, T0 + 3600, None, None);
        assert!((T0 + 2301..=T0 + 2400).contains(&hour), "{}", hour - T0);
    }

    #[test]
    fn instance_setting_is_honoured_and_capped() {
        assert_eq!(renew_before(365 * DAY, Some(10 * DAY)), 10 * DAY);
        assert_eq!(renew_before(9 * DAY, Some(10 * DAY)), 3 * DAY);
    }

    #[test]
    fn past_due_and_expired_are_due() {
        let d = due(90);
        assert!(is_due(d, d));
        assert!(is_due(d, T0 + 200 * DAY), "expired certificates are due");
        assert!(!is_due(d, T0));
    }

    #[test]
    fn renewal_is_never_due_earlier_than_the_earliest_due_percent() {
        for lifetime in [
            1,
            59,
            3600,
            86_400,
            6 * 86_400 + 300,
            90 * 86_400,
            398 * 86_400,
        ] {
            for configured in [None, Some(0), Some(86_400), Some(400 * 86_400)] {
                for i in 0..200 {
                    let id = format!("cert-{i}");
                    let due = due_at(&id, 1_000, 1_000 + lifetime, configured, None);
                    assert!(
                        1_000 + lifetime - due <= lifetime * EARLIEST_DUE_PERCENT / 100,
                        "{lifetime} {configured:?} {id}"
                    );
                }
            }
        }
    }

    #[test]
    fn jitter_is_deterministic_and_spread() {
        assert_eq!(jitter_fraction("a"), jitter_fraction("a"));
        let values: Vec<f64> = (0..200)
            .map(|i| jitter_fraction(&format!("cert-{i}")))
            .collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((0.35..0.65).contains(&mean), "{mean}");
    }

    #[test]
    fn ari_window_wins() {
        let w = RenewalWindow {
            start: T0 + 10 * DAY,
            end: T0 + 11 * DAY,
        };
        let d = due_at("c", T0, T0 + 90 * DAY, None, Some(w));
        assert!(d >= w.start && d <= w.end);
    }

    #[test]
    fn retries_back_off_and_stay_before_expiry() {
        assert_eq!(retry_delay(1, T0, T0 + 30 * DAY), 60);
        assert_eq!(retry_delay(2, T0, T0 + 30 * DAY), 120);
        assert_eq!(retry_delay(30, T0, T0 + 30 * DAY), MAX_RETRY_SECS);
        assert_eq!(retry_delay(30, T0, T0 + 3000), 1500);
        assert_eq!(retry_delay(30, T0, T0 - 10), MIN_RETRY_SECS);
    }
}
