//! Self-healing renewal rollouts and strategy memory (issue 13, item 2):
//! a renewal rollout that halted on a broken nginx reaches that nginx on
//! its own once it is fixed, and a lineage's renewals roll out with the
//! strategy of its last deploy. Real controller, real agents, real nginx;
//! the simulated clock (the offset file) stands in for waiting.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use certfleet_tests::fleet::{
    check_wave_invariants, named_files_agent_config, named_nginx_agent_config, rollout_show, token,
    wait_connected, wait_rollout_state, wait_served, write_clock_offset, Agent, Nginx,
    CLOCK_OFFSET_ENV,
};
use certfleet_tests::{array, cert_fingerprint, str_field, Controller, ControllerOptions};
use serde_json::Value;
use tempfile::TempDir;

const NAME: &str = "www.example.test";
const TARGET: &str = "web";
const WAIT: Duration = Duration::from_secs(60);
/// Past the renewal point of a 1-day certificate (due 16 h after issue).
const PAST_RENEWAL_OF_ONE_DAY: i64 = 17 * 3600;
/// The line `Nginx::break_config` appends.
const BROKEN_LINE: &str = "this_is_not_a_directive on;";

/// A controller and agents on one simulated clock. Agents are dropped (and
/// so killed) before the controller.
struct Fleet {
    _agents: Vec<Agent>,
    ctl: Controller,
    offset_file: PathBuf,
    _offset_dir: TempDir,
}

impl Fleet {
    /// One agent per config body, all labelled `role=web`.
    fn start(bodies: Vec<String>) -> Result<Fleet> {
        let offset_dir = tempfile::Builder::new()
            .prefix("certfleet-clock-")
            .tempdir()?;
        let offset_file = offset_dir.path().join("clock-offset");
        let env = (
            CLOCK_OFFSET_ENV.to_owned(),
            offset_file.to_string_lossy().into_owned(),
        );
        let ctl = Controller::start_with(ControllerOptions {
            env: vec![env.clone()],
            ..ControllerOptions::default()
        })?;
        ctl.cli_json(&["issuer", "add", "ca", "--kind", "builtin"])?;
        let uses = bodies.len().to_string();
        let (tok, pin) = token(&ctl, &["--labels", "role=web", "--uses", &uses])?;
        let mut agents = Vec::new();
        for body in bodies {
            let mut agent = Agent::new(&ctl, &body)?;
            agent.enroll(&ctl, &tok, &pin)?;
            agent.set_env(&env.0, &env.1);
            agent.start()?;
            agents.push(agent);
        }
        for a in &agents {
            wait_connected(&ctl, a.id.as_deref().unwrap_or_default(), true, WAIT)?;
        }
        Ok(Fleet {
            _agents: agents,
            ctl,
            offset_file,
            _offset_dir: offset_dir,
        })
    }

    /// A 1-day certificate for [`NAME`], deployed to every agent with
    /// `args` and waited for; returns (id, fingerprint, the deploy's
    /// RolloutInfo).
    fn deploy_one_day_certificate(&self, args: &[&str]) -> Result<(String, String, Value)> {
        let cert = self.ctl.issue("ca", &["--validity-days", "1"], &[NAME])?;
        let id = str_field(&cert, "id")?.to_owned();
        let fp = str_field(&cert, "fingerprint")?.to_owned();
        let mut full = vec![
            "--output", "json", "deploy", &id, "--to", "role=web", "--target", TARGET, "--wait",
        ];
        full.extend_from_slice(args);
        let out = self.ctl.cli(&full)?;
        ensure!(
            out.status.success(),
            "deploy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rollout: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())?;
        assert_eq!(rollout["state"], "completed", "{rollout:#}");
        Ok((id, fp, rollout))
    }

    /// Moves every clock to `secs` ahead of the wall clock.
    fn set_clock_offset(&self, secs: i64) -> Result<()> {
        write_clock_offset(&self.offset_file, secs)
    }

    /// Waits for the renewal of `old`, then for its renewal rollout; returns
    /// (certificate id, fingerprint, rollout id).
    fn wait_renewal_rollout(&self, old: &str) -> Result<(String, String, String)> {
        let (new, fp) = certfleet_tests::wait_for(WAIT, &format!("the renewal of {old}"), || {
            let certs = self.ctl.cli_json(&["cert", "list"])?;
            array(&certs)?
                .iter()
                .find(|c| c["renews"] == old)
                .map(|c| -> Result<(String, String)> {
                    Ok((
                        str_field(c, "id")?.to_owned(),
                        str_field(c, "fingerprint")?.to_owned(),
                    ))
                })
                .transpose()
        })?;
        let rollout = certfleet_tests::wait_for(WAIT, "the renewal rollout", || {
            let list = self.ctl.cli_json(&["rollout", "list"])?;
            Ok(array(&list)?
                .iter()
                .find(|r| r["kind"] == "renewal" && r["certificate"] == new.as_str())
                .and_then(|r| r["id"].as_str().map(str::to_owned)))
        })?;
        Ok((new, fp, rollout))
    }

    fn halted_count(&self) -> Result<Value> {
        Ok(self.ctl.cli_json(&["status"])?["rollouts"]["halted"].clone())
    }
}

/// The target of `rollout` on agent `name`.
fn target<'a>(rollout: &'a Value, name: &str) -> Result<&'a Value> {
    array(&rollout["targets"])?
        .iter()
        .find(|t| t["agent_name"] == name)
        .with_context(|| format!("no target on {name}: {rollout:#}"))
}

#[test]
fn a_renewal_halted_by_a_broken_nginx_heals_once_nginx_is_fixed() -> Result<()> {
    let nginx = [Nginx::start(NAME)?, Nginx::start(NAME)?];
    let bodies = nginx
        .iter()
        .enumerate()
        .map(|(i, n)| named_nginx_agent_config(&format!("web-{}", i + 1), TARGET, n, NAME))
        .collect::<Result<Vec<_>>>()?;
    let fleet = Fleet::start(bodies)?;
    let (old, old_fp, _) = fleet.deploy_one_day_certificate(&["--canary", "1", "--wave", "1"])?;
    for n in &nginx {
        wait_served(n.port, NAME, &old_fp, WAIT)?;
    }

    // web-2 (wave 1) cannot take the renewal: its config test fails.
    nginx[1].break_config()?;
    fleet.set_clock_offset(PAST_RENEWAL_OF_ONE_DAY)?;
    let (_new, new_fp, rollout) = fleet.wait_renewal_rollout(&old)?;
    let halted = wait_rollout_state(
        &fleet.ctl,
        &rollout,
        &["completed", "halted", "aborted"],
        WAIT,
        check_wave_invariants,
    )?;
    assert_eq!(halted["state"], "halted", "{halted:#}");
    assert_eq!(target(&halted, "web-2")?["state"], "failed", "{halted:#}");
    let reason = halted["reason"].as_str().unwrap_or_default();
    ensure!(
        reason.contains("automatic retry 1 at") && reason.contains("rollout abort"),
        "a halted renewal says when it is retried and how to stop it: {halted:#}"
    );
    assert_eq!(fleet.halted_count()?, 1);
    wait_served(nginx[0].port, NAME, &new_fp, WAIT)?;
    wait_served(nginx[1].port, NAME, &old_fp, WAIT)?;

    // Fix nginx and let the simulated clock pass the first retry (due 30 s
    // after the halt). No operator command from here on.
    let conf = fs::read_to_string(&nginx[1].conf)?;
    fs::write(&nginx[1].conf, conf.replace(BROKEN_LINE, ""))?;
    fleet.set_clock_offset(PAST_RENEWAL_OF_ONE_DAY + 35)?;
    let healed = wait_rollout_state(
        &fleet.ctl,
        &rollout,
        &["completed", "aborted"],
        WAIT,
        |_| Ok(()),
    )?;
    assert_eq!(healed["state"], "completed", "{healed:#}");
    ensure!(
        array(&healed["targets"])?
            .iter()
            .all(|t| t["state"] == "installed"),
        "{healed:#}"
    );
    ensure!(
        healed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("automatic retr")),
        "{healed:#}"
    );
    // What a user checks: the fixed nginx serves the renewed certificate,
    // and `status` no longer counts a halted rollout.
    wait_served(nginx[1].port, NAME, &new_fp, WAIT)?;
    assert_eq!(fleet.halted_count()?, 0);
    let audit = fleet.ctl.cli_json(&["audit", "list"])?;
    ensure!(
        array(&audit)?
            .iter()
            .any(|e| e["action"] == "rollout.retry" && e["target"] == rollout.as_str()),
        "the retry is audited: {audit:#}"
    );
    Ok(())
}

#[test]
fn renewals_roll_out_with_the_strategy_of_the_last_deploy() -> Result<()> {
    let dirs = (0..3)
        .map(|_| {
            tempfile::Builder::new()
                .prefix("certfleet-files-")
                .tempdir()
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let bodies = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| named_files_agent_config(&format!("web-{}", i + 1), TARGET, d.path(), NAME))
        .collect();
    let fleet = Fleet::start(bodies)?;
    let strategy = [
        "--canary",
        "2",
        "--wave",
        "50%",
        "--pause",
        "1s",
        "--max-failures",
        "1",
    ];
    let (old, _, deployed) = fleet.deploy_one_day_certificate(&strategy)?;
    let expected = serde_json::json!({
        "canary": 2, "wave": "50%", "pause_secs": 1, "max_failures": 1,
    });
    for key in ["canary", "wave", "pause_secs", "max_failures"] {
        assert_eq!(deployed["strategy"][key], expected[key], "{deployed:#}");
    }

    fleet.set_clock_offset(PAST_RENEWAL_OF_ONE_DAY)?;
    let (new, new_fp, rollout) = fleet.wait_renewal_rollout(&old)?;
    let shown = rollout_show(&fleet.ctl, &rollout)?;
    for key in ["canary", "wave", "pause_secs", "max_failures"] {
        assert_eq!(shown["strategy"][key], expected[key], "{shown:#}");
    }
    // Canary of 2, then one wave with the third agent.
    assert_eq!(target(&shown, "web-1")?["wave"], 0, "{shown:#}");
    assert_eq!(target(&shown, "web-2")?["wave"], 0, "{shown:#}");
    assert_eq!(target(&shown, "web-3")?["wave"], 1, "{shown:#}");
    let done = wait_rollout_state(
        &fleet.ctl,
        &rollout,
        &["completed", "halted", "aborted"],
        WAIT,
        check_wave_invariants,
    )?;
    assert_eq!(done["state"], "completed", "{done:#}");
    for d in &dirs {
        assert_eq!(
            cert_fingerprint(&d.path().join("fullchain.pem"))?,
            new_fp,
            "{new} is installed"
        );
    }
    Ok(())
}
