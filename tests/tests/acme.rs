//! End-to-end: certfleet against a real ACME CA (Pebble, with its default
//! 5% bad-nonce rejection), HTTP-01 answered through a real agent's webroot,
//! DNS-01 through BIND, revocation reported by Pebble itself.

use std::fs;
use std::time::Duration;

use anyhow::{ensure, Result};
use certfleet_tests::acme::{Bind, ChallTestSrv, Pebble, PebbleOptions, WebrootNginx};
use certfleet_tests::fleet::{served_fingerprint, token, wait_connected, Agent, Nginx};
use certfleet_tests::{openssl_ok, str_field, utf8, Controller};

const NAME: &str = "www.acme.test";
const WAIT: Duration = Duration::from_secs(60);

fn add_acme_issuer(ctl: &Controller, pebble: &Pebble, extra: &[&str]) -> Result<serde_json::Value> {
    let dir = pebble.directory_url();
    let mut args = vec![
        "issuer",
        "add",
        "pebble",
        "--kind",
        "acme",
        "--directory",
        &dir,
        "--ca-bundle",
        utf8(pebble.ca_bundle_path())?,
        "--contact",
        "mailto:ops@acme.test",
    ];
    args.extend_from_slice(extra);
    ctl.cli_json(&args)
}

/// An ACME issuer for `pebble` that answers DNS-01 through `bind`, with the
/// TSIG secret `secret_b64` (BIND's own, or a wrong one).
fn add_dns_issuer(ctl: &Controller, pebble: &Pebble, bind: &Bind, secret_b64: &str) -> Result<()> {
    let secret = tempfile::NamedTempFile::new()?;
    fs::write(secret.path(), secret_b64)?;
    let server = bind.addr.to_string();
    add_acme_issuer(
        ctl,
        pebble,
        &[
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
        ],
    )?;
    Ok(())
}

fn apply(ctl: &Controller, domains: &[&str], extra: &[&str]) -> Result<std::process::Output> {
    let inst = ctl.cli_json(&[
        "instance",
        "create",
        "--issuer",
        "pebble",
        "--domains",
        "3",
        "--wildcard",
    ])?;
    let id = str_field(&inst, "id")?.to_owned();
    let mut args = vec![
        "--output",
        "json",
        "cert",
        "apply",
        "--instance",
        &id,
        "--wait",
    ];
    for d in domains {
        args.extend_from_slice(&["--domain", d]);
    }
    args.extend_from_slice(extra);
    ctl.cli(&args)
}

#[test]
fn http01_through_an_agent_then_deploy_and_revoke() -> Result<()> {
    let cts = ChallTestSrv::start()?;
    let pebble = Pebble::start(PebbleOptions::new(cts.dns_addr()))?;
    let webroot = WebrootNginx::start(pebble.http_port)?;
    let ctl = Controller::start()?;
    let issuer = add_acme_issuer(&ctl, &pebble, &[])?;
    ensure!(
        issuer["account_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://")),
        "{issuer}"
    );
    let shown = ctl.cli_json(&["issuer", "show", "pebble"])?;
    assert_eq!(shown["account_url"], issuer["account_url"]);
    // Before its first certificate, certfleet knows nothing of an ACME CA's
    // chain, and says where the root comes from.
    let err = ctl.cli_err(&["ca", "root", "--issuer", "pebble"])?;
    ensure!(
        err.contains("pebble") && err.contains(&pebble.directory_url()),
        "{err}"
    );

    // The agent serves NAME on a TLS nginx and answers HTTP-01 from the
    // webroot nginx Pebble validates against.
    let tls = Nginx::start(NAME)?;
    let (tok, pin) = token(&ctl, &["--labels", "role=web"])?;
    let mut agent = Agent::new(
        &ctl,
        &Agent::nginx_target(
            &tls,
            NAME,
            &format!("webroot = \"{}\"\n", webroot.webroot().display()),
        )?,
    )?;
    agent.enroll(&ctl, &tok, &pin)?;
    agent.start()?;
    wait_connected(&ctl, agent.id.as_deref().unwrap_or_default(), true, WAIT)?;

    let out = apply(&ctl, &[NAME], &["--challenge", "http-01"])?;
    ensure!(
        out.status.success(),
        "apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let cert = str_field(&app, "certificate")?.to_owned();
    // Challenge files are gone afterwards.
    let left: Vec<_> = fs::read_dir(webroot.challenge_dir())?.collect();
    ensure!(left.is_empty(), "challenge files left behind: {left:?}");

    // Chained to Pebble's root, fetched from its management interface.
    let dl = tempfile::tempdir()?;
    ctl.cli_ok(&["cert", "download", &cert, "--out", utf8(dl.path())?])?;
    let roots = dl.path().join("pebble-roots.pem");
    fs::write(&roots, pebble.roots_pem()?)?;
    let verified = openssl_ok(&[
        "verify",
        "-CAfile",
        utf8(&roots)?,
        "-untrusted",
        utf8(&dl.path().join("chain.pem"))?,
        utf8(&dl.path().join("cert.pem"))?,
    ])?;
    ensure!(verified.contains("OK"), "{verified}");

    // `ca root` gives the chain Pebble sent (no root: Pebble publishes it),
    // and it verifies the leaf against Pebble's root.
    let root = ctl.cli_json(&["ca", "root", "--issuer", "pebble"])?;
    assert_eq!(root["kind"], "acme", "{root}");
    assert_eq!(root["root_pem"], "", "{root}");
    ensure!(
        root["note"].as_str().is_some_and(|n| n.contains("root")),
        "{root}"
    );
    let chain = dl.path().join("ca-root-chain.pem");
    fs::write(&chain, str_field(&root, "chain_pem")?)?;
    let verified = openssl_ok(&[
        "verify",
        "-CAfile",
        utf8(&roots)?,
        "-untrusted",
        utf8(&chain)?,
        utf8(&dl.path().join("cert.pem"))?,
    ])?;
    ensure!(verified.contains("OK"), "{verified}");

    // Deploy: nginx serves it.
    let shown = ctl.cli_json(&["cert", "show", &cert])?;
    let fp = str_field(&shown, "fingerprint")?.to_owned();
    let r = ctl.cli_json(&[
        "deploy", &cert, "--to", "role=web", "--target", "nginx", "--wait",
    ])?;
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!(served_fingerprint(tls.port, NAME)?, fp);

    // A dry run of the revocation never reaches the CA.
    let serial = str_field(&shown, "serial")?.to_owned();
    ctl.cli_json(&[
        "cert",
        "revoke",
        &cert,
        "--reason",
        "keyCompromise",
        "--force",
        "--dry-run",
    ])?;
    let status = pebble.cert_status_by_serial(&serial)?;
    assert_eq!(status["Status"], "Valid", "{status}");

    // Revoke: Pebble reports it revoked.
    ctl.cli_json(&[
        "cert",
        "revoke",
        &cert,
        "--reason",
        "keyCompromise",
        "--force",
    ])?;
    let status = pebble.cert_status_by_serial(&serial)?;
    assert_eq!(status["Status"], "Revoked", "{status}");
    assert_eq!(status["Reason"], 1, "{status}");
    Ok(())
}

#[test]
fn dns01_through_bind_including_a_wildcard() -> Result<()> {
    let bind = Bind::start("acme.test.")?;
    let pebble = Pebble::start(PebbleOptions::new(bind.addr))?;
    let ctl = Controller::start()?;
    add_dns_issuer(&ctl, &pebble, &bind, &bind.tsig_secret_b64)?;
    let out = apply(&ctl, &["*.acme.test", "acme.test"], &[])?;
    ensure!(
        out.status.success(),
        "apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let cert = ctl.cli_json(&["cert", "show", str_field(&app, "certificate")?])?;
    let domains: Vec<&str> = cert["domains"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str())
        .collect();
    ensure!(
        domains.contains(&"*.acme.test") && domains.contains(&"acme.test"),
        "{cert}"
    );
    // The challenge records are cleaned up.
    ensure!(
        bind.txt("_acme-challenge.acme.test.")?.is_empty(),
        "TXT left behind"
    );
    Ok(())
}

#[test]
fn acme_failures_are_clear_and_leave_nothing_behind() -> Result<()> {
    let cts = ChallTestSrv::start()?;
    let pebble = Pebble::start(PebbleOptions::new(cts.dns_addr()))?;
    let webroot = WebrootNginx::start(pebble.http_port)?;
    let ctl = Controller::start()?;

    // A directory that isn't there, or isn't ACME.
    let err = ctl.cli_err(&[
        "issuer",
        "add",
        "nothing",
        "--kind",
        "acme",
        "--directory",
        "https://127.0.0.1:1/dir",
    ])?;
    ensure!(
        err.contains("connection refused") && err.contains("https://127.0.0.1:1/dir"),
        "{err}"
    );
    let issuers = ctl.cli_json(&["issuer", "list"])?;
    ensure!(
        issuers.as_array().is_some_and(|a| a.is_empty()),
        "{issuers}"
    );

    add_acme_issuer(&ctl, &pebble, &[])?;

    // No agent serves the name: the application fails saying so.
    let out = apply(&ctl, &[NAME], &["--challenge", "http-01"])?;
    ensure!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("no connected agent serves"), "{stderr}");

    // An agent whose webroot is not what Pebble reads: validation fails
    // with the CA's problem, and the challenge file is cleaned up.
    let wrong = tempfile::tempdir()?;
    let tls = Nginx::start(NAME)?;
    let (tok, pin) = token(&ctl, &["--labels", "role=web"])?;
    let mut agent = Agent::new(
        &ctl,
        &Agent::nginx_target(
            &tls,
            NAME,
            &format!("webroot = \"{}\"\n", wrong.path().display()),
        )?,
    )?;
    agent.enroll(&ctl, &tok, &pin)?;
    agent.start()?;
    wait_connected(&ctl, agent.id.as_deref().unwrap_or_default(), true, WAIT)?;
    let out = apply(&ctl, &[NAME], &["--challenge", "http-01"])?;
    ensure!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("validation failed") || stderr.contains("the CA refused"),
        "{stderr}"
    );
    let leftover = wrong.path().join(".well-known/acme-challenge");
    ensure!(
        !leftover.exists() || fs::read_dir(&leftover)?.next().is_none(),
        "challenge file left behind"
    );
    ensure!(fs::read_dir(webroot.challenge_dir())?.next().is_none());
    Ok(())
}

#[test]
fn wrong_eab_key_is_refused() -> Result<()> {
    let cts = ChallTestSrv::start()?;
    let mut opts = PebbleOptions::new(cts.dns_addr());
    opts.eab = Some((
        "kid-1".into(),
        "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W".into(),
    ));
    let pebble = Pebble::start(opts)?;
    let ctl = Controller::start()?;
    let dir = pebble.directory_url();
    let bundle = utf8(pebble.ca_bundle_path())?.to_owned();
    let err = ctl.cli_err(&[
        "issuer",
        "add",
        "p",
        "--kind",
        "acme",
        "--directory",
        &dir,
        "--ca-bundle",
        &bundle,
        "--eab-kid",
        "kid-1",
        "--eab-hmac-key",
        "d3JvbmctZWFiLWtleS13cm9uZy1lYWIta2V5LXdyb25n",
    ])?;
    ensure!(err.contains("refused the account"), "{err}");
    // The right key works.
    ctl.cli_json(&[
        "issuer",
        "add",
        "p",
        "--kind",
        "acme",
        "--directory",
        &dir,
        "--ca-bundle",
        &bundle,
        "--eab-kid",
        "kid-1",
        "--eab-hmac-key",
        "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W",
    ])?;
    Ok(())
}

#[test]
fn ca_refusals_and_a_bad_tsig_key_fail_clearly() -> Result<()> {
    // The CA refuses the names (Pebble's blocklist): the application fails
    // with the CA's problem document.
    let cts = ChallTestSrv::start()?;
    let mut opts = PebbleOptions::new(cts.dns_addr());
    opts.domain_blocklist = vec!["blocked.acme.test".into()];
    let pebble = Pebble::start(opts)?;
    let ctl = Controller::start()?;
    add_acme_issuer(&ctl, &pebble, &[])?;
    let out = apply(&ctl, &["blocked.acme.test"], &["--challenge", "http-01"])?;
    ensure!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("the CA refused") && stderr.contains("rejectedIdentifier"),
        "{stderr}"
    );
    let certs = ctl.cli_json(&["cert", "list"])?;
    ensure!(certs.as_array().is_some_and(|c| c.is_empty()), "{certs}");

    // A directory URL that is not an ACME directory.
    let not_acme = format!("{}/nothing-here", pebble.management_url());
    let err = ctl.cli_err(&[
        "issuer",
        "add",
        "bogus",
        "--kind",
        "acme",
        "--directory",
        &not_acme,
        "--ca-bundle",
        utf8(pebble.ca_bundle_path())?,
    ])?;
    ensure!(err.contains("ACME directory"), "{err}");

    // DNS-01 with a TSIG secret BIND does not know: refused, clearly.
    let bind = Bind::start("acme.test.")?;
    let dns_pebble = Pebble::start(PebbleOptions::new(bind.addr))?;
    let ctl2 = Controller::start()?;
    add_dns_issuer(
        &ctl2,
        &dns_pebble,
        &bind,
        "d3JvbmctdHNpZy1zZWNyZXQtd3JvbmctdHNpZy1zZWNyZXQ=",
    )?;
    let out = apply(&ctl2, &["www.acme.test"], &[])?;
    ensure!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.to_lowercase().contains("tsig")
            || stderr.contains("NOTAUTH")
            || stderr.contains("refused"),
        "{stderr}"
    );
    ensure!(bind.txt("_acme-challenge.www.acme.test.")?.is_empty());
    Ok(())
}

#[test]
fn controller_killed_mid_order_resumes_the_same_order() -> Result<()> {
    let bind = Bind::start("acme.test.")?;
    let mut opts = PebbleOptions::new(bind.addr);
    // Pebble waits (up to 15 s) before validating: time to kill the controller.
    opts.va_sleep = true;
    let pebble = Pebble::start(opts)?;
    let mut ctl = Controller::start()?;
    add_dns_issuer(&ctl, &pebble, &bind, &bind.tsig_secret_b64)?;
    let inst = ctl.cli_json(&["instance", "create", "--issuer", "pebble"])?;
    let inst = str_field(&inst, "id")?.to_owned();
    let app = ctl.cli_json(&[
        "cert",
        "apply",
        "--instance",
        &inst,
        "--domain",
        "resume.acme.test",
    ])?;
    let app_id = str_field(&app, "id")?.to_owned();
    // Wait until the order exists (the record is published), then kill.
    let deadline = std::time::Instant::now() + WAIT;
    while bind.txt("_acme-challenge.resume.acme.test.")?.is_empty() {
        ensure!(
            std::time::Instant::now() < deadline,
            "the order never started: {}",
            ctl.log()?
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ctl.stop()?;
    ctl.restart()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let a = ctl.cli_json(&["application", "show", &app_id])?;
        if a["state"] == "issued" {
            break;
        }
        ensure!(a["state"] != "failed", "resumed order failed: {a}");
        ensure!(
            std::time::Instant::now() < deadline,
            "not issued after restart: {a}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let log = ctl.log()?;
    ensure!(
        log.contains("resuming ACME order"),
        "the order was not resumed: {log}"
    );
    ensure!(log.matches("resuming ACME order").count() == 1, "{log}");
    Ok(())
}
