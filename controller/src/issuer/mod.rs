//! Issuers: the CAs the controller applies to. `builtin` is the controller's
//! own private CA; ACME issuers join it later behind the same lifecycle.

pub mod acme;
pub mod acme_http;
pub mod builtin;
pub mod dns;

use certfleet_protocol::message::KeyType;
use rcgen::{KeyPair, RsaKeySize, SignatureAlgorithm};

/// The rcgen signature algorithm that goes with a key type.
pub fn signature_algorithm(key: KeyType) -> &'static SignatureAlgorithm {
    match key {
        KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
    }
}

/// Generate a new private key of the given type.
pub fn generate_key(key: KeyType) -> Result<KeyPair, rcgen::Error> {
    let alg = signature_algorithm(key);
    match key {
        KeyType::EcdsaP256 | KeyType::EcdsaP384 => KeyPair::generate_for(alg),
        KeyType::Rsa2048 => KeyPair::generate_rsa_for(alg, RsaKeySize::_2048),
        KeyType::Rsa3072 => KeyPair::generate_rsa_for(alg, RsaKeySize::_3072),
        KeyType::Rsa4096 => KeyPair::generate_rsa_for(alg, RsaKeySize::_4096),
    }
}

/// Parse a PKCS#8 DER key of the given type.
pub fn load_key(key: KeyType, pkcs8_der: &[u8]) -> Result<KeyPair, rcgen::Error> {
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8_der);
    KeyPair::from_pkcs8_der_and_sign_algo(&der, signature_algorithm(key))
}
