//! `certfleet rollout …` and the rollout side of `certfleet deploy`.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::bail;
use certfleet_protocol::message::{Request, Response, RolloutInfo, StrategySpec};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::output::Output;
use crate::client::Client;

/// How a rollout proceeds.
#[derive(Debug, Clone, Args)]
pub struct StrategyArgs {
    /// Targets in the first wave (the canary); any failure there halts.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub canary: u32,
    /// Targets per later wave: a count (3) or a share of all targets (25%).
    #[arg(long, default_value = "25%", allow_hyphen_values = true)]
    pub wave: String,
    /// Wait this long between waves (e.g. 30s, 5m).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub pause: Duration,
    /// Failures tolerated after the canary before the rollout halts.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub max_failures: u32,
    /// An offline agent counts as pending this long, then as failed.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub offline_deadline: Duration,
}

impl StrategyArgs {
    pub(super) fn spec(&self) -> StrategySpec {
        StrategySpec {
            canary: self.canary,
            wave: self.wave.clone(),
            pause_secs: self.pause.as_secs(),
            max_failures: self.max_failures,
            offline_deadline_secs: self.offline_deadline.as_secs(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// List rollouts, newest first, with target counts (`rollout show` has
    /// every target).
    List(super::list::ListArgs),
    /// Show a rollout: strategy, waves, and every target's state and error.
    Show { id: String },
    /// Follow a rollout until it ends; exits 0 when it completes, non-zero
    /// when it halts or is aborted.
    Watch {
        id: String,
        /// Give up after this long.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Stop starting new waves (the current wave finishes).
    Pause { id: String },
    /// Continue a paused rollout.
    Resume { id: String },
    /// Stop the rollout for good; targets not yet reached are skipped.
    Abort { id: String },
    /// Re-deploy the previous certificate of the lineage to every target
    /// this rollout touched, as a rollout of its own.
    Rollback {
        id: String,
        #[command(flatten)]
        strategy: StrategyArgs,
    },
}

fn terminal(state: &str) -> bool {
    matches!(state, "completed" | "halted" | "aborted")
}

/// Progress bars per wave on a terminal, one line per change elsewhere.
struct Progress {
    bars: Option<(MultiProgress, Vec<ProgressBar>)>,
    last: String,
}

impl Progress {
    fn new() -> Self {
        Progress {
            bars: None,
            last: String::new(),
        }
    }

    fn show(&mut self, r: &RolloutInfo) {
        let per_wave: Vec<(u64, u64, u64)> = (0..r.waves)
            .map(|w| {
                let t: Vec<_> = r.targets.iter().filter(|t| t.wave == w).collect();
                let done = t.iter().filter(|t| t.state == "installed").count() as u64;
                let failed = t.iter().filter(|t| t.state == "failed").count() as u64;
                (t.len() as u64, done, failed)
            })
            .collect();
        if std::io::stdout().is_terminal() {
            let (multi, bars) = self.bars.get_or_insert_with(|| {
                let multi = MultiProgress::new();
                let style =
                    ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> ");
                let bars = (0..r.waves)
                    .map(|w| {
                        let b = multi.add(ProgressBar::new(0));
                        b.set_style(style.clone());
                        b.set_prefix(if w == 0 && r.strategy.canary > 0 {
                            "canary".to_string()
                        } else {
                            format!("wave {w}")
                        });
                        b
                    })
                    .collect();
                (multi, bars)
            });
            let _ = multi;
            for (bar, (total, done, failed)) in bars.iter().zip(&per_wave) {
                bar.set_length(*total);
                bar.set_position(*done);
                bar.set_message(if *failed > 0 {
                    format!("{failed} failed")
                } else {
                    String::new()
                });
            }
        } else {
            let line = format!(
                "{} {}: wave {}/{}; {}",
                r.id,
                r.state,
                r.current_wave + 1,
                r.waves,
                per_wave
                    .iter()
                    .enumerate()
                    .map(|(w, (t, d, f))| format!(
                        "wave {w}: {d}/{t} installed{}",
                        if *f > 0 {
                            format!(", {f} failed")
                        } else {
                            String::new()
                        }
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            if line != self.last {
                eprintln!("{line}");
                self.last = line;
            }
        }
    }

    fn finish(&self) {
        if let Some((_, bars)) = &self.bars {
            for b in bars {
                b.finish();
            }
        }
    }
}

async fn show(client: &Client, id: &str) -> anyhow::Result<RolloutInfo> {
    let r = client
        .call(&Request::RolloutShow { id: id.to_string() })
        .await?;
    Ok(expect_response!(r, Rollout))
}

/// Follow a rollout until it ends; error unless it completed.
pub(super) async fn wait(
    client: &Client,
    id: &str,
    timeout: Duration,
    out: &Output,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut progress = Progress::new();
    let r = loop {
        let r = show(client, id).await?;
        if out.is_table() {
            progress.show(&r);
        }
        if terminal(&r.state) {
            break r;
        }
        if tokio::time::Instant::now() >= deadline {
            progress.finish();
            out.rollout(&r)?;
            bail!(
                "rollout {id} is still {} after {}; follow it with `certfleet rollout watch {id}`",
                r.state,
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    progress.finish();
    out.rollout(&r)?;
    if r.state != "completed" {
        // Each failed target's whole error: the first line of a failed
        // command is only "`nginx -t` failed (exit status: 1):", the cause
        // is on the lines after it.
        let failed: String = r
            .targets
            .iter()
            .filter(|t| t.state == "failed")
            .map(|t| {
                format!(
                    "\n  {}/{}: {}",
                    t.agent_name,
                    t.target,
                    indent(t.error.as_deref().unwrap_or("no error reported").trim_end())
                )
            })
            .collect();
        bail!(
            "rollout {id} {}: {}{}",
            r.state,
            r.reason.as_deref().unwrap_or("-"),
            if failed.is_empty() {
                String::new()
            } else {
                format!("; failed targets:{failed}")
            }
        );
    }
    Ok(())
}

/// `text` with every line after the first indented under the target name.
fn indent(text: &str) -> String {
    text.lines().collect::<Vec<_>>().join("\n    ")
}

pub(super) async fn run(client: &Client, cmd: RolloutCmd, out: &Output) -> anyhow::Result<()> {
    let r = match cmd {
        RolloutCmd::List(page) => {
            let query = certfleet_protocol::list::ListQuery::Rollouts;
            return super::list::stream(client, out.format(), query, &page).await;
        }
        RolloutCmd::Show { id } => client.call(&Request::RolloutShow { id }).await?,
        RolloutCmd::Watch { id, timeout } => return wait(client, &id, timeout, out).await,
        RolloutCmd::Pause { id } => client.call(&Request::RolloutPause { id }).await?,
        RolloutCmd::Resume { id } => client.call(&Request::RolloutResume { id }).await?,
        RolloutCmd::Abort { id } => client.call(&Request::RolloutAbort { id }).await?,
        RolloutCmd::Rollback { id, strategy } => {
            client
                .call(&Request::RolloutRollback {
                    id,
                    strategy: strategy.spec(),
                })
                .await?
        }
    };
    out.rollout(&expect_response!(r, Rollout))
}
