//! Real full and read-only file systems under the agent's target directory
//! and the controller's state directory (docs/testing.md): a small tmpfs
//! filled up, or a read-only bind mount, in a private mount namespace
//! (`unshare -m`, root only; the tests skip loudly elsewhere), so nothing
//! outside the process under test sees the fault.
//!
//! Each checks what an operator would: a clear error naming the path, the
//! previous certificate still in place, the store still opening, and the
//! same operation succeeding once the fault is gone.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use certfleet_tests::fleet::{agent_bin, token, wait_connected, wait_deployments, Agent};
use certfleet_tests::{run_with_timeout, str_field, utf8, Controller};

const NAME: &str = "files.example.test";
const WAIT: Duration = Duration::from_secs(60);

/// Whether this process may make private mount namespaces.
fn private_mounts() -> bool {
    Command::new("unshare")
        .args(["-m", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Shell that puts a 64 KiB tmpfs over `$1` (keeping its files) and fills
/// it to the last byte.
const FULL_TMPFS: &str = "keep=$(mktemp -d) && cp -a \"$1/.\" \"$keep\" && \
     mount -t tmpfs -o size=64k,mode=0755 tmpfs \"$1\" && cp -a \"$keep/.\" \"$1\" && \
     rm -rf \"$keep\" && (dd if=/dev/zero of=\"$1/fill\" bs=1k count=1000 2>/dev/null; true)";

/// Shell that makes `$1` read-only by a bind mount over itself.
const READ_ONLY: &str = "mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\"";

/// `certfleet-agent run` for `agent` in its own mount namespace, after
/// `setup` (a shell snippet on `$1` = `dir`) has run there.
fn agent_in_namespace(agent: &Agent, setup: &str, dir: &Path) -> Result<Child> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&agent.log)?;
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c"])
        .arg(format!("{setup} && exec \"$2\" run --config \"$3\""))
        .args(["sh", utf8(dir)?])
        .arg(agent_bin())
        .arg(&agent.config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CERTFLEET_") {
            cmd.env_remove(key);
        }
    }
    cmd.spawn().context("starting the agent under unshare")
}

/// `cat` of `file` as the process `pid` sees it (its mount namespace).
fn read_in_namespace(pid: u32, file: &Path) -> Result<Vec<u8>> {
    let out = run_with_timeout(
        Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "cat"])
            .arg(file),
        Duration::from_secs(20),
    )?;
    ensure!(
        out.status.success(),
        "nsenter cat {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

fn deploy(ctl: &Controller, cert: &str) -> Result<()> {
    ctl.cli_json(&[
        "deploy", cert, "--to", "role=web", "--target", "files", "--canary", "0", "--wave", "100%",
    ])?;
    Ok(())
}

/// Wait until the deployment of `cert` is `installed` (after a retry).
fn wait_installed(ctl: &Controller, cert: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let list = wait_deployments(ctl, cert, WAIT)?;
        if list.iter().all(|d| d["status"] == "installed") {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "not installed: {list:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn issue(ctl: &Controller) -> Result<(String, Vec<u8>)> {
    let cert = ctl.issue("ca", &[], &[NAME])?;
    let id = str_field(&cert, "id")?.to_owned();
    let dir = ctl.scratch(&id)?;
    ctl.cli_ok(&["cert", "download", &id, "--out", utf8(&dir)?])?;
    Ok((id, fs::read(dir.join("fullchain.pem"))?))
}

#[test]
fn an_agent_on_a_full_or_read_only_target_directory_fails_clearly_and_keeps_the_old_certificate(
) -> Result<()> {
    if !private_mounts() {
        eprintln!("skipped: `unshare -m` is not allowed here (needs root or CAP_SYS_ADMIN)");
        return Ok(());
    }
    let ctl = Controller::start()?;
    ctl.cli_json(&["issuer", "add", "ca", "--kind", "builtin"])?;
    let target_dir = tempfile::Builder::new()
        .prefix("certfleet-target-")
        .tempdir()?;
    let dir = target_dir.path().to_path_buf();
    let (tok, pin) = token(&ctl, &["--labels", "role=web"])?;
    let mut agent = Agent::new(
        &ctl,
        &format!(
            "allowed_dirs = [\"{d}\"]\n[labels]\nrole = \"web\"\n[[target]]\nname = \"files\"\n\
             kind = \"files\"\ndomains = [\"{NAME}\"]\nfullchain = \"{d}/fullchain.pem\"\n\
             key = \"{d}/privkey.pem\"\n",
            d = dir.display()
        ),
    )?;
    agent.enroll(&ctl, &tok, &pin)?;
    agent.start()?;
    let id = agent.id.clone().unwrap_or_default();
    wait_connected(&ctl, &id, true, WAIT)?;
    let (first, first_pem) = issue(&ctl)?;
    deploy(&ctl, &first)?;
    wait_installed(&ctl, &first)?;
    ensure!(fs::read(dir.join("fullchain.pem"))? == first_pem);
    agent.kill();

    for (setup, says) in [
        (FULL_TMPFS, "No space left on device"),
        (READ_ONLY, "read-only"),
    ] {
        let mut child = agent_in_namespace(&agent, setup, &dir)?;
        wait_connected(&ctl, &id, true, WAIT)?;
        let (cert, pem) = issue(&ctl)?;
        deploy(&ctl, &cert)?;
        let list = wait_deployments(&ctl, &cert, WAIT)?;
        let d = &list[0];
        let error = d["last_error"].as_str().unwrap_or_default();
        let shown = format!("{d}");
        eprintln!("{says}: the deployment failed with: {error}");
        ensure!(d["status"] == "failed", "{says}: {shown}");
        ensure!(
            error.to_lowercase().contains(&says.to_lowercase()),
            "{says}: the error does not say so: {error}"
        );
        ensure!(
            error.contains(&dir.display().to_string()),
            "{says}: the error does not name {}: {error}",
            dir.display()
        );
        // What the agent's namespace sees: the previous certificate, whole,
        // and no staged leftovers.
        let live = read_in_namespace(child.id(), &dir.join("fullchain.pem"))?;
        ensure!(
            live == first_pem,
            "{says}: the previous certificate was not kept"
        );
        let _ = child.kill();
        let _ = child.wait();
        ensure!(
            !dir.join(".fullchain.pem.certfleet-new").exists()
                && !dir.join(".privkey.pem.certfleet-new").exists(),
            "{says}: staged files left behind"
        );

        // Fault gone (the agent runs outside the namespace): the same
        // certificate installs, then the first one again for the next round.
        agent.start()?;
        wait_connected(&ctl, &id, true, WAIT)?;
        deploy(&ctl, &cert)?;
        wait_installed(&ctl, &cert)?;
        ensure!(fs::read(dir.join("fullchain.pem"))? == pem);
        deploy(&ctl, &first)?;
        wait_installed(&ctl, &first)?;
        ensure!(fs::read(dir.join("fullchain.pem"))? == first_pem);
        agent.kill();
    }
    Ok(())
}

#[test]
fn a_controller_whose_disk_fills_up_refuses_clearly_and_recovers() -> Result<()> {
    if !private_mounts() {
        eprintln!("skipped: `unshare -m` is not allowed here (needs root or CAP_SYS_ADMIN)");
        return Ok(());
    }
    // A state directory made on a normal disk, then served from a small
    // tmpfs holding a copy of it, in the controller's own namespace.
    let mut ctl = Controller::start()?;
    ctl.cli_json(&["issuer", "add", "ca", "--kind", "builtin"])?;
    let kept = ctl.issue("ca", &[], &["kept.example.test"])?;
    let kept = str_field(&kept, "id")?.to_owned();
    ctl.terminate()?;
    let state = ctl.state_dir().to_path_buf();
    let out_dir = tempfile::Builder::new()
        .prefix("certfleet-full-")
        .tempdir()?;
    let log_path = out_dir.path().join("serve.log");
    let log = fs::File::create(&log_path)?;
    let mut serve = Command::new("unshare");
    serve
        .args(["-m", "sh", "-c"])
        .arg(
            "keep=$(mktemp -d) && cp -a \"$1/.\" \"$keep\" && \
             mount -t tmpfs -o size=8m,mode=0700 tmpfs \"$1\" && cp -a \"$keep/.\" \"$1\" && \
             rm -rf \"$keep\" && exec \"$2\" serve --state-dir \"$1\" --listen 127.0.0.1:0 \
             --crl-listen 127.0.0.1:0",
        )
        .args(["sh", utf8(&state)?])
        .arg(certfleet_tests::certfleet_bin())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CERTFLEET_") {
            serve.env_remove(key);
        }
    }
    let mut child = serve.spawn()?;
    let pid = child.id().to_string();
    // runtime.json is written inside the tmpfs: read it through nsenter.
    let deadline = Instant::now() + WAIT;
    let listen = loop {
        let out = run_with_timeout(
            Command::new("nsenter")
                .args(["-t", &pid, "-m", "cat"])
                .arg(state.join("runtime.json")),
            Duration::from_secs(20),
        )?;
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            break str_field(&v, "listen")?.to_owned();
        }
        ensure!(
            Instant::now() < deadline,
            "the controller on tmpfs did not start: {}",
            fs::read_to_string(&log_path)?
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let cli = |args: &[&str]| -> Result<std::process::Output> {
        let mut cmd = certfleet_tests::certfleet_command();
        cmd.args(["--controller", &listen, "--credential"])
            .arg(ctl.credential_path())
            .args(args);
        run_with_timeout(&mut cmd, Duration::from_secs(60))
    };
    // Fill the tmpfs to the last byte, then try to issue.
    let fill = state.join("fill");
    let out = run_with_timeout(
        Command::new("nsenter")
            .args(["-t", &pid, "-m", "sh", "-c"])
            .arg("dd if=/dev/zero of=\"$1\" bs=64k count=1000 2>/dev/null; true")
            .args(["sh", utf8(&fill)?]),
        Duration::from_secs(20),
    )?;
    ensure!(out.status.success());
    let mut refused = None;
    for _ in 0..20 {
        let out = cli(&["instance", "create", "--issuer", "ca", "--domains", "50"])?;
        if !out.status.success() {
            refused = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
    }
    let err = refused.context("every write succeeded on a full disk")?;
    eprintln!("the full disk was refused with: {err}");
    let log_text = fs::read_to_string(&log_path)?;
    ensure!(
        err.contains(&state.display().to_string())
            || log_text.contains(&state.display().to_string()),
        "the error does not name the state directory: {err}\n{log_text}"
    );
    ensure!(
        err.to_lowercase().contains("full") || err.to_lowercase().contains("space"),
        "the error does not say the disk is full: {err}"
    );
    // Free the space, but keep what the controller wrote: copy the state
    // back out of the tmpfs (the on-disk directory is still the old copy).
    let copy_back = run_with_timeout(
        Command::new("nsenter")
            .args(["-t", &pid, "-m", "sh", "-c"])
            .arg("rm -f \"$1/fill\" && cp -a \"$1/.\" \"$2\"")
            .args(["sh", utf8(&state)?, utf8(out_dir.path())?]),
        Duration::from_secs(20),
    )?;
    ensure!(copy_back.status.success());
    let _ = child.kill();
    let _ = child.wait();
    for entry in fs::read_dir(out_dir.path())? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Not the -shm index: SQLite rebuilds it from the log.
        if (name.starts_with("certfleet.db") && !name.ends_with("-shm")) || name == "master.key" {
            fs::copy(entry.path(), state.join(&*name))?;
        }
    }
    // The store opens (the start runs its integrity check), the certificate
    // committed before the fault is there, and issuing works again.
    ctl.start_again()?;
    let show = ctl.cli_json(&["cert", "show", &kept])?;
    ensure!(show["state"] == "active", "{show}");
    ctl.issue("ca", &[], &["after.example.test"])?;
    Ok(())
}
