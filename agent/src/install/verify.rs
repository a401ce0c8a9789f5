//! Proving what a server serves: a TLS handshake to the target's verify
//! address with a given SNI name, returning the SHA-256 fingerprint of the
//! leaf the server presented. The certificate is deliberately not validated
//! here — the caller compares fingerprints, which is stricter.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::transport::{CertCheck, ServerCheck};

pub use certfleet_protocol::cert::fingerprint;

/// Fingerprint of the leaf served at `addr` for `sni` (no SNI when `sni` is
/// empty or an IP address). Blocking.
pub fn served_fingerprint(
    addr: SocketAddr,
    sni: &str,
    timeout: Duration,
) -> Result<String, String> {
    let provider = crate::transport::provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerCheck {
            check: CertCheck::AnyCertificate,
            provider,
        }))
        .with_no_client_auth();
    let name = if sni.is_empty() {
        ServerName::IpAddress(addr.ip().into())
    } else if let Ok(ip) = sni.parse::<IpAddr>() {
        ServerName::IpAddress(ip.into())
    } else {
        ServerName::try_from(sni.to_string()).map_err(|e| format!("bad SNI name {sni:?}: {e}"))?
    };
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut sock =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .map_err(|e| format!("TLS handshake with {addr} (SNI {sni:?}): {e}"))?;
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| format!("{addr} presented no certificate"))?;
    let fp = fingerprint(leaf);
    // Close politely; errors here do not matter.
    conn.send_close_notify();
    let _ = conn.complete_io(&mut sock);
    let _ = sock.flush();
    let _ = sock.read(&mut [0u8; 1]);
    Ok(fp)
}
