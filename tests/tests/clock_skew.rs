//! A clock that is off shows up at the TLS handshake as a certificate that
//! is not valid yet (or any more); the CLI says "clock skew" and by how much,
//! not that the credential belongs to another controller. The CLI's clock
//! and the agent's are moved with the test seam their rustls time providers
//! read (`CERTFLEET_CLOCK_OFFSET_FILE`), as a wrong system clock would be.

use std::fs;
use std::time::Duration;

use anyhow::Result;
use certfleet_tests::fleet::{token, write_clock_offset, Agent, CLOCK_OFFSET_ENV};
use certfleet_tests::{
    expect_cli_error, run_with_timeout, utf8, wait_for, Controller, CLI_TIMEOUT,
};

/// Runs `certfleet issuer list` against `ctl` with the CLI's clock moved by
/// `offset` seconds; returns its error message.
fn cli_with_clock_offset(ctl: &Controller, offset: i64) -> Result<String> {
    let file = ctl.scratch("clock")?.join("offset");
    fs::write(&file, offset.to_string())?;
    let mut cmd = ctl.cli_command();
    cmd.env("CERTFLEET_CLOCK_OFFSET_FILE", &file)
        .arg("--controller")
        .arg(ctl.listen().to_string())
        .arg("--credential")
        .arg(ctl.credential_path())
        .args(["issuer", "list"]);
    let out = run_with_timeout(&mut cmd, CLI_TIMEOUT)?;
    expect_cli_error(
        &out,
        &format!("issuer list with the clock moved {offset} s"),
    )
}

#[test]
fn cli_clock_behind_the_controller_is_named_clock_skew_with_the_offset() -> Result<()> {
    let ctl = Controller::start()?;
    ctl.cli_ok(&["issuer", "list"])?;
    // 3 h 12 min behind; the controller's certificate starts 5 min before
    // it was made, so by the CLI's clock it starts 3 h 7 min from now (less
    // the seconds this test has run).
    let err = cli_with_clock_offset(&ctl, -(3 * 3600 + 12 * 60))?;
    assert!(err.contains("clock skew"), "{err}");
    assert!(
        err.contains("this host's clock is 3 h 7 min behind the controller's certificate validity")
            || err.contains(
                "this host's clock is 3 h 6 min behind the controller's certificate validity"
            ),
        "{err}"
    );
    assert!(!err.contains("does not belong"), "{err}");
    Ok(())
}

#[test]
fn cli_clock_past_the_controller_certificate_is_named_too() -> Result<()> {
    let ctl = Controller::start()?;
    // The controller's certificate lives 90 days; 100 days ahead is 10 days
    // past its end.
    let err = cli_with_clock_offset(&ctl, 100 * 86_400)?;
    assert!(err.contains("clock skew or expiry"), "{err}");
    assert!(
        err.contains("this host's clock is 9 d 23 h past the end")
            || err.contains("this host's clock is 10 d 0 h past the end"),
        "{err}"
    );
    assert!(!err.contains("does not belong"), "{err}");
    Ok(())
}

#[test]
fn agent_clock_behind_the_controller_is_named_clock_skew_in_its_log() -> Result<()> {
    let ctl = Controller::start()?;
    let (tok, pin) = token(&ctl, &[])?;
    let mut agent = Agent::new(&ctl, "")?;
    agent.enroll(&ctl, &tok, &pin)?;
    // The agent's host runs 3 h 12 min slow; it reads the controller's
    // certificate (made 5 min before the controller started) as starting
    // 3 h 7 min in its future.
    let offset = agent.dir.join("clock-offset");
    write_clock_offset(&offset, -(3 * 3600 + 12 * 60))?;
    agent.set_env(CLOCK_OFFSET_ENV, utf8(&offset)?);
    agent.start()?;
    let log = wait_for(Duration::from_secs(30), "a clock skew message", || {
        let log = agent.log_text();
        Ok(log.contains("clock skew").then_some(log))
    })?;
    assert!(
        log.contains("3 h 7 min behind the controller's certificate validity")
            || log.contains("3 h 6 min behind the controller's certificate validity"),
        "{log}"
    );
    assert!(!log.contains("does not belong"), "{log}");
    Ok(())
}
