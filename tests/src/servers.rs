//! More real servers for end-to-end tests: Apache httpd and HAProxy, each
//! with its own root directory, config and loopback port, run in the
//! foreground as children of the test and stopped when dropped; and a held
//! TLS keep-alive connection to prove an update did not drop it.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

use crate::fleet::{free_port, self_signed, served_fingerprint};
use crate::utf8;

const APACHE: &str = "/usr/sbin/apache2";
const HAPROXY: &str = "/usr/sbin/haproxy";
const MODULES: &str = "/usr/lib/apache2/modules";

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_up(port: u16, name: &str, log: &Path, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while served_fingerprint(port, name).is_err() {
        if Instant::now() >= deadline {
            bail!(
                "{what} did not come up on port {port}: {}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// An argv as a TOML array body.
pub fn argv_toml(argv: &[String]) -> String {
    argv.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A real Apache httpd (Debian's `apache2` binary with its own ServerRoot)
/// serving TLS on 127.0.0.1:`port` from `tls_dir/{cert,chain,key}.pem`
/// (or, started with [`Apache::start_fullchain`], `tls_dir/fullchain.pem`
/// and `key.pem`).
pub struct Apache {
    _root: TempDir,
    pub root: PathBuf,
    pub conf: PathBuf,
    pub pid_file: PathBuf,
    pub tls_dir: PathBuf,
    pub port: u16,
    child: Child,
}

impl Apache {
    /// Start Apache with a self-signed certificate for `name`.
    pub fn start(name: &str) -> Result<Apache> {
        Self::start_with(name, false)
    }

    /// Start Apache serving `SSLCertificateFile tls/fullchain.pem` (leaf and
    /// chain in one file, Apache 2.4.8+) with `key.pem`.
    pub fn start_fullchain(name: &str) -> Result<Apache> {
        Self::start_with(name, true)
    }

    fn start_with(name: &str, fullchain: bool) -> Result<Apache> {
        if !Path::new(APACHE).is_file() {
            bail!("apache2 is not installed at {APACHE}; run scripts/test.sh");
        }
        let dir = tempfile::Builder::new()
            .prefix("certfleet-apache-")
            .tempdir()?;
        let root = dir.path().to_path_buf();
        let tls_dir = root.join("tls");
        fs::create_dir_all(&tls_dir)?;
        self_signed(&tls_dir, name)?;
        fs::rename(tls_dir.join("fullchain.pem"), tls_dir.join("cert.pem"))?;
        fs::rename(tls_dir.join("privkey.pem"), tls_dir.join("key.pem"))?;
        let files = if fullchain {
            fs::rename(tls_dir.join("cert.pem"), tls_dir.join("fullchain.pem"))?;
            format!("SSLCertificateFile {}/fullchain.pem\n", tls_dir.display())
        } else {
            fs::copy(tls_dir.join("cert.pem"), tls_dir.join("chain.pem"))?;
            format!(
                "SSLCertificateFile {tls}/cert.pem\nSSLCertificateChainFile {tls}/chain.pem\n",
                tls = tls_dir.display()
            )
        };
        let port = free_port()?;
        let pid_file = root.join("httpd.pid");
        let conf = root.join("httpd.conf");
        // Apache will not run its children as root; as root, use nobody.
        let user = if nix_is_root() {
            "User nobody\nGroup nogroup\n"
        } else {
            ""
        };
        fs::write(
            &conf,
            format!(
                "ServerRoot {root}\n\
                 Listen 127.0.0.1:{port}\n\
                 PidFile {pid}\n\
                 ErrorLog {root}/error.log\n\
                 LogLevel warn\n\
                 {user}\
                 LoadModule mpm_event_module {MODULES}/mod_mpm_event.so\n\
                 LoadModule authz_core_module {MODULES}/mod_authz_core.so\n\
                 LoadModule socache_shmcb_module {MODULES}/mod_socache_shmcb.so\n\
                 LoadModule ssl_module {MODULES}/mod_ssl.so\n\
                 ServerName {name}\n\
                 DocumentRoot {root}\n\
                 Mutex file:{root}\n\
                 DefaultRuntimeDir {root}\n\
                 SSLSessionCache shmcb:{root}/ssl_scache(512000)\n\
                 <VirtualHost 127.0.0.1:{port}>\n\
                   ServerName {name}\n\
                   SSLEngine on\n\
                   {files}\
                   SSLCertificateKeyFile {tls}/key.pem\n\
                 </VirtualHost>\n",
                root = root.display(),
                pid = pid_file.display(),
                tls = tls_dir.display(),
            ),
        )?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("stderr.log"))?;
        let child = Command::new(APACHE)
            .args(["-f", utf8(&conf)?, "-DFOREGROUND"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting apache2")?;
        let apache = Apache {
            _root: dir,
            root,
            conf,
            pid_file,
            tls_dir,
            port,
            child,
        };
        wait_up(port, name, &apache.root.join("error.log"), "apache2")?;
        Ok(apache)
    }

    /// The argv of `apache2 -f CONF ARGS…` for this server.
    pub fn ctl(&self, args: &[&str]) -> Result<Vec<String>> {
        let mut argv = vec![APACHE.to_string(), "-f".into(), utf8(&self.conf)?.into()];
        argv.extend(args.iter().map(|a| a.to_string()));
        Ok(argv)
    }

    /// An agent config body with an `apache` target named "apache" for
    /// this server: separate cert, chain and key files.
    pub fn target(&self, name: &str, extra: &str) -> Result<String> {
        Ok(format!(
            "allowed_dirs = [\"{tls}\"]\n\
             [labels]\nrole = \"web\"\n\
             [[target]]\nname = \"apache\"\nkind = \"apache\"\n\
             domains = [\"{name}\"]\n\
             cert = \"{tls}/cert.pem\"\nchain = \"{tls}/chain.pem\"\nkey = \"{tls}/key.pem\"\n\
             verify = \"127.0.0.1:{port}\"\nverify_timeout = \"10s\"\n\
             test_command = [{test}]\nreload_command = [{reload}]\n{extra}",
            tls = self.tls_dir.display(),
            port = self.port,
            test = argv_toml(&self.ctl(&["-t"])?),
            reload = argv_toml(&self.ctl(&["-k", "graceful"])?),
        ))
    }

    /// Make the configuration invalid (Apache keeps running on the old one).
    pub fn break_config(&self) -> Result<()> {
        let mut f = OpenOptions::new().append(true).open(&self.conf)?;
        writeln!(f, "ThisIsNotADirective on")?;
        Ok(())
    }

    /// The parent's pid, from its PidFile.
    pub fn pid(&self) -> Result<i32> {
        Ok(fs::read_to_string(&self.pid_file)?.trim().parse()?)
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn nix_is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A real HAProxy in master-worker mode serving TLS on 127.0.0.1:`port`
/// from the combined PEM `pem`, answering every HTTP request itself, with
/// an admin-level runtime API socket `admin_socket` and a user-level one
/// `user_socket` (which refuses certificate updates).
pub struct Haproxy {
    _root: TempDir,
    pub root: PathBuf,
    pub conf: PathBuf,
    pub pid_file: PathBuf,
    pub tls_dir: PathBuf,
    pub pem: PathBuf,
    pub admin_socket: PathBuf,
    pub user_socket: PathBuf,
    pub port: u16,
    child: Child,
}

impl Haproxy {
    /// Start HAProxy with a self-signed certificate for `name`.
    pub fn start(name: &str) -> Result<Haproxy> {
        if !Path::new(HAPROXY).is_file() {
            bail!("haproxy is not installed at {HAPROXY}; run scripts/test.sh");
        }
        let dir = tempfile::Builder::new()
            .prefix("certfleet-haproxy-")
            .tempdir()?;
        let root = dir.path().to_path_buf();
        let tls_dir = root.join("tls");
        fs::create_dir_all(&tls_dir)?;
        self_signed(&tls_dir, name)?;
        let pem = tls_dir.join("site.pem");
        let combined = format!(
            "{}{}",
            fs::read_to_string(tls_dir.join("fullchain.pem"))?,
            fs::read_to_string(tls_dir.join("privkey.pem"))?
        );
        fs::write(&pem, combined)?;
        fs::remove_file(tls_dir.join("fullchain.pem"))?;
        fs::remove_file(tls_dir.join("privkey.pem"))?;
        let port = free_port()?;
        let pid_file = root.join("haproxy.pid");
        let conf = root.join("haproxy.cfg");
        let admin_socket = root.join("admin.sock");
        let user_socket = root.join("user.sock");
        fs::write(
            &conf,
            format!(
                "global\n\
                 \x20 stats socket {admin} mode 600 level admin\n\
                 \x20 stats socket {user} mode 600 level user\n\
                 defaults\n\
                 \x20 mode http\n\
                 \x20 timeout connect 5s\n\
                 \x20 timeout client 60s\n\
                 \x20 timeout server 60s\n\
                 \x20 timeout http-keep-alive 60s\n\
                 frontend fe\n\
                 \x20 bind 127.0.0.1:{port} ssl crt {pem}\n\
                 \x20 http-request return status 200 content-type text/plain string \"ok\"\n",
                admin = admin_socket.display(),
                user = user_socket.display(),
                pem = pem.display(),
            ),
        )?;
        let log = root.join("stderr.log");
        let out = OpenOptions::new().create(true).append(true).open(&log)?;
        let child = Command::new(HAPROXY)
            .args(["-W", "-db", "-f", utf8(&conf)?, "-p", utf8(&pid_file)?])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting haproxy")?;
        let haproxy = Haproxy {
            _root: dir,
            root,
            conf,
            pid_file,
            tls_dir,
            pem,
            admin_socket,
            user_socket,
            port,
            child,
        };
        wait_up(port, name, &log, "haproxy")?;
        Ok(haproxy)
    }

    /// An agent config body with a `haproxy` target named "haproxy".
    pub fn target(&self, name: &str, extra: &str) -> Result<String> {
        Ok(format!(
            "allowed_dirs = [\"{}\"]\n[labels]\nrole = \"web\"\n{}",
            self.tls_dir.display(),
            self.target_section("haproxy", name, extra)
        ))
    }

    /// A `[[target]]` section named `target` for this HAProxy serving
    /// `name` (its `tls_dir` must be in the config's `allowed_dirs`).
    pub fn target_section(&self, target: &str, name: &str, extra: &str) -> String {
        format!(
            "[[target]]\nname = \"{target}\"\nkind = \"haproxy\"\n\
             domains = [\"{name}\"]\n\
             combined = \"{pem}\"\nmode = \"0640\"\n\
             verify = \"127.0.0.1:{port}\"\nverify_timeout = \"10s\"\n\
             haproxy_binary = \"{HAPROXY}\"\nhaproxy_config = \"{conf}\"\n\
             pid_file = \"{pid}\"\n{extra}",
            pem = self.pem.display(),
            port = self.port,
            conf = self.conf.display(),
            pid = self.pid_file.display(),
        )
    }

    /// One runtime API command on the admin socket.
    pub fn runtime(&self, command: &str) -> Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(&self.admin_socket)
            .with_context(|| format!("connect {}", self.admin_socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("{command}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// The serving worker's pid (`show info`); it changes on every reload.
    pub fn worker_pid(&self) -> Result<u32> {
        let info = self.runtime("show info")?;
        info.lines()
            .find_map(|l| l.strip_prefix("Pid: "))
            .ok_or_else(|| anyhow!("no Pid in show info: {info}"))?
            .trim()
            .parse()
            .context("worker pid")
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// An HTTP/1.1 keep-alive connection over TLS held open by
/// `openssl s_client`: every request goes over the one TCP connection it
/// made, so answers after an update prove the connection survived it.
pub struct KeepAlive {
    child: Child,
    stdin: ChildStdin,
    output: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
    host: String,
}

impl KeepAlive {
    pub fn open(port: u16, host: &str) -> Result<KeepAlive> {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                host,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting openssl s_client")?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let mut stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, output) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Ok(KeepAlive {
            child,
            stdin,
            output,
            seen: Vec::new(),
            host: host.into(),
        })
    }

    /// Send one request on the held connection and return the response
    /// head and body (the server answers "ok").
    pub fn request(&mut self) -> Result<String> {
        self.stdin
            .write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", self.host).as_bytes())?;
        self.stdin.flush()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = String::from_utf8_lossy(&self.seen).into_owned();
            if let Some(end) = text.find("\r\n\r\nok") {
                let response = text[..end + 6].to_string();
                self.seen.drain(..end + 6);
                return Ok(response);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.seen.extend(bytes),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("no answer on the held connection; got {text:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the held connection was closed; got {text:?}")
                }
            }
        }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A controller with a built-in issuer named "ca".
pub fn controller_with_issuer() -> Result<crate::Controller> {
    let ctl = crate::Controller::start()?;
    ctl.cli_json(&["issuer", "add", "ca", "--kind", "builtin"])?;
    Ok(ctl)
}

/// Issue a certificate for `name`; returns (id, fingerprint).
pub fn issue(ctl: &crate::Controller, name: &str) -> Result<(String, String)> {
    let cert = ctl.issue("ca", &[], &[name])?;
    Ok((
        crate::str_field(&cert, "id")?.to_owned(),
        crate::str_field(&cert, "fingerprint")?.to_owned(),
    ))
}

/// An enrolled, running, connected agent with `config_body`.
pub fn running_agent(ctl: &crate::Controller, config_body: &str) -> Result<crate::fleet::Agent> {
    let (tok, pin) = crate::fleet::token(ctl, &["--labels", "role=web"])?;
    let mut agent = crate::fleet::Agent::new(ctl, config_body)?;
    agent.enroll(ctl, &tok, &pin)?;
    agent.start()?;
    let id = agent.id.clone().unwrap_or_default();
    crate::fleet::wait_connected(ctl, &id, true, Duration::from_secs(30))?;
    Ok(agent)
}

/// `certfleet deploy CERT --to role=web --target TARGET --wait`; returns
/// whether the rollout completed and the deployment as listed afterwards.
pub fn deploy(
    ctl: &crate::Controller,
    cert: &str,
    target: &str,
) -> Result<(bool, serde_json::Value)> {
    let out = ctl.cli(&[
        "deploy", cert, "--to", "role=web", "--target", target, "--wait",
    ])?;
    let list = crate::fleet::wait_deployments(ctl, cert, Duration::from_secs(30))?;
    let d = list
        .into_iter()
        .find(|d| d["target"] == target)
        .ok_or_else(|| anyhow!("no deployment of {cert} to {target}"))?;
    Ok((out.status.success(), d))
}

/// How many certificates the server at 127.0.0.1:`port` sends for `sni`
/// (leaf plus chain), as `openssl s_client -showcerts` sees them.
pub fn served_chain_len(port: u16, sni: &str) -> Result<usize> {
    let out = crate::run_with_timeout(
        Command::new("openssl").args([
            "s_client",
            "-showcerts",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            sni,
        ]),
        Duration::from_secs(20),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .matches("-----BEGIN CERTIFICATE-----")
        .count())
}
