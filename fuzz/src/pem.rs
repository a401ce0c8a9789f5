//! Harnesses for the certificates, keys and CSRs that arrive over the
//! network:
//!
//! - [`csr`]: the CSR of an enrollment, an identity renewal or an admin
//!   credential request, parsed as the controller does
//!   (`rcgen::CertificateSigningRequestParams::from_pem`) and, when it
//!   parses, signed by a real identity CA; the issued certificate must
//!   name the role and subject it was issued for.
//! - [`certificate`]: a certificate bundle as the agent receives it in a
//!   desired install (leaf, chain and root PEM and a key), checked by the
//!   agent's `install::validate` and by the controller's `check_issued` (the
//!   check every CA answer passes), plus the peer-certificate readers of
//!   both sides (`identity::peer_identity`, `transport::spki_pin`). Where
//!   both sides accept a bundle they must agree on its fingerprint and
//!   expiry.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use certfleet_agent::config::{Hooks, Reload, Target, TargetKind};
use certfleet_agent::{install, transport};
use certfleet_controller::identity::{self, IdentityCa, Role};
use certfleet_controller::{check, seal::MasterKey};
use certfleet_protocol::message::CertBundle;
use certfleet_protocol::Secret;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// The time the harnesses judge validity at (2027-01-15); the seed
/// certificates are valid then.
pub const NOW: i64 = 1_800_000_000;

/// The name the seed leaf certificates are for.
pub const DOMAIN: &str = "a.example.test";

/// Separates the parts of a [`certificate`] input.
pub const SEPARATOR: u8 = 0;

/// A real identity CA, made once per process (its master key lives in a
/// temporary directory kept for the life of the process).
fn identity_ca() -> &'static IdentityCa {
    static CA: OnceLock<(tempfile::TempDir, IdentityCa)> = OnceLock::new();
    &CA.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let master = MasterKey::create(&dir.path().join("master.key")).expect("master key");
        let now = time::OffsetDateTime::from_unix_timestamp(NOW).unwrap();
        let (ca, _) = IdentityCa::create(&master, now).expect("identity CA");
        (dir, ca)
    })
    .1
}

/// A CSR from a peer: refused with an error, or signed into a certificate
/// that asserts exactly the role and subject it was issued for.
pub fn csr(data: &[u8]) {
    let Ok(pem) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(csr) = rcgen::CertificateSigningRequestParams::from_pem(pem) else {
        return;
    };
    let now = time::OffsetDateTime::from_unix_timestamp(NOW).unwrap();
    let ca = identity_ca();
    let Ok(issued) = ca.issue_client(
        Role::Agent,
        "agent-fuzz",
        &csr.public_key,
        now,
        time::Duration::days(30),
    ) else {
        return;
    };
    let der = identity::pem_to_der(&issued.cert_pem).expect("issued certificate is PEM");
    let peer = identity::peer_identity(&der).expect("issued certificate names its peer");
    assert_eq!(
        (peer.role, peer.subject.as_str()),
        (Role::Agent, "agent-fuzz")
    );
    assert_eq!(peer.serial, issued.serial);
}

/// The target a bundle is validated for.
pub fn target() -> Target {
    Target {
        name: "web".into(),
        kind: TargetKind::Nginx,
        domains: vec![DOMAIN.into()],
        fullchain: Some(PathBuf::from("/etc/ssl/web.pem")),
        cert: None,
        chain: None,
        key: Some(PathBuf::from("/etc/ssl/web.key")),
        combined: None,
        pkcs12: None,
        owner: None,
        group: None,
        key_mode: 0o600,
        verify: None,
        sni: Vec::new(),
        verify_timeout: Duration::from_secs(5),
        test_command: None,
        reload: Reload::None,
        command_timeout: Duration::from_secs(5),
        webroot: None,
        hooks: Hooks {
            pre_install: None,
            post_install: None,
            timeout: Duration::from_secs(5),
        },
    }
}

fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map_while(Result::ok)
        .collect()
}

/// Leaf, chain and root PEM and a private key, separated by [`SEPARATOR`];
/// an input without a PEM header is also read as one DER certificate.
pub fn certificate(data: &[u8]) {
    let parts: Vec<&[u8]> = data.splitn(4, |b| *b == SEPARATOR).collect();
    let part = |i: usize| parts.get(i).copied().unwrap_or_default();
    let text = |i: usize| String::from_utf8_lossy(part(i)).into_owned();
    let bundle = CertBundle {
        id: "cert-fuzz".into(),
        leaf_pem: text(0),
        chain_pem: text(1),
        root_pem: text(2),
        key: Secret::new(part(3).to_vec()),
    };
    let agent = install::validate(&bundle, &target(), NOW);

    let leaf = pem_certs(&bundle.leaf_pem).into_iter().next();
    let chain = pem_certs(&bundle.chain_pem);
    let root = pem_certs(&bundle.root_pem).into_iter().next();
    let mut all: Vec<CertificateDer<'_>> =
        leaf.iter().chain(&chain).chain(&root).cloned().collect();
    if !data.windows(5).any(|w| w == b"-----") {
        all.push(CertificateDer::from(data));
    }
    for der in &all {
        let _ = identity::peer_identity(der);
        let _ = transport::spki_pin(der);
        if let Ok((_, x)) = x509_parser::parse_x509_certificate(der) {
            let _ = check::san_names(&x);
        }
    }

    let controller = match (
        &leaf,
        &root,
        bundle.key.expose_str().map(rcgen::KeyPair::from_pem),
    ) {
        (Some(leaf), Some(root), Some(Ok(key))) => {
            let names = match x509_parser::parse_x509_certificate(leaf) {
                Ok((_, x)) => check::san_names(&x),
                Err(_) => Vec::new(),
            };
            Some(check::check_issued(leaf, &chain, root, &key, &names, NOW))
        }
        _ => None,
    };
    if let (Ok(a), Some(Ok(c))) = (&agent, &controller) {
        assert_eq!(a.fingerprint, c.fingerprint);
        assert_eq!(a.not_after, c.not_after);
        assert_eq!(
            Some(&c.fingerprint),
            leaf.as_deref().map(check::fingerprint).as_ref()
        );
    }
}
