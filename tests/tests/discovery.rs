//! End-to-end: discovery of certificates configured by hand (issue 8) in
//! real nginx, Apache and HAProxy configurations, the fleet inventory, and
//! adopting a discovered certificate so certfleet renews it.
//!
//! What is asserted is what an operator checks: the expiry `openssl x509`
//! reads from the same file, the certificate nginx actually serves, and
//! `certfleet inventory list`.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use certfleet_tests::fleet::{
    agent_bin, free_port, parse_rfc3339, self_signed_cert, served_fingerprint, token,
    wait_connected, wait_served, Agent, Nginx,
};
use certfleet_tests::{
    cert_fingerprint, openssl_ok, run_with_timeout, str_field, utf8, Controller,
};
use serde_json::Value;
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(20);

/// The expiry of a certificate file as openssl reads it (seconds since the
/// epoch).
fn openssl_not_after(cert: &Path) -> Result<i64> {
    let out = openssl_ok(&[
        "x509",
        "-noout",
        "-enddate",
        "-dateopt",
        "iso_8601",
        "-in",
        utf8(cert)?,
    ])?;
    let text = out
        .trim()
        .strip_prefix("notAfter=")
        .ok_or_else(|| anyhow!("unexpected openssl output {out:?}"))?;
    parse_rfc3339(&text.replacen(' ', "T", 1))
}

/// `inventory list --json` (with extra arguments).
fn inventory(controller: &Controller, extra: &[&str]) -> Result<Value> {
    let mut args = vec!["inventory", "list", "--json"];
    args.extend_from_slice(extra);
    let out = controller.cli_ok(&args)?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

/// The inventory item for `path`, once the agents reported it.
fn wait_item(controller: &Controller, path: &Path) -> Result<Value> {
    let path = utf8(path)?.to_owned();
    let deadline = Instant::now() + WAIT;
    loop {
        let list = inventory(controller, &[])?;
        if let Some(i) = items(&list)
            .into_iter()
            .find(|i| i["entry"]["path"] == path)
        {
            return Ok(i);
        }
        if Instant::now() >= deadline {
            bail!("{path} never appeared in the inventory: {list:#}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Enroll and start an agent with `config_body`.
fn start_agent(controller: &Controller, config_body: &str) -> Result<Agent> {
    let mut agent = Agent::new(controller, config_body)?;
    let (t, pin) = token(controller, &[])?;
    agent.enroll(controller, &t, &pin)?;
    agent.start()?;
    let id = agent.id.clone().unwrap_or_default();
    wait_connected(controller, &id, true, WAIT)?;
    Ok(agent)
}

fn toml_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An Apache ServerRoot with one TLS virtual host for `name`, serving
/// `cert`; returns the main config. The server is not started: `apache2 -t`
/// reads the same files.
fn apache_config(
    root: &Path,
    name: &str,
    cert: &Path,
    key: &Path,
    chain: Option<&Path>,
) -> Result<PathBuf> {
    let modules = "/usr/lib/apache2/modules";
    fs::create_dir_all(root.join("sites"))?;
    fs::create_dir_all(root.join("logs"))?;
    let conf = root.join("httpd.conf");
    fs::write(
        &conf,
        format!(
            "ServerRoot {root}\n\
             PidFile {root}/httpd.pid\n\
             ErrorLog {root}/logs/error.log\n\
             LoadModule mpm_event_module {modules}/mod_mpm_event.so\n\
             LoadModule authz_core_module {modules}/mod_authz_core.so\n\
             LoadModule socache_shmcb_module {modules}/mod_socache_shmcb.so\n\
             LoadModule ssl_module {modules}/mod_ssl.so\n\
             Listen 127.0.0.1:{port}\n\
             ServerName localhost\n\
             IncludeOptional sites/*.conf\n",
            root = root.display(),
            port = free_port()?,
        ),
    )?;
    fs::write(
        root.join("sites/site.conf"),
        format!(
            "<VirtualHost 127.0.0.1:*>\n\
             \x20   ServerName {name}\n\
             \x20   SSLEngine on\n\
             \x20   SSLCertificateFile {cert}\n\
             \x20   SSLCertificateKeyFile {key}\n\
             {chain}\
             </VirtualHost>\n",
            cert = cert.display(),
            key = key.display(),
            chain = chain
                .map(|c| format!("    SSLCertificateChainFile {}\n", c.display()))
                .unwrap_or_default(),
        ),
    )?;
    let check = run_with_timeout(
        std::process::Command::new("/usr/sbin/apache2").args(["-f", utf8(&conf)?, "-t"]),
        WAIT,
    )?;
    ensure!(
        check.status.success(),
        "apache2 -t refuses the test config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    Ok(conf)
}

/// Combined PEM (certificate then key), as HAProxy reads it.
fn combined(dir: &Path, name: &str, days: u32) -> Result<PathBuf> {
    let cert = dir.join(format!("{name}.crt.tmp"));
    let key = dir.join(format!("{name}.key.tmp"));
    self_signed_cert(&cert, &key, &[name], days)?;
    let pem = dir.join(format!("{name}.pem"));
    fs::write(
        &pem,
        format!(
            "{}{}",
            fs::read_to_string(&cert)?,
            fs::read_to_string(&key)?
        ),
    )?;
    fs::remove_file(cert)?;
    fs::remove_file(key)?;
    Ok(pem)
}

fn assert_discovered(item: &Value, file: &Path, source: &str, site: &str) -> Result<()> {
    let e = &item["entry"];
    ensure!(e["error"].is_null(), "unexpected error: {item:#}");
    ensure!(e["source"] == source, "source: {item:#}");
    ensure!(
        e["site"].as_str().unwrap_or_default().contains(site),
        "{file:?} should be served by {site}: {item:#}"
    );
    let want = openssl_not_after(file)?;
    let got = parse_rfc3339(str_field(e, "not_after")?)?;
    ensure!(
        got == want,
        "{}: discovered expiry {got} but openssl reads {want}",
        file.display()
    );
    ensure!(
        e["fingerprint"] == cert_fingerprint(file)?,
        "fingerprint differs from openssl's: {item:#}"
    );
    ensure!(
        item["managed"].is_null(),
        "not issued by certfleet: {item:#}"
    );
    Ok(())
}

/// Certificates configured by hand in nginx, Apache and HAProxy are found
/// with the expiry openssl reads and the site that serves them, and
/// `--expiring-within` keeps only the ones that expire soon.
#[test]
fn certificates_configured_by_hand_are_discovered() -> Result<()> {
    let controller = Controller::start()?;
    let nginx = Nginx::start("nginx.example.test")?;
    let dir = TempDir::new()?;
    let d = dir.path();

    let apache_root = d.join("apache");
    fs::create_dir_all(&apache_root)?;
    let apache_cert = d.join("apache-cert.pem");
    self_signed_cert(
        &apache_cert,
        &d.join("apache-key.pem"),
        &["apache.example.test", "www.apache.example.test"],
        40,
    )?;
    // The chain file holds an intermediate, not a certificate Apache
    // presents on its own: it must not be listed.
    let apache_chain = d.join("apache-chain.pem");
    self_signed_cert(
        &apache_chain,
        &d.join("apache-chain-key.pem"),
        &["chain.apache.example.test"],
        20,
    )?;
    let apache_conf = apache_config(
        &apache_root,
        "apache.example.test",
        &apache_cert,
        &d.join("apache-key.pem"),
        Some(&apache_chain),
    )?;

    // A files target whose certificate and chain sit where a
    // `[discovery] paths` pattern looks: the certificate is listed (as the
    // target's), the chain is not.
    let files = d.join("files");
    fs::create_dir_all(&files)?;
    self_signed_cert(
        &files.join("cert.pem"),
        &files.join("privkey.key"),
        &["files.example.test"],
        60,
    )?;
    self_signed_cert(
        &files.join("chain.pem"),
        &files.join("chain.key"),
        &["chain.files.example.test"],
        20,
    )?;

    let hap = d.join("haproxy");
    fs::create_dir_all(hap.join("certs.d"))?;
    let hap_pem = combined(&hap, "haproxy.example.test", 100)?;
    let dir_a = combined(&hap.join("certs.d"), "a.haproxy.example.test", 200)?;
    let dir_b = combined(&hap.join("certs.d"), "b.haproxy.example.test", 300)?;
    let hap_cfg = hap.join("haproxy.cfg");
    fs::write(
        &hap_cfg,
        format!(
            "global\n    crt-base {hap}\n\
             defaults\n    mode http\n    timeout connect 1s\n    timeout client 1s\n    timeout server 1s\n\
             frontend fe_tls\n    bind 127.0.0.1:{p1} ssl crt haproxy.example.test.pem\n    \
             bind 127.0.0.1:{p2} ssl crt {certs_d}\n    default_backend be\n\
             backend be\n    server s1 127.0.0.1:9\n",
            hap = hap.display(),
            certs_d = hap.join("certs.d").display(),
            p1 = free_port()?,
            p2 = free_port()?,
        ),
    )?;
    let check = run_with_timeout(
        std::process::Command::new("haproxy").args(["-c", "-f", utf8(&hap_cfg)?]),
        WAIT,
    )?;
    ensure!(
        check.status.success(),
        "haproxy -c refuses the test config: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let mut nginx_dump = nginx.test_command()?;
    nginx_dump.retain(|a| a != "-q");
    for a in &mut nginx_dump {
        if a == "-t" {
            *a = "-T".into();
        }
    }
    let config = format!(
        "name = \"web-1\"\n\
         allowed_dirs = [\"{files}\"]\n\
         [[target]]\nname = \"files\"\nkind = \"files\"\n\
         cert = \"{files}/cert.pem\"\nchain = \"{files}/chain.pem\"\n\
         key = \"{files}/privkey.key\"\n\
         [discovery]\n\
         paths = [\"{files}/*.pem\"]\n\
         [discovery.nginx]\ncommand = [{nginx}]\n\
         [discovery.apache]\ncommand = [\"/usr/sbin/apache2\", \"-f\", \"{apache}\", \"-t\", \"-D\", \"DUMP_INCLUDES\"]\n\
         [discovery.haproxy]\nconfig = [\"{hap_cfg}\"]\n",
        nginx = toml_argv(&nginx_dump),
        apache = apache_conf.display(),
        hap_cfg = hap_cfg.display(),
        files = files.display(),
    );
    let _agent = start_agent(&controller, &config)?;

    let nginx_cert = nginx.tls_dir.join("fullchain.pem");
    assert_discovered(
        &wait_item(&controller, &nginx_cert)?,
        &nginx_cert,
        "nginx",
        "nginx.example.test",
    )?;
    let apache_item = wait_item(&controller, &apache_cert)?;
    assert_discovered(&apache_item, &apache_cert, "apache", "apache.example.test")?;
    ensure!(
        apache_item["entry"]["sans"]
            == serde_json::json!(["apache.example.test", "www.apache.example.test"]),
        "SANs: {apache_item:#}"
    );
    for pem in [&hap_pem, &dir_a, &dir_b] {
        assert_discovered(&wait_item(&controller, pem)?, pem, "haproxy", "fe_tls")?;
    }
    let files_item = wait_item(&controller, &files.join("cert.pem"))?;
    ensure!(
        files_item["entry"]["target"] == "files" && files_item["entry"]["source"] == "path",
        "the target's certificate: {files_item:#}"
    );
    // Chain files: neither Apache's nor the target's is a certificate of
    // its own (the items above come from the same report).
    let listed = items(&inventory(&controller, &[])?);
    for chain in [&apache_chain, &files.join("chain.pem")] {
        ensure!(
            !listed
                .iter()
                .any(|i| i["entry"]["path"] == utf8(chain).unwrap_or_default()),
            "{} is a chain file but is listed as a certificate: {listed:#?}",
            chain.display()
        );
    }

    // Soonest first; the filter keeps what expires within the period.
    let all = items(&inventory(&controller, &["--agent", "web-1"])?);
    let expiries: Vec<i64> = all
        .iter()
        .map(|i| parse_rfc3339(i["entry"]["not_after"].as_str().unwrap_or_default()))
        .collect::<Result<_>>()?;
    ensure!(
        expiries.windows(2).all(|w| w[0] <= w[1]),
        "not sorted: {all:#?}"
    );
    let soon = items(&inventory(&controller, &["--expiring-within", "10d"])?);
    let paths: Vec<&str> = soon
        .iter()
        .filter_map(|i| i["entry"]["path"].as_str())
        .collect();
    ensure!(
        paths == vec![utf8(&nginx_cert)?],
        "--expiring-within 10d: {paths:?}"
    );
    let month = items(&inventory(&controller, &["--expiring-within", "45d"])?);
    ensure!(month.len() == 2, "--expiring-within 45d: {month:#?}");
    let table = controller.cli_ok(&["inventory", "list", "--expiring-within", "45d"])?;
    let table = String::from_utf8_lossy(&table.stdout);
    ensure!(
        table.contains("apache.example.test") && table.contains("web-1"),
        "table: {table}"
    );
    Ok(())
}

/// `inventory adopt` brings the certificate nginx was configured with by
/// hand under management: certfleet issues a replacement for the same
/// names and nginx serves it; a renewal then replaces it again.
#[test]
fn adopted_nginx_certificate_is_replaced_and_renewed() -> Result<()> {
    let controller = Controller::start()?;
    controller.cli_json(&["issuer", "add", "ca1", "--kind", "builtin"])?;
    let name = "adopt.example.test";
    let nginx = Nginx::start(name)?;
    let original = served_fingerprint(nginx.port, name)?;
    let config = format!(
        "name = \"web-1\"\n{}",
        Agent::nginx_target(&nginx, name, "")?
    );
    let agent = start_agent(&controller, &config)?;
    let path = nginx.tls_dir.join("fullchain.pem");
    let item = wait_item(&controller, &path)?;
    ensure!(item["entry"]["target"] == "nginx", "target: {item:#}");
    ensure!(item["entry"]["fingerprint"] == original.as_str());

    let rollout = controller.cli_json(&[
        "inventory",
        "adopt",
        "web-1",
        &original,
        "--issuer",
        "ca1",
        "--wait",
        "--timeout",
        "20s",
    ])?;
    ensure!(
        rollout["state"] == "completed",
        "adoption rollout: {rollout:#}"
    );
    let cert_id = str_field(&rollout, "certificate")?.to_owned();
    let cert = controller.cli_json(&["cert", "show", &cert_id])?;
    ensure!(cert["domains"] == serde_json::json!([name]), "{cert:#}");
    let issued = str_field(&cert, "fingerprint")?.to_owned();
    ensure!(issued != original);
    wait_served(nginx.port, name, &issued, WAIT)?;

    // Managed at once: the target holding the path has a deployment now,
    // before any rescan sees the replacement.
    let listed = inventory(&controller, &["--agent", "web-1"])?;
    let item = items(&listed)
        .into_iter()
        .find(|i| i["entry"]["path"] == utf8(&path).unwrap_or_default())
        .ok_or_else(|| anyhow!("{path:?} left the inventory: {listed:#}"))?;
    ensure!(
        item["managed"] == cert_id.as_str(),
        "the adopted certificate should show as managed right after adopt: {item:#}"
    );
    let table = controller.cli_ok(&["inventory", "list", "--agent", "web-1"])?;
    let table = String::from_utf8_lossy(&table.stdout);
    ensure!(
        table
            .lines()
            .any(|l| l.contains(utf8(&path).unwrap_or("?")) && l.contains(&cert_id)),
        "the table should name {cert_id} as MANAGED for {path:?}:\n{table}"
    );

    // A rescan marks the served certificate as managed.
    let scanned = controller.cli_json(&["inventory", "scan", "web-1"])?;
    let item = items(&scanned)
        .into_iter()
        .find(|i| i["entry"]["path"] == utf8(&path).unwrap_or_default())
        .ok_or_else(|| anyhow!("{path:?} not in the rescan: {scanned:#}"))?;
    ensure!(item["managed"] == cert_id.as_str(), "managed: {item:#}");

    // Adopting it again is refused: it is managed.
    let err = controller.cli_err(&[
        "inventory",
        "adopt",
        "web-1",
        utf8(&path)?,
        "--issuer",
        "ca1",
    ])?;
    ensure!(err.contains("already managed"), "{err}");

    // The next renewal replaces the served certificate.
    let app = controller.cli_json(&["cert", "renew", &cert_id])?;
    let app_id = str_field(&app, "id")?.to_owned();
    let deadline = Instant::now() + WAIT;
    let renewed = loop {
        let app = controller.cli_json(&["application", "show", &app_id])?;
        if let Some(c) = app["certificate"].as_str() {
            break c.to_owned();
        }
        ensure!(Instant::now() < deadline, "renewal not issued: {app:#}");
        thread::sleep(Duration::from_millis(100));
    };
    let renewed = controller.cli_json(&["cert", "show", &renewed])?;
    let renewed_fp = str_field(&renewed, "fingerprint")?;
    wait_served(nginx.port, name, renewed_fp, WAIT)
        .context("the renewal should replace the adopted certificate")?;
    drop(agent);
    Ok(())
}

/// Bad inputs and faults: a pattern matching thousands of files, files that
/// cannot be read, a certificate in a server config that does not parse,
/// a configured server binary that is missing — all reported, none stops
/// the agent; and adopt refuses unknown agents and fingerprints, unreadable
/// entries, and certificates no target of the agent holds.
#[test]
fn discovery_faults_are_reported_and_adopt_refuses_bad_input() -> Result<()> {
    let controller = Controller::start()?;
    controller.cli_json(&["issuer", "add", "ca1", "--kind", "builtin"])?;
    let dir = TempDir::new()?;
    let d = dir.path();

    // Thousands of files behind one pattern: bounded by max_files.
    let many = d.join("many");
    fs::create_dir_all(&many)?;
    for i in 0..3000 {
        fs::write(many.join(format!("f{i:04}.pem")), "not a certificate\n")?;
    }
    // Files that cannot be read: a FIFO (must not hang the scan) and a
    // dangling symlink; and a good certificate beside them.
    let odd = d.join("odd");
    fs::create_dir_all(&odd)?;
    let fifo = odd.join("pipe.pem");
    let mk = run_with_timeout(std::process::Command::new("mkfifo").arg(&fifo), WAIT)?;
    ensure!(mk.status.success(), "mkfifo failed");
    let dangling = odd.join("gone.pem");
    std::os::unix::fs::symlink(d.join("nowhere.pem"), &dangling)?;
    let good = odd.join("good.pem");
    self_signed_cert(&good, &d.join("good.key"), &["good.example.test"], 30)?;

    // HAProxy config naming a certificate file that does not parse.
    let broken = d.join("broken.pem");
    fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )?;
    let hap_cfg = d.join("haproxy.cfg");
    fs::write(
        &hap_cfg,
        format!(
            "frontend fe_broken\n    bind 127.0.0.1:8443 ssl crt {}\n",
            broken.display()
        ),
    )?;
    // Apache's own config test accepts a virtual host whose certificate
    // does not parse (mod_ssl reads it only at start-up).
    let apache_root = d.join("apache");
    let apache_broken = d.join("apache-broken.pem");
    fs::copy(&broken, &apache_broken)?;
    self_signed_cert(&d.join("unused.pem"), &d.join("apache.key"), &["x.test"], 1)?;
    let apache_conf = apache_config(
        &apache_root,
        "broken.example.test",
        &apache_broken,
        &d.join("apache.key"),
        None,
    )?;

    let config = format!(
        "name = \"web-1\"\n\
         [discovery]\n\
         paths = [\"{many}/*.pem\", \"{odd}/*.pem\"]\n\
         max_files = 50\n\
         [discovery.nginx]\ncommand = [\"/nonexistent/sbin/nginx\", \"-T\"]\n\
         [discovery.apache]\ncommand = [\"/usr/sbin/apache2\", \"-f\", \"{apache}\", \"-t\", \"-D\", \"DUMP_INCLUDES\"]\n\
         [discovery.haproxy]\nconfig = [\"{hap}\"]\n",
        apache = apache_conf.display(),
        many = many.display(),
        odd = odd.display(),
        hap = hap_cfg.display(),
    );
    let agent = start_agent(&controller, &config)?;
    let good_item = wait_item(&controller, &good)?;
    ensure!(good_item["entry"]["error"].is_null(), "{good_item:#}");

    let list = inventory(&controller, &[])?;
    let problems = list["problems"].to_string();
    ensure!(
        problems.contains("matched more than 50 files"),
        "the cap should be reported: {problems}"
    );
    ensure!(
        problems.contains("/nonexistent/sbin/nginx") && problems.contains("not found"),
        "the missing nginx binary should be reported: {problems}"
    );
    let error_of = |p: &Path| -> Result<String> {
        let p = utf8(p)?;
        items(&list)
            .iter()
            .find(|i| i["entry"]["path"] == p)
            .and_then(|i| i["entry"]["error"].as_str().map(str::to_owned))
            .ok_or_else(|| anyhow!("{p} should be an entry with an error: {list:#}"))
    };
    ensure!(error_of(&fifo)?.contains("not a regular file"));
    ensure!(error_of(&dangling)?.contains("cannot open"));
    let broken_err = error_of(&broken)?;
    ensure!(broken_err.contains("does not parse"), "{broken_err}");
    let apache_err = error_of(&apache_broken)?;
    ensure!(apache_err.contains("does not parse"), "{apache_err}");
    // Only the first 50 of the 3000 files were looked at, and none of them
    // (no certificate inside) became an entry.
    let many_dir = utf8(&many)?;
    ensure!(
        !items(&list).iter().any(|i| i["entry"]["path"]
            .as_str()
            .unwrap_or_default()
            .starts_with(many_dir)),
        "files without certificates are not entries"
    );
    // The agent keeps running and answers a rescan.
    let id = agent.id.clone().unwrap_or_default();
    wait_connected(&controller, &id, true, WAIT)?;
    controller.cli_ok(&["inventory", "scan", "web-1"])?;

    // `certfleet-agent discover` shows the same, locally, without a controller.
    let local = run_with_timeout(
        std::process::Command::new(agent_bin()).args([
            "discover",
            "--json",
            "--config",
            utf8(&agent.config)?,
        ]),
        WAIT,
    )?;
    ensure!(local.status.success(), "certfleet-agent discover failed");
    let local: Value = serde_json::from_slice(&local.stdout)?;
    ensure!(
        local["entries"].as_array().is_some_and(|e| e
            .iter()
            .any(|e| e["path"] == utf8(&good).unwrap_or_default())),
        "discover --json: {local:#}"
    );
    ensure!(local["problems"]
        .to_string()
        .contains("matched more than 50 files"));

    // adopt: unknown agent, unknown fingerprint, unreadable entry, no target.
    let err = controller.cli_err(&[
        "inventory",
        "adopt",
        "web-9",
        utf8(&good)?,
        "--issuer",
        "ca1",
    ])?;
    ensure!(err.contains("agent") && err.contains("not found"), "{err}");
    let err = controller.cli_err(&[
        "inventory",
        "adopt",
        "web-1",
        &"ab".repeat(32),
        "--issuer",
        "ca1",
    ])?;
    ensure!(
        err.contains("not found") && err.contains("inventory list"),
        "{err}"
    );
    let err = controller.cli_err(&[
        "inventory",
        "adopt",
        "web-1",
        utf8(&broken)?,
        "--issuer",
        "ca1",
    ])?;
    ensure!(
        err.contains("could not read") && err.contains("does not parse"),
        "{err}"
    );
    let err = controller.cli_err(&[
        "inventory",
        "adopt",
        "web-1",
        utf8(&good)?,
        "--issuer",
        "ca1",
    ])?;
    ensure!(
        err.contains("has no target whose") && err.contains("[[target]]"),
        "{err}"
    );
    // Nothing was created by the refused adoptions.
    let instances = controller.cli_json(&["instance", "list"])?;
    ensure!(instances == serde_json::json!([]), "{instances:#}");
    Ok(())
}

/// The controller refuses an inventory report over the limits with a clear
/// error and keeps the agent's previous snapshot; a report within them
/// replaces it whole.
#[test]
fn oversized_inventory_report_is_refused_and_keeps_the_last_snapshot() -> Result<()> {
    use certfleet_protocol::message::{InventoryEntry, InventoryReport, Request, Timestamp};

    let controller = Controller::start()?;
    let dir = TempDir::new()?;
    let good = dir.path().join("good.pem");
    self_signed_cert(
        &good,
        &dir.path().join("good.key"),
        &["kept.example.test"],
        30,
    )?;
    let config = format!(
        "name = \"web-1\"\n[discovery]\npaths = [\"{}\"]\n\
         [discovery.nginx]\nenabled = false\n[discovery.apache]\nenabled = false\n\
         [discovery.haproxy]\nenabled = false\n",
        good.display()
    );
    let mut agent = start_agent(&controller, &config)?;
    wait_item(&controller, &good)?;
    agent.kill();

    let entry = |path: &str| InventoryEntry {
        path: path.into(),
        source: "path".into(),
        site: None,
        target: None,
        subject: "CN=x".into(),
        sans: vec!["x.example.test".into()],
        issuer: "CN=x".into(),
        serial: "01".into(),
        not_before: Some(Timestamp(0)),
        not_after: Some(Timestamp(1)),
        fingerprint: Some("00".repeat(32)),
        error: None,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let state_dir = agent.state_dir.clone();
    let listen = controller.listen();
    let conn = runtime.block_on(async {
        let id = certfleet_agent::identity::Identity::load(&state_dir)?;
        certfleet_agent::transport::Conn::mtls(listen, &id).await
    })?;
    let send = |report: InventoryReport| {
        runtime
            .block_on(conn.call(&Request::InventoryReport(report)))
            .map(|r| format!("{r:?}"))
            .map_err(|e| e.to_string())
    };
    let refused = send(InventoryReport {
        scanned_at: Timestamp(1),
        entries: vec![entry("/x.pem"); InventoryReport::MAX_ENTRIES + 1],
        problems: vec![],
    });
    let err = refused
        .err()
        .ok_or_else(|| anyhow!("an oversized report was accepted"))?;
    ensure!(err.contains("at most 2000"), "{err}");
    // The refused report changed nothing.
    let kept = items(&inventory(&controller, &[])?);
    ensure!(
        kept.len() == 1 && kept[0]["entry"]["path"] == utf8(&good)?,
        "{kept:#?}"
    );
    send(InventoryReport {
        scanned_at: Timestamp(2),
        entries: vec![entry("/replaced.pem")],
        problems: vec![],
    })
    .map_err(|e| anyhow!("a report within the limits was refused: {e}"))?;
    let now = items(&inventory(&controller, &[])?);
    ensure!(
        now.len() == 1 && now[0]["entry"]["path"] == "/replaced.pem",
        "the snapshot should be replaced whole: {now:#?}"
    );
    Ok(())
}
