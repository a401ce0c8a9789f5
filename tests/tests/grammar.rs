//! Issue 12, "one grammar": agents named by id or name everywhere, filters
//! that name nothing are errors, `--dry-run` plans without changing
//! anything, `ca root` hands out the trust anchor without a key, and both
//! binaries print their own completions and man pages. Driven through the
//! real `certfleet` and `certfleet-agent` binaries, checked with openssl,
//! bash and groff.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use certfleet_tests::fleet::{
    agent_bin, named_files_agent_config, self_signed_cert, token, wait_connected, Agent,
};
use certfleet_tests::{
    array, certfleet_bin, openssl_ok, pem_blocks, run_with_timeout, str_field, wait_for, Controller,
};
use clap::CommandFactory;
use serde_json::Value;

const NAME: &str = "www.example.test";
const WAIT: Duration = Duration::from_secs(60);

/// Everything a dry run must leave alone, as an operator would look.
fn snapshot(ctl: &Controller) -> Result<Value> {
    let mut status = ctl.cli_json(&["status"])?;
    // The controller's clock at the time of asking is not state.
    if let Some(at_risk) = status["at_risk"].as_object_mut() {
        at_risk.remove("now");
    }
    Ok(serde_json::json!({
        "state": ctl.inventory()?,
        "applications": status,
        "rollouts": ctl.cli_json(&["rollout", "list"])?,
        "deployments": ctl.cli_json(&["deployment", "list"])?,
        "audit": ctl.cli_json(&["audit", "list", "--limit", "10000"])?,
    }))
}

/// Runs a `--dry-run` command in JSON; returns (succeeded, plan).
fn dry_run(ctl: &Controller, args: &[&str]) -> Result<(bool, Value)> {
    let mut full = vec!["--output", "json"];
    full.extend_from_slice(args);
    let out = ctl.cli(&full)?;
    let plan: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "`certfleet {}` printed no plan: {}\nstderr: {}",
            full.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    ensure!(plan["dry_run"] == true, "not marked as a dry run: {plan}");
    Ok((out.status.success(), plan))
}

/// A `files` target called `web` in `dir`, whose certificate discovery
/// reports.
fn files_config_with_discovery(name: &str, dir: &Path) -> String {
    format!(
        "{}[discovery]\npaths = [\"{}/fullchain.pem\"]\n",
        named_files_agent_config(name, "web", dir, NAME),
        dir.display()
    )
}

/// Enroll (but do not run) an agent called `name`; returns its id.
fn enroll_only(ctl: &Controller, name: &str) -> Result<String> {
    let dir = ctl.scratch(&format!("{name}-{}", rand_suffix()))?;
    let mut agent = Agent::new(ctl, &named_files_agent_config(name, "web", &dir, NAME))?;
    let (t, pin) = token(ctl, &[])?;
    agent.enroll(ctl, &t, &pin)?;
    agent.id.clone().context("enrolled agent has no id")
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

#[test]
fn agents_by_name_filters_and_dry_runs() -> Result<()> {
    let ctl = Controller::start()?;
    ctl.cli_json(&["issuer", "add", "ca1", "--kind", "builtin"])?;
    let cert = ctl.issue("ca1", &["--domains", "1"], &[NAME])?;
    let cert_id = str_field(&cert, "id")?.to_owned();

    // One running agent, web-1, whose `files` target already holds a
    // certificate certfleet did not issue (for `inventory adopt`).
    let files = ctl.scratch("web-1-files")?;
    self_signed_cert(
        &files.join("fullchain.pem"),
        &files.join("privkey.pem"),
        &[NAME],
        30,
    )?;
    let mut web1 = Agent::new(&ctl, &files_config_with_discovery("web-1", &files))?;
    let (t, pin) = token(&ctl, &[])?;
    web1.enroll(&ctl, &t, &pin)?;
    let web1_id = web1.id.clone().context("web-1 has no id")?;
    web1.start()?;
    wait_connected(&ctl, &web1_id, true, WAIT)?;
    // Two agents with the same name.
    let dup_a = enroll_only(&ctl, "dup")?;
    let dup_b = enroll_only(&ctl, "dup")?;

    // 1. Id or unique name, everywhere an agent is named.
    for who in [web1_id.as_str(), "web-1"] {
        let shown = ctl.cli_json(&["agent", "show", who])?;
        assert_eq!(shown["id"], web1_id.as_str(), "agent show {who}: {shown}");
    }
    let err = ctl.cli_err(&["agent", "show", "dup"])?;
    ensure!(
        err.contains(&dup_a) && err.contains(&dup_b),
        "an ambiguous name must list the matching ids: {err}"
    );
    let err = ctl.cli_err(&["agent", "show", "web-9"])?;
    ensure!(err.contains("web-9") && err.contains("not found"), "{err}");
    let err = ctl.cli_err(&["deploy", &cert_id, "--to", "agent=dup", "--target", "web"])?;
    ensure!(err.contains(&dup_a) && err.contains(&dup_b), "{err}");

    // 2. A filter naming nothing is an error, not an empty table.
    for (args, missing) in [
        (vec!["deployment", "list", "--agent", "web-9"], "web-9"),
        (
            vec!["deployment", "list", "--cert", "cert-nope"],
            "cert-nope",
        ),
        (vec!["inventory", "list", "--agent", "web-9"], "web-9"),
        (vec!["inventory", "scan", "web-9"], "web-9"),
    ] {
        let err = ctl.cli_err(&args)?;
        ensure!(
            err.contains(missing) && err.contains("not found"),
            "`certfleet {}`: {err}",
            args.join(" ")
        );
    }

    // The agent scans when it connects: its target's certificate shows up.
    let path = files.join("fullchain.pem");
    let path = path.to_str().context("scratch path is not UTF-8")?;
    wait_for(WAIT, "web-1's discovered certificate", || {
        let list = ctl.cli_json(&["inventory", "list", "--agent", "web-1"])?;
        let found = array(&list["items"])?
            .iter()
            .any(|i| i["entry"]["path"] == path);
        Ok(found.then_some(()))
    })?;

    // 6. Dry runs plan through the real code and change nothing.
    let before = snapshot(&ctl)?;
    let (ok, plan) = dry_run(
        &ctl,
        &[
            "inventory",
            "adopt",
            "web-1",
            path,
            "--issuer",
            "ca1",
            "--dry-run",
        ],
    )?;
    ensure!(ok, "adopt dry run refused: {plan}");
    assert_eq!(plan["action"], "inventory.adopt", "{plan}");
    assert_eq!(
        plan["outcome"]["adoption"]["agent"],
        web1_id.as_str(),
        "{plan}"
    );
    assert_eq!(plan["outcome"]["adoption"]["target"], "web", "{plan}");
    assert_eq!(plan["outcome"]["adoption"]["domains"][0], NAME, "{plan}");

    let (ok, plan) = dry_run(
        &ctl,
        &[
            "deploy",
            &cert_id,
            "--to",
            "agent=web-1",
            "--target",
            "web",
            "--dry-run",
        ],
    )?;
    ensure!(ok, "deploy dry run refused: {plan}");
    let rollout = &plan["outcome"]["rollout"];
    let targets = array(&rollout["targets"])?;
    ensure!(
        targets.len() == 1 && targets[0]["agent"] == web1_id.as_str() && targets[0]["wave"] == 0,
        "planned targets and waves: {rollout}"
    );
    let table = ctl.cli_ok(&[
        "deploy",
        &cert_id,
        "--to",
        "role=web",
        "--target",
        "web",
        "--dry-run",
    ])?;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    ensure!(
        table.contains("DRY RUN") && table.contains("WAVE") && table.contains("web-1"),
        "table plan: {table}"
    );
    let (ok, plan) = dry_run(
        &ctl,
        &[
            "deploy",
            "cert-nope",
            "--to",
            "agent=web-1",
            "--target",
            "web",
            "--dry-run",
        ],
    )?;
    ensure!(!ok && plan["refused"]["kind"] == "NotFound", "{plan}");
    let (ok, plan) = dry_run(&ctl, &["cert", "renew", &cert_id, "--dry-run"])?;
    ensure!(ok, "renew dry run refused: {plan}");
    assert_eq!(
        plan["outcome"]["renewal"]["application"]["domains"][0], NAME,
        "{plan}"
    );
    assert_eq!(
        plan["outcome"]["renewal"]["rollout_to"],
        serde_json::json!([]),
        "{plan}"
    );
    ensure!(
        snapshot(&ctl)? == before,
        "a dry run changed state or the audit log"
    );

    // Deploy for real, then the filters by name and by id agree.
    ctl.cli_json(&[
        "deploy",
        &cert_id,
        "--to",
        "agent=web-1",
        "--target",
        "web",
        "--wait",
    ])?;
    let by_name = ctl.cli_json(&["deployment", "list", "--agent", "web-1"])?;
    let by_id = ctl.cli_json(&["deployment", "list", "--agent", &web1_id])?;
    ensure!(
        array(&by_name)?.len() == 1 && by_name == by_id,
        "{by_name} vs {by_id}"
    );
    assert_eq!(
        ctl.cli_json(&["deployment", "list", "--cert", &cert_id])?,
        by_id
    );

    // Revoke while in service: the plan says it would be refused and why;
    // with --force it says what would be revoked. Neither revokes. A
    // renewal now would roll out to web-1.
    let before = snapshot(&ctl)?;
    let (ok, plan) = dry_run(&ctl, &["cert", "renew", &cert_id, "--dry-run"])?;
    ensure!(ok, "renew dry run refused: {plan}");
    let to = array(&plan["outcome"]["renewal"]["rollout_to"])?;
    ensure!(
        to.len() == 1 && to[0]["agent"] == web1_id.as_str() && to[0]["target"] == "web",
        "renewal plan targets: {plan}"
    );
    let text = ctl.cli_ok(&["cert", "renew", &cert_id, "--dry-run"])?;
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    ensure!(
        text.contains("rolled out to") && text.contains("web-1"),
        "{text}"
    );
    let (ok, plan) = dry_run(
        &ctl,
        &[
            "cert",
            "revoke",
            &cert_id,
            "--reason",
            "superseded",
            "--dry-run",
        ],
    )?;
    ensure!(!ok, "a refused plan must exit non-zero: {plan}");
    assert_eq!(plan["refused"]["kind"], "Conflict", "{plan}");
    let why = str_field(&plan["refused"], "message")?;
    ensure!(why.contains("in service") && why.contains("web-1"), "{why}");
    let text = ctl.cli(&[
        "cert",
        "revoke",
        &cert_id,
        "--reason",
        "superseded",
        "--dry-run",
    ])?;
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    ensure!(
        text.contains("would be refused") && text.contains("--force"),
        "{text}"
    );
    let (ok, plan) = dry_run(
        &ctl,
        &[
            "cert",
            "revoke",
            &cert_id,
            "--reason",
            "superseded",
            "--force",
            "--dry-run",
        ],
    )?;
    ensure!(ok, "{plan}");
    assert_eq!(plan["outcome"]["certificate"]["state"], "revoked", "{plan}");
    ensure!(snapshot(&ctl)? == before, "a revoke dry run changed state");
    assert_eq!(
        ctl.cli_json(&["cert", "show", &cert_id])?["state"],
        "active"
    );

    // Removing by name works, and the name is gone afterwards.
    ctl.cli_json(&["agent", "remove", "web-1"])?;
    let err = ctl.cli_err(&["agent", "show", "web-1"])?;
    ensure!(err.contains("not found"), "{err}");
    Ok(())
}

#[test]
fn ca_root_anchors_issued_certificates_without_a_key() -> Result<()> {
    let ctl = Controller::start()?;
    ctl.cli_json(&["issuer", "add", "ca1", "--kind", "builtin"])?;
    let cert = ctl.issue("ca1", &["--domains", "1"], &[NAME])?;
    let leaf = ctl.scratch("leaf")?.join("leaf.pem");
    fs::write(&leaf, str_field(&cert, "leaf_pem")?)?;
    let audit_before = ctl.cli_json(&["audit", "list", "--limit", "10000"])?;

    // The only issuer needs no --issuer; the bundle verifies the leaf.
    let bundle = ctl.scratch("root")?.join("ca1.pem");
    ctl.cli_ok(&["ca", "root", "--out", bundle.to_str().context("path")?])?;
    let verified = openssl_ok(&[
        "verify",
        "-CAfile",
        bundle.to_str().context("path")?,
        leaf.to_str().context("path")?,
    ])?;
    ensure!(verified.contains(": OK"), "openssl verify: {verified}");

    // Stdout: root then chain, PEM; JSON names both.
    let printed = ctl.cli_ok(&["ca", "root", "--issuer", "ca1"])?;
    let printed = String::from_utf8_lossy(&printed.stdout).into_owned();
    let blocks = pem_blocks(&printed);
    ensure!(
        blocks.len() == 2 && blocks.iter().all(|b| b.label == "CERTIFICATE"),
        "ca root printed: {printed}"
    );
    let json = ctl.cli_json(&["ca", "root", "--issuer", "ca1"])?;
    ensure!(
        str_field(&json, "root_pem")?.contains("BEGIN CERTIFICATE")
            && str_field(&json, "chain_pem")?.contains("BEGIN CERTIFICATE")
            && json["kind"] == "builtin",
        "{json}"
    );
    // The root alone anchors, with the chain as untrusted intermediates.
    let dir = ctl.scratch("split")?;
    fs::write(dir.join("root.pem"), str_field(&json, "root_pem")?)?;
    fs::write(dir.join("chain.pem"), str_field(&json, "chain_pem")?)?;
    let verified = openssl_ok(&[
        "verify",
        "-CAfile",
        dir.join("root.pem").to_str().context("path")?,
        "-untrusted",
        dir.join("chain.pem").to_str().context("path")?,
        leaf.to_str().context("path")?,
    ])?;
    ensure!(verified.contains(": OK"), "openssl verify: {verified}");
    ensure!(
        !printed.contains("PRIVATE KEY") && !json.to_string().contains("PRIVATE KEY"),
        "ca root released key material"
    );
    // Nothing was released, so nothing was audited.
    assert_eq!(
        ctl.cli_json(&["audit", "list", "--limit", "10000"])?,
        audit_before
    );

    // With two issuers, one must be chosen; an unknown one is named.
    ctl.cli_json(&["issuer", "add", "ca2", "--kind", "builtin"])?;
    let err = ctl.cli_err(&["ca", "root"])?;
    ensure!(
        err.contains("ca1") && err.contains("ca2") && err.contains("--issuer"),
        "{err}"
    );
    let err = ctl.cli_err(&["ca", "root", "--issuer", "ca9"])?;
    ensure!(err.contains("ca9") && err.contains("not found"), "{err}");
    Ok(())
}

/// Every visible subcommand's page name (`certfleet-cert-apply`), as
/// `man --out` writes them.
fn page_names(cmd: &clap::Command, out: &mut Vec<String>) {
    out.push(
        cmd.get_display_name()
            .unwrap_or_else(|| cmd.get_name())
            .to_owned(),
    );
    for sub in cmd.get_subcommands() {
        if !sub.is_hide_set() && sub.get_name() != "help" {
            page_names(sub, out);
        }
    }
}

fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = run_with_timeout(cmd, Duration::from_secs(60))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn completions_load_and_man_pages_render() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let bins = [
        (
            "certfleet",
            certfleet_bin(),
            certfleet_controller::cli::Cli::command(),
        ),
        (
            "certfleet-agent",
            agent_bin(),
            certfleet_agent::cli::Cli::command(),
        ),
    ];
    for (name, bin, mut cmd) in bins {
        // bash sources the script and registers the completion.
        let script = tmp.path().join(format!("{name}.bash"));
        fs::write(
            &script,
            run_ok(Command::new(&bin).args(["completion", "bash"]))?,
        )?;
        let registered = run_ok(Command::new("bash").args([
            "-c",
            &format!("set -e; source {}; complete -p {name}", script.display()),
        ]))?;
        ensure!(
            registered.contains(name),
            "complete -p {name}: {registered}"
        );
        for shell in ["zsh", "fish"] {
            let text = run_ok(Command::new(&bin).args(["completion", shell]))?;
            ensure!(text.contains(name), "{name} completion {shell}: {text}");
        }

        // A page for every subcommand, and each renders.
        let dir = tmp.path().join(format!("man-{name}"));
        run_ok(Command::new(&bin).args(["man", "--out"]).arg(&dir))?;
        cmd.build();
        let mut pages = Vec::new();
        page_names(&cmd, &mut pages);
        ensure!(pages.len() > 5, "too few subcommands found: {pages:?}");
        for page in pages {
            // `certfleet agent` is the agent binary's page (its package owns it).
            if name == "certfleet" && page == "certfleet-agent" {
                continue;
            }
            let file = dir.join(format!("{page}.1"));
            ensure!(file.is_file(), "{name} man wrote no {}", file.display());
            let text = render(&file)?;
            ensure!(
                text.contains("SYNOPSIS") || text.contains("S\u{8}SY"),
                "{} renders without a synopsis: {text}",
                file.display()
            );
        }
    }
    Ok(())
}

fn render(page: &Path) -> Result<String> {
    let out = run_ok(
        Command::new("groff")
            .args(["-man", "-Tutf8", "-P-c", "-P-b", "-P-u", "-ww", "-z"])
            .arg(page),
    );
    // -z checks the page for errors; a second pass prints it.
    out?;
    run_ok(
        Command::new("groff")
            .args(["-man", "-Tutf8", "-P-c", "-P-b", "-P-u"])
            .arg(page),
    )
}

#[test]
fn agent_json_flag_matches_the_cli() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let files = tmp.path().join("files");
    fs::create_dir_all(&files)?;
    self_signed_cert(
        &files.join("fullchain.pem"),
        &files.join("privkey.pem"),
        &[NAME],
        30,
    )?;
    let config = tmp.path().join("agent.toml");
    fs::write(
        &config,
        format!(
            "controller = \"127.0.0.1:9\"\nstate_dir = \"{}\"\n{}",
            tmp.path().join("state").display(),
            files_config_with_discovery("web-1", &files)
        ),
    )?;
    let config = config.to_str().context("path")?;
    let new: Value = serde_json::from_str(&run_ok(
        Command::new(agent_bin()).args(["discover", "--config", config, "--output", "json"]),
    )?)?;
    let global: Value = serde_json::from_str(&run_ok(
        Command::new(agent_bin()).args(["--output", "json", "discover", "--config", config]),
    )?)?;
    let old: Value = serde_json::from_str(&run_ok(
        Command::new(agent_bin()).args(["discover", "--config", config, "--json"]),
    )?)?;
    let paths = |v: &Value| -> Result<Vec<Value>> {
        Ok(array(&v["entries"])?
            .iter()
            .map(|e| e["path"].clone())
            .collect())
    };
    ensure!(
        paths(&new)? == paths(&old)? && paths(&new)? == paths(&global)? && !paths(&new)?.is_empty(),
        "--output json {new} vs --json {old}"
    );
    let status: Value = serde_json::from_str(&run_ok(
        Command::new(agent_bin()).args(["status", "--config", config, "--output", "json"]),
    )?)?;
    ensure!(status.is_object(), "status --output json: {status}");
    // The old flag still parses but is not advertised.
    let help = run_ok(Command::new(agent_bin()).args(["discover", "--help"]))?;
    ensure!(
        help.contains("--output") && !help.contains("--json"),
        "discover --help: {help}"
    );
    Ok(())
}
