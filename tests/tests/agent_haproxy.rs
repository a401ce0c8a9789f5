//! End-to-end: a real controller and agent installing into real HAProxy
//! (master-worker, its own config, port and runtime API sockets): the
//! combined PEM, both reload modes, a TLS keep-alive connection held open
//! across a runtime update, and a runtime socket that refuses or is missing.

use anyhow::{ensure, Result};
use certfleet_tests::fleet::served_fingerprint;
use certfleet_tests::servers::{
    controller_with_issuer, deploy, issue, running_agent, Haproxy, KeepAlive,
};
use certfleet_tests::{cert_fingerprint, file_mode, read_pem};

const NAME: &str = "www.example.test";

#[test]
fn reload_mode_installs_the_combined_pem_and_reloads_the_master() -> Result<()> {
    let ctl = controller_with_issuer()?;
    let haproxy = Haproxy::start(NAME)?;
    let original = served_fingerprint(haproxy.port, NAME)?;
    let worker = haproxy.worker_pid()?;
    let _agent = running_agent(&ctl, &haproxy.target(NAME, "")?)?;

    let (cert, fp) = issue(&ctl, NAME)?;
    let (ok, d) = deploy(&ctl, &cert, "haproxy")?;
    ensure!(ok && d["status"] == "installed", "{d}");
    assert_eq!(served_fingerprint(haproxy.port, NAME)?, fp);
    assert_ne!(original, fp);
    // One file: leaf, intermediate, key; readable by the group only.
    let blocks = read_pem(&haproxy.pem)?;
    let labels: Vec<&str> = blocks.iter().map(|b| b.label.as_str()).collect();
    assert_eq!(labels, ["CERTIFICATE", "CERTIFICATE", "PRIVATE KEY"]);
    assert_eq!(cert_fingerprint(&haproxy.pem)?, fp);
    assert_eq!(file_mode(&haproxy.pem)?, 0o640);
    // SIGUSR2 to the master started a new worker.
    ensure!(haproxy.worker_pid()? != worker, "HAProxy was not reloaded");
    Ok(())
}

#[test]
fn runtime_mode_updates_without_a_reload_or_dropping_a_held_connection() -> Result<()> {
    let ctl = controller_with_issuer()?;
    let haproxy = Haproxy::start(NAME)?;
    let original = served_fingerprint(haproxy.port, NAME)?;
    let extra = format!(
        "reload_mode = \"runtime\"\nruntime_socket = \"{}\"\nruntime_fallback = \"fail\"\n",
        haproxy.admin_socket.display()
    );
    let _agent = running_agent(&ctl, &haproxy.target(NAME, &extra)?)?;
    let mut held = KeepAlive::open(haproxy.port, NAME)?;
    held.request()?;
    let worker = haproxy.worker_pid()?;

    let (cert, fp) = issue(&ctl, NAME)?;
    let (ok, d) = deploy(&ctl, &cert, "haproxy")?;
    ensure!(ok && d["status"] == "installed", "{d}");
    // New handshakes get the new certificate...
    assert_eq!(served_fingerprint(haproxy.port, NAME)?, fp);
    assert_ne!(original, fp);
    // ...from the same worker, and the connection opened before the update
    // still answers, without being told to close.
    assert_eq!(
        haproxy.worker_pid()?,
        worker,
        "runtime mode must not reload"
    );
    let answer = held.request()?;
    ensure!(
        answer.starts_with("HTTP/1.1 200")
            && !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // The file holds the new certificate for the next restart.
    assert_eq!(cert_fingerprint(&haproxy.pem)?, fp);
    ensure!(
        !haproxy.runtime("show ssl cert")?.contains("# transaction"),
        "no transaction left open"
    );
    Ok(())
}

#[test]
fn runtime_socket_refusing_fails_clearly_and_missing_falls_back_to_reload() -> Result<()> {
    let ctl = controller_with_issuer()?;
    let refusing = Haproxy::start(NAME)?;
    let missing = Haproxy::start(NAME)?;
    let original = served_fingerprint(refusing.port, NAME)?;
    let refusing_worker = refusing.worker_pid()?;
    let missing_worker = missing.worker_pid()?;
    // A `level user` socket refuses `set ssl cert`; with fallback "fail"
    // the install must fail and roll back. A socket that does not exist,
    // with fallback "reload", falls back to reloading the master.
    let body = format!(
        "allowed_dirs = [\"{}\", \"{}\"]\n[labels]\nrole = \"web\"\n{}{}",
        refusing.tls_dir.display(),
        missing.tls_dir.display(),
        refusing.target_section(
            "refusing",
            NAME,
            &format!(
                "reload_mode = \"runtime\"\nruntime_socket = \"{}\"\nruntime_fallback = \"fail\"\n",
                refusing.user_socket.display()
            )
        ),
        missing.target_section(
            "missing",
            NAME,
            &format!(
                "reload_mode = \"runtime\"\nruntime_socket = \"{}\"\nruntime_fallback = \"reload\"\n",
                missing.root.join("no-such.sock").display()
            )
        ),
    );
    let _agent = running_agent(&ctl, &body)?;

    let (cert, fp) = issue(&ctl, NAME)?;
    let (ok, d) = deploy(&ctl, &cert, "refusing")?;
    ensure!(
        !ok,
        "a refused runtime update with fallback \"fail\" must not complete"
    );
    assert_eq!(d["status"], "rolled_back", "{d}");
    let err = d["last_error"].as_str().unwrap_or_default();
    ensure!(
        err.contains("refused `set ssl cert")
            && err.contains("Permission denied")
            && err.contains("runtime_fallback = \"fail\"")
            && err.contains("server was not changed")
            && !err.contains("reload after restoring failed"),
        "{err}"
    );
    assert_eq!(served_fingerprint(refusing.port, NAME)?, original);
    assert_eq!(
        cert_fingerprint(&refusing.pem)?,
        original,
        "old file restored"
    );
    assert_eq!(refusing.worker_pid()?, refusing_worker, "not reloaded");
    ensure!(
        refusing
            .runtime("show ssl cert")?
            .contains(refusing.pem.to_str().unwrap_or("-"))
            && !refusing.runtime("show ssl cert")?.contains("# transaction"),
        "no transaction left open"
    );

    let (ok, d) = deploy(&ctl, &cert, "missing")?;
    ensure!(ok && d["status"] == "installed", "fallback reload: {d}");
    assert_eq!(served_fingerprint(missing.port, NAME)?, fp);
    ensure!(
        missing.worker_pid()? != missing_worker,
        "the fallback reloaded HAProxy"
    );
    Ok(())
}
