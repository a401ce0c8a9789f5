//! `deploy --wait` that fails reports each failed target's whole error, not
//! its first line (which, for a failed command, ends in a dangling
//! "failed (exit status: 1):" with the cause on the lines below).

use std::path::Path;

use anyhow::{anyhow, Result};
use certfleet_tests::servers::{controller_with_issuer, issue, running_agent};

const NAME: &str = "api.example.test";

fn files_target(dir: &Path, hooks: &str) -> String {
    format!(
        "allowed_dirs = [\"{d}\"]\n[labels]\nrole = \"web\"\n\
         [[target]]\nname = \"files\"\nkind = \"files\"\ndomains = [\"{NAME}\"]\n\
         fullchain = \"{d}/fullchain.pem\"\nkey = \"{d}/privkey.pem\"\n{hooks}",
        d = dir.display()
    )
}

#[test]
fn deploy_wait_failure_shows_every_line_of_the_target_error() -> Result<()> {
    let ctl = controller_with_issuer()?;
    let tmp = tempfile::tempdir()?;
    // Fails the way `nginx -t` does: a verdict on one line, the cause on
    // the next.
    let script =
        "echo 'config check: [emerg] bind() to 0.0.0.0:80 failed (13: Permission denied)' >&2; \
                  echo 'config check: configuration file test failed' >&2; exit 1";
    let hooks = format!("pre_install = [\"/bin/sh\", \"-c\", {script:?}]\n");
    let _agent = running_agent(&ctl, &files_target(tmp.path(), &hooks))?;
    let (cert, _) = issue(&ctl, NAME)?;
    let out = ctl.cli(&[
        "deploy", &cert, "--to", "role=web", "--target", "files", "--wait",
    ])?;
    // Progress lines come first on stderr, the error last.
    assert!(!out.status.success(), "deploy --wait succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let err = &stderr[stderr
        .find("error:")
        .ok_or_else(|| anyhow!("no error: on stderr: {stderr}"))?..];
    assert!(err.contains("exit status: 1"), "{err}");
    assert!(
        err.contains("bind() to 0.0.0.0:80 failed (13: Permission denied)"),
        "the cause is shown: {err}"
    );
    assert!(
        err.contains("configuration file test failed"),
        "every line is shown: {err}"
    );
    assert!(
        !err.trim_end().ends_with("):"),
        "no dangling first line: {err}"
    );
    Ok(())
}
