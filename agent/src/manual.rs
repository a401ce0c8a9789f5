//! Man pages and shell completions rendered from a clap command, shared by
//! `certfleet man|completion`, `certfleet-agent man|completion` and the
//! packaging generator, so that what the packages ship is what the binaries
//! print. It lives in the agent library because the controller already
//! links it (for `serve --dev`'s in-process agent).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Command;
pub use clap_complete::Shell;

/// Failure to render or write a page.
#[derive(Debug, thiserror::Error)]
pub enum ManualError {
    #[error("cannot create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot render the man page of {name}")]
    Render {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// The man page of the agent binary's top command. The controller's
/// `certfleet agent` group has the same page name; the binary owns it, so
/// `certfleet man` and the packages leave that one group page out.
pub const AGENT_PAGE: &str = "certfleet-agent";

/// Write `<name>.1` for `cmd` and one page for every visible subcommand
/// (`certfleet-cert-apply.1`, as git and cargo name theirs) into `dir`,
/// creating it. Pages whose names are in `taken` are skipped (their
/// subcommands are not); every name written is added to `taken`.
pub fn write_man_pages(
    cmd: &Command,
    dir: &Path,
    taken: &mut BTreeSet<String>,
) -> Result<Vec<PathBuf>, ManualError> {
    std::fs::create_dir_all(dir).map_err(|source| ManualError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut cmd = cmd.clone();
    // Building propagates the version and global arguments to the
    // subcommands and gives them their `certfleet-cert-apply` names.
    cmd.build();
    let mut written = Vec::new();
    pages(&cmd, dir, taken, &mut written)?;
    Ok(written)
}

fn pages(
    cmd: &Command,
    dir: &Path,
    taken: &mut BTreeSet<String>,
    written: &mut Vec<PathBuf>,
) -> Result<(), ManualError> {
    let name = page_name(cmd);
    if taken.insert(name.clone()) {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .render(&mut buf)
            .map_err(|source| ManualError::Render {
                name: name.clone(),
                source,
            })?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, buf).map_err(|source| ManualError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        pages(sub, dir, taken, written)?;
    }
    Ok(())
}

/// The page name of a built command: `certfleet-cert-apply`.
pub fn page_name(cmd: &Command) -> String {
    cmd.get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_owned()
}

/// The completion script of `cmd` for `shell`.
pub fn completion(shell: Shell, cmd: &Command, out: &mut dyn Write) {
    let mut cmd = cmd.clone();
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// The file name each shell looks a completion up under.
pub fn completion_file_name(shell: Shell, bin: &str) -> String {
    match shell {
        Shell::Zsh => format!("_{bin}"),
        Shell::Fish => format!("{bin}.fish"),
        Shell::Elvish => format!("{bin}.elv"),
        Shell::PowerShell => format!("_{bin}.ps1"),
        _ => bin.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn a_page_per_visible_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let mut taken = BTreeSet::new();
        let written = write_man_pages(&crate::cli::Cli::command(), dir.path(), &mut taken).unwrap();
        for name in [
            "certfleet-agent",
            "certfleet-agent-check-config",
            "certfleet-agent-man",
        ] {
            assert!(
                dir.path().join(format!("{name}.1")).exists(),
                "{name}.1 missing from {written:?}"
            );
        }
        // A second pass into the same set writes nothing twice.
        let again = write_man_pages(&crate::cli::Cli::command(), dir.path(), &mut taken).unwrap();
        assert!(again.is_empty(), "{again:?}");
    }
}
