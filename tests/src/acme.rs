//! ACME pieces for end-to-end tests: a real Pebble CA, `pebble-challtestsrv`
//! as a DNS server that points every name at 127.0.0.1, a real BIND (`named`)
//! authoritative for a test zone with TSIG-signed dynamic updates, and an
//! nginx serving a webroot on Pebble's HTTP-01 port.
//!
//! Every service listens on 127.0.0.1 only, on ports the kernel handed out a
//! moment before, and lives in its own temporary directory, so tests run in
//! parallel. A service whose process exits while starting (most likely
//! because another test took its port in between) is started again on new
//! ports, up to [`START_ATTEMPTS`] times. On drop each service is killed and
//! the tail of its log is printed (shown by the test runner only for a failing
//! test); `CERTFLEET_TEST_KEEP` keeps its directory.
//!
//! Pebble regenerates its root and intermediate at every start: fetch them
//! with [`Pebble::roots_pem`] rather than caching them.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use std::{env, thread};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::fleet::{free_port, nginx_bin};
use crate::{http_get, openssl_ok, run_with_timeout, utf8, HttpResponse, KEEP_ENV};

/// How often a service is started on fresh ports before giving up.
pub const START_ATTEMPTS: u32 = 3;

/// How long a service may take to answer after being started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Upper bound for one `curl`, `dig` or `nsupdate` run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a service may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Lines of a service log printed when the service is dropped.
const LOG_TAIL_LINES: usize = 60;

/// Key name of the TSIG key [`Bind`] accepts updates with.
pub const TSIG_NAME: &str = "certfleet-test";

/// Algorithm of [`TSIG_NAME`], as BIND and `nsupdate -y` spell it.
pub const TSIG_ALGORITHM: &str = "hmac-sha256";

fn find_tool(name: &str, dirs: &[&str]) -> Result<PathBuf> {
    dirs.iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "`{name}` is not installed (looked in {}): run scripts/test.sh, which installs \
                 it (CI does)",
                dirs.join(", ")
            )
        })
}

/// Path of `pebble`; fails with instructions when it is missing.
pub fn pebble_bin() -> Result<PathBuf> {
    find_tool("pebble", &["/usr/bin", "/usr/local/bin"])
}

/// Path of `pebble-challtestsrv`; fails with instructions when it is missing.
pub fn challtestsrv_bin() -> Result<PathBuf> {
    find_tool("pebble-challtestsrv", &["/usr/bin", "/usr/local/bin"])
}

/// Path of `named`; fails with instructions when it is missing.
pub fn named_bin() -> Result<PathBuf> {
    find_tool("named", &["/usr/sbin", "/usr/bin", "/usr/local/sbin"])
}

/// Path of `dig`; fails with instructions when it is missing.
pub fn dig_bin() -> Result<PathBuf> {
    find_tool("dig", &["/usr/bin", "/usr/local/bin"])
}

/// Path of `nsupdate`; fails with instructions when it is missing.
pub fn nsupdate_bin() -> Result<PathBuf> {
    find_tool("nsupdate", &["/usr/bin", "/usr/local/bin"])
}

/// A loopback port free for both UDP and TCP a moment ago (DNS servers
/// listen on both).
pub fn free_udp_tcp_port() -> Result<u16> {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").context("binding a UDP socket")?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("found no loopback port free for both UDP and TCP")
}

/// GETs an `https://` URL with `curl`, trusting only the CA certificates in
/// `ca_bundle`; any status is returned.
pub fn https_get(url: &str, ca_bundle: &Path) -> Result<HttpResponse> {
    let out = run_with_timeout(
        Command::new("curl").args([
            "--silent",
            "--show-error",
            "--include",
            "--cacert",
            utf8(ca_bundle)?,
            url,
        ]),
        TOOL_TIMEOUT,
    )
    .context("running curl (is it installed? scripts/test.sh installs it)")?;
    ensure!(
        out.status.success(),
        "curl {url} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let raw = out.stdout;
    crate::parse_http_response(url, &raw)
}

/// [`https_get`] that fails unless the status is 200; returns the body.
pub fn https_get_ok(url: &str, ca_bundle: &Path) -> Result<Vec<u8>> {
    let resp = https_get(url, ca_bundle)?;
    ensure!(
        resp.status == 200,
        "GET {url} answered {}: {}",
        resp.status,
        String::from_utf8_lossy(&resp.body)
    );
    Ok(resp.body)
}

/// A child process with its own temporary directory and log file; killed,
/// its log tail printed and its directory removed (unless
/// `CERTFLEET_TEST_KEEP` is set) on drop.
struct Service {
    name: &'static str,
    child: Option<Child>,
    log_path: PathBuf,
    root: Option<TempDir>,
}

impl Service {
    /// Spawns `cmd` with stdout and stderr appended to `log_path`.
    fn spawn(
        name: &'static str,
        root: TempDir,
        log_path: PathBuf,
        cmd: &mut Command,
    ) -> Result<Self> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Service {
            name,
            child: Some(child),
            log_path,
            root: Some(root),
        })
    }

    fn dir(&self) -> &Path {
        self.root
            .as_ref()
            .expect("the directory is only taken while dropping")
            .path()
    }

    fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Polls `ready` until it returns true. Fails with [`Exited`] when the
    /// process exits first, and with a plain error after [`READY_TIMEOUT`].
    fn wait_ready(&mut self, mut ready: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(anyhow!(Exited)).with_context(|| {
                        format!(
                            "{} exited with {status} while starting; log tail:\n{}",
                            self.name,
                            self.log_tail()
                        )
                    });
                }
            }
            if ready() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} did not become ready within {READY_TIMEOUT:?}; log tail:\n{}",
                self.name,
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
        // Test runners show captured output only for failing tests.
        eprintln!(
            "--- {} log ({}), last {LOG_TAIL_LINES} lines ---\n{}",
            self.name,
            self.log_path.display(),
            self.log_tail()
        );
        if env::var_os(KEEP_ENV).is_some() {
            if let Some(root) = self.root.take() {
                eprintln!("keeping {}", root.keep().display());
            }
        }
    }
}

/// Stops `child` with SIGTERM, then SIGKILL if it is still running after
/// [`STOP_TIMEOUT`], and reaps it. SIGTERM first because a SIGKILLed nginx
/// master leaves its workers running, still holding the listening socket.
fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = run_with_timeout(
        Command::new("kill").args(["-TERM", &child.id().to_string()]),
        STOP_TIMEOUT,
    );
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    // Kill fails only when the process has already exited; wait reaps it
    // either way.
    let _ = child.kill();
    let _ = child.wait();
}

/// Marks a start that failed because the process exited: worth retrying on
/// other ports.
#[derive(Debug)]
struct Exited;

impl std::fmt::Display for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the process exited")
    }
}

impl std::error::Error for Exited {}

/// Runs `start` up to [`START_ATTEMPTS`] times while it fails with
/// [`Exited`].
fn with_retries<T>(mut start: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempt = 1;
    loop {
        match start() {
            Err(e) if attempt < START_ATTEMPTS && e.is::<Exited>() => {
                eprintln!("retrying on other ports: {e:#}");
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn temp_dir(prefix: &str) -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("creating a temporary directory")
}

/// What [`Pebble::start`] configures.
#[derive(Debug, Clone)]
pub struct PebbleOptions {
    /// DNS server Pebble's VA resolves every name through (`-dnsserver`):
    /// [`ChallTestSrv::dns_addr`] for HTTP-01, [`Bind::addr`] for DNS-01.
    pub dns_server: SocketAddr,
    /// External account binding: `(kid, base64url HMAC key)`. When set,
    /// Pebble requires EAB and accepts only this key.
    pub eab: Option<(String, String)>,
    /// Keep Pebble's random 0–15 s sleep before each validation attempt
    /// (otherwise `PEBBLE_VA_NOSLEEP=1`).
    pub va_sleep: bool,
    /// Set `PEBBLE_WFE_NONCEREJECT=0`; by default Pebble rejects 5% of good
    /// nonces with `badNonce`.
    pub no_nonce_reject: bool,
    /// Names Pebble refuses to issue for (`domainBlocklist`): new orders
    /// for them fail with a `rejectedIdentifier` problem.
    pub domain_blocklist: Vec<String>,
    /// More environment for Pebble, e.g. `PEBBLE_AUTHZREUSE=0`,
    /// `PEBBLE_VA_ALWAYS_VALID=1`, `PEBBLE_CHAIN_LENGTH=2`.
    pub env: Vec<(String, String)>,
    /// Lifetime of the certificates Pebble issues, in seconds
    /// (`certificateValidityPeriod`; Pebble's default is five years).
    pub certificate_validity_secs: Option<u64>,
}

impl PebbleOptions {
    /// Defaults (no EAB, no VA sleeps, Pebble's default 5% nonce rejection)
    /// resolving through `dns_server`.
    pub fn new(dns_server: SocketAddr) -> PebbleOptions {
        PebbleOptions {
            dns_server,
            eab: None,
            va_sleep: false,
            no_nonce_reject: false,
            domain_blocklist: Vec::new(),
            env: Vec::new(),
            certificate_validity_secs: None,
        }
    }
}

/// A running Pebble ACME CA with a TLS certificate made by the test.
pub struct Pebble {
    service: Service,
    /// ACME API address (`https://ADDR/dir`).
    pub listen: SocketAddr,
    /// Management interface address.
    pub management: SocketAddr,
    /// Port Pebble's VA connects to for HTTP-01 (`http://NAME:PORT/…`).
    pub http_port: u16,
    /// Port Pebble's VA connects to for TLS-ALPN-01 (nothing listens there).
    pub tls_port: u16,
    ca_bundle: PathBuf,
    config: PathBuf,
    options: PebbleOptions,
}

impl Pebble {
    /// Makes a TLS CA and a server certificate for 127.0.0.1/localhost,
    /// writes the config, starts `pebble` and waits until the directory
    /// answers over HTTPS.
    pub fn start(options: PebbleOptions) -> Result<Pebble> {
        let bin = pebble_bin()?;
        with_retries(|| Pebble::try_start(&bin, options.clone()))
    }

    fn try_start(bin: &Path, options: PebbleOptions) -> Result<Pebble> {
        let root = temp_dir("certfleet-pebble-")?;
        let dir = root.path().to_path_buf();
        let ca_bundle = dir.join("tls-ca.pem");
        let cert = dir.join("tls-cert.pem");
        let key = dir.join("tls-key.pem");
        make_tls_cert(&dir, &ca_bundle, &cert, &key)?;

        let listen: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let management: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let http_port = free_port()?;
        let tls_port = free_port()?;
        let mut pebble = json!({
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": utf8(&cert)?,
            "privateKey": utf8(&key)?,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": options.eab.is_some(),
            "domainBlocklist": options.domain_blocklist,
            // Pebble 2.5+ only; 2.4 ignores unknown keys.
            "retryAfter": { "authz": 3, "order": 5 },
        });
        if let Some(secs) = options.certificate_validity_secs {
            pebble["certificateValidityPeriod"] = json!(secs);
        }
        if let Some((kid, hmac)) = &options.eab {
            pebble["externalAccountMACKeys"] = json!({ kid: hmac });
        }
        let config = dir.join("pebble-config.json");
        fs::write(
            &config,
            serde_json::to_vec_pretty(&json!({ "pebble": pebble }))?,
        )
        .with_context(|| format!("writing {}", config.display()))?;

        let mut cmd = Command::new(bin);
        cmd.args([
            "-config",
            utf8(&config)?,
            "-dnsserver",
            &options.dns_server.to_string(),
        ])
        .current_dir(&dir);
        for var in [
            "PEBBLE_VA_NOSLEEP",
            "PEBBLE_VA_SLEEPTIME",
            "PEBBLE_VA_ALWAYS_VALID",
            "PEBBLE_WFE_NONCEREJECT",
            "PEBBLE_AUTHZREUSE",
            "PEBBLE_CHAIN_LENGTH",
            "PEBBLE_ALTERNATE_ROOTS",
        ] {
            cmd.env_remove(var);
        }
        if !options.va_sleep {
            cmd.env("PEBBLE_VA_NOSLEEP", "1");
        }
        if options.no_nonce_reject {
            cmd.env("PEBBLE_WFE_NONCEREJECT", "0");
        }
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let log_path = dir.join("pebble.log");
        let mut service = Service::spawn("pebble", root, log_path, &mut cmd)?;
        let dir_url = format!("https://{listen}/dir");
        service.wait_ready(|| https_get(&dir_url, &ca_bundle).is_ok_and(|r| r.status == 200))?;
        Ok(Pebble {
            service,
            listen,
            management,
            http_port,
            tls_port,
            ca_bundle,
            config,
            options,
        })
    }

    /// The ACME directory URL, `https://127.0.0.1:PORT/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.listen)
    }

    /// PEM of the CA that signed Pebble's TLS certificate (for
    /// `--ca-bundle`, `curl --cacert`).
    pub fn ca_bundle_path(&self) -> &Path {
        &self.ca_bundle
    }

    /// `https://127.0.0.1:PORT` of the management interface (same TLS
    /// certificate as the API).
    pub fn management_url(&self) -> String {
        format!("https://{}", self.management)
    }

    /// The options Pebble was started with.
    pub fn options(&self) -> &PebbleOptions {
        &self.options
    }

    /// The JSON config file Pebble was started with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Pebble's log so far.
    pub fn log(&self) -> String {
        self.service.log()
    }

    /// Pebble's temporary directory.
    pub fn dir(&self) -> &Path {
        self.service.dir()
    }

    /// GET `path` on the management interface; the body if 200.
    pub fn management_get(&self, path: &str) -> Result<Vec<u8>> {
        https_get_ok(&format!("{}{path}", self.management_url()), &self.ca_bundle)
    }

    /// PEM of the root Pebble issues under (`/roots/0`); regenerated at every
    /// Pebble start.
    pub fn roots_pem(&self) -> Result<String> {
        pem_text(self.management_get("/roots/0")?, "/roots/0")
    }

    /// PEM of the intermediate that signs leaves (`/intermediates/0`).
    pub fn intermediates_pem(&self) -> Result<String> {
        pem_text(self.management_get("/intermediates/0")?, "/intermediates/0")
    }

    /// Pebble's record of a certificate it issued
    /// (`/cert-status-by-serial/<serial>`): a JSON object with `"Serial"`,
    /// `"Status"` (`"Valid"` or `"Revoked"`), `"Certificate"` (PEM), and for
    /// revoked ones `"Reason"` (the RFC 5280 reason code, a number) and
    /// `"RevokedAt"` (Go's `time.String()` form, e.g. `"2026-11-28
    /// 03:34:54.069381563 +0000 UTC"`, not RFC 3339). Unknown serials fail
    /// (404).
    ///
    /// `serial_hex` may be in any case, with colons or leading zeros (as
    /// `openssl x509 -serial` or [`crate::cert_serial`] print it).
    pub fn cert_status_by_serial(&self, serial_hex: &str) -> Result<Value> {
        let serial = crate::normalize_hex(serial_hex).to_ascii_lowercase();
        let body = self.management_get(&format!("/cert-status-by-serial/{serial}"))?;
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "cert-status-by-serial/{serial} is not JSON: {}",
                String::from_utf8_lossy(&body)
            )
        })
    }
}

fn pem_text(body: Vec<u8>, what: &str) -> Result<String> {
    let text = String::from_utf8(body).with_context(|| format!("{what} is not text"))?;
    ensure!(
        text.contains("-----BEGIN CERTIFICATE-----"),
        "{what} holds no PEM certificate: {text}"
    );
    Ok(text)
}

/// A CA (`ca`) and a server certificate signed by it for 127.0.0.1 and
/// localhost (`cert`, `key`), EC P-256, valid two days.
fn make_tls_cert(dir: &Path, ca: &Path, cert: &Path, key: &Path) -> Result<()> {
    let ca_key = dir.join("tls-ca-key.pem");
    openssl_ok(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=certfleet test Pebble TLS CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        utf8(&ca_key)?,
        "-out",
        utf8(ca)?,
    ])?;
    let csr = dir.join("tls.csr");
    openssl_ok(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        utf8(key)?,
        "-out",
        utf8(&csr)?,
    ])?;
    let ext = dir.join("tls-ext.cnf");
    fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n",
    )?;
    openssl_ok(&[
        "x509",
        "-req",
        "-in",
        utf8(&csr)?,
        "-CA",
        utf8(ca)?,
        "-CAkey",
        utf8(&ca_key)?,
        "-set_serial",
        "2",
        "-days",
        "2",
        "-extfile",
        utf8(&ext)?,
        "-out",
        utf8(cert)?,
    ])?;
    Ok(())
}

/// `pebble-challtestsrv` serving only DNS: every A query is answered with
/// 127.0.0.1, AAAA queries with nothing.
pub struct ChallTestSrv {
    service: Service,
    dns: SocketAddr,
    management: SocketAddr,
}

impl ChallTestSrv {
    /// Starts it on a free UDP+TCP port and waits until it answers DNS.
    pub fn start() -> Result<ChallTestSrv> {
        let bin = challtestsrv_bin()?;
        dig_bin()?;
        with_retries(|| ChallTestSrv::try_start(&bin))
    }

    fn try_start(bin: &Path) -> Result<ChallTestSrv> {
        let root = temp_dir("certfleet-challtestsrv-")?;
        let dns: SocketAddr = ([127, 0, 0, 1], free_udp_tcp_port()?).into();
        // The management interface cannot be turned off.
        let management: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let log_path = root.path().join("challtestsrv.log");
        let mut cmd = Command::new(bin);
        cmd.args([
            "-dns01",
            &dns.to_string(),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &management.to_string(),
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
        ])
        .current_dir(root.path());
        let mut service = Service::spawn("pebble-challtestsrv", root, log_path, &mut cmd)?;
        service.wait_ready(|| {
            dig(dns, &["probe.certfleet.test", "A"]).is_ok_and(|a| a.trim() == "127.0.0.1")
        })?;
        Ok(ChallTestSrv {
            service,
            dns,
            management,
        })
    }

    /// Where it answers DNS (UDP and TCP); pass to [`PebbleOptions::new`].
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns
    }

    /// `http://127.0.0.1:PORT` of its management API (`/add-a`, `/set-txt`,
    /// … see pebble-challtestsrv's README).
    pub fn management_url(&self) -> String {
        format!("http://{}", self.management)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.service.log()
    }
}

/// Runs `dig @ADDR -p PORT +short QUERY…` (one try, 2 s) and returns stdout.
fn dig(server: SocketAddr, query: &[&str]) -> Result<String> {
    let out = run_with_timeout(
        Command::new(dig_bin()?)
            .arg(format!("@{}", server.ip()))
            .args([
                "-p",
                &server.port().to_string(),
                "+short",
                "+time=2",
                "+tries=1",
            ])
            .args(query),
        TOOL_TIMEOUT,
    )?;
    ensure!(
        out.status.success(),
        "dig {query:?} at {server} failed with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The character strings of one TXT record as `dig +short` prints it
/// (`"a" "b"`), concatenated, with `\"` and `\\` unescaped.
fn parse_txt_line(line: &str) -> String {
    let mut value = String::new();
    let mut in_quotes = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (c, in_quotes) {
            ('"', _) => in_quotes = !in_quotes,
            ('\\', true) => value.extend(chars.next()),
            (c, true) => value.push(c),
            (_, false) => {}
        }
    }
    value
}

/// A running BIND (`named`), authoritative for one zone that accepts dynamic
/// updates signed with a random TSIG key.
///
/// The zone has an SOA, an NS, `@ A 127.0.0.1` and `* A 127.0.0.1`, so every
/// name in it resolves to 127.0.0.1 (Pebble reaches nginx for HTTP-01 and
/// finds the TXT records added for DNS-01). Recursion is off.
pub struct Bind {
    service: Service,
    /// Where it answers DNS (UDP and TCP).
    pub addr: SocketAddr,
    /// The zone, absolute (`acme.test.`).
    pub zone: String,
    /// TSIG key name ([`TSIG_NAME`]).
    pub tsig_name: String,
    /// TSIG algorithm ([`TSIG_ALGORITHM`]).
    pub tsig_algorithm: String,
    /// TSIG secret, standard base64 of 32 random bytes.
    pub tsig_secret_b64: String,
}

impl Bind {
    /// Starts `named -g` for `zone` (e.g. `"acme.test."`; the trailing dot is
    /// optional) on a free port and waits until it answers the zone's SOA.
    pub fn start(zone: &str) -> Result<Bind> {
        let bin = named_bin()?;
        dig_bin()?;
        let zone = format!("{}.", zone.trim_end_matches('.'));
        ensure!(
            zone.len() > 1 && !zone.contains(['"', ';', ' ', '/']),
            "bad zone name {zone:?}"
        );
        let secret = openssl_ok(&["rand", "-base64", "32"])?.trim().to_owned();
        with_retries(|| Bind::try_start(&bin, &zone, &secret))
    }

    fn try_start(bin: &Path, zone: &str, secret: &str) -> Result<Bind> {
        let root = temp_dir("certfleet-bind-")?;
        let dir = root.path().to_path_buf();
        let port = free_udp_tcp_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let zone_file = dir.join("zone.db");
        fs::write(
            &zone_file,
            format!(
                "$TTL 60\n\
                 @ IN SOA ns1.{zone} hostmaster.{zone} ( 1 3600 600 86400 60 )\n\
                 @ IN NS ns1.{zone}\n\
                 @ IN A 127.0.0.1\n\
                 * IN A 127.0.0.1\n"
            ),
        )?;
        let conf = dir.join("named.conf");
        let d = utf8(&dir)?;
        fs::write(
            &conf,
            format!(
                "options {{\n\
                   directory \"{d}\";\n\
                   pid-file \"{d}/named.pid\";\n\
                   session-keyfile \"{d}/session.key\";\n\
                   managed-keys-directory \"{d}\";\n\
                   listen-on port {port} {{ 127.0.0.1; }};\n\
                   listen-on-v6 {{ none; }};\n\
                   recursion no;\n\
                   allow-query {{ any; }};\n\
                   dnssec-validation no;\n\
                   notify no;\n\
                 }};\n\
                 controls {{ }};\n\
                 key \"{TSIG_NAME}\" {{ algorithm {TSIG_ALGORITHM}; secret \"{secret}\"; }};\n\
                 zone \"{zone}\" {{\n\
                   type primary;\n\
                   file \"{zf}\";\n\
                   journal \"{zf}.jnl\";\n\
                   allow-update {{ key \"{TSIG_NAME}\"; }};\n\
                 }};\n",
                zf = utf8(&zone_file)?,
            ),
        )?;
        let log_path = dir.join("named.log");
        // `-g`: foreground, log to stderr. Without `-u` named keeps the
        // user it was started as (root in CI), which owns the directory.
        let mut cmd = Command::new(bin);
        cmd.args(["-g", "-c", utf8(&conf)?]).current_dir(&dir);
        let mut service = Service::spawn("named", root, log_path, &mut cmd)?;
        service.wait_ready(|| dig(addr, &[zone, "SOA"]).is_ok_and(|s| !s.trim().is_empty()))?;
        Ok(Bind {
            service,
            addr,
            zone: zone.to_owned(),
            tsig_name: TSIG_NAME.to_owned(),
            tsig_algorithm: TSIG_ALGORITHM.to_owned(),
            tsig_secret_b64: secret.to_owned(),
        })
    }

    /// The TXT values at `name` (relative names are not completed: pass the
    /// full name), each record's strings concatenated; empty when there are
    /// none.
    pub fn txt(&self, name: &str) -> Result<Vec<String>> {
        let out = dig(self.addr, &[name, "TXT"])?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with('"'))
            .map(parse_txt_line)
            .collect())
    }

    /// The A records at `name`.
    pub fn a(&self, name: &str) -> Result<Vec<String>> {
        let out = dig(self.addr, &[name, "A"])?;
        Ok(out.lines().map(|l| l.trim().to_owned()).collect())
    }

    /// Runs `nsupdate -y ALG:NAME:SECRET` against this server and zone with
    /// the `update …` lines given (e.g. `update add _acme-challenge.www.acme.test. 60
    /// TXT "v"`), signing with `secret_b64` (pass [`Bind::tsig_secret_b64`],
    /// or another secret to test refusal). Returns the output whatever the
    /// exit status.
    pub fn nsupdate(&self, secret_b64: &str, updates: &[&str]) -> Result<Output> {
        let mut script = format!(
            "server {} {}\nzone {}\n",
            self.addr.ip(),
            self.addr.port(),
            self.zone
        );
        for line in updates {
            script.push_str(line);
            script.push('\n');
        }
        script.push_str("send\n");
        let script_file = tempfile::Builder::new()
            .prefix("nsupdate-")
            .tempfile_in(self.service.dir())
            .context("creating an nsupdate script")?;
        fs::write(script_file.path(), script)?;
        run_with_timeout(
            Command::new(nsupdate_bin()?)
                .arg("-y")
                .arg(format!(
                    "{}:{}:{secret_b64}",
                    self.tsig_algorithm, self.tsig_name
                ))
                .arg(script_file.path()),
            TOOL_TIMEOUT,
        )
    }

    /// `ALG:NAME:SECRET`, the key as `nsupdate -y` and `dig -y` take it.
    pub fn tsig_key_arg(&self) -> String {
        format!(
            "{}:{}:{}",
            self.tsig_algorithm, self.tsig_name, self.tsig_secret_b64
        )
    }

    /// named's log so far.
    pub fn log(&self) -> String {
        self.service.log()
    }

    /// named's temporary directory (config, zone file, journal).
    pub fn dir(&self) -> &Path {
        self.service.dir()
    }
}

/// nginx serving a webroot over plain HTTP on 127.0.0.1:`port`, for HTTP-01:
/// files written to `webroot()/.well-known/acme-challenge/TOKEN` are served
/// at `http://ANY-NAME:PORT/.well-known/acme-challenge/TOKEN`.
pub struct WebrootNginx {
    service: Service,
    /// The port it listens on (Pebble's `http_port`).
    pub port: u16,
    webroot: PathBuf,
}

impl WebrootNginx {
    /// Starts nginx on 127.0.0.1:`http_port` (normally [`Pebble::http_port`])
    /// with an empty webroot and waits until it answers. Not retried on
    /// other ports: the port is given.
    pub fn start(http_port: u16) -> Result<WebrootNginx> {
        let bin =
            nginx_bin().ok_or_else(|| anyhow!("nginx is not installed; run scripts/test.sh"))?;
        let root = temp_dir("certfleet-webroot-nginx-")?;
        let prefix = root.path().to_path_buf();
        let webroot = prefix.join("webroot");
        fs::create_dir_all(webroot.join(".well-known/acme-challenge"))?;
        fs::create_dir_all(prefix.join("logs"))?;
        let probe = format!("certfleet-webroot-{http_port}");
        let conf = prefix.join("nginx.conf");
        fs::write(
            &conf,
            format!(
                "worker_processes 1;\n\
                 pid {prefix}/nginx.pid;\n\
                 error_log {prefix}/logs/error.log info;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n\
                   access_log {prefix}/logs/access.log;\n\
                   default_type application/octet-stream;\n\
                   client_body_temp_path {prefix}/tmp_body;\n\
                   proxy_temp_path {prefix}/tmp_proxy;\n\
                   fastcgi_temp_path {prefix}/tmp_fastcgi;\n\
                   uwsgi_temp_path {prefix}/tmp_uwsgi;\n\
                   scgi_temp_path {prefix}/tmp_scgi;\n\
                   server {{\n\
                     listen 127.0.0.1:{http_port};\n\
                     server_name _;\n\
                     root {webroot};\n\
                     location = /__certfleet_probe {{ return 200 \"{probe}\"; }}\n\
                     location / {{ try_files $uri =404; }}\n\
                   }}\n\
                 }}\n",
                prefix = prefix.display(),
                webroot = webroot.display(),
            ),
        )?;
        let log_path = prefix.join("logs/stderr.log");
        let mut cmd = Command::new(bin);
        cmd.args([
            "-p",
            utf8(&prefix)?,
            "-c",
            utf8(&conf)?,
            "-g",
            "daemon off; user root;",
        ]);
        let mut service = Service::spawn("nginx (webroot)", root, log_path, &mut cmd)?;
        let url = format!("http://127.0.0.1:{http_port}/__certfleet_probe");
        service
            .wait_ready(|| http_get(&url).is_ok_and(|r| r.body == probe.as_bytes()))
            .with_context(|| format!("nginx did not come up on port {http_port}"))?;
        Ok(WebrootNginx {
            service,
            port: http_port,
            webroot,
        })
    }

    /// The directory nginx serves as `/`.
    pub fn webroot(&self) -> &Path {
        &self.webroot
    }

    /// `webroot()/.well-known/acme-challenge`, created at start.
    pub fn challenge_dir(&self) -> PathBuf {
        self.webroot.join(".well-known/acme-challenge")
    }

    /// nginx's access log (which paths Pebble's VA fetched).
    pub fn access_log(&self) -> String {
        let path = self.service.dir().join("logs/access.log");
        fs::read_to_string(path).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::parse_txt_line;

    #[test]
    fn txt_lines_are_unquoted_and_joined() {
        assert_eq!(parse_txt_line("\"abc\""), "abc");
        assert_eq!(parse_txt_line("\"ab\" \"cd\""), "abcd");
        assert_eq!(parse_txt_line(r#""a\"b\\c""#), "a\"b\\c");
    }
}
