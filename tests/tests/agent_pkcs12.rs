//! End-to-end: a `pkcs12` target written by a real agent and read back by
//! `openssl pkcs12` with the password from the host's own password file;
//! and a missing password file failing the install before anything is
//! written.

use std::fs;
use std::path::Path;

use anyhow::{ensure, Result};
use certfleet_tests::servers::{controller_with_issuer, deploy, issue, running_agent};
use certfleet_tests::{cert_fingerprint, ensure_key_matches_cert, file_mode, openssl_ok, utf8};

const NAME: &str = "app.example.test";

fn pkcs12_section(target: &str, dir: &Path, password_file: &Path, extra: &str) -> String {
    format!(
        "[[target]]\nname = \"{target}\"\nkind = \"pkcs12\"\ndomains = [\"{NAME}\"]\n\
         keystore = \"{d}/{target}.p12\"\npassword_file = \"{p}\"\nalias = \"tomcat\"\n{extra}",
        d = dir.display(),
        p = password_file.display()
    )
}

#[test]
fn keystore_reads_back_with_openssl_and_a_missing_password_file_writes_nothing() -> Result<()> {
    let ctl = controller_with_issuer()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("keystores");
    let secrets = tmp.path().join("secrets");
    fs::create_dir_all(&dir)?;
    fs::create_dir_all(&secrets)?;
    let password = secrets.join("tomcat.pass");
    fs::write(&password, "correct horse battery staple\n")?;
    // The "reload" copies the keystore, as a server would load it.
    let reload = format!(
        "reload_command = [\"/bin/cp\", \"{d}/app.p12\", \"{d}/loaded.p12\"]\nmode = \"0640\"\n",
        d = dir.display()
    );
    let body = format!(
        "allowed_dirs = [\"{}\"]\n[labels]\nrole = \"web\"\n{}{}",
        dir.display(),
        pkcs12_section("app", &dir, &password, &reload),
        pkcs12_section("nopass", &dir, &secrets.join("missing.pass"), ""),
    );
    let _agent = running_agent(&ctl, &body)?;

    let (cert, fp) = issue(&ctl, NAME)?;
    let (ok, d) = deploy(&ctl, &cert, "app")?;
    ensure!(ok && d["status"] == "installed", "{d}");
    let ks = dir.join("app.p12");
    assert_eq!(file_mode(&ks)?, 0o640);
    let passin = format!("file:{}", utf8(&password)?);
    // Leaf, chain and key come back out with the host's password.
    let leaf = tmp.path().join("leaf.pem");
    let key = tmp.path().join("key.pem");
    openssl_ok(&[
        "pkcs12",
        "-in",
        utf8(&ks)?,
        "-passin",
        &passin,
        "-nokeys",
        "-clcerts",
        "-out",
        utf8(&leaf)?,
    ])?;
    openssl_ok(&[
        "pkcs12",
        "-in",
        utf8(&ks)?,
        "-passin",
        &passin,
        "-nocerts",
        "-nodes",
        "-out",
        utf8(&key)?,
    ])?;
    assert_eq!(cert_fingerprint(&leaf)?, fp);
    ensure_key_matches_cert(&key, &leaf)?;
    let all = openssl_ok(&["pkcs12", "-in", utf8(&ks)?, "-passin", &passin, "-nokeys"])?;
    ensure!(
        all.matches("BEGIN CERTIFICATE").count() == 2,
        "leaf and intermediate: {all}"
    );
    let key_text = fs::read_to_string(&key)?;
    ensure!(
        key_text.contains("friendlyName: tomcat"),
        "the key entry's alias: {key_text}"
    );
    // Modern protection, no legacy RC2/3DES.
    let info = certfleet_tests::openssl(&[
        "pkcs12",
        "-in",
        utf8(&ks)?,
        "-passin",
        &passin,
        "-info",
        "-noout",
    ])?;
    let info = format!(
        "{}{}",
        String::from_utf8_lossy(&info.stdout),
        String::from_utf8_lossy(&info.stderr)
    );
    ensure!(
        info.contains("PBES2") && info.contains("AES-256-CBC") && !info.contains("RC2"),
        "{info}"
    );
    // The wrong password does not open it.
    let wrong = secrets.join("wrong.pass");
    fs::write(&wrong, "nope\n")?;
    let out = certfleet_tests::openssl(&[
        "pkcs12",
        "-in",
        utf8(&ks)?,
        "-passin",
        &format!("file:{}", utf8(&wrong)?),
        "-noout",
    ])?;
    ensure!(
        !out.status.success(),
        "a wrong password must not open the keystore"
    );
    // The reload command ran after the keystore was in place.
    assert_eq!(fs::read(dir.join("loaded.p12"))?, fs::read(&ks)?);

    // A target whose password file is missing: failed, clear, nothing written.
    let (ok, d) = deploy(&ctl, &cert, "nopass")?;
    ensure!(!ok, "a missing password file must fail the deploy");
    assert_eq!(d["status"], "failed", "{d}");
    let err = d["last_error"].as_str().unwrap_or_default();
    ensure!(
        err.contains("missing.pass") && err.contains("password_file"),
        "{err}"
    );
    ensure!(!dir.join("nopass.p12").exists(), "no keystore written");
    let leftovers: Vec<_> = fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("nopass"))
        .collect();
    ensure!(leftovers.is_empty(), "{leftovers:?}");
    Ok(())
}

#[test]
fn check_config_names_the_file_and_key_of_each_problem() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let check = |body: &str| -> Result<(bool, String)> {
        let config = dir.join("agent.toml");
        fs::write(
            &config,
            format!(
                "state_dir = \"{}/state\"\nallowed_dirs = [\"{}\"]\n{body}",
                dir.display(),
                dir.display()
            ),
        )?;
        let out = certfleet_tests::run_with_timeout(
            std::process::Command::new(certfleet_tests::fleet::agent_bin()).args([
                "check-config",
                "--config",
                utf8(&config)?,
            ]),
            std::time::Duration::from_secs(20),
        )?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    };
    let pass = dir.join("ks.pass");
    let good = pkcs12_section("app", dir, &pass, "");
    // The password file does not exist yet.
    let (ok, text) = check(&good)?;
    ensure!(
        !ok && text.contains("agent.toml")
            && text.contains("target[0] (app).password_file")
            && text.contains("ks.pass"),
        "{text}"
    );
    fs::write(&pass, "pw\n")?;
    let (ok, text) = check(&good)?;
    ensure!(ok && text.contains("ok (1 target(s): app)"), "{text}");
    // Missing password_file, an empty hook, a bad timeout.
    for (body, key) in [
        (
            good.replace(&format!("password_file = \"{}\"\n", pass.display()), ""),
            "(app).password_file",
        ),
        (format!("{good}post_install = []\n"), "(app).post_install"),
        (
            format!("{good}hook_timeout = \"forever\"\n"),
            "(app).hook_timeout",
        ),
    ] {
        let (ok, text) = check(&body)?;
        ensure!(
            !ok && text.contains("agent.toml") && text.contains(key),
            "{key}: {text}"
        );
    }
    Ok(())
}
