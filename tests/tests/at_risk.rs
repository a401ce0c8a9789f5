//! At-risk items: a deployment whose served certificate is past its
//! renewal point with no newer one installed because something failed (or
//! with less than half of its renewal window left) shows up in `status`,
//! `cert list --at-risk` and `deployment list --at-risk` with its reason
//! and since when, and disappears once it is fixed: a renewal that keeps
//! failing, a renewal nginx cannot install, a halted rollout, half of the
//! window left. Real controller, real agents, real nginx; the simulated
//! clock (the offset file) stands in for waiting.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Result};
use certfleet_tests::fleet::{
    named_files_agent_config, named_nginx_agent_config, parse_rfc3339, start_web_agents,
    wait_served, write_clock_offset, Agent, Nginx, CLOCK_OFFSET_ENV,
};
use certfleet_tests::{
    array, cert_fingerprint, str_field, wait_for, Controller, ControllerOptions,
};
use serde_json::Value;
use tempfile::TempDir;

const NAME: &str = "www.example.test";
const TARGET: &str = "web";
const WAIT: Duration = Duration::from_secs(60);
const HOUR: i64 = 3600;
/// Past the renewal point of a 1-day certificate (due 16 h after issue).
const PAST_RENEWAL_OF_ONE_DAY: i64 = 17 * HOUR;
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
        let agents = start_web_agents(&ctl, bodies, &env, WAIT)?;
        Ok(Fleet {
            _agents: agents,
            ctl,
            offset_file,
            _offset_dir: offset_dir,
        })
    }

    /// A 1-day certificate for [`NAME`], deployed to every agent with
    /// `args`; returns (id, fingerprint, rollout id) at once.
    fn start_one_day_deploy(&self, args: &[&str]) -> Result<(String, String, String)> {
        let cert = self.ctl.issue("ca", &["--validity-days", "1"], &[NAME])?;
        let id = str_field(&cert, "id")?.to_owned();
        let fp = str_field(&cert, "fingerprint")?.to_owned();
        let mut full = vec!["deploy", &id, "--to", "role=web", "--target", TARGET];
        full.extend_from_slice(args);
        let rollout = self.ctl.cli_json(&full)?;
        Ok((id, fp, str_field(&rollout, "id")?.to_owned()))
    }

    /// Waits until `rollout` completed.
    fn wait_completed(&self, rollout: &str) -> Result<()> {
        wait_for(WAIT, &format!("rollout {rollout} to complete"), || {
            let shown = self.ctl.cli_json(&["rollout", "show", rollout])?;
            ensure!(
                !matches!(shown["state"].as_str(), Some("halted" | "aborted")),
                "{shown:#}"
            );
            Ok((shown["state"] == "completed").then_some(()))
        })
    }

    fn set_clock_offset(&self, secs: i64) -> Result<()> {
        write_clock_offset(&self.offset_file, secs)
    }

    /// Waits for the renewal of `old` and its rollout; returns
    /// (certificate id, fingerprint, rollout id).
    fn wait_renewal_rollout(&self, old: &str) -> Result<(String, String, String)> {
        let (new, fp) = wait_for(WAIT, &format!("the renewal of {old}"), || {
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
        let rollout = wait_for(WAIT, "the renewal rollout", || {
            let list = self.ctl.cli_json(&["rollout", "list"])?;
            Ok(array(&list)?
                .iter()
                .find(|r| r["kind"] == "renewal" && r["certificate"] == new.as_str())
                .and_then(|r| r["id"].as_str().map(str::to_owned)))
        })?;
        Ok((new, fp, rollout))
    }

    /// Waits until `status` lists an at-risk item with `reason`; returns
    /// the whole status.
    fn wait_at_risk(&self, reason: &str) -> Result<Value> {
        wait_for(WAIT, &format!("an at-risk item ({reason})"), || {
            let status = self.ctl.cli_json(&["status"])?;
            let found = array(&status["at_risk"]["items"])?
                .iter()
                .any(|i| i["reason"] == reason);
            Ok(found.then_some(status))
        })
    }

    /// Waits until `status` counts no at-risk item.
    fn wait_none_at_risk(&self) -> Result<()> {
        wait_for(WAIT, "no at-risk item", || {
            let status = self.ctl.cli_json(&["status"])?;
            Ok((status["at_risk"]["total"] == 0).then_some(()))
        })
    }

    fn text(&self, args: &[&str]) -> Result<String> {
        let out = self.ctl.cli_ok(args)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The audit entries of `action` on `target`.
    fn audited(&self, action: &str, target: &str) -> Result<usize> {
        let audit = self.ctl.cli_json(&["audit", "list", "--limit", "1000"])?;
        Ok(array(&audit)?
            .iter()
            .filter(|e| e["action"] == action && e["target"] == target)
            .count())
    }
}

/// The one item of `status`, checked against the lists: `cert list
/// --at-risk` and `deployment list --at-risk` (JSON and table) show the
/// same reason and since. Returns the item.
fn check_item_everywhere(fleet: &Fleet, status: &Value, cert: &str, agent: &str) -> Result<Value> {
    assert_eq!(status["at_risk"]["total"], 1, "{status:#}");
    let item = status["at_risk"]["items"][0].clone();
    assert_eq!(item["agent_name"], agent, "{item:#}");
    assert_eq!(item["target"], TARGET, "{item:#}");
    assert_eq!(item["certificate"], cert, "{item:#}");
    assert_eq!(item["domains"][0], NAME, "{item:#}");
    let reason = str_field(&item, "reason")?;
    let since = str_field(&item, "since")?;

    let text = fleet.text(&["status"])?;
    for needle in ["at risk", agent, NAME, cert, reason] {
        ensure!(
            text.contains(needle),
            "status does not show {needle:?}:\n{text}"
        );
    }

    let deployments = fleet.ctl.cli_json(&["deployment", "list", "--at-risk"])?;
    let rows = array(&deployments)?;
    assert_eq!(rows.len(), 1, "{deployments:#}");
    assert_eq!(rows[0]["deployment"], item["deployment"], "{deployments:#}");
    assert_eq!(rows[0]["reason"], reason, "{deployments:#}");
    assert_eq!(rows[0]["since"], since, "{deployments:#}");
    ensure!(
        rows[0]["reason_text"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{deployments:#}"
    );
    let certs = fleet.ctl.cli_json(&["cert", "list", "--at-risk"])?;
    let rows = array(&certs)?;
    assert_eq!(rows.len(), 1, "{certs:#}");
    assert_eq!(rows[0]["id"], cert, "{certs:#}");
    assert_eq!(rows[0]["reason"], reason, "{certs:#}");
    assert_eq!(rows[0]["since"], since, "{certs:#}");
    assert_eq!(rows[0]["deployments"], 1, "{certs:#}");
    let table = fleet.text(&["deployment", "list", "--at-risk"])?;
    ensure!(
        table.contains(agent) && table.contains(reason),
        "deployment list --at-risk:\n{table}"
    );
    Ok(item)
}

/// The lists are empty once nothing is at risk.
fn check_lists_empty(fleet: &Fleet) -> Result<()> {
    for list in [
        &["deployment", "list", "--at-risk"][..],
        &["cert", "list", "--at-risk"][..],
    ] {
        let rows = fleet.ctl.cli_json(list)?;
        ensure!(array(&rows)?.is_empty(), "{list:?}: {rows:#}");
    }
    Ok(())
}

#[test]
fn a_renewal_that_cannot_be_installed_is_at_risk_until_nginx_is_fixed() -> Result<()> {
    let nginx = Nginx::start(NAME)?;
    let body = named_nginx_agent_config("web-1", TARGET, &nginx, NAME)?;
    let fleet = Fleet::start(vec![body])?;
    let (old, old_fp, deploy) = fleet.start_one_day_deploy(&[])?;
    fleet.wait_completed(&deploy)?;
    wait_served(nginx.port, NAME, &old_fp, WAIT)?;
    let due = parse_rfc3339(str_field(
        &fleet.ctl.cli_json(&["cert", "show", &old])?["renewal"],
        "due_at",
    )?)?;

    // nginx's config test fails, so the renewal cannot be installed.
    nginx.break_config()?;
    fleet.set_clock_offset(PAST_RENEWAL_OF_ONE_DAY)?;
    let (_new, new_fp, rollout) = fleet.wait_renewal_rollout(&old)?;
    let status = fleet.wait_at_risk("rollout_failed")?;
    let item = check_item_everywhere(&fleet, &status, &old, "web-1")?;
    ensure!(
        item["reason_text"]
            .as_str()
            .is_some_and(|t| t.contains("rolled_back") || t.contains("failed")),
        "the reason carries the target's error: {item:#}"
    );
    let since = parse_rfc3339(str_field(&item, "since")?)?;
    ensure!(
        since >= due,
        "at risk since {since}, before the due time {due}: {item:#}"
    );
    wait_served(nginx.port, NAME, &old_fp, WAIT)?;
    let deployment = str_field(&item, "deployment")?.to_owned();

    // Fixed, and past the rollout's automatic retry: no operator command.
    let conf = fs::read_to_string(&nginx.conf)?;
    fs::write(&nginx.conf, conf.replace(BROKEN_LINE, ""))?;
    fleet.set_clock_offset(PAST_RENEWAL_OF_ONE_DAY + 300)?;
    wait_served(nginx.port, NAME, &new_fp, WAIT)?;
    fleet.wait_none_at_risk()?;
    check_lists_empty(&fleet)?;
    let text = fleet.text(&["status"])?;
    ensure!(
        !text.contains("web-1"),
        "status still lists the item:\n{text}"
    );
    let shown = fleet.ctl.cli_json(&["rollout", "show", &rollout])?;
    assert_eq!(shown["state"], "completed", "{shown:#}");
    // Raised once and cleared once, however many passes saw it.
    assert_eq!(fleet.audited("at_risk.raise", &deployment)?, 1);
    assert_eq!(fleet.audited("at_risk.clear", &deployment)?, 1);
    Ok(())
}

#[test]
fn less_than_half_the_window_left_is_at_risk_whatever_the_reason() -> Result<()> {
    let dirs = (0..2)
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
    // The renewal rolls out the same way: web-1 first, then an hour's
    // pause before web-2.
    let strategy = ["--canary", "1", "--wave", "1", "--pause", "1h"];
    let (old, _, deploy) = fleet.start_one_day_deploy(&strategy)?;
    // The deploy pauses too: once its canary is in, move the clock past
    // its pause.
    // (The pass that marks the canary installed also starts the pause.)
    wait_for(WAIT, &format!("{old} on web-1 (the canary)"), || {
        let shown = fleet.ctl.cli_json(&["rollout", "show", &deploy])?;
        let canary_in = array(&shown["targets"])?
            .iter()
            .any(|t| t["agent_name"] == "web-1" && t["state"] == "installed");
        Ok(canary_in.then_some(()))
    })?;
    fleet.set_clock_offset(2 * HOUR)?;
    fleet.wait_completed(&deploy)?;
    let shown = fleet.ctl.cli_json(&["cert", "show", &old])?;
    let not_before = parse_rfc3339(str_field(&shown, "not_before")?)?;
    let not_after = parse_rfc3339(str_field(&shown, "not_after")?)?;

    fleet.set_clock_offset(PAST_RENEWAL_OF_ONE_DAY)?;
    let (new, new_fp, rollout) = fleet.wait_renewal_rollout(&old)?;
    wait_for(WAIT, &format!("{new} on web-1 (the canary)"), || {
        let fp = cert_fingerprint(&dirs[0].path().join("fullchain.pem")).ok();
        Ok((fp.as_deref() == Some(new_fp.as_str())).then_some(()))
    })?;
    // The operator holds the rollout in its pause before web-2: nothing
    // failed, so web-2 is not at risk for now, past its due time or not.
    let paused = fleet.ctl.cli_json(&["rollout", "pause", &rollout])?;
    assert_eq!(paused["state"], "paused", "{paused:#}");

    // Less than half of the 8 h renewal window is left 20 h into the day.
    fleet.set_clock_offset(20 * HOUR + 60)?;
    let status = fleet.wait_at_risk("half_window_left")?;
    let item = check_item_everywhere(&fleet, &status, &old, "web-2")?;
    // Since is when half the window was left, exactly, not when the pass
    // noticed: renew_before is a third of the lifetime.
    let renew_before = (not_after - not_before) / 3;
    assert_eq!(
        parse_rfc3339(str_field(&item, "since")?)?,
        not_after - renew_before / 2,
        "{item:#}"
    );
    let deployment = str_field(&item, "deployment")?.to_owned();

    let resumed = fleet.ctl.cli_json(&["rollout", "resume", &rollout])?;
    assert_eq!(resumed["state"], "running", "{resumed:#}");
    wait_for(WAIT, &format!("{new} on web-2"), || {
        let fp = cert_fingerprint(&dirs[1].path().join("fullchain.pem")).ok();
        Ok((fp.as_deref() == Some(new_fp.as_str())).then_some(()))
    })?;
    fleet.wait_none_at_risk()?;
    check_lists_empty(&fleet)?;
    assert_eq!(fleet.audited("at_risk.raise", &deployment)?, 1);
    assert_eq!(fleet.audited("at_risk.clear", &deployment)?, 1);
    let detail = fleet.ctl.cli_json(&["audit", "list", "--limit", "1000"])?;
    ensure!(
        array(&detail)?
            .iter()
            .any(|e| e["action"] == "at_risk.raise"
                && e["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("half_window_left"))),
        "the raise names its reason: {detail:#}"
    );
    Ok(())
}

/// A fresh admin credential valid at the simulated date, minted offline
/// from the state directory (the first one expired on the way).
fn admin_credential_valid_now(ctl: &Controller) -> Result<()> {
    let fresh = ctl.credential_path().with_extension("renewed");
    ctl.cli_ok(&[
        "admin",
        "create",
        "operator",
        "--state-dir",
        &ctl.state_dir().to_string_lossy(),
        "--out",
        &fresh.to_string_lossy(),
    ])?;
    fs::rename(&fresh, ctl.credential_path())?;
    Ok(())
}

#[test]
fn a_failing_renewal_is_at_risk_with_its_error_until_replaced() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("certfleet-files-")
        .tempdir()?;
    let body = named_files_agent_config("web-1", TARGET, dir.path(), NAME);
    let fleet = Fleet::start(vec![body])?;
    // 3649 days: due 30 days before expiry, and 3625 days on (past due,
    // before half of the window is left) a replacement with the same spec
    // would outlive the built-in CA's ten years, so every attempt fails.
    let cert = fleet
        .ctl
        .issue("ca", &["--validity-days", "3649"], &[NAME])?;
    let old = str_field(&cert, "id")?.to_owned();
    let deployed = fleet.ctl.cli_json(&[
        "deploy", &old, "--to", "role=web", "--target", TARGET, "--wait",
    ])?;
    assert_eq!(deployed["state"], "completed", "{deployed:#}");
    let due = parse_rfc3339(str_field(
        &fleet.ctl.cli_json(&["cert", "show", &old])?["renewal"],
        "due_at",
    )?)?;

    fleet.set_clock_offset(3625 * 24 * HOUR)?;
    admin_credential_valid_now(&fleet.ctl)?;
    // The controller's endpoint certificate expired too; it replaces it
    // within seconds of noticing.
    wait_for(WAIT, "the endpoint certificate's renewal", || {
        Ok(fleet
            .ctl
            .log()?
            .contains("endpoint certificate renewed")
            .then_some(()))
    })?;
    let status = fleet.wait_at_risk("renewal_failing")?;
    let item = check_item_everywhere(&fleet, &status, &old, "web-1")?;
    ensure!(
        item["reason_text"]
            .as_str()
            .is_some_and(|t| t.contains("CA")),
        "the reason is the renewal's last error: {item:#}"
    );
    // Since the first failed attempt (past the due time), as audited.
    let audit = fleet.ctl.cli_json(&["audit", "list", "--limit", "1000"])?;
    let first_failure = array(&audit)?
        .iter()
        .filter(|e| e["action"] == "cert.issue" && e["outcome"] == "failed")
        .filter_map(|e| e["at"].as_str().and_then(|t| parse_rfc3339(t).ok()))
        .min()
        .ok_or_else(|| anyhow::anyhow!("no failed renewal attempt audited: {audit:#}"))?;
    let since = parse_rfc3339(str_field(&item, "since")?)?;
    assert_eq!(since, first_failure.max(due), "{item:#}");
    let deployment = str_field(&item, "deployment")?.to_owned();

    // The operator replaces it with a certificate that fits in the CA's
    // life: the target serves a newer certificate, so the item clears.
    let fresh = fleet.ctl.issue("ca", &["--validity-days", "5"], &[NAME])?;
    let fresh_id = str_field(&fresh, "id")?;
    let fresh_fp = str_field(&fresh, "fingerprint")?.to_owned();
    let replaced = fleet.ctl.cli_json(&[
        "deploy", fresh_id, "--to", "role=web", "--target", TARGET, "--wait",
    ])?;
    assert_eq!(replaced["state"], "completed", "{replaced:#}");
    assert_eq!(
        cert_fingerprint(&dir.path().join("fullchain.pem"))?,
        fresh_fp
    );
    fleet.wait_none_at_risk()?;
    check_lists_empty(&fleet)?;
    assert_eq!(fleet.audited("at_risk.raise", &deployment)?, 1);
    assert_eq!(fleet.audited("at_risk.clear", &deployment)?, 1);
    Ok(())
}

#[test]
fn a_halted_rollout_puts_the_targets_it_never_reached_at_risk() -> Result<()> {
    let nginx = [Nginx::start(NAME)?, Nginx::start(NAME)?];
    let bodies = nginx
        .iter()
        .enumerate()
        .map(|(i, n)| named_nginx_agent_config(&format!("web-{}", i + 1), TARGET, n, NAME))
        .collect::<Result<Vec<_>>>()?;
    let fleet = Fleet::start(bodies)?;
    let (old, old_fp, deploy) = fleet.start_one_day_deploy(&["--canary", "1", "--wave", "1"])?;
    fleet.wait_completed(&deploy)?;

    // The canary (web-1) cannot install the renewal: the rollout halts
    // before web-2's wave.
    nginx[0].break_config()?;
    fleet.set_clock_offset(PAST_RENEWAL_OF_ONE_DAY)?;
    let (_, new_fp, rollout) = fleet.wait_renewal_rollout(&old)?;
    let status = wait_for(WAIT, "both targets at risk", || {
        let status = fleet.ctl.cli_json(&["status"])?;
        Ok((status["at_risk"]["total"] == 2).then_some(status))
    })?;
    let items = array(&status["at_risk"]["items"])?;
    let of = |agent: &str| -> Result<&Value> {
        items
            .iter()
            .find(|i| i["agent_name"] == agent)
            .ok_or_else(|| anyhow::anyhow!("no item for {agent}: {status:#}"))
    };
    assert_eq!(of("web-1")?["reason"], "rollout_failed", "{status:#}");
    let halted = of("web-2")?;
    assert_eq!(halted["reason"], "rollout_halted", "{status:#}");
    ensure!(
        halted["reason_text"]
            .as_str()
            .is_some_and(|t| t.contains(&rollout) && t.contains("halted")),
        "the reason names the halted rollout: {halted:#}"
    );
    let rows = fleet.ctl.cli_json(&["deployment", "list", "--at-risk"])?;
    assert_eq!(array(&rows)?.len(), 2, "{rows:#}");
    let certs = fleet.ctl.cli_json(&["cert", "list", "--at-risk"])?;
    assert_eq!(array(&certs)?.len(), 1, "{certs:#}");
    assert_eq!(certs[0]["id"], old.as_str(), "{certs:#}");
    assert_eq!(certs[0]["deployments"], 2, "{certs:#}");
    wait_served(nginx[1].port, NAME, &old_fp, WAIT)?;

    // Fixed, and past the automatic retry: both get the renewal.
    let conf = fs::read_to_string(&nginx[0].conf)?;
    fs::write(&nginx[0].conf, conf.replace(BROKEN_LINE, ""))?;
    fleet.set_clock_offset(PAST_RENEWAL_OF_ONE_DAY + 300)?;
    for n in &nginx {
        wait_served(n.port, NAME, &new_fp, WAIT)?;
    }
    fleet.wait_none_at_risk()?;
    check_lists_empty(&fleet)?;
    Ok(())
}
