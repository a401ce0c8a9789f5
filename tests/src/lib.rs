//! Harness for certfleet's end-to-end tests: starts the real `certfleet`
//! binary (`certfleet serve`) in a temporary directory on ports chosen by the
//! kernel, drives it through the real CLI, and offers the small helpers the
//! tests share (running `openssl`, fetching a URL over plain HTTP, reading
//! PEM files).
//!
//! Every [`Controller`] owns its own temporary directory (state directory,
//! log file, scratch space), so tests run in parallel without sharing
//! anything. The controller's stderr goes to a log file that tests can read;
//! when a [`Controller`] is dropped it kills its process and prints the tail of
//! that log, which the test runner shows only for a failing test.
//!
//! The binary is found beside the test executable (`target/debug/certfleet`)
//! or at `$CERTFLEET_BIN`; build it first with `cargo build --workspace --bins --features certfleet-controller/failpoints,certfleet-agent/failpoints` (as scripts/test.sh does).

use std::{
    env,
    ffi::OsStr,
    fs::{self, File, OpenOptions},
    io::{Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

pub mod acme;
pub mod fleet;
pub mod servers;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use tempfile::TempDir;

/// How long `certfleet serve` may take to write `runtime.json`, and how long a
/// controller that must refuse to start may take to exit.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Upper bound for one CLI invocation (issuance with `--wait` included).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// Upper bound for one `openssl` invocation.
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of the controller log printed when a [`Controller`] is dropped.
const LOG_TAIL_LINES: usize = 80;

/// Environment variable naming the `certfleet` binary to test.
pub const BIN_ENV: &str = "CERTFLEET_BIN";

/// Set (to anything) to keep every controller's temporary directory.
pub const KEEP_ENV: &str = "CERTFLEET_TEST_KEEP";

/// Path of the `certfleet` binary under test.
///
/// `$CERTFLEET_BIN` wins; otherwise the binary sits one directory above the
/// test executable (`target/debug/deps/<test>` → `target/debug/certfleet`).
/// Panics with instructions when it is missing: every test needs it.
pub fn certfleet_bin() -> PathBuf {
    if let Some(path) = env::var_os(BIN_ENV) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{BIN_ENV}={} does not name a file; unset it or build the binary with \
             `cargo build --workspace --bins --features certfleet-controller/failpoints,certfleet-agent/failpoints` (as scripts/test.sh does)",
            path.display()
        );
        return path;
    }
    let exe = env::current_exe().expect("the test executable knows its own path");
    let mut dir = exe
        .parent()
        .expect("an executable path has a parent directory")
        .to_path_buf();
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.pop();
    }
    let bin = dir.join(format!("certfleet{}", env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "the certfleet binary was not found at {}: run `cargo build --workspace --bins --features certfleet-controller/failpoints,certfleet-agent/failpoints` (as scripts/test.sh does) \
         before the end-to-end tests (or point {BIN_ENV} at it)",
        bin.display()
    );
    bin
}

/// A `Command` for the `certfleet` binary with every `CERTFLEET_*` variable of
/// the test environment removed, so only what a test passes reaches it.
pub fn certfleet_command() -> Command {
    let mut cmd = Command::new(certfleet_bin());
    for (key, _) in env::vars_os() {
        if key.to_string_lossy().starts_with("CERTFLEET_") {
            cmd.env_remove(key);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// What `certfleet serve` wrote to `runtime.json` after binding its sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// QUIC address of the controller (CLI and agents).
    pub listen: SocketAddr,
    /// Plain-HTTP address serving the CRLs.
    pub crl_listen: SocketAddr,
    /// `http://host:port` prefix of every CRL URL.
    pub crl_url_base: String,
    /// Process id of the controller.
    pub pid: u32,
}

impl Runtime {
    /// Parses the contents of `runtime.json`.
    pub fn parse(text: &str) -> Result<Runtime> {
        let v: Value = serde_json::from_str(text).context("runtime.json is not JSON")?;
        let addr = |key: &str| -> Result<SocketAddr> {
            str_field(&v, key)?
                .parse()
                .with_context(|| format!("runtime.json: {key:?} is not a socket address"))
        };
        let pid = v["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| anyhow!("runtime.json: \"pid\" is not a process id: {v}"))?;
        Ok(Runtime {
            listen: addr("listen")?,
            crl_listen: addr("crl_listen")?,
            crl_url_base: str_field(&v, "crl_url_base")?.to_owned(),
            pid,
        })
    }
}

/// Extra settings for [`Controller::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ControllerOptions {
    /// Arguments appended to `certfleet serve …` (e.g. `--master-key-file F`).
    pub serve_args: Vec<String>,
    /// Environment variables set for the controller process (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// A fixed QUIC address instead of a free port picked at each start, so
    /// a restarted controller is found where its agents left it.
    pub listen: Option<SocketAddr>,
}

/// A running `certfleet serve` on a private state directory.
pub struct Controller {
    /// Holds the state directory, the log and scratch directories; `None`
    /// only while being dropped.
    root: Option<TempDir>,
    root_path: PathBuf,
    state_dir: PathBuf,
    log_path: PathBuf,
    options: ControllerOptions,
    child: Option<Child>,
    runtime: Option<Runtime>,
    starts: u32,
}

impl Controller {
    /// Starts a controller on a fresh state directory and waits until it has
    /// written `runtime.json`.
    pub fn start() -> Result<Controller> {
        Controller::start_with(ControllerOptions::default())
    }

    /// [`Controller::start`] with extra arguments or environment.
    pub fn start_with(options: ControllerOptions) -> Result<Controller> {
        let root = tempfile::Builder::new()
            .prefix("certfleet-e2e-")
            .tempdir()
            .context("creating the controller's temporary directory")?;
        let root_path = root.path().to_path_buf();
        let state_dir = root_path.join("state");
        // 0700, as the packaged unit's StateDirectoryMode= makes it: serve
        // refuses a state directory other users can reach.
        std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700)
            .create(&state_dir)
            .context("creating the state directory")?;
        let mut ctl = Controller {
            root: Some(root),
            log_path: root_path.join("controller.log"),
            root_path,
            state_dir,
            options,
            child: None,
            runtime: None,
            starts: 0,
        };
        ctl.spawn()?;
        Ok(ctl)
    }

    /// The state directory (`--state-dir`).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The admin credential the controller wrote at first start.
    pub fn credential_path(&self) -> PathBuf {
        self.state_dir.join("admin.credential")
    }

    /// The master key in the state directory.
    pub fn master_key_path(&self) -> PathBuf {
        self.state_dir.join("master.key")
    }

    /// The SQLite database.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("certfleet.db")
    }

    /// The file collecting the controller's stdout and stderr over all starts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the controller has logged so far (lossily decoded).
    pub fn log(&self) -> Result<String> {
        let bytes = fs::read(&self.log_path)
            .with_context(|| format!("reading {}", self.log_path.display()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A directory named `name` inside this controller's temporary directory,
    /// created if needed (empty on first use).
    pub fn scratch(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root_path.join("scratch").join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// What the running controller wrote to `runtime.json`.
    ///
    /// Panics when the controller is not running: a test bug.
    pub fn runtime(&self) -> &Runtime {
        self.runtime
            .as_ref()
            .expect("the controller is running (start or restart it first)")
    }

    /// QUIC address of the running controller.
    pub fn listen(&self) -> SocketAddr {
        self.runtime().listen
    }

    /// Whether the controller process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Fails unless the controller process is still alive.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait().context("polling the controller")? {
                bail!(
                    "the controller exited with {status}; log tail:\n{}",
                    self.log_tail()
                );
            }
            return Ok(());
        }
        bail!("the controller is not running")
    }

    /// Kills the controller (SIGKILL: nothing is flushed on purpose) and waits
    /// for it to exit. The state directory is kept.
    pub fn stop(&mut self) -> Result<()> {
        self.runtime = None;
        if let Some(mut child) = self.child.take() {
            // Kill fails only when the process has already exited; wait
            // reaps it either way.
            let _ = child.kill();
            child.wait().context("waiting for the killed controller")?;
        }
        Ok(())
    }

    /// Stops the controller the way `systemctl stop` does (SIGTERM: it closes
    /// every connection and drains) and waits for it to exit; kills it if it
    /// is still running after 20 s. The state directory is kept.
    pub fn terminate(&mut self) -> Result<()> {
        self.runtime = None;
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = i32::try_from(child.id()).context("controller pid")?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while child
            .try_wait()
            .context("polling the controller")?
            .is_none()
        {
            if Instant::now() >= deadline {
                let _ = child.kill();
                child.wait().context("waiting for the killed controller")?;
                bail!("the controller ignored SIGTERM for 20 s and was killed");
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) an environment variable of the
    /// controller process from its next start on (e.g. `CERTFLEET_FAILPOINTS`).
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.options.env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            self.options.env.push((key.to_owned(), value.to_owned()));
        }
    }

    /// Waits for the controller process to exit by itself (a failpoint
    /// that aborts it) and returns its status; fails after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("the controller is not running"))?;
        loop {
            if let Some(status) = child.try_wait().context("polling the controller")? {
                self.child = None;
                self.runtime = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the controller is still running after {timeout:?}; log tail:\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a stopped controller again on its state directory.
    pub fn start_again(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "the controller is still running");
        self.spawn()
    }

    /// Kills the controller and starts it again on the same state directory.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// [`Controller::restart`] with other `serve` arguments, which are kept
    /// for later restarts.
    pub fn restart_with(&mut self, serve_args: &[&str]) -> Result<()> {
        self.options.serve_args = serve_args.iter().map(|s| (*s).to_owned()).collect();
        self.restart()
    }

    /// Starts the controller on its state directory, with `serve_args`
    /// instead of the configured extra arguments, expecting it to refuse:
    /// returns its exit status and stderr once it exits. Fails if it writes
    /// `runtime.json` (it started) or is still running after
    /// [`STARTUP_TIMEOUT`]. The controller must be stopped first.
    pub fn start_expecting_failure(&mut self, serve_args: &[&str]) -> Result<(ExitStatus, String)> {
        ensure!(
            self.child.is_none(),
            "stop the controller before starting it again"
        );
        let runtime_path = self.state_dir.join("runtime.json");
        remove_if_exists(&runtime_path)?;
        self.starts += 1;
        let stderr_path = self
            .root_path
            .join(format!("refused-start-{}.log", self.starts));
        let stderr = File::create(&stderr_path).context("creating the stderr file")?;
        let mut child = self
            .serve_command(serve_args.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("spawning certfleet serve")?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().context("polling certfleet serve")? {
                break status;
            }
            if runtime_path.exists() || Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
                if runtime_path.exists() {
                    bail!(
                        "certfleet serve started (wrote runtime.json) although it \
                         should have refused; stderr:\n{stderr}"
                    );
                }
                bail!(
                    "certfleet serve neither started nor exited within {STARTUP_TIMEOUT:?}; \
                     stderr:\n{stderr}"
                );
            }
            thread::sleep(Duration::from_millis(25));
        };
        let stderr = String::from_utf8_lossy(&fs::read(&stderr_path)?).into_owned();
        Ok((status, stderr))
    }

    /// Runs the CLI against this controller with its admin credential.
    /// `args` follow the global flags, e.g. `["issuer", "list"]`.
    ///
    /// A controller started with a clock-offset file (`env`
    /// `CERTFLEET_CLOCK_OFFSET_FILE`) shares it with its CLI: both judge
    /// certificate validity by the same simulated time, as they would by
    /// the same wall clock in production.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        self.cli_as(&self.credential_path(), args)
    }

    /// [`Controller::cli`] with another admin credential.
    pub fn cli_as(&self, credential: &Path, args: &[&str]) -> Result<Output> {
        let mut cmd = self.cli_command();
        if let Some((key, value)) = self
            .options
            .env
            .iter()
            .find(|(key, _)| key == fleet::CLOCK_OFFSET_ENV)
        {
            cmd.env(key, value);
        }
        cmd.arg("--controller")
            .arg(self.listen().to_string())
            .arg("--credential")
            .arg(credential)
            .args(args);
        run_with_timeout(&mut cmd, CLI_TIMEOUT)
    }

    /// Runs the CLI and fails unless it succeeds.
    pub fn cli_ok(&self, args: &[&str]) -> Result<Output> {
        let out = self.cli(args)?;
        ensure!(
            out.status.success(),
            "`certfleet {}` failed with {}:\nstderr: {}\nstdout: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(out)
    }

    /// Runs the CLI with `--output json`, fails unless it succeeds, and
    /// parses what it printed.
    pub fn cli_json(&self, args: &[&str]) -> Result<Value> {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        let out = self.cli_ok(&full)?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "`certfleet {}` printed no JSON: {}",
                full.join(" "),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs the CLI expecting it to fail the way a user error should: non-zero
    /// exit, stderr starting with `error:`, no panic. Returns stderr.
    pub fn cli_err(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        expect_cli_error(&out, &format!("certfleet {}", args.join(" ")))
    }

    /// What an operator would see: issuers, instances and certificates, for
    /// checking that a refused command or a restart changed nothing. The CRL
    /// URL base (whose port changes with every start) is replaced by
    /// `<crl_url_base>`.
    pub fn inventory(&self) -> Result<Value> {
        let inventory = serde_json::json!({
            "issuers": self.cli_json(&["issuer", "list"])?,
            "instances": self.cli_json(&["instance", "list"])?,
            "certs": self.cli_json(&["cert", "list"])?,
        });
        let text = serde_json::to_string(&inventory)?
            .replace(self.runtime().crl_url_base.as_str(), "<crl_url_base>");
        Ok(serde_json::from_str(&text)?)
    }

    /// A `Command` for the CLI with no flags, run in the controller's
    /// temporary directory with `CERTFLEET_*` removed, for tests that need to
    /// control every flag themselves.
    pub fn cli_command(&self) -> Command {
        let mut cmd = certfleet_command();
        cmd.current_dir(&self.root_path);
        cmd
    }

    /// Creates an issuer, an instance and an issued certificate; returns the
    /// certificate as `cert show` prints it.
    pub fn issue(&self, issuer: &str, instance_args: &[&str], domains: &[&str]) -> Result<Value> {
        let mut create = vec!["instance", "create", "--issuer", issuer];
        create.extend_from_slice(instance_args);
        let instance = self.cli_json(&create)?;
        let instance_id = str_field(&instance, "id")?;
        let mut apply = vec!["cert", "apply", "--instance", instance_id, "--wait"];
        for d in domains {
            apply.extend_from_slice(&["--domain", d]);
        }
        let app = self.cli_json(&apply)?;
        ensure!(
            app["state"] == "issued",
            "application did not end issued: {app}"
        );
        let cert_id = str_field(&app, "certificate")?;
        self.cli_json(&["cert", "show", cert_id])
    }

    /// Adds the built-in issuer `ca1` and issues one certificate for
    /// `www.example.test` on a default instance; returns it as `cert show`
    /// prints it.
    pub fn issue_default(&self) -> Result<Value> {
        self.cli_json(&["issuer", "add", "ca1", "--kind", "builtin"])?;
        self.issue("ca1", &[], &["www.example.test"])
    }

    fn serve_command<'a>(&self, extra: impl IntoIterator<Item = &'a str>) -> Command {
        let mut cmd = certfleet_command();
        cmd.current_dir(&self.root_path)
            .arg("serve")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--listen")
            .arg(
                self.options
                    .listen
                    .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string()),
            )
            .args(["--crl-listen", "127.0.0.1:0"])
            .args(extra)
            // Plain text in the log file, whatever the controller's default.
            .env("NO_COLOR", "1")
            .envs(self.options.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn spawn(&mut self) -> Result<()> {
        let runtime_path = self.state_dir.join("runtime.json");
        remove_if_exists(&runtime_path)?;
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        writeln!(log, "--- certfleet-tests: start #{} ---", self.starts)?;
        let log_out = log.try_clone().context("duplicating the log file")?;
        let serve_args = self.options.serve_args.clone();
        let child = self
            .serve_command(serve_args.iter().map(String::as_str))
            .stdout(log_out)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {} serve", certfleet_bin().display()))?;
        self.child = Some(child);
        self.wait_ready(&runtime_path)
    }

    fn wait_ready(&mut self, runtime_path: &Path) -> Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let child = self
                .child
                .as_mut()
                .ok_or_else(|| anyhow!("the controller is not running"))?;
            if let Some(status) = child.try_wait().context("polling certfleet serve")? {
                self.child = None;
                bail!(
                    "certfleet serve exited with {status} before writing runtime.json; \
                     log tail:\n{}",
                    self.log_tail()
                );
            }
            // The file is written atomically, but tolerate a reader racing a
            // non-atomic writer: a half-written file just means "not yet".
            if let Ok(text) = fs::read_to_string(runtime_path) {
                if let Ok(runtime) = Runtime::parse(&text) {
                    ensure!(
                        runtime.pid == child.id(),
                        "runtime.json names pid {} but the controller is pid {}",
                        runtime.pid,
                        child.id()
                    );
                    self.runtime = Some(runtime);
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                self.stop()?;
                bail!(
                    "certfleet serve did not write a valid {} within {STARTUP_TIMEOUT:?}; \
                     log tail:\n{}",
                    runtime_path.display(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    fn log_tail(&self) -> String {
        let log = self.log().unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.stop();
        // Test runners show captured output only for failing tests, so this
        // costs nothing when everything passes.
        eprintln!(
            "--- certfleet controller log ({}), last {LOG_TAIL_LINES} lines ---\n{}",
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

/// Checks that a finished CLI run failed like a user error should: non-zero
/// exit, a message on stderr starting with `error:`, no panic. Returns
/// stderr.
pub fn expect_cli_error(out: &Output, what: &str) -> Result<String> {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        !out.status.success(),
        "`{what}` succeeded but should have failed; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Warnings (a credential about to expire, say) may come first.
    let first_non_warning = stderr
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with("warning:"))
        .unwrap_or("");
    ensure!(
        first_non_warning.starts_with("error:"),
        "`{what}` failed ({}) without an `error:` message on stderr: {stderr:?}",
        out.status
    );
    ensure!(!stderr.contains("panicked"), "`{what}` panicked: {stderr}");
    Ok(stderr)
}

/// Runs a command with piped stdout and stderr, killing it after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {what}"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr.join().unwrap_or_default();
            bail!(
                "{what} did not finish within {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&stderr)
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Runs `openssl` with `args` and returns its output, whatever the exit.
pub fn openssl(args: &[&str]) -> Result<Output> {
    run_with_timeout(Command::new("openssl").args(args), OPENSSL_TIMEOUT)
        .context("running openssl (is it installed? scripts/test.sh installs it)")
}

/// Runs `openssl` with `args`, fails unless it succeeds, and returns stdout
/// followed by stderr (openssl splits its messages between the two).
pub fn openssl_ok(args: &[&str]) -> Result<String> {
    let out = openssl(args)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "`openssl {}` failed with {}: {text}",
        args.join(" "),
        out.status
    );
    Ok(text)
}

/// A path as `&str`, for argument lists (temporary paths are UTF-8).
pub fn utf8(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| anyhow!("path is not UTF-8: {}", path.display()))
}

/// Checks that the private key in `key` belongs to the certificate in `cert`
/// by comparing the public keys openssl derives from both.
pub fn ensure_key_matches_cert(key: &Path, cert: &Path) -> Result<()> {
    let from_key = openssl_stdout(&["pkey", "-in", utf8(key)?, "-pubout"])?;
    let from_cert = openssl_stdout(&["x509", "-in", utf8(cert)?, "-noout", "-pubkey"])?;
    ensure!(
        from_key.trim() == from_cert.trim(),
        "the private key {} does not match the certificate {}",
        key.display(),
        cert.display()
    );
    Ok(())
}

fn openssl_stdout(args: &[&str]) -> Result<String> {
    let out = openssl(args)?;
    ensure!(
        out.status.success(),
        "`openssl {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The serial number of a certificate file, normalized (see
/// [`normalize_hex`]).
pub fn cert_serial(cert: &Path) -> Result<String> {
    let out = openssl_stdout(&["x509", "-in", utf8(cert)?, "-noout", "-serial"])?;
    let serial = out
        .trim()
        .strip_prefix("serial=")
        .ok_or_else(|| anyhow!("unexpected `openssl x509 -serial` output: {out}"))?;
    Ok(normalize_hex(serial))
}

/// The SHA-256 fingerprint of a certificate file, lower-case hex without
/// colons.
pub fn cert_fingerprint(cert: &Path) -> Result<String> {
    let out = openssl_stdout(&[
        "x509",
        "-in",
        utf8(cert)?,
        "-noout",
        "-fingerprint",
        "-sha256",
    ])?;
    let (_, hex) = out
        .trim()
        .split_once('=')
        .ok_or_else(|| anyhow!("unexpected `openssl x509 -fingerprint` output: {out}"))?;
    Ok(hex.replace(':', "").to_ascii_lowercase())
}

/// Upper-case hex without colons or leading zeros, so serials printed by
/// different tools compare equal.
pub fn normalize_hex(hex: &str) -> String {
    let digits: String = hex
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Serial numbers listed in `openssl crl -text` output, normalized.
pub fn crl_serials(crl_text: &str) -> Vec<String> {
    crl_text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Serial Number:"))
        .map(normalize_hex)
        .collect()
}

/// One block of a PEM file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemBlock {
    /// The word after `BEGIN`, e.g. `CERTIFICATE` or `PRIVATE KEY`.
    pub label: String,
    /// The base64 body with line breaks removed.
    pub base64: String,
}

/// The blocks of a PEM text, in order.
pub fn pem_blocks(text: &str) -> Vec<PemBlock> {
    let mut blocks = Vec::new();
    let mut current: Option<PemBlock> = None;
    for line in text.lines().map(str::trim) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            current = Some(PemBlock {
                label: label.to_owned(),
                base64: String::new(),
            });
        } else if line.starts_with("-----END ") {
            blocks.extend(current.take());
        } else if let Some(block) = current.as_mut() {
            block.base64.push_str(line);
        }
    }
    blocks
}

/// The blocks of a PEM file.
pub fn read_pem(path: &Path) -> Result<Vec<PemBlock>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(pem_blocks(&text))
}

/// Permission bits of a file (e.g. `0o600`).
pub fn file_mode(path: &Path) -> Result<u32> {
    let meta = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok(meta.permissions().mode() & 0o7777)
}

/// A string field of a JSON object.
pub fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v[key]
        .as_str()
        .ok_or_else(|| anyhow!("{key:?} is not a string in {v}"))
}

/// The elements of a JSON array.
pub fn array(v: &Value) -> Result<&Vec<Value>> {
    v.as_array()
        .ok_or_else(|| anyhow!("expected a JSON array, got {v}"))
}

/// The `"id"` of every element of a JSON array.
pub fn ids(v: &Value) -> Result<Vec<String>> {
    array(v)?
        .iter()
        .map(|e| str_field(e, "id").map(str::to_owned))
        .collect()
}

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A response to [`http_get`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

/// Fetches an `http://host:port/path` URL with a plain HTTP/1.0 GET.
pub fn http_get(url: &str) -> Result<HttpResponse> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("not an http:// URL: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .ok_or_else(|| anyhow!("{authority} resolves to nothing"))?;
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr} for {url}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the response to GET {url}"))?;
    parse_http_response(url, &raw)
}

/// Split a raw HTTP/1.x response into status, headers and body.
pub fn parse_http_response(url: &str, raw: &[u8]) -> Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("GET {url}: response has no header end"))?;
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = headers
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("GET {url}: bad status line in {headers:?}"))?;
    Ok(HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// Whether `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}
