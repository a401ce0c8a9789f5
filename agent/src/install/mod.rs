//! The install pipeline of DESIGN.md §8, for one desired certificate on one
//! target:
//!
//! 1. validate the bundle (parses, key matches, chain verifies, SANs cover
//!    the target, currently valid); run the `pre_install` hook;
//! 2. stage and swap the files in with a journal (`files`), so the live set
//!    is always the whole old or the whole new one;
//! 3. test the server's config; on failure put the old files back;
//! 4. reload (or HAProxy's runtime API); 5. verify the served leaf over TLS
//!    for each SNI name, then run the `post_install` hook;
//! 6. on failure at 4 or 5, restore, reload, check the old certificate is
//!    served again and report `rolled_back`;
//! 7. report `installed` with the served fingerprint.
//!
//! Only paths and commands from the agent's own config are used.

pub mod command;
pub mod files;
pub mod haproxy;
pub mod hooks;
pub mod pkcs12;
pub mod verify;

use std::time::{Duration, Instant};

use certfleet_protocol::message::{CertBundle, DeploymentStatus, DesiredInstall, InstallReport};
use certfleet_protocol::name::{self, SubjectName};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::config::{Config, Reload, Target};
use files::FileSpec;

/// A bundle that passed validation.
#[derive(Debug, Clone)]
pub struct Validated {
    pub fingerprint: String,
    pub not_after: i64,
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate PEM is malformed: {e}"))
}

/// Step 1: check a bundle before any file is touched.
pub fn validate(bundle: &CertBundle, target: &Target, now: i64) -> Result<Validated, String> {
    let leaf = certs(&bundle.leaf_pem)?
        .into_iter()
        .next()
        .ok_or("bundle has no leaf certificate")?;
    let mut chain = certs(&bundle.chain_pem)?;
    // A public CA's bundle carries no root: the chain must then verify to
    // its own last certificate (the CA the issuer named as the top).
    let root = match certs(&bundle.root_pem)?.into_iter().next() {
        Some(root) => root,
        None => chain
            .pop()
            .ok_or("bundle has neither a root nor an issuing chain")?,
    };
    let (_, x) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|_| "leaf certificate does not parse".to_string())?;

    let key_pem = bundle
        .key
        .expose_str()
        .ok_or("private key is not PEM text")?;
    let key = rcgen::KeyPair::from_pem(key_pem)
        .map_err(|e| format!("private key does not parse: {e}"))?;
    use rcgen::PublicKeyData;
    if key.subject_public_key_info() != x.tbs_certificate.subject_pki.raw {
        return Err("private key does not match the certificate".into());
    }

    let mut have = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    have.push(SubjectName::Dns(d.to_ascii_lowercase()))
                }
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        have.push(SubjectName::Ip(a.into()));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        have.push(SubjectName::Ip(a.into()));
                    }
                }
                _ => {}
            }
        }
    }
    for d in &target.domains {
        let want = name::parse(d).map_err(|e| e.to_string())?;
        if !have.iter().any(|h| h.covers(&want)) {
            return Err(format!(
                "certificate does not cover {d}, which target {} serves (it covers {})",
                target.name,
                have.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }

    let not_before = x.validity().not_before.timestamp();
    let not_after = x.validity().not_after.timestamp();
    if now >= not_after {
        return Err(format!(
            "certificate expired at {}",
            certfleet_protocol::message::Timestamp(not_after)
        ));
    }
    if now < not_before {
        return Err(format!(
            "certificate is not valid until {}; check this host's clock",
            certfleet_protocol::message::Timestamp(not_before)
        ));
    }

    let anchor = webpki::anchor_from_trusted_cert(&root).map_err(|e| format!("root: {e}"))?;
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| format!("leaf: {e}"))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    ee.verify_for_usage(
        provider.signature_verification_algorithms.all,
        &[anchor],
        &chain,
        UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64)),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| format!("certificate chain does not verify: {e}"))?;

    Ok(Validated {
        fingerprint: verify::fingerprint(&leaf),
        not_after,
    })
}

/// Fingerprint of the first certificate in a live file, if readable.
fn live_fingerprint(target: &Target) -> Option<String> {
    if let Some(p12) = &target.pkcs12 {
        return pkcs12::live_fingerprint(p12);
    }
    let path = target
        .fullchain
        .as_ref()
        .or(target.cert.as_ref())
        .or(target.combined.as_ref())?;
    let bytes = std::fs::read(path).ok()?;
    let der = CertificateDer::pem_slice_iter(&bytes).next()?.ok()?;
    Some(verify::fingerprint(&der))
}

fn file_specs(target: &Target, bundle: &CertBundle) -> Result<Vec<FileSpec>, String> {
    let (uid, gid) = files::resolve_owner(target.owner.as_deref(), target.group.as_deref())
        .map_err(|e| e.to_string())?;
    let key_pem = bundle
        .key
        .expose_str()
        .ok_or("private key is not PEM text")?;
    let spec = |live: &std::path::Path, contents: &[u8], mode: u32| FileSpec {
        live: live.to_path_buf(),
        contents: Zeroizing::new(contents.to_vec()),
        mode,
        uid,
        gid,
    };
    if let Some(p) = &target.combined {
        let pem = haproxy::combined_pem(bundle)?;
        return Ok(vec![spec(p, pem.as_bytes(), target.key_mode)]);
    }
    if let Some(p12) = &target.pkcs12 {
        let password = pkcs12::read_password(&p12.password_file)?;
        let store = pkcs12::keystore(p12, bundle, &password)?;
        return Ok(vec![spec(&p12.keystore, &store, target.key_mode)]);
    }
    let key = target
        .key
        .as_ref()
        .ok_or("target has no key path (the config check requires one)")?;
    // Key first: a crash after it is recovered from the journal anyway.
    let mut out = vec![spec(key, key_pem.as_bytes(), target.key_mode)];
    if let Some(p) = &target.fullchain {
        let full = format!("{}{}", bundle.leaf_pem, bundle.chain_pem);
        out.push(spec(p, full.as_bytes(), 0o644));
    }
    if let Some(p) = &target.cert {
        out.push(spec(p, bundle.leaf_pem.as_bytes(), 0o644));
    }
    if let Some(p) = &target.chain {
        out.push(spec(p, bundle.chain_pem.as_bytes(), 0o644));
    }
    Ok(out)
}

async fn run_step(what: &str, argv: &[String], timeout: Duration) -> Result<(), String> {
    match command::run(argv, timeout).await {
        Ok(o) if o.success => Ok(()),
        Ok(o) => Err(format!(
            "{what} `{}` failed ({}):\n{}",
            argv.join(" "),
            o.status,
            o.output
        )),
        Err(e) => Err(format!("{what} `{}` could not run: {e}", argv.join(" "))),
    }
}

/// Step 4: reload the server the way the target's config says.
pub async fn reload(target: &Target) -> Result<(), String> {
    reload_or_unchanged(target).await.map_err(|(e, _)| e)
}

/// [`reload`], whose error also says whether the server is known to be
/// unchanged (only a refused or aborted HAProxy runtime update without a
/// fallback is: nothing else can tell).
async fn reload_or_unchanged(target: &Target) -> Result<(), (String, bool)> {
    match &target.reload {
        Reload::HaproxyRuntime {
            socket,
            cert,
            fallback,
        } => match haproxy::runtime_update(socket, cert, target.command_timeout).await {
            Ok(()) => Ok(()),
            Err(e) => match fallback {
                Some(f) => {
                    warn!(target = %target.name, error = %e.message, "runtime API update failed; reloading instead");
                    plain_reload(f, target).await.map_err(|r| {
                        (
                            format!("{}\nthe fallback reload failed too: {r}", e.message),
                            false,
                        )
                    })
                }
                None => Err((
                    format!(
                        "{}\n(runtime_fallback = \"fail\": no reload was tried)",
                        e.message
                    ),
                    e.unchanged,
                )),
            },
        },
        other => plain_reload(other, target).await.map_err(|e| (e, false)),
    }
}

/// A reload by signal or command.
async fn plain_reload(how: &Reload, target: &Target) -> Result<(), String> {
    match how {
        Reload::None => Ok(()),
        Reload::HaproxyRuntime { .. } => Err("a runtime API update cannot be a fallback".into()),
        Reload::Command(argv) => run_step("reload", argv, target.command_timeout).await,
        Reload::Signal(pid_file, signal) => {
            let text = std::fs::read_to_string(pid_file)
                .map_err(|e| format!("cannot read pid file {}: {e}", pid_file.display()))?;
            let pid: i32 = text.trim().parse().ok().filter(|p| *p > 1).ok_or_else(|| {
                format!(
                    "pid file {} holds {:?}, not a pid",
                    pid_file.display(),
                    text.trim()
                )
            })?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), *signal).map_err(|e| {
                format!(
                    "cannot send {signal} to pid {pid} from {}: {e}",
                    pid_file.display()
                )
            })
        }
    }
}

/// Step 5: wait until every SNI name is served with `fingerprint`.
pub async fn verify_served(target: &Target, fingerprint: &str) -> Result<Option<String>, String> {
    let Some(addr) = target.verify else {
        return Ok(None);
    };
    let names: Vec<String> = if target.sni.is_empty() {
        vec![String::new()]
    } else {
        target.sni.clone()
    };
    let deadline = Instant::now() + target.verify_timeout;
    let mut delay = Duration::from_millis(25);
    for sni in names {
        loop {
            let s = sni.clone();
            let seen = tokio::task::spawn_blocking(move || {
                verify::served_fingerprint(addr, &s, Duration::from_secs(2))
            })
            .await
            .map_err(|e| e.to_string())?;
            match seen {
                Ok(fp) if fp == fingerprint => break,
                other => {
                    if Instant::now() >= deadline {
                        let seen = match other {
                            Ok(fp) => format!("it serves {fp}"),
                            Err(e) => e,
                        };
                        return Err(format!(
                            "{addr} (SNI {sni:?}) did not serve certificate {fingerprint} within {}: {seen}",
                            humantime::format_duration(target.verify_timeout)
                        ));
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
            }
        }
    }
    Ok(Some(fingerprint.to_string()))
}

fn report(
    d: &DesiredInstall,
    status: DeploymentStatus,
    served: Option<String>,
    error: Option<String>,
    start: Instant,
) -> InstallReport {
    InstallReport {
        deployment: d.deployment.clone(),
        certificate: d.certificate.clone(),
        status,
        served_fingerprint: served,
        error,
        duration_ms: start.elapsed().as_millis() as u64,
    }
}

/// Run the whole pipeline for one desired install, with `bundle` (the
/// desired install's bundle, which the caller checked is there). Never
/// panics on bad input; every failure becomes a report.
pub async fn install(
    config: &Config,
    target: &Target,
    d: &DesiredInstall,
    bundle: &CertBundle,
    now: i64,
) -> InstallReport {
    let start = Instant::now();
    // 1. validate
    let valid = match validate(bundle, target, now) {
        Ok(v) if v.fingerprint == d.fingerprint => v,
        Ok(v) => {
            return report(
                d,
                DeploymentStatus::Failed,
                None,
                Some(format!(
                    "bundle leaf {} is not the deployed certificate {}",
                    v.fingerprint, d.fingerprint
                )),
                start,
            )
        }
        Err(e) => return report(d, DeploymentStatus::Failed, None, Some(e), start),
    };
    // The files' contents first (a keystore reads its password file and
    // runs PBKDF2: off the async threads), so that a failure there comes
    // before the pre_install hook has done anything.
    let specs = {
        let target = target.clone();
        let bundle = bundle.clone();
        match tokio::task::spawn_blocking(move || file_specs(&target, &bundle)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return report(d, DeploymentStatus::Failed, None, Some(e), start),
            Err(e) => {
                return report(
                    d,
                    DeploymentStatus::Failed,
                    None,
                    Some(format!("preparing the files failed: {e}")),
                    start,
                )
            }
        }
    };
    if let Some(argv) = &target.hooks.pre_install {
        if let Err(e) = hooks::run("pre_install", argv, target, d).await {
            warn!(target = %target.name, error = %e, "pre_install hook failed; nothing was changed");
            return report(d, DeploymentStatus::Failed, None, Some(e), start);
        }
    }
    let old_fingerprint = live_fingerprint(target);

    // 2. stage and swap
    let journal = config.state_dir.join("journal");
    let allowed = config.allowed_dirs.clone();
    let name = target.name.clone();
    let swapped =
        tokio::task::spawn_blocking(move || files::swap_in(&journal, &name, specs, &allowed)).await;
    let mut swap = match swapped {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return report(
                d,
                DeploymentStatus::Failed,
                None,
                Some(e.to_string()),
                start,
            )
        }
        Err(e) => {
            return report(
                d,
                DeploymentStatus::Failed,
                None,
                Some(e.to_string()),
                start,
            )
        }
    };

    // 3. config test (test builds: `install.swapped` fails it, the new
    // files being in place and the server not yet reloaded)
    let tested = match crate::failpoints::check("install.swapped") {
        Some(e) => Err(e),
        None => match &target.test_command {
            Some(argv) => run_step("config test", argv, target.command_timeout).await,
            None => Ok(()),
        },
    };
    if let Err(e) = tested {
        warn!(target = %target.name, error = %e, "config test failed; restoring previous files");
        let restored = tokio::task::spawn_blocking(move || swap.restore()).await;
        let note = match restored {
            Ok(Ok(())) => String::new(),
            Ok(Err(e)) => format!("\nrestoring the previous files also failed: {e}"),
            Err(e) => format!("\nrestoring the previous files also failed: {e}"),
        };
        return report(
            d,
            DeploymentStatus::RolledBack,
            None,
            Some(format!("{e}{note}")),
            start,
        );
    }

    // 4. reload and 5. verify
    // A refused or aborted runtime API update without fallback changed
    // nothing in the server, so a rollback needs no second update; any
    // other failed reload leaves the server unknown.
    let mut server_untouched = false;
    let reloaded = match crate::failpoints::check("install.before_reload") {
        Some(e) => Err((e, true)),
        None => reload_or_unchanged(target).await,
    };
    let outcome = match reloaded {
        Ok(()) => {
            if let Err(e) = swap.mark_reloaded() {
                warn!(error = %e, "could not update install journal");
            }
            match crate::failpoints::check("install.before_verify") {
                Some(e) => Err(e),
                None => verify_served(target, &valid.fingerprint).await,
            }
        }
        Err((e, unchanged)) => {
            server_untouched = unchanged;
            Err(e)
        }
    };
    let outcome = match (outcome, &target.hooks.post_install) {
        (Ok(served), Some(argv)) => hooks::run("post_install", argv, target, d)
            .await
            .map(|()| served),
        (outcome, _) => outcome,
    };
    match outcome {
        Ok(served) => {
            if let Err(e) = tokio::task::spawn_blocking(move || swap.commit())
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
            {
                warn!(error = %e, "could not clean up backups");
            }
            info!(target = %target.name, certificate = %d.certificate, "installed");
            report(d, DeploymentStatus::Installed, served, None, start)
        }
        Err(e) => {
            // 6. roll back: old files, reload, and check the old one is served.
            warn!(target = %target.name, error = %e, "install failed after reload; rolling back");
            let mut note = String::new();
            match tokio::task::spawn_blocking(move || swap.restore()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => note.push_str(&format!("\nrestoring the previous files failed: {e}")),
                Err(e) => note.push_str(&format!("\nrestoring the previous files failed: {e}")),
            }
            if server_untouched {
                note.push_str("\nthe server was not changed and serves the previous certificate");
            } else if let Err(e) = reload(target).await {
                note.push_str(&format!("\nreload after restoring failed: {e}"));
            } else if let Some(old) = &old_fingerprint {
                match verify_served(target, old).await {
                    Ok(_) => note.push_str("\nthe previous certificate is served again"),
                    Err(e) => {
                        note.push_str(&format!("\nthe previous certificate is NOT served: {e}"))
                    }
                }
            }
            report(
                d,
                DeploymentStatus::RolledBack,
                None,
                Some(format!("{e}{note}")),
                start,
            )
        }
    }
}

/// One quick look: does the target's verify address serve `fingerprint`
/// for every SNI name right now?
pub async fn verify_once(target: &Target, fingerprint: &str) -> bool {
    let Some(addr) = target.verify else {
        return false;
    };
    let names: Vec<String> = if target.sni.is_empty() {
        vec![String::new()]
    } else {
        target.sni.clone()
    };
    for sni in names {
        let want = fingerprint.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            verify::served_fingerprint(addr, &sni, Duration::from_secs(2))
                .is_ok_and(|fp| fp == want)
        })
        .await
        .unwrap_or(false);
        if !ok {
            return false;
        }
    }
    true
}

/// Whether a target's live files already hold `fingerprint`.
pub fn already_installed(target: &Target, fingerprint: &str) -> bool {
    live_fingerprint(target).as_deref() == Some(fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_protocol::Secret;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    use time::{Duration as TimeDuration, OffsetDateTime};

    struct Ca {
        root_pem: String,
        params: CertificateParams,
        key: KeyPair,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "test root");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let root = params.self_signed(&key).unwrap();
        Ca {
            root_pem: root.pem(),
            params,
            key,
        }
    }

    fn bundle(ca: &Ca, names: &[&str], days: (i64, i64), key: &KeyPair) -> CertBundle {
        let now = OffsetDateTime::now_utc();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = now + TimeDuration::days(days.0);
        params.not_after = now + TimeDuration::days(days.1);
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        let leaf = params.signed_by(key, &issuer).unwrap();
        CertBundle {
            id: "cert-1".into(),
            leaf_pem: leaf.pem(),
            chain_pem: String::new(),
            root_pem: ca.root_pem.clone(),
            key: Secret::from(key.serialize_pem()),
        }
    }

    fn target(domains: &[&str]) -> Target {
        let toml = format!(
            "allowed_dirs = [\"/etc/tls\"]\n[[target]]\nname = \"t\"\nkind = \"files\"\n\
             domains = [{}]\nfullchain = \"/etc/tls/f.pem\"\nkey = \"/etc/tls/k.pem\"\n",
            domains
                .iter()
                .map(|d| format!("{d:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Config::parse(std::path::Path::new("t.toml"), &toml)
            .unwrap()
            .targets
            .remove(0)
    }

    fn now() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }

    #[test]
    fn good_bundle_passes() {
        let ca = ca();
        let key = KeyPair::generate().unwrap();
        let b = bundle(&ca, &["*.example.test", "example.test"], (-1, 30), &key);
        let v = validate(&b, &target(&["www.example.test", "example.test"]), now()).unwrap();
        assert_eq!(v.fingerprint.len(), 64);
    }

    #[test]
    fn key_that_does_not_match_is_refused() {
        let ca = ca();
        let key = KeyPair::generate().unwrap();
        let mut b = bundle(&ca, &["a.test"], (-1, 30), &key);
        b.key = Secret::from(KeyPair::generate().unwrap().serialize_pem());
        let e = validate(&b, &target(&["a.test"]), now()).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
    }

    #[test]
    fn names_that_do_not_cover_the_target_are_refused() {
        let ca = ca();
        let key = KeyPair::generate().unwrap();
        let b = bundle(&ca, &["*.example.test"], (-1, 30), &key);
        let e = validate(&b, &target(&["a.b.example.test"]), now()).unwrap_err();
        assert!(e.contains("does not cover a.b.example.test"), "{e}");
    }

    #[test]
    fn expired_and_future_certificates_are_refused() {
        let ca = ca();
        let key = KeyPair::generate().unwrap();
        let expired = bundle(&ca, &["a.test"], (-30, -1), &key);
        assert!(validate(&expired, &target(&["a.test"]), now())
            .unwrap_err()
            .contains("expired"));
        let future = bundle(&ca, &["a.test"], (2, 30), &key);
        assert!(validate(&future, &target(&["a.test"]), now())
            .unwrap_err()
            .contains("not valid until"));
    }

    #[test]
    fn chain_to_another_root_is_refused() {
        let ca1 = ca();
        let ca2 = ca();
        let key = KeyPair::generate().unwrap();
        let mut b = bundle(&ca1, &["a.test"], (-1, 30), &key);
        b.root_pem = ca2.root_pem.clone();
        assert!(validate(&b, &target(&["a.test"]), now())
            .unwrap_err()
            .contains("chain"));
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        let ca = ca();
        let key = KeyPair::generate().unwrap();
        let mut b = bundle(&ca, &["a.test"], (-1, 30), &key);
        b.leaf_pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into();
        assert!(validate(&b, &target(&[]), now()).is_err());
        b.leaf_pem = String::new();
        assert!(validate(&b, &target(&[]), now()).is_err());
        let mut b = bundle(&ca, &["a.test"], (-1, 30), &key);
        b.key = Secret::new(vec![0xff, 0xfe]);
        assert!(validate(&b, &target(&[]), now()).is_err());
    }
}
