//! ACME HTTP-01 challenges through the agent: the controller sends a token
//! and key authorization for a domain; the agent writes
//! `<webroot>/.well-known/acme-challenge/<token>` for every target of its
//! own config that serves the domain and has a webroot, and removes it when
//! told (also after a failed validation).
//!
//! The webroot comes from the agent's config; from the network only the
//! token is used in a path, and only after it is checked to be a plain
//! base64url string. Directories below the webroot and the file itself are
//! never followed through symlinks: they are opened one component at a time
//! with `O_NOFOLLOW` by the helpers of `install/files.rs`, so a symlink
//! swapped in between a check and the write cannot redirect it either.

use std::path::{Path, PathBuf};

use certfleet_protocol::message::{AgentCommand, AgentCommandReply};
use certfleet_protocol::name;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::config::{Config, Target};
use crate::install::files::{self, FileError, FileSpec};

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

/// `<webroot>/.well-known/acme-challenge`.
fn challenge_dir(webroot: &Path) -> PathBuf {
    webroot.join(".well-known").join("acme-challenge")
}

/// Write the key authorization to `<challenge dir>/<token>` (0644), the
/// directories created 0755 if missing. The web server's workers
/// (www-data) must traverse and read them whatever the agent's umask (the
/// packaged unit runs it with UMask=0077, which would make the CA's request
/// a 403). Every directory below the webroot is opened with `O_NOFOLLOW`
/// one component at a time, and the file is staged and renamed into place
/// there ([`files::write_below`]), so a symlink planted at `.well-known`,
/// `acme-challenge` or the file itself redirects nothing.
fn publish(webroot: &Path, token: &str, key_authorization: &[u8]) -> Result<(), FileError> {
    let dir = challenge_dir(webroot);
    files::create_dirs_below(webroot, &dir, 0o755)?;
    let spec = FileSpec {
        live: dir.join(token),
        contents: Zeroizing::new(key_authorization.to_vec()),
        mode: 0o644,
        uid: None,
        gid: None,
    };
    files::write_below(webroot, &spec)
}

/// Remove `<challenge dir>/<token>`; `Ok(false)` if it is not there. The
/// directories are opened as in [`publish`], so a symlinked `.well-known`
/// or `acme-challenge` makes this an error rather than a removal elsewhere.
fn remove(webroot: &Path, token: &str) -> Result<bool, FileError> {
    files::remove_below(webroot, &challenge_dir(webroot).join(token))
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
            } => publish(w, &token, key_authorization.expose())
                .map(|()| true)
                .map_err(|e| format!("cannot publish the challenge: {e}")),
            AgentCommand::RemoveChallenge { .. } => {
                remove(w, &token).map_err(|e| format!("cannot remove the challenge: {e}"))
            }
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
    use std::os::unix::fs::PermissionsExt;

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

    fn publish_cmd(token: &str) -> AgentCommand {
        AgentCommand::PublishChallenge {
            domain: "www.example.test".into(),
            token: token.into(),
            key_authorization: certfleet_protocol::Secret::new(b"evil-write".to_vec()),
        }
    }

    fn remove_cmd(token: &str) -> AgentCommand {
        AgentCommand::RemoveChallenge {
            domain: "www.example.test".into(),
            token: token.into(),
        }
    }

    /// Every file below `dir` with its contents.
    fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                    todo.push(p);
                } else {
                    out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
                }
            }
        }
        out.sort();
        out
    }

    /// A symlink planted at `.well-known` or at `acme-challenge` (pointing
    /// at a directory that holds a file named like the token) redirects
    /// neither a publish nor a removal, and the error names the link.
    #[tokio::test]
    async fn symlinked_challenge_dirs_are_neither_written_nor_removed_through() {
        for link_at in [".well-known", ".well-known/acme-challenge"] {
            let webroot = tempfile::tempdir().unwrap();
            let elsewhere = tempfile::tempdir().unwrap();
            // The target of the link looks like a challenge directory
            // holding the token already (what a removal would delete).
            let victim_dir = if link_at == ".well-known" {
                elsewhere.path().join("acme-challenge")
            } else {
                elsewhere.path().to_path_buf()
            };
            std::fs::create_dir_all(&victim_dir).unwrap();
            std::fs::write(victim_dir.join("tok"), b"precious").unwrap();
            std::fs::create_dir_all(webroot.path().join(".well-known")).unwrap();
            if link_at == ".well-known" {
                std::fs::remove_dir(webroot.path().join(".well-known")).unwrap();
            }
            let link = webroot.path().join(link_at);
            std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();
            let before = tree(elsewhere.path());
            let c = config(webroot.path());

            for command in [publish_cmd("tok"), publish_cmd("fresh"), remove_cmd("tok")] {
                let r = handle(&c, command).await;
                assert_eq!(r.files, 0, "{link_at}");
                let err = r.error.expect("refused");
                assert!(
                    err.contains("symbolic link") && err.contains(&link.display().to_string()),
                    "{link_at}: {err}"
                );
                assert_eq!(
                    tree(elsewhere.path()),
                    before,
                    "{link_at}: nothing changed there"
                );
            }
            // And nothing was created beside the link either.
            assert_eq!(tree(webroot.path()), vec![(link, Vec::new())], "{link_at}");
        }
    }

    /// A symlink at the token's own name is replaced by the file, never
    /// written through, and a removal removes the link, not its target.
    #[tokio::test]
    async fn symlink_at_the_token_name_is_not_followed() {
        let webroot = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let victim = elsewhere.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let dir = webroot.path().join(".well-known/acme-challenge");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("tok")).unwrap();
        let c = config(webroot.path());
        let r = handle(&c, publish_cmd("tok")).await;
        assert!(
            r.error
                .as_deref()
                .is_some_and(|e| e.contains("symbolic link")),
            "{r:?}"
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let r = handle(&c, remove_cmd("tok")).await;
        assert_eq!((r.files, r.error), (1, None));
        assert!(
            std::fs::symlink_metadata(dir.join("tok")).is_err(),
            "link removed"
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[tokio::test]
    async fn removing_what_is_not_there_is_not_an_error() {
        let webroot = tempfile::tempdir().unwrap();
        let r = handle(&config(webroot.path()), remove_cmd("tok")).await;
        assert_eq!((r.files, r.error), (0, None));
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
