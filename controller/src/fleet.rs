//! The fleet: join tokens, enrollment, agent sessions, deployments and what
//! agents report.
//!
//! Join tokens are `cfjt1.<id>.<secret>`; only a SHA-256 of the secret is
//! stored, compared in constant time, and a use is taken in the same
//! transaction that creates the agent, so a replayed or concurrent second use
//! fails. A deployment binds a certificate lineage to one (agent, target);
//! the agent fetches its full desired state on every connect and poke, so a
//! lost poke costs nothing but latency.

use aws_lc_rs::digest;
use base64::Engine;
use certfleet_protocol::message::{
    AgentHello, AgentInfo, CertState, DeploymentInfo, DeploymentStatus, DesiredInstall,
    InstallReport, JoinToken, Timestamp,
};
use certfleet_protocol::Secret;
use tracing::warn;

pub use crate::agent_bus::{SessionEvent, Sessions};
use crate::error::{internal, Result, ServiceError};
use crate::identity::Role;
use crate::service::Mode;
use crate::service::{key_aad, Service};
use crate::store::{self, AgentRow, AuditRecord, TokenRow};

/// Lifetime of an agent identity certificate; agents renew at two thirds.
pub const AGENT_IDENTITY_DAYS: i64 = 30;
/// Longest join-token lifetime.
pub const MAX_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;
pub(crate) const TOKEN_PREFIX: &str = "cfjt1";

pub(crate) fn token_hash(secret: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

/// The row of an agent enrolled at `ts`, before its first hello.
pub(crate) fn new_agent_row(
    id: &str,
    name: &str,
    labels: &[(String, String)],
    ts: i64,
) -> AgentRow {
    AgentRow {
        id: id.to_string(),
        name: name.to_string(),
        labels: labels.to_vec(),
        targets: vec![],
        version: None,
        enrolled_at: ts,
        last_seen: None,
        removed_at: None,
        skew_secs: None,
        identity_expires: None,
    }
}

/// Record an identity certificate issued to an agent, with its audit entry.
pub(crate) fn record_identity(
    tx: &rusqlite::Connection,
    agent: &str,
    issued: &crate::identity::IssuedClient,
    actor: &str,
    action: &str,
    detail: &str,
    ts: i64,
) -> Result<()> {
    store::credential_insert(
        tx,
        &store::CredentialRow {
            serial: issued.serial.clone(),
            role: Role::Agent.as_str().into(),
            subject: agent.to_string(),
            not_after: issued.not_after,
            revoked_at: None,
        },
        ts,
    )?;
    store::audit_insert(
        tx,
        ts,
        &AuditRecord {
            actor,
            action,
            target: agent,
            outcome: "ok",
            detail: &format!("{detail}serial={}", issued.serial),
        },
    )?;
    Ok(())
}

/// Parse `k=v,k2=v2` labels; keys and values are restricted to a safe set.
pub fn parse_labels(text: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("label {part:?} is not key=value"))?;
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !ok(k) || !ok(v) {
            return Err(format!(
                "label {part:?}: keys and values are 1-63 characters of letters, digits, '-', '_', '.'"
            ));
        }
        if out.iter().any(|(ek, _)| ek == k) {
            return Err(format!("label key {k:?} given twice"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Which agents a deploy selector picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Agent(String),
    Labels(Vec<(String, String)>),
}

impl Selector {
    pub fn parse(text: &str) -> std::result::Result<Selector, String> {
        if let Some(id) = text.trim().strip_prefix("agent=") {
            if id.is_empty() || id.contains(',') {
                return Err("agent=ID (or agent=NAME) selects exactly one agent".into());
            }
            return Ok(Selector::Agent(id.to_string()));
        }
        let labels = parse_labels(text)?;
        if labels.is_empty() {
            return Err(
                "empty selector: give labels like role=web,env=prod, or agent=ID or agent=NAME"
                    .into(),
            );
        }
        Ok(Selector::Labels(labels))
    }

    pub fn matches(&self, agent: &AgentRow) -> bool {
        match self {
            Selector::Agent(id) => &agent.id == id,
            Selector::Labels(want) => want
                .iter()
                .all(|(k, v)| agent.labels.iter().any(|(ak, av)| ak == k && av == v)),
        }
    }
}

/// The live agent an operator means by `text`: its id, or its name when
/// exactly one live agent has that name. Every request that names an agent
/// resolves it here, so ids and names work alike everywhere.
pub(crate) fn resolve_agent(conn: &rusqlite::Connection, text: &str) -> Result<AgentRow> {
    if let Some(a) = store::agent_get(conn, text)?.filter(|a| a.removed_at.is_none()) {
        return Ok(a);
    }
    let named = store::agents_named(conn, text)?;
    match named.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ServiceError::NotFound {
            what: "agent",
            id: text.to_string(),
        }),
        many => Err(ServiceError::Invalid(format!(
            "{} agents are named {text:?}; give one of their ids instead: {}",
            many.len(),
            many.iter()
                .map(|a| a.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Fail with NotFound unless `id` is a certificate (or a lineage, which is
/// the id of its first certificate), so a filter naming nothing is an error
/// rather than an empty list.
pub(crate) fn require_certificate(conn: &rusqlite::Connection, id: &str) -> Result<()> {
    if store::cert_get(conn, id)?.is_none() {
        return Err(ServiceError::NotFound {
            what: "certificate",
            id: id.to_string(),
        });
    }
    Ok(())
}

/// The refusal of a re-enroll token for an agent removed at `at`.
pub(crate) fn removed_agent(agent: &str, at: i64) -> ServiceError {
    ServiceError::Conflict(format!(
        "agent {agent} was removed at {}; its deployments are gone and it cannot be \
         re-enrolled: enroll the host as a new agent with `certfleet agent token create` \
         and deploy to it again",
        Timestamp(at)
    ))
}

/// Merge labels: `base` wins over `extra` on a shared key.
fn merge_labels(base: &[(String, String)], extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = base.to_vec();
    for (k, v) in extra {
        if !out.iter().any(|(bk, _)| bk == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

pub(crate) fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl Service {
    pub(crate) fn agent_info(&self, a: &AgentRow) -> AgentInfo {
        AgentInfo {
            id: a.id.clone(),
            name: a.name.clone(),
            labels: a.labels.clone(),
            targets: a.targets.clone(),
            version: a.version.clone(),
            enrolled_at: Timestamp(a.enrolled_at),
            // The store's time is at most a minute behind (see activity.rs).
            last_seen: a.last_seen.max(self.activity.last(&a.id)).map(Timestamp),
            connected: self.sessions.is_connected(&a.id),
            identity_expires: a.identity_expires.map(Timestamp),
            clock_skew_secs: a.skew_secs,
        }
    }

    pub async fn token_create(
        &self,
        actor: String,
        labels: Vec<(String, String)>,
        ttl_secs: u64,
        uses: u32,
    ) -> Result<JoinToken> {
        if uses == 0 || uses > 10_000 {
            return Err(ServiceError::Invalid(format!(
                "--uses must be between 1 and 10000, not {uses}"
            )));
        }
        if ttl_secs == 0 || ttl_secs > MAX_TOKEN_TTL_SECS {
            return Err(ServiceError::Invalid(
                "--ttl must be between 1s and 30d".to_string(),
            ));
        }
        for (k, v) in &labels {
            parse_labels(&format!("{k}={v}")).map_err(ServiceError::Invalid)?;
        }
        self.token_issue(actor, labels, ttl_secs, uses, None).await
    }

    /// A single-use join token bound to agent `agent` (id or unique name):
    /// enrolling with it gives that agent a new identity under its own id,
    /// so its labels and deployments carry over. Refused for a removed
    /// agent, whose deployments are gone.
    pub async fn token_create_reenroll(
        &self,
        actor: String,
        agent: String,
        ttl_secs: u64,
    ) -> Result<JoinToken> {
        if ttl_secs == 0 || ttl_secs > MAX_TOKEN_TTL_SECS {
            return Err(ServiceError::Invalid(
                "--ttl must be between 1s and 30d".to_string(),
            ));
        }
        let row = self
            .store
            .call(move |c| -> Result<AgentRow> {
                if let Some(a) = store::agent_get(c, &agent)? {
                    if let Some(at) = a.removed_at {
                        return Err(removed_agent(&a.id, at));
                    }
                }
                resolve_agent(c, &agent)
            })
            .await?;
        self.token_issue(actor, row.labels.clone(), ttl_secs, 1, Some(row.id))
            .await
    }

    /// Create and store a join token (checked by the caller).
    async fn token_issue(
        &self,
        actor: String,
        labels: Vec<(String, String)>,
        ttl_secs: u64,
        uses: u32,
        reenroll_agent: Option<String>,
    ) -> Result<JoinToken> {
        let id = store::new_id("t")[2..].to_string();
        let mut secret_bytes = zeroize::Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(secret_bytes.as_mut()).map_err(internal)?;
        let secret = zeroize::Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes.as_ref()),
        );
        let now = self.now().unix_timestamp();
        let expires_at = now + ttl_secs as i64;
        let row = TokenRow {
            id: id.clone(),
            secret_hash: token_hash(&secret),
            labels: labels.clone(),
            uses_left: i64::from(uses),
            expires_at,
            reenroll_agent,
        };
        self.store
            .call(move |c| -> Result<()> {
                let tx = c.transaction()?;
                store::token_insert(&tx, &row, now)?;
                store::audit_insert(
                    &tx,
                    now,
                    &AuditRecord {
                        actor: &actor,
                        action: "agent.token.create",
                        target: &row.id,
                        outcome: "ok",
                        detail: &format!(
                            "uses={} expires_at={}{}",
                            row.uses_left,
                            Timestamp(expires_at),
                            row.reenroll_agent
                                .as_deref()
                                .map(|a| format!(" reenroll={a}"))
                                .unwrap_or_default()
                        ),
                    },
                )?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        Ok(JoinToken {
            token: Secret::from(format!("{TOKEN_PREFIX}.{id}.{}", secret.as_str())),
            id,
            ca_pin: self.identity.pin(),
            labels,
            uses,
            expires_at: Timestamp(expires_at),
        })
    }

    /// Whether an agent exists and has not been removed.
    pub async fn agent_active(&self, agent: String) -> Result<bool> {
        Ok(self
            .store
            .call(move |c| store::agent_get(c, &agent))
            .await?
            .is_some_and(|a| a.removed_at.is_none()))
    }

    pub async fn agent_hello(&self, agent: String, hello: AgentHello) -> Result<()> {
        let now = self.now().unix_timestamp();
        let id = agent.clone();
        self.store
            .call(move |c| -> Result<()> {
                let tx = c.transaction()?;
                let row = store::agent_get(&tx, &agent)?.ok_or_else(|| ServiceError::NotFound {
                    what: "agent",
                    id: agent.clone(),
                })?;
                let labels = merge_labels(&row.labels, &hello.labels);
                store::agent_seen(&tx, &agent, &hello, &labels, now)?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        // An agent that failed while offline (or whose server was broken)
        // may be fine now: its renewal rollouts need not wait for the
        // back-off.
        self.retry_rollouts_of_agent(id).await
    }

    pub async fn agent_list(&self) -> Result<Vec<AgentInfo>> {
        let rows = self.store.call(|c| store::agent_list(c)).await?;
        Ok(rows.iter().map(|a| self.agent_info(a)).collect())
    }

    pub async fn agent_show(&self, id: String) -> Result<AgentInfo> {
        let row = self.store.call(move |c| resolve_agent(c, &id)).await?;
        Ok(self.agent_info(&row))
    }

    /// Remove an agent: its credentials are revoked, its deployments
    /// dropped, and a live connection is closed at once.
    pub async fn agent_remove(&self, actor: String, id: String) -> Result<AgentInfo> {
        let now = self.now().unix_timestamp();
        let row = self
            .store
            .call(move |c| -> Result<AgentRow> {
                let tx = c.transaction()?;
                let row = resolve_agent(&tx, &id)?;
                let agent = row.id.clone();
                store::agent_remove(&tx, &agent, now)?;
                store::audit_insert(
                    &tx,
                    now,
                    &AuditRecord {
                        actor: &actor,
                        action: "agent.remove",
                        target: &agent,
                        outcome: "ok",
                        detail: &format!("name={}", row.name),
                    },
                )?;
                tx.commit()?;
                Ok(row)
            })
            .await?;
        self.sessions.send(&row.id, SessionEvent::Removed);
        self.rollout_wake.notify_one();
        let mut info = self.agent_info(&row);
        info.connected = false;
        Ok(info)
    }

    /// Roll a certificate out to `target` on every agent the selector picks.
    /// Deployments follow the certificate's lineage, so its renewals go
    /// where it went.
    pub async fn deploy(
        &self,
        actor: String,
        certificate: String,
        selector: String,
        target: String,
        strategy: crate::rollout::policy::Strategy,
        mode: Mode,
    ) -> Result<certfleet_protocol::message::RolloutInfo> {
        let sel = Selector::parse(&selector).map_err(ServiceError::Invalid)?;
        let now = self.now().unix_timestamp();
        let info = self
            .store
            .call(
                move |c| -> Result<certfleet_protocol::message::RolloutInfo> {
                    let tx = c.transaction()?;
                    let cert = store::cert_get(&tx, &certificate)?.ok_or_else(|| {
                        ServiceError::NotFound {
                            what: "certificate",
                            id: certificate.clone(),
                        }
                    })?;
                    if cert.info.state != CertState::Active {
                        return Err(ServiceError::Conflict(format!(
                        "certificate {certificate} is {}; only active certificates can be deployed",
                        cert.info.state
                    )));
                    }
                    // `agent=` takes an id or a unique name, like every
                    // other command that names an agent.
                    let sel = match sel {
                        Selector::Agent(text) => Selector::Agent(resolve_agent(&tx, &text)?.id),
                        labels => labels,
                    };
                    let candidates: Vec<AgentRow> = store::agent_list(&tx)?
                        .into_iter()
                        .filter(|a| sel.matches(a))
                        .collect();
                    if candidates.is_empty() {
                        return Err(ServiceError::Invalid(format!(
                            "no agent matches {selector:?}; see `certfleet agent list`"
                        )));
                    }
                    let with_target: Vec<&AgentRow> = candidates
                        .iter()
                        .filter(|a| a.targets.iter().any(|t| t.name == target))
                        .collect();
                    if with_target.is_empty() {
                        return Err(ServiceError::Invalid(format!(
                            "{} agent(s) match {selector:?} but none has declared a target named \
                         {target:?} (agents declare targets in their config and report them \
                         when they connect)",
                            candidates.len()
                        )));
                    }
                    let cert_names: Vec<certfleet_protocol::name::SubjectName> = cert
                        .info
                        .domains
                        .iter()
                        .filter_map(|d| certfleet_protocol::name::parse(d).ok())
                        .collect();
                    for a in &with_target {
                        let Some(t) = a.targets.iter().find(|t| t.name == target) else {
                            continue;
                        };
                        for d in &t.domains {
                            let Ok(want) = certfleet_protocol::name::parse(d) else {
                                continue;
                            };
                            if !cert_names.iter().any(|have| have.covers(&want)) {
                                return Err(ServiceError::Invalid(format!(
                                    "certificate {certificate} does not cover {d}, which target \
                                 {target:?} on agent {} ({}) serves",
                                    a.name, a.id
                                )));
                            }
                        }
                    }
                    let targets = with_target
                        .iter()
                        .map(|a| (a.id.clone(), a.name.clone(), target.clone()))
                        .collect();
                    let skipped: Vec<String> = candidates
                        .iter()
                        .filter(|a| !a.targets.iter().any(|t| t.name == target))
                        .map(|a| {
                            if a.last_seen.is_none() {
                                format!("{} (never connected)", a.name)
                            } else {
                                a.name.clone()
                            }
                        })
                        .collect();
                    // Renewals of this lineage roll out the way it was last
                    // deployed (see persist_issued).
                    store::lineage_strategy_set(
                        &tx,
                        &cert.lineage,
                        &serde_json::to_string(&strategy).map_err(internal)?,
                        now,
                    )?;
                    let mut row = crate::ops::rollout::create(
                        &tx,
                        "deploy",
                        &cert.lineage,
                        &cert.info.id,
                        cert.info.renews.as_deref(),
                        targets,
                        &strategy,
                        false,
                        &actor,
                        now,
                    )?;
                    if !skipped.is_empty() {
                        // Say who was left out: an agent that never connected
                        // has not declared its targets yet.
                        row.reason = Some(format!(
                            "{} matching agent(s) have no target {target:?} and were left out: {}",
                            skipped.len(),
                            skipped.join(", ")
                        ));
                        store::rollout_update(&tx, &row)?;
                    }
                    store::audit_insert(
                        &tx,
                        now,
                        &AuditRecord {
                            actor: &actor,
                            action: "deploy",
                            target: &cert.info.id,
                            outcome: "ok",
                            detail: &format!(
                                "selector={selector} target={target} rollout={}",
                                row.id
                            ),
                        },
                    )?;
                    let info = crate::ops::rollout::info(&tx, &row)?;
                    mode.finish(tx)?;
                    Ok(info)
                },
            )
            .await?;
        if mode == Mode::Commit {
            self.rollout_wake.notify_one();
        }
        Ok(info)
    }

    pub async fn deployment_list(
        &self,
        certificate: Option<String>,
        agent: Option<String>,
    ) -> Result<Vec<DeploymentInfo>> {
        self.store
            .call(move |c| -> Result<Vec<DeploymentInfo>> {
                // Resolve and check the filters first: a filter that names
                // nothing is a mistake to report, not an empty list.
                if let Some(cert) = &certificate {
                    require_certificate(c, cert)?;
                }
                let agent = agent.map(|a| resolve_agent(c, &a)).transpose()?;
                Ok(store::deployment_list(
                    c,
                    certificate.as_deref(),
                    agent.as_ref().map(|a| a.id.as_str()),
                )?)
            })
            .await
    }

    /// Everything an agent should have installed. Keys go only with the
    /// deployments that still need an install (the controller does not hold
    /// them as installed), and each such release is audited before it is
    /// returned; a resync of a settled agent releases nothing.
    pub async fn desired_state(&self, agent: String) -> Result<Vec<DesiredInstall>> {
        let now = self.now().unix_timestamp();
        let rows = self
            .store
            .call(
                move |c| -> Result<Vec<(DeploymentInfo, store::CertRow, Option<String>)>> {
                    let tx = c.transaction()?;
                    let mut out = Vec::new();
                    for d in store::deployment_list(&tx, None, Some(&agent))? {
                        let cert = store::cert_get(&tx, &d.desired)?.ok_or_else(|| {
                            internal(format!("certificate {} vanished", d.desired))
                        })?;
                        let settled = d.status == DeploymentStatus::Installed
                            && d.installed.as_deref() == Some(d.desired.as_str());
                        let root = if settled {
                            None
                        } else {
                            store::audit_insert(
                                &tx,
                                now,
                                &AuditRecord {
                                    actor: &format!("agent:{agent}"),
                                    action: "key.release",
                                    target: &cert.info.id,
                                    outcome: "ok",
                                    detail: &format!("deployment={} target={}", d.id, d.target),
                                },
                            )?;
                            Some(
                                store::issuer_get(&tx, &cert.info.issuer)?
                                    .ok_or_else(|| internal("issuer vanished"))?
                                    .root_pem,
                            )
                        };
                        out.push((d, cert, root));
                    }
                    tx.commit()?;
                    Ok(out)
                },
            )
            .await?;
        let mut desired = Vec::new();
        for (d, cert, root_pem) in rows {
            let bundle = match root_pem {
                Some(root_pem) => {
                    let key = self
                        .master
                        .open(&key_aad(&cert.info.id), &cert.key_sealed)
                        .map_err(internal)?;
                    Some(certfleet_protocol::message::CertBundle {
                        id: cert.info.id.clone(),
                        leaf_pem: cert.info.leaf_pem.clone(),
                        chain_pem: cert.info.chain_pem.clone(),
                        root_pem,
                        key: Secret::new(key.to_vec()),
                    })
                }
                None => None,
            };
            desired.push(DesiredInstall {
                deployment: d.id,
                target: d.target,
                certificate: cert.info.id.clone(),
                fingerprint: cert.info.fingerprint.clone(),
                not_after: cert.info.not_after,
                bundle,
            });
        }
        Ok(desired)
    }

    pub async fn report(&self, agent: String, report: InstallReport) -> Result<()> {
        let now = self.now().unix_timestamp();
        let missing = report.status == DeploymentStatus::Missing;
        let installed = report.status == DeploymentStatus::Installed;
        let agent_id = agent.clone();
        let applied = self
            .store
            .call(move |c| -> Result<bool> {
                let tx = c.transaction()?;
                crate::error::failpoint("report.before_record")?;
                let applied = store::deployment_report(&tx, &agent, &report, now)?;
                store::audit_insert(
                    &tx,
                    now,
                    &AuditRecord {
                        actor: &format!("agent:{agent}"),
                        action: "deployment.report",
                        target: &report.deployment,
                        outcome: report.status.as_str(),
                        detail: &format!(
                            "certificate={} served={} error={}",
                            report.certificate,
                            report.served_fingerprint.as_deref().unwrap_or("-"),
                            report.error.as_deref().unwrap_or("-")
                        ),
                    },
                )?;
                tx.commit()?;
                Ok(applied)
            })
            .await?;
        // Recorded and durable; the rollout is not yet woken.
        crate::error::failpoint("report.after_record")?;
        if !applied {
            warn!("report for a deployment that has since changed; ignored");
        }
        if missing {
            // The next fetch carries the bundle.
            self.sessions.send(&agent_id, SessionEvent::Poke);
        }
        if installed && applied {
            // A successful install shows the agent's servers work again.
            self.retry_rollouts_of_agent(agent_id).await?;
        }
        self.rollout_wake.notify_one();
        Ok(())
    }
}

impl Service {
    /// Note a request from `agent`; writes the fleet's activity to the
    /// store when the minute has passed.
    pub async fn note_agent_activity(&self, agent: &str) {
        let now = self.now().unix_timestamp();
        let Some(batch) = self.activity.touch(agent, now) else {
            return;
        };
        let count = batch.len();
        let written = self
            .store
            .call(move |c| -> std::result::Result<(), store::StoreError> {
                let tx = c.transaction()?;
                store::agents_touch(&tx, &batch)?;
                tx.commit()?;
                Ok(())
            })
            .await;
        if let Err(e) = written {
            // Only LAST SEEN is at stake, and the next write retries with
            // newer times for the agents that stay active.
            warn!(error = %e, agents = count, "could not store agents' last activity");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_selectors() {
        assert_eq!(
            parse_labels("role=web, env=prod").unwrap(),
            vec![("role".into(), "web".into()), ("env".into(), "prod".into())]
        );
        assert!(parse_labels("role").is_err());
        assert!(parse_labels("role=we b").is_err());
        assert!(parse_labels("a=1,a=2").is_err());
        assert_eq!(
            Selector::parse("agent=agent-1").unwrap(),
            Selector::Agent("agent-1".into())
        );
        assert!(Selector::parse("").is_err());
        let agent = AgentRow {
            id: "agent-1".into(),
            name: "web-1".into(),
            labels: vec![("role".into(), "web".into()), ("env".into(), "prod".into())],
            targets: vec![],
            version: None,
            enrolled_at: 0,
            last_seen: None,
            removed_at: None,
            skew_secs: None,
            identity_expires: None,
        };
        assert!(Selector::parse("role=web").unwrap().matches(&agent));
        assert!(Selector::parse("role=web,env=prod")
            .unwrap()
            .matches(&agent));
        assert!(!Selector::parse("role=web,env=dev").unwrap().matches(&agent));
        assert!(Selector::parse("agent=agent-1").unwrap().matches(&agent));
    }

    #[test]
    fn merge_keeps_token_labels() {
        let merged = merge_labels(
            &[("role".into(), "web".into())],
            &[("role".into(), "db".into()), ("zone".into(), "a".into())],
        );
        assert_eq!(
            merged,
            vec![("role".into(), "web".into()), ("zone".into(), "a".into())]
        );
    }
}
