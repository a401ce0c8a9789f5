//! End-to-end: a real controller and agent installing into a real Apache
//! httpd (its own ServerRoot and port): separate cert, chain and key files,
//! graceful reload, the served certificate checked with `openssl s_client`,
//! and a failing `apache2 -t` rolled back with the old certificate still
//! served.

use anyhow::{ensure, Result};
use certfleet_tests::fleet::served_fingerprint;
use certfleet_tests::servers::{
    argv_toml, controller_with_issuer, deploy, issue, running_agent, served_chain_len, Apache,
};
use certfleet_tests::{cert_fingerprint, ensure_key_matches_cert, file_mode, read_pem};

const NAME: &str = "www.example.test";

#[test]
fn apache_serves_the_deployed_certificate_and_a_failing_config_test_rolls_back() -> Result<()> {
    let ctl = controller_with_issuer()?;
    let apache = Apache::start(NAME)?;
    let original = served_fingerprint(apache.port, NAME)?;
    let parent = apache.pid()?;
    let _agent = running_agent(&ctl, &apache.target(NAME, "")?)?;

    let (cert1, fp1) = issue(&ctl, NAME)?;
    let (ok, d) = deploy(&ctl, &cert1, "apache")?;
    ensure!(ok && d["status"] == "installed", "{d}");
    assert_eq!(served_fingerprint(apache.port, NAME)?, fp1);
    assert_ne!(original, fp1);
    // Graceful: the same parent process, now serving the new certificate.
    assert_eq!(apache.pid()?, parent);

    // Separate files: the leaf alone, the intermediate alone, the key 0600.
    let tls = &apache.tls_dir;
    let cert_blocks = read_pem(&tls.join("cert.pem"))?;
    let chain_blocks = read_pem(&tls.join("chain.pem"))?;
    ensure!(cert_blocks.len() == 1, "cert.pem holds only the leaf");
    ensure!(
        !chain_blocks.is_empty() && !chain_blocks.contains(&cert_blocks[0]),
        "chain.pem holds the issuing chain, not the leaf"
    );
    assert_eq!(cert_fingerprint(&tls.join("cert.pem"))?, fp1);
    assert_eq!(file_mode(&tls.join("key.pem"))?, 0o600);
    assert_eq!(file_mode(&tls.join("cert.pem"))?, 0o644);
    ensure_key_matches_cert(&tls.join("key.pem"), &tls.join("cert.pem"))?;

    // `apache2 -t` now fails: the install is rolled back before any reload.
    apache.break_config()?;
    let (cert2, fp2) = issue(&ctl, NAME)?;
    let (ok, d) = deploy(&ctl, &cert2, "apache")?;
    ensure!(!ok, "a deploy whose config test fails must not complete");
    assert_eq!(d["status"], "rolled_back", "{d}");
    assert_eq!(d["installed"], cert1.as_str());
    let err = d["last_error"].as_str().unwrap_or_default();
    ensure!(
        err.contains("config test") && err.contains("ThisIsNotADirective"),
        "{err}"
    );
    assert_eq!(served_fingerprint(apache.port, NAME)?, fp1);
    assert_ne!(fp1, fp2);
    assert_eq!(cert_fingerprint(&tls.join("cert.pem"))?, fp1);
    ensure_key_matches_cert(&tls.join("key.pem"), &tls.join("cert.pem"))?;
    Ok(())
}

#[test]
fn apache_fullchain_layout_reloads_by_signal_to_the_parent() -> Result<()> {
    let ctl = controller_with_issuer()?;
    let apache = Apache::start_fullchain(NAME)?;
    let parent = apache.pid()?;
    // No reload_command: `pid_file` makes the agent send SIGUSR1 (graceful).
    let body = format!(
        "allowed_dirs = [\"{tls}\"]\n[labels]\nrole = \"web\"\n\
         [[target]]\nname = \"apache\"\nkind = \"apache\"\ndomains = [\"{NAME}\"]\n\
         fullchain = \"{tls}/fullchain.pem\"\nkey = \"{tls}/key.pem\"\n\
         verify = \"127.0.0.1:{port}\"\npid_file = \"{pid}\"\ntest_command = [{test}]\n",
        tls = apache.tls_dir.display(),
        port = apache.port,
        pid = apache.pid_file.display(),
        test = argv_toml(&apache.ctl(&["-t"])?),
    );
    let _agent = running_agent(&ctl, &body)?;
    assert_eq!(served_chain_len(apache.port, NAME)?, 1);

    let (cert, fp) = issue(&ctl, NAME)?;
    let (ok, d) = deploy(&ctl, &cert, "apache")?;
    ensure!(ok && d["status"] == "installed", "{d}");
    assert_eq!(served_fingerprint(apache.port, NAME)?, fp);
    // Leaf and intermediate, both from fullchain.pem; same parent process.
    assert_eq!(served_chain_len(apache.port, NAME)?, 2);
    assert_eq!(apache.pid()?, parent);
    ensure_key_matches_cert(
        &apache.tls_dir.join("key.pem"),
        &apache.tls_dir.join("fullchain.pem"),
    )?;
    Ok(())
}
