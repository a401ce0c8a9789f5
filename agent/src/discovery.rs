//! Discovery: which certificates this host's servers already use.
//!
//! On connect, on a timer (daily by default) and when the controller asks,
//! the agent asks nginx (`nginx -T`), Apache (`-t -D DUMP_INCLUDES`, then
//! the listed files) and HAProxy (its config files' `bind … crt` lines)
//! which certificate files they serve, reads the files matched by the
//! `[discovery] paths` globs, and reports each certificate — subject, names,
//! issuer, validity, fingerprint, and which site serves it — as one snapshot.
//!
//! Invariants: every command and file comes from this agent's own config or
//! from what the local servers' configs name; nothing from the network is
//! followed. Everything is bounded — files per pattern, bytes per file,
//! entries per report, and the time a scan may take — and every fault (a
//! missing binary, an unreadable file, a file that does not parse) becomes
//! a problem or an entry with an error in the report; a scan never fails
//! as a whole and never stops the agent. Private keys are never read into
//! the report: only CERTIFICATE blocks are parsed.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use certfleet_protocol::message::{InventoryEntry, InventoryReport, Timestamp};
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use crate::config::{Target, TargetKind};

/// Default cap on files read per `paths` pattern (and per HAProxy `crt`
/// directory).
pub const DEFAULT_MAX_FILES: usize = 1000;
/// Default cap on bytes read from one certificate file.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Most bytes of a server command's output (`nginx -T`) that are parsed.
pub const MAX_COMMAND_OUTPUT: usize = 16 * 1024 * 1024;
/// Most bytes of a server config file that are parsed.
const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;
/// Most config files followed through includes.
const MAX_CONFIG_FILES: usize = 2000;

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

fn first_existing(candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .find(|p| Path::new(p).is_file())
        .map(|p| p.to_string())
}

impl Discovery {
    /// Check `[discovery]`; `Err((key, message))` names the bad key.
    /// Defaults: nginx from the first nginx target's test command (`-t`
    /// becomes `-T`) or `nginx -T`; Apache from `apache2ctl`/`apachectl`;
    /// HAProxy from `/etc/haproxy/haproxy.cfg` — each only where installed.
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
            _ => match first_existing(&[
                "/usr/sbin/apache2ctl",
                "/usr/sbin/apachectl",
                "/usr/bin/apachectl",
            ]) {
                Some(bin) => {
                    Source::Default(vec![bin, "-t".into(), "-D".into(), "DUMP_INCLUDES".into()])
                }
                None => Source::Off,
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

impl Discovery {
    /// One line saying what a scan looks at, for `check-config`.
    pub fn summary(&self) -> String {
        if !self.enabled {
            return "discovery: disabled".into();
        }
        fn show<T>(name: &str, s: &Source<T>, f: impl Fn(&T) -> String) -> String {
            match s {
                Source::Off => format!("{name} off"),
                Source::Default(t) => format!("{name} `{}` (default)", f(t)),
                Source::Configured(t) => format!("{name} `{}`", f(t)),
            }
        }
        format!(
            "discovery every {}: {}; {}; {}; {} path pattern(s)",
            humantime::format_duration(self.interval),
            show("nginx", &self.nginx, |a| a.join(" ")),
            show("apache", &self.apache, |a| a.join(" ")),
            show("haproxy", &self.haproxy, |f| f
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")),
            self.paths.len()
        )
    }
}

// ------------------------------------------------------------ references

/// A certificate file a server config names, and where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CertRef {
    pub path: String,
    pub site: Option<String>,
}

/// A reference that cannot be followed (a variable, inline data).
fn unfollowable(path: &str) -> Option<&'static str> {
    if path.contains('$') {
        Some("the path contains a variable, resolved per request; not followed")
    } else if path.starts_with("data:") {
        Some("inline certificate data (data:); not read")
    } else if path.starts_with("engine:") || path.starts_with("store:") {
        Some("certificate held by an engine or store; not read")
    } else {
        None
    }
}

fn join(base: &Path, p: &str) -> String {
    if p.starts_with('/') || unfollowable(p).is_some() {
        p.to_string()
    } else {
        base.join(p).display().to_string()
    }
}

// ------------------------------------------------------------ nginx

/// One lexical token of an nginx config.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Open,
    Close,
    End,
}

fn nginx_tokens(text: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut word = String::new();
    let mut in_word = false;
    let flush = |word: &mut String, in_word: &mut bool, out: &mut Vec<Tok>| {
        if *in_word {
            out.push(Tok::Word(std::mem::take(word)));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '#' if !in_word => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' | '\'' if !in_word => {
                in_word = true;
                while let Some(q) = chars.next() {
                    if q == '\\' {
                        if let Some(n) = chars.next() {
                            word.push(n);
                        }
                    } else if q == c {
                        break;
                    } else {
                        word.push(q);
                    }
                }
                flush(&mut word, &mut in_word, &mut out);
            }
            '{' => {
                flush(&mut word, &mut in_word, &mut out);
                out.push(Tok::Open);
            }
            '}' => {
                flush(&mut word, &mut in_word, &mut out);
                out.push(Tok::Close);
            }
            ';' => {
                flush(&mut word, &mut in_word, &mut out);
                out.push(Tok::End);
            }
            c if c.is_whitespace() => flush(&mut word, &mut in_word, &mut out),
            '\\' => {
                in_word = true;
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    flush(&mut word, &mut in_word, &mut out);
    out
}

/// The files of `nginx -T` output: `# configuration file PATH:` headers
/// followed by each file's text, the main file first.
pub fn nginx_dump_files(dump: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = Vec::new();
    for line in dump.split_inclusive('\n') {
        let header = line
            .trim_end()
            .strip_prefix("# configuration file ")
            .and_then(|r| r.strip_suffix(':'));
        match header {
            Some(path) => files.push((path.to_string(), String::new())),
            None => {
                if let Some((_, text)) = files.last_mut() {
                    text.push_str(line);
                }
            }
        }
    }
    files
}

struct NginxWalk<'a> {
    files: &'a [(String, String)],
    conf_dir: PathBuf,
    refs: Vec<CertRef>,
    depth: usize,
}

#[derive(Default)]
struct NginxServer {
    names: Vec<String>,
    certs: Vec<String>,
}

impl NginxWalk<'_> {
    /// Walk `tokens`; `stack` holds the enclosing block names, `servers`
    /// the open `server` blocks (innermost last).
    fn walk(&mut self, tokens: &[Tok], stack: &mut Vec<String>, servers: &mut Vec<NginxServer>) {
        if self.depth > 32 {
            return;
        }
        let mut words: Vec<String> = Vec::new();
        for t in tokens {
            match t {
                Tok::Word(w) => words.push(w.clone()),
                Tok::Open => {
                    let name = words.first().cloned().unwrap_or_default();
                    if name == "server" {
                        servers.push(NginxServer::default());
                    }
                    stack.push(name);
                    words.clear();
                }
                Tok::Close => {
                    words.clear();
                    if stack.pop().as_deref() == Some("server") {
                        if let Some(s) = servers.pop() {
                            let site = (!s.names.is_empty()).then(|| s.names.join(" "));
                            for c in s.certs {
                                self.refs.push(CertRef {
                                    path: c,
                                    site: site.clone(),
                                });
                            }
                        }
                    }
                }
                Tok::End => {
                    let directive = std::mem::take(&mut words);
                    self.directive(&directive, stack, servers);
                }
            }
        }
    }

    fn directive(&mut self, d: &[String], stack: &[String], servers: &mut Vec<NginxServer>) {
        let Some((name, args)) = d.split_first() else {
            return;
        };
        let in_server = stack.last().map(String::as_str) == Some("server");
        match name.as_str() {
            "server_name" if in_server => {
                if let Some(s) = servers.last_mut() {
                    s.names.extend(
                        args.iter()
                            .filter(|a| !a.is_empty() && *a != "\"\"")
                            .cloned(),
                    );
                }
            }
            "ssl_certificate" => {
                let Some(path) = args.first() else { return };
                let path = join(&self.conf_dir, path);
                match servers.last_mut() {
                    Some(s) if in_server => s.certs.push(path),
                    _ => self.refs.push(CertRef {
                        path,
                        site: Some(format!(
                            "{} level (default for its servers)",
                            stack.last().map(String::as_str).unwrap_or("main")
                        )),
                    }),
                }
            }
            "include" => {
                let Some(pattern) = args.first() else { return };
                let pattern = join(&self.conf_dir, pattern);
                let Ok(p) = glob::Pattern::new(&pattern) else {
                    return;
                };
                let files = self.files;
                for (path, text) in files.iter().filter(|(f, _)| p.matches(f)) {
                    let _ = path;
                    let tokens = nginx_tokens(text);
                    self.depth += 1;
                    // An included file continues the current block.
                    let mut inner_stack = stack.to_vec();
                    self.walk(&tokens, &mut inner_stack, servers);
                    self.depth -= 1;
                }
            }
            _ => {}
        }
    }
}

/// The certificates an `nginx -T` dump configures, with the
/// `server_name`s of their `server` blocks.
pub fn parse_nginx_dump(dump: &str) -> Vec<CertRef> {
    let files = nginx_dump_files(dump);
    let Some((main, text)) = files.first() else {
        return Vec::new();
    };
    let conf_dir = Path::new(main)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut walk = NginxWalk {
        files: &files,
        conf_dir,
        refs: Vec::new(),
        depth: 0,
    };
    let tokens = nginx_tokens(text);
    walk.walk(&tokens, &mut Vec::new(), &mut Vec::new());
    let mut refs = walk.refs;
    refs.sort();
    refs.dedup();
    refs
}

// ------------------------------------------------------------ Apache

/// The files listed by `apache2 -t -D DUMP_INCLUDES`, main config first.
pub fn parse_apache_includes(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix('(')?;
            let (_, path) = rest.split_once(") ")?;
            let path = path.trim();
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// Split an Apache directive line into words, honouring quotes.
fn apache_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut w = String::new();
        if c == '"' || c == '\'' {
            chars.next();
            for q in chars.by_ref() {
                if q == c {
                    break;
                }
                w.push(q);
            }
        } else {
            while let Some(&n) = chars.peek() {
                if n.is_whitespace() {
                    break;
                }
                w.push(n);
                chars.next();
            }
        }
        out.push(w);
    }
    out
}

/// `ServerRoot` of an Apache main config, if it sets one.
pub fn apache_server_root(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let w = apache_words(l.trim());
        (w.len() >= 2 && w[0].eq_ignore_ascii_case("ServerRoot")).then(|| w[1].clone())
    })
}

/// The certificates one Apache config file configures:
/// `SSLCertificateFile` and `SSLCertificateChainFile`, with the
/// `ServerName`/`ServerAlias` (or address) of their `<VirtualHost>`.
pub fn parse_apache_config(text: &str, server_root: &Path) -> Vec<CertRef> {
    let mut refs = Vec::new();
    // (address, names, certs) of the open <VirtualHost>.
    let mut vhost: Option<(String, Vec<String>, Vec<String>)> = None;
    let mut logical = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(cont) = line.strip_suffix('\\') {
            logical.push_str(cont);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let line = std::mem::take(&mut logical);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(tag) = line.strip_prefix('<') {
            let tag = tag.trim_end_matches('>');
            let words = apache_words(tag);
            let Some(name) = words.first() else { continue };
            if name.eq_ignore_ascii_case("VirtualHost") {
                vhost = Some((words[1..].join(" "), Vec::new(), Vec::new()));
            } else if name.eq_ignore_ascii_case("/VirtualHost") {
                if let Some((addr, names, certs)) = vhost.take() {
                    let site = if names.is_empty() {
                        addr
                    } else {
                        names.join(" ")
                    };
                    for c in certs {
                        refs.push(CertRef {
                            path: c,
                            site: Some(site.clone()),
                        });
                    }
                }
            }
            continue;
        }
        let words = apache_words(line);
        let Some((name, args)) = words.split_first() else {
            continue;
        };
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "servername" | "serveralias" => {
                if let Some((_, names, _)) = vhost.as_mut() {
                    let mut args = args.to_vec();
                    if name == "servername" {
                        // ServerName [scheme://]host[:port]
                        args.truncate(1);
                        args = args
                            .into_iter()
                            .map(|a| {
                                let a = a.rsplit("://").next().unwrap_or_default().to_string();
                                a.split(':').next().unwrap_or_default().to_string()
                            })
                            .collect();
                    }
                    names.extend(args);
                }
            }
            "sslcertificatefile" | "sslcertificatechainfile" => {
                let Some(path) = args.first() else { continue };
                let path = join(server_root, path);
                match vhost.as_mut() {
                    Some((_, _, certs)) => certs.push(path),
                    None => refs.push(CertRef {
                        path,
                        site: Some("main server".into()),
                    }),
                }
            }
            _ => {}
        }
    }
    refs
}

// ------------------------------------------------------------ HAProxy

/// What an HAProxy config names: certificate files or directories
/// (`crt`), and `crt-list` files, with the frontend (or `listen`) name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyRefs {
    pub crt: Vec<CertRef>,
    pub crt_lists: Vec<CertRef>,
}

/// Parse an HAProxy config: `crt-base` in `global`, `bind … crt PATH` and
/// `crt-list FILE` in `frontend`/`listen` sections.
pub fn parse_haproxy_config(text: &str, config_dir: &Path) -> HaproxyRefs {
    const SECTIONS: &[&str] = &[
        "global",
        "defaults",
        "frontend",
        "backend",
        "listen",
        "peers",
        "resolvers",
        "userlist",
        "program",
        "mailers",
        "http-errors",
        "ring",
        "cache",
    ];
    let mut crt_base: Option<String> = None;
    let mut section: Option<String> = None;
    let mut out = HaproxyRefs {
        crt: Vec::new(),
        crt_lists: Vec::new(),
    };
    let mut pending = Vec::new();
    for raw in text.lines() {
        let line = match raw.find('#') {
            // `#` starts a comment unless escaped or quoted; certificate
            // paths with `#` are rare enough to ignore.
            Some(i) => &raw[..i],
            None => raw,
        };
        let words = apache_words(line.trim());
        let Some((kw, args)) = words.split_first() else {
            continue;
        };
        if SECTIONS.contains(&kw.as_str()) {
            section = args.first().cloned().or_else(|| Some(kw.clone()));
            if kw != "frontend" && kw != "listen" {
                section = None;
            }
            if kw == "global" {
                section = Some("\0global".into());
            }
            continue;
        }
        if section.as_deref() == Some("\0global") && kw == "crt-base" {
            crt_base = args.first().cloned();
            continue;
        }
        if kw != "bind" {
            continue;
        }
        let site = section.clone().filter(|s| !s.starts_with('\0'));
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "crt" || a == "crt-list" {
                if let Some(p) = it.next() {
                    pending.push((a.clone(), p.clone(), site.clone()));
                }
            }
        }
    }
    for (kind, p, site) in pending {
        let base = crt_base
            .as_deref()
            .map(|b| join(config_dir, b))
            .map(PathBuf::from)
            .unwrap_or_else(|| config_dir.to_path_buf());
        let r = CertRef {
            path: join(&base, &p),
            site,
        };
        if kind == "crt" {
            out.crt.push(r);
        } else {
            out.crt_lists.push(r);
        }
    }
    out
}

/// The certificate paths of a `crt-list` file: the first word of each line.
pub fn parse_crt_list(text: &str, base: &Path) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| apache_words(l).into_iter().next())
        .map(|p| join(base, &p))
        .collect()
}

// ------------------------------------------------------------ certificates

fn truncate(mut s: String) -> String {
    let max = InventoryReport::MAX_FIELD;
    if s.len() > max {
        let mut end = max - 3;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

fn entry(path: &str, source: &str, site: Option<String>) -> InventoryEntry {
    InventoryEntry {
        path: truncate(path.to_string()),
        source: source.to_string(),
        site: site.map(truncate),
        target: None,
        subject: String::new(),
        sans: Vec::new(),
        issuer: String::new(),
        serial: String::new(),
        not_before: None,
        not_after: None,
        fingerprint: None,
        error: None,
    }
}

/// What reading one file gave.
enum ReadOutcome {
    Cert(Box<InventoryEntry>),
    /// A file with no certificate (a key, a README): skipped for globs.
    NotCertificate(String),
    Failed(String),
}

/// Fill `e` from the first certificate of `bytes` (PEM, or DER).
fn parse_certificate(bytes: &[u8], e: &mut InventoryEntry) -> Result<(), (bool, String)> {
    let mut der: Option<Vec<u8>> = None;
    let mut saw_pem = false;
    for pem in x509_parser::pem::Pem::iter_from_buffer(bytes) {
        match pem {
            Ok(p) => {
                saw_pem = true;
                if p.label == "CERTIFICATE" || p.label == "TRUSTED CERTIFICATE" {
                    der = Some(p.contents);
                    break;
                }
            }
            Err(_) if saw_pem => break,
            Err(_) => break,
        }
    }
    let der = match der {
        Some(d) => d,
        None if saw_pem => return Err((false, "the file holds no certificate".into())),
        None if bytes.starts_with(b"\x30") => bytes.to_vec(),
        None => {
            if String::from_utf8_lossy(bytes).contains("-----BEGIN CERTIFICATE-----") {
                return Err((true, "the certificate PEM block is malformed".into()));
            }
            return Err((false, "not a PEM or DER certificate".into()));
        }
    };
    let (_, x) = x509_parser::parse_x509_certificate(&der)
        .map_err(|err| (true, format!("the certificate does not parse: {err}")))?;
    e.subject = truncate(x.subject().to_string());
    e.issuer = truncate(x.issuer().to_string());
    e.serial = truncate(
        x.raw_serial_as_string()
            .replace(':', "")
            .to_ascii_uppercase(),
    );
    e.not_before = Some(Timestamp(x.validity().not_before.timestamp()));
    e.not_after = Some(Timestamp(x.validity().not_after.timestamp()));
    e.fingerprint = Some(hex::encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der).as_ref(),
    ));
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            let name = match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        Some(std::net::IpAddr::from(a).to_string())
                    } else {
                        <[u8; 16]>::try_from(*b)
                            .ok()
                            .map(|a| std::net::IpAddr::from(a).to_string())
                    }
                }
                _ => None,
            };
            if let Some(n) = name {
                if e.sans.len() < InventoryReport::MAX_SANS {
                    e.sans.push(truncate(n));
                }
            }
        }
    }
    Ok(())
}

/// Read one file, bounded by `max_bytes`.
fn read_cert(path: &str, source: &str, site: Option<String>, max_bytes: u64) -> ReadOutcome {
    let mut e = entry(path, source, site);
    if let Some(why) = unfollowable(path) {
        return ReadOutcome::Failed(why.to_string());
    }
    // Non-blocking, so a FIFO where a certificate should be cannot hang the
    // scan; the type is checked on the open descriptor.
    let file = match std::os::unix::fs::OpenOptionsExt::custom_flags(
        std::fs::OpenOptions::new().read(true),
        nix::libc::O_NONBLOCK,
    )
    .open(path)
    {
        Ok(f) => f,
        Err(err) => return ReadOutcome::Failed(format!("cannot open: {err}")),
    };
    match file.metadata() {
        Ok(m) if !m.is_file() => return ReadOutcome::Failed("not a regular file".into()),
        Ok(m) if m.len() > max_bytes => {
            return ReadOutcome::Failed(format!(
                "the file is {} bytes, more than the discovery limit of {max_bytes} \
                 (discovery.max_file_bytes); not read",
                m.len()
            ))
        }
        Ok(_) => {}
        Err(err) => return ReadOutcome::Failed(format!("cannot stat: {err}")),
    }
    let mut bytes = Vec::new();
    if let Err(err) = file.take(max_bytes).read_to_end(&mut bytes) {
        return ReadOutcome::Failed(format!("cannot read: {err}"));
    }
    match parse_certificate(&bytes, &mut e) {
        Ok(()) => ReadOutcome::Cert(Box::new(e)),
        Err((true, why)) => ReadOutcome::Failed(why),
        Err((false, why)) => ReadOutcome::NotCertificate(why),
    }
}

/// Collects entries and problems within the report's bounds.
struct Collector {
    report: InventoryReport,
    seen: BTreeSet<(String, String, Option<String>)>,
    full: bool,
    deadline: Instant,
    timed_out: bool,
    max_file_bytes: u64,
}

impl Collector {
    fn problem(&mut self, p: String) {
        if self.report.problems.len() < InventoryReport::MAX_PROBLEMS {
            self.report.problems.push(truncate(p));
        }
    }

    fn out_of_time(&mut self) -> bool {
        if !self.timed_out && Instant::now() >= self.deadline {
            self.timed_out = true;
            self.problem(
                "the scan ran out of time (discovery.timeout); the report is partial".into(),
            );
        }
        self.timed_out
    }

    fn push(&mut self, e: InventoryEntry) {
        let key = (e.path.clone(), e.source.clone(), e.site.clone());
        if !self.seen.insert(key) {
            return;
        }
        if self.report.entries.len() >= InventoryReport::MAX_ENTRIES {
            if !self.full {
                self.full = true;
                self.problem(format!(
                    "more than {} certificates found; only the first {0} are reported",
                    InventoryReport::MAX_ENTRIES
                ));
            }
            return;
        }
        self.report.entries.push(e);
    }

    /// A file a server config names: every outcome is an entry.
    fn server_file(&mut self, path: &str, source: &str, site: Option<String>) {
        if self.out_of_time() {
            return;
        }
        match read_cert(path, source, site.clone(), self.max_file_bytes) {
            ReadOutcome::Cert(e) => self.push(*e),
            ReadOutcome::NotCertificate(why) | ReadOutcome::Failed(why) => {
                let mut e = entry(path, source, site);
                e.error = Some(truncate(why));
                self.push(e);
            }
        }
    }

    /// A file a glob matched: files without certificates are skipped.
    fn glob_file(&mut self, path: &str) {
        match read_cert(path, "path", None, self.max_file_bytes) {
            ReadOutcome::Cert(e) => self.push(*e),
            ReadOutcome::NotCertificate(_) => {}
            ReadOutcome::Failed(why) => {
                let mut e = entry(path, "path", None);
                e.error = Some(truncate(why));
                self.push(e);
            }
        }
    }

    /// An HAProxy `crt` that is a directory: every certificate file in it.
    fn crt_dir(&mut self, dir: &str, site: Option<String>, max_files: usize) {
        let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .take(max_files + 1)
                .collect(),
            Err(err) => {
                let mut e = entry(dir, "haproxy", site);
                e.error = Some(format!("cannot read directory: {err}"));
                self.push(e);
                return;
            }
        };
        if names.len() > max_files {
            names.truncate(max_files);
            self.problem(format!(
                "HAProxy crt directory {dir} holds more than {max_files} files; only \
                 {max_files} were read (discovery.max_files)"
            ));
        }
        names.sort();
        for p in names {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if name.starts_with('.')
                || [".key", ".ocsp", ".issuer", ".sctl"]
                    .iter()
                    .any(|s| name.ends_with(s))
            {
                continue;
            }
            if self.out_of_time() {
                return;
            }
            match read_cert(
                &p.display().to_string(),
                "haproxy",
                site.clone(),
                self.max_file_bytes,
            ) {
                ReadOutcome::Cert(e) => self.push(*e),
                ReadOutcome::NotCertificate(_) => {}
                ReadOutcome::Failed(why) => {
                    let mut e = entry(&p.display().to_string(), "haproxy", site.clone());
                    e.error = Some(why);
                    self.push(e);
                }
            }
        }
    }
}

/// Read a config file whole, bounded.
fn read_config(path: &Path) -> Result<String, String> {
    let f =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A server command's outcome.
#[derive(Debug)]
enum CommandResult {
    Output(String),
    /// The binary is not there.
    Missing(String),
    Failed(String),
}

async fn read_bounded(mut r: impl tokio::io::AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut over = false;
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return (buf, over),
            Ok(n) => {
                // Keep draining so the child never blocks on a full pipe.
                if buf.len() + n <= cap {
                    buf.extend_from_slice(&chunk[..n]);
                } else {
                    over = true;
                }
            }
        }
    }
}

async fn run_command(argv: &[String], timeout: Duration) -> CommandResult {
    let Some((program, args)) = argv.split_first() else {
        return CommandResult::Failed("empty command".into());
    };
    let shown = argv.join(" ");
    let mut child = match tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return CommandResult::Missing(format!("cannot run `{shown}`: {program} not found"))
        }
        Err(e) => return CommandResult::Failed(format!("cannot run `{shown}`: {e}")),
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out = tokio::spawn(async move {
        match stdout {
            Some(s) => read_bounded(s, MAX_COMMAND_OUTPUT).await,
            None => (Vec::new(), false),
        }
    });
    let err = tokio::spawn(async move {
        match stderr {
            Some(s) => read_bounded(s, 4096).await.0,
            None => Vec::new(),
        }
    });
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return CommandResult::Failed(format!("`{shown}`: {e}")),
        Err(_) => {
            let _ = child.kill().await;
            return CommandResult::Failed(format!(
                "`{shown}` timed out after {}",
                humantime::format_duration(timeout)
            ));
        }
    };
    let (out, over) = out.await.unwrap_or_default();
    let err = err.await.unwrap_or_default();
    if !status.success() {
        return CommandResult::Failed(format!(
            "`{shown}` failed ({status}): {}",
            String::from_utf8_lossy(&err).trim()
        ));
    }
    if over {
        return CommandResult::Failed(format!(
            "`{shown}` printed more than {MAX_COMMAND_OUTPUT} bytes; not parsed"
        ));
    }
    CommandResult::Output(String::from_utf8_lossy(&out).into_owned())
}

fn command_problem<T>(
    server: &str,
    source: &Source<T>,
    r: CommandResult,
) -> Option<Result<String, String>> {
    match r {
        CommandResult::Output(o) => Some(Ok(o)),
        // A default that is not installed is simply absent.
        CommandResult::Missing(_) if matches!(source, Source::Default(_)) => None,
        CommandResult::Missing(why) | CommandResult::Failed(why) => {
            Some(Err(format!("{server}: {why}")))
        }
    }
}

/// Scan this host. Never fails: faults are in the report.
pub async fn scan(discovery: &Discovery, targets: &[Target], now: i64) -> InventoryReport {
    let deadline = Instant::now() + discovery.timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let nginx = match &discovery.nginx {
        Source::Off => None,
        s @ (Source::Default(argv) | Source::Configured(argv)) => {
            command_problem("nginx", s, run_command(argv, left()).await)
        }
    };
    let apache = match &discovery.apache {
        Source::Off => None,
        s @ (Source::Default(argv) | Source::Configured(argv)) => {
            command_problem("apache", s, run_command(argv, left()).await)
                .map(|r| r.map(|out| (out, argv.clone())))
        }
    };
    let discovery = discovery.clone();
    let targets = targets.to_vec();
    let work = tokio::task::spawn_blocking(move || {
        scan_files(&discovery, &targets, nginx, apache, deadline, now)
    });
    match work.await {
        Ok(r) => r,
        Err(e) => InventoryReport {
            scanned_at: Timestamp(now),
            entries: Vec::new(),
            problems: vec![format!("the scan stopped unexpectedly: {e}")],
        },
    }
}

fn scan_files(
    d: &Discovery,
    targets: &[Target],
    nginx: Option<Result<String, String>>,
    apache: Option<Result<(String, Vec<String>), String>>,
    deadline: Instant,
    now: i64,
) -> InventoryReport {
    let mut c = Collector {
        report: InventoryReport {
            scanned_at: Timestamp(now),
            entries: Vec::new(),
            problems: Vec::new(),
        },
        seen: BTreeSet::new(),
        full: false,
        deadline,
        timed_out: false,
        max_file_bytes: d.max_file_bytes,
    };
    match nginx {
        Some(Ok(dump)) => {
            for r in parse_nginx_dump(&dump) {
                c.server_file(&r.path, "nginx", r.site);
            }
        }
        Some(Err(p)) => c.problem(p),
        None => {}
    }
    match apache {
        Some(Ok((out, argv))) => apache_files(&mut c, &out, &argv),
        Some(Err(p)) => c.problem(p),
        None => {}
    }
    let haproxy = match &d.haproxy {
        Source::Off => None,
        Source::Default(f) => Some((f, false)),
        Source::Configured(f) => Some((f, true)),
    };
    if let Some((files, configured)) = haproxy {
        for f in files {
            haproxy_files(&mut c, f, configured, d.max_files);
        }
    }
    for pattern in &d.paths {
        if c.out_of_time() {
            break;
        }
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let paths = match glob::glob_with(pattern, options) {
            Ok(p) => p,
            Err(e) => {
                c.problem(format!("discovery path {pattern:?}: {e}"));
                continue;
            }
        };
        for (n, p) in paths.enumerate() {
            if c.out_of_time() {
                break;
            }
            if n >= d.max_files {
                c.problem(format!(
                    "discovery path {pattern} matched more than {} files; only the first {0} \
                     were read (raise discovery.max_files or narrow the pattern)",
                    d.max_files
                ));
                break;
            }
            match p {
                Ok(p) if p.is_dir() => {}
                Ok(p) => c.glob_file(&p.display().to_string()),
                Err(e) => {
                    let mut en = entry(&e.path().display().to_string(), "path", None);
                    en.error = Some(format!("cannot read: {}", e.error()));
                    c.push(en);
                }
            }
        }
    }
    // Name the agent's own target that holds each path.
    for e in &mut c.report.entries {
        let p = Path::new(&e.path);
        let canon = std::fs::canonicalize(p).ok();
        e.target = targets
            .iter()
            .find(|t| {
                [t.fullchain.as_deref(), t.cert.as_deref()]
                    .into_iter()
                    .flatten()
                    .any(|tp| tp == p || canon.is_some() && std::fs::canonicalize(tp).ok() == canon)
            })
            .map(|t| t.name.clone());
    }
    c.report
}

fn apache_files(c: &mut Collector, out: &str, argv: &[String]) {
    let files = parse_apache_includes(out);
    let Some(main) = files.first() else {
        c.problem(format!(
            "apache: `{}` listed no configuration files (the command must print \
             `-D DUMP_INCLUDES` output)",
            argv.join(" ")
        ));
        return;
    };
    let main_text = match read_config(Path::new(main)) {
        Ok(t) => t,
        Err(e) => {
            c.problem(format!("apache: {e}"));
            return;
        }
    };
    // `-d ROOT` on the command line, else ServerRoot, else the main
    // file's directory.
    let root = argv
        .windows(2)
        .find(|w| w[0] == "-d")
        .map(|w| w[1].clone())
        .or_else(|| apache_server_root(&main_text))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(main)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/"))
        });
    for (i, f) in files.iter().take(MAX_CONFIG_FILES).enumerate() {
        let text = if i == 0 {
            main_text.clone()
        } else {
            match read_config(Path::new(f)) {
                Ok(t) => t,
                Err(e) => {
                    c.problem(format!("apache: {e}"));
                    continue;
                }
            }
        };
        for r in parse_apache_config(&text, &root) {
            c.server_file(&r.path, "apache", r.site);
        }
    }
}

fn haproxy_files(c: &mut Collector, config: &Path, configured: bool, max_files: usize) {
    let files: Vec<PathBuf> = if config.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(config)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "cfg"))
                    .take(MAX_CONFIG_FILES)
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    } else {
        vec![config.to_path_buf()]
    };
    for f in files {
        let text = match read_config(&f) {
            Ok(t) => t,
            Err(e) => {
                if configured || f.exists() {
                    c.problem(format!("haproxy: {e}"));
                }
                continue;
            }
        };
        let dir = f
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let refs = parse_haproxy_config(&text, &dir);
        for r in refs.crt {
            if Path::new(&r.path).is_dir() {
                c.crt_dir(&r.path, r.site, max_files);
            } else {
                c.server_file(&r.path, "haproxy", r.site);
            }
        }
        for l in refs.crt_lists {
            match read_config(Path::new(&l.path)) {
                Ok(text) => {
                    for p in parse_crt_list(&text, &dir).into_iter().take(max_files) {
                        c.server_file(&p, "haproxy", l.site.clone());
                    }
                }
                Err(e) => c.problem(format!("haproxy: crt-list {e}")),
            }
        }
    }
}

/// Keep a report's encoding under `max_bytes`, dropping entries from the
/// end (and saying so) when it would not fit in one frame.
pub fn fit(mut report: InventoryReport, max_bytes: usize) -> InventoryReport {
    let size = |r: &InventoryReport| {
        certfleet_protocol::frame::encode(r, u32::MAX as usize)
            .map(|v| v.len())
            .unwrap_or(usize::MAX)
    };
    let total = report.entries.len();
    while size(&report) > max_bytes && !report.entries.is_empty() {
        let keep = report.entries.len() / 2;
        report.entries.truncate(keep);
    }
    if report.entries.len() < total {
        report.problems.truncate(InventoryReport::MAX_PROBLEMS - 1);
        report.problems.push(format!(
            "the report was too large; only {} of {total} certificates are included",
            report.entries.len()
        ));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX_DUMP: &str = "\
# configuration file /etc/nginx/nginx.conf:
user www-data;
events { worker_connections 64; }
http {
    ssl_certificate /etc/ssl/default.pem; # http-level default
    include /etc/nginx/sites-enabled/*;
    server {
        listen 443 ssl;
        server_name a.example.test www.a.example.test;
        ssl_certificate \"/etc/ssl/a b.pem\";
        ssl_certificate_key /etc/ssl/a.key;
        location / { return 200; }
    }
}

# configuration file /etc/nginx/sites-enabled/b:
server {
    server_name b.example.test;
    include snippets/ssl.conf;
    ssl_certificate $ssl_server_name.pem;
}

# configuration file /etc/nginx/snippets/ssl.conf:
ssl_certificate tls/b.pem;
";

    #[test]
    fn nginx_dump_finds_certificates_with_their_servers() {
        let refs = parse_nginx_dump(NGINX_DUMP);
        let find = |p: &str| refs.iter().find(|r| r.path == p).cloned();
        assert_eq!(
            find("/etc/ssl/a b.pem").unwrap().site.as_deref(),
            Some("a.example.test www.a.example.test")
        );
        // Included inside a server block: that server's names; relative
        // paths resolve against the main config's directory.
        assert_eq!(
            find("/etc/nginx/tls/b.pem").unwrap().site.as_deref(),
            Some("b.example.test")
        );
        assert!(find("/etc/ssl/default.pem")
            .unwrap()
            .site
            .unwrap()
            .contains("http level"));
        assert!(find("$ssl_server_name.pem").is_some());
        assert!(!refs.iter().any(|r| r.path.contains(".key")));
        assert_eq!(refs.len(), 4, "{refs:?}");
    }

    #[test]
    fn nginx_dump_of_nothing_is_empty() {
        assert!(parse_nginx_dump("").is_empty());
        assert!(parse_nginx_dump("garbage { { ;; }").is_empty());
    }

    #[test]
    fn apache_includes_and_vhosts() {
        let out = "Included configuration files:\n  (*) /srv/apache/httpd.conf\n    (10) /srv/apache/sites/a.conf\n";
        assert_eq!(
            parse_apache_includes(out),
            vec!["/srv/apache/httpd.conf", "/srv/apache/sites/a.conf"]
        );
        let conf = "\
ServerRoot \"/srv/apache\"
SSLCertificateFile /etc/ssl/main.pem
<IfModule ssl_module>
<VirtualHost 127.0.0.1:443 [::1]:443>
    ServerName https://a.example.test:443
    ServerAlias www.a.example.test \\
        old.a.example.test
    sslcertificatefile tls/a.pem
    SSLCertificateChainFile \"/etc/ssl/chain a.pem\"
    SSLCertificateKeyFile tls/a.key
</VirtualHost>
<VirtualHost *:8443>
    # SSLCertificateFile /commented/out.pem
    SSLCertificateFile /etc/ssl/noname.pem
</VirtualHost>
</IfModule>
";
        assert_eq!(apache_server_root(conf).as_deref(), Some("/srv/apache"));
        let refs = parse_apache_config(conf, Path::new("/srv/apache"));
        let site = |p: &str| {
            refs.iter()
                .find(|r| r.path == p)
                .and_then(|r| r.site.clone())
        };
        assert_eq!(site("/etc/ssl/main.pem").as_deref(), Some("main server"));
        assert_eq!(
            site("/srv/apache/tls/a.pem").as_deref(),
            Some("a.example.test www.a.example.test old.a.example.test")
        );
        assert!(site("/etc/ssl/chain a.pem").is_some());
        assert_eq!(site("/etc/ssl/noname.pem").as_deref(), Some("*:8443"));
        assert_eq!(refs.len(), 4, "{refs:?}");
    }

    #[test]
    fn haproxy_bind_crt_lines() {
        let cfg = "\
global
    crt-base /etc/haproxy/certs
    log stdout format raw local0
defaults
    mode http
frontend fe_https
    bind 127.0.0.1:8443 ssl crt site.pem crt /abs/other.pem alpn h2
    bind :9443 ssl crt-list lists/crt.list # comment crt /not/this.pem
    default_backend be
backend be
    server s1 127.0.0.1:8080 crt /client/cert.pem
listen admin
    bind :7443 ssl crt dir/
";
        let refs = parse_haproxy_config(cfg, Path::new("/etc/haproxy"));
        let crt: Vec<(String, Option<String>)> = refs
            .crt
            .iter()
            .map(|r| (r.path.clone(), r.site.clone()))
            .collect();
        assert_eq!(
            crt,
            vec![
                (
                    "/etc/haproxy/certs/site.pem".into(),
                    Some("fe_https".into())
                ),
                ("/abs/other.pem".into(), Some("fe_https".into())),
                ("/etc/haproxy/certs/dir/".into(), Some("admin".into())),
            ]
        );
        assert_eq!(refs.crt_lists[0].path, "/etc/haproxy/certs/lists/crt.list");
        assert_eq!(
            parse_crt_list(
                "# c\n/a.pem [alpn h2] a.test\nb.pem\n\n",
                Path::new("/base")
            ),
            vec!["/a.pem", "/base/b.pem"]
        );
    }

    fn self_signed(dir: &Path, name: &str) -> PathBuf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 12, 1);
        let cert = params.self_signed(&key).unwrap();
        let p = dir.join(format!("{name}.pem"));
        std::fs::write(&p, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
        p
    }

    fn discovery(paths: Vec<String>, max_files: usize) -> Discovery {
        Discovery {
            enabled: true,
            interval: Duration::from_secs(86_400),
            paths,
            max_files,
            max_file_bytes: 64 * 1024,
            timeout: Duration::from_secs(30),
            nginx: Source::Off,
            apache: Source::Off,
            haproxy: Source::Off,
        }
    }

    #[tokio::test]
    async fn globs_are_bounded_and_faults_are_entries() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let good = self_signed(d, "a.example.test");
        std::fs::write(
            d.join("key-only.pem"),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        std::fs::write(
            d.join("broken.pem"),
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(d.join("huge.pem"), vec![b'x'; 100 * 1024]).unwrap();
        nix::unistd::mkfifo(&d.join("pipe.pem"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::os::unix::fs::symlink("/nonexistent/cert.pem", d.join("dangling.pem")).unwrap();
        let r = scan(
            &discovery(vec![format!("{}/*.pem", d.display())], 100),
            &[],
            0,
        )
        .await;
        let by = |name: &str| {
            r.entries
                .iter()
                .find(|e| e.path.ends_with(name))
                .unwrap_or_else(|| panic!("{name} not in {r:?}"))
        };
        let e = by("a.example.test.pem");
        assert_eq!(e.sans, vec!["a.example.test"]);
        assert_eq!(e.not_after, Some(Timestamp(1_796_083_200)));
        assert_eq!(e.fingerprint.as_ref().unwrap().len(), 64);
        assert_eq!(e.path, good.display().to_string());
        assert!(by("broken.pem")
            .error
            .as_ref()
            .unwrap()
            .contains("does not parse"));
        assert!(by("huge.pem")
            .error
            .as_ref()
            .unwrap()
            .contains("max_file_bytes"));
        assert!(!r.entries.iter().any(|e| e.path.ends_with("key-only.pem")));
        assert!(by("pipe.pem")
            .error
            .as_ref()
            .unwrap()
            .contains("not a regular file"));
        assert!(by("dangling.pem")
            .error
            .as_ref()
            .unwrap()
            .contains("cannot open"));
        assert!(r.problems.is_empty(), "{:?}", r.problems);

        for i in 0..30 {
            std::fs::write(d.join(format!("n{i}.crt")), "x").unwrap();
        }
        let r = scan(
            &discovery(vec![format!("{}/*.crt", d.display())], 10),
            &[],
            0,
        )
        .await;
        assert!(
            r.problems.iter().any(|p| p.contains("more than 10 files")),
            "{r:?}"
        );
        assert!(r.check().is_ok());
    }

    #[tokio::test]
    async fn missing_binary_is_a_problem_only_when_configured() {
        let mut d = discovery(vec![], 10);
        d.nginx = Source::Configured(vec!["/nonexistent/nginx".into(), "-T".into()]);
        d.apache = Source::Default(vec!["/nonexistent/apachectl".into()]);
        let r = scan(&d, &[], 0).await;
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].contains("nginx") && r.problems[0].contains("not found"));
    }

    #[test]
    fn oversized_reports_are_cut_to_fit() {
        let mut e = entry("/x", "path", None);
        e.subject = "s".repeat(1000);
        let r = InventoryReport {
            scanned_at: Timestamp(0),
            entries: vec![e; 100],
            problems: vec![],
        };
        let r = fit(r, 20_000);
        assert!(r.entries.len() < 20 && !r.entries.is_empty());
        assert!(r.problems[0].contains("of 100"));
    }

    #[test]
    fn config_defaults_and_errors() {
        let raw: DiscoveryConfig = toml::from_str("paths = [\"/etc/ssl/*.pem\"]\n").unwrap();
        let d = Discovery::check(&raw, &[]).unwrap();
        assert_eq!(d.interval, Duration::from_secs(86_400));
        assert_eq!(d.max_files, DEFAULT_MAX_FILES);
        let raw: DiscoveryConfig = toml::from_str("paths = [\"relative/*.pem\"]\n").unwrap();
        assert!(Discovery::check(&raw, &[])
            .unwrap_err()
            .0
            .contains("paths[0]"));
        let raw: DiscoveryConfig =
            toml::from_str("[nginx]\nenabled = false\n[apache]\ncommand = []\n").unwrap();
        assert!(Discovery::check(&raw, &[])
            .unwrap_err()
            .0
            .contains("apache"));
        assert!(toml::from_str::<DiscoveryConfig>("bogus = 1\n").is_err());
    }
}
