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

use anyhow::{bail, Context};
use clap::{Command, CommandFactory};
use clap_complete::Shell;

/// Every binary the packages ship, as its clap command.
/// The agent comes first so that its `certfleet-agent.1` wins over the
/// controller's `certfleet agent` group (see [`write_man_pages`]).
fn commands() -> Vec<Command> {
    vec![
        certfleet_agent::cli::Cli::command(),
        certfleet_controller::cli::Cli::command(),
    ]
}

/// Writes `<display name>.1` for `cmd`, then one page per visible
/// subcommand, named `certfleet-cert-apply.1` the way git and cargo name
/// theirs (clap's display name once the command is built). A page whose name
/// is already in `taken` is not written, its subcommands still are: the
/// controller's `certfleet agent` group would otherwise overwrite the agent
/// binary's `certfleet-agent.1`, and the two packages would both own it.
fn write_man_pages(
    cmd: &Command,
    dir: &Path,
    taken: &mut BTreeSet<String>,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_owned();
    if taken.insert(name.clone()) {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .render(&mut buf)
            .with_context(|| format!("rendering the man page of {name}"))?;
        let path = dir.join(format!("{name}.1"));
        fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        written.extend(write_man_pages(sub, dir, taken)?);
    }
    Ok(written)
}

/// Writes the bash, zsh and fish completions of `cmd` under
/// `dir/<shell>/` with the file names each shell looks up.
fn write_completions(cmd: &Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let name = cmd.get_name().to_owned();
    let mut written = Vec::new();
    for (shell, file) in [
        (Shell::Bash, name.clone()),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let shell_dir = dir.join(shell.to_string());
        fs::create_dir_all(&shell_dir)
            .with_context(|| format!("creating {}", shell_dir.display()))?;
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), &name, &mut buf);
        let path = shell_dir.join(file);
        fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn generate(out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let completions = out.join("completions");
    let mut written = Vec::new();
    let mut taken = BTreeSet::new();
    for mut cmd in commands() {
        // Building propagates the version and global arguments to the
        // subcommands and gives them their `certfleet-cert-apply` names.
        cmd.build();
        let man = out.join("man").join(cmd.get_name());
        fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
        written.extend(write_man_pages(&cmd, &man, &mut taken)?);
        written.extend(write_completions(&cmd, &completions)?);
    }
    Ok(written)
}

fn run() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        bail!("usage: certfleet-packaging-gen OUT_DIR");
    };
    let written = generate(Path::new(&out))?;
    println!(
        "wrote {} files under {}",
        written.len(),
        Path::new(&out).display()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
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
