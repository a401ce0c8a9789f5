//! Issue #2, acceptance 2: the whole life of a certificate from the built-in
//! CA, driven through the real CLI and checked with the real `openssl`, the
//! way an operator would check it.

use std::fs;

use anyhow::{ensure, Context, Result};
use certfleet_tests::{
    array, cert_fingerprint, cert_serial, crl_serials, ensure_key_matches_cert, file_mode,
    http_get, ids, normalize_hex, openssl, openssl_ok, pem_blocks, read_pem, str_field, utf8,
    Controller,
};
use serde_json::Value;

const PASSWORD: &str = "correct horse battery staple";

#[test]
fn builtin_certificate_lifecycle() -> Result<()> {
    let ctl = Controller::start()?;

    // Issuer.
    let issuer = ctl.cli_json(&["issuer", "add", "ca1", "--kind", "builtin"])?;
    assert_eq!(issuer["name"], "ca1");
    assert_eq!(issuer["kind"], "builtin");
    let crl_url = str_field(&issuer, "crl_url")?.to_owned();
    assert_eq!(
        crl_url,
        format!("{}/crl/ca1.crl", ctl.runtime().crl_url_base),
        "crl_url of {issuer}"
    );
    let issuers = ctl.cli_json(&["issuer", "list"])?;
    ensure!(
        array(&issuers)?.iter().any(|i| i["name"] == "ca1"),
        "issuer list lacks ca1: {issuers}"
    );

    // Instance.
    let instance = ctl.cli_json(&["instance", "create", "--issuer", "ca1", "--domains", "2"])?;
    let instance_id = str_field(&instance, "id")?.to_owned();
    assert_eq!(instance["state"], "unused", "{instance}");
    assert_eq!(instance["spec"]["issuer"], "ca1", "{instance}");
    assert_eq!(instance["spec"]["max_domains"], 2, "{instance}");
    assert_eq!(instance["spec"]["wildcard"], false, "{instance}");
    assert_eq!(instance["spec"]["validity_days"], 365, "{instance}");
    assert_eq!(instance["certificate"], Value::Null, "{instance}");

    // Application.
    let app = ctl.cli_json(&[
        "cert",
        "apply",
        "--instance",
        &instance_id,
        "--domain",
        "www.example.test",
        "--domain",
        "127.0.0.1",
        "--wait",
    ])?;
    assert_eq!(app["state"], "issued", "{app}");
    assert_eq!(app["instance"], instance_id.as_str(), "{app}");
    let cert_id = str_field(&app, "certificate")?.to_owned();

    let instance = ctl.cli_json(&["instance", "show", &instance_id])?;
    assert_eq!(instance["state"], "issued", "{instance}");
    assert_eq!(instance["certificate"], cert_id.as_str(), "{instance}");

    // The certificate as the controller describes it.
    let cert = ctl.cli_json(&["cert", "show", &cert_id])?;
    assert_eq!(cert["state"], "active", "{cert}");
    assert_eq!(cert["instance"], instance_id.as_str(), "{cert}");
    assert_eq!(cert["issuer"], "ca1", "{cert}");
    let mut domains: Vec<&str> = array(&cert["domains"])?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    domains.sort_unstable();
    assert_eq!(domains, ["127.0.0.1", "www.example.test"], "{cert}");
    let serial = str_field(&cert, "serial")?.to_owned();
    ensure!(
        !serial.is_empty()
            && serial
                .chars()
                .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)),
        "serial is not upper-case hex: {serial:?}"
    );
    let fingerprint = str_field(&cert, "fingerprint")?.to_owned();
    ensure!(
        fingerprint.len() == 64
            && fingerprint
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "fingerprint is not lower-case SHA-256 hex: {fingerprint:?}"
    );
    let listed = ctl.cli_json(&["cert", "list"])?;
    ensure!(
        array(&listed)?.iter().any(|c| c["id"] == cert_id.as_str()),
        "cert list lacks {cert_id}: {listed}"
    );

    // PEM download.
    let pem_dir = ctl.scratch("pem")?;
    ctl.cli_ok(&["cert", "download", &cert_id, "--out", utf8(&pem_dir)?])?;
    let leaf = pem_dir.join("cert.pem");
    let chain = pem_dir.join("chain.pem");
    let fullchain = pem_dir.join("fullchain.pem");
    let key = pem_dir.join("privkey.pem");
    let root = pem_dir.join("root.pem");
    for f in [&leaf, &chain, &fullchain, &key, &root] {
        ensure!(f.is_file(), "cert download did not write {}", f.display());
    }
    assert_eq!(file_mode(&key)?, 0o600, "mode of privkey.pem");

    // The files agree with each other and with `cert show`.
    let leaf_blocks = read_pem(&leaf)?;
    let chain_blocks = read_pem(&chain)?;
    let root_blocks = read_pem(&root)?;
    assert_eq!(leaf_blocks.len(), 1, "cert.pem holds exactly the leaf");
    ensure!(!chain_blocks.is_empty(), "chain.pem holds no certificate");
    ensure!(
        !chain_blocks.contains(&root_blocks[0]),
        "chain.pem should hold the intermediate(s), not the root"
    );
    let mut expected_full = leaf_blocks.clone();
    expected_full.extend(chain_blocks.iter().cloned());
    assert_eq!(
        read_pem(&fullchain)?,
        expected_full,
        "fullchain = leaf + chain"
    );
    assert_eq!(
        pem_blocks(str_field(&cert, "leaf_pem")?),
        leaf_blocks,
        "leaf_pem of cert show vs cert.pem"
    );
    assert_eq!(
        pem_blocks(str_field(&cert, "chain_pem")?),
        chain_blocks,
        "chain_pem of cert show vs chain.pem"
    );
    let key_blocks = read_pem(&key)?;
    ensure!(
        key_blocks.len() == 1 && key_blocks[0].label.ends_with("PRIVATE KEY"),
        "privkey.pem holds one private key: {key_blocks:?}"
    );
    ensure_key_matches_cert(&key, &leaf)?;
    assert_eq!(cert_serial(&leaf)?, normalize_hex(&serial), "serial");
    assert_eq!(cert_fingerprint(&leaf)?, fingerprint, "fingerprint");
    assert_eq!(
        cert_fingerprint(&root)?,
        str_field(&issuer, "root_fingerprint")?
            .replace(':', "")
            .to_ascii_lowercase(),
        "root.pem vs the issuer's root_fingerprint"
    );

    // The chain verifies, for the names it was issued for and no others.
    let verify = |extra: &[&str]| -> Result<std::process::Output> {
        let mut args = vec![
            "verify",
            "-CAfile",
            utf8(&root)?,
            "-untrusted",
            utf8(&chain)?,
            "-purpose",
            "sslserver",
        ];
        args.extend_from_slice(extra);
        args.push(utf8(&leaf)?);
        openssl(&args)
    };
    let out = verify(&[])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains(": OK"),
        "openssl verify: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        verify(&["-verify_hostname", "www.example.test"])?
            .status
            .success(),
        "leaf does not verify for www.example.test"
    );
    ensure!(
        verify(&["-verify_ip", "127.0.0.1"])?.status.success(),
        "leaf does not verify for 127.0.0.1"
    );
    ensure!(
        !verify(&["-verify_hostname", "other.example.test"])?
            .status
            .success(),
        "leaf verifies for a name it was not issued for"
    );

    // The leaf profile (RFC 5280 / CA/B Forum baseline).
    let ext = openssl_ok(&[
        "x509",
        "-in",
        utf8(&leaf)?,
        "-noout",
        "-ext",
        "subjectAltName,extendedKeyUsage,keyUsage,basicConstraints,crlDistributionPoints,\
         authorityKeyIdentifier",
    ])?;
    for needle in [
        "DNS:www.example.test",
        "IP Address:127.0.0.1",
        "TLS Web Server Authentication",
        "Digital Signature",
        "Authority Key Identifier",
        crl_url.as_str(),
    ] {
        ensure!(
            ext.contains(needle),
            "leaf extensions lack {needle:?}:\n{ext}"
        );
    }
    // basicConstraints is optional in a subscriber certificate; if present
    // it must not make the leaf a CA.
    ensure!(!ext.contains("CA:TRUE"), "the leaf is a CA:\n{ext}");
    let subject = openssl_ok(&[
        "x509",
        "-in",
        utf8(&leaf)?,
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
    ])?;
    if let Some(cn) = subject
        .split([',', '\n', '='])
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0].trim() == "CN")
        .map(|w| w[1].trim().to_owned())
    {
        ensure!(
            domains.contains(&cn.as_str()),
            "subject CN {cn:?} is not one of the SANs {domains:?}"
        );
    }
    // Valid now, for about 365 days.
    let day = 86_400;
    ensure!(
        openssl(&[
            "x509",
            "-in",
            utf8(&leaf)?,
            "-noout",
            "-checkend",
            &(364 * day).to_string()
        ])?
        .status
        .success(),
        "leaf expires within 364 days"
    );
    ensure!(
        !openssl(&[
            "x509",
            "-in",
            utf8(&leaf)?,
            "-noout",
            "-checkend",
            &(367 * day).to_string()
        ])?
        .status
        .success(),
        "leaf is valid for more than 367 days"
    );

    // PKCS#12 download, readable by openssl with the password.
    let p12_dir = ctl.scratch("p12")?;
    let password_file = p12_dir.join("password");
    fs::write(&password_file, PASSWORD)?;
    let p12_out = p12_dir.join("out");
    fs::create_dir(&p12_out)?;
    ctl.cli_ok(&[
        "cert",
        "download",
        &cert_id,
        "--out",
        utf8(&p12_out)?,
        "--format",
        "pkcs12",
        "--password-file",
        utf8(&password_file)?,
    ])?;
    let p12 = p12_out.join("cert.p12");
    ensure!(p12.is_file(), "no cert.p12 written");
    assert_eq!(file_mode(&p12)?, 0o600, "mode of cert.p12");
    let passin = format!("file:{}", utf8(&password_file)?);
    let certs_text = pkcs12(&["-in", utf8(&p12)?, "-passin", &passin, "-nokeys"])?;
    ensure!(
        pem_blocks(&certs_text).contains(&leaf_blocks[0]),
        "cert.p12 does not hold the leaf:\n{certs_text}"
    );
    let key_text = pkcs12(&["-in", utf8(&p12)?, "-passin", &passin, "-nocerts", "-nodes"])?;
    let p12_key = p12_dir.join("key.pem");
    fs::write(&p12_key, &key_text)?;
    ensure_key_matches_cert(&p12_key, &leaf)?;
    ensure!(
        !openssl(&[
            "pkcs12",
            "-in",
            utf8(&p12)?,
            "-passin",
            "pass:wrong",
            "-nokeys"
        ])?
        .status
        .success(),
        "cert.p12 opens with a wrong password"
    );

    // Revocation.
    let revoked = ctl.cli_json(&["cert", "revoke", &cert_id, "--reason", "keyCompromise"])?;
    assert_eq!(revoked["state"], "revoked", "{revoked}");
    assert_eq!(revoked["revocation_reason"], "keyCompromise", "{revoked}");
    ensure!(!revoked["revoked_at"].is_null(), "no revoked_at: {revoked}");
    let cert = ctl.cli_json(&["cert", "show", &cert_id])?;
    assert_eq!(cert["state"], "revoked", "{cert}");
    let instance = ctl.cli_json(&["instance", "show", &instance_id])?;
    assert_eq!(instance["state"], "revoked", "{instance}");

    // The CRL served at the URL in the leaf lists it, with the reason.
    let crl_dir = ctl.scratch("crl")?;
    let response = http_get(&crl_url)?;
    assert_eq!(response.status, 200, "GET {crl_url}: {}", response.headers);
    let crl_der = crl_dir.join("served.crl");
    fs::write(&crl_der, &response.body)?;
    let crl_text = openssl_ok(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        utf8(&crl_der)?,
        "-noout",
        "-text",
    ])?;
    ensure!(
        crl_serials(&crl_text).contains(&normalize_hex(&serial)),
        "served CRL does not list serial {serial}:\n{crl_text}"
    );
    ensure!(
        crl_text.contains("Key Compromise"),
        "served CRL lacks the reason Key Compromise:\n{crl_text}"
    );
    // Signed by the leaf's issuer, and openssl now rejects the leaf.
    let bundle = crl_dir.join("ca-bundle.pem");
    fs::write(
        &bundle,
        format!(
            "{}{}",
            fs::read_to_string(&root)?,
            fs::read_to_string(&chain)?
        ),
    )?;
    let crl_verify = openssl_ok(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        utf8(&crl_der)?,
        "-noout",
        "-CAfile",
        utf8(&bundle)?,
    ])?;
    ensure!(
        crl_verify.contains("verify OK"),
        "served CRL signature: {crl_verify}"
    );
    let crl_pem = crl_dir.join("served.pem");
    openssl_ok(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        utf8(&crl_der)?,
        "-out",
        utf8(&crl_pem)?,
    ])?;
    let out = openssl(&[
        "verify",
        "-crl_check",
        "-CRLfile",
        utf8(&crl_pem)?,
        "-CAfile",
        utf8(&root)?,
        "-untrusted",
        utf8(&chain)?,
        utf8(&leaf)?,
    ])?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !out.status.success() && text.contains("revoked"),
        "openssl verify -crl_check should report the leaf revoked: {text}"
    );

    // An unknown issuer's CRL is not found.
    let missing = format!("{}/crl/no-such-issuer.crl", ctl.runtime().crl_url_base);
    assert_eq!(http_get(&missing)?.status, 404, "GET {missing}");

    // `ca crl` writes the same list, in PEM and in DER.
    let ca_crl_pem = crl_dir.join("cli.pem");
    ctl.cli_ok(&[
        "ca",
        "crl",
        "--out",
        utf8(&ca_crl_pem)?,
        "--issuer",
        "ca1",
        "--format",
        "pem",
    ])?;
    let text = openssl_ok(&["crl", "-in", utf8(&ca_crl_pem)?, "-noout", "-text"])?;
    ensure!(
        crl_serials(&text).contains(&normalize_hex(&serial)),
        "`ca crl --format pem` does not list {serial}:\n{text}"
    );
    let ca_crl_der = crl_dir.join("cli.der");
    ctl.cli_ok(&[
        "ca",
        "crl",
        "--out",
        utf8(&ca_crl_der)?,
        "--issuer",
        "ca1",
        "--format",
        "der",
    ])?;
    let text = openssl_ok(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        utf8(&ca_crl_der)?,
        "-noout",
        "-text",
    ])?;
    ensure!(
        crl_serials(&text).contains(&normalize_hex(&serial)) && text.contains("Key Compromise"),
        "`ca crl --format der` does not list {serial} as Key Compromise:\n{text}"
    );

    // The operator's actions were audited.
    let audit = ctl.cli_json(&["audit", "list"])?;
    let entries = array(&audit)?;
    for e in entries {
        for key in ["id", "at", "actor", "action", "target", "outcome", "detail"] {
            ensure!(e.get(key).is_some(), "audit entry lacks {key:?}: {e}");
        }
    }
    // The revocation, and each of the two key releases (PEM and PKCS#12
    // downloads), recorded against the certificate.
    let on_cert = |words: &[&str]| {
        entries
            .iter()
            .filter(|e| {
                e["target"] == cert_id.as_str()
                    && e["action"].as_str().is_some_and(|a| {
                        let a = a.to_ascii_lowercase();
                        words.iter().any(|w| a.contains(w))
                    })
            })
            .count()
    };
    ensure!(
        on_cert(&["revoke"]) >= 1,
        "no audit entry for the revocation: {audit}"
    );
    ensure!(
        on_cert(&["release", "download"]) >= 2,
        "fewer than two audited key releases: {audit}"
    );
    Ok(())
}

/// `openssl pkcs12 ARGS`, retried with `-legacy` for PKCS#12 files that use
/// algorithms OpenSSL 3 only reads through its legacy provider.
fn pkcs12(args: &[&str]) -> Result<String> {
    let mut full = vec!["pkcs12"];
    full.extend_from_slice(args);
    let out = openssl(&full)?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    full.push("-legacy");
    let legacy = openssl(&full)?;
    ensure!(
        legacy.status.success(),
        "openssl pkcs12 cannot read the file, with or without -legacy: {} / {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&legacy.stderr)
    );
    String::from_utf8(legacy.stdout).context("openssl pkcs12 printed non-UTF-8")
}

/// The instance's spec decides the key type and lifetime of what is issued,
/// and `cert list --expiring-within` finds the short-lived one.
#[test]
fn instance_spec_shapes_the_certificate() -> Result<()> {
    let ctl = Controller::start()?;
    ctl.cli_json(&["issuer", "add", "ca1", "--kind", "builtin"])?;
    let long = ctl.issue("ca1", &[], &["long.example.test"])?;
    let short = ctl.issue(
        "ca1",
        &[
            "--key",
            "ecdsa-p384",
            "--validity-days",
            "10",
            "--type",
            "ov",
        ],
        &["short.example.test"],
    )?;
    let rsa = ctl.issue("ca1", &["--key", "rsa-3072"], &["rsa.example.test"])?;
    assert_eq!(short["key"], "ecdsa-p384", "{short}");
    assert_eq!(rsa["key"], "rsa-3072", "{rsa}");
    let instance = ctl.cli_json(&["instance", "show", str_field(&short, "instance")?])?;
    assert_eq!(instance["spec"]["validation"], "ov", "{instance}");
    assert_eq!(instance["spec"]["validity_days"], 10, "{instance}");
    assert_eq!(instance["spec"]["key"], "ecdsa-p384", "{instance}");

    let dir = ctl.scratch("certs")?;
    let text = |cert: &Value, name: &str| -> Result<String> {
        let path = dir.join(name);
        fs::write(&path, str_field(cert, "leaf_pem")?)?;
        openssl_ok(&["x509", "-in", utf8(&path)?, "-noout", "-text"])
    };
    let short_text = text(&short, "short.pem")?;
    ensure!(
        short_text.contains("P-384") || short_text.contains("secp384r1"),
        "ecdsa-p384 leaf without a P-384 key:\n{short_text}"
    );
    let rsa_text = text(&rsa, "rsa.pem")?;
    ensure!(
        rsa_text.contains("(3072 bit)"),
        "rsa-3072 leaf without a 3072-bit key:\n{rsa_text}"
    );
    let short_path = dir.join("short.pem");
    let day = 86_400;
    ensure!(
        openssl(&[
            "x509",
            "-in",
            utf8(&short_path)?,
            "-noout",
            "-checkend",
            &(9 * day).to_string()
        ])?
        .status
        .success()
            && !openssl(&[
                "x509",
                "-in",
                utf8(&short_path)?,
                "-noout",
                "-checkend",
                &(11 * day).to_string()
            ])?
            .status
            .success(),
        "a 10-day certificate is not valid for about 10 days"
    );

    let expiring = ids(&ctl.cli_json(&["cert", "list", "--expiring-within", "30d"])?)?;
    let short_id = str_field(&short, "id")?.to_owned();
    let long_id = str_field(&long, "id")?.to_owned();
    ensure!(
        expiring.contains(&short_id),
        "--expiring-within 30d lacks the 10-day certificate: {expiring:?}"
    );
    ensure!(
        !expiring.contains(&long_id),
        "--expiring-within 30d lists a 365-day certificate: {expiring:?}"
    );
    let all = ids(&ctl.cli_json(&["cert", "list", "--expiring-within", "400d"])?)?;
    ensure!(
        all.contains(&short_id) && all.contains(&long_id),
        "--expiring-within 400d: {all:?}"
    );
    Ok(())
}
