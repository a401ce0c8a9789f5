//! What the controller and its agents must agree on about certificates
//! outside the messages: the name the controller's server certificate
//! carries, and how a certificate is fingerprinted.

/// The name in the controller's server certificate; clients verify it.
pub const SERVER_NAME: &str = "certfleet-controller";

/// SHA-256 of a DER certificate, lower-case hex: the fingerprint shown by
/// the CLI, stored by the controller and reported by agents.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

#[cfg(test)]
mod tests {
    #[test]
    fn fingerprint_is_lower_case_sha256_hex() {
        assert_eq!(
            super::fingerprint(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
