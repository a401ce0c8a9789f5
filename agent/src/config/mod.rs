//! The agent's configuration (TOML).
//!
//! Everything the agent writes or runs is named here, by the operator of the
//! host; nothing the controller sends is ever used as a path or a command.
//! Unknown keys are errors, and every error names the file and the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

mod discovery;

use nix::sys::signal::Signal;
use serde::Deserialize;

pub use discovery::{
    CommandSource, Discovery, DiscoveryConfig, HaproxySource, Source, DEFAULT_MAX_FILES,
    DEFAULT_MAX_FILE_BYTES,
};

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
    /// Apache httpd: test with `apachectl -t`, graceful reload.
    Apache,
    /// HAProxy: one combined PEM, test with `haproxy -c`, reload or
    /// hitless update through the runtime API.
    Haproxy,
    /// A PKCS#12 keystore (Tomcat and other Java servers).
    Pkcs12,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Nginx => "nginx",
            TargetKind::Files => "files",
            TargetKind::Apache => "apache",
            TargetKind::Haproxy => "haproxy",
            TargetKind::Pkcs12 => "pkcs12",
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
    pub discovery: DiscoveryConfig,
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
    /// Private key (every kind but haproxy and pkcs12).
    pub key: Option<PathBuf>,
    /// haproxy: the combined PEM (leaf, chain, key), as named in `crt`.
    pub combined: Option<PathBuf>,
    /// pkcs12: the keystore file.
    pub keystore: Option<PathBuf>,
    /// pkcs12: file holding the keystore password (read, never written).
    pub password_file: Option<PathBuf>,
    /// pkcs12: the key entry's alias (friendly name).
    pub alias: Option<String>,
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
    /// Master pid file for the default reload: nginx SIGHUP, apache
    /// SIGUSR1 (graceful), haproxy SIGUSR2 (master-worker reload).
    pub pid_file: Option<PathBuf>,
    /// apache: the control script for the default test and reload.
    pub apachectl: Option<PathBuf>,
    /// haproxy: the binary and config used for the default test command.
    pub haproxy_binary: Option<PathBuf>,
    pub haproxy_config: Option<PathBuf>,
    /// haproxy: `reload` (default) or `runtime` (hitless, via the runtime API).
    pub reload_mode: Option<String>,
    /// haproxy runtime mode: the admin-level runtime API socket.
    pub runtime_socket: Option<PathBuf>,
    /// haproxy runtime mode: `reload` (default) or `fail` when the socket
    /// cannot be used.
    pub runtime_fallback: Option<String>,
    /// Overrides of the kind's config test and reload (argv, no shell).
    pub test_command: Option<Vec<String>>,
    pub reload_command: Option<Vec<String>>,
    #[serde(default = "default_command_timeout")]
    pub command_timeout: String,
    /// Commands run before the files are written and after the new
    /// certificate is in service (argv, no shell).
    pub pre_install: Option<Vec<String>>,
    pub post_install: Option<Vec<String>>,
    #[serde(default = "default_command_timeout")]
    pub hook_timeout: String,
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
    pub key: Option<PathBuf>,
    pub combined: Option<PathBuf>,
    pub pkcs12: Option<Pkcs12Settings>,
    pub owner: Option<String>,
    pub group: Option<String>,
    /// Mode of the file holding the key (key, combined PEM or keystore).
    pub key_mode: u32,
    pub verify: Option<SocketAddr>,
    pub sni: Vec<String>,
    pub verify_timeout: Duration,
    pub test_command: Option<Vec<String>>,
    pub reload: Reload,
    pub command_timeout: Duration,
    pub webroot: Option<PathBuf>,
    pub hooks: Hooks,
}

/// A pkcs12 target's keystore settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs12Settings {
    pub keystore: PathBuf,
    pub password_file: PathBuf,
    pub alias: String,
}

/// `pre_install` / `post_install` commands of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hooks {
    pub pre_install: Option<Vec<String>>,
    pub post_install: Option<Vec<String>>,
    pub timeout: Duration,
}

/// How a target's server is reloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    None,
    /// A signal to the pid in this file.
    Signal(PathBuf, Signal),
    Command(Vec<String>),
    /// HAProxy's runtime API: the live combined PEM at `cert` is pushed
    /// through `socket` (`set ssl cert` + `commit ssl cert`); when the
    /// socket cannot be used, `fallback` runs instead, or the step fails
    /// when there is none.
    HaproxyRuntime {
        socket: PathBuf,
        cert: PathBuf,
        fallback: Option<Box<Reload>>,
    },
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
    pub discovery: Discovery,
}

/// Which file keys a kind needs and which it refuses, and the keys that
/// belong to one kind only. Returns the offending key and a message.
fn check_kind_keys(t: &TargetConfig) -> Result<(), (&'static str, String)> {
    let kind = t.kind.as_str();
    let set = |k: &str| -> bool {
        match k {
            "key" => t.key.is_some(),
            "fullchain" => t.fullchain.is_some(),
            "cert" => t.cert.is_some(),
            "chain" => t.chain.is_some(),
            "combined" => t.combined.is_some(),
            "keystore" => t.keystore.is_some(),
            "password_file" => t.password_file.is_some(),
            "alias" => t.alias.is_some(),
            "apachectl" => t.apachectl.is_some(),
            "haproxy_binary" => t.haproxy_binary.is_some(),
            "haproxy_config" => t.haproxy_config.is_some(),
            "reload_mode" => t.reload_mode.is_some(),
            "runtime_socket" => t.runtime_socket.is_some(),
            "runtime_fallback" => t.runtime_fallback.is_some(),
            _ => false,
        }
    };
    let (required, refused): (&[&'static str], &[&'static str]) = match t.kind {
        TargetKind::Nginx | TargetKind::Files | TargetKind::Apache => (
            &["key"],
            &["combined", "keystore", "password_file", "alias"],
        ),
        TargetKind::Haproxy => (
            &["combined"],
            &[
                "key",
                "fullchain",
                "cert",
                "chain",
                "keystore",
                "password_file",
                "alias",
            ],
        ),
        TargetKind::Pkcs12 => (
            &["keystore", "password_file"],
            &["key", "fullchain", "cert", "chain", "combined"],
        ),
    };
    for k in required {
        if !set(k) {
            let why = match *k {
                "combined" => {
                    "haproxy targets write one PEM file holding leaf, chain and key; \
                               set `combined` to the path in HAProxy's `crt` line"
                }
                "password_file" => {
                    "pkcs12 targets read the keystore password from a file the \
                                    host's operator controls; set `password_file`"
                }
                "keystore" => "pkcs12 targets need the keystore path",
                _ => "this key is required",
            };
            return Err((k, format!("missing for kind {kind:?}: {why}")));
        }
    }
    for k in refused {
        if set(k) {
            return Err((k, format!("not used by kind {kind:?}; remove it")));
        }
    }
    if matches!(
        t.kind,
        TargetKind::Nginx | TargetKind::Files | TargetKind::Apache
    ) && t.fullchain.is_none()
        && t.cert.is_none()
    {
        return Err((
            "fullchain",
            "a target needs `fullchain` or `cert` (or both)".into(),
        ));
    }
    let own: &[(&'static str, TargetKind)] = &[
        ("apachectl", TargetKind::Apache),
        ("haproxy_binary", TargetKind::Haproxy),
        ("haproxy_config", TargetKind::Haproxy),
        ("reload_mode", TargetKind::Haproxy),
        ("runtime_socket", TargetKind::Haproxy),
        ("runtime_fallback", TargetKind::Haproxy),
    ];
    for (k, owner) in own {
        if set(k) && t.kind != *owner {
            return Err((
                k,
                format!("only used by kind {:?}; remove it", owner.as_str()),
            ));
        }
    }
    Ok(())
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
            check_kind_keys(t).map_err(|(k, m)| invalid(key(k), m))?;
            let files = [
                ("key", t.key.as_ref()),
                ("fullchain", t.fullchain.as_ref()),
                ("cert", t.cert.as_ref()),
                ("chain", t.chain.as_ref()),
                ("combined", t.combined.as_ref()),
                ("keystore", t.keystore.as_ref()),
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
            let hook_timeout = duration("hook_timeout", &t.hook_timeout)?;
            for (k, d) in [
                ("verify_timeout", verify_timeout),
                ("command_timeout", command_timeout),
                ("hook_timeout", hook_timeout),
            ] {
                if d.is_zero() || d > Duration::from_secs(3600) {
                    return Err(invalid(
                        key(k),
                        "must be between 1ms and 1h, e.g. \"30s\"".into(),
                    ));
                }
            }
            for (k, cmd) in [
                ("test_command", &t.test_command),
                ("reload_command", &t.reload_command),
                ("pre_install", &t.pre_install),
                ("post_install", &t.post_install),
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
                            Signal::SIGHUP,
                        ),
                    };
                    (Some(test), reload)
                }
                TargetKind::Files | TargetKind::Pkcs12 => (
                    t.test_command.clone(),
                    match &t.reload_command {
                        Some(c) => Reload::Command(c.clone()),
                        None => Reload::None,
                    },
                ),
                TargetKind::Apache => {
                    let ctl = t
                        .apachectl
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("apachectl"))
                        .display()
                        .to_string();
                    let test = t
                        .test_command
                        .clone()
                        .unwrap_or_else(|| vec![ctl.clone(), "-t".into()]);
                    let reload = match (&t.reload_command, &t.pid_file) {
                        (Some(c), _) => Reload::Command(c.clone()),
                        // SIGUSR1 is Apache's graceful restart.
                        (None, Some(p)) => Reload::Signal(p.clone(), Signal::SIGUSR1),
                        (None, None) => Reload::Command(vec![ctl, "-k".into(), "graceful".into()]),
                    };
                    (Some(test), reload)
                }
                TargetKind::Haproxy => {
                    let test = t.test_command.clone().unwrap_or_else(|| {
                        vec![
                            t.haproxy_binary
                                .clone()
                                .unwrap_or_else(|| PathBuf::from("haproxy"))
                                .display()
                                .to_string(),
                            "-c".into(),
                            "-q".into(),
                            "-f".into(),
                            t.haproxy_config
                                .clone()
                                .unwrap_or_else(|| PathBuf::from("/etc/haproxy/haproxy.cfg"))
                                .display()
                                .to_string(),
                        ]
                    });
                    // SIGUSR2 to the master of a master-worker HAProxy
                    // reloads it; old workers finish their connections.
                    let signal_or_command = match &t.reload_command {
                        Some(c) => Reload::Command(c.clone()),
                        None => Reload::Signal(
                            t.pid_file
                                .clone()
                                .unwrap_or_else(|| PathBuf::from("/run/haproxy.pid")),
                            Signal::SIGUSR2,
                        ),
                    };
                    let reload = match t.reload_mode.as_deref().unwrap_or("reload") {
                        "reload" => signal_or_command,
                        "runtime" => {
                            let socket = t.runtime_socket.clone().ok_or_else(|| {
                                invalid(
                                    key("runtime_socket"),
                                    "reload_mode = \"runtime\" needs the path of HAProxy's \
                                     admin-level runtime API socket (`stats socket PATH level admin`)"
                                        .into(),
                                )
                            })?;
                            if !lexically_clean(&socket) {
                                return Err(invalid(
                                    key("runtime_socket"),
                                    format!(
                                        "{} must be absolute, without '.' or '..'",
                                        socket.display()
                                    ),
                                ));
                            }
                            let fallback = match t.runtime_fallback.as_deref().unwrap_or("reload") {
                                "reload" => Some(Box::new(signal_or_command)),
                                "fail" => None,
                                other => {
                                    return Err(invalid(
                                        key("runtime_fallback"),
                                        format!("{other:?}: use \"reload\" or \"fail\""),
                                    ))
                                }
                            };
                            Reload::HaproxyRuntime {
                                socket,
                                // check_kind_keys made sure it is set.
                                cert: t.combined.clone().unwrap_or_default(),
                                fallback,
                            }
                        }
                        other => {
                            return Err(invalid(
                                key("reload_mode"),
                                format!("{other:?}: use \"reload\" or \"runtime\""),
                            ))
                        }
                    };
                    (Some(test), reload)
                }
            };
            let pkcs12 = match (t.kind, &t.keystore, &t.password_file) {
                (TargetKind::Pkcs12, Some(keystore), Some(password_file)) => {
                    if !lexically_clean(password_file) {
                        return Err(invalid(
                            key("password_file"),
                            format!(
                                "{} must be absolute, without '.' or '..'",
                                password_file.display()
                            ),
                        ));
                    }
                    let alias = t.alias.clone().unwrap_or_else(|| t.name.clone());
                    if alias.is_empty() || alias.len() > 64 || alias.chars().any(char::is_control) {
                        return Err(invalid(
                            key("alias"),
                            format!("{alias:?}: use 1-64 printable characters"),
                        ));
                    }
                    Some(Pkcs12Settings {
                        keystore: keystore.clone(),
                        password_file: password_file.clone(),
                        alias,
                    })
                }
                _ => None,
            };
            if let Some(w) = &t.webroot {
                if !lexically_clean(w) {
                    return Err(invalid(
                        key("webroot"),
                        format!("{} must be absolute, without '.' or '..'", w.display()),
                    ));
                }
            }
            if matches!(
                t.kind,
                TargetKind::Nginx | TargetKind::Apache | TargetKind::Haproxy
            ) && verify.is_none()
            {
                return Err(invalid(
                    key("verify"),
                    format!(
                        "{} targets need a verify address (host:port the server serves TLS on) so \
                         the agent can prove the new certificate is served",
                        t.kind.as_str()
                    ),
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
                combined: t.combined.clone(),
                pkcs12,
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
                hooks: Hooks {
                    pre_install: t.pre_install.clone(),
                    post_install: t.post_install.clone(),
                    timeout: hook_timeout,
                },
            });
        }
        let discovery = Discovery::check(&raw.discovery, &targets)
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
        assert_eq!(
            t.reload,
            Reload::Signal("/run/nginx.pid".into(), Signal::SIGHUP)
        );
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

    fn one_target(body: &str) -> Result<Config, ConfigError> {
        parse(&format!(
            "allowed_dirs = [\"/etc/tls\"]\n[[target]]\nname = \"t\"\n{body}"
        ))
    }

    fn err(body: &str) -> String {
        one_target(body).unwrap_err().to_string()
    }

    #[test]
    fn apache_defaults() {
        let c = one_target(
            "kind = \"apache\"\ncert = \"/etc/tls/c.pem\"\nchain = \"/etc/tls/ch.pem\"\n\
             key = \"/etc/tls/k.pem\"\nverify = \"127.0.0.1:443\"\n",
        )
        .unwrap();
        let t = &c.targets[0];
        assert_eq!(t.test_command, Some(vec!["apachectl".into(), "-t".into()]));
        assert_eq!(
            t.reload,
            Reload::Command(vec!["apachectl".into(), "-k".into(), "graceful".into()])
        );
        let c = one_target(
            "kind = \"apache\"\nfullchain = \"/etc/tls/f.pem\"\nkey = \"/etc/tls/k.pem\"\n\
             verify = \"127.0.0.1:443\"\npid_file = \"/run/apache2/apache2.pid\"\n",
        )
        .unwrap();
        assert_eq!(
            c.targets[0].reload,
            Reload::Signal("/run/apache2/apache2.pid".into(), Signal::SIGUSR1)
        );
        let e =
            err("kind = \"apache\"\nfullchain = \"/etc/tls/f.pem\"\nkey = \"/etc/tls/k.pem\"\n");
        assert!(e.contains("(t).verify") && e.contains("apache"), "{e}");
    }

    const HAPROXY: &str = "kind = \"haproxy\"\ncombined = \"/etc/tls/site.pem\"\n\
                           verify = \"127.0.0.1:443\"\nhaproxy_config = \"/etc/haproxy/h.cfg\"\n";

    #[test]
    fn haproxy_modes() {
        let c = one_target(HAPROXY).unwrap();
        let t = &c.targets[0];
        assert_eq!(
            t.reload,
            Reload::Signal("/run/haproxy.pid".into(), Signal::SIGUSR2)
        );
        assert_eq!(
            t.test_command.as_ref().unwrap()[1..],
            ["-c", "-q", "-f", "/etc/haproxy/h.cfg"]
        );
        let c = one_target(&format!(
            "{HAPROXY}reload_mode = \"runtime\"\nruntime_socket = \"/run/haproxy/admin.sock\"\n\
             runtime_fallback = \"fail\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.targets[0].reload,
            Reload::HaproxyRuntime {
                socket: "/run/haproxy/admin.sock".into(),
                cert: "/etc/tls/site.pem".into(),
                fallback: None
            }
        );
        let e = err(&format!("{HAPROXY}reload_mode = \"runtime\"\n"));
        assert!(
            e.contains("(t).runtime_socket") && e.contains("level admin"),
            "{e}"
        );
        let e = err(&format!("{HAPROXY}reload_mode = \"hot\"\n"));
        assert!(e.contains("(t).reload_mode"), "{e}");
        let e = err(&format!(
            "{HAPROXY}reload_mode = \"runtime\"\nruntime_socket = \"/s\"\nruntime_fallback = \"maybe\"\n"
        ));
        assert!(e.contains("(t).runtime_fallback"), "{e}");
        let e = err(&format!("{HAPROXY}key = \"/etc/tls/k.pem\"\n"));
        assert!(
            e.contains("(t).key") && e.contains("not used by kind"),
            "{e}"
        );
        let e = err("kind = \"haproxy\"\nverify = \"127.0.0.1:443\"\n");
        assert!(e.contains("(t).combined") && e.contains("crt"), "{e}");
        let e = err(
            "kind = \"files\"\nfullchain = \"/etc/tls/f.pem\"\nkey = \"/etc/tls/k.pem\"\n\
             runtime_socket = \"/s\"\n",
        );
        assert!(
            e.contains("(t).runtime_socket") && e.contains("haproxy"),
            "{e}"
        );
        let e = err(&HAPROXY.replace("/etc/tls/site.pem", "/srv/site.pem"));
        assert!(e.contains("outside allowed_dirs"), "{e}");
    }

    #[test]
    fn pkcs12_needs_a_password_file() {
        let ok = "kind = \"pkcs12\"\nkeystore = \"/etc/tls/ks.p12\"\n\
                  password_file = \"/etc/certfleet/ks.pass\"\n";
        let c = one_target(ok).unwrap();
        let p = c.targets[0].pkcs12.as_ref().unwrap();
        assert_eq!(p.alias, "t");
        assert_eq!(c.targets[0].reload, Reload::None);
        let e = err("kind = \"pkcs12\"\nkeystore = \"/etc/tls/ks.p12\"\n");
        assert!(
            e.contains("agent.toml") && e.contains("(t).password_file"),
            "{e}"
        );
        let e = err(&ok.replace("/etc/certfleet/ks.pass", "pass.txt"));
        assert!(
            e.contains("(t).password_file") && e.contains("absolute"),
            "{e}"
        );
        let e = err(&format!("{ok}key = \"/etc/tls/k.pem\"\n"));
        assert!(e.contains("(t).key"), "{e}");
        let e = err(&format!("{ok}alias = \"\"\n"));
        assert!(e.contains("(t).alias"), "{e}");
    }

    #[test]
    fn hooks_and_timeouts() {
        let base = "kind = \"files\"\nfullchain = \"/etc/tls/f.pem\"\nkey = \"/etc/tls/k.pem\"\n";
        let c = one_target(&format!(
            "{base}pre_install = [\"/bin/true\"]\npost_install = [\"/bin/systemctl\", \"restart\", \"x\"]\n\
             hook_timeout = \"5s\"\n"
        ))
        .unwrap();
        let h = &c.targets[0].hooks;
        assert_eq!(h.timeout, Duration::from_secs(5));
        assert_eq!(h.post_install.as_ref().unwrap().len(), 3);
        let e = err(&format!("{base}post_install = []\n"));
        assert!(
            e.contains("(t).post_install") && e.contains("non-empty argv"),
            "{e}"
        );
        let e = err(&format!("{base}pre_install = [\"\"]\n"));
        assert!(e.contains("(t).pre_install"), "{e}");
        let e = err(&format!("{base}post_install = \"systemctl restart x\"\n"));
        assert!(e.contains("post_install"), "{e}");
        let e = err(&format!("{base}hook_timeout = \"soon\"\n"));
        assert!(e.contains("(t).hook_timeout"), "{e}");
        let e = err(&format!("{base}hook_timeout = \"0s\"\n"));
        assert!(
            e.contains("(t).hook_timeout") && e.contains("between"),
            "{e}"
        );
        let e = err(&format!("{base}command_timeout = \"2h\"\n"));
        assert!(e.contains("(t).command_timeout"), "{e}");
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
