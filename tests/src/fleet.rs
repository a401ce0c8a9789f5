//! Fleet pieces for end-to-end tests: real nginx instances on their own
//! prefix and loopback port, and real `certfleet-agent` processes with their
//! own state directory and config.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use tempfile::TempDir;

use crate::{certfleet_bin, openssl_ok, run_with_timeout, utf8, Controller};

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Path of the `certfleet-agent` binary beside `certfleet`.
pub fn agent_bin() -> PathBuf {
    let bin = certfleet_bin().with_file_name("certfleet-agent");
    assert!(
        bin.is_file(),
        "certfleet-agent not found at {}: run `cargo build --workspace --bins --features certfleet-controller/failpoints,certfleet-agent/failpoints` (as scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Where nginx is, or `None` when it is not installed (scripts/test.sh
/// installs it).
pub fn nginx_bin() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A self-signed certificate and key for `name`, as nginx's first certificate.
pub fn self_signed(dir: &Path, name: &str) -> Result<()> {
    self_signed_cert(
        &dir.join("fullchain.pem"),
        &dir.join("privkey.pem"),
        &[name],
        2,
    )
}

/// A self-signed EC P-256 certificate (`cert`) and its key (`key`) for
/// `names` (the first is the CN), valid `days`.
pub fn self_signed_cert(cert: &Path, key: &Path, names: &[&str], days: u32) -> Result<()> {
    let san = names
        .iter()
        .map(|n| format!("DNS:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    openssl_ok(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        &days.to_string(),
        "-subj",
        &format!("/CN={}", names.first().copied().unwrap_or("certfleet test")),
        "-addext",
        &format!("subjectAltName={san}"),
        "-keyout",
        utf8(key)?,
        "-out",
        utf8(cert)?,
    ])?;
    Ok(())
}

/// The SHA-256 fingerprint (lower-case hex) of the leaf served at
/// 127.0.0.1:`port` for `sni`, as `openssl s_client` sees it.
pub fn served_fingerprint(port: u16, sni: &str) -> Result<String> {
    let out = run_with_timeout(
        Command::new("openssl").args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            sni,
        ]),
        Duration::from_secs(20),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or_else(|| anyhow!("no certificate served on port {port}: {text}"))?;
    let end = text[start..]
        .find("-----END CERTIFICATE-----")
        .ok_or_else(|| anyhow!("truncated certificate from port {port}"))?
        + start
        + "-----END CERTIFICATE-----".len();
    let dir = tempfile::tempdir()?;
    let pem = dir.path().join("served.pem");
    fs::write(&pem, &text[start..end])?;
    crate::cert_fingerprint(&pem)
}

/// Waits until port `port` serves `fingerprint` for `sni`.
pub fn wait_served(port: u16, sni: &str, fingerprint: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = served_fingerprint(port, sni);
        if seen.as_deref().ok() == Some(fingerprint) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("port {port} does not serve {fingerprint} for {sni}; last seen: {seen:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A real nginx master process serving TLS on 127.0.0.1:`port` from
/// `tls_dir/fullchain.pem` and `tls_dir/privkey.pem`.
pub struct Nginx {
    _root: TempDir,
    pub prefix: PathBuf,
    pub conf: PathBuf,
    pub pid_file: PathBuf,
    pub tls_dir: PathBuf,
    pub port: u16,
    child: Child,
}

impl Nginx {
    /// Start nginx with a self-signed certificate for `name`.
    pub fn start(name: &str) -> Result<Nginx> {
        let bin =
            nginx_bin().ok_or_else(|| anyhow!("nginx is not installed; run scripts/test.sh"))?;
        let root = tempfile::Builder::new()
            .prefix("certfleet-nginx-")
            .tempdir()?;
        let prefix = root.path().to_path_buf();
        let tls_dir = prefix.join("tls");
        fs::create_dir_all(prefix.join("logs"))?;
        fs::create_dir_all(&tls_dir)?;
        self_signed(&tls_dir, name)?;
        let port = free_port()?;
        let pid_file = prefix.join("nginx.pid");
        let conf = prefix.join("nginx.conf");
        fs::write(
            &conf,
            format!(
                "worker_processes 1;\n\
                 pid {pid};\n\
                 error_log {prefix}/logs/error.log info;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n\
                   access_log off;\n\
                   client_body_temp_path {prefix}/tmp_body;\n\
                   proxy_temp_path {prefix}/tmp_proxy;\n\
                   fastcgi_temp_path {prefix}/tmp_fastcgi;\n\
                   uwsgi_temp_path {prefix}/tmp_uwsgi;\n\
                   scgi_temp_path {prefix}/tmp_scgi;\n\
                   server {{\n\
                     listen 127.0.0.1:{port} ssl;\n\
                     server_name {name};\n\
                     ssl_certificate {tls}/fullchain.pem;\n\
                     ssl_certificate_key {tls}/privkey.pem;\n\
                     location / {{ return 200 \"ok\\n\"; }}\n\
                   }}\n\
                 }}\n",
                pid = pid_file.display(),
                prefix = prefix.display(),
                tls = tls_dir.display(),
            ),
        )?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(prefix.join("logs/stderr.log"))?;
        let child = Command::new(&bin)
            .args([
                "-p",
                utf8(&prefix)?,
                "-c",
                utf8(&conf)?,
                "-g",
                "daemon off; user root;",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting nginx")?;
        let nginx = Nginx {
            _root: root,
            prefix,
            conf,
            pid_file,
            tls_dir,
            port,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while served_fingerprint(port, name).is_err() {
            if Instant::now() >= deadline {
                bail!(
                    "nginx did not come up on port {port}: {}",
                    fs::read_to_string(nginx.prefix.join("logs/stderr.log")).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(nginx)
    }

    /// The argv that tests this nginx's configuration.
    pub fn test_command(&self) -> Result<Vec<String>> {
        let bin = nginx_bin().ok_or_else(|| anyhow!("nginx is not installed"))?;
        Ok(vec![
            utf8(&bin)?.to_owned(),
            "-t".into(),
            "-q".into(),
            "-p".into(),
            utf8(&self.prefix)?.to_owned(),
            "-c".into(),
            utf8(&self.conf)?.to_owned(),
            "-g".into(),
            "user root;".into(),
        ])
    }

    /// Make the configuration invalid (nginx keeps running on the old one).
    pub fn break_config(&self) -> Result<()> {
        let mut f = OpenOptions::new().append(true).open(&self.conf)?;
        writeln!(f, "this_is_not_a_directive on;")?;
        Ok(())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master take its workers down with it; a SIGKILLed
        // master leaves them holding the port.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `certfleet-agent` with its own state directory and config.
pub struct Agent {
    root: Option<TempDir>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub id: Option<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Agent {
    /// Write `config_body` (everything but `controller` and `state_dir`)
    /// into a fresh directory.
    pub fn new(controller: &Controller, config_body: &str) -> Result<Agent> {
        let root = tempfile::Builder::new()
            .prefix("certfleet-agent-")
            .tempdir()?;
        let dir = root.path().to_path_buf();
        let state_dir = dir.join("state");
        let config = dir.join("agent.toml");
        fs::write(
            &config,
            format!(
                "controller = \"{}\"\nstate_dir = \"{}\"\n{config_body}",
                controller.listen(),
                state_dir.display()
            ),
        )?;
        Ok(Agent {
            root: Some(root),
            log: dir.join("agent.log"),
            dir,
            config,
            state_dir,
            id: None,
            env: Vec::new(),
            child: None,
        })
    }

    /// An nginx target for `nginx` serving `name`.
    pub fn nginx_target(nginx: &Nginx, name: &str, extra: &str) -> Result<String> {
        let test = nginx
            .test_command()?
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(format!(
            "allowed_dirs = [\"{tls}\"]\n\
             [labels]\nrole = \"web\"\n\
             [[target]]\nname = \"nginx\"\nkind = \"nginx\"\n\
             domains = [\"{name}\"]\n\
             fullchain = \"{tls}/fullchain.pem\"\nkey = \"{tls}/privkey.pem\"\n\
             verify = \"127.0.0.1:{port}\"\nverify_timeout = \"5s\"\n\
             pid_file = \"{pid}\"\ntest_command = [{test}]\n{extra}",
            tls = nginx.tls_dir.display(),
            port = nginx.port,
            pid = nginx.pid_file.display(),
        ))
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(agent_bin());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CERTFLEET_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("NO_COLOR", "1");
        cmd
    }

    /// `certfleet-agent enroll`; returns its output, whatever the exit.
    pub fn enroll_output(
        &self,
        controller: &Controller,
        token: &str,
        pin: &str,
    ) -> Result<std::process::Output> {
        self.enroll_output_with(controller, token, pin, &[])
    }

    /// `certfleet-agent enroll … EXTRA…` (e.g. `--reenroll`), with this
    /// agent's environment; returns its output, whatever the exit.
    pub fn enroll_output_with(
        &self,
        controller: &Controller,
        token: &str,
        pin: &str,
        extra: &[&str],
    ) -> Result<std::process::Output> {
        run_with_timeout(
            self.command()
                .args([
                    "enroll",
                    "--controller",
                    &controller.listen().to_string(),
                    "--token",
                    token,
                    "--ca-pin",
                    pin,
                    "--config",
                    utf8(&self.config)?,
                ])
                .args(extra)
                .envs(self.env.iter().map(|(k, v)| (k, v))),
            Duration::from_secs(60),
        )
    }

    /// `certfleet-agent status` as an operator reads it (text), with this
    /// agent's environment; fails unless it exits 0.
    pub fn status_text(&self) -> Result<String> {
        let out = run_with_timeout(
            self.command()
                .args(["status", "--config", utf8(&self.config)?])
                .envs(self.env.iter().map(|(k, v)| (k, v))),
            Duration::from_secs(20),
        )?;
        ensure!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Enroll, failing unless it works.
    pub fn enroll(&mut self, controller: &Controller, token: &str, pin: &str) -> Result<()> {
        let out = self.enroll_output(controller, token, pin)?;
        ensure!(
            out.status.success(),
            "enroll failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let agent_json: serde_json::Value =
            serde_json::from_slice(&fs::read(self.state_dir.join("agent.json"))?)?;
        self.id = agent_json["agent"].as_str().map(str::to_owned);
        Ok(())
    }

    /// Set an environment variable for the next `start`.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    pub fn clear_env(&mut self) {
        self.env.clear();
    }

    /// Start `certfleet-agent run`.
    pub fn start(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "agent already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = self
            .command()
            .args(["run", "--config", utf8(&self.config)?])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting certfleet-agent")?;
        self.child = Some(child);
        Ok(())
    }

    /// Wait for the agent process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("agent not running"))?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("agent still running after {timeout:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the agent (SIGKILL) and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `certfleet-agent status --output json`.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = run_with_timeout(
            self.command().args([
                "status",
                "--output",
                "json",
                "--config",
                utf8(&self.config)?,
            ]),
            Duration::from_secs(20),
        )?;
        ensure!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        eprintln!(
            "--- agent log {} ---\n{}",
            self.log.display(),
            self.log_text()
        );
        if std::env::var_os(crate::KEEP_ENV).is_some() {
            if let Some(root) = self.root.take() {
                eprintln!("keeping {}", root.keep().display());
            }
        }
    }
}

/// Create a join token; returns (token, pin).
pub fn token(controller: &Controller, args: &[&str]) -> Result<(String, String)> {
    let mut full = vec!["agent", "token", "create"];
    full.extend_from_slice(args);
    let t = controller.cli_json(&full)?;
    Ok((
        crate::str_field(&t, "token")?.to_owned(),
        crate::str_field(&t, "ca_pin")?.to_owned(),
    ))
}

/// Waits until every deployment of `cert` has left `pending`; returns them.
pub fn wait_deployments(
    controller: &Controller,
    cert: &str,
    timeout: Duration,
) -> Result<Vec<serde_json::Value>> {
    let deadline = Instant::now() + timeout;
    loop {
        let list = controller.cli_json(&["deployment", "list", "--cert", cert])?;
        let list = list.as_array().cloned().unwrap_or_default();
        if !list.is_empty() && list.iter().all(|d| d["status"] != "pending") {
            return Ok(list);
        }
        if Instant::now() >= deadline {
            bail!("deployments of {cert} still pending: {list:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Enrolls one agent per config body with one join token labelled
/// `role=web`, gives each the environment variable `env`, starts them and
/// waits until the controller lists every one as connected.
pub fn start_web_agents(
    controller: &Controller,
    bodies: Vec<String>,
    env: &(String, String),
    timeout: Duration,
) -> Result<Vec<Agent>> {
    let uses = bodies.len().max(1).to_string();
    let (tok, pin) = token(controller, &["--labels", "role=web", "--uses", &uses])?;
    let mut agents = Vec::new();
    for body in bodies {
        let mut agent = Agent::new(controller, &body)?;
        agent.enroll(controller, &tok, &pin)?;
        agent.set_env(&env.0, &env.1);
        agent.start()?;
        agents.push(agent);
    }
    for a in &agents {
        wait_connected(
            controller,
            a.id.as_deref().unwrap_or_default(),
            true,
            timeout,
        )?;
    }
    Ok(agents)
}

/// Waits until the controller lists `agent` as connected (or not).
pub fn wait_connected(
    controller: &Controller,
    agent: &str,
    connected: bool,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let list = controller.cli_json(&["agent", "list"])?;
        let now = list
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["id"] == agent && a["connected"] == true);
        if now == connected {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("agent {agent} connected={now}, expected {connected} after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Environment variable naming the clock-offset file of `certfleet serve`
/// and `certfleet-agent run`: an integer number of seconds added to the wall
/// clock (a missing file means 0).
pub const CLOCK_OFFSET_ENV: &str = "CERTFLEET_CLOCK_OFFSET_FILE";

/// Writes `secs` into the clock-offset file at `path`, atomically (a reader
/// never sees a half-written number).
pub fn write_clock_offset(path: &Path, secs: i64) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{secs}\n")).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))?;
    Ok(())
}

/// Seconds since the Unix epoch by the host's wall clock.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch of an RFC 3339 timestamp
/// (`2026-01-02T03:04:05Z`, `…05.123456Z`, `…05+01:00`), as the controller
/// prints timestamps and the agent's log lines start.
pub fn parse_rfc3339_micros(text: &str) -> Result<i64> {
    let bad = || anyhow!("not an RFC 3339 timestamp: {text:?}");
    let num = |s: &str| -> Result<i64> {
        ensure!(
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
            "not an RFC 3339 timestamp: {text:?}"
        );
        s.parse::<i64>().map_err(|_| bad())
    };
    let (date, rest) = text.split_once(['T', 't', ' ']).ok_or_else(bad)?;
    let mut d = date.splitn(3, '-');
    let (year, month, day) = (
        num(d.next().ok_or_else(bad)?)?,
        num(d.next().ok_or_else(bad)?)?,
        num(d.next().ok_or_else(bad)?)?,
    );
    let (clock, zone_secs) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else {
        let at = rest.rfind(['+', '-']).ok_or_else(bad)?;
        let (c, zone) = rest.split_at(at);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, m) = zone[1..].split_once(':').ok_or_else(bad)?;
        (c, sign * (num(h)? * 3600 + num(m)? * 60))
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.splitn(3, ':');
    let (hour, minute, second) = (
        num(t.next().ok_or_else(bad)?)?,
        num(t.next().ok_or_else(bad)?)?,
        num(t.next().ok_or_else(bad)?)?,
    );
    let micros = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain("000000".chars()).take(6).collect();
        num(&digits)?
    };
    ensure!(
        (1..=12).contains(&month) && (1..=31).contains(&day) && hour < 24 && minute < 60,
        "not an RFC 3339 timestamp: {text:?}"
    );
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - zone_secs;
    Ok(secs * 1_000_000 + micros)
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp.
pub fn parse_rfc3339(text: &str) -> Result<i64> {
    Ok(parse_rfc3339_micros(text)?.div_euclid(1_000_000))
}

/// The config body (everything but `controller` and `state_dir`) of an agent
/// called `agent_name`, labelled `role=web`, with one nginx target called
/// `target` for `nginx` serving `domain`.
pub fn named_nginx_agent_config(
    agent_name: &str,
    target: &str,
    nginx: &Nginx,
    domain: &str,
) -> Result<String> {
    let test = nginx
        .test_command()?
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "name = \"{agent_name}\"\n\
         allowed_dirs = [\"{tls}\"]\n\
         [labels]\nrole = \"web\"\n\
         [[target]]\nname = \"{target}\"\nkind = \"nginx\"\n\
         domains = [\"{domain}\"]\n\
         fullchain = \"{tls}/fullchain.pem\"\nkey = \"{tls}/privkey.pem\"\n\
         verify = \"127.0.0.1:{port}\"\nverify_timeout = \"5s\"\n\
         pid_file = \"{pid}\"\ntest_command = [{test}]\n",
        tls = nginx.tls_dir.display(),
        port = nginx.port,
        pid = nginx.pid_file.display(),
    ))
}

/// The config body of an agent called `agent_name`, labelled `role=web`,
/// with one `files` target called `target` writing `fullchain.pem` and
/// `privkey.pem` into `dir`.
pub fn named_files_agent_config(
    agent_name: &str,
    target: &str,
    dir: &Path,
    domain: &str,
) -> String {
    format!(
        "name = \"{agent_name}\"\n\
         allowed_dirs = [\"{d}\"]\n\
         [labels]\nrole = \"web\"\n\
         [[target]]\nname = \"{target}\"\nkind = \"files\"\n\
         domains = [\"{domain}\"]\n\
         fullchain = \"{d}/fullchain.pem\"\nkey = \"{d}/privkey.pem\"\n",
        d = dir.display()
    )
}

/// Timestamps (microseconds since the epoch) of the agent log lines whose
/// message is `message` (e.g. `installing`, `installed`) for `certificate`,
/// in log order. The agent logs `<RFC 3339 time> INFO …: <message>
/// target=… certificate=…`.
pub fn agent_log_events(log: &str, message: &str, certificate: &str) -> Result<Vec<i64>> {
    let field = format!("certificate={certificate}");
    log.lines()
        .filter(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words.contains(&message) && words.contains(&field.as_str())
        })
        .map(|line| {
            let stamp = line.split_whitespace().next().unwrap_or_default();
            parse_rfc3339_micros(stamp)
                .with_context(|| format!("agent log line without a timestamp: {line:?}"))
        })
        .collect()
}

/// `rollout show ID` as JSON.
pub fn rollout_show(controller: &Controller, id: &str) -> Result<serde_json::Value> {
    controller.cli_json(&["rollout", "show", id])
}

/// Polls `rollout show ID` until its state is one of `states`; every
/// snapshot seen on the way is passed to `observe` (e.g. to check wave
/// invariants). Returns the last snapshot.
pub fn wait_rollout_state(
    controller: &Controller,
    id: &str,
    states: &[&str],
    timeout: Duration,
    mut observe: impl FnMut(&serde_json::Value) -> Result<()>,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let rollout = rollout_show(controller, id)?;
        observe(&rollout)?;
        let state = rollout["state"].as_str().unwrap_or_default();
        if states.contains(&state) {
            return Ok(rollout);
        }
        if Instant::now() >= deadline {
            bail!("rollout {id} is not {states:?} after {timeout:?}: {rollout:#}");
        }
        thread::sleep(Duration::from_millis(150));
    }
}

/// Checks the wave invariants of one RolloutInfo snapshot: every target of a
/// wave after `current_wave` is still `waiting`, and a target has left
/// `waiting` only when every target of every earlier wave is `installed` or
/// `failed` (a wave starts only after the previous one finished).
pub fn check_wave_invariants(rollout: &serde_json::Value) -> Result<()> {
    let targets = rollout["targets"]
        .as_array()
        .ok_or_else(|| anyhow!("rollout without a targets array: {rollout}"))?;
    let current = rollout["current_wave"]
        .as_i64()
        .ok_or_else(|| anyhow!("rollout without current_wave: {rollout}"))?;
    for t in targets {
        let wave = t["wave"]
            .as_i64()
            .ok_or_else(|| anyhow!("target without a wave: {t}"))?;
        let state = t["state"].as_str().unwrap_or_default();
        if wave > current {
            ensure!(
                state == "waiting",
                "a target of wave {wave} is {state} while the rollout is at wave {current}: {rollout:#}"
            );
        }
        if state != "waiting" {
            for earlier in targets.iter().filter(|e| e["wave"].as_i64() < Some(wave)) {
                let s = earlier["state"].as_str().unwrap_or_default();
                ensure!(
                    s == "installed" || s == "failed",
                    "a target of wave {wave} is {state} while one of wave {} is {s}: {rollout:#}",
                    earlier["wave"]
                );
            }
        }
    }
    Ok(())
}
