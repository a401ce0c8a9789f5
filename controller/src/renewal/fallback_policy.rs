//! Which issuer a renewal applies to — a pure function of the lineage's
//! issuer chain (the instance's issuer, then its `--fallback-issuer`s, in
//! order), its fallback state and `now`.
//!
//! The rule (docs/issuers.md, "Fallback issuers"):
//!
//! - Renewals apply to the *active* issuer (the primary until a switch).
//! - Once applications to the active issuer have failed for
//!   `fallback_after` (default one hour), or its last refusal was a rate
//!   limit, or less than half of the renewal window (due time to expiry)
//!   is left, the next attempt switches to the next issuer of the chain
//!   (after the last one: the primary again).
//! - Back to the primary: once `fallback_after` has passed since the switch,
//!   the first application of each new renewal goes to the primary (a
//!   probe). If it is issued, the primary is active again; if it fails, the
//!   next attempt, a minute later, goes back to the active fallback.
//!
//! Invariants: indexes returned are inside the chain; a lineage with one
//! issuer never switches; a failure only advances the failing time of the
//! issuer that was active when the application was sent.

use super::policy::MIN_RETRY_SECS;

/// Default `fallback_after`: an hour. Long enough that a CA's short blip
/// (a deploy, a few 5xx) does not move a lineage to another CA — and
/// its renewals, which start at two thirds of the lifetime, have days to
/// spare — short enough that a CA that is really down for days costs an
/// hour of a renewal window that is weeks (or, for 6-day certificates, two
/// days) long.
pub const DEFAULT_FALLBACK_AFTER_SECS: i64 = 3600;

/// A lineage's fallback state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// Index in the chain of the issuer renewals apply to (0: the primary).
    pub active: usize,
    /// When `active` became the active issuer.
    pub active_since: i64,
    /// When the lineage left the primary; `None` while on it.
    pub fallback_since: Option<i64>,
    /// When applications to the active issuer started failing.
    pub failing_since: Option<i64>,
    /// The active issuer's last refusal was a rate limit.
    pub rate_limited: bool,
}

impl State {
    /// A lineage on its primary that has never failed.
    pub fn primary(since: i64) -> State {
        State {
            active: 0,
            active_since: since,
            fallback_since: None,
            failing_since: None,
            rate_limited: false,
        }
    }
}

/// The certificate being renewed: when renewal became due and when it
/// expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub due_at: i64,
    pub not_after: i64,
}

impl Window {
    /// The point after which less than half of the renewal window is left.
    pub fn half_gone_at(self) -> i64 {
        self.due_at + (self.not_after - self.due_at).max(0) / 2
    }
}

/// Why a renewal moves to another issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Applications to the active issuer failed for `fallback_after`.
    FailingTooLong,
    /// The active issuer rate-limits.
    RateLimited,
    /// Less than half of the renewal window is left and the active issuer
    /// is failing.
    WindowHalfGone,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::FailingTooLong => "failing for longer than fallback-after",
            Reason::RateLimited => "rate limited",
            Reason::WindowHalfGone => "less than half of the renewal window left",
        }
    }
}

/// What the next application of a renewal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Apply to the active issuer.
    Active(usize),
    /// Switch to this issuer (it becomes active) and apply to it.
    Switch(usize, Reason),
    /// Try the primary once; the fallback stays active unless it issues.
    ProbePrimary,
}

impl Pick {
    /// The chain index the application goes to.
    pub fn index(self) -> usize {
        match self {
            Pick::Active(i) | Pick::Switch(i, _) => i,
            Pick::ProbePrimary => 0,
        }
    }
}

/// Which issuer the next application of a renewal goes to. `fresh` is true
/// for the first application of a renewal (none has failed yet).
pub fn pick(
    chain_len: usize,
    state: &State,
    fresh: bool,
    window: Window,
    fallback_after: i64,
    now: i64,
) -> Pick {
    if chain_len <= 1 {
        return Pick::Active(0);
    }
    let active = if state.active < chain_len {
        state.active
    } else {
        0
    };
    if active != 0 && fresh && now - state.active_since >= fallback_after {
        return Pick::ProbePrimary;
    }
    let Some(failing) = state.failing_since else {
        return Pick::Active(active);
    };
    let reason = if state.rate_limited {
        Reason::RateLimited
    } else if now - failing >= fallback_after {
        Reason::FailingTooLong
    } else if now >= window.half_gone_at() {
        Reason::WindowHalfGone
    } else {
        return Pick::Active(active);
    };
    Pick::Switch((active + 1) % chain_len, reason)
}

/// The state after switching to `to` at `now`.
pub fn switched(state: &State, to: usize, now: i64) -> State {
    State {
        active: to,
        active_since: now,
        fallback_since: if to == 0 {
            None
        } else {
            state.fallback_since.or(Some(now))
        },
        failing_since: None,
        rate_limited: false,
    }
}

/// The state after an application to chain index `used` failed at `now`.
/// A failed probe of the primary leaves the fallback's state alone.
pub fn failed(state: &State, used: usize, rate_limited: bool, now: i64) -> State {
    if used != state.active {
        return state.clone();
    }
    State {
        failing_since: state.failing_since.or(Some(now)),
        rate_limited,
        ..state.clone()
    }
}

/// The state after an application to chain index `used` was issued at
/// `now`, and whether that moved the lineage to another issuer (a probe of
/// the primary that succeeded).
pub fn issued(state: &State, used: usize, now: i64) -> (State, bool) {
    if used != state.active {
        return (switched(state, used, now), true);
    }
    (
        State {
            failing_since: None,
            rate_limited: false,
            ..state.clone()
        },
        false,
    )
}

/// How long to wait before the next attempt after a failed application
/// (`state` is already [`failed`]'s answer), given the delay renewal would
/// use without fallback issuers: no later than the moment the next pick
/// switches issuers, and a minute after a failed probe or a rate limit
/// (the next attempt goes to another issuer, which owes nothing to the
/// refusing one's limits).
pub fn retry_delay(
    chain_len: usize,
    state: &State,
    used: usize,
    window: Window,
    fallback_after: i64,
    now: i64,
    base: i64,
) -> i64 {
    if chain_len <= 1 {
        return base;
    }
    if used != state.active || state.rate_limited {
        return MIN_RETRY_SECS;
    }
    let Some(failing) = state.failing_since else {
        return base;
    };
    let switch_at = (failing + fallback_after).min(window.half_gone_at().max(failing));
    base.min((switch_at - now).max(MIN_RETRY_SECS))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000;
    const HOUR: i64 = 3600;
    const DAY: i64 = 86_400;
    const AFTER: i64 = HOUR;

    /// A 90-day certificate due at T0 (expires 30 days later).
    fn window() -> Window {
        Window {
            due_at: T0,
            not_after: T0 + 30 * DAY,
        }
    }

    #[test]
    fn a_single_issuer_never_switches() {
        let mut s = State::primary(T0);
        s = failed(&s, 0, true, T0);
        assert_eq!(
            pick(1, &s, false, window(), AFTER, T0 + 40 * DAY),
            Pick::Active(0)
        );
        assert_eq!(retry_delay(1, &s, 0, window(), AFTER, T0, 777), 777);
    }

    #[test]
    fn failing_for_fallback_after_switches_to_the_next_issuer() {
        let s = State::primary(T0 - DAY);
        assert_eq!(pick(3, &s, true, window(), AFTER, T0), Pick::Active(0));
        let s = failed(&s, 0, false, T0);
        assert_eq!(s.failing_since, Some(T0));
        // A second failure keeps the first failure's time.
        let s = failed(&s, 0, false, T0 + 600);
        assert_eq!(s.failing_since, Some(T0));
        assert_eq!(
            pick(3, &s, false, window(), AFTER, T0 + AFTER - 1),
            Pick::Active(0)
        );
        let p = pick(3, &s, false, window(), AFTER, T0 + AFTER);
        assert_eq!(p, Pick::Switch(1, Reason::FailingTooLong));
        let s = switched(&s, p.index(), T0 + AFTER);
        assert_eq!(s.active, 1);
        assert_eq!(s.fallback_since, Some(T0 + AFTER));
        assert_eq!(s.failing_since, None);
        // The second fallback, then round to the primary; leaving the
        // primary is remembered from the first switch.
        let s = failed(&s, 1, false, T0 + 2 * AFTER);
        let p = pick(3, &s, false, window(), AFTER, T0 + 3 * AFTER);
        assert_eq!(p, Pick::Switch(2, Reason::FailingTooLong));
        let s = switched(&s, 2, T0 + 3 * AFTER);
        assert_eq!(s.fallback_since, Some(T0 + AFTER));
        let s = failed(&s, 2, false, T0 + 3 * AFTER);
        let p = pick(3, &s, false, window(), AFTER, T0 + 4 * AFTER);
        assert_eq!(p, Pick::Switch(0, Reason::FailingTooLong));
        let s = switched(&s, 0, T0 + 4 * AFTER);
        assert_eq!(s.fallback_since, None);
    }

    #[test]
    fn a_rate_limit_switches_at_once() {
        let s = failed(&State::primary(T0), 0, true, T0);
        assert_eq!(
            pick(2, &s, false, window(), AFTER, T0 + 60),
            Pick::Switch(1, Reason::RateLimited)
        );
        assert_eq!(
            retry_delay(2, &s, 0, window(), AFTER, T0, 3600),
            MIN_RETRY_SECS,
            "the next issuer is tried a minute later, not after the CA's back-off"
        );
    }

    #[test]
    fn less_than_half_the_window_left_switches_on_the_first_failure() {
        let late = window().half_gone_at();
        assert_eq!(late, T0 + 15 * DAY);
        let s = failed(&State::primary(T0), 0, false, late + 10);
        assert_eq!(
            pick(2, &s, false, window(), AFTER, late + 70),
            Pick::Switch(1, Reason::WindowHalfGone)
        );
        // Early in the window the same failure waits for fallback-after.
        let s = failed(&State::primary(T0), 0, false, T0 + 10);
        assert_eq!(
            pick(2, &s, false, window(), AFTER, T0 + 70),
            Pick::Active(0)
        );
    }

    #[test]
    fn retries_come_no_later_than_the_switch() {
        let s = failed(&State::primary(T0), 0, false, T0);
        // Back-off would wait two hours; the switch is due in one.
        assert_eq!(retry_delay(2, &s, 0, window(), AFTER, T0 + 600, 7200), 3000);
        // A short back-off is kept.
        assert_eq!(retry_delay(2, &s, 0, window(), AFTER, T0 + 600, 120), 120);
        // Past the switch point: a minute.
        assert_eq!(
            retry_delay(2, &s, 0, window(), AFTER, T0 + 2 * AFTER, 7200),
            MIN_RETRY_SECS
        );
        // Late in the window the half-way point comes first.
        let w = Window {
            due_at: T0 - 10 * HOUR,
            not_after: T0 + 11 * HOUR,
        };
        let s = failed(&State::primary(T0), 0, false, T0 - 5 * HOUR);
        assert_eq!(w.half_gone_at(), T0 + 30 * 60);
        assert_eq!(retry_delay(2, &s, 0, w, 10 * HOUR, T0, 7200), 1800);
    }

    #[test]
    fn the_primary_is_probed_on_each_new_renewal_after_fallback_after() {
        let s = switched(&State::primary(T0), 1, T0);
        // Too soon after the switch: stay on the fallback.
        assert_eq!(
            pick(2, &s, true, window(), AFTER, T0 + AFTER - 1),
            Pick::Active(1)
        );
        // A later renewal tries the primary first ...
        assert_eq!(
            pick(2, &s, true, window(), AFTER, T0 + AFTER),
            Pick::ProbePrimary
        );
        // ... but not the retry of a renewal whose probe failed.
        let after_probe = failed(&s, 0, false, T0 + AFTER);
        assert_eq!(after_probe, s, "a failed probe does not blame the fallback");
        assert_eq!(
            retry_delay(2, &after_probe, 0, window(), AFTER, T0 + AFTER, 60),
            MIN_RETRY_SECS
        );
        assert_eq!(
            pick(2, &after_probe, false, window(), AFTER, T0 + AFTER + 60),
            Pick::Active(1)
        );
        // The next renewal probes again; this time the primary issues.
        let (back, moved) = issued(&s, 0, T0 + 40 * DAY);
        assert!(moved);
        assert_eq!(back.active, 0);
        assert_eq!(back.fallback_since, None);
        assert_eq!(back.active_since, T0 + 40 * DAY);
    }

    #[test]
    fn issuing_from_the_active_issuer_clears_its_failures() {
        let s = failed(&State::primary(T0), 0, true, T0);
        let (ok, moved) = issued(&s, 0, T0 + 60);
        assert!(!moved);
        assert_eq!(ok, State::primary(T0));
    }

    #[test]
    fn an_active_index_outside_the_chain_means_the_primary() {
        let s = State {
            active: 7,
            ..State::primary(T0)
        };
        assert_eq!(pick(2, &s, false, window(), AFTER, T0), Pick::Active(0));
    }
}
