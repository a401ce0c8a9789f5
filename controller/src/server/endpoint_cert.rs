//! The controller's QUIC endpoint certificate, renewed while it runs.
//!
//! The endpoint certificate is made at start, valid for
//! [`SERVER_CERT_DAYS`](crate::identity::SERVER_CERT_DAYS), and replaced two
//! thirds into its life ([`renew_at`], a pure function like SPIRE's
//! rotation policy) by [`renew_loop`]. rustls asks [`EndpointCert`] for the
//! certificate at every handshake, so a new one reaches every new connection
//! at once, while connections already established keep their session: TLS
//! never looks at the server certificate again after the handshake.
//!
//! The loop polls the clock instead of sleeping until the renewal point, so
//! a clock that jumps (a suspended host, the tests' simulated clock) is
//! noticed within [`CHECK_INTERVAL`]; a check is a comparison of two times.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::identity::{IdentityCa, IdentityError, ServerCert};

/// How often the renewal loop looks at the clock.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How long to wait before retrying a renewal that failed.
const RETRY_INTERVAL: Duration = Duration::from_secs(60);

/// When a certificate valid from `not_before` to `not_after` is replaced:
/// two thirds into its life, leaving a third (30 days of 90) for a renewal
/// that fails to be retried before anything expires.
pub fn renew_at(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    not_before + (not_after - not_before) * 2 / 3
}

/// Whether the certificate must be replaced at `now`.
pub fn renewal_due(
    now: OffsetDateTime,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> bool {
    now >= renew_at(not_before, not_after)
}

struct Current {
    key: Arc<CertifiedKey>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

/// The endpoint certificate in use, swappable while the endpoint runs.
pub struct EndpointCert {
    current: RwLock<Current>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for EndpointCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (not_before, not_after) = self.validity();
        f.debug_struct("EndpointCert")
            .field("not_before", &not_before)
            .field("not_after", &not_after)
            .finish_non_exhaustive()
    }
}

fn certified(
    cert: ServerCert,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Current, IdentityError> {
    Ok(Current {
        key: Arc::new(CertifiedKey::from_der(cert.chain, cert.key, provider)?),
        not_before: cert.not_before,
        not_after: cert.not_after,
    })
}

impl EndpointCert {
    /// A first certificate, made at `now`.
    pub fn new(
        identity: &IdentityCa,
        provider: Arc<rustls::crypto::CryptoProvider>,
        now: OffsetDateTime,
    ) -> Result<EndpointCert, IdentityError> {
        let current = certified(identity.server_cert(now)?, &provider)?;
        Ok(EndpointCert {
            current: RwLock::new(current),
            provider,
        })
    }

    /// The validity of the certificate new handshakes get.
    pub fn validity(&self) -> (OffsetDateTime, OffsetDateTime) {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        (current.not_before, current.not_after)
    }

    /// Replace the certificate with a new one made at `now`.
    pub fn renew(&self, identity: &IdentityCa, now: OffsetDateTime) -> Result<(), IdentityError> {
        // Made outside the lock: handshakes keep getting the old one
        // meanwhile.
        let next = certified(identity.server_cert(now)?, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }
}

impl ResolvesServerCert for EndpointCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        Some(current.key.clone())
    }
}

/// Renew the endpoint certificate whenever [`renewal_due`] says so, until
/// `shutdown`.
pub async fn renew_loop(
    cert: Arc<EndpointCert>,
    identity: Arc<IdentityCa>,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut wait = CHECK_INTERVAL;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        wait = CHECK_INTERVAL;
        if let Err(e) = renew_if_due(&cert, &identity, clock.now()) {
            // Connections keep working on the old certificate until it
            // expires; the next attempt may succeed.
            warn!(
                error = %e,
                not_after = %cert.validity().1,
                retry_in = ?RETRY_INTERVAL,
                "endpoint certificate renewal failed"
            );
            wait = RETRY_INTERVAL;
        }
    }
}

/// One check of [`renew_loop`]: renew the certificate if [`renewal_due`]
/// says so at `now`. Whether it was renewed.
pub fn renew_if_due(
    cert: &EndpointCert,
    identity: &IdentityCa,
    now: OffsetDateTime,
) -> Result<bool, IdentityError> {
    let (not_before, not_after) = cert.validity();
    if !renewal_due(now, not_before, not_after) {
        return Ok(false);
    }
    cert.renew(identity, now)?;
    info!(
        old_not_after = %not_after,
        not_after = %cert.validity().1,
        "endpoint certificate renewed; new connections get the new one"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn renews_two_thirds_into_the_life() {
        let nb = datetime!(2026-01-01 0:00 UTC);
        let na = nb + time::Duration::days(90);
        assert_eq!(renew_at(nb, na), nb + time::Duration::days(60));
        assert!(!renewal_due(nb, nb, na));
        assert!(!renewal_due(nb + time::Duration::days(59), nb, na));
        assert!(renewal_due(nb + time::Duration::days(60), nb, na));
        // Past the expiry (a host that slept through the renewal point).
        assert!(renewal_due(nb + time::Duration::days(91), nb, na));
        // A degenerate validity is due at once.
        assert!(renewal_due(nb, nb, nb));
    }

    #[test]
    fn renewal_swaps_the_certificate_new_handshakes_get() {
        let dir = tempfile::tempdir().unwrap();
        let master = crate::seal::MasterKey::create(&dir.path().join("key")).unwrap();
        let now = OffsetDateTime::now_utc();
        let (ca, _) = IdentityCa::create(&master, now).unwrap();
        let certs = EndpointCert::new(&ca, crate::identity::server_provider(), now).unwrap();
        let first = current_leaf(&certs);
        let (nb, na) = certs.validity();
        assert_eq!(
            na - nb,
            time::Duration::days(90) + time::Duration::minutes(5)
        );
        let later = now + time::Duration::days(61);
        certs.renew(&ca, later).unwrap();
        assert_ne!(current_leaf(&certs), first);
        assert_eq!(certs.validity().1, later + time::Duration::days(90));
    }

    fn current_leaf(certs: &EndpointCert) -> Vec<u8> {
        let current = certs.current.read().unwrap();
        current.key.cert[0].to_vec()
    }
}
