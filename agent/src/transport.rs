//! QUIC connections to the controller: server-authenticated by a pinned CA
//! for enrollment, mutual TLS for everything after.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use certfleet_protocol::message::{Hello, HelloReply, Request, Response, RpcError};
use certfleet_protocol::skew::{SkewSeen, SkewWatch};
use certfleet_protocol::{close, frame, DEFAULT_MAX_FRAME, PROTOCOL};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::identity::Identity;

pub use certfleet_protocol::cert::SERVER_NAME;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The workspace's one crypto provider.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The time the controller's certificate is judged by: the agent's clock
/// ([`crate::clock`]), which the tests may shift like the controller's.
fn tls_time() -> Arc<dyn rustls::time_provider::TimeProvider> {
    Arc::new(crate::clock::TlsTime::current())
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo.
pub fn spki_pin(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert).ok()?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, x.public_key().raw);
    Some(format!("sha256:{}", hex::encode(digest.as_ref())))
}

/// What a [`ServerCheck`] accepts as the server's certificate.
#[derive(Debug)]
pub enum CertCheck {
    /// Only a chain that contains a CA whose public key matches the pin and
    /// under which the server certificate verifies (enrollment).
    PinnedCa(String),
    /// Any certificate: the caller compares fingerprints itself (install
    /// verification). The handshake signature is still checked, so the
    /// server proves it holds the key of what it presents.
    AnyCertificate,
}

/// A rustls server-certificate verifier for the agent's two special cases.
#[derive(Debug)]
pub struct ServerCheck {
    pub check: CertCheck,
    pub provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let CertCheck::PinnedCa(pin) = &self.check else {
            return Ok(ServerCertVerified::assertion());
        };
        let ca = intermediates
            .iter()
            .find(|c| spki_pin(c).as_deref() == Some(pin.as_str()))
            .ok_or_else(|| {
                rustls::Error::General(
                    "the controller's identity CA does not match --ca-pin".into(),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn quic_config(tls: rustls::ClientConfig) -> anyhow::Result<quinn::ClientConfig> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    // A controller that vanishes without closing (crash, SIGKILL, network
    // loss) is noticed within the idle timeout; keep-alives hold a healthy
    // but quiet session open.
    transport.max_idle_timeout(Some(Duration::from_secs(15).try_into()?));
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

fn enroll_config(pin: &str) -> anyhow::Result<quinn::ClientConfig> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_details(provider.clone(), tls_time())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerCheck {
            check: CertCheck::PinnedCa(pin.to_string()),
            provider,
        }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![certfleet_protocol::ALPN.to_vec()];
    quic_config(tls)
}

/// The mutual-TLS configuration, and where its certificate check records a
/// controller certificate that failed only on its dates (clock skew).
fn mtls_config(id: &Identity) -> anyhow::Result<(quinn::ClientConfig, SkewSeen)> {
    let provider = provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(id.ca.clone())?;
    let seen = SkewSeen::default();
    let verifier = SkewWatch {
        inner: WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .context("the identity CA certificate is unusable")?,
        seen: seen.clone(),
    };
    let mut tls = rustls::ClientConfig::builder_with_details(provider, tls_time())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key())
        .context("identity certificate and key do not belong together")?;
    tls.alpn_protocols = vec![certfleet_protocol::ALPN.to_vec()];
    Ok((quic_config(tls)?, seen))
}

/// Resolve `host:port`.
pub async fn resolve(controller: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = controller.parse() {
        return Ok(a);
    }
    tokio::net::lookup_host(controller)
        .await
        .with_context(|| format!("cannot resolve controller address {controller:?}"))?
        .next()
        .ok_or_else(|| anyhow!("controller address {controller:?} resolves to nothing"))
}

/// The controller closed the connection saying this agent has been removed
/// (close code [`close::AGENT_REMOVED`]): definitive, retrying is pointless.
#[derive(Debug, thiserror::Error)]
#[error("the controller at {addr} refused this agent for good: {reason}")]
pub struct AgentRemoved {
    /// The controller's address.
    pub addr: SocketAddr,
    /// The controller's words.
    pub reason: String,
}

fn explain(addr: SocketAddr, e: quinn::ConnectionError) -> anyhow::Error {
    match e {
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == quinn::VarInt::from_u32(close::AGENT_REMOVED) =>
        {
            anyhow::Error::new(AgentRemoved {
                addr,
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            })
        }
        quinn::ConnectionError::TimedOut => anyhow!("no controller answered at {addr}"),
        quinn::ConnectionError::TransportError(t) => {
            anyhow!("TLS handshake with the controller at {addr} failed: {t}")
        }
        quinn::ConnectionError::ConnectionClosed(c) => anyhow!(
            "the controller at {addr} refused the connection: {}",
            String::from_utf8_lossy(&c.reason)
        ),
        quinn::ConnectionError::ApplicationClosed(c) => anyhow!(
            "the controller at {addr} closed the connection: {}",
            String::from_utf8_lossy(&c.reason)
        ),
        other => anyhow!("connection to the controller at {addr} failed: {other}"),
    }
}

/// A client endpoint on a fresh UDP socket, of `addr`'s address family.
pub fn client_endpoint(addr: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    quinn::Endpoint::client(bind).context("cannot open a UDP socket")
}

/// A connection to the controller after the version exchange.
pub struct Conn {
    pub conn: quinn::Connection,
    // Kept so the endpoint's socket lives as long as the connection.
    _endpoint: quinn::Endpoint,
    addr: SocketAddr,
}

impl Conn {
    async fn open(
        addr: SocketAddr,
        config: quinn::ClientConfig,
        skew: Option<SkewSeen>,
    ) -> anyhow::Result<Conn> {
        Self::open_on(client_endpoint(addr)?, addr, config, skew).await
    }

    async fn open_on(
        endpoint: quinn::Endpoint,
        addr: SocketAddr,
        config: quinn::ClientConfig,
        skew: Option<SkewSeen>,
    ) -> anyhow::Result<Conn> {
        let connecting = endpoint.connect_with(config, addr, SERVER_NAME)?;
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(
                    match skew.as_ref().and_then(certfleet_protocol::skew::seen) {
                        Some(skew) => anyhow!(
                            "TLS handshake with the controller at {addr} failed: {}",
                            skew.explain("the controller")
                        ),
                        None => explain(addr, e),
                    },
                )
            }
            Err(_) => return Err(explain(addr, quinn::ConnectionError::TimedOut)),
        };
        let this = Conn {
            conn,
            _endpoint: endpoint,
            addr,
        };
        this.hello().await?;
        Ok(this)
    }

    /// Connect for enrollment, trusting only a CA that matches `pin`.
    pub async fn enroll(addr: SocketAddr, pin: &str) -> anyhow::Result<Conn> {
        Self::open(addr, enroll_config(pin)?, None).await
    }

    /// Connect with the agent's identity.
    pub async fn mtls(addr: SocketAddr, id: &Identity) -> anyhow::Result<Conn> {
        let (config, skew) = mtls_config(id)?;
        Self::open(addr, config, Some(skew)).await
    }

    /// Connect with the agent's identity over an existing client endpoint.
    /// One endpoint (one UDP socket) carries any number of connections;
    /// `certfleet-bench` runs thousands of simulated agents this way.
    pub async fn mtls_via(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        id: &Identity,
    ) -> anyhow::Result<Conn> {
        let (config, skew) = mtls_config(id)?;
        Self::open_on(endpoint.clone(), addr, config, Some(skew)).await
    }

    async fn hello(&self) -> anyhow::Result<()> {
        let (mut send, mut recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| explain(self.addr, e))?;
        let hello = Hello {
            versions: PROTOCOL,
            software: format!("certfleet-agent {}", env!("CARGO_PKG_VERSION")),
        };
        let exchange = async {
            frame::write(&mut send, &hello, DEFAULT_MAX_FRAME).await?;
            let _ = send.finish();
            frame::read::<HelloReply, _>(&mut recv, DEFAULT_MAX_FRAME).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, exchange).await {
            Ok(Ok(HelloReply::Accepted { .. })) => Ok(()),
            Ok(Ok(HelloReply::Refused { reason })) => {
                bail!("the controller refused this agent's protocol version: {reason}")
            }
            Ok(Err(e)) => match self.conn.close_reason() {
                Some(r) => Err(explain(self.addr, r)),
                None => Err(anyhow!("version exchange failed: {e}")),
            },
            Err(_) => bail!(
                "the controller at {} did not answer the version exchange",
                self.addr
            ),
        }
    }

    /// Why the connection ended, as [`Conn::call`] would report it (an
    /// [`AgentRemoved`] when the controller says so).
    pub fn lost(&self, e: quinn::ConnectionError) -> anyhow::Error {
        match e {
            quinn::ConnectionError::ApplicationClosed(_) => explain(self.addr, e),
            other => anyhow!("connection lost: {other}"),
        }
    }

    /// One request, one response; controller errors become `Err(RpcError)`.
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
                Some(r) => explain(self.addr, r),
                None => anyhow!("no response from the controller: {e}"),
            })?;
        match response {
            Response::Error(e) => Err(anyhow::Error::new::<RpcError>(e)),
            other => Ok(other),
        }
    }
}
