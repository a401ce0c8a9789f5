//! The controller under test as the fleet benchmarks see it: a real
//! `certfleet serve` process on a fixed loopback port (so a restarted
//! controller is found where agents left it), and what `/proc` says about
//! its memory and CPU.

use std::fs::{self, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A `certfleet serve` process on its own state directory.
pub(crate) struct Serve {
    pub(crate) state_dir: PathBuf,
    pub(crate) listen: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl Serve {
    /// Start a controller on `root/state`, listening on `listen`.
    pub(crate) fn start(root: &Path, listen: SocketAddr) -> Result<Serve> {
        let state_dir = root.join("state");
        fs::create_dir_all(&state_dir)?;
        let mut serve = Serve {
            state_dir,
            listen,
            log: root.join("controller.log"),
            child: None,
        };
        serve.spawn()?;
        Ok(serve)
    }

    pub(crate) fn pid(&self) -> Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .context("the controller is not running")
    }

    pub(crate) fn credential_path(&self) -> PathBuf {
        self.state_dir.join("admin.credential")
    }

    /// Start the process and wait until it has bound its sockets
    /// (`runtime.json` written).
    pub(crate) fn spawn(&mut self) -> Result<()> {
        let runtime = self.state_dir.join("runtime.json");
        let _ = fs::remove_file(&runtime);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = certfleet_tests::certfleet_command()
            .arg("serve")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--listen", &self.listen.to_string()])
            .args(["--crl-listen", "127.0.0.1:0"])
            .env("NO_COLOR", "1")
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("spawning certfleet serve")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = fs::read_to_string(&runtime) {
                if certfleet_tests::Runtime::parse(&text).is_ok() {
                    return Ok(());
                }
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    self.child = None;
                    bail!(
                        "certfleet serve exited with {status}; see {}",
                        self.log.display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("certfleet serve did not start; see {}", self.log.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stop the way `systemctl stop` does (SIGTERM; the controller closes
    /// every connection and drains) and wait for the process to exit.
    pub(crate) fn terminate(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(i32::try_from(child.id())?);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if child.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    child.wait()?;
                    bail!("certfleet serve ignored SIGTERM for 20 s; killed");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Resident set size of a process in kB (`VmRSS` in /proc/<pid>/status).
pub(crate) fn rss_kb(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc status")
}

/// CPU seconds (user, system) a process has used, from /proc/<pid>/stat.
pub(crate) fn cpu_split(pid: u32) -> Result<(f64, f64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<f64> {
        let v: f64 = fields.get(i).context("short /proc stat")?.parse()?;
        // Linux reports in USER_HZ, 100 on every mainstream configuration.
        Ok(v / 100.0)
    };
    Ok((tick(11)?, tick(12)?))
}

/// CPU seconds (user + system) a process has used.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let (u, s) = cpu_split(pid)?;
    Ok(u + s)
}
