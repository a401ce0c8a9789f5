//! Clock skew seen at a TLS handshake, in the operator's words. The CLI and
//! the agent verify the controller's certificate against their own clock;
//! when that fails only because the certificate is not valid *yet* or *any
//! more*, the cause is almost always a clock that is off, and saying so
//! (with the offset) beats "the credential does not belong to this
//! controller". Pure: the caller passes both times. With the `tls` feature,
//! [`SkewWatch`] is the rustls certificate check that records such a
//! failure for the caller's error message.

/// How a peer certificate's validity compares with this host's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skew {
    /// The certificate starts `secs` seconds after this host's "now".
    Behind { secs: u64 },
    /// The certificate ended `secs` seconds before this host's "now".
    Ahead { secs: u64 },
}

impl Skew {
    /// From this host's time and the certificate's notBefore (both Unix
    /// seconds): `Behind` when the certificate is not valid yet.
    pub fn not_yet_valid(now: i64, not_before: i64) -> Skew {
        Skew::Behind {
            secs: not_before.saturating_sub(now).unsigned_abs(),
        }
    }

    /// From this host's time and the certificate's notAfter: `Ahead` when
    /// the certificate has expired by this host's clock.
    pub fn expired(now: i64, not_after: i64) -> Skew {
        Skew::Ahead {
            secs: now.saturating_sub(not_after).unsigned_abs(),
        }
    }

    /// One sentence naming the skew, the offset and the fix; `peer` names
    /// whose certificate it is ("the controller").
    pub fn explain(&self, peer: &str) -> String {
        match self {
            Skew::Behind { secs } => format!(
                "clock skew: this host's clock is {} behind {peer}'s certificate validity (the \
                 certificate is not valid yet by this host's clock); set the clock right on \
                 this host or on {peer} (NTP, `timedatectl`)",
                duration(*secs)
            ),
            Skew::Ahead { secs } => format!(
                "clock skew or expiry: this host's clock is {} past the end of {peer}'s \
                 certificate validity; if this host's clock is ahead, set it right (NTP, \
                 `timedatectl`), otherwise restart {peer} to renew its certificate",
                duration(*secs)
            ),
        }
    }
}

/// "3 h 12 min", "2 d 4 h", "45 s": the two largest units, rounded down.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) => format!("{m} min {s} s"),
        (0, _, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

#[cfg(feature = "tls")]
pub use self::tls::{seen, SkewSeen, SkewWatch};

#[cfg(feature = "tls")]
mod tls {
    use std::sync::{Arc, Mutex};

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    use super::Skew;

    /// What the handshake's certificate check saw, when the controller's
    /// certificate failed only on its validity dates.
    pub type SkewSeen = Arc<Mutex<Option<Skew>>>;

    /// The WebPKI check of the controller's certificate, remembering a failure
    /// that is only about validity dates: the error can then say "clock skew"
    /// and by how much instead of blaming the credential.
    #[derive(Debug)]
    pub struct SkewWatch {
        pub inner: Arc<rustls::client::WebPkiServerVerifier>,
        pub seen: SkewSeen,
    }

    impl ServerCertVerifier for SkewWatch {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            use rustls::CertificateError as C;
            let result =
                self.inner
                    .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
            let secs = |t: UnixTime| i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
            let skew = match &result {
                Err(rustls::Error::InvalidCertificate(C::NotValidYetContext {
                    time,
                    not_before,
                })) => Some(Skew::not_yet_valid(secs(*time), secs(*not_before))),
                Err(rustls::Error::InvalidCertificate(C::ExpiredContext { time, not_after })) => {
                    Some(Skew::expired(secs(*time), secs(*not_after)))
                }
                _ => None,
            };
            if skew.is_some() {
                *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = skew;
            }
            result
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    }

    /// The skew a [`SkewWatch`] recorded, if its last check failed on dates.
    pub fn seen(seen: &SkewSeen) -> Option<Skew> {
        *seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_read_like_a_person_wrote_them() {
        assert_eq!(duration(45), "45 s");
        assert_eq!(duration(125), "2 min 5 s");
        assert_eq!(duration(3 * 3600 + 12 * 60 + 30), "3 h 12 min");
        assert_eq!(duration(2 * 86_400 + 4 * 3600 + 59), "2 d 4 h");
    }

    #[test]
    fn direction_and_offset_are_named() {
        let behind = Skew::not_yet_valid(1_000, 1_000 + 3 * 3600 + 12 * 60);
        assert_eq!(behind, Skew::Behind { secs: 11_520 });
        let text = behind.explain("the controller");
        assert!(text.contains("clock skew"), "{text}");
        assert!(text.contains("3 h 12 min behind the controller's certificate validity"));
        let ahead = Skew::expired(10 * 86_400, 0);
        assert!(ahead
            .explain("the controller")
            .contains("10 d 0 h past the end"));
    }
}
