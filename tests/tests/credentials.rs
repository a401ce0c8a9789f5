//! End-to-end: what happens to an agent's identity credentials after
//! enrollment, with the real controller and agent binaries.
//!
//! - Renewing an identity retires the previous one once the new one has
//!   been used: a copy of the old identity (a stolen key) is refused from
//!   the agent's first connection with its new identity on.
//! - A removed agent is told so, logs how to enroll the host again, and
//!   `certfleet-agent run` exits with status 77, which the packaged unit
//!   does not restart on; enrolling it again as a new agent works.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use certfleet_tests::fleet::{
    named_files_agent_config, token, wait_connected, write_clock_offset, Agent, CLOCK_OFFSET_ENV,
};
use certfleet_tests::{Controller, ControllerOptions};

const WAIT: Duration = Duration::from_secs(30);
const IDENTITY_FILES: [&str; 4] = ["identity.key", "identity.pem", "ca.pem", "agent.json"];

fn wait_log(agent: &Agent, needle: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while !agent.log_text().contains(needle) {
        if Instant::now() >= deadline {
            bail!(
                "agent log has no {needle:?} after {WAIT:?}:\n{}",
                agent.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Copy an agent's identity files into a second agent's state directory,
/// as a cloned disk or a thief would hold them.
fn copy_identity(from: &Agent, to: &Agent) -> Result<()> {
    std::fs::create_dir_all(&to.state_dir)?;
    for file in IDENTITY_FILES {
        std::fs::copy(from.state_dir.join(file), to.state_dir.join(file))
            .with_context(|| format!("copying {file}"))?;
    }
    Ok(())
}

fn audit_actions(ctl: &Controller, action: &str) -> Result<Vec<serde_json::Value>> {
    let audit = ctl.cli_json(&["audit", "list"])?;
    Ok(audit
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect())
}

#[test]
fn a_renewed_identity_retires_the_old_one_once_used() -> Result<()> {
    let ctl = Controller::start()?;
    let files = tempfile::Builder::new()
        .prefix("certfleet-files-")
        .tempdir()?;
    let config = named_files_agent_config("web-1", "files", files.path(), "www.example.test");
    let mut agent = Agent::new(&ctl, &config)?;
    let (tok, pin) = token(&ctl, &[])?;
    agent.enroll(&ctl, &tok, &pin)?;
    let id = agent.id.clone().context("enrolled agent has no id")?;

    // The identity as it is before renewal, copied away.
    let stolen = Agent::new(&ctl, &config)?;
    copy_identity(&agent, &stolen)?;

    // The agent's clock says 21 of its identity's 30 days have passed: it
    // renews on connecting.
    let offset = agent.dir.join("clock-offset");
    std::fs::write(&offset, (21 * 86_400).to_string())?;
    agent.set_env(
        "CERTFLEET_CLOCK_OFFSET_FILE",
        certfleet_tests::utf8(&offset)?,
    );
    let before = std::fs::read(agent.state_dir.join("identity.pem"))?;
    agent.start()?;
    wait_connected(&ctl, &id, true, WAIT)?;
    let deadline = Instant::now() + WAIT;
    while std::fs::read(agent.state_dir.join("identity.pem"))? == before {
        ensure!(
            Instant::now() < deadline,
            "identity not renewed:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        audit_actions(&ctl, "agent.identity.renew")?.len() == 1,
        "one renewal audited"
    );
    // Not used yet: the old identity still works (the agent may not have
    // stored the new one), nothing is retired.
    ensure!(
        audit_actions(&ctl, "agent.identity.retire")?.is_empty(),
        "retired before the new identity was used"
    );

    // The agent reconnects with its new identity; that retires the old.
    agent.kill();
    agent.start()?;
    let deadline = Instant::now() + WAIT;
    while audit_actions(&ctl, "agent.identity.retire")?.is_empty() {
        ensure!(
            Instant::now() < deadline,
            "the old identity was not retired:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let retired = audit_actions(&ctl, "agent.identity.retire")?;
    ensure!(
        retired[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("retired=1")),
        "{retired:?}"
    );
    wait_connected(&ctl, &id, true, WAIT)?;

    // The copy of the old identity is refused now, with the reason.
    let mut stolen = stolen;
    stolen.start()?;
    wait_log(&stolen, "was replaced by a newer one")?;
    ensure!(
        !stolen.log_text().contains("session: connected"),
        "the retired identity got in:\n{}",
        stolen.log_text()
    );
    // The agent holding the new identity is unaffected.
    wait_connected(&ctl, &id, true, WAIT)?;
    Ok(())
}

/// Controller and agent on one simulated clock, 21 of the identity's 30
/// days on: the agent renews, reconnects with its new identity at once,
/// and that first use retires the old one without anything else happening.
#[test]
fn a_renewal_reconnects_at_once_so_the_old_identity_stops_working() -> Result<()> {
    let clock_dir = tempfile::Builder::new()
        .prefix("certfleet-clock-")
        .tempdir()?;
    let offset_file = clock_dir.path().join("clock-offset");
    write_clock_offset(&offset_file, 0)?;
    let offset = offset_file.to_string_lossy().into_owned();
    let ctl = Controller::start_with(ControllerOptions {
        env: vec![(CLOCK_OFFSET_ENV.to_owned(), offset.clone())],
        ..ControllerOptions::default()
    })?;
    let files = tempfile::Builder::new()
        .prefix("certfleet-files-")
        .tempdir()?;
    let config = named_files_agent_config("web-3", "files", files.path(), "www.example.test");
    let mut agent = Agent::new(&ctl, &config)?;
    agent.set_env(CLOCK_OFFSET_ENV, &offset);
    let (tok, pin) = token(&ctl, &[])?;
    agent.enroll(&ctl, &tok, &pin)?;
    let id = agent.id.clone().context("enrolled agent has no id")?;
    let stolen = Agent::new(&ctl, &config)?;
    copy_identity(&agent, &stolen)?;

    write_clock_offset(&offset_file, 21 * 86_400)?;
    // Longer than the controller caches its clock offset (200 ms).
    std::thread::sleep(Duration::from_millis(400));
    agent.start()?;
    let deadline = Instant::now() + WAIT;
    while audit_actions(&ctl, "agent.identity.retire")?.is_empty() {
        ensure!(
            Instant::now() < deadline,
            "the old identity was not retired:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        audit_actions(&ctl, "agent.identity.renew")?.len() == 1,
        "renewed once, not in a loop:\n{}",
        agent.log_text()
    );
    wait_connected(&ctl, &id, true, WAIT)?;
    let mut stolen = stolen;
    stolen.set_env(CLOCK_OFFSET_ENV, &offset);
    stolen.start()?;
    wait_log(&stolen, "was replaced by a newer one")?;
    Ok(())
}

#[test]
fn a_removed_agent_stops_with_its_own_exit_status_and_says_how_to_come_back() -> Result<()> {
    let ctl = Controller::start()?;
    let files = tempfile::Builder::new()
        .prefix("certfleet-files-")
        .tempdir()?;
    let config = named_files_agent_config("web-2", "files", files.path(), "www.example.test");
    let mut agent = Agent::new(&ctl, &config)?;
    let (tok, pin) = token(&ctl, &[])?;
    agent.enroll(&ctl, &tok, &pin)?;
    let id = agent.id.clone().context("enrolled agent has no id")?;
    // A second copy, started only after the removal: it is refused at the
    // handshake rather than on a live session.
    let late = Agent::new(&ctl, &config)?;
    copy_identity(&agent, &late)?;

    agent.start()?;
    wait_connected(&ctl, &id, true, WAIT)?;
    ctl.cli_json(&["agent", "remove", &id])?;

    // Connected when removed: the session is closed and the agent stops.
    let status = agent.wait_exit(WAIT)?;
    ensure!(
        status.code() == Some(77),
        "exit status {status:?}:\n{}",
        agent.log_text()
    );
    let log = agent.log_text();
    ensure!(
        log.contains(&format!("agent {id} has been removed"))
            && log.contains("certfleet agent token create")
            && log.contains("certfleet-agent enroll --reenroll")
            && log.contains("cannot be re-enrolled under its old id"),
        "the log does not say what happened and how to come back:\n{log}"
    );

    // Not connected when removed: refused at once, same exit.
    let mut late = late;
    late.start()?;
    let status = late.wait_exit(WAIT)?;
    ensure!(
        status.code() == Some(77),
        "exit status {status:?}:\n{}",
        late.log_text()
    );

    // The packaged unit does not restart on it.
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../packaging/systemd/certfleet-agent.service"),
    )?;
    ensure!(
        unit.lines()
            .any(|l| l.trim() == "RestartPreventExitStatus=77"),
        "certfleet-agent.service does not list exit status 77 in RestartPreventExitStatus="
    );

    // What the log says works: an ordinary token, `enroll --reenroll`.
    let (tok, pin) = token(&ctl, &[])?;
    let out = agent.enroll_output_with(&ctl, &tok, &pin, &["--reenroll"])?;
    ensure!(
        out.status.success(),
        "enrolling the removed host again failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.state_dir.join("agent.json"))?)?;
    let new_id = agent_json["agent"]
        .as_str()
        .context("agent.json has no id")?
        .to_owned();
    ensure!(new_id != id, "the host came back under its removed id");
    agent.start()?;
    wait_connected(&ctl, &new_id, true, WAIT)?;
    Ok(())
}
