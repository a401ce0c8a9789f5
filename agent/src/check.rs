//! `certfleet-agent check-config`'s file checks beyond parsing: each target
//! path is checked exactly as the install checks it
//! ([`files::check_path`]: no symlinked file or parent, no non-file), and
//! each target directory against the agent unit's sandbox
//! ([`UnitSandbox`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::config::{Config, Target};
use crate::install::files::{self, FileError};
use crate::sandbox::{self, NotChecked, UnitSandbox};

/// What the file checks found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Paths the install would refuse: check-config fails.
    pub errors: Vec<String>,
    /// Paths an install would fail on until the host changes (a missing
    /// directory, a read-only directory under the unit): printed, exit 0.
    pub warnings: Vec<String>,
    /// Why the sandbox was not checked, if it was not.
    pub sandbox_not_checked: Option<NotChecked>,
}

/// Every file a target writes.
pub fn target_files(t: &Target) -> Vec<&Path> {
    [&t.fullchain, &t.cert, &t.chain, &t.key, &t.combined]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
        .chain(t.pkcs12.as_ref().map(|p| p.keystore.as_path()))
        .collect()
}

/// Checks every target of `config`; `sandbox` is the agent unit's settings
/// (or why they could not be read).
pub fn check_paths(config: &Config, sandbox: Result<&UnitSandbox, NotChecked>) -> Findings {
    let mut findings = Findings::default();
    for t in &config.targets {
        let mut dirs = BTreeSet::new();
        let mut missing = BTreeSet::new();
        for path in target_files(t) {
            match files::check_path(path, &config.allowed_dirs) {
                Ok(()) => {}
                // Once per directory, however many of the target's files are in it.
                Err(FileError::MissingDirectory { path: dir }) => {
                    if missing.insert(dir.clone()) {
                        findings.warnings.push(format!(
                            "warning: target {:?}: {} does not exist yet; installs fail \
                             until it is created",
                            t.name,
                            dir.display(),
                        ))
                    }
                }
                Err(e) => findings
                    .errors
                    .push(format!("target {:?}: {e} (the install refuses it)", t.name)),
            }
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        if let Some(webroot) = &t.webroot {
            dirs.insert(webroot.clone());
        }
        if let Ok(sandbox) = &sandbox {
            for dir in dirs.iter().filter(|d| !sandbox.writable(d)) {
                findings.warnings.push(sandbox::read_only_warning(
                    &t.name,
                    dir,
                    &sandbox.protect_system,
                ));
            }
        }
    }
    findings.sandbox_not_checked = sandbox.err();
    findings
}
