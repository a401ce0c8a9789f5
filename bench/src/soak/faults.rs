//! The fault schedule: a pure function of the seed and the soak's size.
//!
//! Every fault is an interval of simulated hours `[from, until)` (a restart
//! is an instant). Durations are the (an issuer down 3 days, a host
//! down 3 weeks, an install failing a week), shortened to a third of the
//! run when the run is shorter than that; starts are drawn so every fault
//! ends inside the run with at least a day left to recover.

use super::sim::Rng;

/// A controller restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restart {
    /// `Running::stop`: connections closed, tasks drained.
    Graceful,
    /// `Running::abort`: tasks killed where they stand.
    Crash,
}

/// What happens at one simulated hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    IssuerDown(String),
    IssuerUp(String),
    HostDown(usize),
    HostUp(usize),
    /// Target `(agent, k)`'s test command starts failing.
    InstallFails(usize, usize),
    InstallWorks(usize, usize),
    Restart(Restart),
}

/// How many of each fault.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) hours: i64,
    pub(crate) issuer: Option<String>,
    pub(crate) offline_agents: usize,
    pub(crate) agents: usize,
    /// (agent, target) of every target.
    pub(crate) targets: Vec<(usize, usize)>,
    /// Per target: the hours its certificate is expected to come due for
    /// renewal, when an install failure may hit it (see [`Schedule::new`]).
    pub(crate) renewals: Vec<Vec<i64>>,
    /// Per target: the latest its renewal may come due before each of
    /// `renewals` (the due time's jitter), in hours, when a week-long
    /// install failure from then on brings its certificate within the
    /// at-risk lead of expiry without letting it expire ([`tight`]); `None`
    /// otherwise.
    pub(crate) tight: Vec<Option<i64>>,
    pub(crate) failing_percent: usize,
    pub(crate) restarts: usize,
}

/// Events by hour, each hour's in a stable order.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    events: std::collections::BTreeMap<i64, Vec<Event>>,
    pub(crate) failing_targets: usize,
    /// Failing targets whose certificate the failure brings within its
    /// at-risk lead.
    pub(crate) tight_targets: usize,
}

/// Hours of a week-long install failure.
const FAILURE_HOURS: i64 = 7 * 24;

/// For a lineage of `days`-day certificates under the default renewal
/// policy (due a third of the lifetime, at most 30 days, before expiry,
/// moved earlier by a jitter of up to a twentieth of that): the largest
/// jitter in hours, when a week-long install failure starting just before
/// the earliest due time brings the certificate within its at-risk lead
/// (the shorter of 7 days and a sixth of its lifetime) with at least a day
/// still left before it expires; `None` when the failure would leave it
/// further from expiry, or let it expire.
pub(crate) fn tight(days: i64) -> Option<i64> {
    let window = (days * 24 / 3).min(30 * 24);
    let lead = (7 * 24).min(days * 24 / 6);
    let jitter = window / 20;
    // Installed about an hour after the failure ends (the rollout retry).
    let margin = window + jitter + 1 - FAILURE_HOURS - 2;
    (margin < lead - 2 && window - FAILURE_HOURS - 2 > 24).then_some(jitter)
}

impl Schedule {
    pub(crate) fn new(plan: &Plan, seed: u64) -> Schedule {
        let mut rng = Rng::new(seed);
        let mut s = Schedule::default();
        let window = |rng: &mut Rng, hours: i64| -> (i64, i64) {
            let len = hours.min(plan.hours / 3).max(1);
            let from = rng.range(
                24.min(plan.hours / 4),
                plan.hours - len - 24.min(plan.hours / 4),
            );
            (from.max(1), from.max(1) + len)
        };
        if let Some(issuer) = &plan.issuer {
            let (from, until) = window(&mut rng, 3 * 24);
            s.add(from, Event::IssuerDown(issuer.clone()));
            s.add(until, Event::IssuerUp(issuer.clone()));
        }
        for agent in rng.pick(plan.agents, plan.offline_agents) {
            let (from, until) = window(&mut rng, 21 * 24);
            s.add(from, Event::HostDown(agent));
            s.add(until, Event::HostUp(agent));
        }
        // A failing install matters when something is to be installed: each
        // failure starts up to two days before one of the target's
        // renewals (the due time's jitter is at most 1.5 days) and lasts a
        // week. Only targets whose certificate's renewal window is longer
        // than the failure are hit: a host that cannot install anything for
        // the whole window serves an expired certificate whatever its
        // controller does (the at-risk item says so).
        //
        // A fifth of them (at least one) are *tight*: targets whose
        // certificate the week brings within its at-risk lead of expiry
        // (their failure starts before the earliest their renewal may come
        // due), so the soak measures how early such a certificate was
        // flagged (`at_risk_min_lead_ratio`) and not only that it was
        // replaced in time.
        let len = FAILURE_HOURS.min(plan.hours / 3).max(1);
        let fits = |h: &i64| *h - 48 >= 1 && *h + len + 24 <= plan.hours;
        let eligible: Vec<usize> = (0..plan.targets.len())
            .filter(|&i| plan.renewals.get(i).is_some_and(|r| r.iter().any(fits)))
            .collect();
        // A tight failure hits the lineage's first renewal: later ones
        // drift earlier by each generation's jitter (which depends on
        // certificate ids not known in advance), the first by one jitter
        // at most.
        let tight: Vec<usize> = eligible
            .iter()
            .copied()
            .filter(|&i| plan.tight.get(i).copied().flatten().is_some())
            .filter(|&i| plan.renewals[i].first().is_some_and(fits))
            .collect();
        let n = (plan.targets.len() * plan.failing_percent).div_ceil(100);
        let n_tight = if n == 0 { 0 } else { (n / 5).max(1) }.min(tight.len());
        let mut chosen: Vec<(usize, bool)> = rng
            .pick(tight.len(), n_tight)
            .into_iter()
            .map(|i| (tight[i], true))
            .collect();
        let rest: Vec<usize> = eligible
            .iter()
            .copied()
            .filter(|i| !chosen.iter().any(|(c, _)| c == i))
            .collect();
        chosen.extend(
            rng.pick(rest.len(), n - n_tight)
                .into_iter()
                .map(|i| (rest[i], false)),
        );
        s.failing_targets = chosen.len();
        s.tight_targets = n_tight;
        for (t, is_tight) in chosen {
            let (agent, k) = plan.targets[t];
            let due: Vec<i64> = plan.renewals[t].iter().copied().filter(fits).collect();
            let from = match plan.tight[t].filter(|_| is_tight) {
                Some(jitter) => due[0] - jitter - 1,
                None => due[rng.range(0, due.len() as i64 - 1) as usize] - rng.range(1, 48),
            };
            s.add(from, Event::InstallFails(agent, k));
            s.add(from + len, Event::InstallWorks(agent, k));
        }
        for i in 0..plan.restarts {
            // Spread over the first half of the run, each at a random hour
            // of its share; the second half is one long uptime, longer
            // than the controller's endpoint certificate lives (90 days)
            // in a two-year run, as a controller that is never restarted.
            let share = (plan.hours / 2) / plan.restarts.max(1) as i64;
            let at = i as i64 * share + rng.range(1, share.max(2) - 1);
            let kind = if i % 2 == 0 {
                Restart::Graceful
            } else {
                Restart::Crash
            };
            s.add(at.clamp(1, plan.hours), Event::Restart(kind));
        }
        s
    }

    fn add(&mut self, hour: i64, e: Event) {
        self.events.entry(hour).or_default().push(e);
    }

    /// The events of `hour`.
    pub(crate) fn at(&self, hour: i64) -> &[Event] {
        self.events.get(&hour).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            hours: 730 * 24,
            issuer: Some("b".into()),
            offline_agents: 20,
            agents: 200,
            targets: (0..1000).map(|i| (i % 200, i / 200)).collect(),
            failing_percent: 5,
            renewals: (0..1000)
                .map(|i| {
                    if i % 10 == 0 {
                        vec![]
                    } else {
                        vec![2000, 9000]
                    }
                })
                .collect(),
            tight: (0..1000).map(|i| (i % 7 == 3).then_some(12)).collect(),
            restarts: 20,
        }
    }

    #[test]
    fn schedule_is_seeded_and_complete() {
        let a = Schedule::new(&plan(), 1);
        let b = Schedule::new(&plan(), 1);
        assert_eq!(a.events, b.events);
        let all: Vec<&Event> = a.events.values().flatten().collect();
        let count = |f: &dyn Fn(&Event) -> bool| all.iter().filter(|e| f(e)).count();
        assert_eq!(count(&|e| matches!(e, Event::HostDown(_))), 20);
        assert_eq!(count(&|e| matches!(e, Event::HostUp(_))), 20);
        assert_eq!(count(&|e| matches!(e, Event::InstallFails(..))), 50);
        assert_eq!((a.failing_targets, a.tight_targets), (50, 10));
        // Each failure covers a renewal of its target.
        for (h, events) in &a.events {
            for e in events {
                if let Event::InstallFails(..) = e {
                    assert!(
                        [2000, 9000].iter().any(|r| (h + 1..=h + 48).contains(r)),
                        "{h}"
                    );
                }
            }
        }
        assert_eq!(count(&|e| matches!(e, Event::Restart(Restart::Crash))), 10);
        assert_eq!(
            count(&|e| matches!(e, Event::Restart(Restart::Graceful))),
            10
        );
        assert_eq!(count(&|e| matches!(e, Event::IssuerDown(_))), 1);
        assert!(a.events.keys().all(|h| (1..=730 * 24).contains(h)));
        // The second half has no restart: one uptime longer than 90 days.
        assert!(a
            .events
            .iter()
            .filter(|(_, e)| e.iter().any(|e| matches!(e, Event::Restart(_))))
            .all(|(h, _)| *h <= 365 * 24));
        // A host down for three weeks comes back three weeks later.
        for (h, events) in &a.events {
            for e in events {
                if let Event::HostDown(x) = e {
                    assert!(a.at(h + 21 * 24).contains(&Event::HostUp(*x)));
                }
            }
        }
    }

    #[test]
    fn tight_lifetimes_come_within_their_lead_and_not_past_expiry() {
        // 8-day windows and longer hold a week's failure; from 38 days on
        // the certificate stays further from expiry than its lead.
        let days: Vec<i64> = (1..400).filter(|&d| tight(d).is_some()).collect();
        assert_eq!(days, (25..=37).collect::<Vec<_>>());
        assert_eq!(tight(30), Some(12));
    }

    #[test]
    fn short_runs_shorten_the_faults() {
        let mut p = plan();
        p.hours = 60 * 24;
        let s = Schedule::new(&p, 3);
        assert!(s.events.keys().all(|h| (1..=60 * 24).contains(h)));
    }
}
