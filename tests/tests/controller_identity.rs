//! End-to-end: the controller's own identity over a long life.
//!
//! - The QUIC endpoint certificate (90 days) is renewed while the controller
//!   runs, so a CLI and a reconnecting agent still get in after day 91 and
//!   day 200. Time is simulated: the controller, the CLI and the agent read
//!   the same clock-offset file ([`CLOCK_OFFSET_ENV`]), and all three judge
//!   certificate validity in TLS by it, so an expired endpoint certificate
//!   fails here exactly as it would in production.
//! - One controller per state directory: a second `serve` on it exits 1
//!   naming the PID of the one that holds it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use certfleet_tests::fleet::{
    named_files_agent_config, token, write_clock_offset, Agent, CLOCK_OFFSET_ENV,
};
use certfleet_tests::{
    certfleet_command, run_with_timeout, Controller, ControllerOptions, STARTUP_TIMEOUT,
};
use tempfile::TempDir;

const DAY: i64 = 86_400;
/// How long the controller may take to notice that its endpoint certificate
/// is due (it checks every 2 s), and an agent to reconnect.
const WAIT: Duration = Duration::from_secs(30);
/// Longer than the controller caches its clock offset (200 ms).
const OFFSET_SETTLE: Duration = Duration::from_millis(400);
/// What the controller logs when it replaces its endpoint certificate.
const RENEWED: &str = "endpoint certificate renewed";
/// What the agent logs once a handshake and the version exchange succeeded.
const AGENT_CONNECTED: &str = "session: connected";
/// What the agent logs when it has renewed its own identity.
const AGENT_RENEWED: &str = "identity certificate renewed";
/// What the agent logs when it ends its session to reconnect with the
/// identity it just renewed (the first use retires the old one).
const AGENT_RENEWED_RECONNECT: &str = "identity certificate renewed reconnect=true";

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// Waits until `text()` has at least `n` lines containing `needle`.
fn wait_lines(what: &str, text: impl Fn() -> Result<String>, needle: &str, n: usize) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = count(&text()?, needle);
        if seen >= n {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what}: {seen} lines with {needle:?} after {WAIT:?}, expected {n}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `ready()` holds.
fn wait_until(what: &str, ready: impl Fn() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while !ready()? {
        if Instant::now() >= deadline {
            bail!("{what}: not after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn cli_and_agent_get_in_after_day_91_and_day_200() -> Result<()> {
    let clock_dir = tempfile::Builder::new()
        .prefix("certfleet-clock-")
        .tempdir()?;
    let offset_file: PathBuf = clock_dir.path().join("clock-offset");
    write_clock_offset(&offset_file, 0)?;
    let offset_env = (
        CLOCK_OFFSET_ENV.to_owned(),
        offset_file.to_string_lossy().into_owned(),
    );
    let ctl = Controller::start_with(ControllerOptions {
        env: vec![offset_env.clone()],
        ..ControllerOptions::default()
    })?;

    let files: TempDir = tempfile::Builder::new()
        .prefix("certfleet-files-")
        .tempdir()?;
    let mut agent = Agent::new(
        &ctl,
        &named_files_agent_config("web-1", "files", files.path(), "www.example.test"),
    )?;
    let (tok, pin) = token(&ctl, &[])?;
    agent.enroll(&ctl, &tok, &pin)?;
    agent.set_env(&offset_env.0, &offset_env.1);
    agent.start()?;
    wait_lines("agent", || Ok(agent.log_text()), AGENT_CONNECTED, 1)?;

    // Steps of at most 10 days, shorter than what is left of the agent's
    // identity (30 days, renewed from day 20 at each connect), so it stays
    // valid whenever the renewal lands; the controller's endpoint
    // certificate (90 days) is due two thirds into its life, at day 60, 120
    // and 180 of this run, and has expired by day 91 and 200 unless renewed.
    let mut endpoint_not_before = 0;
    let mut renewals = 0;
    let days: Vec<i64> = (1..=9)
        .map(|d| d * 10)
        .chain([91])
        .chain((10..=20).map(|d| d * 10))
        .collect();
    for (step, &day) in days.iter().enumerate() {
        write_clock_offset(&offset_file, day * DAY)?;
        // The controller re-reads the offset file at most every 200 ms;
        // until then it would, say, issue the agent's renewed identity at
        // the day before.
        std::thread::sleep(OFFSET_SETTLE);
        if day * DAY >= endpoint_not_before + 60 * DAY {
            renewals += 1;
            endpoint_not_before = day * DAY;
            wait_lines(
                &format!("controller log on day {day}"),
                || ctl.log(),
                RENEWED,
                renewals,
            )?;
            // The agent's session from before the renewal lives on: no new
            // connection was needed, and the controller still answers it.
            // (The agent's own identity renewals reconnect on purpose.)
            let log = agent.log_text();
            ensure!(
                // One start before the loop and one per earlier step.
                count(&log, AGENT_CONNECTED) <= step + 1 + count(&log, AGENT_RENEWED_RECONNECT),
                "the agent reconnected when the endpoint certificate was renewed on day \
                 {day}:\n{}",
                agent.log_text()
            );
        }

        // A CLI on the simulated clock (Controller::cli passes the
        // controller's clock-offset file on) gets in.
        let out = ctl.cli(&["--output", "json", "status"])?;
        ensure!(
            out.status.success(),
            "`certfleet status` on day {day} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // So does an agent that reconnects (a new handshake).
        agent.kill();
        let before = count(&agent.log_text(), AGENT_CONNECTED);
        agent.start()?;
        wait_lines(
            &format!("agent reconnecting on day {day}"),
            || Ok(agent.log_text()),
            AGENT_CONNECTED,
            before + 1,
        )
        .with_context(|| format!("agent log:\n{}", agent.log_text()))?;
        // On connecting, an agent 20 days into its identity renews it; let
        // it finish before the next step kills it: its identity must still
        // be valid at the next step's time.
        let next = days.get(step + 1).copied().unwrap_or(day + 1);
        wait_until(&format!("agent identity valid past day {next}"), || {
            // A load racing the agent's replacement of its files is retried.
            let Ok(id) = certfleet_agent::identity::Identity::load(&agent.state_dir) else {
                return Ok(false);
            };
            Ok(id.not_after > next * DAY + certfleet_tests::fleet::unix_now())
        })
        .with_context(|| format!("agent log:\n{}", agent.log_text()))?;
    }
    // 200 days on 30-day identities renewed from day 20: at least 7.
    let identity_renewals = count(&agent.log_text(), AGENT_RENEWED);
    ensure!(
        identity_renewals >= 7,
        "the agent renewed its identity {identity_renewals} times in 200 days:\n{}",
        agent.log_text()
    );
    ensure!(
        count(&ctl.log()?, RENEWED) == renewals && renewals == 3,
        "expected 3 endpoint certificate renewals (days 60, 120, 180):\n{}",
        ctl.log()?
    );
    Ok(())
}

#[test]
fn a_second_controller_on_a_state_directory_exits_naming_the_holder() -> Result<()> {
    let mut ctl = Controller::start()?;
    let holder = ctl.runtime().pid;
    let second = |ctl: &Controller| {
        run_with_timeout(
            certfleet_command().args([
                "serve",
                "--state-dir",
                &ctl.state_dir().to_string_lossy(),
                "--listen",
                "127.0.0.1:0",
                "--crl-listen",
                "127.0.0.1:0",
            ]),
            STARTUP_TIMEOUT,
        )
    };
    let out = second(&ctl)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "second serve should exit 1, got {}: {stderr}",
        out.status
    );
    ensure!(
        stderr.contains(&format!("PID {holder}")) && stderr.contains("--state-dir"),
        "the refusal should name the holder's PID {holder} and the way out: {stderr}"
    );
    // The first controller is untouched: still running, still answering, and
    // runtime.json still describes it.
    ctl.ensure_running()?;
    ctl.cli_ok(&["status"])?;
    let runtime = std::fs::read_to_string(ctl.state_dir().join("runtime.json"))?;
    ensure!(
        runtime.contains(&format!("\"pid\": {holder}")),
        "runtime.json was overwritten: {runtime}"
    );

    // A crashed controller (SIGKILL) leaves no stale lock: the next one
    // starts, and then it is the one a second serve names.
    ctl.stop()?;
    ctl.start_again()?;
    ctl.cli_ok(&["status"])?;
    let out = second(&ctl)?;
    ensure!(
        out.status.code() == Some(1)
            && String::from_utf8_lossy(&out.stderr).contains(&format!("PID {}", ctl.runtime().pid)),
        "after a restart the refusal should name the new PID {}: {}",
        ctl.runtime().pid,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
