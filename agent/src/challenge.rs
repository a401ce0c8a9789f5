//! ACME HTTP-01 challenges through the agent: the controller sends a token
//! and key authorization for a domain; the agent writes
//! `<webroot>/.well-known/acme-challenge/<token>` for every target of its
//! own config that serves the domain and has a webroot, and removes it when
//! told (also after a failed validation).
//!
//! The webroot comes from the agent's config; from the network only the
//! token is used in a path, and only after it is checked to be a plain
//! base64url string. Directories below the webroot and the file itself are
//! never followed through symlinks.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use certfleet_protocol::message::{AgentCommand, AgentCommandReply};
use certfleet_protocol::name;
use tracing::{info, warn};

use crate::config::{Config, Target};

/// Whether `token` may be used as a file name: 1 to 256 base64url characters.
pub fn valid_token(token: &str) -> bool {
    (1..=256).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn serves(target: &Target, domain: &str) -> bool {
    let Ok(want) = name::parse(domain) else {
        return false;
    };
    target
        .domains
        .iter()
        .filter_map(|d| name::parse(d).ok())
        .any(|have| have == want || have.covers(&want) || want.covers(&have))
}

/// `<webroot>/.well-known/acme-challenge`, created if missing, refusing
/// symlinks on the way.
fn challenge_dir(webroot: &Path) -> Result<PathBuf, String> {
    let meta = std::fs::symlink_metadata(webroot)
        .map_err(|e| format!("webroot {}: {e}", webroot.display()))?;
    if !meta.is_dir() {
        return Err(format!("webroot {} is not a directory", webroot.display()));
    }
    let mut dir = webroot.to_path_buf();
    for part in [".well-known", "acme-challenge"] {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "{} is a symlink; refusing to follow it",
                    dir.display()
                ))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("{} is not a directory", dir.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                // The web server's workers (www-data) must traverse it; the
                // mode given to mkdir is cut by the umask, and the packaged
                // unit runs the agent with UMask=0077.
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| format!("cannot chmod {}: {e}", dir.display()))?;
            }
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
    }
    Ok(dir)
}

fn publish(webroot: &Path, token: &str, key_authorization: &[u8]) -> Result<(), String> {
    let path = challenge_dir(webroot)?.join(token);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    // World-readable whatever the umask (the unit's UMask=0077 would make it
    // 0600 and the web server would answer the CA with 403).
    f.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
    f.write_all(key_authorization)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn remove(webroot: &Path, token: &str) -> Result<bool, String> {
    let path = webroot
        .join(".well-known")
        .join("acme-challenge")
        .join(token);
    match std::fs::symlink_metadata(&path) {
        Ok(_) => std::fs::remove_file(&path)
            .map(|()| true)
            .map_err(|e| format!("cannot remove {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Carry out one command from the controller.
pub async fn handle(config: &Config, command: AgentCommand) -> AgentCommandReply {
    let (domain, token) = match &command {
        AgentCommand::PublishChallenge { domain, token, .. }
        | AgentCommand::RemoveChallenge { domain, token } => (domain.clone(), token.clone()),
        // Handled by the session, which owns the connection the report goes on.
        AgentCommand::Discover => {
            return AgentCommandReply {
                files: 0,
                error: Some("discovery is not a challenge command".into()),
            }
        }
    };
    if !valid_token(&token) {
        warn!(%domain, "refusing a challenge token that is not base64url");
        return AgentCommandReply {
            files: 0,
            error: Some("challenge token is not a base64url string; nothing written".into()),
        };
    }
    let webroots: Vec<PathBuf> = config
        .targets
        .iter()
        .filter(|t| serves(t, &domain))
        .filter_map(|t| t.webroot.clone())
        .collect();
    if webroots.is_empty() {
        return AgentCommandReply {
            files: 0,
            error: Some(format!(
                "no target of this agent serves {domain} with a webroot"
            )),
        };
    }
    let mut files = 0;
    let mut errors = Vec::new();
    for w in &webroots {
        let r = match &command {
            AgentCommand::PublishChallenge {
                key_authorization, ..
            } => publish(w, &token, key_authorization.expose()).map(|()| true),
            AgentCommand::RemoveChallenge { .. } => remove(w, &token),
            AgentCommand::Discover => Ok(false),
        };
        match r {
            Ok(true) => files += 1,
            Ok(false) => {}
            Err(e) => errors.push(e),
        }
    }
    info!(%domain, files, "challenge command done");
    AgentCommandReply {
        files,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the re-executed test binary: the webroot to publish into.
    const CHILD_WEBROOT: &str = "CERTFLEET_CHALLENGE_TEST_WEBROOT";

    /// The packaged unit runs the agent with UMask=0077; the web server's
    /// workers must still read the challenge. The umask is per process, so
    /// the publish runs in a re-executed copy of this test binary.
    #[test]
    fn challenge_files_are_world_readable_under_the_units_umask() {
        if let Some(webroot) = std::env::var_os(CHILD_WEBROOT) {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
            publish(Path::new(&webroot), "tok-en_1", b"key-authz").expect("publish");
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let module = module_path!();
        let module = module.split_once("::").map_or(module, |(_, rest)| rest);
        let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                &format!("{module}::challenge_files_are_world_readable_under_the_units_umask"),
                "--exact",
                "--test-threads=1",
            ])
            .env(CHILD_WEBROOT, tmp.path())
            .status()
            .expect("re-run the test binary");
        assert!(status.success(), "child publish failed: {status}");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        let well_known = tmp.path().join(".well-known");
        let dir = well_known.join("acme-challenge");
        assert_eq!(mode(&well_known), 0o755);
        assert_eq!(mode(&dir), 0o755);
        assert_eq!(mode(&dir.join("tok-en_1")), 0o644);
        assert_eq!(
            std::fs::read(dir.join("tok-en_1")).expect("read"),
            b"key-authz"
        );
    }

    #[test]
    fn tokens_are_base64url_only() {
        assert!(valid_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        for bad in [
            "",
            "../etc/passwd",
            "a/b",
            "a.b",
            "a b",
            "%2e%2e",
            &"a".repeat(257),
        ] {
            assert!(!valid_token(bad), "{bad:?}");
        }
    }

    fn config(webroot: &Path) -> Config {
        let text = format!(
            "allowed_dirs = [\"/etc/tls\"]\n[[target]]\nname = \"t\"\nkind = \"files\"\n\
             domains = [\"www.example.test\"]\nfullchain = \"/etc/tls/f.pem\"\n\
             key = \"/etc/tls/k.pem\"\nwebroot = \"{}\"\n",
            webroot.display()
        );
        Config::parse(Path::new("t.toml"), &text).unwrap()
    }

    #[tokio::test]
    async fn publish_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let r = handle(
            &c,
            AgentCommand::PublishChallenge {
                domain: "www.example.test".into(),
                token: "tok_en-1".into(),
                key_authorization: certfleet_protocol::Secret::new(b"tok_en-1.thumb".to_vec()),
            },
        )
        .await;
        assert_eq!((r.files, r.error), (1, None));
        let path = dir.path().join(".well-known/acme-challenge/tok_en-1");
        assert_eq!(std::fs::read(&path).unwrap(), b"tok_en-1.thumb");
        let r = handle(
            &c,
            AgentCommand::RemoveChallenge {
                domain: "www.example.test".into(),
                token: "tok_en-1".into(),
            },
        )
        .await;
        assert_eq!(r.files, 1);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn traversal_token_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let r = handle(
            &c,
            AgentCommand::PublishChallenge {
                domain: "www.example.test".into(),
                token: "../../evil".into(),
                key_authorization: certfleet_protocol::Secret::new(b"x".to_vec()),
            },
        )
        .await;
        assert_eq!(r.files, 0);
        assert!(r.error.unwrap().contains("base64url"));
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "nothing written"
        );
    }

    #[tokio::test]
    async fn symlinked_challenge_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join(".well-known")).unwrap();
        let c = config(dir.path());
        let r = handle(
            &c,
            AgentCommand::PublishChallenge {
                domain: "www.example.test".into(),
                token: "tok".into(),
                key_authorization: certfleet_protocol::Secret::new(b"x".to_vec()),
            },
        )
        .await;
        assert!(r.error.unwrap().contains("symlink"));
        assert!(std::fs::read_dir(elsewhere.path())
            .unwrap()
            .next()
            .is_none());
    }

    #[tokio::test]
    async fn unserved_domain_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let r = handle(
            &config(dir.path()),
            AgentCommand::RemoveChallenge {
                domain: "other.test".into(),
                token: "tok".into(),
            },
        )
        .await;
        assert!(r.error.unwrap().contains("no target"));
    }
}
