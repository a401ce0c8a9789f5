//! Running the commands named in the agent's config: argv arrays, never a
//! shell, with a timeout, and with output captured up to a cap so reports
//! stay small.
//!
//! Each command runs in a process group of its own, and a timeout kills the
//! whole group: a shell script that started `sleep` must not leave it
//! holding the output pipe (and the agent) open.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// Most bytes of a command's output kept for a report.
pub const OUTPUT_CAP: usize = 4096;

#[derive(Debug)]
pub struct CommandOutput {
    pub success: bool,
    /// Exit status as text (`exit status: 1`, `signal: 9`, `timed out`).
    pub status: String,
    /// stdout and stderr, each capped.
    pub output: String,
}

fn cap(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.len() <= OUTPUT_CAP {
        return text.trim_end().to_string();
    }
    let mut end = OUTPUT_CAP;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} more bytes]", &text[..end], text.len() - end)
}

async fn read_capped(mut r: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return buf,
            Ok(n) => {
                // Keep draining so the child never blocks on a full pipe.
                if buf.len() < OUTPUT_CAP * 2 {
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
}

/// How long to wait for the output pipes to close after the command has
/// exited or been killed; a daemon it started may hold them forever.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Run `argv` with a timeout; the child's process group is killed when it
/// runs over.
pub async fn run(argv: &[String], timeout: Duration) -> std::io::Result<CommandOutput> {
    run_with_env(argv, &[], timeout).await
}

/// [`run`] with extra environment variables.
pub async fn run_with_env(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> std::io::Result<CommandOutput> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_task = tokio::spawn(async move {
        match stdout {
            Some(s) => read_capped(s).await,
            None => Vec::new(),
        }
    });
    let err_task = tokio::spawn(async move {
        match stderr {
            Some(s) => read_capped(s).await,
            None => Vec::new(),
        }
    });
    let (success, status) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(s)) => (s.success(), s.to_string()),
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                // The child leads its own group (process_group(0)).
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill().await;
            (
                false,
                format!(
                    "timed out after {} and was killed",
                    humantime::format_duration(timeout)
                ),
            )
        }
    };
    // A reader still blocked after the grace period (a daemon the command
    // started holds the pipe) is stopped, so no task or pipe is left behind.
    let drain = |mut task: tokio::task::JoinHandle<Vec<u8>>| async move {
        let got = tokio::time::timeout(DRAIN_GRACE, &mut task).await;
        task.abort();
        got.ok().and_then(Result::ok).unwrap_or_default()
    };
    let out = drain(out_task).await;
    let err = drain(err_task).await;
    let mut output = cap(&out);
    let err = cap(&err);
    if !err.is_empty() {
        if !output.is_empty() {
            output.push('\n');
        }
        output.push_str(&err);
    }
    Ok(CommandOutput {
        success,
        status,
        output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn captures_output_and_status() {
        let r = run(
            &argv(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(!r.success);
        assert!(r.status.contains('3'));
        assert!(r.output.contains("out") && r.output.contains("err"));
    }

    #[tokio::test]
    async fn kills_on_timeout() {
        let start = std::time::Instant::now();
        let r = run(&argv(&["sleep", "30"]), Duration::from_millis(200))
            .await
            .unwrap();
        assert!(!r.success && r.status.contains("timed out"));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let start = std::time::Instant::now();
        // The shell's `sleep` child keeps stdout open unless it is killed too.
        let r = run(
            &argv(&["sh", "-c", "echo started; sleep 30; echo never"]),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
        assert!(!r.success && r.status.contains("timed out"), "{r:?}");
        assert!(r.output.contains("started") && !r.output.contains("never"));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn passes_environment() {
        let r = run_with_env(
            &argv(&["sh", "-c", "echo \"$CERTFLEET_X\""]),
            &[("CERTFLEET_X".into(), "value".into())],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(r.output, "value");
    }

    #[tokio::test]
    async fn caps_output() {
        let r = run(
            &argv(&["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x"]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(r.output.len() < OUTPUT_CAP + 100);
    }

    #[tokio::test]
    async fn missing_program_is_an_error() {
        assert!(
            run(&argv(&["/nonexistent/program"]), Duration::from_secs(1))
                .await
                .is_err()
        );
    }
}
