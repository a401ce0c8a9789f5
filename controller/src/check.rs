//! Checks every certificate must pass before it is stored.
//!
//! Whatever a CA returns — the built-in one included — is verified as if it
//! came from a stranger: it parses, its public key is the one we hold the
//! private key for, its SANs are exactly the names applied for, its chain
//! verifies to the issuer's root for serverAuth, and its validity is sane.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use certfleet_protocol::name::SubjectName;
use rcgen::PublicKeyData;
use rustls_pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, SignatureVerificationAlgorithm, UnixTime,
};
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

pub use certfleet_protocol::cert::fingerprint;

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
    key: &impl PublicKeyData,
    requested: &[SubjectName],
    now: i64,
) -> Result<Checked, CheckError> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    check_with(
        leaf,
        intermediates,
        root,
        key,
        requested,
        now,
        provider.signature_verification_algorithms.all,
    )
}

/// [`check_issued`] for one of many leaves signed by the same CA: `memo`
/// remembers the signatures that verified, so the part of the chain the
/// leaves share (the issuing CA's certificate, signed by the root) is
/// verified once per batch instead of once per leaf. Every leaf's own
/// signature and every other check still run for each leaf.
pub fn check_issued_memo(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    root: &CertificateDer<'_>,
    key: &impl PublicKeyData,
    requested: &[SubjectName],
    now: i64,
    memo: &VerifyMemo,
) -> Result<Checked, CheckError> {
    let algs: Vec<&dyn SignatureVerificationAlgorithm> = memo
        .algs
        .iter()
        .map(|a| a as &dyn SignatureVerificationAlgorithm)
        .collect();
    check_with(leaf, intermediates, root, key, requested, now, &algs)
}

/// The provider's signature verification algorithms, each remembering the
/// exact (public key, message, signature) triples it has accepted. A
/// signature that verified once verifies again — ECDSA, RSA and EdDSA
/// verification is a pure function of those bytes — so answering from the
/// memo gives the answer a fresh verification would. Refusals are never
/// remembered. Meant to live for one batch of checks, not forever.
pub struct VerifyMemo {
    algs: Vec<MemoAlgorithm>,
}

impl Default for VerifyMemo {
    fn default() -> Self {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        VerifyMemo {
            algs: provider
                .signature_verification_algorithms
                .all
                .iter()
                .map(|inner| MemoAlgorithm {
                    inner: *inner,
                    verified: Mutex::default(),
                })
                .collect(),
        }
    }
}

struct MemoAlgorithm {
    inner: &'static dyn SignatureVerificationAlgorithm,
    /// Length-prefixed public key, message and signature of each success.
    verified: Mutex<HashSet<Vec<u8>>>,
}

impl std::fmt::Debug for MemoAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MemoAlgorithm").field(&self.inner).finish()
    }
}

impl SignatureVerificationAlgorithm for MemoAlgorithm {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let mut key = Vec::with_capacity(24 + public_key.len() + message.len() + signature.len());
        for part in [public_key, message, signature] {
            key.extend_from_slice(&(part.len() as u64).to_be_bytes());
            key.extend_from_slice(part);
        }
        let known = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key);
        if known {
            return Ok(());
        }
        self.inner
            .verify_signature(public_key, message, signature)?;
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key);
        Ok(())
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.inner.public_key_alg_id()
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.inner.signature_alg_id()
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }
}

fn check_with(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    root: &CertificateDer<'_>,
    key: &impl PublicKeyData,
    requested: &[SubjectName],
    now: i64,
    algs: &[&dyn SignatureVerificationAlgorithm],
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
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0) as u64));
    ee.verify_for_usage(
        algs,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::pem_to_der;
    use crate::issuer::builtin::{self, BuiltinCa};
    use crate::issuer::generate_key;
    use certfleet_protocol::message::KeyType;
    use certfleet_protocol::name::parse;
    use time::{Duration, OffsetDateTime};

    #[test]
    fn memo_accepts_good_leaves_and_still_refuses_a_forged_one() {
        let now = OffsetDateTime::now_utc();
        let new = builtin::create("memo", KeyType::EcdsaP256, now).unwrap();
        let ca = BuiltinCa::load(KeyType::EcdsaP256, &new.ca_pem, &new.ca_key_pkcs8).unwrap();
        let chain = [pem_to_der(&new.ca_pem).unwrap()];
        let root = pem_to_der(&new.root_pem).unwrap();
        let names = vec![parse("memo.example.test").unwrap()];
        let memo = VerifyMemo::default();
        for _ in 0..3 {
            let key = generate_key(KeyType::EcdsaP256).unwrap();
            let leaf = ca
                .issue(&names, &key, Duration::days(1), "http://x/", now)
                .unwrap();
            let at = now.unix_timestamp();
            check_issued_memo(&leaf.der, &chain, &root, &key, &names, at, &memo).unwrap();
            // Verified once, the same leaf passes again from the memo ...
            check_issued_memo(&leaf.der, &chain, &root, &key, &names, at, &memo).unwrap();
            // ... but a leaf whose signature was tampered with never does.
            let mut forged = leaf.der.to_vec();
            *forged.last_mut().unwrap() ^= 1;
            let forged = CertificateDer::from(forged);
            let err = check_issued_memo(&forged, &chain, &root, &key, &names, at, &memo);
            assert!(matches!(err, Err(CheckError::Chain(_))), "{err:?}");
        }
        // A leaf of another CA does not chain to this root, memo or not.
        let other = builtin::create("other", KeyType::EcdsaP256, now).unwrap();
        let other_ca =
            BuiltinCa::load(KeyType::EcdsaP256, &other.ca_pem, &other.ca_key_pkcs8).unwrap();
        let key = generate_key(KeyType::EcdsaP256).unwrap();
        let leaf = other_ca
            .issue(&names, &key, Duration::days(1), "http://x/", now)
            .unwrap();
        let err = check_issued_memo(
            &leaf.der,
            &chain,
            &root,
            &key,
            &names,
            now.unix_timestamp(),
            &memo,
        );
        assert!(matches!(err, Err(CheckError::Chain(_))), "{err:?}");
    }
}
