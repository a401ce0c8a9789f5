//! ACME issuers (RFC 8555) through instant-acme: accounts (with External
//! Account Binding), orders, HTTP-01 through the agents and DNS-01 through
//! RFC 2136, finalization, download and revocation.
//!
//! An order is persisted the moment it exists (its URL on the application)
//! and so is the private key its CSR will carry, so a controller restarted
//! mid-order resumes the same order instead of creating a second one.
//! Challenge files and records are removed after validation, whether it
//! succeeded or not.

use std::time::Duration;

use certfleet_protocol::message::{AgentCommand, RevocationReason};
use certfleet_protocol::name::SubjectName;
use certfleet_protocol::Secret;
use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, ChallengeStatus,
    ChallengeType, ExternalAccountKey, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tracing::info;

/// How long the CA gets to validate challenges and to issue.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(90);

/// How an order is polled (for readiness, then for the certificate) until
/// `timeout`. A `Retry-After` the CA sends is honoured; without one the
/// first poll comes after 5 ms and each wait is 1.5 times the previous
/// (5, 7.5, 11, 17, 25 ms, …: 11 polls in the first second, 15 in the
/// first 5 s, 22 in 90 s). instant-acme's default (250 ms, then
/// doubling) added about half a second to every order a CA validates in
/// milliseconds (measured by the `acme` benchmark, docs/performance.md).
fn poll_policy(timeout: Duration) -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(5))
        .backoff(1.5)
        .timeout(timeout)
}

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("the ACME server said: {0}")]
    Problem(String),
    #[error("the ACME server is rate limiting this account: {0}; certfleet will not retry before the advised time")]
    RateLimited(String),
    #[error("cannot reach the ACME directory {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// The HTTP exchange failed; the variant names the cause.
    #[error(transparent)]
    Http(super::acme_http::HttpFailure),
    /// Publishing a challenge response failed (no agent, DNS refused).
    #[error("{0}")]
    Solver(String),
    #[error("{0}")]
    Other(String),
}

fn describe(e: instant_acme::Error) -> AcmeError {
    match e {
        instant_acme::Error::Api(p) => {
            let text = format!(
                "{}{}",
                p.detail.clone().unwrap_or_else(|| "no detail".into()),
                p.r#type
                    .as_deref()
                    .map(|t| format!(" ({t})"))
                    .unwrap_or_default()
            );
            if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:rateLimited")
                || p.status == Some(429)
            {
                AcmeError::RateLimited(text)
            } else {
                AcmeError::Problem(text)
            }
        }
        instant_acme::Error::Other(inner) => {
            match inner.downcast::<super::acme_http::HttpFailure>() {
                Ok(failure) => AcmeError::Http(*failure),
                Err(inner) => AcmeError::Other(inner.to_string()),
            }
        }
        other => AcmeError::Other(other.to_string()),
    }
}

/// An account builder whose HTTP client trusts `ca_bundle` (PEM, every
/// certificate in it) for the ACME server, or the platform's roots.
///
/// The client is built here rather than by instant-acme for one setting:
/// `TCP_NODELAY`. instant-acme's connector leaves Nagle's algorithm on, so a
/// request that goes out as two TLS records (headers, then the JWS body)
/// waits for the server's delayed ACK, about 40 ms on Linux, on every
/// request: an order takes six or more of them (measured by the `acme`
/// benchmark, docs/performance.md).
pub fn account_builder(ca_bundle: Option<&str>) -> Result<AccountBuilder, AcmeError> {
    use hyper_rustls::HttpsConnectorBuilder;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let tls = match ca_bundle {
        None => HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .map_err(|e| AcmeError::Other(format!("the platform's root certificates: {e}")))?,
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| AcmeError::Other(format!("CA bundle: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| AcmeError::Other(format!("CA bundle: {e}")))?;
            }
            if roots.is_empty() {
                return Err(AcmeError::Other(
                    "CA bundle: no certificate in it".to_string(),
                ));
            }
            HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        }
    };
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(super::acme_http::CONNECT_TIMEOUT));
    tcp.enforce_http(false);
    let connector = tls
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    let client = Client::builder(TokioExecutor::new())
        .build::<_, instant_acme::BodyWrapper<hyper::body::Bytes>>(connector);
    Ok(Account::builder_with_http(Box::new(
        super::acme_http::AcmeHttp(client),
    )))
}

/// Register (or find) the account; returns the credentials as JSON and the
/// account URL.
pub async fn create_account(
    directory: &str,
    contact: &[String],
    eab: Option<(&str, &[u8])>,
    ca_bundle: Option<&str>,
) -> Result<(String, String), AcmeError> {
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = eab.map(|(kid, key)| ExternalAccountKey::new(kid.to_string(), key));
    let (account, creds) = account_builder(ca_bundle)?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory.to_string(),
            eab.as_ref(),
        )
        .await
        .map_err(|e| match describe(e) {
            AcmeError::Other(detail) => AcmeError::Unreachable {
                url: directory.to_string(),
                detail,
            },
            described => described,
        })?;
    let json = serde_json::to_string(&creds).map_err(|e| AcmeError::Other(e.to_string()))?;
    Ok((json, account.id().to_string()))
}

pub async fn load_account(
    creds_json: &[u8],
    ca_bundle: Option<&str>,
) -> Result<Account, AcmeError> {
    let creds: AccountCredentials = serde_json::from_slice(creds_json)
        .map_err(|e| AcmeError::Other(format!("stored account: {e}")))?;
    account_builder(ca_bundle)?
        .from_credentials(creds)
        .await
        .map_err(describe)
}

/// What the controller does to publish and withdraw challenge responses.
pub trait Solver: Send + Sync {
    /// Publish the HTTP-01 key authorization for `domain`.
    fn publish_http(
        &self,
        domain: &str,
        token: &str,
        key_authorization: &str,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
    fn remove_http(
        &self,
        domain: &str,
        token: &str,
    ) -> impl std::future::Future<Output = ()> + Send;
    fn publish_dns(
        &self,
        domain: &str,
        value: &str,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
    fn remove_dns(&self, domain: &str, value: &str)
        -> impl std::future::Future<Output = ()> + Send;
}

enum Published {
    Http { domain: String, token: String },
    Dns { domain: String, value: String },
}

/// Progress worth persisting: the order's URL once it exists, and the
/// moment challenges are about to be submitted.
pub enum Milestone<'a> {
    OrderCreated(&'a str),
    Answering,
}

/// Persists a [`Milestone`] before the step it names continues.
pub type MilestoneSink<'a> = &'a (dyn Fn(Milestone<'_>) -> Result<(), String> + Send + Sync);

/// Run (or resume) an order to completion; returns the PEM chain.
#[allow(clippy::too_many_arguments)]
pub async fn issue<S: Solver>(
    account: &Account,
    order_url: Option<&str>,
    answered: bool,
    record: MilestoneSink<'_>,
    names: &[SubjectName],
    csr_der: &[u8],
    challenge: ChallengeType,
    solver: &S,
) -> Result<String, AcmeError> {
    let mut order = match order_url {
        Some(url) => {
            info!(%url, "resuming ACME order");
            account.order(url.to_string()).await.map_err(describe)?
        }
        None => {
            let ids: Vec<Identifier> = names
                .iter()
                .map(|n| match n {
                    SubjectName::Dns(d) => Identifier::Dns(d.clone()),
                    SubjectName::Ip(ip) => Identifier::Ip(*ip),
                })
                .collect();
            let order = account
                .new_order(&NewOrder::new(&ids))
                .await
                .map_err(describe)?;
            record(Milestone::OrderCreated(order.url())).map_err(AcmeError::Other)?;
            injected("acme.order_created")?;
            order
        }
    };

    // A resumed order finalized before the crash has nothing left to
    // validate (and `poll_ready` would wait for a `ready` it never returns
    // to): download its certificate, the one the CA has already issued.
    if order_url.is_some()
        && matches!(
            order.state().status,
            OrderStatus::Valid | OrderStatus::Processing
        )
    {
        info!(url = %order.url(), "resumed ACME order is already finalized; downloading its certificate");
        injected("acme.download")?;
        return order
            .poll_certificate(&poll_policy(VALIDATION_TIMEOUT))
            .await
            .map_err(describe);
    }

    let mut published = Vec::new();
    // A resumed order whose challenges were already submitted only puts its
    // responses back in place: submitting again would make the CA validate
    // twice, once after the responses are withdrawn.
    let solved = solve(
        &mut order,
        challenge.clone(),
        solver,
        &mut published,
        !answered,
        record,
    )
    .await;
    let mut ready = match solved {
        Ok(()) => order
            .poll_ready(&poll_policy(if answered {
                Duration::from_secs(20)
            } else {
                VALIDATION_TIMEOUT
            }))
            .await
            .map_err(describe),
        Err(e) => Err(e),
    };
    if answered && matches!(ready, Ok(OrderStatus::Pending) | Err(_)) {
        // Killed between recording and submitting: submit now.
        let mut again = Vec::new();
        ready = match solve(&mut order, challenge, solver, &mut again, true, record).await {
            Ok(()) => order
                .poll_ready(&poll_policy(VALIDATION_TIMEOUT))
                .await
                .map_err(describe),
            Err(e) => Err(e),
        };
        published.extend(again);
    }
    // Withdraw what was published, whatever the outcome.
    for p in published {
        match p {
            Published::Http { domain, token } => solver.remove_http(&domain, &token).await,
            Published::Dns { domain, value } => solver.remove_dns(&domain, &value).await,
        }
    }
    let status = ready?;
    match status {
        OrderStatus::Ready => {
            injected("acme.finalize")?;
            order.finalize_csr(csr_der).await.map_err(describe)?;
        }
        OrderStatus::Valid | OrderStatus::Processing => {}
        OrderStatus::Invalid => return Err(AcmeError::Problem(invalid_reason(&mut order).await)),
        OrderStatus::Pending => {
            return Err(AcmeError::Problem(
                "the order is still pending after its challenges were answered".into(),
            ))
        }
    }
    injected("acme.download")?;
    order
        .poll_certificate(&poll_policy(VALIDATION_TIMEOUT))
        .await
        .map_err(describe)
}

async fn solve<S: Solver>(
    order: &mut instant_acme::Order,
    challenge: ChallengeType,
    solver: &S,
    published: &mut Vec<Published>,
    submit: bool,
    record: MilestoneSink<'_>,
) -> Result<(), AcmeError> {
    let mut recorded = false;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(describe)?;
        if authz.status != AuthorizationStatus::Pending {
            continue;
        }
        let wildcard = authz.wildcard;
        let mut handle = authz.challenge(challenge.clone()).ok_or_else(|| {
            AcmeError::Problem(format!(
                "the CA offers no {challenge:?} challenge for this name"
            ))
        })?;
        let domain = match handle.identifier().identifier {
            Identifier::Dns(d) => d.clone(),
            Identifier::Ip(ip) => ip.to_string(),
            other => {
                return Err(AcmeError::Other(format!(
                    "unsupported identifier {other:?}"
                )))
            }
        };
        let key_authorization = handle.key_authorization();
        match challenge {
            ChallengeType::Http01 => {
                let token = handle.token.clone();
                solver
                    .publish_http(&domain, &token, key_authorization.as_str())
                    .await
                    .map_err(AcmeError::Solver)?;
                published.push(Published::Http {
                    domain: domain.clone(),
                    token,
                });
            }
            ChallengeType::Dns01 => {
                let value = key_authorization.dns_value();
                let name = if wildcard {
                    format!("*.{domain}")
                } else {
                    domain.clone()
                };
                solver
                    .publish_dns(&name, &value)
                    .await
                    .map_err(AcmeError::Solver)?;
                published.push(Published::Dns {
                    domain: name,
                    value,
                });
            }
            other => {
                return Err(AcmeError::Other(format!(
                    "challenge {other:?} is not supported"
                )))
            }
        }
        // Published, not yet submitted to the CA.
        injected("acme.challenge_published")?;
        if submit && handle.status == ChallengeStatus::Pending {
            if !recorded {
                record(Milestone::Answering).map_err(AcmeError::Other)?;
                recorded = true;
            }
            handle.set_ready().await.map_err(describe)?;
        }
    }
    Ok(())
}

/// Fail an ACME step when failpoint `name` fires (test builds only).
fn injected(name: &str) -> Result<(), AcmeError> {
    match certfleet_agent::failpoints::check(name) {
        Some(message) => Err(AcmeError::Other(message)),
        None => Ok(()),
    }
}

/// The CA's reasons for an invalid order: each failed challenge's problem.
async fn invalid_reason(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for c in &authz.challenges {
            if let Some(e) = &c.error {
                reasons.push(format!(
                    "{}: {}",
                    c.r#type.as_str_lossy(),
                    e.detail
                        .clone()
                        .unwrap_or_else(|| "validation failed".into())
                ));
            }
        }
    }
    if reasons.is_empty() {
        "the order became invalid".into()
    } else {
        format!("validation failed: {}", reasons.join("; "))
    }
}

trait ChallengeName {
    fn as_str_lossy(&self) -> String;
}

impl ChallengeName for ChallengeType {
    fn as_str_lossy(&self) -> String {
        match self {
            ChallengeType::Http01 => "http-01".into(),
            ChallengeType::Dns01 => "dns-01".into(),
            ChallengeType::TlsAlpn01 => "tls-alpn-01".into(),
            other => format!("{other:?}"),
        }
    }
}

/// Parse `http-01` / `dns-01`.
pub fn challenge_type(name: &str) -> Result<ChallengeType, String> {
    match name {
        "http-01" => Ok(ChallengeType::Http01),
        "dns-01" => Ok(ChallengeType::Dns01),
        other => Err(format!(
            "unknown challenge {other:?}; certfleet solves http-01 (through agents) and dns-01 (RFC 2136)"
        )),
    }
}

/// Split a PEM chain into DER certificates, leaf first.
pub fn split_chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, AcmeError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| AcmeError::Other(format!("the CA returned a malformed chain: {e}")))?;
    if certs.len() < 2 {
        return Err(AcmeError::Other(
            "the CA returned a leaf without its issuing chain".into(),
        ));
    }
    Ok(certs)
}

/// Revoke a certificate at the CA with an RFC 5280 reason.
pub async fn revoke(
    account: &Account,
    leaf: &CertificateDer<'_>,
    reason: RevocationReason,
) -> Result<(), AcmeError> {
    let reason = match reason {
        RevocationReason::Unspecified => instant_acme::RevocationReason::Unspecified,
        RevocationReason::KeyCompromise => instant_acme::RevocationReason::KeyCompromise,
        RevocationReason::Superseded => instant_acme::RevocationReason::Superseded,
        RevocationReason::CessationOfOperation => {
            instant_acme::RevocationReason::CessationOfOperation
        }
        RevocationReason::AffiliationChanged => instant_acme::RevocationReason::AffiliationChanged,
    };
    account
        .revoke(&instant_acme::RevocationRequest {
            certificate: leaf,
            reason: Some(reason),
        })
        .await
        .map_err(describe)
}

/// The command an agent gets for an HTTP-01 challenge.
pub fn publish_command(domain: &str, token: &str, key_authorization: &str) -> AgentCommand {
    AgentCommand::PublishChallenge {
        domain: domain.to_string(),
        token: token.to_string(),
        key_authorization: Secret::from(key_authorization.to_string()),
    }
}

pub fn remove_command(domain: &str, token: &str) -> AgentCommand {
    AgentCommand::RemoveChallenge {
        domain: domain.to_string(),
        token: token.to_string(),
    }
}
