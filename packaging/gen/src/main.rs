//! Renders the man pages and shell completions shipped in the .deb and .rpm
//! packages from the same clap definitions the binaries parse, so that they
//! cannot drift from `--help`.
//!
//! Usage: `certfleet-packaging-gen OUT_DIR` writes, for each binary BIN
//! (`certfleet`, `certfleet-agent`), `OUT_DIR/man/BIN/*.1` (one page per
//! command and subcommand; one directory per package) and
//! `OUT_DIR/completions/{bash,zsh,fish}/…`. Nothing is compressed here.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use certfleet_agent::manual::{self, Shell};
use clap::{Command, CommandFactory, Parser};

/// Render the man pages and shell completions the packages ship.
#[derive(Debug, Parser)]
#[command(name = "certfleet-packaging-gen")]
struct Args {
    /// Directory to write man/ and completions/ into (created if missing).
    out_dir: PathBuf,
}

/// Every binary the packages ship, as its clap command.
/// The agent comes first so that its `certfleet-agent.1` wins over the
/// controller's `certfleet agent` group (see [`manual::write_man_pages`]),
/// and the two packages never both own it.
fn commands() -> Vec<Command> {
    vec![
        certfleet_agent::cli::Cli::command(),
        certfleet_controller::cli::Cli::command(),
    ]
}

/// Writes the bash, zsh and fish completions of `cmd` under
/// `dir/<shell>/` with the file names each shell looks up.
fn write_completions(cmd: &Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let name = cmd.get_name().to_owned();
    let mut written = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let shell_dir = dir.join(shell.to_string());
        fs::create_dir_all(&shell_dir)
            .with_context(|| format!("creating {}", shell_dir.display()))?;
        let mut buf = Vec::new();
        manual::completion(shell, cmd, &mut buf);
        let path = shell_dir.join(manual::completion_file_name(shell, &name));
        fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn generate(out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let completions = out.join("completions");
    let mut written = Vec::new();
    let mut taken = BTreeSet::new();
    for cmd in commands() {
        let man = out.join("man").join(cmd.get_name());
        written.extend(manual::write_man_pages(&cmd, &man, &mut taken)?);
        written.extend(write_completions(&cmd, &completions)?);
    }
    Ok(written)
}

fn main() -> ExitCode {
    // clap answers --help and --version itself and refuses unknown flags,
    // so no option is ever taken for the output directory.
    let args = Args::parse();
    match generate(&args.out_dir) {
        Ok(written) => {
            println!(
                "wrote {} files under {}",
                written.len(),
                args.out_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pages_and_completions_for_both_binaries() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path()).unwrap();
        for page in [
            "man/certfleet/certfleet.1",
            "man/certfleet/certfleet-serve.1",
            "man/certfleet-agent/certfleet-agent.1",
            "man/certfleet-agent/certfleet-agent-enroll.1",
            "man/certfleet-agent/certfleet-agent-check-config.1",
            "completions/bash/certfleet",
            "completions/bash/certfleet-agent",
            "completions/zsh/_certfleet",
            "completions/zsh/_certfleet-agent",
            "completions/fish/certfleet.fish",
            "completions/fish/certfleet-agent.fish",
        ] {
            let text = fs::read_to_string(dir.path().join(page)).unwrap();
            assert!(!text.is_empty(), "{page} is empty");
        }
        let serve = fs::read_to_string(dir.path().join("man/certfleet/certfleet-serve.1")).unwrap();
        assert!(
            serve.contains("state\\-dir"),
            "serve page lacks --state-dir:\n{serve}"
        );
        let enroll = fs::read_to_string(
            dir.path()
                .join("man/certfleet-agent/certfleet-agent-enroll.1"),
        )
        .unwrap();
        assert!(
            enroll.contains("ca\\-pin"),
            "enroll page lacks --ca-pin:\n{enroll}"
        );
    }

    #[test]
    fn help_and_unknown_flags_are_not_taken_for_the_output_directory() {
        let help = Args::try_parse_from(["certfleet-packaging-gen", "--help"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        let unknown = Args::try_parse_from(["certfleet-packaging-gen", "--out"]).unwrap_err();
        assert_eq!(unknown.kind(), clap::error::ErrorKind::UnknownArgument);
        let args = Args::try_parse_from(["certfleet-packaging-gen", "target/gen"]).unwrap();
        assert_eq!(args.out_dir, Path::new("target/gen"));
    }

    #[test]
    fn the_agent_binary_owns_certfleet_agent_1() {
        // `certfleet agent …` (controller CLI) and `certfleet-agent` (the
        // agent binary) are both named certfleet-agent; the binary wins, and
        // every file is written once.
        let dir = tempfile::tempdir().unwrap();
        let written = generate(dir.path()).unwrap();
        let unique: BTreeSet<_> = written.iter().map(|p| p.file_name()).collect();
        assert_eq!(
            unique.len(),
            written.len(),
            "duplicate output files: {written:?}"
        );
        let page =
            fs::read_to_string(dir.path().join("man/certfleet-agent/certfleet-agent.1")).unwrap();
        assert!(
            page.contains("check\\-config"),
            "not the agent binary's page:\n{page}"
        );
        assert!(dir
            .path()
            .join("man/certfleet/certfleet-agent-token-create.1")
            .exists());
    }
}
