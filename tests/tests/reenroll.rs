//! End-to-end: an agent back after its identity expired while it was
//! offline.
//!
//! The agent's identity lives 30 days and renews itself only over a live
//! connection, so one offline past that can no longer get in. It must say
//! so and name the fix; a re-enroll token bound to it brings it back under
//! the same id, with its labels and deployments. Time is simulated: the
//! controller, the CLI and the agent read the same clock-offset file and
//! judge certificate validity in TLS by it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use certfleet_tests::fleet::{
    named_files_agent_config, token, wait_connected, write_clock_offset, Agent, CLOCK_OFFSET_ENV,
};
use certfleet_tests::{cert_fingerprint, normalize_hex, str_field, Controller, ControllerOptions};

const DAY: i64 = 86_400;
const WAIT: Duration = Duration::from_secs(30);
/// Longer than the controller caches its clock offset (200 ms).
const OFFSET_SETTLE: Duration = Duration::from_millis(400);

/// Waits until the agent's log contains `needle`.
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

/// Waits until `path` holds the certificate with SHA-256 `fingerprint`.
fn wait_file_holds(path: &Path, fingerprint: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        if path.exists() && normalize_hex(&cert_fingerprint(path)?) == normalize_hex(fingerprint) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{} does not hold certificate {fingerprint}", path.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_agent_whose_identity_expired_offline_comes_back_with_its_deployment() -> Result<()> {
    let clock_dir = tempfile::Builder::new()
        .prefix("certfleet-clock-")
        .tempdir()?;
    let offset_file: PathBuf = clock_dir.path().join("clock-offset");
    write_clock_offset(&offset_file, 0)?;
    let offset = offset_file.to_string_lossy().into_owned();
    let ctl = Controller::start_with(ControllerOptions {
        env: vec![(CLOCK_OFFSET_ENV.to_owned(), offset.clone())],
        ..ControllerOptions::default()
    })?;
    let files = tempfile::Builder::new()
        .prefix("certfleet-files-")
        .tempdir()?;
    let fullchain = files.path().join("fullchain.pem");
    let mut agent = Agent::new(
        &ctl,
        &named_files_agent_config("web-1", "files", files.path(), "www.example.test"),
    )?;
    agent.set_env(CLOCK_OFFSET_ENV, &offset);
    let (tok, pin) = token(&ctl, &[])?;
    agent.enroll(&ctl, &tok, &pin)?;
    let id = agent.id.clone().context("enrolled agent has no id")?;
    agent.start()?;
    wait_connected(&ctl, &id, true, WAIT)?;

    let cert = ctl.issue_default()?;
    let cert_id = str_field(&cert, "id")?.to_owned();
    let fingerprint = str_field(&cert, "fingerprint")?.to_owned();
    let rollout = ctl.cli_json(&[
        "deploy",
        &cert_id,
        "--to",
        &format!("agent={id}"),
        "--target",
        "files",
        "--wait",
    ])?;
    ensure!(rollout["state"] == "completed", "deploy: {rollout}");
    wait_file_holds(&fullchain, &fingerprint)?;

    // Offline past the identity's 30 days. The target's files are lost
    // meanwhile (a rebuilt host), so only the deployment the controller
    // keeps for this agent can put the certificate back.
    agent.kill();
    std::fs::remove_file(&fullchain)?;
    write_clock_offset(&offset_file, 31 * DAY)?;
    std::thread::sleep(OFFSET_SETTLE);

    agent.start()?;
    let fix = format!("certfleet agent token create --reenroll {id}");
    wait_log(&agent, &fix)?;
    let log = agent.log_text();
    ensure!(
        log.contains(&format!("identity certificate of agent {id} expired at"))
            && log.contains("certfleet-agent enroll --reenroll"),
        "the agent log should say when the identity expired and name both commands:\n{log}"
    );
    let status = agent.status_text()?;
    ensure!(
        status.contains("expired at") && status.contains(&fix),
        "`certfleet-agent status` should name the expiry and the fix:\n{status}"
    );
    agent.kill();

    // An ordinary enroll refuses to replace the identity and names the way.
    let (plain, plain_pin) = token(&ctl, &[])?;
    let out = agent.enroll_output_with(&ctl, &plain, &plain_pin, &[])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("--reenroll"),
        "enroll without --reenroll over an identity: {stderr}"
    );

    // The re-enroll token, by the agent's name.
    let t = ctl.cli_json(&["agent", "token", "create", "--reenroll", "web-1"])?;
    ensure!(t["reenroll"] == "web-1" && t["uses"] == 1, "token: {t}");
    let out = agent.enroll_output_with(
        &ctl,
        str_field(&t, "token")?,
        str_field(&t, "ca_pin")?,
        &["--reenroll"],
    )?;
    ensure!(
        out.status.success(),
        "re-enroll failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.state_dir.join("agent.json"))?)?;
    ensure!(stored["agent"] == id.as_str(), "new identity for {stored}");
    agent.start()?;
    wait_connected(&ctl, &id, true, WAIT)?;
    wait_file_holds(&fullchain, &fingerprint)?;

    // One agent, the same one, with its labels and its deployment.
    let agents = ctl.cli_json(&["agent", "list"])?;
    let list = agents.as_array().context("agent list is not an array")?;
    ensure!(
        list.len() == 1 && list[0]["id"] == id.as_str(),
        "agent list: {agents}"
    );
    ensure!(list[0]["labels"]["role"] == "web", "labels: {agents}");
    let deployments = ctl.cli_json(&["deployment", "list", "--cert", &cert_id])?;
    let deployments = deployments.as_array().context("deployment list")?;
    ensure!(
        deployments.len() == 1
            && deployments[0]["agent"] == id.as_str()
            && deployments[0]["status"] == "installed",
        "deployments: {deployments:?}"
    );
    let audit = ctl.cli_json(&["audit", "list"])?;
    ensure!(
        audit
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["action"] == "agent.reenroll" && e["target"] == id.as_str()),
        "no agent.reenroll audit entry: {audit}"
    );

    // The token was single-use.
    let again = agent.enroll_output_with(
        &ctl,
        str_field(&t, "token")?,
        str_field(&t, "ca_pin")?,
        &["--reenroll"],
    )?;
    ensure!(!again.status.success(), "a re-enroll token worked twice");
    Ok(())
}

#[test]
fn a_reenroll_token_for_a_removed_agent_is_refused() -> Result<()> {
    let ctl = Controller::start()?;
    let files = tempfile::Builder::new()
        .prefix("certfleet-files-")
        .tempdir()?;
    let config = named_files_agent_config("web-2", "files", files.path(), "www.example.test");
    let mut old = Agent::new(&ctl, &config)?;
    let (tok, pin) = token(&ctl, &[])?;
    old.enroll(&ctl, &tok, &pin)?;
    let id = old.id.clone().context("enrolled agent has no id")?;

    // Removed after its token was made: refused when used.
    let t = ctl.cli_json(&["agent", "token", "create", "--reenroll", &id])?;
    ctl.cli_ok(&["agent", "remove", &id])?;
    let out = old.enroll_output_with(
        &ctl,
        str_field(&t, "token")?,
        str_field(&t, "ca_pin")?,
        &["--reenroll"],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains(&format!("agent {id} was removed"))
            && stderr.contains("certfleet agent token create"),
        "re-enroll of a removed agent: {stderr}"
    );

    // Removed before: refused when the token is asked for.
    let err = ctl.cli_err(&["agent", "token", "create", "--reenroll", &id])?;
    ensure!(
        err.contains(&format!("agent {id} was removed")),
        "token for a removed agent: {err}"
    );
    ensure!(
        ctl.cli_json(&["agent", "list"])?
            .as_array()
            .is_some_and(Vec::is_empty),
        "a refused re-enrollment left an agent behind"
    );
    Ok(())
}

#[test]
fn a_reenrolled_agents_old_identity_is_refused_and_the_running_agent_moves_on() -> Result<()> {
    let ctl = Controller::start()?;
    let files = tempfile::Builder::new()
        .prefix("certfleet-files-")
        .tempdir()?;
    let config = named_files_agent_config("web-3", "files", files.path(), "www.example.test");
    let mut agent = Agent::new(&ctl, &config)?;
    let (tok, pin) = token(&ctl, &[])?;
    agent.enroll(&ctl, &tok, &pin)?;
    let id = agent.id.clone().context("enrolled agent has no id")?;

    // A copy of the still-valid identity, as a cloned or stolen disk holds.
    let mut copy = Agent::new(&ctl, &config)?;
    std::fs::create_dir_all(&copy.state_dir)?;
    for file in ["identity.key", "identity.pem", "ca.pem", "agent.json"] {
        std::fs::copy(agent.state_dir.join(file), copy.state_dir.join(file))?;
    }

    agent.start()?;
    wait_connected(&ctl, &id, true, WAIT)?;
    let t = ctl.cli_json(&["agent", "token", "create", "--reenroll", &id])?;
    let out = agent.enroll_output_with(
        &ctl,
        str_field(&t, "token")?,
        str_field(&t, "ca_pin")?,
        &["--reenroll"],
    )?;
    ensure!(
        out.status.success(),
        "re-enroll of a valid identity failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The running agent's session on the old identity is closed; it
    // reconnects with the new one without a restart.
    let deadline = Instant::now() + WAIT;
    while agent.log_text().matches("session: connected").count() < 2 {
        if Instant::now() >= deadline {
            bail!("the running agent did not reconnect:\n{}", agent.log_text());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_connected(&ctl, &id, true, WAIT)?;

    copy.start()?;
    wait_log(&copy, "was replaced by a newer one")?;
    ensure!(
        !copy.log_text().contains("session: connected"),
        "the old identity got in:\n{}",
        copy.log_text()
    );
    Ok(())
}
