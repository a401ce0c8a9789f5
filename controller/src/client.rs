//! The client side of the admin protocol: credentials, the QUIC + mTLS
//! connection, the version exchange and request/response calls.
//!
//! A credential file holds, as PEM, the client certificate, the identity CA
//! that signed it (which is also the only CA the client trusts for the
//! controller's own certificate) and the private key. A credential from one
//! controller therefore cannot talk to another: the handshake fails on
//! both sides.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use certfleet_protocol::message::{Hello, HelloReply, Request, Response, RpcError};
use certfleet_protocol::skew::{SkewSeen, SkewWatch};
use certfleet_protocol::{frame, DEFAULT_MAX_FRAME, PROTOCOL};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::SERVER_NAME;

/// How long the CLI waits for a controller to answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An admin's (or an agent's) identity towards one controller.
pub struct Credential {
    pub cert: CertificateDer<'static>,
    pub ca: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// A new P-256 key (PEM) and a certificate signing request for it, to
    /// send with `AdminCreate` or `AdminRenew`.
    pub fn new_key() -> anyhow::Result<(String, String)> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .context("cannot make a certificate signing request")?;
        Ok((key.serialize_pem(), csr.pem()?))
    }

    /// Read a credential file.
    pub fn load(path: &Path) -> anyhow::Result<Credential> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read credential {}", path.display()))?;
        Self::from_pem(&bytes).with_context(|| format!("credential {} is invalid", path.display()))
    }

    pub fn from_pem(bytes: &[u8]) -> anyhow::Result<Credential> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!("bad PEM: {e}"))?;
        let [cert, ca] = <[CertificateDer<'static>; 2]>::try_from(certs).map_err(|c| {
            anyhow!(
                "expected 2 certificates (client certificate, identity CA), found {}",
                c.len()
            )
        })?;
        let key =
            PrivateKeyDer::from_pem_slice(bytes).map_err(|e| anyhow!("no private key: {e}"))?;
        Ok(Credential { cert, ca, key })
    }

    /// Write a credential file with mode 0600, replacing any old one
    /// atomically.
    pub fn write_pem(
        path: &Path,
        cert_pem: &str,
        ca_pem: &str,
        key_pem: &str,
    ) -> anyhow::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(".credential")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .tempfile_in(dir)
            .with_context(|| format!("cannot write credential into {}", dir.display()))?;
        tmp.write_all(cert_pem.as_bytes())?;
        tmp.write_all(ca_pem.as_bytes())?;
        tmp.write_all(key_pem.as_bytes())?;
        tmp.as_file().sync_all()?;
        tmp.persist(path)
            .with_context(|| format!("cannot write credential {}", path.display()))?;
        Ok(())
    }
}

/// Open `path` for writing with `mode` set at creation (no window in which
/// the file is readable by others).
pub fn create_private_file(path: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
}

fn client_config(
    cred: &Credential,
    clock: Arc<dyn crate::clock::Clock>,
) -> anyhow::Result<(quinn::ClientConfig, SkewSeen)> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cred.ca.clone())?;
    let seen = SkewSeen::default();
    let verifier = SkewWatch {
        inner: rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .context("the credential's CA certificate is unusable")?,
        seen: seen.clone(),
    };
    // The controller's certificate is judged by the same clock the
    // controller uses (the wall clock, or the tests' simulated one).
    let time = Arc::new(crate::clock::TlsTime(clock));
    let mut tls = rustls::ClientConfig::builder_with_details(provider, time)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![cred.cert.clone()], cred.key.clone_key())
        .context("credential's certificate and key do not belong together")?;
    tls.alpn_protocols = vec![certfleet_protocol::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    config.transport_config(Arc::new(transport));
    Ok((config, seen))
}

/// A client configuration without a client certificate that trusts the
/// identity CA `ca`: what an enrolling agent (or anyone else who can reach
/// the port) presents. For tests and benchmarks of what such a peer may do.
pub fn anonymous_client_config(
    ca: &CertificateDer<'static>,
) -> anyhow::Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![certfleet_protocol::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Explain a failed connection in the operator's terms.
fn explain(addr: SocketAddr, e: quinn::ConnectionError) -> anyhow::Error {
    use quinn::ConnectionError as E;
    match &e {
        E::TimedOut => anyhow!(
            "no controller answered at {addr}: is `certfleet serve` running there? \
             (set --controller or CERTFLEET_CONTROLLER)"
        ),
        // An expired or not-yet-valid controller certificate is a clock
        // problem, not a wrong credential: say so.
        E::TransportError(t)
            if t.to_string().contains("certificate expired")
                || t.to_string().contains("certificate not valid yet") =>
        {
            anyhow!(
                "the controller at {addr} presented a certificate that is not valid at this \
                 host's time ({t}): check that this host's clock and the controller's agree \
                 (a running controller renews its own certificate two thirds into its life)"
            )
        }
        E::TransportError(t)
            if t.to_string().contains("certificate") || t.code.to_string().contains("crypto") =>
        {
            anyhow!(
                "TLS handshake with the controller at {addr} failed ({t}): the credential does \
                 not belong to this controller — each controller has its own identity CA"
            )
        }
        E::ConnectionClosed(c)
            if c.error_code.to_string().contains("crypto") || !c.reason.is_empty() =>
        {
            anyhow!(
                "the controller at {addr} refused this credential ({}): it belongs to another \
             controller, was revoked, or is not an admin credential",
                String::from_utf8_lossy(&c.reason)
            )
        }
        E::ApplicationClosed(c) => anyhow!(
            "the controller at {addr} closed the connection: {}",
            String::from_utf8_lossy(&c.reason)
        ),
        _ => anyhow!("connection to the controller at {addr} failed: {e}"),
    }
}

/// Connect to a controller (QUIC + mutual TLS only; no version exchange).
pub async fn connect(addr: SocketAddr, cred: &Credential) -> anyhow::Result<quinn::Connection> {
    connect_at(addr, cred, crate::clock::from_env()).await
}

/// [`connect`], judging the controller's certificate by `clock`.
async fn connect_at(
    addr: SocketAddr,
    cred: &Credential,
    clock: Arc<dyn crate::clock::Clock>,
) -> anyhow::Result<quinn::Connection> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let endpoint = quinn::Endpoint::client(bind).context("cannot open a UDP socket")?;
    let (config, skew) = client_config(cred, clock)?;
    let connecting = endpoint
        .connect_with(config, addr, SERVER_NAME)
        .with_context(|| format!("cannot connect to {addr}"))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => match certfleet_protocol::skew::seen(&skew) {
            Some(skew) => Err(anyhow!(
                "TLS handshake with the controller at {addr} failed: {}",
                skew.explain("the controller")
            )),
            None => Err(explain(addr, e)),
        },
        Err(_) => Err(explain(addr, quinn::ConnectionError::TimedOut)),
    }
}

/// An admin session with a controller.
pub struct Client {
    conn: quinn::Connection,
    addr: SocketAddr,
    pub controller: String,
}

impl Client {
    /// Connect and exchange versions.
    pub async fn open(addr: SocketAddr, cred: &Credential) -> anyhow::Result<Client> {
        Self::open_at(addr, cred, crate::clock::from_env()).await
    }

    /// [`Client::open`], judging the controller's certificate by `clock`
    /// (a program running the controller on a simulated clock).
    pub async fn open_at(
        addr: SocketAddr,
        cred: &Credential,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> anyhow::Result<Client> {
        let conn = connect_at(addr, cred, clock).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| explain(addr, e))?;
        let hello = Hello {
            versions: PROTOCOL,
            software: format!("certfleet-cli {}", env!("CARGO_PKG_VERSION")),
        };
        let exchange = async {
            frame::write(&mut send, &hello, DEFAULT_MAX_FRAME).await?;
            let _ = send.finish();
            frame::read::<HelloReply, _>(&mut recv, DEFAULT_MAX_FRAME).await
        };
        let reply = match tokio::time::timeout(CONNECT_TIMEOUT, exchange).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                if let Some(reason) = conn.close_reason() {
                    return Err(explain(addr, reason));
                }
                return Err(anyhow!("version exchange with {addr} failed: {e}"));
            }
            Err(_) => bail!("the controller at {addr} did not answer the version exchange"),
        };
        match reply {
            HelloReply::Accepted { controller, .. } => Ok(Client {
                conn,
                addr,
                controller,
            }),
            HelloReply::Refused { reason } => {
                bail!("the controller at {addr} refused this client: {reason}")
            }
        }
    }

    /// Send one request and wait for its response. A controller-side error
    /// comes back as `Err` holding the [`RpcError`].
    pub async fn call(&self, request: &Request) -> anyhow::Result<Response> {
        let (mut send, mut recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| explain(self.addr, e))?;
        frame::write(&mut send, request, DEFAULT_MAX_FRAME).await?;
        let _ = send.finish();
        let response: Response = frame::read(&mut recv, DEFAULT_MAX_FRAME)
            .await
            .map_err(|e| match self.conn.close_reason() {
                Some(reason) => explain(self.addr, reason),
                None => anyhow!("no response from the controller at {}: {e}", self.addr),
            })?;
        match response {
            Response::Error(e) => Err(anyhow::Error::new::<RpcError>(e)),
            other => Ok(other),
        }
    }

    pub fn close(&self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"done");
    }
}
