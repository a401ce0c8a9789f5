//! `kind = "haproxy"`: one combined PEM (leaf, chain, key) and, in
//! `reload_mode = "runtime"`, a hitless update through HAProxy's runtime
//! API instead of a reload.
//!
//! The runtime update pushes the live combined file — already swapped in
//! and checked with `haproxy -c` by the pipeline — as
//! `set ssl cert <path> <<` followed by `commit ssl cert <path>`. HAProxy
//! only changes what it serves at the commit, and a transaction that was
//! created but not committed is aborted (`abort ssl cert`), so the proxy
//! never serves a half-made update. Existing connections keep going; new
//! handshakes get the new certificate; no worker is restarted. The file on
//! disk is what the next restart loads.
//!
//! Each command is one connection to the socket (HAProxy's non-interactive
//! mode: it answers and closes).

use std::path::Path;
use std::time::Duration;

use certfleet_protocol::message::CertBundle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

/// Largest answer read from the runtime API.
const ANSWER_CAP: u64 = 64 * 1024;

/// The combined PEM HAProxy loads: leaf, chain, then key.
pub fn combined_pem(bundle: &CertBundle) -> Result<Zeroizing<String>, String> {
    let key = bundle
        .key
        .expose_str()
        .ok_or("private key is not PEM text")?;
    let mut out = Zeroizing::new(String::new());
    for part in [bundle.leaf_pem.as_str(), bundle.chain_pem.as_str(), key] {
        let part = part.trim();
        if !part.is_empty() {
            out.push_str(part);
            out.push('\n');
        }
    }
    Ok(out)
}

/// A certificate name as a CLI argument: spaces, `;` and `\` escaped.
fn cli_arg(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, ' ' | ';' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Send one command (and its payload) and return HAProxy's answer.
async fn command(socket: &Path, text: &[u8], timeout: Duration) -> Result<String, String> {
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
            format!(
                "cannot connect to the runtime API socket {}: {e}",
                socket.display()
            )
        })?;
        stream
            .write_all(text)
            .await
            .map_err(|e| format!("runtime API socket {}: {e}", socket.display()))?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(ANSWER_CAP)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("runtime API socket {}: {e}", socket.display()))?;
        Ok(String::from_utf8_lossy(&answer).trim().to_string())
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        format!(
            "runtime API socket {} did not answer within {}",
            socket.display(),
            humantime::format_duration(timeout)
        )
    })?
}

/// Why a runtime update failed, and whether HAProxy may have changed.
#[derive(Debug)]
pub struct RuntimeError {
    pub message: String,
    /// `true` only when HAProxy is known to serve what it did before: the
    /// transaction was refused, or it was aborted before any commit. After
    /// a commit whose answer was lost or unclear HAProxy's state is
    /// unknown, and a rollback must push the previous certificate again.
    pub unchanged: bool,
}

/// Push the combined PEM at `cert` (its contents read from disk now) into
/// the running HAProxy. On error, `unchanged` says whether HAProxy is known
/// to serve what it did before (see [`RuntimeError`]).
pub async fn runtime_update(
    socket: &Path,
    cert: &Path,
    timeout: Duration,
) -> Result<(), RuntimeError> {
    let unchanged = |message: String| RuntimeError {
        message,
        unchanged: true,
    };
    let pem = Zeroizing::new(
        std::fs::read_to_string(cert)
            .map_err(|e| unchanged(format!("cannot read {}: {e}", cert.display())))?,
    );
    let name = cli_arg(cert);
    let mut set = Zeroizing::new(format!("set ssl cert {name} <<\n").into_bytes());
    // The payload ends at the first empty line, so it must hold none.
    for line in pem.lines().filter(|l| !l.trim().is_empty()) {
        set.extend_from_slice(line.as_bytes());
        set.push(b'\n');
    }
    set.push(b'\n');
    // A `set` only prepares a transaction; nothing is served from it
    // until a commit, so any failure here leaves HAProxy unchanged.
    let answer = command(socket, &set, timeout).await.map_err(unchanged)?;
    if !answer.contains("Transaction created") && !answer.contains("Transaction updated") {
        return Err(unchanged(format!(
            "HAProxy refused `set ssl cert {name}`: {answer:?} (is the socket `level admin`, \
             and is {} the path in a `crt` line?)",
            cert.display()
        )));
    }
    let commit = command(
        socket,
        format!("commit ssl cert {name}\n").as_bytes(),
        timeout,
    )
    .await;
    let why = match commit {
        Ok(answer) if answer.contains("Success!") => return Ok(()),
        Ok(answer) => format!("HAProxy refused `commit ssl cert {name}`: {answer:?}"),
        Err(e) => format!("`commit ssl cert {name}` failed: {e}"),
    };
    // Only an abort that finds the transaction still open proves the
    // commit did not happen. "No ongoing transaction" after a commit
    // attempt may well mean the commit went through.
    match command(
        socket,
        format!("abort ssl cert {name}\n").as_bytes(),
        timeout,
    )
    .await
    {
        Ok(a) if a.contains("aborted") && !a.contains("No ongoing transaction") => Err(unchanged(
            format!("{why}; the transaction was aborted and HAProxy serves what it did before"),
        )),
        Ok(a) => Err(RuntimeError {
            message: format!(
                "{why}; `abort ssl cert {name}` answered {a:?}, so the commit may have been \
                 applied: HAProxy's certificate is unknown"
            ),
            unchanged: false,
        }),
        Err(e) => Err(RuntimeError {
            message: format!(
                "{why}; `abort ssl cert {name}` failed too: {e} (HAProxy's certificate is unknown)"
            ),
            unchanged: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncBufReadExt;

    /// A scripted stand-in for HAProxy's socket, only for the commit
    /// failure a real HAProxy cannot be made to produce on demand: answers
    /// each connection with the next scripted reply and records commands.
    async fn scripted(replies: Vec<&'static str>) -> (tempfile::TempDir, Arc<Mutex<Vec<String>>>) {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for reply in replies {
                let (stream, _) = listener.accept().await.unwrap();
                let (r, mut w) = stream.into_split();
                let mut lines = tokio::io::BufReader::new(r).lines();
                let first = lines.next_line().await.unwrap().unwrap_or_default();
                if first.ends_with("<<") {
                    while let Ok(Some(l)) = lines.next_line().await {
                        if l.is_empty() {
                            break;
                        }
                    }
                }
                log.lock().unwrap().push(first);
                w.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        (dir, seen)
    }

    #[tokio::test]
    async fn failed_commit_is_aborted() {
        let (dir, seen) = scripted(vec![
            "Transaction created for certificate /x/site.pem!\n",
            "Committing /x/site.pem\nError: bad certificate\n",
            "Transaction aborted for certificate '/x/site.pem'!\n",
        ])
        .await;
        let cert = dir.path().join("site.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n\n",
        )
        .unwrap();
        let e = runtime_update(&dir.path().join("sock"), &cert, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.message.contains("aborted"), "{}", e.message);
        assert!(e.unchanged);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen[0].starts_with("set ssl cert") && seen[2].starts_with("abort ssl cert"));
    }

    #[tokio::test]
    async fn unclear_commit_is_not_taken_for_unchanged() {
        // The commit's answer is unclear and the abort finds no open
        // transaction: the commit may have gone through.
        let (dir, seen) = scripted(vec![
            "Transaction created for certificate /x/site.pem!\n",
            "Committing /x/site.pem\n",
            "No ongoing transaction!\n",
        ])
        .await;
        let cert = dir.path().join("site.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = runtime_update(&dir.path().join("sock"), &cert, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(!e.unchanged, "{}", e.message);
        assert!(e.message.contains("unknown"), "{}", e.message);
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[test]
    fn names_are_escaped() {
        assert_eq!(cli_arg(Path::new("/a b/c;d")), "/a\\ b/c\\;d");
    }
}
