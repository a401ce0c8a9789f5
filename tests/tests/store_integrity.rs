//! End-to-end: the controller's database as a whole, with the real
//! binaries.
//!
//! A backup taken from the running controller, the database damaged
//! (8 KiB overwritten in the middle), `serve` refusing to start and naming
//! the restore procedure, `admin check` finding the damage, `admin
//! restore` putting the backup back, and every certificate and key opening
//! afterwards (shown, downloaded, deployed). Also: the state directory
//! must be private and writable (a read-only or full one is named as
//! such, shown through a private mount namespace), and its files are 0600.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use certfleet_tests::fleet::{
    free_port, named_files_agent_config, token, wait_connected, wait_deployments, Agent,
};
use certfleet_tests::{
    ensure_key_matches_cert, file_mode, run_with_timeout, str_field, utf8, Controller,
    ControllerOptions, STARTUP_TIMEOUT,
};

const WAIT: Duration = Duration::from_secs(90);

fn audit_has(ctl: &Controller, action: &str) -> Result<bool> {
    let audit = ctl.cli_json(&["audit", "list"])?;
    Ok(audit
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["action"] == action))
}

/// Overwrite 8 KiB in the middle of `db` (page-aligned), as a failing disk
/// or a stray write would.
fn damage(db: &Path) -> Result<()> {
    let mut bytes = std::fs::read(db)?;
    ensure!(
        bytes.len() >= 64 * 1024,
        "database too small to damage: {}",
        bytes.len()
    );
    let mid = (bytes.len() / 2) & !4095;
    bytes[mid..mid + 8192].fill(0x5a);
    std::fs::write(db, bytes)?;
    Ok(())
}

/// `certfleet --output json ARGS…` for the commands that need no running
/// controller (`admin check`, `admin restore`); returns the output,
/// whatever the exit.
fn offline(ctl: &Controller, args: &[&str]) -> Result<std::process::Output> {
    run_with_timeout(
        ctl.cli_command().args(["--output", "json"]).args(args),
        Duration::from_secs(60),
    )
}

fn offline_json(ctl: &Controller, args: &[&str]) -> Result<serde_json::Value> {
    let out = offline(ctl, args)?;
    ensure!(
        out.status.success(),
        "`certfleet {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn offline_err(ctl: &Controller, args: &[&str]) -> Result<String> {
    let out = offline(ctl, args)?;
    certfleet_tests::expect_cli_error(&out, &format!("certfleet {}", args.join(" ")))
}

#[test]
fn backup_damage_refusal_restore_and_every_key_still_opens() -> Result<()> {
    // A fixed address: the agent finds the restarted controller there.
    let mut ctl = Controller::start_with(ControllerOptions {
        listen: Some(format!("127.0.0.1:{}", free_port()?).parse()?),
        ..ControllerOptions::default()
    })?;
    ctl.cli_json(&["issuer", "add", "ca1", "--kind", "builtin"])?;
    // Enough rows that the middle of the file is certificate data.
    let mut certs = Vec::new();
    for i in 0..6 {
        let c = ctl.issue("ca1", &[], &[&format!("www{i}.example.test")])?;
        certs.push(str_field(&c, "id")?.to_owned());
    }
    let files = tempfile::Builder::new()
        .prefix("certfleet-files-")
        .tempdir()?;
    let config = named_files_agent_config("web-1", "files", files.path(), "www0.example.test");
    let mut agent = Agent::new(&ctl, &config)?;
    let (tok, pin) = token(&ctl, &[])?;
    agent.enroll(&ctl, &tok, &pin)?;
    let agent_id = agent.id.clone().context("enrolled agent has no id")?;

    // State files are private.
    let state = ctl.state_dir().to_path_buf();
    assert_eq!(file_mode(&state)?, 0o700);
    for f in [
        "certfleet.db",
        "certfleet.db-wal",
        "certfleet.db-shm",
        "runtime.json",
        "master.key",
        "admin.credential",
    ] {
        let p = state.join(f);
        ensure!(p.exists(), "{} missing", p.display());
        ensure!(
            file_mode(&p)? == 0o600,
            "{} has mode {:o}",
            p.display(),
            file_mode(&p)?
        );
    }

    // Online backup through the running controller.
    let backups = ctl.scratch("backups")?;
    let online = backups.join("online.db");
    let b = ctl.cli_json(&["admin", "backup", "--out", utf8(&online)?])?;
    ensure!(b["bytes"].as_u64().is_some_and(|n| n > 0), "{b}");
    ensure!(b["sha256"].as_str().is_some_and(|s| s.len() == 64), "{b}");
    ensure!(
        file_mode(&online)? == 0o600,
        "backup mode {:o}",
        file_mode(&online)?
    );
    ensure!(audit_has(&ctl, "admin.backup")?, "backup not audited");
    ensure!(
        std::fs::read_dir(&state)?
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().ends_with(".snapshot")),
        "the controller left its snapshot behind"
    );
    let err = ctl.cli_err(&["admin", "backup", "--out", utf8(&online)?])?;
    ensure!(err.contains("already exists"), "{err}");
    // And one taken on the controller host from the state directory.
    let local_backup = backups.join("offline.db");
    ctl.cli_json(&[
        "admin",
        "backup",
        "--state-dir",
        utf8(&state)?,
        "--out",
        utf8(&local_backup)?,
    ])?;

    // Restoring is refused while the controller runs.
    let err = ctl.cli_err(&[
        "admin",
        "restore",
        utf8(&online)?,
        "--state-dir",
        utf8(&state)?,
    ])?;
    ensure!(
        err.contains("stop the controller first") && err.contains("in use by another"),
        "{err}"
    );

    // Damage the database of the stopped controller. `admin check` on the
    // sound one first: as the last connection it folds the WAL into the
    // database file, so the damage cannot hide behind the log.
    ctl.terminate()?;
    let check = offline_json(&ctl, &["admin", "check", "--state-dir", utf8(&state)?])?;
    ensure!(check["ok"] == true, "{check}");
    ensure!(
        !state.join("certfleet.db-wal").exists(),
        "WAL left after the check"
    );
    damage(&ctl.db_path())?;

    let (status, stderr) = ctl.start_expecting_failure(&[])?;
    ensure!(!status.success(), "serve started on a damaged database");
    ensure!(
        stderr.contains("is damaged")
            && stderr.contains("certfleet admin restore BACKUP --state-dir")
            && stderr.contains("Backup and restore"),
        "the refusal does not name the restore procedure:\n{stderr}"
    );
    let out = offline(&ctl, &["admin", "check", "--state-dir", utf8(&state)?])?;
    ensure!(
        out.status.code() == Some(1),
        "admin check on a damaged database: {:?}",
        out.status
    );
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("is damaged"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A damaged backup is refused, and changes nothing.
    let bad = backups.join("bad.db");
    std::fs::copy(&online, &bad)?;
    damage(&bad)?;
    let err = offline_err(
        &ctl,
        &[
            "admin",
            "restore",
            utf8(&bad)?,
            "--state-dir",
            utf8(&state)?,
        ],
    )?;
    ensure!(err.contains("is not a sound backup"), "{err}");

    let r = offline_json(
        &ctl,
        &[
            "admin",
            "restore",
            utf8(&online)?,
            "--state-dir",
            utf8(&state)?,
        ],
    )?;
    ensure!(
        r["moved_aside"].as_array().is_some_and(|m| m
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains("before-restore")))),
        "{r}"
    );
    ensure!(
        file_mode(&ctl.db_path())? == 0o600,
        "restored database mode"
    );

    ctl.start_again()?;
    ensure!(audit_has(&ctl, "admin.restore")?, "restore not audited");
    // Every certificate and its key open with the master key.
    let out_dir = ctl.scratch("download")?;
    for (i, id) in certs.iter().enumerate() {
        let shown = ctl.cli_json(&["cert", "show", id])?;
        ensure!(shown["state"] == "active", "{shown}");
        let dir = out_dir.join(i.to_string());
        ctl.cli_ok(&["cert", "download", id, "--out", utf8(&dir)?])?;
        ensure_key_matches_cert(&dir.join("privkey.pem"), &dir.join("cert.pem"))?;
    }
    // And deploying still works: the agent enrolled before the backup.
    agent.start()?;
    wait_connected(&ctl, &agent_id, true, WAIT)?;
    ctl.cli_json(&[
        "deploy",
        &certs[0],
        "--to",
        &format!("agent={agent_id}"),
        "--target",
        "files",
    ])?;
    let deployed = wait_deployments(&ctl, &certs[0], WAIT)?;
    ensure!(
        deployed.iter().all(|d| d["status"] == "installed"),
        "{deployed:?}"
    );
    ensure_key_matches_cert(
        &files.path().join("privkey.pem"),
        &files.path().join("fullchain.pem"),
    )?;
    // A new issuance works on the restored database too.
    ctl.issue("ca1", &[], &["after.example.test"])?;
    Ok(())
}

#[test]
fn a_loose_state_directory_is_refused_and_loose_files_are_narrowed() -> Result<()> {
    let mut ctl = Controller::start()?;
    ctl.terminate()?;
    let state = ctl.state_dir().to_path_buf();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755))?;
    let (status, stderr) = ctl.start_expecting_failure(&[])?;
    ensure!(!status.success());
    ensure!(
        stderr.contains(&format!("chmod 700 {}", state.display())),
        "the refusal does not name the chmod:\n{stderr}"
    );
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))?;
    for f in ["certfleet.db", "master.key"] {
        std::fs::set_permissions(state.join(f), std::fs::Permissions::from_mode(0o644))?;
    }
    ctl.start_again()?;
    for f in [
        "certfleet.db",
        "certfleet.db-wal",
        "master.key",
        "runtime.json",
    ] {
        let p = state.join(f);
        ensure!(
            file_mode(&p)? == 0o600,
            "{} has mode {:o}",
            p.display(),
            file_mode(&p)?
        );
    }
    Ok(())
}

/// Whether this host lets the test make a private mount namespace (root,
/// or CAP_SYS_ADMIN) to show the controller a read-only state directory.
fn private_mounts() -> bool {
    std::process::Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_read_only_or_full_state_directory_is_named_as_such() -> Result<()> {
    if !private_mounts() {
        eprintln!("skipped: `unshare -m` is not allowed here (needs root or CAP_SYS_ADMIN)");
        return Ok(());
    }
    let mut ctl = Controller::start()?;
    ctl.terminate()?;
    let state = ctl.state_dir().to_path_buf();
    let bin = certfleet_tests::certfleet_bin();
    // In a mount namespace of its own, the state directory is bind-mounted
    // read-only over itself, then the controller starts on it.
    let out = run_with_timeout(
        std::process::Command::new("unshare")
            .args(["-m", "sh", "-c"])
            .arg(
                "mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\" && \
                 exec \"$2\" serve --state-dir \"$1\" --listen 127.0.0.1:0 \
                 --crl-listen 127.0.0.1:0",
            )
            .args(["sh", utf8(&state)?])
            .arg(&bin)
            .env("NO_COLOR", "1"),
        STARTUP_TIMEOUT,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "serve started on a read-only state directory"
    );
    ensure!(
        stderr.contains(&format!("state directory {} is read-only", state.display())),
        "{stderr}"
    );
    // Outside that namespace nothing changed: it starts.
    ctl.start_again()?;

    // A full disk: a fresh state directory on a small tmpfs filled up.
    let full = tempfile::Builder::new()
        .prefix("certfleet-full-")
        .tempdir()?;
    let out = run_with_timeout(
        std::process::Command::new("unshare")
            .args(["-m", "sh", "-c"])
            .arg(
                "mount -t tmpfs -o size=256k,mode=0700 tmpfs \"$1\" && \
                 (dd if=/dev/zero of=\"$1/fill\" bs=4k count=1000 2>/dev/null; true) && \
                 exec \"$2\" serve --state-dir \"$1\" --listen 127.0.0.1:0 \
                 --crl-listen 127.0.0.1:0",
            )
            .args(["sh", utf8(full.path())?])
            .arg(&bin)
            .env("NO_COLOR", "1"),
        STARTUP_TIMEOUT,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "serve started on a full state directory"
    );
    ensure!(
        stderr.contains(&format!(
            "state directory {} is full",
            full.path().display()
        )),
        "{stderr}"
    );
    Ok(())
}
