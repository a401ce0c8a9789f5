//! ACME applications on the controller: registering ACME issuers, choosing
//! a challenge, and answering it — HTTP-01 through the connected agents
//! whose targets serve the name, DNS-01 through an RFC 2136 update.
//!
//! The order URL and the key its CSR carries are persisted on the
//! application before the CA is asked anything that could not be repeated,
//! so a controller restarted mid-order resumes the same order.

use std::time::Duration;

use base64::Engine;
use certfleet_protocol::message::{
    AgentCommandReply, ApplicationInfo, DnsUpdateSpec, InstanceInfo, IssuerInfo, IssuerKind,
    KeyType,
};
use certfleet_protocol::name::{self, SubjectName};
use certfleet_protocol::Secret;
use tracing::{info, warn};

use crate::agent_bus::SessionEvent;
use crate::check;
use crate::error::{internal, Result, ServiceError};
use crate::issuer::acme::{self, AcmeError};
use crate::issuer::dns::{challenge_name, Rfc2136};
use crate::issuer::generate_key;
use crate::service::{apply_in_tx, validate_issuer_name, Service};
use crate::store::{self, AcmeIssuer, AcmeProgress, IssuerRow};

/// How long DNS-01 waits for the authoritative server to answer a record.
const DNS_VISIBLE_TIMEOUT: Duration = Duration::from_secs(30);

/// `issuer add NAME --kind acme …`, as received.
#[derive(Debug)]
pub struct AcmeIssuerSpec {
    pub name: String,
    pub directory: String,
    pub contact: Vec<String>,
    pub eab_kid: Option<String>,
    pub eab_hmac_key: Option<Secret>,
    pub ca_bundle_pem: Option<String>,
    pub default_challenge: String,
    pub dns: Option<DnsUpdateSpec>,
}

fn account_aad(issuer: &str) -> String {
    format!("acme-account:{issuer}")
}

fn dns_aad(issuer: &str) -> String {
    format!("dns-update:{issuer}")
}

fn app_key_aad(app: &str) -> String {
    format!("application-key:{app}")
}

/// The service error for a failure talking to the ACME issuer `issuer`.
/// Transport failures name the issuer and its URL: a controller may have
/// several ACME issuers, and "connection refused" alone does not say which.
fn acme_error(issuer: &str, e: AcmeError) -> ServiceError {
    use crate::issuer::acme_http::HttpFailure;
    match e {
        AcmeError::Http(f) => {
            let text = format!("ACME issuer {issuer:?}: {f}");
            match f {
                // Retrying cannot fix a wrong URL or an untrusted root.
                HttpFailure::Status { .. } | HttpFailure::Untrusted { .. } => {
                    ServiceError::Invalid(text)
                }
                HttpFailure::Refused { .. }
                | HttpFailure::TimedOut { .. }
                | HttpFailure::Other { .. } => ServiceError::Transient(text),
            }
        }
        AcmeError::Unreachable { .. } | AcmeError::Solver(_) => {
            ServiceError::Invalid(e.to_string())
        }
        AcmeError::Problem(p) if p.contains("serverInternal") => ServiceError::Transient(p),
        AcmeError::Other(o) => ServiceError::Transient(o),
        other => ServiceError::Internal(other.to_string()),
    }
}

fn rfc2136(spec: &DnsUpdateSpec) -> std::result::Result<Rfc2136, String> {
    let server = spec.server.parse().map_err(|_| {
        format!(
            "--dns-server {:?} is not an address like 192.0.2.1:53",
            spec.server
        )
    })?;
    let r = Rfc2136 {
        server,
        zone: spec.zone.clone(),
        tsig_name: spec.tsig_name.clone(),
        tsig_algorithm: spec.tsig_algorithm.clone(),
        tsig_secret_b64: spec.tsig_secret.clone(),
    };
    r.validate().map_err(|e| e.to_string())?;
    Ok(r)
}

/// Answers challenges for one order.
struct Solver<'a> {
    service: &'a Service,
    dns: Option<Rfc2136>,
}

impl Solver<'_> {
    /// Connected agents with a target that serves `domain` and has a webroot.
    async fn agents_for(&self, domain: &str) -> Result<Vec<String>> {
        let want = name::parse(domain).map_err(|e| internal(e.to_string()))?;
        let agents = self.service.store.call(|c| store::agent_list(c)).await?;
        Ok(agents
            .into_iter()
            .filter(|a| self.service.sessions.is_connected(&a.id))
            .filter(|a| {
                a.targets.iter().any(|t| {
                    t.webroot
                        && t.domains
                            .iter()
                            .filter_map(|d| name::parse(d).ok())
                            .any(|have| have == want || have.covers(&want))
                })
            })
            .map(|a| a.id)
            .collect())
    }

    async fn command(
        &self,
        agent: &str,
        command: certfleet_protocol::message::AgentCommand,
    ) -> AgentCommandReply {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if !self
            .service
            .sessions
            .send(agent, SessionEvent::Command(command, tx))
        {
            return AgentCommandReply {
                files: 0,
                error: Some("agent is not connected".into()),
            };
        }
        rx.await.unwrap_or(AgentCommandReply {
            files: 0,
            error: Some("agent session ended".into()),
        })
    }
}

impl acme::Solver for Solver<'_> {
    async fn publish_http(
        &self,
        domain: &str,
        token: &str,
        key_authorization: &str,
    ) -> std::result::Result<(), String> {
        let agents = self
            .agents_for(domain)
            .await
            .map_err(|e| e.to_rpc().message)?;
        if agents.is_empty() {
            return Err(format!(
                "no connected agent serves {domain} with a webroot: HTTP-01 needs an agent whose \
                 target lists {domain} in `domains` and sets `webroot` (or use --challenge dns-01)"
            ));
        }
        let mut written = 0;
        let mut errors = Vec::new();
        for agent in &agents {
            let reply = self
                .command(
                    agent,
                    acme::publish_command(domain, token, key_authorization),
                )
                .await;
            written += reply.files;
            if let Some(e) = reply.error {
                errors.push(format!("{agent}: {e}"));
            }
        }
        if written == 0 {
            return Err(format!(
                "no agent could publish the HTTP-01 challenge for {domain}: {}",
                errors.join("; ")
            ));
        }
        if !errors.is_empty() {
            warn!(%domain, errors = %errors.join("; "), "some agents could not publish the challenge");
        }
        Ok(())
    }

    async fn remove_http(&self, domain: &str, token: &str) {
        let agents = self.agents_for(domain).await.unwrap_or_default();
        for agent in &agents {
            let reply = self
                .command(agent, acme::remove_command(domain, token))
                .await;
            if let Some(e) = reply.error {
                warn!(%agent, %domain, error = %e, "could not remove a challenge file");
            }
        }
    }

    async fn publish_dns(&self, domain: &str, value: &str) -> std::result::Result<(), String> {
        let dns = self.dns.as_ref().ok_or_else(|| {
            "this issuer has no DNS update settings; add them with `issuer add … --dns-server …` \
             or use --challenge http-01"
                .to_string()
        })?;
        let record = challenge_name(domain);
        dns.add_txt(&record, value)
            .await
            .map_err(|e| e.to_string())?;
        dns.wait_visible(&record, value, DNS_VISIBLE_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
    }

    async fn remove_dns(&self, domain: &str, value: &str) {
        if let Some(dns) = &self.dns {
            if let Err(e) = dns.remove_txt(&challenge_name(domain), value).await {
                warn!(%domain, error = %e, "could not remove a DNS-01 record");
            }
        }
    }
}

impl Service {
    /// Register (or find) an ACME account and store the issuer.
    pub async fn issuer_add_acme(&self, actor: String, spec: AcmeIssuerSpec) -> Result<IssuerInfo> {
        validate_issuer_name(&spec.name)?;
        acme::challenge_type(&spec.default_challenge).map_err(ServiceError::Invalid)?;
        if !spec.directory.starts_with("https://") {
            return Err(ServiceError::Invalid(format!(
                "--directory {:?} must be an https:// URL of an ACME directory",
                spec.directory
            )));
        }
        let dns = spec
            .dns
            .as_ref()
            .map(rfc2136)
            .transpose()
            .map_err(ServiceError::Invalid)?;
        let eab_key = match (&spec.eab_kid, &spec.eab_hmac_key) {
            (Some(kid), Some(key)) => {
                let text = key.expose_str().unwrap_or_default().trim().to_string();
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(text.trim_end_matches('='))
                    .or_else(|_| base64::engine::general_purpose::STANDARD.decode(&text))
                    .map_err(|_| ServiceError::Invalid("--eab-hmac-key is not base64".into()))?;
                Some((kid.clone(), zeroize::Zeroizing::new(raw)))
            }
            (None, None) => None,
            _ => {
                return Err(ServiceError::Invalid(
                    "--eab-kid and --eab-hmac-key go together".into(),
                ))
            }
        };
        let exists = {
            let name = spec.name.clone();
            self.store
                .call(move |c| store::issuer_get(c, &name))
                .await?
                .is_some()
        };
        if exists {
            return Err(ServiceError::Conflict(format!(
                "issuer {:?} already exists",
                spec.name
            )));
        }
        let (creds, account_url) = acme::create_account(
            &spec.directory,
            &spec.contact,
            eab_key.as_ref().map(|(k, v)| (k.as_str(), v.as_slice())),
            spec.ca_bundle_pem.as_deref(),
        )
        .await
        .map_err(|e| match e {
            AcmeError::Problem(p) => {
                ServiceError::Invalid(format!("the ACME server refused the account: {p}"))
            }
            other => acme_error(&spec.name, other),
        })?;
        let now = self.now().unix_timestamp();
        let row = IssuerRow {
            name: spec.name.clone(),
            kind: IssuerKind::Acme,
            key: KeyType::EcdsaP256,
            root_pem: String::new(),
            ca_pem: String::new(),
            ca_key_sealed: Vec::new(),
            crl_number: 0,
            crl_der: None,
            crl_at: None,
            created_at: now,
            acme: Some(AcmeIssuer {
                directory: spec.directory.clone(),
                account_sealed: self
                    .master
                    .seal(&account_aad(&spec.name), creds.as_bytes())
                    .map_err(internal)?,
                account_url: account_url.clone(),
                ca_bundle: spec.ca_bundle_pem.clone(),
                default_challenge: spec.default_challenge.clone(),
                dns_update_sealed: match &dns {
                    Some(d) => Some(
                        self.master
                            .seal(
                                &dns_aad(&spec.name),
                                &serde_json::to_vec(d).map_err(internal)?,
                            )
                            .map_err(internal)?,
                    ),
                    None => None,
                },
            }),
        };
        let info = self.issuer_info(&row);
        let detail = format!(
            "kind=acme directory={} account={account_url}",
            spec.directory
        );
        self.store_issuer(actor, row, detail).await?;
        info!(issuer = %info.name, "ACME issuer added");
        Ok(info)
    }

    pub async fn issuer_show(&self, name: String) -> Result<IssuerInfo> {
        let row = self
            .store
            .call(move |c| -> Result<IssuerRow> {
                store::issuer_get(c, &name)?.ok_or(ServiceError::NotFound {
                    what: "issuer",
                    id: name,
                })
            })
            .await?;
        Ok(self.issuer_info(&row))
    }

    /// `cert apply` with an explicit challenge type (ACME issuers).
    pub async fn cert_apply_with(
        &self,
        actor: String,
        instance_id: String,
        domains: Vec<String>,
        challenge: Option<String>,
    ) -> Result<ApplicationInfo> {
        if let Some(c) = &challenge {
            acme::challenge_type(c).map_err(ServiceError::Invalid)?;
        }
        let now = self.now().unix_timestamp();
        let app = self
            .store
            .call(move |c| -> Result<ApplicationInfo> {
                let tx = c.transaction()?;
                let instance = store::instance_get(&tx, &instance_id)?.ok_or_else(|| {
                    ServiceError::NotFound {
                        what: "instance",
                        id: instance_id.clone(),
                    }
                })?;
                let issuer = store::issuer_get(&tx, &instance.spec.issuer)?
                    .ok_or_else(|| internal("issuer of instance vanished"))?;
                let chosen = match (&issuer.acme, challenge) {
                    (None, Some(c)) => {
                        return Err(ServiceError::Invalid(format!(
                            "--challenge {c}: issuer {} is a built-in CA, which needs no challenge",
                            issuer.name
                        )))
                    }
                    (None, None) => None,
                    (Some(a), c) => Some(c.unwrap_or_else(|| a.default_challenge.clone())),
                };
                if chosen.as_deref() == Some("dns-01")
                    && issuer
                        .acme
                        .as_ref()
                        .is_some_and(|a| a.dns_update_sealed.is_none())
                {
                    return Err(ServiceError::Invalid(format!(
                        "issuer {} has no DNS update settings for dns-01",
                        issuer.name
                    )));
                }
                let app = apply_in_tx(&tx, &actor, &instance_id, &domains, None, now)?;
                if chosen.as_deref() == Some("http-01")
                    && app.domains.iter().any(|d| d.starts_with("*."))
                {
                    return Err(ServiceError::Invalid(
                        "wildcard names can only be validated with --challenge dns-01".into(),
                    ));
                }
                store::application_set_acme(
                    &tx,
                    &app.id,
                    &AcmeProgress {
                        challenge: chosen,
                        ..Default::default()
                    },
                )?;
                tx.commit()?;
                Ok(app)
            })
            .await?;
        self.start_application(&app.id);
        Ok(app)
    }

    /// Run (or resume) the ACME order of an application.
    pub(crate) async fn issue_acme(
        &self,
        app: &ApplicationInfo,
        instance: &InstanceInfo,
        issuer: &IssuerRow,
        names: &[SubjectName],
    ) -> Result<(String, String, check::Checked, rcgen::KeyPair)> {
        let acme_issuer = issuer
            .acme
            .as_ref()
            .ok_or_else(|| internal("not an ACME issuer"))?;
        let app_id = app.id.clone();
        let mut progress = self
            .store
            .call(move |c| store::application_acme(c, &app_id))
            .await?;
        let challenge_name = progress
            .challenge
            .clone()
            .unwrap_or_else(|| acme_issuer.default_challenge.clone());
        let challenge = acme::challenge_type(&challenge_name).map_err(ServiceError::Invalid)?;
        if challenge_name == "http-01" && names.iter().any(SubjectName::is_wildcard) {
            return Err(ServiceError::Invalid(
                "wildcard names can only be validated with --challenge dns-01".into(),
            ));
        }

        // The key first: a resumed order must finalize with the same CSR key.
        let key = match &progress.key_sealed {
            Some(sealed) => {
                let der = self
                    .master
                    .open(&app_key_aad(&app.id), sealed)
                    .map_err(internal)?;
                crate::issuer::load_key(instance.spec.key, &der).map_err(internal)?
            }
            None => {
                let spec_key = instance.spec.key;
                let key = tokio::task::spawn_blocking(move || generate_key(spec_key))
                    .await
                    .map_err(internal)?
                    .map_err(internal)?;
                progress.key_sealed = Some(
                    self.master
                        .seal(&app_key_aad(&app.id), &key.serialize_der())
                        .map_err(internal)?,
                );
                progress.challenge = Some(challenge_name.clone());
                let (id, p) = (app.id.clone(), progress.clone());
                self.store
                    .call(move |c| store::application_set_acme(c, &id, &p))
                    .await?;
                key
            }
        };
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(ToString::to_string).collect::<Vec<_>>(),
        )
        .map_err(internal)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(internal)?;

        let account = self.acme_account(issuer, acme_issuer).await?;
        let dns = match &acme_issuer.dns_update_sealed {
            Some(sealed) => {
                let json = self
                    .master
                    .open(&dns_aad(&issuer.name), sealed)
                    .map_err(internal)?;
                Some(serde_json::from_slice::<Rfc2136>(&json).map_err(internal)?)
            }
            None => None,
        };
        let solver = Solver { service: self, dns };
        let store = self.store.clone();
        let app_id = app.id.clone();
        let progress_cell = std::sync::Mutex::new(progress.clone());
        let record = move |m: acme::Milestone<'_>| -> std::result::Result<(), String> {
            let mut p = progress_cell.lock().unwrap_or_else(|e| e.into_inner());
            match m {
                acme::Milestone::OrderCreated(url) => p.order_url = Some(url.to_string()),
                acme::Milestone::Answering => p.answered = true,
            }
            let snapshot = p.clone();
            let id = app_id.clone();
            // The milestone must be stored before the order goes on; the
            // runtime is multi-threaded, so hand this thread's other tasks
            // elsewhere while SQLite writes.
            tokio::task::block_in_place(|| {
                store.call_blocking(|c| store::application_set_acme(c, &id, &snapshot))
            })
            .map_err(|e| e.to_string())
        };
        let chain_pem = acme::issue(
            &account,
            progress.order_url.as_deref(),
            progress.answered,
            &record,
            names,
            csr.der(),
            challenge,
            &solver,
        )
        .await
        .map_err(|e| match e {
            AcmeError::Problem(p) => ServiceError::Invalid(format!("the CA refused: {p}")),
            other => acme_error(&issuer.name, other),
        })?;

        let certs = acme::split_chain(&chain_pem).map_err(|e| acme_error(&issuer.name, e))?;
        let (leaf, rest) = certs.split_first().ok_or_else(|| internal("empty chain"))?;
        let (anchor, intermediates) = rest
            .split_last()
            .ok_or_else(|| internal("no issuer in chain"))?;
        let now = self.now().unix_timestamp();
        let checked =
            check::check_issued(leaf, intermediates, anchor, &key, names, now).map_err(|e| {
                internal(format!(
                    "the certificate the CA returned failed its checks: {e}"
                ))
            })?;
        let to_pem = |der: &[u8]| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
            for chunk in b64.as_bytes().chunks(64) {
                pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
                pem.push('\n');
            }
            pem.push_str("-----END CERTIFICATE-----\n");
            pem
        };
        let leaf_pem = to_pem(leaf);
        let chain: String = rest.iter().map(|c| to_pem(c)).collect();
        Ok((leaf_pem, chain, checked, key))
    }

    /// The issuer's ACME account, unsealed.
    async fn acme_account(
        &self,
        issuer: &IssuerRow,
        acme_issuer: &AcmeIssuer,
    ) -> Result<instant_acme::Account> {
        let creds = self
            .master
            .open(&account_aad(&issuer.name), &acme_issuer.account_sealed)
            .map_err(internal)?;
        acme::load_account(&creds, acme_issuer.ca_bundle.as_deref())
            .await
            .map_err(|e| acme_error(&issuer.name, e))
    }

    /// Revoke at an ACME CA (before the local state changes).
    pub(crate) async fn revoke_at_acme(
        &self,
        issuer: &IssuerRow,
        leaf_pem: &str,
        reason: certfleet_protocol::message::RevocationReason,
    ) -> Result<()> {
        let Some(acme_issuer) = &issuer.acme else {
            return Ok(());
        };
        let account = self.acme_account(issuer, acme_issuer).await?;
        let leaf = crate::identity::pem_to_der(leaf_pem)
            .ok_or_else(|| internal("stored leaf unreadable"))?;
        acme::revoke(&account, &leaf, reason)
            .await
            .map_err(|e| match e {
                AcmeError::Problem(p) => {
                    ServiceError::Conflict(format!("the CA refused to revoke: {p}"))
                }
                other => acme_error(&issuer.name, other),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_dns_settings_are_refused() {
        let spec = DnsUpdateSpec {
            server: "not an address".into(),
            zone: "example.com.".into(),
            tsig_name: "k".into(),
            tsig_algorithm: "hmac-sha256".into(),
            tsig_secret: Secret::new(b"c2VjcmV0".to_vec()),
        };
        assert!(rfc2136(&spec).unwrap_err().contains("not an address"));
    }

    #[test]
    fn aad_binds_issuer() {
        assert_ne!(account_aad("a"), account_aad("b"));
        assert_ne!(account_aad("a"), dns_aad("a"));
    }
}
