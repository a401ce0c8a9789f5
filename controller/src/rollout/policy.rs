//! Rollout policy as pure functions: how targets split into waves, whether a
//! rollout is over its failure budget, and what the reconciler does next.
//!
//! Targets are ordered (by agent name, then target name) before planning.
//! Wave 0 holds the first `canary` targets; the rest go in waves of `wave`
//! targets (a count, or a percentage of all targets, rounded up). A wave
//! starts only when every target of the previous one is installed or failed
//! and the pause has elapsed. Any canary failure halts; after the canary,
//! more than `max_failures` failures halt. A halted rollout touches nothing
//! more.

use serde::{Deserialize, Serialize};

/// Size of the waves after the canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaveSize {
    Count(u32),
    Percent(u8),
}

impl WaveSize {
    /// Parse `N` or `P%`.
    pub fn parse(text: &str) -> Result<WaveSize, String> {
        let t = text.trim();
        if let Some(p) = t.strip_suffix('%') {
            let p: u32 = p.trim().parse().map_err(|_| {
                format!("--wave {text:?}: expected a count like 3 or a percentage like 25%")
            })?;
            if !(1..=100).contains(&p) {
                return Err(format!(
                    "--wave {text}: a percentage must be between 1% and 100%"
                ));
            }
            return Ok(WaveSize::Percent(p as u8));
        }
        let n: u32 = t.parse().map_err(|_| {
            format!("--wave {text:?}: expected a count like 3 or a percentage like 25%")
        })?;
        if n == 0 {
            return Err("--wave 0: a wave must hold at least one target".into());
        }
        Ok(WaveSize::Count(n))
    }

    pub fn render(self) -> String {
        match self {
            WaveSize::Count(n) => n.to_string(),
            WaveSize::Percent(p) => format!("{p}%"),
        }
    }

    fn size(self, total: usize) -> usize {
        match self {
            WaveSize::Count(n) => n as usize,
            WaveSize::Percent(p) => (total * p as usize).div_ceil(100),
        }
        .max(1)
    }
}

/// How a rollout proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Strategy {
    pub canary: u32,
    pub wave: WaveSize,
    pub pause_secs: u64,
    pub max_failures: u32,
    pub offline_deadline_secs: u64,
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            canary: 1,
            wave: WaveSize::Percent(25),
            pause_secs: 0,
            max_failures: 0,
            offline_deadline_secs: 600,
        }
    }
}

/// The wave of each of `total` ordered targets.
pub fn plan(total: usize, s: &Strategy) -> Vec<u32> {
    let canary = (s.canary as usize).min(total);
    let size = s.wave.size(total);
    (0..total)
        .map(|i| {
            if i < canary {
                0
            } else {
                let first = u32::from(canary > 0);
                first + ((i - canary) / size) as u32
            }
        })
        .collect()
}

/// Where one target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetState {
    Waiting,
    InProgress,
    Installed,
    Failed,
    Skipped,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Waiting => "waiting",
            TargetState::InProgress => "in_progress",
            TargetState::Installed => "installed",
            TargetState::Failed => "failed",
            TargetState::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<TargetState> {
        Some(match s {
            "waiting" => TargetState::Waiting,
            "in_progress" => TargetState::InProgress,
            "installed" => TargetState::Installed,
            "failed" => TargetState::Failed,
            "skipped" => TargetState::Skipped,
            _ => return None,
        })
    }

    pub fn terminal(self) -> bool {
        matches!(
            self,
            TargetState::Installed | TargetState::Failed | TargetState::Skipped
        )
    }
}

/// What the reconciler should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send wave `n` to its agents.
    StartWave(u32),
    /// The current wave just finished; remember when (for the pause).
    WaveDone,
    /// Nothing to do until `until` (or a change).
    Wait {
        until: Option<i64>,
    },
    Halt(String),
    Complete,
}

/// The facts about a running rollout the decision needs.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    /// (wave, state) of every target.
    pub targets: &'a [(u32, TargetState)],
    /// -1 before the first wave.
    pub current_wave: i64,
    /// When the current wave finished, once recorded.
    pub wave_done_at: Option<i64>,
}

/// Failures that count against the budget: (canary failures, later failures).
pub fn failures(strategy: &Strategy, targets: &[(u32, TargetState)]) -> (usize, usize) {
    let failed = |pred: &dyn Fn(u32) -> bool| {
        targets
            .iter()
            .filter(|(w, s)| *s == TargetState::Failed && pred(*w))
            .count()
    };
    if strategy.canary > 0 {
        (failed(&|w| w == 0), failed(&|w| w > 0))
    } else {
        (0, failed(&|_| true))
    }
}

/// Decide the next step of a running rollout at `now`.
pub fn next_step(strategy: &Strategy, p: &Progress<'_>, now: i64) -> Step {
    let (canary_failed, later_failed) = failures(strategy, p.targets);
    if canary_failed > 0 {
        return Step::Halt(format!(
            "{canary_failed} canary target(s) failed; no other target was touched"
        ));
    }
    if later_failed > strategy.max_failures as usize {
        return Step::Halt(format!(
            "{later_failed} target(s) failed, more than the budget of {}",
            strategy.max_failures
        ));
    }
    let last_wave = p.targets.iter().map(|(w, _)| *w as i64).max();
    let Some(last_wave) = last_wave else {
        return Step::Complete;
    };
    if p.current_wave < 0 {
        return Step::StartWave(0);
    }
    let current_done = p
        .targets
        .iter()
        .filter(|(w, _)| *w as i64 == p.current_wave)
        .all(|(_, s)| s.terminal());
    // A retried target of an earlier wave is in progress again while the
    // current wave may be done: the rollout is not over until it reports.
    if !current_done || p.targets.iter().any(|(_, s)| *s == TargetState::InProgress) {
        return Step::Wait { until: None };
    }
    if p.current_wave >= last_wave {
        return Step::Complete;
    }
    let Some(done_at) = p.wave_done_at else {
        return Step::WaveDone;
    };
    // Times are whole seconds, so a wave that finished at 10.9 s is
    // recorded at 10 s: one more second keeps the pause at least as long
    // as asked.
    let rounding = i64::from(strategy.pause_secs > 0);
    let resume_at = done_at.saturating_add(strategy.pause_secs as i64 + rounding);
    if now < resume_at {
        return Step::Wait {
            until: Some(resume_at),
        };
    }
    Step::StartWave((p.current_wave + 1) as u32)
}

/// Delay before the first automatic retry of a renewal rollout that ended
/// with failed targets.
pub const RETRY_FIRST_SECS: i64 = 30;
/// The back-off doubles up to this delay and stays there.
pub const RETRY_MAX_SECS: i64 = 3_600;

/// Seconds to wait before the retry that follows `attempts` earlier ones:
/// 30 s, 60 s, 120 s, … at most an hour.
pub fn retry_delay(attempts: u32) -> i64 {
    // 30 << 7 is already past an hour; capping the shift keeps it in range.
    (RETRY_FIRST_SECS << attempts.min(7)).min(RETRY_MAX_SECS)
}

/// When a rollout that has just halted or completed at `now` is retried on
/// its own, or `None` when it is not. Only renewal rollouts heal
/// themselves: their targets serve a superseded certificate that will
/// expire, while a deploy or rollback is an operator's command the operator
/// is there to follow up. Nothing to retry when no target failed.
pub fn retry_at(
    kind: &str,
    targets: &[(u32, TargetState)],
    attempts: u32,
    now: i64,
) -> Option<i64> {
    if kind != "renewal" || !targets.iter().any(|(_, s)| *s == TargetState::Failed) {
        return None;
    }
    Some(now.saturating_add(retry_delay(attempts)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_backs_off_from_30s_to_an_hour() {
        let delays: Vec<i64> = (0..10).map(retry_delay).collect();
        assert_eq!(delays, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(retry_delay(u32::MAX), 3600);
    }

    #[test]
    fn only_failed_renewals_are_retried() {
        let failed = [(0, Failed), (1, Waiting)];
        let ok = [(0, Installed), (1, Installed)];
        assert_eq!(retry_at("renewal", &failed, 0, 1_000), Some(1_030));
        assert_eq!(retry_at("renewal", &failed, 3, 1_000), Some(1_240));
        assert_eq!(retry_at("renewal", &ok, 0, 1_000), None);
        assert_eq!(retry_at("deploy", &failed, 0, 1_000), None);
        assert_eq!(retry_at("rollback", &failed, 0, 1_000), None);
    }

    #[test]
    fn a_retried_target_of_an_earlier_wave_holds_completion() {
        let st = s(1, WaveSize::Count(1), 5);
        let targets = [(0, InProgress), (1, Installed)];
        let p = Progress {
            targets: &targets,
            current_wave: 1,
            wave_done_at: Some(0),
        };
        assert_eq!(next_step(&st, &p, 10), Step::Wait { until: None });
        let targets = [(0, Installed), (1, Installed)];
        let p = Progress {
            targets: &targets,
            current_wave: 1,
            wave_done_at: Some(0),
        };
        assert_eq!(next_step(&st, &p, 10), Step::Complete);
    }
    use TargetState::*;

    fn s(canary: u32, wave: WaveSize, max_failures: u32) -> Strategy {
        Strategy {
            canary,
            wave,
            pause_secs: 10,
            max_failures,
            offline_deadline_secs: 60,
        }
    }

    #[test]
    fn wave_sizes_parse() {
        assert_eq!(WaveSize::parse("25%"), Ok(WaveSize::Percent(25)));
        assert_eq!(WaveSize::parse("3"), Ok(WaveSize::Count(3)));
        assert!(WaveSize::parse("0").is_err());
        assert!(WaveSize::parse("0%").is_err());
        assert!(WaveSize::parse("150%").is_err());
        assert!(WaveSize::parse("-1").is_err());
        assert!(WaveSize::parse("x").is_err());
    }

    #[test]
    fn canary_then_waves() {
        assert_eq!(
            plan(5, &s(1, WaveSize::Percent(25), 0)),
            vec![0, 1, 1, 2, 2]
        );
        assert_eq!(plan(5, &s(1, WaveSize::Count(1), 0)), vec![0, 1, 2, 3, 4]);
        assert_eq!(plan(4, &s(0, WaveSize::Count(2), 0)), vec![0, 0, 1, 1]);
        assert_eq!(plan(2, &s(3, WaveSize::Count(2), 0)), vec![0, 0]);
        assert_eq!(
            plan(10, &s(1, WaveSize::Percent(100), 0)),
            vec![0, 1, 1, 1, 1, 1, 1, 1, 1, 1]
        );
        assert!(plan(0, &Strategy::default()).is_empty());
    }

    fn step(
        strategy: &Strategy,
        targets: &[(u32, TargetState)],
        wave: i64,
        done: Option<i64>,
        now: i64,
    ) -> Step {
        next_step(
            strategy,
            &Progress {
                targets,
                current_wave: wave,
                wave_done_at: done,
            },
            now,
        )
    }

    #[test]
    fn waves_advance_only_when_finished_and_paused() {
        let st = s(1, WaveSize::Count(1), 0);
        let t = [(0, Waiting), (1, Waiting)];
        assert_eq!(step(&st, &t, -1, None, 0), Step::StartWave(0));
        let t = [(0, InProgress), (1, Waiting)];
        assert_eq!(step(&st, &t, 0, None, 0), Step::Wait { until: None });
        let t = [(0, Installed), (1, Waiting)];
        assert_eq!(step(&st, &t, 0, None, 5), Step::WaveDone);
        assert_eq!(step(&st, &t, 0, Some(5), 6), Step::Wait { until: Some(16) });
        assert_eq!(
            step(&st, &t, 0, Some(5), 15),
            Step::Wait { until: Some(16) }
        );
        assert_eq!(step(&st, &t, 0, Some(5), 16), Step::StartWave(1));
        let t = [(0, Installed), (1, Installed)];
        assert_eq!(step(&st, &t, 1, None, 20), Step::Complete);
    }

    #[test]
    fn canary_failure_halts() {
        let st = s(1, WaveSize::Count(1), 5);
        let t = [(0, Failed), (1, Waiting)];
        assert!(matches!(step(&st, &t, 0, None, 0), Step::Halt(_)));
    }

    #[test]
    fn budget_beyond_canary() {
        let st = s(1, WaveSize::Count(2), 1);
        let t = [(0, Installed), (1, Failed), (1, Installed), (2, Waiting)];
        assert_eq!(step(&st, &t, 1, Some(0), 100), Step::StartWave(2));
        let t = [(0, Installed), (1, Failed), (1, Failed), (2, Waiting)];
        assert!(matches!(step(&st, &t, 1, Some(0), 100), Step::Halt(_)));
        let zero = s(1, WaveSize::Count(2), 0);
        let t = [(0, Installed), (1, Failed), (1, InProgress), (2, Waiting)];
        assert!(
            matches!(step(&zero, &t, 1, None, 0), Step::Halt(_)),
            "halts at once"
        );
    }

    #[test]
    fn empty_rollout_completes() {
        assert_eq!(step(&Strategy::default(), &[], -1, None, 0), Step::Complete);
    }
}
