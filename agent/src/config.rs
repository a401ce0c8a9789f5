//! The agent's configuration (TOML).
//!
//! Everything the agent writes or runs is named here, by the operator of the
//! host; nothing the controller sends is ever used as a path or a command.
//! Unknown keys are errors, and every error names the file and the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// Kinds of server software the agent installs into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// nginx: test with `nginx -t`, reload by SIGHUP to the master.
    Nginx,
    /// Plain files; test, reload and verify only when configured.
    Files,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Nginx => "nginx",
            TargetKind::Files => "files",
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/certfleet-agent")
}

fn default_controller() -> String {
    "127.0.0.1:7443".to_string()
}

/// `/etc/certfleet/agent.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Controller address, host:port.
    #[serde(default = "default_controller")]
    pub controller: String,
    /// Identity, install state and journals (created with mode 0700).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Name reported to the controller; defaults to the host name.
    #[serde(default)]
    pub name: Option<String>,
    /// Labels reported to the controller (join-token labels take precedence).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Directories under which target files may be written.
    #[serde(default)]
    pub allowed_dirs: Vec<PathBuf>,
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetConfig>,
    /// Which certificates this host already uses (`[discovery]`).
    #[serde(default)]
    pub discovery: crate::discovery::DiscoveryConfig,
}

fn default_key_mode() -> String {
    "0600".into()
}

fn default_verify_timeout() -> String {
    "10s".into()
}

fn default_command_timeout() -> String {
    "30s".into()
}

/// One `[[target]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    pub kind: TargetKind,
    /// Names this target serves; every deployed certificate must cover them.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Leaf + intermediates.
    pub fullchain: Option<PathBuf>,
    /// Leaf only.
    pub cert: Option<PathBuf>,
    /// Intermediates only.
    pub chain: Option<PathBuf>,
    /// Private key.
    pub key: PathBuf,
    /// Owner and group of the written files (names).
    pub owner: Option<String>,
    pub group: Option<String>,
    /// Mode of the key file; certificate files are world-readable (0644).
    #[serde(default = "default_key_mode")]
    pub mode: String,
    /// host:port to check the served certificate at after a reload.
    pub verify: Option<String>,
    /// SNI names to check; defaults to `domains` that are host names.
    #[serde(default)]
    pub sni: Vec<String>,
    #[serde(default = "default_verify_timeout")]
    pub verify_timeout: String,
    /// nginx: the binary and main config used for the default test command.
    pub nginx_binary: Option<PathBuf>,
    pub nginx_config: Option<PathBuf>,
    /// nginx: master pid file for the default reload (SIGHUP).
    pub pid_file: Option<PathBuf>,
    /// Overrides of the kind's config test and reload (argv, no shell).
    pub test_command: Option<Vec<String>>,
    pub reload_command: Option<Vec<String>>,
    #[serde(default = "default_command_timeout")]
    pub command_timeout: String,
    /// Directory the web server serves for this target's domains over
    /// plain HTTP; ACME HTTP-01 challenges are written under
    /// `<webroot>/.well-known/acme-challenge/`.
    pub webroot: Option<PathBuf>,
}

/// A target with its settings checked and parsed.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub kind: TargetKind,
    pub domains: Vec<String>,
    pub fullchain: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub chain: Option<PathBuf>,
    pub key: PathBuf,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub key_mode: u32,
    pub verify: Option<SocketAddr>,
    pub sni: Vec<String>,
    pub verify_timeout: Duration,
    pub test_command: Option<Vec<String>>,
    pub reload: Reload,
    pub command_timeout: Duration,
    pub webroot: Option<PathBuf>,
}

/// How a target's server is reloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    None,
    /// SIGHUP to the pid in this file.
    Signal(PathBuf),
    Command(Vec<String>),
}

/// The whole checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub controller: String,
    pub state_dir: PathBuf,
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub allowed_dirs: Vec<PathBuf>,
    pub targets: Vec<Target>,
    pub discovery: crate::discovery::Discovery,
}

fn lexically_clean(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl Config {
    /// Read and check a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        if raw.controller.trim().is_empty() || !raw.controller.contains(':') {
            return Err(invalid("controller".into(), "expected host:port".into()));
        }
        if !raw.state_dir.is_absolute() {
            return Err(invalid(
                "state_dir".into(),
                "must be an absolute path".into(),
            ));
        }
        for (i, d) in raw.allowed_dirs.iter().enumerate() {
            if !lexically_clean(d) {
                return Err(invalid(
                    format!("allowed_dirs[{i}]"),
                    format!("{} must be absolute, without '.' or '..'", d.display()),
                ));
            }
            if d == Path::new("/") {
                return Err(invalid(
                    format!("allowed_dirs[{i}]"),
                    "\"/\" would allow writing anywhere; name the certificate directories".into(),
                ));
            }
        }
        for (k, v) in &raw.labels {
            if !label_ok(k) || !label_ok(v) {
                return Err(invalid(
                    format!("labels.{k}"),
                    "keys and values are 1-63 characters of letters, digits, '-', '_', '.'".into(),
                ));
            }
        }
        let mut targets: Vec<Target> = Vec::new();
        for (i, t) in raw.targets.iter().enumerate() {
            let key = |k: &str| format!("target[{i}] ({}).{k}", t.name);
            if t.name.is_empty()
                || t.name.len() > 63
                || !t
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    format!("target[{i}].name"),
                    format!("{:?}: use 1-63 letters, digits, '-' or '_'", t.name),
                ));
            }
            if targets.iter().any(|o| o.name == t.name) {
                return Err(invalid(key("name"), "two targets share this name".into()));
            }
            if t.fullchain.is_none() && t.cert.is_none() {
                return Err(invalid(
                    key("fullchain"),
                    "a target needs `fullchain` or `cert` (or both)".into(),
                ));
            }
            let files = [
                ("key", Some(&t.key)),
                ("fullchain", t.fullchain.as_ref()),
                ("cert", t.cert.as_ref()),
                ("chain", t.chain.as_ref()),
            ];
            let mut seen: Vec<&PathBuf> = Vec::new();
            for (name, p) in files {
                let Some(p) = p else { continue };
                if !lexically_clean(p) {
                    return Err(invalid(
                        key(name),
                        format!("{} must be absolute, without '.' or '..'", p.display()),
                    ));
                }
                if !raw.allowed_dirs.iter().any(|d| p.starts_with(d) && p != d) {
                    return Err(invalid(
                        key(name),
                        format!(
                            "{} is outside allowed_dirs ({}); add its directory to allowed_dirs",
                            p.display(),
                            raw.allowed_dirs
                                .iter()
                                .map(|d| d.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                if seen.contains(&p) {
                    return Err(invalid(key(name), format!("{} is used twice", p.display())));
                }
                seen.push(p);
            }
            let key_mode = u32::from_str_radix(t.mode.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777 && m & 0o002 == 0)
                .ok_or_else(|| {
                    invalid(
                        key("mode"),
                        format!("{:?} is not an octal mode like \"0640\" (and a key must not be world-writable)", t.mode),
                    )
                })?;
            for d in &t.domains {
                certfleet_protocol::name::parse(d)
                    .map_err(|e| invalid(key("domains"), e.to_string()))?;
            }
            let verify = t
                .verify
                .as_deref()
                .map(|v| {
                    v.parse::<SocketAddr>().map_err(|_| {
                        invalid(
                            key("verify"),
                            format!("{v:?} is not an address like 127.0.0.1:443"),
                        )
                    })
                })
                .transpose()?;
            let sni = if t.sni.is_empty() {
                t.domains
                    .iter()
                    .filter(|d| d.parse::<std::net::IpAddr>().is_err() && !d.starts_with("*."))
                    .cloned()
                    .collect()
            } else {
                t.sni.clone()
            };
            let duration = |k: &str, v: &str| {
                humantime::parse_duration(v).map_err(|e| invalid(key(k), format!("{v:?}: {e}")))
            };
            let verify_timeout = duration("verify_timeout", &t.verify_timeout)?;
            let command_timeout = duration("command_timeout", &t.command_timeout)?;
            for (k, cmd) in [
                ("test_command", &t.test_command),
                ("reload_command", &t.reload_command),
            ] {
                if let Some(cmd) = cmd {
                    if cmd.first().is_none_or(|c| c.is_empty()) {
                        return Err(invalid(key(k), "must be a non-empty argv array".into()));
                    }
                }
            }
            let (test_command, reload) = match t.kind {
                TargetKind::Nginx => {
                    let binary = t
                        .nginx_binary
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("nginx"))
                        .display()
                        .to_string();
                    let test = t.test_command.clone().unwrap_or_else(|| {
                        let mut argv = vec![binary, "-t".into()];
                        if let Some(c) = &t.nginx_config {
                            argv.push("-c".into());
                            argv.push(c.display().to_string());
                        }
                        argv
                    });
                    let reload = match &t.reload_command {
                        Some(c) => Reload::Command(c.clone()),
                        None => Reload::Signal(
                            t.pid_file
                                .clone()
                                .unwrap_or_else(|| PathBuf::from("/run/nginx.pid")),
                        ),
                    };
                    (Some(test), reload)
                }
                TargetKind::Files => (
                    t.test_command.clone(),
                    match &t.reload_command {
                        Some(c) => Reload::Command(c.clone()),
                        None => Reload::None,
                    },
                ),
            };
            if let Some(w) = &t.webroot {
                if !lexically_clean(w) {
                    return Err(invalid(
                        key("webroot"),
                        format!("{} must be absolute, without '.' or '..'", w.display()),
                    ));
                }
            }
            if t.kind == TargetKind::Nginx && verify.is_none() {
                return Err(invalid(
                    key("verify"),
                    "nginx targets need a verify address (host:port nginx serves TLS on) so \
                     the agent can prove the new certificate is served"
                        .into(),
                ));
            }
            targets.push(Target {
                name: t.name.clone(),
                kind: t.kind,
                domains: t.domains.clone(),
                fullchain: t.fullchain.clone(),
                cert: t.cert.clone(),
                chain: t.chain.clone(),
                key: t.key.clone(),
                owner: t.owner.clone(),
                group: t.group.clone(),
                key_mode,
                verify,
                sni,
                verify_timeout,
                test_command,
                reload,
                command_timeout,
                webroot: t.webroot.clone(),
            });
        }
        let discovery = crate::discovery::Discovery::check(&raw.discovery, &targets)
            .map_err(|(key, message)| invalid(key, message))?;
        Ok(Config {
            discovery,
            path: path.to_owned(),
            controller: raw.controller,
            state_dir: raw.state_dir,
            name: raw.name.unwrap_or_else(hostname),
            labels: raw.labels.into_iter().collect(),
            allowed_dirs: raw.allowed_dirs,
            targets,
        })
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
controller = "127.0.0.1:7443"
state_dir = "/var/lib/certfleet-agent"
allowed_dirs = ["/etc/nginx/tls"]
[labels]
role = "web"
[[target]]
name = "nginx"
kind = "nginx"
domains = ["www.example.test"]
fullchain = "/etc/nginx/tls/fullchain.pem"
key = "/etc/nginx/tls/privkey.pem"
verify = "127.0.0.1:443"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("agent.toml"), text)
    }

    #[test]
    fn good_config() {
        let c = parse(GOOD).unwrap();
        let t = c.target("nginx").unwrap();
        assert_eq!(t.key_mode, 0o600);
        assert_eq!(t.sni, vec!["www.example.test".to_string()]);
        assert_eq!(t.reload, Reload::Signal("/run/nginx.pid".into()));
        assert_eq!(c.labels, vec![("role".into(), "web".into())]);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let e = parse(&format!("{GOOD}\nbogus = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("agent.toml") && e.contains("bogus"), "{e}");
    }

    #[test]
    fn path_outside_allowed_dirs() {
        let text = GOOD.replace("/etc/nginx/tls/privkey.pem", "/etc/shadow");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("key") && e.contains("outside allowed_dirs"),
            "{e}"
        );
    }

    #[test]
    fn dotdot_rejected() {
        let text = GOOD.replace("/etc/nginx/tls/privkey.pem", "/etc/nginx/tls/../../shadow");
        assert!(parse(&text).unwrap_err().to_string().contains("'..'"));
    }

    #[test]
    fn bad_mode_and_commands() {
        let text = GOOD.replace("verify = ", "mode = \"0666\"\nverify = ");
        assert!(parse(&text).unwrap_err().to_string().contains("mode"));
        let text = GOOD.replace("verify = ", "test_command = []\nverify = ");
        assert!(parse(&text)
            .unwrap_err()
            .to_string()
            .contains("test_command"));
    }

    #[test]
    fn nginx_needs_verify() {
        let text = GOOD.replace("verify = \"127.0.0.1:443\"\n", "");
        assert!(parse(&text).unwrap_err().to_string().contains("verify"));
    }

    #[test]
    fn shipped_configs_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("agent") && name.ends_with(".toml") {
                Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n > 0, "no agent configs found in packaging/");
    }
}
