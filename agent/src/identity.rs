//! The agent's own identity: a key it generates itself, the short-lived
//! certificate the controller's identity CA signs for it, and that CA.
//!
//! The key never leaves the host (the controller only sees a CSR). The
//! certificate is renewed over the mTLS session once two thirds of its
//! lifetime have passed — a pure function of `now`, like every rotation
//! policy here.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

pub const KEY_FILE: &str = "identity.key";
pub const CERT_FILE: &str = "identity.pem";
pub const CA_FILE: &str = "ca.pem";
pub const AGENT_FILE: &str = "agent.json";

/// The agent's credential towards its controller.
pub struct Identity {
    pub agent: String,
    pub cert: CertificateDer<'static>,
    pub ca: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub not_before: i64,
    pub not_after: i64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("agent", &self.agent)
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct AgentFile {
    agent: String,
}

/// Write `bytes` to `path` atomically, with `mode` set at creation.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// A new key and a CSR for it.
pub fn new_key_and_csr(name: &str) -> anyhow::Result<(Zeroizing<String>, String)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, format!("certfleet-agent {name}"));
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((Zeroizing::new(key.serialize_pem()), csr.pem()?))
}

fn cert_validity(cert: &CertificateDer<'_>) -> anyhow::Result<(i64, i64)> {
    let (_, x) = x509_parser::parse_x509_certificate(cert)
        .map_err(|_| anyhow!("identity certificate does not parse"))?;
    Ok((
        x.validity().not_before.timestamp(),
        x.validity().not_after.timestamp(),
    ))
}

impl Identity {
    /// Whether `state_dir` holds an identity.
    pub fn exists(state_dir: &Path) -> bool {
        state_dir.join(CERT_FILE).exists()
    }

    pub fn load(state_dir: &Path) -> anyhow::Result<Identity> {
        let read = |name: &str| {
            std::fs::read(state_dir.join(name)).with_context(|| {
                format!(
                    "cannot read {}; has this agent been enrolled? run `certfleet-agent enroll`",
                    state_dir.join(name).display()
                )
            })
        };
        let agent: AgentFile = serde_json::from_slice(&read(AGENT_FILE)?)
            .with_context(|| format!("{} is corrupt", state_dir.join(AGENT_FILE).display()))?;
        let cert = CertificateDer::from_pem_slice(&read(CERT_FILE)?)
            .map_err(|e| anyhow!("{CERT_FILE}: {e}"))?;
        let ca = CertificateDer::from_pem_slice(&read(CA_FILE)?)
            .map_err(|e| anyhow!("{CA_FILE}: {e}"))?;
        let key_bytes = Zeroizing::new(read(KEY_FILE)?);
        let key =
            PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| anyhow!("{KEY_FILE}: {e}"))?;
        let (not_before, not_after) = cert_validity(&cert)?;
        Ok(Identity {
            agent: agent.agent,
            cert,
            ca,
            key,
            not_before,
            not_after,
        })
    }

    /// Store a new identity (key first, so a cert never points at a
    /// missing key).
    pub fn store(
        state_dir: &Path,
        agent: &str,
        key_pem: &str,
        cert_pem: &str,
        ca_pem: Option<&str>,
    ) -> anyhow::Result<()> {
        write_atomic(&state_dir.join(KEY_FILE), key_pem.as_bytes(), 0o600)?;
        write_atomic(&state_dir.join(CERT_FILE), cert_pem.as_bytes(), 0o644)?;
        if let Some(ca) = ca_pem {
            write_atomic(&state_dir.join(CA_FILE), ca.as_bytes(), 0o644)?;
        }
        let agent = serde_json::to_vec_pretty(&AgentFile {
            agent: agent.to_string(),
        })?;
        write_atomic(&state_dir.join(AGENT_FILE), &agent, 0o644)
    }

    /// When the identity should be renewed: two thirds into its lifetime.
    pub fn renew_at(&self) -> i64 {
        renew_at(self.not_before, self.not_after)
    }

    /// At `now`, why this identity can no longer connect and how to fix
    /// it, or `None` while it is valid. `config` is the agent's config file,
    /// named in the command to run.
    pub fn expired(&self, now: i64, config: &Path) -> Option<String> {
        (now >= self.not_after).then(|| expired_message(&self.agent, self.not_after, config))
    }
}

/// The fix for an identity that expired while the agent was offline: it
/// renews itself only over a live connection, which an expired certificate
/// can no longer open.
pub fn expired_message(agent: &str, not_after: i64, config: &Path) -> String {
    format!(
        "identity certificate of agent {agent} expired at {} (it renews itself only while \
         connected, and this host was offline past its expiry); the controller refuses it. \
         To bring this agent back with the same id, labels and deployments, run on the \
         controller `certfleet agent token create --reenroll {agent}`, then here \
         `certfleet-agent enroll --reenroll --token TOKEN --ca-pin PIN --config {}`",
        certfleet_protocol::message::Timestamp(not_after),
        config.display()
    )
}

/// Two thirds of the way from `not_before` to `not_after`.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before) * 2 / 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_two_thirds() {
        assert_eq!(renew_at(0, 30 * 86_400), 20 * 86_400);
        assert_eq!(renew_at(100, 100), 100);
    }

    #[test]
    fn expired_message_names_the_fix() {
        let m = expired_message("agent-1", 0, Path::new("/etc/certfleet/agent.toml"));
        assert!(m.contains("expired at 1970-01-01"), "{m}");
        assert!(
            m.contains("certfleet agent token create --reenroll agent-1"),
            "{m}"
        );
        assert!(m.contains("certfleet-agent enroll --reenroll"), "{m}");
        assert!(m.contains("--config /etc/certfleet/agent.toml"), "{m}");
    }

    #[test]
    fn csr_parses() {
        let (_key, csr) = new_key_and_csr("web-1").unwrap();
        rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
    }
}
