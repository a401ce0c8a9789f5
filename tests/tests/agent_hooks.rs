//! End-to-end: `pre_install` / `post_install` hooks of a `files` target run
//! by a real agent: the environment they see, a hook that hangs (killed with
//! its whole process group at `hook_timeout`, reported, rolled back) and a
//! hook that exits non-zero (reported with its capped output, nothing
//! changed).

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Result};
use certfleet_tests::fleet::self_signed;
use certfleet_tests::servers::{controller_with_issuer, deploy, issue, running_agent};
use certfleet_tests::{cert_fingerprint, ensure_key_matches_cert};

const NAME: &str = "mail.example.test";

fn files_target(dir: &Path, hooks: &str) -> String {
    format!(
        "allowed_dirs = [\"{d}\"]\n[labels]\nrole = \"web\"\n\
         [[target]]\nname = \"files\"\nkind = \"files\"\ndomains = [\"{NAME}\"]\n\
         fullchain = \"{d}/fullchain.pem\"\nkey = \"{d}/privkey.pem\"\n{hooks}",
        d = dir.display()
    )
}

fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{}", pid.trim())).exists()
}

#[test]
fn post_install_hook_sees_the_paths_and_a_hanging_one_is_killed_and_rolled_back() -> Result<()> {
    let ctl = controller_with_issuer()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let d = dir.display();
    // Records what it was told; hangs (in a grandchild) while `hang` exists.
    let script = format!(
        "printf '%s\\n' \"$CERTFLEET_HOOK\" \"$CERTFLEET_TARGET\" \"$CERTFLEET_FINGERPRINT\" \
         \"$CERTFLEET_FULLCHAIN_PATH\" \"$CERTFLEET_KEY_PATH\" \"$CERTFLEET_DOMAINS\" > {d}/seen; \
         if [ -e {d}/hang ]; then sleep 600 & echo $! > {d}/sleep.pid; wait; fi; echo reloaded"
    );
    let hooks =
        format!("post_install = [\"/bin/sh\", \"-c\", {script:?}]\nhook_timeout = \"1s\"\n");
    let _agent = running_agent(&ctl, &files_target(dir, &hooks))?;

    let (cert1, fp1) = issue(&ctl, NAME)?;
    let (ok, dep) = deploy(&ctl, &cert1, "files")?;
    ensure!(ok && dep["status"] == "installed", "{dep}");
    let seen = fs::read_to_string(dir.join("seen"))?;
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(
        lines,
        [
            "post_install",
            "files",
            fp1.as_str(),
            &format!("{d}/fullchain.pem"),
            &format!("{d}/privkey.pem"),
            NAME
        ]
    );
    assert_eq!(cert_fingerprint(&dir.join("fullchain.pem"))?, fp1);

    fs::write(dir.join("hang"), "")?;
    let (cert2, _) = issue(&ctl, NAME)?;
    let (ok, dep) = deploy(&ctl, &cert2, "files")?;
    ensure!(!ok, "a hanging hook must fail the deploy");
    assert_eq!(dep["status"], "rolled_back", "{dep}");
    assert_eq!(dep["installed"], cert1.as_str());
    let err = dep["last_error"].as_str().unwrap_or_default();
    ensure!(
        err.contains("post_install hook") && err.contains("timed out after 1s"),
        "{err}"
    );
    // The old files are back, and the hook's grandchild died with it.
    assert_eq!(cert_fingerprint(&dir.join("fullchain.pem"))?, fp1);
    ensure_key_matches_cert(&dir.join("privkey.pem"), &dir.join("fullchain.pem"))?;
    let sleeper = fs::read_to_string(dir.join("sleep.pid"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while alive(&sleeper) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(!alive(&sleeper), "the hook's process group was not killed");
    Ok(())
}

#[test]
fn pre_install_hook_that_fails_stops_the_install_before_any_file_changes() -> Result<()> {
    let ctl = controller_with_issuer()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    self_signed(dir, NAME)?;
    let before = cert_fingerprint(&dir.join("fullchain.pem"))?;
    let key_before = fs::read(dir.join("privkey.pem"))?;
    // 100 kB on stdout, then a reason on stderr and exit 3.
    let script =
        "head -c 100000 /dev/zero | tr '\\0' x; echo 'maintenance window closed' >&2; exit 3";
    let hooks = format!("pre_install = [\"/bin/sh\", \"-c\", {script:?}]\n");
    let _agent = running_agent(&ctl, &files_target(dir, &hooks))?;

    let (cert, _) = issue(&ctl, NAME)?;
    let (ok, dep) = deploy(&ctl, &cert, "files")?;
    ensure!(!ok, "a failing pre_install hook must fail the deploy");
    assert_eq!(dep["status"], "failed", "{dep}");
    let err = dep["last_error"].as_str().unwrap_or_default();
    ensure!(
        err.contains("pre_install hook")
            && err.contains("exit status: 3")
            && err.contains("maintenance window closed"),
        "{err}"
    );
    ensure!(
        err.len() < 6000,
        "hook output is capped: {} bytes",
        err.len()
    );
    assert_eq!(cert_fingerprint(&dir.join("fullchain.pem"))?, before);
    assert_eq!(fs::read(dir.join("privkey.pem"))?, key_before);
    Ok(())
}
