//! Checks every certificate must pass before it is stored.
//!
//! Whatever a CA returns — the built-in one included — is verified as if it
//! came from a stranger: it parses, its public key is the one we hold the
//! private key for, its SANs are exactly the names applied for, its chain
//! verifies to the issuer's root for serverAuth, and its validity is sane.

use std::collections::BTreeSet;

use certfleet_protocol::name::SubjectName;
use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("certificate does not parse")]
    Parse,
    #[error("certificate's public key does not match the private key")]
    KeyMismatch,
    #[error("certificate names {got:?} differ from the requested {want:?}")]
    NamesDiffer { got: Vec<String>, want: Vec<String> },
    #[error("certificate chain does not verify to the issuer's root: {0}")]
    Chain(String),
    #[error("certificate validity {not_before}..{not_after} is not sane at {now}")]
    Validity {
        not_before: i64,
        not_after: i64,
        now: i64,
    },
}

/// Facts about a certificate that passed the checks.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Upper-case hex, no separators.
    pub serial: String,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// SHA-256 fingerprint of a DER certificate, lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

/// The DNS and IP names in a certificate's SAN extension.
pub fn san_names(x: &x509_parser::certificate::X509Certificate<'_>) -> Vec<SubjectName> {
    let mut out = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => out.push(SubjectName::Dns(d.to_ascii_lowercase())),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        out.push(SubjectName::Ip(a.into()));
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        out.push(SubjectName::Ip(a.into()));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// Check a leaf and its chain before storing them.
pub fn check_issued(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    root: &CertificateDer<'_>,
    key: &KeyPair,
    requested: &[SubjectName],
    now: i64,
) -> Result<Checked, CheckError> {
    let (_, x) = x509_parser::parse_x509_certificate(leaf).map_err(|_| CheckError::Parse)?;

    if x.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
        return Err(CheckError::KeyMismatch);
    }

    let got: BTreeSet<SubjectName> = san_names(&x).into_iter().collect();
    let want: BTreeSet<SubjectName> = requested.iter().cloned().collect();
    if got != want {
        return Err(CheckError::NamesDiffer {
            got: got.iter().map(ToString::to_string).collect(),
            want: want.iter().map(ToString::to_string).collect(),
        });
    }

    let not_before = x.validity().not_before.timestamp();
    let not_after = x.validity().not_after.timestamp();
    // Allow the CA's clock to run up to an hour ahead of ours.
    if not_after <= now || not_before > now + 3600 || not_after <= not_before {
        return Err(CheckError::Validity {
            not_before,
            not_after,
            now,
        });
    }

    let anchor =
        webpki::anchor_from_trusted_cert(root).map_err(|e| CheckError::Chain(e.to_string()))?;
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| CheckError::Chain(e.to_string()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0) as u64));
    ee.verify_for_usage(
        provider.signature_verification_algorithms.all,
        &[anchor],
        intermediates,
        at,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| CheckError::Chain(e.to_string()))?;

    Ok(Checked {
        serial: hex::encode_upper(x.tbs_certificate.raw_serial()),
        fingerprint: fingerprint(leaf),
        not_before,
        not_after,
    })
}
