//! Running the commands named in the agent's config: argv arrays, never a
//! shell, with a timeout, and with output captured up to a cap so reports
//! stay small.

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

/// Run `argv` with a timeout; the child is killed when it runs over.
pub async fn run(argv: &[String], timeout: Duration) -> std::io::Result<CommandOutput> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
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
            let _ = child.kill().await;
            (
                false,
                format!("timed out after {}", humantime::format_duration(timeout)),
            )
        }
    };
    let out = out_task.await.unwrap_or_default();
    let err = err_task.await.unwrap_or_default();
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
