//! `certfleet serve` settings as the packages give them: only environment
//! variables (what systemd passes from /etc/default/certfleet and the unit),
//! the precedence flag > environment > controller.toml > default, and the
//! `--dev` state directory's mode.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener, UdpSocket},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use certfleet_tests::{certfleet_command, http_get, Runtime, STARTUP_TIMEOUT};

/// A free UDP port (QUIC) on 127.0.0.1. The socket is closed before the
/// controller binds it; a collision in between fails the test loudly
/// (address in use), it cannot make it pass wrongly.
fn free_udp() -> Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

/// A free TCP port (CRL HTTP) on 127.0.0.1; see [`free_udp`].
fn free_tcp() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Kills the controller when the test ends, whatever happened.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `<state>/runtime.json` written by the controller `serve`.
fn wait_runtime(serve: &mut Serve, state: &Path, log: &Path) -> Result<Runtime> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = serve.0.try_wait()? {
            bail!(
                "certfleet serve exited with {status}: {}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Ok(text) = fs::read_to_string(state.join("runtime.json")) {
            if let Ok(runtime) = Runtime::parse(&text) {
                return Ok(runtime);
            }
        }
        if Instant::now() >= deadline {
            bail!("certfleet serve did not write runtime.json within {STARTUP_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(25));
    }
}

fn spawn_serve(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Result<(Serve, PathBuf)> {
    let log = dir.join("serve.log");
    let out = fs::File::create(&log)?;
    let child = certfleet_command()
        .current_dir(dir)
        .arg("serve")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("NO_COLOR", "1")
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("spawning certfleet serve")?;
    Ok((Serve(child), log))
}

#[test]
fn serve_reads_only_environment_variables() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let (listen, crl) = (free_udp()?, free_tcp()?);
    let (mut serve, log) = spawn_serve(
        dir.path(),
        &[],
        &[
            ("CERTFLEET_STATE_DIR", state.display().to_string()),
            ("CERTFLEET_LISTEN", listen.to_string()),
            ("CERTFLEET_CRL_LISTEN", crl.to_string()),
            (
                "CERTFLEET_CRL_URL_BASE",
                "http://pki.example.test:8080".into(),
            ),
            (
                "CERTFLEET_MASTER_KEY_FILE",
                dir.path().join("master.key").display().to_string(),
            ),
        ],
    )?;
    let runtime = wait_runtime(&mut serve, &state, &log)?;
    assert_eq!(runtime.listen, listen, "QUIC address from CERTFLEET_LISTEN");
    assert_eq!(
        runtime.crl_listen, crl,
        "CRL address from CERTFLEET_CRL_LISTEN"
    );
    assert_eq!(runtime.crl_url_base, "http://pki.example.test:8080");
    assert!(
        dir.path().join("master.key").is_file(),
        "the master key went to CERTFLEET_MASTER_KEY_FILE"
    );
    assert!(
        !state.join("master.key").exists(),
        "no master key in the state directory when CERTFLEET_MASTER_KEY_FILE is set"
    );
    // The CRL server really listens where the variable says.
    let resp = http_get(&format!("http://{crl}/"))?;
    assert!(resp.status > 0, "CRL server answered on {crl}");
    Ok(())
}

#[test]
fn flag_beats_environment_beats_config_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let (file_listen, env_listen) = (free_udp()?, free_udp()?);
    let (file_crl, env_crl, flag_crl) = (free_tcp()?, free_tcp()?, free_tcp()?);
    let config = dir.path().join("controller.toml");
    fs::write(
        &config,
        format!(
            "state_dir = {state:?}\nlisten = \"{file_listen}\"\ncrl_listen = \"{file_crl}\"\n\
             crl_url_base = \"http://from-file.test\"\n",
            state = state.display().to_string()
        ),
    )?;
    let flag_crl_text = flag_crl.to_string();
    let (mut serve, log) = spawn_serve(
        dir.path(),
        &["--crl-listen", &flag_crl_text],
        &[
            ("CERTFLEET_CONFIG", config.display().to_string()),
            ("CERTFLEET_LISTEN", env_listen.to_string()),
            ("CERTFLEET_CRL_LISTEN", env_crl.to_string()),
        ],
    )?;
    let runtime = wait_runtime(&mut serve, &state, &log)?;
    assert_eq!(
        runtime.listen, env_listen,
        "environment beats controller.toml"
    );
    assert_eq!(runtime.crl_listen, flag_crl, "flag beats environment");
    assert_eq!(
        runtime.crl_url_base, "http://from-file.test",
        "controller.toml beats the default"
    );
    Ok(())
}

#[test]
fn serve_help_documents_environment_and_precedence() -> Result<()> {
    let out = certfleet_command().args(["serve", "--help"]).output()?;
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "CERTFLEET_CONFIG",
        "CERTFLEET_STATE_DIR",
        "CERTFLEET_LISTEN",
        "CERTFLEET_CRL_LISTEN",
        "CERTFLEET_CRL_URL_BASE",
        "CERTFLEET_MASTER_KEY_FILE",
    ] {
        assert!(help.contains(&format!("[env: {var}")), "{var} in:\n{help}");
    }
    assert!(
        help.contains("first of: its flag, its environment"),
        "precedence in:\n{help}"
    );
    Ok(())
}

#[test]
fn dev_state_directory_is_private() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut child = certfleet_command()
        .args(["serve", "--dev"])
        .env("CERTFLEET_LISTEN", "127.0.0.1:0")
        .env("CERTFLEET_CRL_LISTEN", "127.0.0.1:0")
        // Where tempfile puts the directory; the test's own one.
        .env("TMPDIR", dir.path())
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning certfleet serve --dev")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let mut serve = Serve(child);
    let err = thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let mut state = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("State lives in ") {
            let path = rest
                .split(" and is deleted")
                .next()
                .ok_or_else(|| anyhow!("unexpected line {line:?}"))?;
            state = Some(PathBuf::from(path));
            break;
        }
    }
    let state = state.ok_or_else(|| anyhow!("serve --dev never printed its state directory"))?;
    assert!(
        state.starts_with(dir.path()),
        "{} under TMPDIR",
        state.display()
    );
    let mode = fs::metadata(&state)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "mode of {}: {mode:o}", state.display());
    let _ = serve.0.kill();
    let _ = serve.0.wait();
    let log = err.join().map_err(|_| anyhow!("stderr reader panicked"))?;
    assert!(
        !log.contains("accessible by other users"),
        "serve --dev warned about its own directory:\n{log}"
    );
    Ok(())
}
