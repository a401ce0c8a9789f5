//! The built-in CA: a root and an intermediate per issuer, made with rcgen.
//!
//! Leaves follow RFC 5280 and the CA/Browser Forum baseline profile: names
//! only in the SAN (empty subject, SAN marked critical), EKU serverAuth,
//! keyUsage by key type, AKI/SKI, a random positive 127-bit serial, and a CRL
//! distribution point pointing at the controller's CRL endpoint. The
//! intermediate signs leaves and CRLs; the root stays offline in the store.

use certfleet_protocol::message::{KeyType, RevocationReason};
use certfleet_protocol::name::SubjectName;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CrlDistributionPoint,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, PublicKeyData, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use super::{generate_key, load_key};
use crate::identity::{pem_to_der, random_serial};

#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    #[error("certificate generation failed")]
    Rcgen(#[from] rcgen::Error),
    #[error("stored CA certificate is unreadable")]
    Corrupt,
    #[error("requested validity ends {requested} but the issuing CA expires {ca_expires}; shorten --validity-days")]
    OutlivesCa {
        requested: OffsetDateTime,
        ca_expires: OffsetDateTime,
    },
}

/// A newly made CA, ready to be sealed and stored.
pub struct NewCa {
    pub root_pem: String,
    pub ca_pem: String,
    pub ca_key_pkcs8: Zeroizing<Vec<u8>>,
}

fn ca_params(cn: String, path_len: u8, now: OffsetDateTime, years: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "certfleet");
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(365 * years);
    params.serial_number = Some(random_serial());
    params.key_identifier_method = KeyIdMethod::Sha256;
    params
}

/// Make a root and an intermediate for issuer `name`.
pub fn create(name: &str, key: KeyType, now: OffsetDateTime) -> Result<NewCa, BuiltinError> {
    let root_key = generate_key(key)?;
    let root_params = ca_params(format!("certfleet {name} Root CA"), 1, now, 20);
    let root = root_params.self_signed(&root_key)?;
    let root_issuer = Issuer::new(root_params, &root_key);

    let ca_key = generate_key(key)?;
    let mut ca_params = ca_params(format!("certfleet {name} Issuing CA"), 0, now, 10);
    ca_params.use_authority_key_identifier_extension = true;
    let ca = ca_params.signed_by(&ca_key, &root_issuer)?;
    // The root key is dropped here: certfleet never needs it again.
    Ok(NewCa {
        root_pem: root.pem(),
        ca_pem: ca.pem(),
        ca_key_pkcs8: Zeroizing::new(ca_key.serialize_der()),
    })
}

/// A leaf certificate signed by the intermediate.
pub struct Leaf {
    pub der: CertificateDer<'static>,
    pub pem: String,
}

/// The loaded intermediate that signs leaves and CRLs.
pub struct BuiltinCa {
    /// The intermediate's certificate, parsed once, with its key.
    issuer: Issuer<'static, KeyPair>,
    ca_not_after: OffsetDateTime,
}

impl BuiltinCa {
    pub fn load(key: KeyType, ca_pem: &str, ca_key_pkcs8: &[u8]) -> Result<Self, BuiltinError> {
        let ca_der = pem_to_der(ca_pem).ok_or(BuiltinError::Corrupt)?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(&ca_der).map_err(|_| BuiltinError::Corrupt)?;
        let ca_not_after = x509.validity().not_after.to_datetime();
        Ok(BuiltinCa {
            issuer: Issuer::from_ca_cert_der(&ca_der, load_key(key, ca_key_pkcs8)?)?,
            ca_not_after,
        })
    }

    /// Sign a leaf for `names` over `public_key`.
    pub fn issue(
        &self,
        names: &[SubjectName],
        public_key: &impl PublicKeyData,
        validity: Duration,
        crl_url: &str,
        now: OffsetDateTime,
    ) -> Result<Leaf, BuiltinError> {
        let not_after = now + validity;
        if not_after > self.ca_not_after {
            return Err(BuiltinError::OutlivesCa {
                requested: not_after,
                ca_expires: self.ca_not_after,
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = names
            .iter()
            .map(|n| match n {
                SubjectName::Dns(d) => Ok(SanType::DnsName(d.clone().try_into()?)),
                SubjectName::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        // ExplicitNoCa writes basicConstraints CA:FALSE and the SKI.
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = match public_key.algorithm() {
            a if a == &rcgen::PKCS_RSA_SHA256 => vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ],
            _ => vec![KeyUsagePurpose::DigitalSignature],
        };
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![crl_url.to_string()],
        }];
        // Backdate slightly so hosts with a little clock skew accept it at once.
        params.not_before = now - Duration::minutes(5);
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(Leaf {
            der: cert.der().clone(),
            pem: cert.pem(),
        })
    }

    /// A CRL listing `revoked` (serial hex, revocation time, reason), valid
    /// for seven days.
    pub fn crl(
        &self,
        revoked: &[(String, i64, RevocationReason)],
        number: i64,
        now: OffsetDateTime,
    ) -> Result<Vec<u8>, BuiltinError> {
        let revoked_certs = revoked
            .iter()
            .map(|(serial, at, reason)| {
                let bytes = hex::decode(serial).map_err(|_| BuiltinError::Corrupt)?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: OffsetDateTime::from_unix_timestamp(*at)
                        .map_err(|_| BuiltinError::Corrupt)?,
                    reason_code: Some(rcgen_reason(*reason)),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, BuiltinError>>()?;
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::days(7),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }
}

fn rcgen_reason(reason: RevocationReason) -> rcgen::RevocationReason {
    match reason {
        RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
        RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
        RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
        RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
        RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_protocol::name::parse;

    fn ca(key: KeyType) -> (NewCa, BuiltinCa) {
        let new = create("test", key, OffsetDateTime::now_utc()).unwrap();
        let ca = BuiltinCa::load(key, &new.ca_pem, &new.ca_key_pkcs8).unwrap();
        (new, ca)
    }

    #[test]
    fn leaf_profile() {
        let (new, ca) = ca(KeyType::EcdsaP256);
        let key = generate_key(KeyType::EcdsaP384).unwrap();
        let names = vec![
            parse("www.example.test").unwrap(),
            parse("10.0.0.1").unwrap(),
        ];
        let leaf = ca
            .issue(
                &names,
                &key,
                Duration::days(90),
                "http://127.0.0.1:1/crl/test.crl",
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        let checked = crate::check::check_issued(
            &leaf.der,
            &[pem_to_der(&new.ca_pem).unwrap()],
            &pem_to_der(&new.root_pem).unwrap(),
            &key,
            &names,
            OffsetDateTime::now_utc().unix_timestamp(),
        )
        .unwrap();
        assert!(checked.serial.len() >= 16, "≥ 64 bits of serial");
        let (_, x) = x509_parser::parse_x509_certificate(&leaf.der).unwrap();
        assert!(x.subject().iter_attributes().next().is_none(), "SAN only");
        let san = x.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical, "SAN critical with an empty subject");
        assert!(x.extended_key_usage().unwrap().unwrap().value.server_auth);
        assert!(x.key_usage().unwrap().unwrap().value.digital_signature());
        assert!(x
            .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
            .unwrap()
            .is_some());
        assert!(x
            .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
            .unwrap()
            .is_some());
        assert!(x
            .get_extension_unique(&x509_parser::oid_registry::OID_X509_EXT_CRL_DISTRIBUTION_POINTS)
            .unwrap()
            .is_some());
        assert!(!x.is_ca());
    }

    #[test]
    fn rsa_ca_and_leaf() {
        let (_, ca) = ca(KeyType::Rsa2048);
        let key = generate_key(KeyType::Rsa2048).unwrap();
        let leaf = ca
            .issue(
                &[parse("rsa.example.test").unwrap()],
                &key,
                Duration::days(1),
                "http://127.0.0.1:1/crl",
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&leaf.der).unwrap();
        assert!(x.key_usage().unwrap().unwrap().value.key_encipherment());
    }

    #[test]
    fn refuses_to_outlive_ca() {
        let (_, ca) = ca(KeyType::EcdsaP256);
        let key = generate_key(KeyType::EcdsaP256).unwrap();
        let err = ca
            .issue(
                &[parse("a.test").unwrap()],
                &key,
                Duration::days(365 * 11),
                "http://x/",
                OffsetDateTime::now_utc(),
            )
            .err()
            .unwrap();
        assert!(matches!(err, BuiltinError::OutlivesCa { .. }));
    }

    #[test]
    fn crl_lists_revoked() {
        let (_, ca) = ca(KeyType::EcdsaP256);
        let der = ca
            .crl(
                &[(
                    "4A0B".into(),
                    1_700_000_000,
                    RevocationReason::KeyCompromise,
                )],
                3,
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        let revoked: Vec<_> = crl.iter_revoked_certificates().collect();
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].raw_serial(), &[0x4a, 0x0b]);
        assert_eq!(crl.crl_number().unwrap().to_string(), "3");
    }
}
