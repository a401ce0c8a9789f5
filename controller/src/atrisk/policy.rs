//! When a deployment is at risk — a pure function of what is stored about
//! it, the item it had at the last pass, and `now`.
//!
//! A deployment is at risk when the certificate it serves is past its
//! renewal due time and no newer one is installed *because something
//! failed*: the renewal keeps failing, no instance is left to renew with,
//! the agent has been offline past its deadline, or the rollout of the
//! newer certificate failed on this target or halted before reaching it.
//! Whatever the cause, it is also at risk once less than half of its
//! renewal window (`renew_before`, effective value) is left before expiry,
//! and — due or not — while its lineage renews from a fallback issuer
//! because the primary keeps failing (until the primary is back).
//!
//! Invariants:
//! - `since` is when the condition began, computed from stored facts, not
//!   when a pass noticed it: for the half window `not_after −
//!   renew_before/2`; for a renewal failing, the first failed attempt after
//!   the due time; for an offline agent `max(due, last contact +
//!   deadline)`; for a failed or halted rollout `max(due, when it failed)`;
//!   for a fallback issuer, when the lineage switched to it.
//!   When several hold, the earliest wins, and an item that stays at risk
//!   keeps the earliest `since` it ever had.
//! - The reason shown is the most telling cause (renewal before agent
//!   before rollout); the half window is the reason only when no cause is
//!   known.

use certfleet_protocol::message::{AtRiskReason, Timestamp};

/// Longest reason text kept (errors may carry captured command output;
/// `rollout show` and `deployment list` have all of it).
pub const MAX_TEXT: usize = 1000;

/// The certificate a target serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub not_after: i64,
    /// Its renewal due time (`renewal::policy::due_at`).
    pub due_at: i64,
    /// Its effective `renew_before` (`renewal::policy::renew_before`).
    pub renew_before: i64,
}

/// Where the renewal of the served certificate stands, when no newer
/// certificate of its lineage exists yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Not failing (not started yet, or in flight without a failure).
    Healthy,
    /// Attempts fail: the last error and when the first attempt failed.
    Failing { error: String, first_failure: i64 },
    /// Blocked: no instance to renew with.
    NoInstance { why: String },
}

/// The newer certificate meant for the target, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replacement {
    /// None issued yet.
    NotIssued(Renewal),
    /// On its way, nothing failed.
    Pending,
    /// The install on this target failed (`error` is `None` while an
    /// automatic retry runs), first at `since`.
    Failed { error: Option<String>, since: i64 },
    /// The rollout halted or was aborted before reaching this target, at
    /// `since`.
    Halted { why: String, since: i64 },
}

/// The agent of the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agent {
    pub connected: bool,
    /// Last request seen from it (enrollment when it never connected).
    pub last_contact: i64,
    /// How long it may be away before a rollout gives up on it.
    pub deadline_secs: i64,
}

/// The lineage renews from a fallback issuer (`renewal/fallback.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnFallback {
    pub issuer: String,
    /// When the lineage switched away from its primary.
    pub since: i64,
}

/// Everything the decision needs about one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub served: Served,
    pub replacement: Replacement,
    pub agent: Agent,
    pub fallback: Option<OnFallback>,
}

/// Why a deployment is at risk, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Risk {
    pub reason: AtRiskReason,
    pub text: String,
    pub since: i64,
}

/// When less than half of the renewal window is left.
pub fn half_window_at(served: &Served) -> i64 {
    served.not_after - served.renew_before.max(0) / 2
}

/// `d` seconds, roughly: whole days from two days up, else whole hours,
/// else minutes ("15 d", "8 h", "20 min").
fn span(d: i64) -> String {
    match d {
        d if d >= 2 * 86_400 => format!("{} d", d / 86_400),
        d if d >= 3_600 => format!("{} h", d / 3_600),
        d => format!("{} min", d / 60),
    }
}

fn clip(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_string();
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Whether the deployment is at risk at `now`, and why. `previous` is its
/// item from the last pass for the same served certificate, if any.
pub fn assess(facts: &Facts, previous: Option<&Risk>, now: i64) -> Option<Risk> {
    let served = &facts.served;
    let due = served.due_at;
    let half_at = half_window_at(served);
    if now < due && now < half_at && facts.fallback.is_none() {
        return None;
    }
    let mut causes: Vec<Risk> = Vec::new();
    let mut cause = |reason: AtRiskReason, text: &str, since: i64| {
        causes.push(Risk {
            reason,
            text: clip(text),
            since: since.max(due),
        })
    };
    if now >= due {
        match &facts.replacement {
            Replacement::NotIssued(Renewal::NoInstance { why }) => {
                cause(AtRiskReason::NoInstance, why.as_str(), due)
            }
            Replacement::NotIssued(Renewal::Failing {
                error,
                first_failure,
            }) => cause(AtRiskReason::RenewalFailing, error.as_str(), *first_failure),
            Replacement::NotIssued(Renewal::Healthy) | Replacement::Pending => {}
            Replacement::Failed { .. } | Replacement::Halted { .. } => {}
        }
        let agent = &facts.agent;
        let away_at = agent.last_contact.saturating_add(agent.deadline_secs);
        if !agent.connected && now >= away_at {
            let text = format!(
                "agent offline since {}",
                Timestamp(agent.last_contact).to_rfc3339()
            );
            cause(AtRiskReason::AgentOffline, text.as_str(), away_at);
        }
        match &facts.replacement {
            Replacement::Failed { error, since } => {
                let text = match (error, previous) {
                    (Some(e), _) => e.clone(),
                    // A retry is running; the last failure still explains.
                    (None, Some(p)) if p.reason == AtRiskReason::RolloutFailed => p.text.clone(),
                    (None, _) => "the install failed; an automatic retry is in progress".into(),
                };
                cause(AtRiskReason::RolloutFailed, text.as_str(), *since)
            }
            Replacement::Halted { why, since } => {
                cause(AtRiskReason::RolloutHalted, why.as_str(), *since)
            }
            _ => {}
        }
    }
    if let Some(f) = &facts.fallback {
        // Raised at the switch, due or not: the primary is failing.
        causes.push(Risk {
            reason: AtRiskReason::FallbackIssuer,
            text: format!(
                "renewing from fallback issuer {} since {}: the primary keeps failing",
                f.issuer,
                Timestamp(f.since).to_rfc3339()
            ),
            since: f.since,
        });
    }
    let half = (now >= half_at).then_some(half_at);
    if causes.is_empty() && half.is_none() {
        return None;
    }
    let since = causes
        .iter()
        .map(|c| c.since)
        .chain(half)
        .chain(previous.map(|p| p.since))
        .min()?;
    let mut risk = match causes.into_iter().next() {
        Some(first) => first,
        None => Risk {
            reason: AtRiskReason::HalfWindowLeft,
            text: format!(
                "less than half of its {} renewal window is left before expiry",
                span(served.renew_before)
            ),
            since: half_at,
        },
    };
    risk.since = since;
    Some(risk)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOT_AFTER: i64 = 1_800_000_000;
    /// A 90-day certificate: renew 30 days before expiry, half at 15.
    const DUE: i64 = NOT_AFTER - 30 * DAY;
    const HALF: i64 = NOT_AFTER - 15 * DAY;

    fn facts(replacement: Replacement) -> Facts {
        Facts {
            served: Served {
                not_after: NOT_AFTER,
                due_at: DUE,
                renew_before: 30 * DAY,
            },
            replacement,
            agent: Agent {
                connected: true,
                last_contact: DUE - DAY,
                deadline_secs: 600,
            },
            fallback: None,
        }
    }

    #[test]
    fn a_lineage_on_a_fallback_issuer_is_at_risk_from_the_switch_due_or_not() {
        let switched = DUE - 40 * DAY;
        let mut f = facts(healthy());
        f.fallback = Some(OnFallback {
            issuer: "backup".into(),
            since: switched,
        });
        let risk = assess(&f, None, DUE - 20 * DAY).unwrap();
        assert_eq!(risk.reason, AtRiskReason::FallbackIssuer);
        assert_eq!(risk.since, switched);
        assert!(risk.text.contains("backup"), "{}", risk.text);
        // A failing renewal is the more telling reason; the since stays.
        f.replacement = Replacement::NotIssued(Renewal::Failing {
            error: "refused".into(),
            first_failure: DUE + 60,
        });
        let risk = assess(&f, None, DUE + 120).unwrap();
        assert_eq!(risk.reason, AtRiskReason::RenewalFailing);
        assert_eq!(risk.since, switched);
        // Back on the primary: not at risk before the due time.
        f.fallback = None;
        f.replacement = healthy();
        assert_eq!(assess(&f, None, DUE - 20 * DAY), None);
    }

    fn healthy() -> Replacement {
        Replacement::NotIssued(Renewal::Healthy)
    }

    #[test]
    fn nothing_before_the_due_time_whatever_failed() {
        let f = facts(Replacement::Failed {
            error: Some("nginx -t failed".into()),
            since: DUE - 5 * DAY,
        });
        assert_eq!(assess(&f, None, DUE - 1), None);
        let mut offline = facts(healthy());
        offline.agent.connected = false;
        assert_eq!(assess(&offline, None, DUE - 1), None);
    }

    #[test]
    fn past_due_without_a_failure_is_not_at_risk_until_half_the_window() {
        for r in [healthy(), Replacement::Pending] {
            let f = facts(r);
            assert_eq!(assess(&f, None, DUE + DAY), None);
            assert_eq!(assess(&f, None, HALF - 1), None);
            let risk = assess(&f, None, HALF).expect("half the window left");
            assert_eq!(risk.reason, AtRiskReason::HalfWindowLeft);
            assert_eq!(risk.since, HALF);
            assert!(risk.text.contains("30 d renewal window"), "{}", risk.text);
            // Still at risk, and since the same moment, after expiry.
            assert_eq!(
                assess(&f, None, NOT_AFTER + DAY).map(|r| r.since),
                Some(HALF)
            );
        }
    }

    #[test]
    fn a_failing_renewal_is_at_risk_from_its_first_failure_after_the_due_time() {
        let f = facts(Replacement::NotIssued(Renewal::Failing {
            error: "CA refused: rate limited".into(),
            first_failure: DUE + 3600,
        }));
        let risk = assess(&f, None, DUE + 7200).unwrap();
        assert_eq!(risk.reason, AtRiskReason::RenewalFailing);
        assert_eq!(risk.text, "CA refused: rate limited");
        assert_eq!(risk.since, DUE + 3600);
        // A failure before the due time (an early manual renew): at risk
        // from the due time, not before.
        let early = facts(Replacement::NotIssued(Renewal::Failing {
            error: "down".into(),
            first_failure: DUE - DAY,
        }));
        assert_eq!(assess(&early, None, DUE).unwrap().since, DUE);
        // Past the half window the reason stays the cause.
        assert_eq!(
            assess(&f, None, HALF + 1).unwrap().reason,
            AtRiskReason::RenewalFailing
        );
    }

    #[test]
    fn no_instance_is_at_risk_from_the_due_time() {
        let f = facts(Replacement::NotIssued(Renewal::NoInstance {
            why: "no unused instance left".into(),
        }));
        let risk = assess(&f, None, DUE + 10).unwrap();
        assert_eq!(risk.reason, AtRiskReason::NoInstance);
        assert_eq!(risk.since, DUE);
    }

    #[test]
    fn an_offline_agent_is_at_risk_from_its_deadline_or_the_due_time() {
        let mut f = facts(Replacement::Pending);
        f.agent.connected = false;
        // Gone long before the due time: at risk from the due time.
        let risk = assess(&f, None, DUE + 1).unwrap();
        assert_eq!(risk.reason, AtRiskReason::AgentOffline);
        assert_eq!(risk.since, DUE);
        assert!(
            risk.text.starts_with("agent offline since 2026-"),
            "{}",
            risk.text
        );
        // Gone after the due time: at risk once its deadline passed.
        f.agent.last_contact = DUE + DAY;
        assert_eq!(assess(&f, None, DUE + DAY + 599), None);
        assert_eq!(
            assess(&f, None, DUE + DAY + 600).unwrap().since,
            DUE + DAY + 600
        );
        // A connected agent is not offline, whatever its last contact.
        f.agent.connected = true;
        assert_eq!(assess(&f, None, DUE + 2 * DAY), None);
    }

    #[test]
    fn a_failed_or_halted_rollout_is_at_risk_from_when_it_failed() {
        let f = facts(Replacement::Failed {
            error: Some("rolled_back: nginx -t failed".into()),
            since: DUE + 60,
        });
        let risk = assess(&f, None, DUE + 120).unwrap();
        assert_eq!(
            (risk.reason, risk.since),
            (AtRiskReason::RolloutFailed, DUE + 60)
        );
        assert_eq!(risk.text, "rolled_back: nginx -t failed");
        let h = facts(Replacement::Halted {
            why: "failure budget exceeded".into(),
            since: DUE + 30,
        });
        let risk = assess(&h, None, DUE + 120).unwrap();
        assert_eq!(
            (risk.reason, risk.since),
            (AtRiskReason::RolloutHalted, DUE + 30)
        );
    }

    #[test]
    fn a_retry_in_progress_keeps_the_item_its_since_and_its_error() {
        let first = facts(Replacement::Failed {
            error: Some("rolled_back: nginx -t failed".into()),
            since: DUE + 60,
        });
        let before = assess(&first, None, DUE + 120).unwrap();
        let retrying = facts(Replacement::Failed {
            error: None,
            since: DUE + 60,
        });
        let during = assess(&retrying, Some(&before), DUE + 200).unwrap();
        assert_eq!(during, before);
        // Without an earlier item the text says a retry runs.
        let fresh = assess(&retrying, None, DUE + 200).unwrap();
        assert!(fresh.text.contains("retry"), "{}", fresh.text);
        // Once nothing holds, the earlier item does not keep it at risk.
        let fixed = facts(Replacement::Pending);
        assert_eq!(assess(&fixed, Some(&before), DUE + 300), None);
    }

    #[test]
    fn the_earliest_since_wins_and_is_kept_across_passes() {
        // A rollout that failed after the half window began: at risk since
        // the half window, with the failure as the reason.
        let f = facts(Replacement::Failed {
            error: Some("boom".into()),
            since: HALF + DAY,
        });
        let risk = assess(&f, None, HALF + 2 * DAY).unwrap();
        assert_eq!(
            (risk.reason, risk.since),
            (AtRiskReason::RolloutFailed, HALF)
        );
        // An item raised earlier for another cause keeps its since.
        let earlier = Risk {
            reason: AtRiskReason::AgentOffline,
            text: "agent offline since …".into(),
            since: DUE + 5,
        };
        assert_eq!(
            assess(&f, Some(&earlier), HALF + 2 * DAY).unwrap().since,
            DUE + 5
        );
    }

    #[test]
    fn causes_are_ranked_renewal_agent_rollout() {
        let mut f = facts(Replacement::NotIssued(Renewal::Failing {
            error: "down".into(),
            first_failure: DUE + 100,
        }));
        f.agent.connected = false;
        let risk = assess(&f, None, DUE + 200).unwrap();
        assert_eq!(risk.reason, AtRiskReason::RenewalFailing);
        // The agent went away long ago: since is the due time.
        assert_eq!(risk.since, DUE);
        let mut g = facts(Replacement::Failed {
            error: Some("agent offline: no report".into()),
            since: DUE + 700,
        });
        g.agent.connected = false;
        assert_eq!(
            assess(&g, None, DUE + 800).unwrap().reason,
            AtRiskReason::AgentOffline
        );
    }

    #[test]
    fn long_errors_are_clipped_on_a_character_boundary() {
        let f = facts(Replacement::Failed {
            error: Some("é".repeat(MAX_TEXT)),
            since: DUE,
        });
        let text = assess(&f, None, DUE).unwrap().text;
        assert!(text.len() <= MAX_TEXT + '…'.len_utf8(), "{}", text.len());
        assert!(text.ends_with('…'));
    }

    #[test]
    fn the_half_window_of_short_certificates() {
        // A 6-day certificate renews 2 days early; half is 1 day.
        let s = Served {
            not_after: NOT_AFTER,
            due_at: NOT_AFTER - 2 * DAY,
            renew_before: 2 * DAY,
        };
        assert_eq!(half_window_at(&s), NOT_AFTER - DAY);
        assert_eq!(span(2 * DAY), "2 d");
        assert_eq!(span(8 * 3600 + 100), "8 h");
        assert_eq!(span(3 * DAY + 100), "3 d");
        assert_eq!(span(1200), "20 min");
    }
}
