//! Would the agent's systemd unit let it write a target's files?
//!
//! The packaged `certfleet-agent.service` runs with `ProtectSystem=strict`:
//! everything is read-only except its `ReadWritePaths=`. `check-config` is
//! run by an operator from a shell, outside that sandbox, so testing the
//! directory with access(2) there says nothing about the service. What is
//! true and robust is systemd's own merged view of the unit (the shipped
//! file plus every drop-in): `systemctl show certfleet-agent` prints its
//! `ProtectSystem=`, `ReadWritePaths=`, `ReadOnlyPaths=` and
//! `InaccessiblePaths=`, and the same rules systemd applies decide here
//! whether a directory will be writable. Without a running systemd (a
//! container, a chroot, a non-systemd host) there is no unit to ask and
//! nothing is checked; [`UnitSandbox::load`] says so.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// The unit the packages ship.
pub const UNIT: &str = "certfleet-agent.service";

/// The file-system settings of the agent's unit, as systemd merged them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSandbox {
    /// `ProtectSystem=`: `no`, `yes`, `full` or `strict`.
    pub protect_system: String,
    /// `ReadWritePaths=`, without their `-`/`+` prefixes.
    pub read_write: Vec<PathBuf>,
    /// `ReadOnlyPaths=`.
    pub read_only: Vec<PathBuf>,
    /// `InaccessiblePaths=`.
    pub inaccessible: Vec<PathBuf>,
    /// `StateDirectory=` names, under /var/lib.
    pub state_dirs: Vec<PathBuf>,
    /// `PrivateTmp=yes`: /tmp and /var/tmp are private and writable.
    pub private_tmp: bool,
}

/// Why the unit's settings could not be read: the check is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotChecked {
    /// No systemd is running (no /run/systemd/system).
    NoSystemd,
    /// systemd does not know the unit (the package is not installed).
    UnitNotInstalled,
    /// `systemctl show` could not be run or failed.
    Systemctl(String),
}

impl std::fmt::Display for NotChecked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotChecked::NoSystemd => write!(f, "systemd is not running here"),
            NotChecked::UnitNotInstalled => write!(f, "{UNIT} is not installed"),
            NotChecked::Systemctl(e) => write!(f, "`systemctl show {UNIT}` failed: {e}"),
        }
    }
}

impl UnitSandbox {
    /// Asks the running systemd for the unit's merged settings.
    pub fn load() -> Result<UnitSandbox, NotChecked> {
        if !Path::new("/run/systemd/system").is_dir() {
            return Err(NotChecked::NoSystemd);
        }
        let out = Command::new("systemctl")
            .args([
                "show",
                UNIT,
                "--property=LoadState,ProtectSystem,ReadWritePaths,ReadOnlyPaths,\
                 InaccessiblePaths,StateDirectory,PrivateTmp",
            ])
            .output()
            .map_err(|e| NotChecked::Systemctl(e.to_string()))?;
        if !out.status.success() {
            return Err(NotChecked::Systemctl(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if text.lines().any(|l| l == "LoadState=not-found") {
            return Err(NotChecked::UnitNotInstalled);
        }
        Ok(UnitSandbox::parse(&text))
    }

    /// Parses `systemctl show` output (`Key=value` lines; path lists are
    /// space-separated, optional entries prefixed with `-`).
    pub fn parse(text: &str) -> UnitSandbox {
        let mut sandbox = UnitSandbox {
            protect_system: "no".to_owned(),
            read_write: Vec::new(),
            read_only: Vec::new(),
            inaccessible: Vec::new(),
            state_dirs: Vec::new(),
            private_tmp: false,
        };
        let paths = |value: &str| -> Vec<PathBuf> {
            value
                .split_whitespace()
                .map(|p| PathBuf::from(p.trim_start_matches(['-', '+'])))
                .filter(|p| p.is_absolute())
                .collect()
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "ProtectSystem" => sandbox.protect_system = value.to_owned(),
                "ReadWritePaths" => sandbox.read_write.extend(paths(value)),
                "ReadOnlyPaths" => sandbox.read_only.extend(paths(value)),
                "InaccessiblePaths" => sandbox.inaccessible.extend(paths(value)),
                "StateDirectory" => sandbox.state_dirs.extend(
                    value
                        .split_whitespace()
                        .map(|d| Path::new("/var/lib").join(d)),
                ),
                "PrivateTmp" => sandbox.private_tmp = value == "yes",
                _ => {}
            }
        }
        sandbox
    }

    /// Whether the service may create and rename files in `dir`: the most
    /// specific setting that covers it wins (systemd mounts the more
    /// specific paths last), else what `ProtectSystem=` makes of it.
    pub fn writable(&self, dir: &Path) -> bool {
        let dir = resolve(dir);
        let mut best: Option<(usize, bool)> = None;
        let mut consider = |paths: &[PathBuf], writable: bool| {
            for p in paths {
                let p = resolve(p);
                if dir.starts_with(&p) {
                    let depth = p.components().count();
                    // On a tie the read-only setting wins, as in systemd.
                    if best.is_none_or(|(d, w)| depth > d || (depth == d && w && !writable)) {
                        best = Some((depth, writable));
                    }
                }
            }
        };
        consider(&self.read_write, true);
        consider(&self.state_dirs, true);
        if self.private_tmp {
            consider(&[PathBuf::from("/tmp"), PathBuf::from("/var/tmp")], true);
        }
        consider(&self.read_only, false);
        consider(&self.inaccessible, false);
        if let Some((_, writable)) = best {
            return writable;
        }
        let read_only_roots: &[&str] = match self.protect_system.as_str() {
            "strict" => {
                // Only the API file systems stay writable.
                return ["/dev", "/proc", "/sys"].iter().any(|r| dir.starts_with(r));
            }
            "full" => &["/usr", "/boot", "/efi", "/etc"],
            "yes" | "true" => &["/usr", "/boot", "/efi"],
            _ => &[],
        };
        !read_only_roots.iter().any(|r| dir.starts_with(r))
    }
}

/// `path` with symlinks resolved as far as it exists (systemd resolves the
/// paths of its settings the same way), the rest appended unchanged.
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for c in rest.iter().rev() {
                out.push(c);
            }
            return out;
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(Component::Normal(name))) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return path.to_owned(),
        }
    }
}

/// The warning `check-config` prints for a target directory the unit
/// leaves read-only, naming the drop-in that allows it.
pub fn read_only_warning(target: &str, dir: &Path, protect_system: &str) -> String {
    format!(
        "warning: target {target:?}: {dir} would not be writable by {UNIT} \
         (ProtectSystem={protect_system} and no ReadWritePaths= covers it); \
         the install would fail with \"Read-only file system\". Allow it with \
         `systemctl edit certfleet-agent`:\n    [Service]\n    ReadWritePaths={dir}\n\
         then `systemctl restart certfleet-agent` (docs/packaging.md)",
        dir = dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `systemctl show` prints for the shipped unit (systemd 252).
    const SHIPPED: &str = "LoadState=loaded\n\
        ProtectSystem=strict\n\
        ReadWritePaths=-/etc/certfleet/tls -/etc/nginx/tls -/etc/apache2/tls -/etc/httpd/tls \
        -/etc/haproxy/certs -/var/www/html -/var/log/nginx -/var/lib/nginx\n\
        ReadOnlyPaths=\n\
        InaccessiblePaths=\n\
        StateDirectory=certfleet-agent\n\
        PrivateTmp=yes\n";

    #[test]
    fn the_shipped_unit_allows_the_documented_directories_only() {
        let s = UnitSandbox::parse(SHIPPED);
        assert_eq!(s.protect_system, "strict");
        for dir in [
            "/etc/certfleet/tls/www",
            "/etc/nginx/tls/example.com",
            "/etc/apache2/tls/www",
            "/etc/haproxy/certs",
            "/var/www/html/.well-known/acme-challenge",
            "/var/lib/certfleet-agent/journal",
            "/tmp",
        ] {
            assert!(s.writable(Path::new(dir)), "{dir}");
        }
        for dir in [
            "/srv/tls/app",
            "/etc/postfix/tls",
            "/etc",
            "/var/www",
            "/usr/local",
        ] {
            assert!(!s.writable(Path::new(dir)), "{dir}");
        }
    }

    #[test]
    fn a_drop_in_path_and_more_specific_read_only_paths_win() {
        let s = UnitSandbox::parse(&format!(
            "{SHIPPED}ReadWritePaths=/srv/tls\nReadOnlyPaths=/etc/nginx/tls/frozen\n"
        ));
        assert!(s.writable(Path::new("/srv/tls/app")));
        assert!(!s.writable(Path::new("/etc/nginx/tls/frozen/x")));
        assert!(s.writable(Path::new("/etc/nginx/tls/other")));
    }

    #[test]
    fn weaker_protect_system_levels() {
        let full = UnitSandbox::parse("ProtectSystem=full\n");
        assert!(!full.writable(Path::new("/etc/nginx/tls")));
        assert!(full.writable(Path::new("/srv/tls")));
        let yes = UnitSandbox::parse("ProtectSystem=yes\n");
        assert!(yes.writable(Path::new("/etc/nginx/tls")));
        assert!(!yes.writable(Path::new("/usr/share/x")));
        let no = UnitSandbox::parse("ProtectSystem=no\n");
        assert!(no.writable(Path::new("/usr/share/x")));
    }

    #[test]
    fn the_warning_names_the_drop_in() {
        let w = read_only_warning("app", Path::new("/srv/tls/app"), "strict");
        assert!(w.contains("/srv/tls/app would not be writable"), "{w}");
        assert!(w.contains("systemctl edit certfleet-agent"), "{w}");
        assert!(w.contains("ReadWritePaths=/srv/tls/app\n"), "{w}");
    }
}
