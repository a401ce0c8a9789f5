//! Fallback issuers, end to end: a lineage issued by an ACME CA (Pebble)
//! whose CA then goes down is renewed by its built-in fallback issuer once
//! the primary has failed for `--fallback-after`; the lineage continues (the
//! new certificate supersedes the old one and is installed by the agent),
//! the switch is audited, and `instance show` says which issuer the
//! lineage renews from, since when. The simulated clock (the offset file)
//! stands in for waiting. Also: `instance create` refuses bad fallbacks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Result};
use certfleet_tests::acme::{Pebble, PebbleOptions};
use certfleet_tests::fleet::{
    named_files_agent_config, token, wait_connected, write_clock_offset, Agent, CLOCK_OFFSET_ENV,
};
use certfleet_tests::{
    array, cert_fingerprint, str_field, utf8, wait_for, Controller, ControllerOptions,
};
use serde_json::Value;
use tempfile::TempDir;

const NAME: &str = "www.fallback.test";
const TARGET: &str = "web";
const WAIT: Duration = Duration::from_secs(90);
/// Past the renewal point of a 1-day certificate (due 16 h after issue).
const PAST_RENEWAL_OF_ONE_DAY: i64 = 17 * 3600;

/// A controller on a simulated clock with the built-in issuer `backup`.
fn controller(offset_file: &std::path::Path) -> Result<Controller> {
    let ctl = Controller::start_with(ControllerOptions {
        env: vec![(
            CLOCK_OFFSET_ENV.to_owned(),
            offset_file.to_string_lossy().into_owned(),
        )],
        ..ControllerOptions::default()
    })?;
    ctl.cli_json(&["issuer", "add", "backup", "--kind", "builtin"])?;
    Ok(ctl)
}

#[test]
fn a_renewal_falls_back_to_the_backup_issuer_while_the_primary_ca_is_down() -> Result<()> {
    let clock_dir = TempDir::new()?;
    let offset_file = clock_dir.path().join("clock-offset");
    write_clock_offset(&offset_file, 0)?;
    // Pebble validates nothing (its VA says yes to every challenge) and
    // issues 1-day certificates, so the controller's clock moves hours, not
    // years, and its own credentials stay valid.
    let mut options = PebbleOptions::new(SocketAddr::from(([127, 0, 0, 1], 9)));
    options
        .env
        .push(("PEBBLE_VA_ALWAYS_VALID".into(), "1".into()));
    options.certificate_validity_secs = Some(86_400);
    let pebble = Pebble::start(options)?;
    let ctl = controller(&offset_file)?;
    ctl.cli_json(&[
        "issuer",
        "add",
        "primary",
        "--kind",
        "acme",
        "--directory",
        &pebble.directory_url(),
        "--ca-bundle",
        utf8(pebble.ca_bundle_path())?,
    ])?;

    // An agent with a files target for NAME whose webroot takes HTTP-01
    // files (Pebble does not fetch them, but certfleet publishes them).
    let dir = TempDir::new()?;
    let webroot = dir.path().join("webroot");
    std::fs::create_dir(&webroot)?;
    let body = format!(
        "{}webroot = \"{}\"\n",
        named_files_agent_config("web-1", TARGET, dir.path(), NAME),
        webroot.display()
    );
    let (tok, pin) = token(&ctl, &["--labels", "role=web"])?;
    let mut agent = Agent::new(&ctl, &body)?;
    agent.enroll(&ctl, &tok, &pin)?;
    agent.set_env(CLOCK_OFFSET_ENV, utf8(&offset_file)?);
    agent.start()?;
    wait_connected(&ctl, agent.id.as_deref().unwrap_or_default(), true, WAIT)?;

    // Two instances of one spec: the first certificate and the pool its
    // renewal draws from (an ACME instance is not bought on the fly).
    let spec = [
        "instance",
        "create",
        "--issuer",
        "primary",
        "--fallback-issuer",
        "backup",
        "--fallback-after",
        "30m",
        "--validity-days",
        "1",
    ];
    let inst = ctl.cli_json(&spec)?;
    let inst_id = str_field(&inst, "id")?.to_owned();
    assert_eq!(inst["spec"]["fallback_issuers"][0], "backup", "{inst:#}");
    assert_eq!(inst["spec"]["fallback_after_secs"], 1800, "{inst:#}");
    ctl.cli_json(&spec)?;
    let app = ctl.cli_json(&[
        "cert",
        "apply",
        "--instance",
        &inst_id,
        "--domain",
        NAME,
        "--wait",
    ])?;
    ensure!(app["state"] == "issued", "{app:#}");
    let old = str_field(&app, "certificate")?.to_owned();
    let shown = ctl.cli_json(&["cert", "show", &old])?;
    assert_eq!(shown["issuer"], "primary");
    let rollout = ctl.cli_json(&[
        "deploy", &old, "--to", "role=web", "--target", TARGET, "--wait",
    ])?;
    assert_eq!(rollout["state"], "completed", "{rollout:#}");
    let fullchain: PathBuf = dir.path().join("fullchain.pem");
    assert_eq!(
        cert_fingerprint(&fullchain)?,
        str_field(&shown, "fingerprint")?
    );

    // The primary CA goes down; renewal comes due and fails against it.
    drop(pebble);
    write_clock_offset(&offset_file, PAST_RENEWAL_OF_ONE_DAY)?;
    let failing = wait_for(WAIT, "the renewal's failure on the primary", || {
        let c = ctl.cli_json(&["cert", "show", &old])?;
        Ok(c["renewal"]["last_error"].is_string().then_some(c))
    })?;
    let error = failing["renewal"]["last_error"]
        .as_str()
        .unwrap_or_default();
    ensure!(error.contains("connect"), "{error}");
    let shown = ctl.cli_json(&["instance", "show", &inst_id])?;
    assert_eq!(shown["issuing"]["active_issuer"], "primary", "{shown:#}");
    ensure!(
        shown["issuing"]["failing_since"].is_string(),
        "the primary's failures are reported: {shown:#}"
    );
    ensure!(shown["issuing"]["fallback_since"].is_null(), "{shown:#}");
    // Still on the primary before fallback-after has passed.
    assert_eq!(
        ctl.cli_json(&["cert", "show", &old])?["state"],
        "active",
        "no renewal without the primary before fallback-after"
    );

    // Past fallback-after: the next attempt goes to the backup.
    write_clock_offset(&offset_file, PAST_RENEWAL_OF_ONE_DAY + 31 * 60)?;
    let new = wait_for(WAIT, "the renewal from the backup", || {
        let certs = ctl.cli_json(&["cert", "list"])?;
        Ok(array(&certs)?
            .iter()
            .find(|c| c["renews"] == old.as_str())
            .cloned())
    })?;
    assert_eq!(new["issuer"], "backup", "{new:#}");
    let new_id = str_field(&new, "id")?.to_owned();
    let certs = ctl.cli_json(&["cert", "list"])?;
    let old_now = array(&certs)?
        .iter()
        .find(|c| c["id"] == old.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(old_now["state"], "superseded", "{certs:#}");
    assert_eq!(new["state"], "active");

    // Rolled out like any renewal: the agent installs the backup's cert.
    let new_fp = str_field(&new, "fingerprint")?.to_owned();
    wait_for(WAIT, "the backup's certificate on the target", || {
        Ok((cert_fingerprint(&fullchain).ok().as_deref() == Some(new_fp.as_str())).then_some(()))
    })?;

    // The switch is audited ...
    let audit = ctl.cli_json(&["audit", "list"])?;
    let switch = array(&audit)?
        .iter()
        .find(|a| a["action"] == "cert.issuer_switch")
        .cloned()
        .unwrap_or(Value::Null);
    let detail = switch["detail"].as_str().unwrap_or_default();
    ensure!(
        detail.contains("from=primary")
            && detail.contains("to=backup")
            && detail.contains("reason=failing for longer than fallback-after"),
        "{audit:#}"
    );
    assert_eq!(switch["target"], old.as_str());

    // ... and reported, on the first instance and on the renewal's.
    for id in [inst_id.as_str(), str_field(&new, "instance")?] {
        let shown = ctl.cli_json(&["instance", "show", id])?;
        let issuing = &shown["issuing"];
        assert_eq!(issuing["active_issuer"], "backup", "{shown:#}");
        assert_eq!(issuing["lineage"], old.as_str(), "{shown:#}");
        ensure!(issuing["fallback_since"].is_string(), "{shown:#}");
        ensure!(issuing["failing_since"].is_null(), "{shown:#}");
    }
    // ... and flagged at risk (the target's deployment) until the primary
    // is back, since the switch.
    wait_for(WAIT, "the fallback at-risk item in status", || {
        let status = ctl.cli_json(&["status"])?;
        Ok(array(&status["at_risk"]["items"])?
            .iter()
            .find(|i| i["reason"] == "fallback_issuer")
            .cloned())
    })
    .and_then(|item| {
        let text = item["reason_text"].as_str().unwrap_or_default();
        ensure!(text.contains("fallback issuer backup"), "{item:#}");
        Ok(())
    })?;
    let text = ctl.cli_ok(&["instance", "show", &inst_id])?;
    let text = String::from_utf8_lossy(&text.stdout);
    ensure!(
        text.contains("renews from") && text.contains("backup (fallback) since"),
        "{text}"
    );
    ensure!(
        text.contains("fallback issuers") && text.contains("backup"),
        "{text}"
    );
    let list = ctl.cli_ok(&["instance", "list"])?;
    let list = String::from_utf8_lossy(&list.stdout);
    ensure!(list.contains("backup (fallback)"), "{list}");

    // The next renewal would try the primary first, but the pool holds no
    // instance for it (and its CA is still down): the backup renews again
    // rather than leaving the renewal blocked.
    write_clock_offset(&offset_file, 2 * PAST_RENEWAL_OF_ONE_DAY + 31 * 60)?;
    let third = wait_for(WAIT, "the second renewal", || {
        let certs = ctl.cli_json(&["cert", "list"])?;
        Ok(array(&certs)?
            .iter()
            .find(|c| c["renews"] == new_id.as_str())
            .cloned())
    })?;
    assert_eq!(third["issuer"], "backup", "{third:#}");
    let shown = ctl.cli_json(&["instance", "show", &inst_id])?;
    assert_eq!(shown["issuing"]["active_issuer"], "backup", "{shown:#}");
    Ok(())
}

#[test]
fn instance_create_refuses_bad_fallback_issuers() -> Result<()> {
    let clock_dir = TempDir::new()?;
    let ctl = controller(&clock_dir.path().join("clock-offset"))?;
    ctl.cli_json(&["issuer", "add", "main", "--kind", "builtin"])?;
    let cases: [(&[&str], &str); 4] = [
        (
            &["--fallback-issuer", "nosuch"],
            "fallback issuer \"nosuch\" not found",
        ),
        (
            &["--fallback-issuer", "main"],
            "--fallback-issuer main is the primary issuer",
        ),
        (
            &["--fallback-issuer", "backup", "--fallback-issuer", "backup"],
            "--fallback-issuer backup is given twice",
        ),
        (
            &["--fallback-after", "2h"],
            "--fallback-after needs at least one --fallback-issuer",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec!["instance", "create", "--issuer", "main"];
        args.extend_from_slice(extra);
        let out = ctl.cli(&args)?;
        let err = certfleet_tests::expect_cli_error(&out, &args.join(" "))?;
        ensure!(err.contains(want), "{args:?}: {err}");
    }
    // Nothing was created by the refused commands.
    let list = ctl.cli_json(&["instance", "list"])?;
    ensure!(array(&list)?.is_empty(), "{list:#}");
    Ok(())
}
