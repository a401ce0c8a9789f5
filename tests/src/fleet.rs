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
        "certfleet-agent not found at {}: run `cargo build --workspace --bins`",
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
        &format!("/CN={name}"),
        "-addext",
        &format!("subjectAltName=DNS:{name}"),
        "-keyout",
        utf8(&dir.join("privkey.pem"))?,
        "-out",
        utf8(&dir.join("fullchain.pem"))?,
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
        run_with_timeout(
            self.command().args([
                "enroll",
                "--controller",
                &controller.listen().to_string(),
                "--token",
                token,
                "--ca-pin",
                pin,
                "--config",
                utf8(&self.config)?,
            ]),
            Duration::from_secs(60),
        )
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

    /// `certfleet-agent status --json`.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = run_with_timeout(
            self.command()
                .args(["status", "--json", "--config", utf8(&self.config)?]),
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
