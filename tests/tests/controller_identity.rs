//! End-to-end: the controller's own identity over a long life (issue 13).
//!
//! - One controller per state directory: a second `serve` on it exits 1
//!   naming the PID of the one that holds it.

use anyhow::{ensure, Result};
use certfleet_tests::{certfleet_command, run_with_timeout, Controller, STARTUP_TIMEOUT};

#[test]
fn a_second_controller_on_a_state_directory_exits_naming_the_holder() -> Result<()> {
    let mut ctl = Controller::start()?;
    let holder = ctl.runtime().pid;
    let second = |ctl: &Controller| {
        run_with_timeout(
            certfleet_command().args([
                "serve",
                "--state-dir",
                &ctl.state_dir().to_string_lossy(),
                "--listen",
                "127.0.0.1:0",
                "--crl-listen",
                "127.0.0.1:0",
            ]),
            STARTUP_TIMEOUT,
        )
    };
    let out = second(&ctl)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "second serve should exit 1, got {}: {stderr}",
        out.status
    );
    ensure!(
        stderr.contains(&format!("PID {holder}")) && stderr.contains("--state-dir"),
        "the refusal should name the holder's PID {holder} and the way out: {stderr}"
    );
    // The first controller is untouched: still running, still answering, and
    // runtime.json still describes it.
    ctl.ensure_running()?;
    ctl.cli_ok(&["status"])?;
    let runtime = std::fs::read_to_string(ctl.state_dir().join("runtime.json"))?;
    ensure!(
        runtime.contains(&format!("\"pid\": {holder}")),
        "runtime.json was overwritten: {runtime}"
    );

    // A crashed controller (SIGKILL) leaves no stale lock: the next one
    // starts, and then it is the one a second serve names.
    ctl.stop()?;
    ctl.start_again()?;
    ctl.cli_ok(&["status"])?;
    let out = second(&ctl)?;
    ensure!(
        out.status.code() == Some(1)
            && String::from_utf8_lossy(&out.stderr)
                .contains(&format!("PID {}", ctl.runtime().pid)),
        "after a restart the refusal should name the new PID {}: {}",
        ctl.runtime().pid,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
