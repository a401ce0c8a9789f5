//! The controller's identity PKI: who may talk to the controller.
//!
//! A self-signed identity CA, separate from every issuing CA, signs the
//! controller's own server certificate and the client certificates of admins
//! and agents. The role travels in the client certificate as a URI SAN
//! (`urn:certfleet:admin:<name>`, `urn:certfleet:agent:<id>`); the store is
//! consulted on every connection, so revoking a credential or removing an
//! agent takes effect at once. Client certificates carry only the clientAuth
//! EKU and the server certificate only serverAuth, so neither can pose as the
//! other.

use std::sync::Arc;

use aws_lc_rs::digest;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

use crate::seal::MasterKey;
use crate::store::IdentityCaRow;

pub use certfleet_protocol::cert::SERVER_NAME;

const IDENTITY_CA_AAD: &str = "identity-ca";
const URN_PREFIX: &str = "urn:certfleet:";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate generation failed")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration failed")]
    Tls(#[from] rustls::Error),
    #[error("stored identity CA is unreadable")]
    Seal(#[from] crate::seal::SealError),
    #[error("client certificate carries no certfleet role")]
    NoRole,
    #[error("client certificate is malformed")]
    Malformed,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Agent => "agent",
        }
    }
}

/// The identity a verified client certificate asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub role: Role,
    /// Admin name or agent id.
    pub subject: String,
    /// Certificate serial (upper-case hex), the key of the credentials table.
    pub serial: String,
}

impl PeerIdentity {
    /// How the audit log names this peer.
    pub fn actor(&self) -> String {
        format!("{}:{}", self.role.as_str(), self.subject)
    }
}

pub struct IdentityCa {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
}

/// How long the controller's endpoint certificate is valid.
pub const SERVER_CERT_DAYS: i64 = 90;

/// A freshly made endpoint certificate: chain (leaf, identity CA), key and
/// validity.
pub struct ServerCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// A freshly issued client certificate.
pub struct IssuedClient {
    pub cert_pem: String,
    pub serial: String,
    pub not_after: i64,
}

/// A random positive serial of 127 bits (CA/Browser Forum: ≥ 64 bits of
/// entropy), fixed length so it never starts with a zero byte.
pub(crate) fn random_serial() -> SerialNumber {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 16];
    // No safe way to issue certificates without randomness.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("system random number generator");
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x40; // fixed length, never a leading zero byte
    SerialNumber::from_slice(&bytes)
}

pub fn serial_hex(serial: &SerialNumber) -> String {
    hex::encode_upper(serial.to_bytes())
}

impl IdentityCa {
    /// Make a new identity CA and its sealed row.
    pub fn create(
        master: &MasterKey,
        now: OffsetDateTime,
    ) -> Result<(IdentityCa, IdentityCaRow), IdentityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "certfleet");
        dn.push(
            DnType::CommonName,
            format!("certfleet identity CA {}", &crate::store::new_id("id")[3..]),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(3650);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let row = IdentityCaRow {
            cert_pem: cert.pem(),
            key_sealed: master.seal(IDENTITY_CA_AAD, key.serialize_der().as_slice())?,
        };
        Ok((
            IdentityCa {
                cert_der: cert.der().clone(),
                cert_pem: cert.pem(),
                key,
            },
            row,
        ))
    }

    pub fn load(master: &MasterKey, row: &IdentityCaRow) -> Result<IdentityCa, IdentityError> {
        let key_der = master.open(IDENTITY_CA_AAD, &row.key_sealed)?;
        let key = KeyPair::try_from(key_der.as_slice())?;
        let cert_der = pem_to_der(&row.cert_pem).ok_or(IdentityError::Malformed)?;
        Ok(IdentityCa {
            cert_der,
            cert_pem: row.cert_pem.clone(),
            key,
        })
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo, for pinning.
    pub fn pin(&self) -> String {
        spki_pin(&self.key.subject_public_key_info())
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, IdentityError> {
        Ok(Issuer::from_ca_cert_der(&self.cert_der, &self.key)?)
    }

    /// A fresh server certificate for the QUIC endpoint, valid for
    /// [`SERVER_CERT_DAYS`] from `now` (the endpoint renews it while running,
    /// see `server::endpoint_cert`).
    pub fn server_cert(&self, now: OffsetDateTime) -> Result<ServerCert, IdentityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()])?;
        params.distinguished_name = DistinguishedName::new();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let not_before = now - Duration::minutes(5);
        let not_after = now + Duration::days(SERVER_CERT_DAYS);
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(ServerCert {
            chain: vec![cert.der().clone(), self.cert_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before,
            not_after,
        })
    }

    /// Issue a client certificate for `public_key` with the given role.
    pub fn issue_client(
        &self,
        role: Role,
        subject: &str,
        public_key: &impl PublicKeyData,
        now: OffsetDateTime,
        lifetime: Duration,
    ) -> Result<IssuedClient, IdentityError> {
        let uri = format!("{URN_PREFIX}{}:{subject}", role.as_str());
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("certfleet {} {subject}", role.as_str()),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - Duration::minutes(5);
        let not_after = now + lifetime;
        params.not_after = not_after;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let cert = params.signed_by(public_key, &self.issuer()?)?;
        Ok(IssuedClient {
            cert_pem: cert.pem(),
            serial: serial_hex(&serial),
            not_after: not_after.unix_timestamp(),
        })
    }

    /// TLS configuration of the controller's QUIC endpoint: TLS 1.3, ALPN
    /// `certfleet/1`, client certificates verified against this CA (and
    /// required for everything but enrollment).
    ///
    /// Handshake cost is trimmed where it buys nothing: the server picks
    /// AES-128-GCM with SHA-256 first (whose key schedule runs on the CPU's
    /// SHA extensions, where SHA-384's does not; AES-256 and ChaCha20 remain
    /// available to clients that offer nothing else), and it issues no
    /// session tickets. Agents hold one long-lived connection and reconnect
    /// mostly after a controller restart, which empties the in-memory
    /// session cache anyway, so every handshake is a full one with the
    /// client certificate checked.
    ///
    /// The server certificate comes from `certs` at each handshake (so it
    /// can be replaced while the endpoint runs), and client certificates are
    /// checked against `time`, the controller's clock.
    pub fn server_tls(
        &self,
        certs: Arc<dyn rustls::server::ResolvesServerCert>,
        time: Arc<dyn rustls::time_provider::TimeProvider>,
    ) -> Result<rustls::ServerConfig, IdentityError> {
        let provider = server_provider();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone())?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                // Unauthenticated clients get through TLS only to enroll;
                // every other request on such a connection is refused
                // (server::rpc).
                .allow_unauthenticated()
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_details(provider, time)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(certs);
        config.alpn_protocols = vec![certfleet_protocol::ALPN.to_vec()];
        config.ignore_client_order = true;
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(config)
    }
}

/// The crypto provider of the controller's endpoint (see
/// [`IdentityCa::server_tls`] for the cipher suite order).
pub fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// `sha256:<hex>` of a DER SubjectPublicKeyInfo.
pub fn spki_pin(spki_der: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(digest::digest(&digest::SHA256, spki_der).as_ref())
    )
}

/// The first certificate in a PEM text.
pub fn pem_to_der(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()
}

/// Read the role, subject and serial from a client certificate that TLS has
/// already verified against the identity CA.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Result<PeerIdentity, IdentityError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|_| IdentityError::Malformed)?;
    let serial = hex::encode_upper(x509.tbs_certificate.raw_serial());
    let san = x509
        .subject_alternative_name()
        .map_err(|_| IdentityError::Malformed)?
        .ok_or(IdentityError::NoRole)?;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            if let Some(rest) = uri.strip_prefix(URN_PREFIX) {
                let (role, subject) = rest.split_once(':').ok_or(IdentityError::NoRole)?;
                let role = match role {
                    "admin" => Role::Admin,
                    "agent" => Role::Agent,
                    _ => return Err(IdentityError::NoRole),
                };
                return Ok(PeerIdentity {
                    role,
                    subject: subject.to_string(),
                    serial,
                });
            }
        }
    }
    Err(IdentityError::NoRole)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> IdentityCa {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::create(&dir.path().join("k")).unwrap();
        let (ca, row) = IdentityCa::create(&master, OffsetDateTime::now_utc()).unwrap();
        let again = IdentityCa::load(&master, &row).unwrap();
        assert_eq!(again.pin(), ca.pin());
        ca
    }

    #[test]
    fn client_certificate_carries_role() {
        let ca = ca();
        let key = KeyPair::generate().unwrap();
        let issued = ca
            .issue_client(
                Role::Agent,
                "agent-1",
                &key,
                OffsetDateTime::now_utc(),
                Duration::days(30),
            )
            .unwrap();
        let der = pem_to_der(&issued.cert_pem).unwrap();
        let peer = peer_identity(&der).unwrap();
        assert_eq!(peer.role, Role::Agent);
        assert_eq!(peer.subject, "agent-1");
        assert_eq!(peer.serial, issued.serial);
    }

    #[test]
    fn server_certificate_has_no_role() {
        let ca = ca();
        let cert = ca.server_cert(OffsetDateTime::now_utc()).unwrap();
        assert!(matches!(
            peer_identity(&cert.chain[0]),
            Err(IdentityError::NoRole)
        ));
    }

    #[test]
    fn pin_format() {
        let pin = ca().pin();
        assert!(pin.starts_with("sha256:") && pin.len() == 7 + 64, "{pin}");
    }
}
