//! Self-healing renewal rollouts and strategy memory:
//! a renewal rollout that halted on a broken nginx reaches that nginx on
//! its own once it is fixed, and a lineage's renewals roll out with the
//! strategy of its last deploy. Real controller, real agents, real nginx;
//! the simulated clock (the offset file) stands in for waiting.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use certfleet_tests::fleet::{
    check_wave_invariants, named_files_agent_config, named_nginx_agent_config, parse_rfc3339,
    rollout_show, start_web_agents, wait_rollout_state, wait_served, write_clock_offset, Agent,
    Nginx, CLOCK_OFFSET_ENV,
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
    /// One agent per config body, all labelled `role=web`. With
    /// `pin_port` the controller keeps its port across restarts, so the
    /// agents find it again.
    fn start(bodies: Vec<String>, pin_port: bool) -> Result<Fleet> {
        let offset_dir = tempfile::Builder::new()
            .prefix("certfleet-clock-")
            .tempdir()?;
        let offset_file = offset_dir.path().join("clock-offset");
        let env = (
            CLOCK_OFFSET_ENV.to_owned(),
            offset_file.to_string_lossy().into_owned(),
        );
        let mut ctl = Controller::start_with(ControllerOptions {
            env: vec![env.clone()],
            ..ControllerOptions::default()
        })?;
        if pin_port {
            let port = ctl.listen().port();
            ctl.restart_with(&["--listen", &format!("127.0.0.1:{port}")])?;
        }
        ctl.cli_json(&["issuer", "add", "ca", "--kind", "builtin"])?;
        let agents = start_web_agents(&ctl, bodies, &env, WAIT)?;
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

/// Fixes what `Nginx::break_config` broke.
fn repair_config(nginx: &Nginx) -> Result<()> {
    let conf = fs::read_to_string(&nginx.conf)?;
    fs::write(&nginx.conf, conf.replace(BROKEN_LINE, ""))?;
    Ok(())
}

/// Waits until `rollout`'s reason announces automatic retry number
/// `attempt`; returns the seconds from the rollout's last change to that
/// retry (the back-off it chose).
fn wait_retry_planned(fleet: &Fleet, rollout: &str, attempt: u32) -> Result<i64> {
    let marker = format!("automatic retry {attempt} at ");
    let shown = certfleet_tests::wait_for(WAIT, &format!("retry {attempt} of {rollout}"), || {
        let shown = rollout_show(&fleet.ctl, rollout)?;
        let planned = shown["state"] == "halted"
            && shown["reason"]
                .as_str()
                .is_some_and(|r| r.contains(&marker));
        Ok(planned.then_some(shown))
    })?;
    let reason = str_field(&shown, "reason")?;
    let at = reason
        .split(&marker)
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .with_context(|| format!("no retry time in {reason:?}"))?;
    Ok(parse_rfc3339(at)? - parse_rfc3339(str_field(&shown, "updated_at")?)?)
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
    let fleet = Fleet::start(bodies, false)?;
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
    repair_config(&nginx[1])?;
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
    let fleet = Fleet::start(bodies, false)?;
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

#[test]
fn retries_back_off_and_keep_their_count_across_a_controller_restart() -> Result<()> {
    let nginx = Nginx::start(NAME)?;
    let body = named_nginx_agent_config("web-1", TARGET, &nginx, NAME)?;
    let mut fleet = Fleet::start(vec![body], true)?;
    let (old, _, _) = fleet.deploy_one_day_certificate(&[])?;

    // The only agent is the canary; its nginx fails every install.
    nginx.break_config()?;
    fleet.set_clock_offset(PAST_RENEWAL_OF_ONE_DAY)?;
    let (_, new_fp, rollout) = fleet.wait_renewal_rollout(&old)?;
    assert_eq!(wait_retry_planned(&fleet, &rollout, 1)?, 30);
    // Past the first retry: it fails again, and the next waits twice as long.
    fleet.set_clock_offset(PAST_RENEWAL_OF_ONE_DAY + 35)?;
    assert_eq!(wait_retry_planned(&fleet, &rollout, 2)?, 60);

    // A restarted controller continues the count (the agent reconnecting
    // brings the retry forward; it fails and backs off further).
    fleet.ctl.restart()?;
    assert_eq!(wait_retry_planned(&fleet, &rollout, 3)?, 120);
    assert_eq!(fleet.halted_count()?, 1);

    repair_config(&nginx)?;
    fleet.set_clock_offset(PAST_RENEWAL_OF_ONE_DAY + 35 + 121)?;
    let healed = wait_rollout_state(
        &fleet.ctl,
        &rollout,
        &["completed", "aborted"],
        WAIT,
        |_| Ok(()),
    )?;
    assert_eq!(healed["state"], "completed", "{healed:#}");
    ensure!(
        healed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("after 3 automatic retries")),
        "{healed:#}"
    );
    wait_served(nginx.port, NAME, &new_fp, WAIT)?;
    assert_eq!(fleet.halted_count()?, 0);
    Ok(())
}

#[test]
fn an_operator_abort_stops_the_retries() -> Result<()> {
    let nginx = Nginx::start(NAME)?;
    let body = named_nginx_agent_config("web-1", TARGET, &nginx, NAME)?;
    let fleet = Fleet::start(vec![body], false)?;
    let (old, old_fp, _) = fleet.deploy_one_day_certificate(&[])?;
    nginx.break_config()?;
    fleet.set_clock_offset(PAST_RENEWAL_OF_ONE_DAY)?;
    let (_, _, rollout) = fleet.wait_renewal_rollout(&old)?;
    wait_retry_planned(&fleet, &rollout, 1)?;
    let aborted = fleet.ctl.cli_json(&["rollout", "abort", &rollout])?;
    assert_eq!(aborted["state"], "aborted", "{aborted:#}");

    // Fixed and far past any back-off: nothing is retried after an abort.
    repair_config(&nginx)?;
    fleet.set_clock_offset(PAST_RENEWAL_OF_ONE_DAY + 3_700)?;
    std::thread::sleep(Duration::from_secs(3));
    let shown = rollout_show(&fleet.ctl, &rollout)?;
    assert_eq!(shown["state"], "aborted", "{shown:#}");
    wait_served(nginx.port, NAME, &old_fp, Duration::from_secs(5))?;
    assert_eq!(fleet.halted_count()?, 0);
    Ok(())
}

#[test]
fn a_deploy_that_fixes_a_halted_renewal_clears_it_from_status() -> Result<()> {
    let nginx = Nginx::start(NAME)?;
    let body = named_nginx_agent_config("web-1", TARGET, &nginx, NAME)?;
    let fleet = Fleet::start(vec![body], false)?;
    let (old, _, _) = fleet.deploy_one_day_certificate(&[])?;
    nginx.break_config()?;
    fleet.set_clock_offset(PAST_RENEWAL_OF_ONE_DAY)?;
    let (new, new_fp, rollout) = fleet.wait_renewal_rollout(&old)?;
    wait_retry_planned(&fleet, &rollout, 1)?;
    assert_eq!(fleet.halted_count()?, 1);

    // The operator fixes nginx and deploys the renewed certificate, a few
    // seconds into the 30 s before the first retry is due.
    repair_config(&nginx)?;
    let mut args = vec!["--output", "json", "deploy", &new, "--to", "role=web"];
    args.extend(["--target", TARGET, "--wait"]);
    let out = fleet.ctl.cli(&args)?;
    ensure!(
        out.status.success(),
        "deploy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_served(nginx.port, NAME, &new_fp, WAIT)?;
    let old_rollout = rollout_show(&fleet.ctl, &rollout)?;
    assert_eq!(old_rollout["state"], "aborted", "{old_rollout:#}");
    ensure!(
        old_rollout["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("superseded by rollout")),
        "{old_rollout:#}"
    );
    assert_eq!(fleet.halted_count()?, 0);
    Ok(())
}
