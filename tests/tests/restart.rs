//! Issue #2, acceptance 3: everything survives a controller restart
//! (instances, certificates with their states and revocations, keys, CRLs,
//! audit), and the master key guards the store: a controller refuses to start
//! without the right one.

use std::fs;

use anyhow::{ensure, Result};
use certfleet_tests::{
    array, crl_serials, ensure_key_matches_cert, http_get, normalize_hex, openssl, openssl_ok,
    str_field, utf8, Controller,
};
use serde_json::Value;

#[test]
fn state_survives_restart() -> Result<()> {
    let mut ctl = Controller::start()?;
    let issuer = ctl.cli_json(&["issuer", "add", "ca1", "--kind", "builtin"])?;
    let kept = ctl.issue(
        "ca1",
        &["--domains", "2"],
        &["kept.example.test", "127.0.0.1"],
    )?;
    let kept_id = str_field(&kept, "id")?.to_owned();
    let gone = ctl.issue("ca1", &["--key", "rsa-2048"], &["gone.example.test"])?;
    let gone_id = str_field(&gone, "id")?.to_owned();
    ctl.cli_json(&[
        "cert",
        "revoke",
        &gone_id,
        "--reason",
        "cessationOfOperation",
    ])?;
    let unused = ctl.cli_json(&["instance", "create", "--issuer", "ca1", "--wildcard"])?;
    let unused_id = str_field(&unused, "id")?.to_owned();

    let before_dir = ctl.scratch("before")?;
    ctl.cli_ok(&["cert", "download", &kept_id, "--out", utf8(&before_dir)?])?;
    let inventory = ctl.inventory()?;
    let audit = ctl.cli_json(&["audit", "list"])?;
    ensure!(!array(&audit)?.is_empty(), "audit list is empty: {audit}");

    ctl.restart()?;

    // Same issuers, instances and certificates, in the same states.
    assert_eq!(ctl.inventory()?, inventory, "inventory after restart");
    let instance = ctl.cli_json(&["instance", "show", &unused_id])?;
    assert_eq!(instance["state"], "unused", "{instance}");
    let gone = ctl.cli_json(&["cert", "show", &gone_id])?;
    assert_eq!(gone["state"], "revoked", "{gone}");
    assert_eq!(gone["revocation_reason"], "cessationOfOperation", "{gone}");
    let kept = ctl.cli_json(&["cert", "show", &kept_id])?;
    assert_eq!(kept["state"], "active", "{kept}");

    // Every audit entry written before the restart is still there, unchanged.
    let audit_after = ctl.cli_json(&["audit", "list"])?;
    let after = array(&audit_after)?;
    for entry in array(&audit)? {
        ensure!(
            after.contains(entry),
            "audit entry lost or changed by the restart: {entry}\nnow: {audit_after}"
        );
    }

    // The sealed key is still usable: same certificate, matching key.
    let after_dir = ctl.scratch("after")?;
    ctl.cli_ok(&["cert", "download", &kept_id, "--out", utf8(&after_dir)?])?;
    assert_eq!(
        fs::read_to_string(after_dir.join("cert.pem"))?,
        fs::read_to_string(before_dir.join("cert.pem"))?,
        "cert.pem after restart"
    );
    ensure_key_matches_cert(&after_dir.join("privkey.pem"), &after_dir.join("cert.pem"))?;
    let pub_before = openssl_ok(&[
        "pkey",
        "-in",
        utf8(&before_dir.join("privkey.pem"))?,
        "-pubout",
    ])?;
    let pub_after = openssl_ok(&[
        "pkey",
        "-in",
        utf8(&after_dir.join("privkey.pem"))?,
        "-pubout",
    ])?;
    assert_eq!(pub_after, pub_before, "private key after restart");

    // The revocation is still published (the CRL port may have changed).
    let issuers = ctl.cli_json(&["issuer", "list"])?;
    let ca1 = array(&issuers)?
        .iter()
        .find(|i| i["name"] == "ca1")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        ca1["root_fingerprint"], issuer["root_fingerprint"],
        "root after restart"
    );
    let crl_url = str_field(&ca1, "crl_url")?;
    let response = http_get(crl_url)?;
    assert_eq!(response.status, 200, "GET {crl_url}");
    let crl = ctl.scratch("crl")?.join("ca1.crl");
    fs::write(&crl, &response.body)?;
    let text = openssl_ok(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        utf8(&crl)?,
        "-noout",
        "-text",
    ])?;
    ensure!(
        crl_serials(&text).contains(&normalize_hex(str_field(&gone, "serial")?)),
        "CRL after restart lacks the revoked serial:\n{text}"
    );
    ensure!(
        text.contains("Cessation Of Operation"),
        "CRL after restart lacks the reason:\n{text}"
    );

    // The CA itself survived: a new certificate chains to the same root.
    let fresh = ctl.issue("ca1", &[], &["fresh.example.test"])?;
    let fresh_dir = ctl.scratch("fresh")?;
    ctl.cli_ok(&[
        "cert",
        "download",
        str_field(&fresh, "id")?,
        "--out",
        utf8(&fresh_dir)?,
    ])?;
    let out = openssl(&[
        "verify",
        "-CAfile",
        utf8(&before_dir.join("root.pem"))?,
        "-untrusted",
        utf8(&fresh_dir.join("chain.pem"))?,
        utf8(&fresh_dir.join("cert.pem"))?,
    ])?;
    ensure!(
        out.status.success(),
        "certificate issued after restart does not chain to the old root: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // And the revocation is still final.
    let err = ctl.cli_err(&["cert", "revoke", &gone_id, "--reason", "keyCompromise"])?;
    ensure!(err.contains(&gone_id) || err.contains("revoked"), "{err}");
    Ok(())
}

#[test]
fn refuses_to_start_without_its_master_key() -> Result<()> {
    let mut ctl = Controller::start()?;
    ctl.cli_json(&["issuer", "add", "ca1", "--kind", "builtin"])?;
    ctl.issue("ca1", &[], &["sealed.example.test"])?;
    let inventory = ctl.inventory()?;
    ctl.stop()?;

    let key_path = ctl.master_key_path();
    let key = fs::read(&key_path)?;
    fs::remove_file(&key_path)?;
    let (status, stderr) = ctl.start_expecting_failure(&[])?;
    ensure!(!status.success(), "exit status {status}");
    ensure!(
        stderr.to_ascii_lowercase().contains("master key"),
        "stderr does not mention the master key: {stderr}"
    );
    ensure!(
        !key_path.exists(),
        "the controller made a new master key for an existing store"
    );

    // With the key back, everything is there.
    fs::write(&key_path, key)?;
    ctl.restart()?;
    assert_eq!(
        ctl.inventory()?,
        inventory,
        "inventory with the key restored"
    );
    Ok(())
}

#[test]
fn refuses_to_start_with_a_wrong_master_key() -> Result<()> {
    let other = Controller::start()?;
    let mut ctl = Controller::start()?;
    ctl.cli_json(&["issuer", "add", "ca1", "--kind", "builtin"])?;
    ctl.issue("ca1", &[], &["sealed.example.test"])?;
    let inventory = ctl.inventory()?;
    ctl.stop()?;

    let key_path = ctl.master_key_path();
    let key = fs::read(&key_path)?;
    let wrong = fs::read(other.master_key_path())?;
    ensure!(wrong != key, "two controllers made the same master key");
    fs::write(&key_path, &wrong)?;
    let (status, stderr) = ctl.start_expecting_failure(&[])?;
    ensure!(!status.success(), "exit status {status}");
    ensure!(
        stderr.to_ascii_lowercase().contains("master key"),
        "stderr does not mention the master key: {stderr}"
    );
    assert_eq!(
        fs::read(&key_path)?,
        wrong,
        "the controller rewrote the master key file"
    );

    fs::write(&key_path, key)?;
    ctl.restart()?;
    assert_eq!(
        ctl.inventory()?,
        inventory,
        "inventory with the key restored"
    );
    Ok(())
}

#[test]
fn master_key_file_flag_names_the_key() -> Result<()> {
    let mut ctl = Controller::start()?;
    ctl.cli_json(&["issuer", "add", "ca1", "--kind", "builtin"])?;
    let cert = ctl.issue("ca1", &[], &["elsewhere.example.test"])?;
    let cert_id = str_field(&cert, "id")?.to_owned();
    let inventory = ctl.inventory()?;
    ctl.stop()?;

    // Move the key out of the state directory, as with systemd credentials.
    let secrets = ctl.scratch("secrets")?;
    let moved = secrets.join("master.key");
    fs::rename(ctl.master_key_path(), &moved)?;
    ctl.restart_with(&["--master-key-file", utf8(&moved)?])?;
    assert_eq!(
        ctl.inventory()?,
        inventory,
        "inventory with --master-key-file"
    );
    let out = ctl.scratch("download")?;
    ctl.cli_ok(&["cert", "download", &cert_id, "--out", utf8(&out)?])?;
    ensure_key_matches_cert(&out.join("privkey.pem"), &out.join("cert.pem"))?;
    ensure!(
        !ctl.master_key_path().exists(),
        "the controller wrote a master key into the state directory \
         although --master-key-file names one"
    );
    Ok(())
}
