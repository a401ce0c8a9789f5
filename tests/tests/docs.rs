//! The documentation cannot go stale:
//!
//! - docs/cli.md's command reference and JSON shapes are generated from the
//!   clap definitions and the output types; regenerate them with
//!   `CERTFLEET_BLESS=1 cargo test -p certfleet-tests --test docs cli_md`;
//! - README.md's quick start is run exactly as written against
//!   `certfleet serve --dev`;
//! - every shell block of README.md and docs/*.md is run by a test (a
//!   `<!-- run: NAME -->` marker) or marked `<!-- example -->`;
//! - every relative link resolves to a file of the repository, and no doc
//!   names a Markdown file the repository does not have.

#[path = "docs/clidoc.rs"]
mod clidoc;
#[path = "docs/json_check.rs"]
mod json_check;
#[path = "docs/markdown.rs"]
mod markdown;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use certfleet_tests::fleet::{named_files_agent_config, token, wait_connected, Agent};
use certfleet_tests::{certfleet_bin, run_with_timeout, str_field, Controller};
use markdown::{Block, EXAMPLE};
use serde_json::Value;

/// `<!-- run: NAME -->` markers and what runs the block: the quick start
/// test below, or CI (`.ci/run` runs the command itself).
const RUN_MARKERS: &[&str] = &["quick-start-serve", "quick-start", "ci"];

#[test]
fn cli_md_is_generated_from_the_binaries() -> Result<()> {
    let path = markdown::repo_root().join("docs/cli.md");
    let bless = std::env::var_os("CERTFLEET_BLESS").is_some();
    if let Some(diff) = clidoc::check_or_bless(&path, bless)? {
        bail!(
            "docs/cli.md differs from what the clap definitions and output types generate; \
             regenerate it with `CERTFLEET_BLESS=1 cargo test -p certfleet-tests --test docs \
             cli_md` and commit it.\n{diff}"
        );
    }
    Ok(())
}

#[test]
fn cli_md_names_every_command_and_flag() -> Result<()> {
    // Independent of the generator's own rendering: every leaf command
    // path and every long flag of both binaries appears in the file.
    let doc = std::fs::read_to_string(markdown::repo_root().join("docs/cli.md"))?;
    for (bin, mut cmd) in [
        (
            "certfleet",
            <certfleet_controller::cli::Cli as clap::CommandFactory>::command(),
        ),
        (
            "certfleet-agent",
            <certfleet_agent::cli::Cli as clap::CommandFactory>::command(),
        ),
    ] {
        cmd.build();
        let mut stack = vec![(bin.to_owned(), &cmd)];
        while let Some((path, c)) = stack.pop() {
            ensure!(
                path == bin || doc.contains(&format!("`{path}`")),
                "docs/cli.md does not document `{path}`"
            );
            for a in c.get_arguments().filter(|a| !a.is_hide_set()) {
                if let Some(long) = a.get_long().filter(|l| !["help", "version"].contains(l)) {
                    ensure!(
                        doc.contains(&format!("`--{long}")),
                        "docs/cli.md does not document `{path} --{long}`"
                    );
                }
            }
            for s in c.get_subcommands() {
                if !s.is_hide_set() && s.get_name() != "help" {
                    stack.push((format!("{path} {}", s.get_name()), s));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn every_shell_block_is_run_or_marked_as_an_example() -> Result<()> {
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    let ci = std::fs::read_to_string(markdown::repo_root().join(".ci/run"))
        .context("cannot read .ci/run")?;
    for (path, text) in markdown::documents()? {
        for b in markdown::blocks(&text).with_context(|| format!("in {}", path.display()))? {
            let at = format!("{}:{}", path.display(), b.line);
            if b.lang.is_empty() {
                problems.push(format!(
                    "{at}: code block without a language (sh for commands, text for output)"
                ));
                continue;
            }
            if !b.is_shell() {
                continue;
            }
            match (b.marker.as_deref(), b.run_marker()) {
                (Some(EXAMPLE), _) => {}
                (_, Some(name)) if RUN_MARKERS.contains(&name) => {
                    if name == "ci" {
                        for cmd in b.body.lines().map(str::trim).filter(|l| !l.is_empty()) {
                            if !ci.lines().any(|l| l.trim() == cmd) {
                                problems.push(format!(
                                    "{at}: marked `run: ci` but .ci/run does not run `{cmd}`"
                                ));
                            }
                        }
                    }
                    seen.push(name.to_owned());
                }
                (_, Some(name)) => problems.push(format!(
                    "{at}: `run: {name}` is run by no test (known: {RUN_MARKERS:?})"
                )),
                _ => problems.push(format!(
                    "{at}: shell block neither run by a test (`<!-- run: NAME -->`) nor \
                     marked `{EXAMPLE}` on the line before it"
                )),
            }
        }
    }
    for name in ["quick-start-serve", "quick-start"] {
        let n = seen.iter().filter(|s| *s == name).count();
        if n != 1 {
            problems.push(format!("`<!-- run: {name} -->` marks {n} blocks, not 1"));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[test]
fn links_and_named_docs_stay_inside_the_repository() -> Result<()> {
    let root = markdown::repo_root()
        .canonicalize()
        .context("cannot resolve the repository root")?;
    let mut problems = Vec::new();
    for (path, text) in markdown::documents()? {
        let dir = root.join(&path);
        let dir = dir.parent().unwrap_or(&root);
        for link in markdown::relative_links(&text) {
            match dir.join(&link).canonicalize() {
                Ok(p) if p.starts_with(&root) && p.exists() => {}
                Ok(p) => problems.push(format!(
                    "{}: link to {link} leaves the repository ({})",
                    path.display(),
                    p.display()
                )),
                Err(_) => problems.push(format!(
                    "{}: link to {link}, which does not exist",
                    path.display()
                )),
            }
        }
        // A Markdown file named in prose or code (`DESIGN.md`) must be one
        // the reader can open.
        for word in text.split(|c: char| !(c.is_alphanumeric() || "._-/".contains(c))) {
            let Some(name) = word.rsplit('/').next().filter(|w| w.ends_with(".md")) else {
                continue;
            };
            if !markdown_file_exists(&root, name) {
                problems.push(format!(
                    "{}: names {word}, which is not in the repository",
                    path.display()
                ));
            }
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

fn markdown_file_exists(root: &Path, name: &str) -> bool {
    ["", "docs"]
        .iter()
        .any(|d| root.join(d).join(name).is_file())
}

/// Kills `certfleet serve --dev` when the test ends, however it ends.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The quick start's blocks, by their run markers.
fn quick_start_blocks() -> Result<(Block, Block)> {
    let text = std::fs::read_to_string(markdown::repo_root().join("README.md"))?;
    let mut serve = None;
    let mut walk = None;
    for b in markdown::blocks(&text)? {
        match b.run_marker() {
            Some("quick-start-serve") => serve = Some(b),
            Some("quick-start") => walk = Some(b),
            _ => {}
        }
    }
    let (Some(serve), Some(walk)) = (serve, walk) else {
        bail!("README.md lacks a `<!-- run: quick-start-serve -->` or `<!-- run: quick-start -->` block");
    };
    for b in [&serve, &walk] {
        ensure!(
            b.section == "Quick start",
            "README.md line {}: a quick start block outside `## Quick start`",
            b.line
        );
    }
    Ok((serve, walk))
}

/// Start the controller the way the first block says, and return the
/// `export` lines it prints, as a user would copy them.
fn start_dev_controller(block: &Block, dir: &Path) -> Result<(Serve, Vec<String>)> {
    let line = block.body.trim();
    // `cargo run -p certfleet-controller -- ARGS` is the binary the test
    // harness already built (running cargo inside a test would rebuild).
    let args = line
        .strip_prefix("cargo run -p certfleet-controller -- ")
        .ok_or_else(|| {
            anyhow!(
                "README.md line {}: the serve block should be `cargo run -p \
                 certfleet-controller -- serve --dev`, is {line:?}",
                block.line
            )
        })?;
    let mut cmd = Command::new(certfleet_bin());
    cmd.args(args.split_whitespace())
        // Ports chosen at run time, so that tests run in parallel; the
        // export lines then carry the real address.
        .args(["--listen", "127.0.0.1:0", "--crl-listen", "127.0.0.1:0"])
        .env_remove("CERTFLEET_CONTROLLER")
        .env_remove("CERTFLEET_CREDENTIAL")
        .env("TMPDIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("serve.log"))?);
    let mut child = cmd.spawn().context("cannot start certfleet serve --dev")?;
    let stdout = child.stdout.take().context("serve has no stdout")?;
    let serve = Serve(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + certfleet_tests::STARTUP_TIMEOUT;
    let mut exports = Vec::new();
    while exports.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.trim_start().starts_with("export ") => exports.push(l.trim().to_owned()),
            Ok(_) => {}
            Err(_) => bail!(
                "`certfleet {args}` printed {} export lines within {:?}; its log:\n{}",
                exports.len(),
                certfleet_tests::STARTUP_TIMEOUT,
                std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
            ),
        }
    }
    Ok((serve, exports))
}

#[test]
fn readme_quick_start_runs_as_written() -> Result<()> {
    let (serve_block, walk) = quick_start_blocks()?;
    let dir = tempfile::tempdir()?;
    let (_serve, exports) = start_dev_controller(&serve_block, dir.path())?;
    ensure!(
        exports
            .iter()
            .any(|e| e.starts_with("export CERTFLEET_CONTROLLER="))
            && exports
                .iter()
                .any(|e| e.starts_with("export CERTFLEET_CREDENTIAL=")),
        "serve --dev printed {exports:?}, not the two exports the README promises"
    );
    // What the user pastes: the two export lines, then the block.
    let script = format!("{}\n{}", exports.join("\n"), walk.body);
    let work = dir.path().join("work");
    std::fs::create_dir(&work)?;
    std::fs::write(dir.path().join("quick-start.sh"), &script)?;
    let bin_dir = certfleet_bin()
        .parent()
        .map(Path::to_path_buf)
        .context("the certfleet binary has no directory")?;
    let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let mut bash = Command::new("bash");
    // -e: any failing step fails the test; -x: the log names that step.
    bash.args(["--noprofile", "--norc", "-e", "-u", "-x"])
        .arg(dir.path().join("quick-start.sh"))
        .current_dir(&work)
        .env("PATH", path)
        .env_remove("CERTFLEET_CONTROLLER")
        .env_remove("CERTFLEET_CREDENTIAL");
    let out = run_with_timeout(&mut bash, Duration::from_secs(300))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "the README quick start (README.md line {}) failed ({}); the last `+` line below is \
         the step that failed:\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- serve log\n{}",
        walk.line,
        out.status,
        std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
    );
    // What the walk-through promises, checked the way a reader would see it.
    ensure!(
        work.join("tls/privkey.pem").is_file(),
        "the quick start did not download the key into ./tls"
    );
    Ok(())
}

/// What the CLI really prints with `--output json` has the fields
/// docs/cli.md documents for it, nested objects included, for every
/// command that prints an object (one of each type).
#[test]
fn json_output_has_the_documented_fields() -> Result<()> {
    let doc = std::fs::read_to_string(markdown::repo_root().join("docs/cli.md"))?;
    let tables = json_check::tables(&doc);
    let outputs = clidoc::OUTPUTS.iter().copied().collect();
    let c = Controller::start()?;
    let check = |command: &str, args: &[&str]| -> Result<Value> {
        let mut full: Vec<&str> = command.split(' ').collect();
        full.extend_from_slice(args);
        let v = c.cli_json(&full)?;
        json_check::check_output(&tables, &outputs, command, &v)?;
        Ok(v)
    };
    check("issuer add", &["ca1", "--kind", "builtin"])?;
    check("issuer list", &[])?;
    let inst = check("instance create", &["--issuer", "ca1", "--domains", "2"])?;
    let inst = str_field(&inst, "id")?.to_owned();
    let app = check(
        "cert apply",
        &[
            "--instance",
            &inst,
            "--domain",
            "json.example.test",
            "--wait",
        ],
    )?;
    let cert = str_field(&app, "certificate")?.to_owned();
    check("instance show", &[&inst])?;
    check("cert show", &[&cert])?;
    check("cert list", &[])?;
    let out = c.scratch("download")?;
    check(
        "cert download",
        &[&cert, "--out", &out.display().to_string()],
    )?;
    let (t, pin) = token(&c, &[])?;
    check("agent token create", &["--labels", "role=web"])?;
    let dir = tempfile::tempdir()?;
    let mut agent = Agent::new(
        &c,
        &named_files_agent_config("json-1", "files", dir.path(), "json.example.test"),
    )?;
    agent.enroll(&c, &t, &pin)?;
    agent.start()?;
    let id = agent.id.clone().context("the enrolled agent has no id")?;
    wait_connected(&c, &id, true, Duration::from_secs(30))?;
    check("agent list", &[])?;
    check("agent show", &[&id])?;
    let target = format!("agent={id}");
    let rollout = check(
        "deploy",
        &[&cert, "--to", &target, "--target", "files", "--wait"],
    )?;
    check("rollout show", &[str_field(&rollout, "id")?])?;
    check("rollout list", &[])?;
    check("deployment list", &[])?;
    check("status", &[])?;
    check("inventory list", &[])?;
    check("audit list", &[])?;
    check("cert renew", &[&cert])?;
    check("cert revoke", &[&cert, "--reason", "superseded", "--force"])?;
    let crl = c.scratch("crl")?.join("ca1.crl");
    check("ca crl", &["--out", &crl.display().to_string()])?;
    Ok(())
}
