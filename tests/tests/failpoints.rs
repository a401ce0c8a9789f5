//! Fault injection (docs/testing.md): the real binaries, built with the
//! `failpoints` feature, are killed (`abort`) or made to fail (`return`) at
//! each named step of issuing, storing, rolling out, ACME ordering and
//! installing; after a restart nothing is lost or duplicated: every
//! application ends issued exactly once, no deployment is stuck, and what
//! nginx serves is the deployed certificate (or, before convergence, the one
//! it served before — never an unknown one).
//!
//! One controller (and one nginx + agent) is shared by all the failpoints of
//! a test: each round restarts it with the next failpoint armed.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use certfleet_tests::acme::{Bind, Pebble, PebbleOptions};
use certfleet_tests::fleet::{
    served_fingerprint, token, wait_connected, wait_deployments, wait_served, Agent, Nginx,
};
use certfleet_tests::{ensure_key_matches_cert, str_field, utf8, wait_for, Controller};
use serde_json::Value;

const FAILPOINTS: &str = "CERTFLEET_FAILPOINTS";
const NAME: &str = "www.example.test";
const WAIT: Duration = Duration::from_secs(60);

/// A controller whose QUIC port stays the same over restarts, so agents
/// find it again, with the built-in issuer `ca`.
fn pinned_controller() -> Result<Controller> {
    let mut ctl = Controller::start()?;
    let port = ctl.listen().port();
    ctl.restart_with(&["--listen", &format!("127.0.0.1:{port}")])?;
    ctl.cli_json(&["issuer", "add", "ca", "--kind", "builtin"])?;
    Ok(ctl)
}

/// Restart the controller with `failpoint=abort` armed.
fn arm(ctl: &mut Controller, failpoint: &str) -> Result<()> {
    ctl.set_env(FAILPOINTS, Some(&format!("{failpoint}=abort")));
    ctl.restart()
}

/// Wait for the armed controller to die at `failpoint`, then start it again
/// with no failpoint.
fn crashed_then_restarted(ctl: &mut Controller, failpoint: &str) -> Result<()> {
    let status = ctl.wait_exit(WAIT)?;
    ensure_aborted(status, failpoint)?;
    let log = ctl.log()?;
    ensure!(
        log.contains(&format!("failpoint {failpoint}: aborting")),
        "the controller died elsewhere than at {failpoint}: {log}"
    );
    ctl.set_env(FAILPOINTS, None);
    ctl.start_again()
}

fn ensure_aborted(status: ExitStatus, failpoint: &str) -> Result<()> {
    use std::os::unix::process::ExitStatusExt;
    ensure!(
        status.signal() == Some(6),
        "expected SIGABRT at failpoint {failpoint}, got {status}"
    );
    Ok(())
}

/// Start a CLI call to an armed controller without waiting for its answer:
/// the controller may die before it answers, and the CLI would then wait
/// for the connection's idle timeout. Kill the returned child once done.
fn cli_detached(ctl: &Controller, args: &[&str]) -> Result<std::process::Child> {
    let mut cmd = ctl.cli_command();
    cmd.arg("--controller")
        .arg(ctl.listen().to_string())
        .arg("--credential")
        .arg(ctl.credential_path())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    Ok(cmd.spawn()?)
}

/// Create an instance and apply (without waiting); returns the application id.
fn apply(ctl: &Controller, issuer: &str, domain: &str) -> Result<String> {
    let inst = ctl.cli_json(&["instance", "create", "--issuer", issuer])?;
    let inst = str_field(&inst, "id")?.to_owned();
    let app = ctl.cli_json(&["cert", "apply", "--instance", &inst, "--domain", domain])?;
    Ok(str_field(&app, "id")?.to_owned())
}

/// Wait until application `id` is issued; fails if it fails or stays in
/// flight. Returns it.
fn wait_issued(ctl: &Controller, id: &str, timeout: Duration) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let a = ctl.cli_json(&["application", "show", id])?;
        if a["state"] == "issued" {
            return Ok(a);
        }
        ensure!(a["state"] != "failed", "application failed: {a}");
        ensure!(Instant::now() < deadline, "still in flight: {a}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The store holds exactly one certificate for `domain` (none signed twice,
/// none lost), active, whose key matches; returns its id.
fn one_certificate_for(ctl: &Controller, domain: &str) -> Result<String> {
    let list = ctl.cli_json(&["cert", "list"])?;
    let mine: Vec<&Value> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["domains"]
                .as_array()
                .is_some_and(|d| d.iter().any(|n| n == domain))
        })
        .collect();
    ensure!(
        mine.len() == 1,
        "expected one certificate for {domain}: {mine:?}"
    );
    let id = str_field(mine[0], "id")?.to_owned();
    ensure!(mine[0]["state"] == "active", "{:?}", mine[0]);
    let dir = ctl.scratch(&id)?;
    ctl.cli_ok(&["cert", "download", &id, "--out", utf8(&dir)?])?;
    ensure_key_matches_cert(&dir.join("privkey.pem"), &dir.join("cert.pem"))?;
    Ok(id)
}

/// Nothing in flight and no instance left `applying` (stuck).
fn nothing_in_flight(ctl: &Controller) -> Result<()> {
    let instances = ctl.cli_json(&["instance", "list"])?;
    for i in instances.as_array().into_iter().flatten() {
        ensure!(
            i["state"] != "applying",
            "instance stuck in flight after restart: {i}"
        );
    }
    Ok(())
}

#[test]
fn each_issuing_step_killed_or_failed_issues_every_application_once() -> Result<()> {
    let mut ctl = pinned_controller()?;
    for (n, failpoint) in [
        "issue.before_sign",
        "issue.after_sign",
        "issue.before_commit",
    ]
    .into_iter()
    .enumerate()
    {
        arm(&mut ctl, failpoint)?;
        let domain = format!("issue{n}.example.test");
        let app = apply(&ctl, "ca", &domain)?;
        crashed_then_restarted(&mut ctl, failpoint)?;
        // Resumed at start: issued once, the same application.
        wait_issued(&ctl, &app, WAIT)?;
        one_certificate_for(&ctl, &domain)?;
        nothing_in_flight(&ctl)?;
    }
    // An error (not a crash) at each step: the application fails with the
    // step's error, its instance is free again, nothing was stored, and
    // applying again on the same instance issues one certificate.
    for (n, failpoint) in [
        "issue.before_sign",
        "issue.after_sign",
        "issue.before_commit",
    ]
    .into_iter()
    .enumerate()
    {
        ctl.set_env(FAILPOINTS, Some(&format!("{failpoint}=1*return")));
        ctl.restart()?;
        let domain = format!("error{n}.example.test");
        let inst = ctl.cli_json(&["instance", "create", "--issuer", "ca"])?;
        let inst = str_field(&inst, "id")?.to_owned();
        let out = ctl.cli(&[
            "cert",
            "apply",
            "--instance",
            &inst,
            "--domain",
            &domain,
            "--wait",
        ])?;
        ensure!(!out.status.success(), "{failpoint}: the apply succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            err.contains(&format!("failpoint {failpoint}")),
            "{failpoint}: {err}"
        );
        let list = ctl.cli_json(&["cert", "list"])?;
        ensure!(
            !list.to_string().contains(&domain),
            "{failpoint}: a certificate was stored: {list}"
        );
        let instance = ctl.cli_json(&["instance", "show", &inst])?;
        ensure!(instance["state"] == "unused", "{failpoint}: {instance}");
        let app = ctl.cli_json(&[
            "cert",
            "apply",
            "--instance",
            &inst,
            "--domain",
            &domain,
            "--wait",
        ])?;
        ensure!(app["state"] == "issued", "{failpoint}: {app}");
        one_certificate_for(&ctl, &domain)?;
    }
    Ok(())
}

#[test]
fn a_store_commit_that_crashes_or_fails_its_fsync_loses_nothing_committed() -> Result<()> {
    let mut ctl = pinned_controller()?;
    let kept = ctl.issue("ca", &[], &["kept.example.test"])?;
    let kept = str_field(&kept, "id")?.to_owned();
    // Crash with the commit in the log but not yet fsynced.
    arm(&mut ctl, "store.commit")?;
    let mut call = cli_detached(&ctl, &["instance", "create", "--issuer", "ca"])?;
    crashed_then_restarted(&mut ctl, "store.commit")?;
    let _ = call.kill();
    let _ = call.wait();
    one_certificate_for(&ctl, "kept.example.test")?;

    // EIO from the fsync: the call fails naming the log file, the store
    // refuses further writes until restarted, and nothing is lost.
    ctl.set_env(FAILPOINTS, Some("store.commit=return(eio)"));
    ctl.restart()?;
    let err = ctl.cli_err(&["instance", "create", "--issuer", "ca"])?;
    let wal = format!("{}-wal", ctl.db_path().display());
    ensure!(
        err.contains(&wal) || ctl.log()?.contains(&wal),
        "the fsync error does not name {wal}: {err}"
    );
    ensure!(
        ctl.log()?.contains("Input/output error"),
        "the log does not say EIO: {}",
        ctl.log()?
    );
    ctl.set_env(FAILPOINTS, None);
    ctl.restart()?;
    assert_eq!(
        one_certificate_for(&ctl, "kept.example.test")?,
        kept,
        "the certificate committed before the fault"
    );
    // Retried once the fault is gone: it works.
    ctl.issue("ca", &[], &["retried.example.test"])?;
    one_certificate_for(&ctl, "retried.example.test")?;
    nothing_in_flight(&ctl)?;
    Ok(())
}

/// One nginx, one enrolled agent for it (role=web), started.
fn nginx_fleet(ctl: &Controller) -> Result<(Nginx, Agent)> {
    let nginx = Nginx::start(NAME)?;
    let (tok, pin) = token(ctl, &["--labels", "role=web"])?;
    let mut agent = Agent::new(ctl, &Agent::nginx_target(&nginx, NAME, "")?)?;
    agent.enroll(ctl, &tok, &pin)?;
    agent.start()?;
    wait_connected(ctl, agent.id.as_deref().unwrap_or_default(), true, WAIT)?;
    Ok((nginx, agent))
}

fn issue(ctl: &Controller) -> Result<(String, String)> {
    let cert = ctl.issue("ca", &[], &[NAME])?;
    Ok((
        str_field(&cert, "id")?.to_owned(),
        str_field(&cert, "fingerprint")?.to_owned(),
    ))
}

fn deploy(ctl: &Controller, cert: &str) -> Result<()> {
    ctl.cli_json(&[
        "deploy", cert, "--to", "role=web", "--target", "nginx", "--canary", "0", "--wave", "100%",
    ])?;
    Ok(())
}

/// The deployment of `cert` ends installed, nginx serves it, and the key on
/// disk matches it.
fn converged(ctl: &Controller, nginx: &Nginx, cert: &str, fingerprint: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let list = wait_deployments(ctl, cert, WAIT)?;
        if list
            .iter()
            .all(|d| d["status"] == "installed" && d["installed"] == cert)
        {
            break;
        }
        ensure!(Instant::now() < deadline, "not converged: {list:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_served(nginx.port, NAME, fingerprint, WAIT)?;
    ensure_key_matches_cert(
        &nginx.tls_dir.join("privkey.pem"),
        &nginx.tls_dir.join("fullchain.pem"),
    )?;
    // The rollout finished (no application or rollout stuck in flight).
    wait_for(WAIT, "every rollout to finish", || {
        let list = ctl.cli_json(&["rollout", "list"])?;
        let done = list
            .as_array()
            .into_iter()
            .flatten()
            .all(|r| r["state"] != "running");
        Ok(done.then_some(()))
    })?;
    Ok(())
}

#[test]
fn a_controller_killed_at_each_rollout_step_converges_after_restart() -> Result<()> {
    let mut ctl = pinned_controller()?;
    let (nginx, _agent) = nginx_fleet(&ctl)?;
    for failpoint in [
        "rollout.before_send",
        "rollout.after_send",
        "report.before_record",
        "report.after_record",
    ] {
        let (cert, fp) = issue(&ctl)?;
        let before = served_fingerprint(nginx.port, NAME)?;
        arm(&mut ctl, failpoint)?;
        // The armed controller dies during the deploy or right after it.
        let mut call = cli_detached(
            &ctl,
            &[
                "deploy", &cert, "--to", "role=web", "--target", "nginx", "--canary", "0",
                "--wave", "100%",
            ],
        )?;
        crashed_then_restarted(&mut ctl, failpoint)?;
        let _ = call.kill();
        let _ = call.wait();
        let served = served_fingerprint(nginx.port, NAME)?;
        ensure!(
            served == before || served == fp,
            "{failpoint}: nginx serves {served}, neither the old {before} nor the new {fp}"
        );
        // An agent reports its settled targets when it connects, so the
        // report failpoints may have fired before the deploy was recorded:
        // then the operator deploys again.
        let rollouts = ctl.cli_json(&["rollout", "list"])?;
        if !rollouts
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["certificate"] == cert.as_str())
        {
            deploy(&ctl, &cert)?;
        }
        converged(&ctl, &nginx, &cert, &fp)?;
    }
    Ok(())
}

#[test]
fn an_agent_killed_at_each_install_step_recovers_and_converges() -> Result<()> {
    let ctl = pinned_controller()?;
    let (nginx, mut agent) = nginx_fleet(&ctl)?;
    for failpoint in [
        "install.staged",
        "install.swapped",
        "install.before_reload",
        "install.before_verify",
        "install.before_commit",
    ] {
        agent.kill();
        agent.set_env(FAILPOINTS, &format!("{failpoint}=abort"));
        agent.start()?;
        let (cert, fp) = issue(&ctl)?;
        let before = served_fingerprint(nginx.port, NAME)?;
        deploy(&ctl, &cert)?;
        let status = agent.wait_exit(WAIT)?;
        ensure_aborted(status, failpoint)?;
        ensure!(
            agent
                .log_text()
                .contains(&format!("failpoint {failpoint}: aborting")),
            "{}",
            agent.log_text()
        );
        // Killed mid-install: nginx serves the old or the new certificate,
        // never a mix or an unknown one.
        let served = served_fingerprint(nginx.port, NAME)?;
        ensure!(
            served == before || served == fp,
            "{failpoint}: nginx serves {served}, neither the old {before} nor the new {fp}"
        );
        agent.clear_env();
        agent.start()?;
        converged(&ctl, &nginx, &cert, &fp)?;
    }
    Ok(())
}

#[test]
fn an_agent_install_step_that_fails_rolls_back_and_a_retry_installs() -> Result<()> {
    let ctl = pinned_controller()?;
    let (nginx, mut agent) = nginx_fleet(&ctl)?;
    let (first, first_fp) = issue(&ctl)?;
    deploy(&ctl, &first)?;
    converged(&ctl, &nginx, &first, &first_fp)?;
    for (failpoint, expect) in [
        ("install.write=return(eio)", "Input/output error"),
        ("install.staged=return(enospc)", "No space left on device"),
        ("install.swapped=return", "failpoint install.swapped"),
        (
            "install.before_reload=return",
            "failpoint install.before_reload",
        ),
        (
            "install.before_verify=return",
            "failpoint install.before_verify",
        ),
    ] {
        agent.kill();
        agent.set_env(FAILPOINTS, failpoint);
        agent.start()?;
        wait_connected(&ctl, agent.id.as_deref().unwrap_or_default(), true, WAIT)?;
        let (cert, fp) = issue(&ctl)?;
        deploy(&ctl, &cert)?;
        let list = wait_deployments(&ctl, &cert, WAIT)?;
        let d = &list[0];
        ensure!(
            d["status"] == "failed" || d["status"] == "rolled_back",
            "{failpoint}: {d}"
        );
        let error = d["last_error"].as_str().unwrap_or_default();
        ensure!(error.contains(expect), "{failpoint}: {error}");
        if failpoint.starts_with("install.write") || failpoint.starts_with("install.staged") {
            ensure!(
                error.contains(&nginx.tls_dir.display().to_string()),
                "{failpoint}: the error does not name the path: {error}"
            );
        }
        // The previous certificate is the one served (a reload after a
        // rollback is asynchronous: nginx's old workers may answer a
        // connection or two first).
        wait_served(nginx.port, NAME, &first_fp, Duration::from_secs(5)).map_err(|e| {
            anyhow::anyhow!("{failpoint}: nginx no longer serves the previous certificate: {e}")
        })?;
        // Fault cleared: the same certificate deploys.
        agent.kill();
        agent.clear_env();
        agent.start()?;
        deploy(&ctl, &cert)?;
        converged(&ctl, &nginx, &cert, &fp)?;
        // Back to the first one for the next round's "previous" check.
        deploy(&ctl, &first)?;
        converged(&ctl, &nginx, &first, &first_fp)?;
    }
    Ok(())
}

#[test]
fn a_controller_killed_at_each_acme_step_resumes_its_order() -> Result<()> {
    let bind = Bind::start("acme.test.")?;
    let pebble = Pebble::start(PebbleOptions::new(bind.addr))?;
    let mut ctl = pinned_controller()?;
    let secret = tempfile::NamedTempFile::new()?;
    std::fs::write(secret.path(), &bind.tsig_secret_b64)?;
    let server = bind.addr.to_string();
    ctl.cli_json(&[
        "issuer",
        "add",
        "pebble",
        "--kind",
        "acme",
        "--directory",
        &pebble.directory_url(),
        "--ca-bundle",
        utf8(pebble.ca_bundle_path())?,
        "--contact",
        "mailto:ops@acme.test",
        "--challenge",
        "dns-01",
        "--dns-server",
        &server,
        "--dns-zone",
        &bind.zone,
        "--tsig-name",
        &bind.tsig_name,
        "--tsig-algorithm",
        &bind.tsig_algorithm,
        "--tsig-secret-file",
        utf8(secret.path())?,
    ])?;
    for (n, failpoint) in [
        "acme.order_created",
        "acme.challenge_published",
        "acme.finalize",
        "acme.download",
        "issue.before_commit",
    ]
    .into_iter()
    .enumerate()
    {
        arm(&mut ctl, failpoint)?;
        let domain = format!("step{n}.acme.test");
        let app = apply(&ctl, "pebble", &domain)?;
        crashed_then_restarted(&mut ctl, failpoint)?;
        wait_issued(&ctl, &app, Duration::from_secs(120))?;
        let id = one_certificate_for(&ctl, &domain)?;
        // The order created before the crash was resumed, not a second one
        // placed: the CA issued no certificate the store does not know.
        let resumed = ctl.log()?.matches("resuming ACME order").count();
        ensure!(
            resumed > n,
            "{failpoint}: the order was not resumed ({resumed} resumptions)"
        );
        let cert = ctl.cli_json(&["cert", "show", &id])?;
        let status = pebble.cert_status_by_serial(str_field(&cert, "serial")?)?;
        ensure!(status["Status"] == "Valid", "{failpoint}: {status}");
        nothing_in_flight(&ctl)?;
    }
    Ok(())
}

#[test]
fn a_malformed_failpoint_setting_is_refused_at_start() -> Result<()> {
    // The test binaries have failpoints: a malformed setting is refused at
    // start with the variable named.
    let mut ctl = Controller::start()?;
    ctl.stop()?;
    ctl.set_env(FAILPOINTS, Some("no-equals-sign"));
    match ctl.start_again() {
        Ok(()) => bail!("started with a malformed {FAILPOINTS}"),
        Err(e) => {
            let log = ctl.log()?;
            ensure!(
                log.contains(FAILPOINTS) && log.contains("NAME=ACTION"),
                "{e:#}\n{log}"
            );
        }
    }
    Ok(())
}
