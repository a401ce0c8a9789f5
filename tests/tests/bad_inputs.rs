//! Issue #2, acceptance 4: bad input from an operator or a peer is refused
//! with a clear error (non-zero exit, `error:` on stderr) and changes nothing.

use std::fs;

use anyhow::{ensure, Result};
use certfleet_tests::{
    array, expect_cli_error, ids, run_with_timeout, str_field, utf8, wait_for, Controller,
    CLI_TIMEOUT,
};
use serde_json::Value;

/// Whether `stderr` mentions any of `words` (case-insensitive).
fn mentions_any(stderr: &str, words: &[&str]) -> bool {
    let lower = stderr.to_lowercase();
    words.iter().any(|w| lower.contains(&w.to_lowercase()))
}

/// An id of the same shape as `id` that names nothing.
fn sibling_id(id: &str) -> String {
    let mut chars: Vec<char> = id.chars().collect();
    if let Some(last) = chars.last_mut() {
        *last = if *last == '0' { '1' } else { '0' };
    }
    let candidate: String = chars.into_iter().collect();
    if candidate == id {
        format!("{id}0")
    } else {
        candidate
    }
}

/// Every id that exists in an inventory.
fn known_ids(inventory: &Value) -> Result<Vec<String>> {
    let mut all = ids(&inventory["instances"])?;
    all.extend(ids(&inventory["certs"])?);
    Ok(all)
}

#[test]
fn unknown_issuer_instance_and_certificate() -> Result<()> {
    let ctl = Controller::start()?;
    let cert = ctl.issue_default()?;
    let cert_id = str_field(&cert, "id")?.to_owned();
    let instance_id = str_field(&cert, "instance")?.to_owned();
    let before = ctl.inventory()?;
    let known = known_ids(&before)?;

    let err = ctl.cli_err(&["instance", "create", "--issuer", "no-such-issuer"])?;
    ensure!(err.contains("no-such-issuer"), "{err}");

    let mut missing_instances = vec!["no-such-instance".to_owned(), sibling_id(&instance_id)];
    missing_instances.retain(|id| !known.contains(id));
    for id in &missing_instances {
        let err = ctl.cli_err(&["instance", "show", id])?;
        ensure!(err.contains(id.as_str()), "{err}");
        let err = ctl.cli_err(&[
            "cert",
            "apply",
            "--instance",
            id,
            "--domain",
            "x.example.test",
        ])?;
        ensure!(err.contains(id.as_str()), "{err}");
    }

    let mut missing_certs = vec!["no-such-cert".to_owned(), sibling_id(&cert_id)];
    missing_certs.retain(|id| !known.contains(id));
    let out = ctl.scratch("download")?;
    for id in &missing_certs {
        for args in [
            vec!["cert", "show", id],
            vec!["cert", "revoke", id, "--reason", "keyCompromise"],
            vec!["cert", "download", id, "--out", utf8(&out)?],
        ] {
            let err = ctl.cli_err(&args)?;
            ensure!(err.contains(id.as_str()), "{args:?}: {err}");
        }
    }
    ensure!(
        fs::read_dir(&out)?.next().is_none(),
        "a failed download wrote files"
    );
    let err = ctl.cli_err(&[
        "ca",
        "crl",
        "--out",
        utf8(&out.join("x.crl"))?,
        "--issuer",
        "no-such-issuer",
    ])?;
    ensure!(err.contains("no-such-issuer"), "{err}");

    assert_eq!(ctl.inventory()?, before, "inventory after refused commands");
    Ok(())
}

#[test]
fn domain_count_and_wildcard_follow_the_instance() -> Result<()> {
    let ctl = Controller::start()?;
    ctl.cli_json(&["issuer", "add", "ca1", "--kind", "builtin"])?;
    let plain = ctl.cli_json(&["instance", "create", "--issuer", "ca1", "--domains", "1"])?;
    let plain_id = str_field(&plain, "id")?.to_owned();
    let before = ctl.inventory()?;

    let err = ctl.cli_err(&[
        "cert",
        "apply",
        "--instance",
        &plain_id,
        "--domain",
        "a.example.test",
        "--domain",
        "b.example.test",
    ])?;
    ensure!(
        mentions_any(&err, &["domain", "name"]),
        "too many domains: {err}"
    );

    let err = ctl.cli_err(&[
        "cert",
        "apply",
        "--instance",
        &plain_id,
        "--domain",
        "*.example.test",
    ])?;
    ensure!(
        mentions_any(&err, &["wildcard"]),
        "wildcard on a plain instance: {err}"
    );

    assert_eq!(
        ctl.inventory()?,
        before,
        "inventory after refused applications"
    );
    let plain = ctl.cli_json(&["instance", "show", &plain_id])?;
    assert_eq!(plain["state"], "unused", "{plain}");
    assert_eq!(plain["application"], Value::Null, "{plain}");

    // The same wildcard is fine on a wildcard instance.
    let cert = ctl.issue("ca1", &["--wildcard"], &["*.example.test"])?;
    assert_eq!(cert["state"], "active", "{cert}");
    assert_eq!(
        cert["domains"],
        serde_json::json!(["*.example.test"]),
        "{cert}"
    );
    Ok(())
}

#[test]
fn malformed_domain_names() -> Result<()> {
    let ctl = Controller::start()?;
    ctl.cli_json(&["issuer", "add", "ca1", "--kind", "builtin"])?;
    let instance = ctl.cli_json(&["instance", "create", "--issuer", "ca1", "--domains", "1"])?;
    let instance_id = str_field(&instance, "id")?.to_owned();
    let before = ctl.inventory()?;

    // 4 labels of 63 plus ".test": 4 * 64 + 4 = 260 characters, every label
    // valid on its own.
    let label = "a".repeat(63);
    let too_long = format!("{label}.{label}.{label}.{label}.test");
    assert!(too_long.len() > 253);
    let long_label = format!("{}.example.test", "b".repeat(64));
    for name in [
        "a..example.com",
        too_long.as_str(),
        long_label.as_str(),
        "my_host.example.com",
        "bücher.example",
        "",
        "-dash.example.com",
        "www.example.com.evil/../x",
    ] {
        let err = ctl.cli_err(&[
            "cert",
            "apply",
            "--instance",
            &instance_id,
            "--domain",
            name,
        ])?;
        ensure!(
            mentions_any(&err, &["domain", "name", "label"])
                || (!name.is_empty() && err.contains(name)),
            "refusal of {name:?} does not say what is wrong: {err}"
        );
    }

    assert_eq!(ctl.inventory()?, before, "inventory after malformed names");
    let instance = ctl.cli_json(&["instance", "show", &instance_id])?;
    assert_eq!(instance["state"], "unused", "{instance}");
    assert_eq!(instance["application"], Value::Null, "{instance}");
    Ok(())
}

#[test]
fn one_application_per_instance() -> Result<()> {
    let ctl = Controller::start()?;
    let cert = ctl.issue_default()?;
    let issued_instance = str_field(&cert, "instance")?.to_owned();
    let before = ctl.inventory()?;

    // An instance that already has its certificate.
    let err = ctl.cli_err(&[
        "cert",
        "apply",
        "--instance",
        &issued_instance,
        "--domain",
        "again.example.test",
        "--wait",
    ])?;
    ensure!(
        err.contains(&issued_instance),
        "error does not name the instance: {err}"
    );
    assert_eq!(
        ctl.inventory()?,
        before,
        "inventory after a second application"
    );

    // An instance with an application in flight (or, if the built-in CA was
    // faster than the CLI, already issued: refused either way).
    let instance = ctl.cli_json(&["instance", "create", "--issuer", "ca1"])?;
    let instance_id = str_field(&instance, "id")?.to_owned();
    let first = ctl.cli_json(&[
        "cert",
        "apply",
        "--instance",
        &instance_id,
        "--domain",
        "first.example.test",
    ])?;
    let err = ctl.cli_err(&[
        "cert",
        "apply",
        "--instance",
        &instance_id,
        "--domain",
        "second.example.test",
    ])?;
    ensure!(
        err.contains(&instance_id),
        "error does not name the instance: {err}"
    );

    let instance = wait_for(CLI_TIMEOUT, "the first application to be issued", || {
        let instance = ctl.cli_json(&["instance", "show", &instance_id])?;
        Ok((instance["state"] == "issued").then_some(instance))
    })?;
    assert_eq!(instance["application"], first["id"], "{instance}");
    let certs = ctl.cli_json(&["cert", "list"])?;
    let on_instance: Vec<&Value> = array(&certs)?
        .iter()
        .filter(|c| c["instance"] == instance_id.as_str())
        .collect();
    assert_eq!(
        on_instance.len(),
        1,
        "certificates on {instance_id}: {certs}"
    );
    assert_eq!(
        on_instance[0]["domains"],
        serde_json::json!(["first.example.test"]),
        "{certs}"
    );
    Ok(())
}

#[test]
fn revoking_twice() -> Result<()> {
    let ctl = Controller::start()?;
    let cert = ctl.issue_default()?;
    let cert_id = str_field(&cert, "id")?.to_owned();
    let revoked = ctl.cli_json(&["cert", "revoke", &cert_id, "--reason", "superseded"])?;
    assert_eq!(revoked["state"], "revoked", "{revoked}");
    let before = ctl.inventory()?;

    let err = ctl.cli_err(&["cert", "revoke", &cert_id, "--reason", "keyCompromise"])?;
    ensure!(mentions_any(&err, &["revoked", &cert_id]), "{err}");
    let err = ctl.cli_err(&["cert", "revoke", &cert_id, "--reason", "not-a-reason"])?;
    ensure!(mentions_any(&err, &["reason", "not-a-reason"]), "{err}");

    assert_eq!(
        ctl.inventory()?,
        before,
        "inventory after a second revocation"
    );
    let after = ctl.cli_json(&["cert", "show", &cert_id])?;
    assert_eq!(after["revocation_reason"], "superseded", "{after}");
    assert_eq!(after["revoked_at"], revoked["revoked_at"], "{after}");
    Ok(())
}

#[test]
fn bad_download_requests() -> Result<()> {
    let ctl = Controller::start()?;
    let cert = ctl.issue_default()?;
    let cert_id = str_field(&cert, "id")?.to_owned();
    let out = ctl.scratch("out")?;

    // PKCS#12 needs a password file.
    ctl.cli_err(&[
        "cert",
        "download",
        &cert_id,
        "--out",
        utf8(&out)?,
        "--format",
        "pkcs12",
    ])?;
    let missing = out.join("no-such-password-file");
    ctl.cli_err(&[
        "cert",
        "download",
        &cert_id,
        "--out",
        utf8(&out)?,
        "--format",
        "pkcs12",
        "--password-file",
        utf8(&missing)?,
    ])?;
    ctl.cli_err(&[
        "cert",
        "download",
        &cert_id,
        "--out",
        utf8(&out)?,
        "--format",
        "zip",
    ])?;
    ensure!(
        fs::read_dir(&out)?.next().is_none(),
        "a refused download wrote files"
    );
    Ok(())
}

#[test]
fn cli_without_a_credential() -> Result<()> {
    let ctl = Controller::start()?;
    let before = ctl.inventory()?;
    let home = ctl.scratch("empty-home")?;
    let mut cmd = ctl.cli_command();
    cmd.env("HOME", &home)
        .env("XDG_CONFIG_HOME", &home)
        .arg("--controller")
        .arg(ctl.listen().to_string())
        .args(["issuer", "add", "sneaky", "--kind", "builtin"]);
    let out = run_with_timeout(&mut cmd, CLI_TIMEOUT)?;
    let err = expect_cli_error(&out, "certfleet issuer add without --credential")?;
    ensure!(mentions_any(&err, &["credential"]), "{err}");
    assert_eq!(
        ctl.inventory()?,
        before,
        "inventory after an unauthenticated command"
    );
    Ok(())
}

#[test]
fn credential_of_another_controller() -> Result<()> {
    let ctl = Controller::start()?;
    let other = Controller::start()?;
    let before = ctl.inventory()?;
    for args in [
        vec!["issuer", "add", "sneaky", "--kind", "builtin"],
        vec!["issuer", "list"],
    ] {
        let mut cmd = ctl.cli_command();
        cmd.arg("--controller")
            .arg(ctl.listen().to_string())
            .arg("--credential")
            .arg(other.credential_path())
            .args(&args);
        let out = run_with_timeout(&mut cmd, CLI_TIMEOUT)?;
        expect_cli_error(
            &out,
            &format!("certfleet {} with a foreign credential", args.join(" ")),
        )?;
    }
    // Also through the environment variables the CLI documents.
    let mut cmd = ctl.cli_command();
    cmd.env("CERTFLEET_CONTROLLER", ctl.listen().to_string())
        .env("CERTFLEET_CREDENTIAL", other.credential_path())
        .args(["issuer", "add", "sneaky", "--kind", "builtin"]);
    let out = run_with_timeout(&mut cmd, CLI_TIMEOUT)?;
    expect_cli_error(
        &out,
        "certfleet issuer add with a foreign credential from the environment",
    )?;

    assert_eq!(
        ctl.inventory()?,
        before,
        "inventory after foreign credentials"
    );
    // The same environment variables with the right credential work.
    let mut cmd = ctl.cli_command();
    cmd.env("CERTFLEET_CONTROLLER", ctl.listen().to_string())
        .env("CERTFLEET_CREDENTIAL", ctl.credential_path())
        .args(["--output", "json", "issuer", "list"]);
    let out = run_with_timeout(&mut cmd, CLI_TIMEOUT)?;
    ensure!(
        out.status.success(),
        "CERTFLEET_CONTROLLER / CERTFLEET_CREDENTIAL: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
