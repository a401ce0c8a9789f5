//! `pre_install` / `post_install` hooks: commands from the target's own
//! config (argv, no shell), run with `hook_timeout` in a process group that
//! is killed when it runs over, their output capped into the report.
//!
//! A hook learns what is being installed from environment variables (set
//! only for the files the target has):
//!
//! | variable | value |
//! |---|---|
//! | `CERTFLEET_HOOK` | `pre_install` or `post_install` |
//! | `CERTFLEET_TARGET` | the target's name |
//! | `CERTFLEET_CERTIFICATE_ID` | the certificate being installed |
//! | `CERTFLEET_FINGERPRINT` | its SHA-256 fingerprint (hex) |
//! | `CERTFLEET_DOMAINS` | the target's `domains`, comma-separated |
//! | `CERTFLEET_CERT_PATH`, `CERTFLEET_CHAIN_PATH`, `CERTFLEET_FULLCHAIN_PATH`, `CERTFLEET_KEY_PATH`, `CERTFLEET_COMBINED_PATH`, `CERTFLEET_KEYSTORE_PATH` | the target's file paths |

use std::path::Path;

use certfleet_protocol::message::DesiredInstall;
use tracing::info;

use super::command;
use crate::config::Target;

/// The environment a hook sees.
pub fn environment(hook: &str, target: &Target, d: &DesiredInstall) -> Vec<(String, String)> {
    let mut env = vec![
        ("CERTFLEET_HOOK".to_string(), hook.to_string()),
        ("CERTFLEET_TARGET".into(), target.name.clone()),
        ("CERTFLEET_FINGERPRINT".into(), d.fingerprint.clone()),
        ("CERTFLEET_DOMAINS".into(), target.domains.join(",")),
    ];
    // The id comes from the controller: passed on only when it is the
    // plain `cert-<hex>` shape, since scripts may put it in file names.
    if is_plain_id(&d.certificate) {
        env.push(("CERTFLEET_CERTIFICATE_ID".into(), d.certificate.clone()));
    }
    let paths: [(&str, Option<&Path>); 6] = [
        ("CERTFLEET_CERT_PATH", target.cert.as_deref()),
        ("CERTFLEET_CHAIN_PATH", target.chain.as_deref()),
        ("CERTFLEET_FULLCHAIN_PATH", target.fullchain.as_deref()),
        ("CERTFLEET_KEY_PATH", target.key.as_deref()),
        ("CERTFLEET_COMBINED_PATH", target.combined.as_deref()),
        (
            "CERTFLEET_KEYSTORE_PATH",
            target.pkcs12.as_ref().map(|p| p.keystore.as_path()),
        ),
    ];
    for (k, p) in paths {
        if let Some(p) = p {
            env.push((k.to_string(), p.display().to_string()));
        }
    }
    env
}

/// Letters, digits and `-` only, at most 64 characters.
fn is_plain_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Run one hook; the error carries its status and capped output.
pub async fn run(
    hook: &str,
    argv: &[String],
    target: &Target,
    d: &DesiredInstall,
) -> Result<(), String> {
    let env = environment(hook, target, d);
    match command::run_with_env(argv, &env, target.hooks.timeout).await {
        Ok(o) if o.success => {
            info!(target = %target.name, hook, output = %o.output, "hook succeeded");
            Ok(())
        }
        Ok(o) => Err(format!(
            "{hook} hook `{}` failed ({}):\n{}",
            argv.join(" "),
            o.status,
            o.output
        )),
        Err(e) => Err(format!(
            "{hook} hook `{}` could not run: {e}",
            argv.join(" ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::is_plain_id;

    #[test]
    fn only_plain_certificate_ids_reach_hooks() {
        assert!(is_plain_id("cert-5f1c0a9b7d3e2f11"));
        for bad in [
            "",
            "cert-1; rm -rf /",
            "../x",
            "cert-$(id)",
            &"a".repeat(65),
        ] {
            assert!(!is_plain_id(bad), "{bad}");
        }
    }
}
