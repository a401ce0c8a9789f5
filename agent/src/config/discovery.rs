//! `[discovery]`: what the agent's certificate discovery may look at, as
//! written in its config ([`DiscoveryConfig`]) and as checked against the
//! host and the targets ([`Discovery`]). The scan itself is in
//! `crate::discovery`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Target, TargetKind};

/// Default cap on files read per `paths` pattern (and per HAProxy `crt`
/// directory).
pub const DEFAULT_MAX_FILES: usize = 1000;
/// Default cap on bytes read from one certificate file.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1024 * 1024;

/// `[discovery]` as written in the agent's config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Scan at all (default true).
    pub enabled: Option<bool>,
    /// Time between scans (default "24h"); a scan also runs on connect.
    pub interval: Option<String>,
    /// Absolute glob patterns of certificate files to report as well.
    #[serde(default, alias = "discover_paths")]
    pub paths: Vec<String>,
    /// Most files read per pattern or `crt` directory (default 1000).
    pub max_files: Option<usize>,
    /// Largest certificate file read, in bytes (default 1 MiB).
    pub max_file_bytes: Option<u64>,
    /// Longest a whole scan may take, commands included (default "60s").
    pub timeout: Option<String>,
    pub nginx: Option<CommandSource>,
    pub apache: Option<CommandSource>,
    pub haproxy: Option<HaproxySource>,
}

/// `[discovery.nginx]` / `[discovery.apache]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSource {
    pub enabled: Option<bool>,
    /// argv (no shell) printing the full config: `nginx -T …` for nginx,
    /// `apache2 -f CONF -t -D DUMP_INCLUDES` (or `apachectl -t -D
    /// DUMP_INCLUDES`) for Apache.
    pub command: Option<Vec<String>>,
}

/// `[discovery.haproxy]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxySource {
    pub enabled: Option<bool>,
    /// Config files (or directories of `*.cfg`) HAProxy is started with.
    pub config: Option<Vec<PathBuf>>,
}

/// Where a server's configuration comes from, and whether the operator
/// asked for it (then a missing binary is a reported problem) or it is a
/// default (then a missing server is simply not there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source<T> {
    Off,
    Default(T),
    Configured(T),
}

/// `[discovery]` checked.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub enabled: bool,
    pub interval: Duration,
    pub paths: Vec<String>,
    pub max_files: usize,
    pub max_file_bytes: u64,
    pub timeout: Duration,
    pub nginx: Source<Vec<String>>,
    pub apache: Source<Vec<String>>,
    pub haproxy: Source<Vec<PathBuf>>,
}

/// The first apache target's config test (`… -t`) turned into the
/// include dump discovery reads.
fn apache_from_target(targets: &[Target]) -> Option<Vec<String>> {
    let test = targets
        .iter()
        .filter(|t| t.kind == TargetKind::Apache)
        .find_map(|t| t.test_command.as_ref())
        .filter(|c| c.iter().any(|a| a == "-t"))?;
    let mut argv: Vec<String> = test.iter().filter(|a| *a != "-q").cloned().collect();
    argv.extend(["-D".to_string(), "DUMP_INCLUDES".to_string()]);
    Some(argv)
}

/// The config files (`-f FILE`) of the haproxy targets' config tests.
fn haproxy_from_targets(targets: &[Target]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    for t in targets.iter().filter(|t| t.kind == TargetKind::Haproxy) {
        let Some(test) = &t.test_command else {
            continue;
        };
        for pair in test.windows(2) {
            let file = PathBuf::from(&pair[1]);
            if pair[0] == "-f" && file.is_absolute() && !files.contains(&file) {
                files.push(file);
            }
        }
    }
    files
}

fn first_existing(candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .find(|p| Path::new(p).is_file())
        .map(|p| p.to_string())
}

impl Discovery {
    /// Check `[discovery]`; `Err((key, message))` names the bad key.
    /// Defaults: nginx from the first nginx target's test command (`-t`
    /// becomes `-T`) or `nginx -T`; Apache from the first apache target's
    /// test command (with `-D DUMP_INCLUDES`) or `apache2ctl`/`apachectl`;
    /// HAProxy from the haproxy targets' `-f` config files or
    /// `/etc/haproxy/haproxy.cfg` — each only where installed.
    pub fn check(raw: &DiscoveryConfig, targets: &[Target]) -> Result<Discovery, (String, String)> {
        let duration = |key: &str, v: &Option<String>, default: &str| {
            let text = v.as_deref().unwrap_or(default);
            humantime::parse_duration(text)
                .map_err(|e| (format!("discovery.{key}"), format!("{text:?}: {e}")))
        };
        let interval = duration("interval", &raw.interval, "24h")?;
        if interval < Duration::from_secs(60) {
            return Err(("discovery.interval".into(), "must be at least 1m".into()));
        }
        let timeout = duration("timeout", &raw.timeout, "60s")?;
        for (i, p) in raw.paths.iter().enumerate() {
            let key = format!("discovery.paths[{i}]");
            if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
                return Err((
                    key,
                    format!("{p:?} must be an absolute pattern without '..'"),
                ));
            }
            glob::Pattern::new(p).map_err(|e| (key, format!("{p:?}: {e}")))?;
        }
        let max_files = raw.max_files.unwrap_or(DEFAULT_MAX_FILES);
        let max_file_bytes = raw.max_file_bytes.unwrap_or(DEFAULT_MAX_FILE_BYTES);
        if max_files == 0 || max_file_bytes == 0 {
            return Err((
                "discovery.max_files".into(),
                "max_files and max_file_bytes must be positive".into(),
            ));
        }
        let argv_ok = |key: &str, c: &Option<Vec<String>>| match c {
            Some(c) if c.first().is_none_or(|p| p.is_empty()) => Err((
                format!("discovery.{key}.command"),
                "must be a non-empty argv array".to_string(),
            )),
            _ => Ok(()),
        };
        let nginx = match &raw.nginx {
            Some(s) if s.enabled == Some(false) => Source::Off,
            Some(CommandSource {
                command: Some(c), ..
            }) => {
                argv_ok("nginx", &Some(c.clone()))?;
                Source::Configured(c.clone())
            }
            _ => {
                let from_target = targets
                    .iter()
                    .filter(|t| t.kind == TargetKind::Nginx)
                    .find_map(|t| t.test_command.as_ref())
                    .filter(|c| c.iter().any(|a| a == "-t"))
                    .map(|c| {
                        c.iter()
                            .filter(|a| *a != "-q")
                            .map(|a| {
                                if a == "-t" {
                                    "-T".to_string()
                                } else {
                                    a.clone()
                                }
                            })
                            .collect::<Vec<_>>()
                    });
                match from_target {
                    Some(c) => Source::Configured(c),
                    None => match first_existing(&["/usr/sbin/nginx", "/usr/bin/nginx"]) {
                        Some(bin) => Source::Default(vec![bin, "-T".into()]),
                        None => Source::Off,
                    },
                }
            }
        };
        let apache = match &raw.apache {
            Some(s) if s.enabled == Some(false) => Source::Off,
            Some(CommandSource {
                command: Some(c), ..
            }) => {
                argv_ok("apache", &Some(c.clone()))?;
                Source::Configured(c.clone())
            }
            _ => match apache_from_target(targets) {
                Some(c) => Source::Configured(c),
                None => match first_existing(&[
                    "/usr/sbin/apache2ctl",
                    "/usr/sbin/apachectl",
                    "/usr/bin/apachectl",
                ]) {
                    Some(bin) => {
                        Source::Default(vec![bin, "-t".into(), "-D".into(), "DUMP_INCLUDES".into()])
                    }
                    None => Source::Off,
                },
            },
        };
        let haproxy = match &raw.haproxy {
            Some(s) if s.enabled == Some(false) => Source::Off,
            Some(HaproxySource {
                config: Some(files),
                ..
            }) => {
                for (i, f) in files.iter().enumerate() {
                    if !f.is_absolute() {
                        return Err((
                            format!("discovery.haproxy.config[{i}]"),
                            format!("{} must be an absolute path", f.display()),
                        ));
                    }
                }
                Source::Configured(files.clone())
            }
            _ if !haproxy_from_targets(targets).is_empty() => {
                Source::Configured(haproxy_from_targets(targets))
            }
            _ => {
                let default = Path::new("/etc/haproxy/haproxy.cfg");
                if default.is_file() {
                    Source::Default(vec![default.to_path_buf()])
                } else {
                    Source::Off
                }
            }
        };
        Ok(Discovery {
            enabled: raw.enabled.unwrap_or(true),
            interval,
            paths: raw.paths.clone(),
            max_files,
            max_file_bytes,
            timeout,
            nginx,
            apache,
            haproxy,
        })
    }
}
