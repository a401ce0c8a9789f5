//! End-to-end: `certfleet-agent check-config` checks target paths exactly as
//! the install does (a symlinked parent directory is refused by both, with
//! the same message), warns about a directory that does not exist yet, and
//! says whether the target directories were checked against the agent
//! unit's sandbox (the packaged-host side of that is exercised by
//! tests/packaging/test-systemd-host.sh in a booted systemd container).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use certfleet_tests::fleet::agent_bin;
use certfleet_tests::servers::{controller_with_issuer, deploy, issue, running_agent};
use certfleet_tests::{run_with_timeout, utf8};

const NAME: &str = "app.example.test";

fn files_target(allowed: &Path, dir: &Path) -> String {
    format!(
        "allowed_dirs = [\"{a}\"]\n[labels]\nrole = \"web\"\n\
         [[target]]\nname = \"app\"\nkind = \"files\"\ndomains = [\"{NAME}\"]\n\
         fullchain = \"{d}/fullchain.pem\"\nkey = \"{d}/privkey.pem\"\n",
        a = allowed.display(),
        d = dir.display()
    )
}

/// Runs check-config on `body`; returns (success, stdout + stderr).
fn check_config(root: &Path, body: &str) -> Result<(bool, String)> {
    let config = root.join("check.toml");
    fs::write(
        &config,
        format!("state_dir = \"{}/state\"\n{body}", root.display()),
    )?;
    let out = run_with_timeout(
        Command::new(agent_bin()).args(["check-config", "--config", utf8(&config)?]),
        Duration::from_secs(20),
    )?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn check_config_refuses_a_symlinked_parent_exactly_as_the_install_does() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let allowed = tmp.path().join("tls");
    fs::create_dir_all(allowed.join("real"))?;
    let link = allowed.join("link");
    symlink(allowed.join("real"), &link)?;

    let (ok, text) = check_config(tmp.path(), &files_target(&allowed, &link))?;
    let refusal = format!("{:?} is a symbolic link", link);
    ensure!(!ok, "check-config accepted a symlinked parent: {text}");
    ensure!(
        text.contains(&refusal) && text.contains("target \"app\""),
        "{text}"
    );

    // The running agent refuses the same path with the same words.
    let ctl = controller_with_issuer()?;
    let _agent = running_agent(&ctl, &files_target(&allowed, &link))?;
    let (cert, _) = issue(&ctl, NAME)?;
    let (_, dep) = deploy(&ctl, &cert, "app")?;
    ensure!(dep["status"] == "failed", "{dep}");
    let err = dep["last_error"].as_str().unwrap_or_default();
    ensure!(err.contains(&refusal), "install error differs: {err}");
    ensure!(
        fs::read_dir(allowed.join("real"))?.next().is_none(),
        "nothing may be written through the link"
    );
    Ok(())
}

#[test]
fn check_config_warns_about_a_missing_directory_and_reports_the_sandbox_check() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let allowed = tmp.path().join("tls");
    fs::create_dir_all(&allowed)?;
    let missing = allowed.join("not-yet");

    let (ok, text) = check_config(tmp.path(), &files_target(&allowed, &missing))?;
    ensure!(ok, "a missing directory is a warning, not an error: {text}");
    ensure!(
        text.contains(&format!(
            "warning: target \"app\": {} does not exist yet",
            missing.display()
        )),
        "{text}"
    );

    fs::create_dir(&missing)?;
    let (ok, text) = check_config(tmp.path(), &files_target(&allowed, &missing))?;
    ensure!(ok && !text.contains("warning"), "{text}");
    // Without a running systemd (as in CI's containers) there is no unit to
    // ask, and check-config says the sandbox was not checked and why.
    if Path::new("/run/systemd/system").is_dir() {
        ensure!(
            text.contains("target directories checked against certfleet-agent.service")
                || text.contains("certfleet-agent.service is not installed"),
            "{text}"
        );
    } else {
        ensure!(
            text.contains(
                "target directories not checked against certfleet-agent.service's sandbox: \
                 systemd is not running here"
            ),
            "{text}"
        );
    }
    Ok(())
}
