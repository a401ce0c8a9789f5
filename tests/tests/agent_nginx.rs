//! End-to-end: real controller, real agents, real nginx. Enrollment, deploy,
//! the served certificate checked with `openssl s_client`, rollbacks,
//! refusals, crash recovery and controller outages.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use anyhow::{ensure, Result};
use certfleet_tests::fleet::{
    served_fingerprint, token, wait_connected, wait_deployments, wait_served, Agent, Nginx,
};
use certfleet_tests::{ensure_key_matches_cert, file_mode, str_field, wait_for, Controller};

const NAME: &str = "www.example.test";
const WAIT: Duration = Duration::from_secs(30);

fn controller_with_issuer() -> Result<Controller> {
    let ctl = Controller::start()?;
    ctl.cli_json(&["issuer", "add", "ca", "--kind", "builtin"])?;
    Ok(ctl)
}

fn issue(ctl: &Controller) -> Result<(String, String)> {
    let cert = ctl.issue("ca", &[], &[NAME])?;
    Ok((
        str_field(&cert, "id")?.to_owned(),
        str_field(&cert, "fingerprint")?.to_owned(),
    ))
}

fn nginx_agent(
    ctl: &Controller,
    nginx: &Nginx,
    extra: &str,
    token: &str,
    pin: &str,
) -> Result<Agent> {
    let mut agent = Agent::new(ctl, &Agent::nginx_target(nginx, NAME, extra)?)?;
    agent.enroll(ctl, token, pin)?;
    Ok(agent)
}

/// Deploy to every match at once and wait for the rollout to complete.
fn deploy_all(ctl: &Controller, cert: &str, to: &str, target: &str) -> Result<serde_json::Value> {
    let r = ctl.cli_json(&[
        "deploy", cert, "--to", to, "--target", target, "--canary", "0", "--wave", "100%", "--wait",
    ])?;
    ensure!(r["state"] == "completed", "{r}");
    Ok(r)
}

fn agent_id(agent: &Agent) -> &str {
    agent.id.as_deref().unwrap_or_default()
}

#[test]
fn two_agents_install_into_two_nginx_and_a_broken_one_rolls_back() -> Result<()> {
    let ctl = controller_with_issuer()?;
    let n1 = Nginx::start(NAME)?;
    let n2 = Nginx::start(NAME)?;
    let before = served_fingerprint(n2.port, NAME)?;
    let (tok, pin) = token(&ctl, &["--labels", "role=web", "--uses", "2"])?;
    let owner = "group = \"nogroup\"\nmode = \"0640\"\n";
    let mut a1 = nginx_agent(&ctl, &n1, owner, &tok, &pin)?;
    let mut a2 = nginx_agent(&ctl, &n2, owner, &tok, &pin)?;
    a1.start()?;
    a2.start()?;
    wait_connected(&ctl, agent_id(&a1), true, WAIT)?;
    wait_connected(&ctl, agent_id(&a2), true, WAIT)?;

    let (cert1, fp1) = issue(&ctl)?;
    // Both at once: one wave, no canary (waves have tests of their own).
    let rollout = deploy_all(&ctl, &cert1, "role=web", "nginx")?;
    let targets = rollout["targets"].as_array().cloned().unwrap_or_default();
    ensure!(targets.len() == 2, "expected two targets: {targets:?}");
    ensure!(
        targets.iter().all(|t| t["state"] == "installed"),
        "{targets:?}"
    );
    assert_eq!(served_fingerprint(n1.port, NAME)?, fp1);
    assert_eq!(served_fingerprint(n2.port, NAME)?, fp1);
    assert_ne!(before, fp1);

    let list = ctl.cli_json(&["deployment", "list"])?;
    let list = list.as_array().cloned().unwrap_or_default();
    ensure!(
        list.len() == 2
            && list
                .iter()
                .all(|d| d["status"] == "installed" && d["installed"] == cert1.as_str()),
        "{list:?}"
    );

    // Files have the configured owner and mode; the identity key is 0600.
    for (agent, nginx) in [(&a1, &n1), (&a2, &n2)] {
        let key = nginx.tls_dir.join("privkey.pem");
        assert_eq!(file_mode(&key)?, 0o640);
        assert_eq!(std::fs::metadata(&key)?.gid(), 65534, "group nogroup");
        assert_eq!(file_mode(&nginx.tls_dir.join("fullchain.pem"))?, 0o644);
        assert_eq!(file_mode(&agent.state_dir.join("identity.key"))?, 0o600);
        ensure_key_matches_cert(&key, &nginx.tls_dir.join("fullchain.pem"))?;
    }

    // A second deploy where nginx -t fails on one host ends rolled_back
    // there, and that nginx still serves the first certificate.
    n2.break_config()?;
    let (cert2, fp2) = issue(&ctl)?;
    let out = ctl.cli(&[
        "deploy", &cert2, "--to", "role=web", "--target", "nginx", "--canary", "0", "--wave",
        "100%", "--wait",
    ])?;
    ensure!(
        !out.status.success(),
        "deploy with a broken nginx must report failure"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("rolled_back"), "{stderr}");
    let list = wait_deployments(&ctl, &cert2, WAIT)?;
    let by_agent = |id: &str| {
        list.iter()
            .find(|d| d["agent"] == id)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(by_agent(agent_id(&a1))["status"], "installed");
    let failed = by_agent(agent_id(&a2));
    assert_eq!(failed["status"], "rolled_back");
    assert_eq!(failed["installed"], cert1.as_str());
    let err = failed["last_error"].as_str().unwrap_or_default();
    ensure!(
        err.contains("config test") && err.contains("this_is_not_a_directive"),
        "{err}"
    );
    assert_eq!(served_fingerprint(n1.port, NAME)?, fp2);
    assert_eq!(served_fingerprint(n2.port, NAME)?, fp1);
    ensure_key_matches_cert(
        &n2.tls_dir.join("privkey.pem"),
        &n2.tls_dir.join("fullchain.pem"),
    )?;

    let status = a2.status()?;
    assert_eq!(status["targets"]["nginx"]["last_result"], "rolled_back");
    assert_eq!(status["targets"]["nginx"]["certificate"], cert1.as_str());
    Ok(())
}

#[test]
fn reload_that_keeps_the_old_certificate_is_rolled_back() -> Result<()> {
    let ctl = controller_with_issuer()?;
    let nginx = Nginx::start(NAME)?;
    let original = served_fingerprint(nginx.port, NAME)?;
    let (tok, pin) = token(&ctl, &["--labels", "role=web"])?;
    // A "reload" that does nothing: nginx keeps serving the old certificate.
    let mut agent = nginx_agent(&ctl, &nginx, "reload_command = [\"true\"]\n", &tok, &pin)?;
    agent.start()?;
    wait_connected(&ctl, agent_id(&agent), true, WAIT)?;
    let (cert, _) = issue(&ctl)?;
    let out = ctl.cli(&[
        "deploy", &cert, "--to", "role=web", "--target", "nginx", "--wait",
    ])?;
    ensure!(!out.status.success());
    let list = wait_deployments(&ctl, &cert, WAIT)?;
    assert_eq!(list[0]["status"], "rolled_back");
    let err = list[0]["last_error"].as_str().unwrap_or_default();
    ensure!(err.contains("did not serve certificate"), "{err}");
    assert_eq!(served_fingerprint(nginx.port, NAME)?, original);
    // The old files are back in place.
    assert_eq!(
        certfleet_tests::cert_fingerprint(&nginx.tls_dir.join("fullchain.pem"))?,
        original
    );
    Ok(())
}

fn files_agent(ctl: &Controller, labels: &str) -> Result<Agent> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.keep();
    Agent::new(
        ctl,
        &format!(
            "allowed_dirs = [\"{d}\"]\n[labels]\n{labels}\n[[target]]\nname = \"files\"\nkind = \"files\"\n\
             fullchain = \"{d}/fullchain.pem\"\nkey = \"{d}/privkey.pem\"\n",
            d = dir.display()
        ),
    )
}

fn enroll_err(agent: &Agent, ctl: &Controller, tok: &str, pin: &str) -> Result<String> {
    let out = agent.enroll_output(ctl, tok, pin)?;
    ensure!(!out.status.success(), "enrollment should have been refused");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        stderr.contains("error:") && !stderr.contains("panicked"),
        "{stderr}"
    );
    ensure!(
        !agent.state_dir.join("identity.pem").exists(),
        "no identity after a refusal"
    );
    Ok(stderr)
}

#[test]
fn join_tokens_are_refused_when_expired_reused_unknown_or_pinned_wrong() -> Result<()> {
    let ctl = controller_with_issuer()?;
    let refused = "join token is invalid, expired or used up";

    // Wrong CA pin: aborts before the token is sent, so the token still works.
    let (tok, pin) = token(&ctl, &["--uses", "1"])?;
    let a = files_agent(&ctl, "role = \"x\"")?;
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = enroll_err(&a, &ctl, &tok, &wrong)?;
    ensure!(err.contains("does not match --ca-pin"), "{err}");
    let mut a = a;
    a.enroll(&ctl, &tok, &pin)?;

    // Reused: the single use is gone.
    let b = files_agent(&ctl, "role = \"x\"")?;
    ensure!(enroll_err(&b, &ctl, &tok, &pin)?.contains(refused));

    // Expired.
    let (short, _) = token(&ctl, &["--ttl", "1s"])?;
    std::thread::sleep(Duration::from_millis(2100));
    ensure!(enroll_err(&b, &ctl, &short, &pin)?.contains(refused));

    // Unknown and malformed.
    let unknown = format!("cfjt1.0123456789abcdef.{}", "A".repeat(43));
    ensure!(enroll_err(&b, &ctl, &unknown, &pin)?.contains(refused));
    ensure!(enroll_err(&b, &ctl, "not-a-token", &pin)?.contains("malformed"));
    // Right id, wrong secret.
    let (real, _) = token(&ctl, &["--uses", "5"])?;
    let forged = format!(
        "{}.{}",
        real.rsplit_once('.').map(|p| p.0).unwrap_or_default(),
        "B".repeat(43)
    );
    ensure!(enroll_err(&b, &ctl, &forged, &pin)?.contains(refused));

    // Concurrent use of a one-use token: exactly one enrollment wins.
    let (once, _) = token(&ctl, &["--uses", "1"])?;
    let agents: Vec<Agent> = (0..4)
        .map(|_| files_agent(&ctl, "role = \"x\""))
        .collect::<Result<_>>()?;
    let wins = std::thread::scope(|s| {
        let handles: Vec<_> = agents
            .iter()
            .map(|ag| s.spawn(|| ag.enroll_output(&ctl, &once, &pin)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .ok()
                    .and_then(|r| r.ok())
                    .is_some_and(|o| o.status.success())
            })
            .filter(|ok| *ok)
            .count()
    });
    assert_eq!(
        wins, 1,
        "exactly one concurrent enrollment may use a one-use token"
    );

    // Refusals before the token matched are counted per source and minute
    // (one row with `count=N`, flushed within 5 s); a lost race on the
    // last use has a row of its own.
    let refusals = wait_for(
        Duration::from_secs(15),
        "refused enrollments audited",
        || {
            let audit = ctl.cli_json(&["audit", "list", "--limit", "1000"])?;
            let n: u64 = audit
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| {
                    e["action"] == "agent.enroll"
                        && e["outcome"]
                            .as_str()
                            .is_some_and(|o| o.starts_with("refused"))
                })
                .map(|e| {
                    e["detail"]
                        .as_str()
                        .and_then(|d| d.split_whitespace().find_map(|w| w.strip_prefix("count=")))
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(1)
                })
                .sum();
            Ok((n >= 5).then_some(n))
        },
    )?;
    ensure!(refusals >= 5, "refused enrollments are audited: {refusals}");
    Ok(())
}

#[test]
fn removed_agent_and_foreign_identity_are_refused() -> Result<()> {
    let ctl = controller_with_issuer()?;
    let (tok, pin) = token(&ctl, &["--labels", "role=web"])?;
    let mut agent = files_agent(&ctl, "")?;
    agent.enroll(&ctl, &tok, &pin)?;
    agent.start()?;
    let id = agent_id(&agent).to_owned();
    wait_connected(&ctl, &id, true, WAIT)?;

    // Another controller does not accept this agent's identity.
    let other = controller_with_issuer()?;
    let mut stray = files_agent(&other, "")?;
    std::fs::create_dir_all(&stray.state_dir)?;
    for f in ["identity.key", "identity.pem", "ca.pem", "agent.json"] {
        std::fs::copy(agent.state_dir.join(f), stray.state_dir.join(f))?;
    }
    stray.start()?;
    std::thread::sleep(Duration::from_secs(2));
    let log = stray.log_text();
    ensure!(
        log.contains("session ended") && (log.contains("TLS") || log.contains("refused")),
        "{log}"
    );
    let listed = other.cli_json(&["agent", "list"])?;
    ensure!(listed.as_array().is_some_and(|a| a.is_empty()), "{listed}");

    // Removal takes effect on the live connection at once.
    ctl.cli_json(&["agent", "remove", &id])?;
    let list = ctl.cli_json(&["agent", "list"])?;
    ensure!(list.as_array().is_some_and(|a| a.is_empty()), "{list}");
    std::thread::sleep(Duration::from_secs(2));
    let log = agent.log_text();
    ensure!(
        log.contains("removed"),
        "agent log should say it was removed: {log}"
    );
    let err = ctl.cli_err(&["agent", "show", &id])?;
    ensure!(err.contains("not found"), "{err}");
    let (cert, _) = issue(&ctl)?;
    let err = ctl.cli_err(&[
        "deploy",
        &cert,
        "--to",
        &format!("agent={id}"),
        "--target",
        "files",
    ])?;
    // A removed agent named in a selector is an unknown agent, not an
    // empty selection.
    ensure!(err.contains(&format!("agent \"{id}\" not found")), "{err}");
    Ok(())
}

#[test]
fn agent_killed_between_key_and_certificate_repairs_the_target() -> Result<()> {
    let ctl = controller_with_issuer()?;
    let nginx = Nginx::start(NAME)?;
    let original = served_fingerprint(nginx.port, NAME)?;
    let (tok, pin) = token(&ctl, &["--labels", "role=web"])?;
    let mut agent = nginx_agent(&ctl, &nginx, "", &tok, &pin)?;
    agent.set_env("CERTFLEET_AGENT_FAILPOINT", "crash-after-first-swap");
    agent.start()?;
    wait_connected(&ctl, agent_id(&agent), true, WAIT)?;
    let (cert, fp) = issue(&ctl)?;
    ctl.cli_json(&["deploy", &cert, "--to", "role=web", "--target", "nginx"])?;
    let status = agent.wait_exit(WAIT)?;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "the failpoint kills the agent with SIGKILL"
    );
    // Mid-swap: the new key is live, the certificate is still the old one.
    ensure!(
        ensure_key_matches_cert(
            &nginx.tls_dir.join("privkey.pem"),
            &nginx.tls_dir.join("fullchain.pem")
        )
        .is_err(),
        "the crash should leave a mixed pair for recovery to repair"
    );
    assert_eq!(served_fingerprint(nginx.port, NAME)?, original);

    agent.clear_env();
    agent.start()?;
    let list = wait_deployments(&ctl, &cert, WAIT)?;
    assert_eq!(list[0]["status"], "installed", "{list:?}");
    ensure_key_matches_cert(
        &nginx.tls_dir.join("privkey.pem"),
        &nginx.tls_dir.join("fullchain.pem"),
    )?;
    wait_served(nginx.port, NAME, &fp, WAIT)?;
    ensure!(agent
        .log_text()
        .contains("recovered an interrupted install"));
    Ok(())
}

#[test]
fn agents_wait_for_a_controller_that_is_down_and_converge_after_restarts() -> Result<()> {
    let mut ctl = controller_with_issuer()?;
    // Pin the controller's port so agents find it again after restarts.
    let port = ctl.listen().port();
    ctl.restart_with(&["--listen", &format!("127.0.0.1:{port}")])?;
    let nginx = Nginx::start(NAME)?;
    let original = served_fingerprint(nginx.port, NAME)?;
    let (tok, pin) = token(&ctl, &["--labels", "role=web", "--uses", "2"])?;
    let mut web = nginx_agent(&ctl, &nginx, "", &tok, &pin)?;
    let mut other = files_agent(&ctl, "")?;
    other.enroll(&ctl, &tok, &pin)?;

    // Controller down while the agents start: they wait and retry, and the
    // server they manage is untouched.
    ctl.stop()?;
    web.start()?;
    other.start()?;
    let deadline = std::time::Instant::now() + WAIT;
    while !web.log_text().contains("reconnecting") {
        ensure!(
            std::time::Instant::now() < deadline,
            "agent never retried: {}",
            web.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(served_fingerprint(nginx.port, NAME)?, original);
    ctl.restart()?;
    wait_connected(&ctl, agent_id(&web), true, Duration::from_secs(90))?;
    wait_connected(&ctl, agent_id(&other), true, Duration::from_secs(90))?;
    let (cert1, fp1) = issue(&ctl)?;
    deploy_all(&ctl, &cert1, "role=web", "nginx")?;
    deploy_all(
        &ctl,
        &cert1,
        &format!("agent={}", agent_id(&other)),
        "files",
    )?;
    assert_eq!(served_fingerprint(nginx.port, NAME)?, fp1);

    // Controller restarted while the agents are connected: both reconnect
    // and converge on the next deployment.
    ctl.restart()?;
    wait_connected(&ctl, agent_id(&web), true, Duration::from_secs(90))?;
    wait_connected(&ctl, agent_id(&other), true, Duration::from_secs(90))?;
    let (cert2, fp2) = issue(&ctl)?;
    deploy_all(&ctl, &cert2, "role=web", "nginx")?;
    deploy_all(
        &ctl,
        &cert2,
        &format!("agent={}", agent_id(&other)),
        "files",
    )?;
    assert_eq!(served_fingerprint(nginx.port, NAME)?, fp2);
    let list = ctl.cli_json(&["deployment", "list"])?;
    ensure!(
        list.as_array()
            .is_some_and(|l| l.len() == 2 && l.iter().all(|d| d["installed"] == cert2.as_str())),
        "{list}"
    );
    Ok(())
}

#[test]
fn agent_renews_its_identity_after_two_thirds_of_its_lifetime() -> Result<()> {
    let ctl = controller_with_issuer()?;
    let (tok, pin) = token(&ctl, &[])?;
    let mut agent = files_agent(&ctl, "")?;
    agent.enroll(&ctl, &tok, &pin)?;
    let before = std::fs::read(agent.state_dir.join("identity.pem"))?;
    let key_before = std::fs::read(agent.state_dir.join("identity.key"))?;
    // The agent's clock says 21 of its identity's 30 days have passed.
    let offset = agent.dir.join("clock-offset");
    std::fs::write(&offset, (21 * 86_400).to_string())?;
    agent.set_env(
        "CERTFLEET_CLOCK_OFFSET_FILE",
        certfleet_tests::utf8(&offset)?,
    );
    agent.start()?;
    let id = agent_id(&agent).to_owned();
    wait_connected(&ctl, &id, true, WAIT)?;
    let deadline = std::time::Instant::now() + WAIT;
    while std::fs::read(agent.state_dir.join("identity.pem"))? == before {
        ensure!(
            std::time::Instant::now() < deadline,
            "identity not renewed: {}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_ne!(
        std::fs::read(agent.state_dir.join("identity.key"))?,
        key_before,
        "a new key"
    );
    assert_eq!(file_mode(&agent.state_dir.join("identity.key"))?, 0o600);
    let audit = ctl.cli_json(&["audit", "list"])?;
    ensure!(
        audit
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["action"] == "agent.identity.renew" && e["target"] == id.as_str()),
        "{audit}"
    );
    // The renewed identity works: after a restart the agent connects with
    // it (a new "connected" line in its own log, not the old session).
    agent.kill();
    let connects = |log: &str| log.matches(" connected ").count();
    let before = connects(&agent.log_text());
    agent.clear_env();
    agent.start()?;
    let deadline = std::time::Instant::now() + WAIT;
    while connects(&agent.log_text()) <= before {
        ensure!(
            std::time::Instant::now() < deadline,
            "agent did not reconnect with its renewed identity: {}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(
        !agent.log_text().contains("refused"),
        "{}",
        agent.log_text()
    );
    Ok(())
}

#[test]
fn an_agent_credential_cannot_be_used_as_admin() -> Result<()> {
    let ctl = controller_with_issuer()?;
    let (tok, pin) = token(&ctl, &[])?;
    let mut agent = files_agent(&ctl, "")?;
    agent.enroll(&ctl, &tok, &pin)?;
    // An admin-shaped credential file made of the agent's identity.
    let cred = agent.dir.join("agent-as-admin.credential");
    let mut pem = std::fs::read_to_string(agent.state_dir.join("identity.pem"))?;
    pem.push_str(&std::fs::read_to_string(agent.state_dir.join("ca.pem"))?);
    pem.push_str(&std::fs::read_to_string(
        agent.state_dir.join("identity.key"),
    )?);
    std::fs::write(&cred, pem)?;
    let before = ctl.inventory()?;
    let out = certfleet_tests::run_with_timeout(
        ctl.cli_command().args([
            "--controller",
            &ctl.listen().to_string(),
            "--credential",
            certfleet_tests::utf8(&cred)?,
            "issuer",
            "add",
            "sneaky",
            "--kind",
            "builtin",
        ]),
        WAIT,
    )?;
    let stderr = certfleet_tests::expect_cli_error(&out, "agent credential as admin")?;
    ensure!(
        stderr.contains("agents may only make agent requests"),
        "{stderr}"
    );
    assert_eq!(ctl.inventory()?, before, "nothing changed");
    Ok(())
}

#[test]
fn settled_agents_get_no_keys_and_lost_files_are_reinstalled() -> Result<()> {
    let ctl = controller_with_issuer()?;
    let (tok, pin) = token(&ctl, &["--labels", "role=web"])?;
    let mut agent = files_agent(&ctl, "")?;
    agent.enroll(&ctl, &tok, &pin)?;
    agent.start()?;
    let id = agent_id(&agent).to_owned();
    wait_connected(&ctl, &id, true, WAIT)?;
    let (cert, fp) = issue(&ctl)?;
    deploy_all(&ctl, &cert, &format!("agent={id}"), "files")?;
    let releases = |ctl: &Controller| -> Result<usize> {
        Ok(ctl
            .cli_json(&["audit", "list", "--limit", "1000"])?
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["action"] == "key.release" && e["actor"] == format!("agent:{id}"))
            .count())
    };
    let after_deploy = releases(&ctl)?;
    ensure!(after_deploy >= 1, "the install released the key");

    // A restart of a settled agent fetches its desired state again: no key.
    let connects = |a: &Agent| a.log_text().matches(" connected ").count();
    let wait_reconnect = |a: &Agent, before: usize| -> Result<()> {
        let deadline = std::time::Instant::now() + WAIT;
        while connects(a) <= before {
            ensure!(
                std::time::Instant::now() < deadline,
                "no reconnect: {}",
                a.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Let the sync after connecting finish.
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    };
    agent.kill();
    let before = connects(&agent);
    agent.start()?;
    wait_reconnect(&agent, before)?;
    assert_eq!(
        releases(&ctl)?,
        after_deploy,
        "a settled resync released a key"
    );

    // The files vanish behind the agent's back: on its next sync it says so,
    // gets the bundle and installs again.
    agent.kill();
    let fullchain = std::fs::read_to_string(&agent.config)
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("fullchain = \"")
                    .map(|p| p.trim_end_matches('"').to_owned())
            })
        })
        .ok_or_else(|| anyhow::anyhow!("no fullchain in the agent config"))?;
    let key = fullchain.replace("fullchain.pem", "privkey.pem");
    std::fs::remove_file(&fullchain)?;
    std::fs::remove_file(&key)?;
    agent.start()?;
    let deadline = std::time::Instant::now() + WAIT;
    while !std::path::Path::new(&fullchain).exists() {
        ensure!(
            std::time::Instant::now() < deadline,
            "not reinstalled: {}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        certfleet_tests::cert_fingerprint(std::path::Path::new(&fullchain))?,
        fp
    );
    ensure_key_matches_cert(std::path::Path::new(&key), std::path::Path::new(&fullchain))?;
    ensure!(
        releases(&ctl)? > after_deploy,
        "the reinstall released the key again"
    );
    let list = wait_deployments(&ctl, &cert, WAIT)?;
    assert_eq!(list[0]["status"], "installed", "{list:?}");
    Ok(())
}
