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
use tokio::io::AsyncReadExt;

use crate::config::Target;

pub mod parse;

use parse::{
    apache_server_root, parse_apache_config, parse_apache_includes, parse_crt_list,
    parse_haproxy_config, parse_nginx_dump, unfollowable,
};

/// Most bytes of a server command's output (`nginx -T`) that are parsed.
pub const MAX_COMMAND_OUTPUT: usize = 16 * 1024 * 1024;
/// Most bytes of a server config file that are parsed.
const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;
/// Most config files followed through includes.
const MAX_CONFIG_FILES: usize = 2000;

pub use crate::config::{
    CommandSource, Discovery, DiscoveryConfig, HaproxySource, Source, DEFAULT_MAX_FILES,
    DEFAULT_MAX_FILE_BYTES,
};

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
    // Non-blocking and type-checked like certificate files: a FIFO named in
    // an include or a crt-list cannot hang the scan.
    let f = std::os::unix::fs::OpenOptionsExt::custom_flags(
        std::fs::OpenOptions::new().read(true),
        nix::libc::O_NONBLOCK,
    )
    .open(path)
    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match f.metadata() {
        Ok(m) if !m.is_file() => return Err(format!("{} is not a regular file", path.display())),
        Ok(_) => {}
        Err(e) => return Err(format!("cannot stat {}: {e}", path.display())),
    }
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
    // A target's `chain` file holds the intermediates of the certificate
    // next to it, not a certificate a server presents: a `[discovery]
    // paths` glob that matches it must not list it as one more unmanaged
    // certificate.
    let chains: Vec<(&Path, Option<PathBuf>)> = targets
        .iter()
        .filter_map(|t| t.chain.as_deref())
        .map(|p| (p, std::fs::canonicalize(p).ok()))
        .collect();
    c.report.entries.retain(|e| {
        let p = Path::new(&e.path);
        let canon = std::fs::canonicalize(p).ok();
        !chains
            .iter()
            .any(|(cp, ccanon)| *cp == p || canon.is_some() && *ccanon == canon)
    });
    // Name the agent's own target that holds each path.
    for e in &mut c.report.entries {
        let p = Path::new(&e.path);
        let canon = std::fs::canonicalize(p).ok();
        e.target = targets
            .iter()
            .find(|t| {
                [
                    t.fullchain.as_deref(),
                    t.cert.as_deref(),
                    t.combined.as_deref(),
                ]
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

    #[test]
    fn apache_and_haproxy_sources_follow_the_targets() {
        let text = r#"
allowed_dirs = ["/srv/tls"]
[[target]]
name = "web"
kind = "apache"
domains = ["a.example"]
cert = "/srv/tls/a/cert.pem"
chain = "/srv/tls/a/chain.pem"
key = "/srv/tls/a/key.pem"
verify = "127.0.0.1:8443"
test_command = ["/usr/sbin/apache2", "-f", "/srv/apache/httpd.conf", "-t"]
reload_command = ["/usr/sbin/apache2", "-f", "/srv/apache/httpd.conf", "-k", "graceful"]
[[target]]
name = "lb"
kind = "haproxy"
domains = ["b.example"]
combined = "/srv/tls/b/site.pem"
haproxy_config = "/srv/haproxy/haproxy.cfg"
verify = "127.0.0.1:9443"
reload_command = ["/bin/true"]
"#;
        let config = crate::config::Config::parse(Path::new("agent.toml"), text).unwrap();
        match &config.discovery.apache {
            Source::Configured(argv) => assert_eq!(
                argv.join(" "),
                "/usr/sbin/apache2 -f /srv/apache/httpd.conf -t -D DUMP_INCLUDES"
            ),
            other => panic!("apache source {other:?}"),
        }
        match &config.discovery.haproxy {
            Source::Configured(files) => {
                assert_eq!(files, &vec![PathBuf::from("/srv/haproxy/haproxy.cfg")])
            }
            other => panic!("haproxy source {other:?}"),
        }
    }
}
