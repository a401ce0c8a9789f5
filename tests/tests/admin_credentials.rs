//! End-to-end: admin credentials per operator.
//!
//! `admin create/list/renew/revoke` through the real CLI against a real
//! controller; a revoked credential refused at once, also on a connection
//! opened before the revocation; the last valid credential protected
//! without `--force`; a credential minted offline from the state directory
//! (controller running, and stopped) accepted without a restart; the audit
//! log naming each operator; the CLI's warning within 30 days of expiry and
//! its error once expired, on the simulated clock the controller shares.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use certfleet_controller::client::{Client, Credential};
use certfleet_protocol::message::Request;
use certfleet_tests::fleet::{write_clock_offset, CLOCK_OFFSET_ENV};
use certfleet_tests::{
    array, expect_cli_error, file_mode, run_with_timeout, str_field, Controller, ControllerOptions,
    CLI_TIMEOUT,
};
use serde_json::Value;

const DAY: i64 = 86_400;

fn cli_as(ctl: &Controller, cred: &Path, args: &[&str]) -> Result<Output> {
    ctl.cli_as(cred, args)
}

fn ok_as(ctl: &Controller, cred: &Path, args: &[&str]) -> Result<Output> {
    let out = cli_as(ctl, cred, args)?;
    ensure!(
        out.status.success(),
        "`certfleet {}` with {} failed: {}",
        args.join(" "),
        cred.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

fn json_as(ctl: &Controller, cred: &Path, args: &[&str]) -> Result<Value> {
    let mut full = vec!["--output", "json"];
    full.extend_from_slice(args);
    let out = ok_as(ctl, cred, &full)?;
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("`certfleet {}` printed no JSON", full.join(" ")))
}

fn err_as(ctl: &Controller, cred: &Path, args: &[&str]) -> Result<String> {
    let out = cli_as(ctl, cred, args)?;
    expect_cli_error(&out, &format!("certfleet {}", args.join(" ")))
}

/// `admin create NAME --state-dir DIR --out FILE`, with no controller
/// address and no credential: what a locked-out operator runs on the host.
fn create_offline(ctl: &Controller, name: &str, out: &Path) -> Result<Output> {
    let mut cmd = ctl.cli_command();
    cmd.args(["--output", "json", "admin", "create", name, "--state-dir"])
        .arg(ctl.state_dir())
        .arg("--out")
        .arg(out);
    run_with_timeout(&mut cmd, CLI_TIMEOUT)
}

/// The actors of audit entries with `action` on `target`.
fn audit_actors(ctl: &Controller, action: &str) -> Result<Vec<String>> {
    let audit = ctl.cli_json(&["audit", "list", "--limit", "1000"])?;
    Ok(array(&audit)?
        .iter()
        .filter(|e| e["action"] == action)
        .filter_map(|e| e["actor"].as_str().map(str::to_owned))
        .collect())
}

fn admin_row<'a>(list: &'a Value, serial: &str) -> Result<&'a Value> {
    array(list)?
        .iter()
        .find(|c| c["serial"] == serial)
        .with_context(|| format!("serial {serial} missing from admin list: {list}"))
}

#[test]
fn create_list_renew_revoke_and_the_audit_names_the_operator() -> Result<()> {
    let ctl = Controller::start()?;
    let dir = ctl.scratch("creds")?;
    let alice = dir.join("alice.credential");
    let alice_str = alice.to_string_lossy().into_owned();

    let created = ctl.cli_json(&["admin", "create", "alice", "--out", &alice_str])?;
    ensure!(created["name"] == "alice", "{created}");
    let alice_serial = str_field(&created, "serial")?.to_owned();
    ensure!(
        file_mode(&alice)? & 0o777 == 0o600,
        "credential mode {:o}",
        file_mode(&alice)?
    );

    // An existing name and an existing file are refused; nothing is issued.
    let taken = ctl.cli_err(&[
        "admin",
        "create",
        "alice",
        "--out",
        &format!("{alice_str}.2"),
    ])?;
    ensure!(
        taken.contains("alice") && taken.contains("already has a valid credential"),
        "{taken}"
    );
    let clobber = ctl.cli_err(&["admin", "create", "bob", "--out", &alice_str])?;
    ensure!(clobber.contains("already exists"), "{clobber}");
    let list = ctl.cli_json(&["admin", "list"])?;
    ensure!(array(&list)?.len() == 2, "admin + alice only: {list}");

    // Alice acts under her own name.
    ok_as(&ctl, &alice, &["agent", "token", "create"])?;
    let actors = audit_actors(&ctl, "agent.token.create")?;
    ensure!(actors == ["admin:alice"], "audit actors: {actors:?}");
    let actors = audit_actors(&ctl, "admin.credential.create")?;
    ensure!(
        actors.contains(&"admin:admin".to_owned()),
        "the create names its maker: {actors:?}"
    );

    // Renew: a second credential for alice; the first keeps working.
    let alice2 = dir.join("alice-2.credential");
    let renewed = json_as(
        &ctl,
        &alice,
        &["admin", "renew", "--out", &alice2.to_string_lossy()],
    )?;
    ensure!(renewed["name"] == "alice", "{renewed}");
    let alice2_serial = str_field(&renewed, "serial")?.to_owned();
    ensure!(alice2_serial != alice_serial, "renew reused the serial");
    ok_as(&ctl, &alice, &["status"])?;
    ok_as(&ctl, &alice2, &["status"])?;
    let list = ctl.cli_json(&["admin", "list"])?;
    ensure!(admin_row(&list, &alice2_serial)?["revoked_at"].is_null());

    // A connection opened before the revocation...
    let rt = tokio::runtime::Runtime::new()?;
    let live = rt.block_on(Client::open(ctl.listen(), &Credential::load(&alice)?))?;
    rt.block_on(live.call(&Request::Status))?;

    let revoked = ctl.cli_json(&["admin", "revoke", "alice"])?;
    ensure!(array(&revoked)?.len() == 2, "both of alice's: {revoked}");
    let list = ctl.cli_json(&["admin", "list"])?;
    for serial in [&alice_serial, &alice2_serial] {
        ensure!(
            !admin_row(&list, serial)?["revoked_at"].is_null(),
            "{serial} not revoked: {list}"
        );
    }

    // ...is refused from then on, and closed by the controller (the way a
    // removed agent's session is): every request fails, and within moments
    // because the connection is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let Err(e) = rt.block_on(live.call(&Request::AgentList)) else {
            bail!("a revoked credential's open connection was still served");
        };
        let e = format!("{e:#}");
        ensure!(e.contains("revoked"), "{e}");
        if e.contains("closed the connection") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the controller did not close the revoked credential's connection: {e}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for cred in [&alice, &alice2] {
        let e = err_as(&ctl, cred, &["status"])?;
        ensure!(e.contains("revoked"), "{e}");
    }
    // Renewing a revoked credential: a clear refusal with the way back.
    let e = err_as(&ctl, &alice, &["admin", "renew"])?;
    ensure!(
        e.contains("revoked") && e.contains("admin create"),
        "renew with a revoked credential: {e}"
    );

    // A world-readable credential works, with a warning.
    let mut perms = std::fs::metadata(ctl.credential_path())?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(ctl.credential_path(), perms)?;
    let out = ctl.cli_ok(&["status"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("readable by other users") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn the_last_admin_is_protected_and_an_offline_credential_lets_one_back_in() -> Result<()> {
    let mut ctl = Controller::start()?;
    let dir = ctl.scratch("creds")?;

    // The only valid credential cannot be revoked without --force.
    let e = ctl.cli_err(&["admin", "revoke", "admin"])?;
    ensure!(
        e.contains("no valid admin credential") && e.contains("--force"),
        "{e}"
    );
    ctl.cli_ok(&["status"])?;
    ctl.cli_ok(&["admin", "revoke", "admin", "--force"])?;
    let e = ctl.cli_err(&["status"])?;
    ensure!(e.contains("revoked"), "locked out: {e}");

    // Offline, beside the running controller, which accepts it at once.
    let carol = dir.join("carol.credential");
    let out = create_offline(&ctl, "carol", &carol)?;
    ensure!(
        out.status.success(),
        "offline create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(file_mode(&carol)? & 0o777 == 0o600);
    ok_as(&ctl, &carol, &["agent", "token", "create"])?;
    ensure!(audit_actors_as(&ctl, &carol, "agent.token.create")? == ["admin:carol"]);
    let creators = audit_actors_as(&ctl, &carol, "admin.credential.create")?;
    ensure!(
        creators.iter().any(|a| a.starts_with("local:")),
        "the offline create is audited as a local user: {creators:?}"
    );
    // The offline path refuses a taken name too.
    let out = create_offline(&ctl, "carol", &dir.join("carol-again.credential"))?;
    let e = expect_cli_error(&out, "offline create of a taken name")?;
    ensure!(e.contains("already has a valid credential"), "{e}");

    // And with the controller stopped.
    ctl.stop()?;
    let dave = dir.join("dave.credential");
    let out = create_offline(&ctl, "dave", &dave)?;
    ensure!(
        out.status.success(),
        "offline create, controller stopped: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ctl.start_again()?;
    ok_as(&ctl, &dave, &["status"])?;
    Ok(())
}

fn audit_actors_as(ctl: &Controller, cred: &Path, action: &str) -> Result<Vec<String>> {
    let audit = json_as(ctl, cred, &["audit", "list", "--limit", "1000"])?;
    Ok(array(&audit)?
        .iter()
        .filter(|e| e["action"] == action)
        .filter_map(|e| e["actor"].as_str().map(str::to_owned))
        .collect())
}

/// Waits until the controller has renewed its endpoint certificate `n`
/// times (after a clock jump past its validity).
fn wait_endpoint_renewals(ctl: &Controller, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = ctl
            .log()?
            .lines()
            .filter(|l| l.contains("endpoint certificate renewed"))
            .count();
        if seen >= n {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the controller renewed its endpoint certificate {seen} times, expected {n}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_cli_warns_within_30_days_and_explains_an_expired_credential() -> Result<()> {
    let clock_dir = tempfile::Builder::new()
        .prefix("certfleet-clock-")
        .tempdir()?;
    let offset = clock_dir.path().join("offset");
    write_clock_offset(&offset, 0)?;
    let ctl = Controller::start_with(ControllerOptions {
        env: vec![(
            CLOCK_OFFSET_ENV.to_owned(),
            offset.to_string_lossy().into_owned(),
        )],
        ..ControllerOptions::default()
    })?;

    let out = ctl.cli_ok(&["status"])?;
    ensure!(
        !String::from_utf8_lossy(&out.stderr).contains("expires"),
        "a fresh credential draws no warning: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Day 340: the 365-day credential has 25 days left.
    write_clock_offset(&offset, 340 * DAY)?;
    wait_endpoint_renewals(&ctl, 1)?;
    let out = ctl.cli_ok(&["status"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("warning:")
            && stderr.contains("expires at")
            && stderr.contains("admin renew"),
        "no expiry warning on day 340: {stderr}"
    );
    let renewed = ctl.scratch("creds")?.join("admin-renewed.credential");
    ok_as(
        &ctl,
        &ctl.credential_path(),
        &["admin", "renew", "--out", &renewed.to_string_lossy()],
    )?;
    let out = ok_as(&ctl, &renewed, &["status"])?;
    ensure!(
        !String::from_utf8_lossy(&out.stderr).contains("expires"),
        "the renewed credential draws no warning: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Day 366: the first credential has expired; the renewed one works.
    write_clock_offset(&offset, 366 * DAY)?;
    std::thread::sleep(Duration::from_millis(400));
    let e = ctl.cli_err(&["status"])?;
    ensure!(
        e.contains("expired at")
            && e.contains("admin create admin --state-dir")
            && e.contains("cannot be renewed"),
        "expired credential: {e}"
    );
    ok_as(&ctl, &renewed, &["status"])?;
    Ok(())
}
