//! The certificate lifecycle: issuers, instances, applications, certificates,
//! revocation and the audit log.
//!
//! Each operation validates its input completely before touching the store,
//! then makes its state transition and its audit record in one transaction,
//! so an operator action is recorded exactly when it takes effect and a
//! refused one changes nothing. Applications are processed by a background
//! worker from their stored state, so a controller restart resumes them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use certfleet_protocol::message::{
    ApplicationInfo, ApplicationState, AuditEntry, CertBundle, CertInfo, CertState, Crl,
    InstanceInfo, InstanceSpec, InstanceState, IssuerInfo, IssuerKind, KeyType, RevocationReason,
    Timestamp,
};
use certfleet_protocol::name::{self, SubjectName};
use certfleet_protocol::Secret;
use rusqlite::Connection;
use time::{Duration, OffsetDateTime};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::check;
use crate::clock::Clock;
pub use crate::error::ServiceError;
use crate::error::{failpoint, internal, Result};
use crate::identity::pem_to_der;
use crate::issuer::builtin::{self, BuiltinCa};
use crate::issuer::generate_key;
use crate::seal::MasterKey;
use crate::store::{self, AuditRecord, CertRow, IssuerRow, Store, StoreError};

/// Longest validity the built-in CA issues.
pub const MAX_VALIDITY_DAYS: u32 = 3650;
/// Most names one instance may cover.
pub const MAX_DOMAINS: u32 = 100;
/// Most fallback issuers an instance may name.
pub const MAX_FALLBACK_ISSUERS: usize = 8;
/// Longest `--fallback-after`: 90 days.
pub const MAX_FALLBACK_AFTER_SECS: u64 = 90 * 86_400;
/// Most applications the issuing worker takes at once: enough to amortize a
/// durable commit over many certificates, few enough that the first of a
/// large wave is reported within a fraction of a second.
const ISSUE_BATCH: usize = 256;
/// Retries of a transient failure before an application fails.
const TRANSIENT_RETRIES: u32 = 4;
/// Agent clock skew beyond this is flagged.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;
/// A CRL older than this is re-signed before it is served.
const CRL_REFRESH: Duration = Duration::hours(24);

/// Why a new credential is being issued, for the audit log.
#[derive(Debug, Clone, Copy)]
pub enum Issue {
    /// A new operator; refused while the name holds a valid credential.
    Create,
    /// Another credential for an operator who holds a valid one.
    Renew,
}

/// Whether a state change is carried out or only planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Commit,
    DryRun,
}

impl Mode {
    /// End the operation's transaction: commit it, or (dry run) drop it,
    /// which rolls every change back.
    pub(crate) fn finish(self, tx: rusqlite::Transaction<'_>) -> Result<()> {
        match self {
            Mode::Commit => Ok(tx.commit()?),
            Mode::DryRun => Ok(tx.rollback()?),
        }
    }
}

pub struct Service {
    pub(crate) store: Store,
    pub(crate) master: Arc<MasterKey>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) identity: Arc<crate::identity::IdentityCa>,
    crl_url_base: String,
    applications: mpsc::UnboundedSender<String>,
    /// Live agent sessions, for pokes and removal.
    pub(crate) sessions: crate::agent_bus::Sessions,
    /// Wakes the rollout reconciler.
    pub(crate) rollout_wake: tokio::sync::Notify,
    /// Wakes the renewal reconciler.
    pub(crate) renewal_wake: tokio::sync::Notify,
    /// Agents' last activity, kept in memory and stored coarsely.
    pub(crate) activity: crate::activity::Activity,
}

pub(crate) fn key_aad(cert_id: &str) -> String {
    format!("cert:{cert_id}")
}

pub(crate) fn issuer_key_aad(name: &str) -> String {
    format!("issuer:{name}")
}

pub(crate) fn validate_issuer_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ServiceError::Invalid(format!(
            "issuer name {name:?} is invalid: use 1-63 lower-case letters, digits, '-' or '_', \
             starting with a letter or digit"
        )))
    }
}

impl Service {
    /// Start the service; returns it with the receiver its application
    /// worker must be given (see [`Service::run_applications`]).
    pub fn new(
        store: Store,
        master: Arc<MasterKey>,
        clock: Arc<dyn Clock>,
        identity: Arc<crate::identity::IdentityCa>,
        crl_url_base: String,
    ) -> (Arc<Service>, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Service {
                store,
                master,
                clock,
                identity,
                crl_url_base: crl_url_base.trim_end_matches('/').to_string(),
                applications: tx,
                sessions: Default::default(),
                rollout_wake: tokio::sync::Notify::new(),
                renewal_wake: tokio::sync::Notify::new(),
                activity: Default::default(),
            }),
            rx,
        )
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    fn crl_url(&self, issuer: &str) -> String {
        crl_url(&self.crl_url_base, issuer)
    }

    /// Record an operator action that was refused or failed. Successful
    /// actions are recorded inside their own transaction.
    pub async fn audit_failure(
        &self,
        actor: String,
        action: &'static str,
        target: String,
        err: &ServiceError,
    ) {
        let at = self.now().unix_timestamp();
        let outcome = format!("refused: {}", err.to_rpc().message);
        let r = self
            .store
            .call(move |c| {
                store::audit_insert(
                    c,
                    at,
                    &AuditRecord {
                        actor: &actor,
                        action,
                        target: &target,
                        outcome: &outcome,
                        detail: "",
                    },
                )
            })
            .await;
        if let Err(e) = r {
            warn!(error = %e, "could not write audit record");
        }
    }

    pub(crate) fn issuer_info(&self, row: &IssuerRow) -> IssuerInfo {
        let (ca_subject, root_fingerprint) = pem_to_der(&row.ca_pem)
            .and_then(|ca| {
                let (_, x) = x509_parser::parse_x509_certificate(&ca).ok()?;
                let root = pem_to_der(&row.root_pem)?;
                Some((x.subject().to_string(), check::fingerprint(&root)))
            })
            .unwrap_or_default();
        IssuerInfo {
            name: row.name.clone(),
            kind: row.kind,
            key: row.key,
            created_at: Timestamp(row.created_at),
            ca_subject,
            root_fingerprint,
            crl_url: if row.acme.is_some() {
                String::new()
            } else {
                self.crl_url(&row.name)
            },
            directory: row.acme.as_ref().map(|a| a.directory.clone()),
            account_url: row.acme.as_ref().map(|a| a.account_url.clone()),
            default_challenge: row.acme.as_ref().map(|a| a.default_challenge.clone()),
        }
    }

    // ------------------------------------------------------------ issuers

    pub async fn issuer_add(
        &self,
        actor: String,
        name: String,
        kind: IssuerKind,
        key: KeyType,
    ) -> Result<IssuerInfo> {
        validate_issuer_name(&name)?;
        if kind != IssuerKind::Builtin {
            return Err(ServiceError::Invalid(format!(
                "issuer kind {kind} is not supported by this controller; use --kind builtin"
            )));
        }
        let exists = {
            let name = name.clone();
            self.store
                .call(move |c| store::issuer_get(c, &name))
                .await?
                .is_some()
        };
        if exists {
            return Err(ServiceError::Conflict(format!(
                "issuer {name:?} already exists"
            )));
        }
        let now = self.now();
        let new = {
            let name = name.clone();
            tokio::task::spawn_blocking(move || builtin::create(&name, key, now))
                .await
                .map_err(internal)?
                .map_err(internal)?
        };
        let row = IssuerRow {
            name: name.clone(),
            kind,
            key,
            root_pem: new.root_pem,
            ca_pem: new.ca_pem,
            ca_key_sealed: self
                .master
                .seal(&issuer_key_aad(&name), &new.ca_key_pkcs8)
                .map_err(internal)?,
            crl_number: 0,
            crl_der: None,
            crl_at: None,
            created_at: now.unix_timestamp(),
            acme: None,
        };
        let info = self.issuer_info(&row);
        let detail = format!("kind={} key={}", row.kind, row.key);
        self.store_issuer(actor, row, detail).await?;
        info!(issuer = %info.name, "issuer added");
        Ok(info)
    }

    /// Store a new issuer and its audit record in one transaction, refusing
    /// a name that is taken.
    pub(crate) async fn store_issuer(
        &self,
        actor: String,
        row: IssuerRow,
        detail: String,
    ) -> Result<()> {
        self.store
            .call(move |c| -> Result<()> {
                let tx = c.transaction()?;
                if store::issuer_get(&tx, &row.name)?.is_some() {
                    return Err(ServiceError::Conflict(format!(
                        "issuer {:?} already exists",
                        row.name
                    )));
                }
                store::issuer_insert(&tx, &row)?;
                store::audit_insert(
                    &tx,
                    row.created_at,
                    &AuditRecord {
                        actor: &actor,
                        action: "issuer.add",
                        target: &row.name,
                        outcome: "ok",
                        detail: &detail,
                    },
                )?;
                tx.commit()?;
                Ok(())
            })
            .await
    }

    pub async fn issuer_list(&self) -> Result<Vec<IssuerInfo>> {
        let rows = self.store.call(|c| store::issuer_list(c)).await?;
        Ok(rows.iter().map(|r| self.issuer_info(r)).collect())
    }

    // ------------------------------------------------------------ instances

    pub async fn instance_create(&self, actor: String, spec: InstanceSpec) -> Result<InstanceInfo> {
        if spec.max_domains == 0 || spec.max_domains > MAX_DOMAINS {
            return Err(ServiceError::Invalid(format!(
                "--domains must be between 1 and {MAX_DOMAINS}, not {}",
                spec.max_domains
            )));
        }
        if spec.validity_days == 0 || spec.validity_days > MAX_VALIDITY_DAYS {
            return Err(ServiceError::Invalid(format!(
                "--validity-days must be between 1 and {MAX_VALIDITY_DAYS}, not {}",
                spec.validity_days
            )));
        }
        check_fallback_spec(&spec)?;
        let now = self.now().unix_timestamp();
        let instance = InstanceInfo {
            id: store::new_id("inst"),
            spec,
            state: InstanceState::Unused,
            created_at: Timestamp(now),
            application: None,
            certificate: None,
            issuing: None,
        };
        let out = instance.clone();
        self.store
            .call(move |c| -> Result<()> {
                let tx = c.transaction()?;
                if store::issuer_get(&tx, &instance.spec.issuer)?.is_none() {
                    return Err(ServiceError::NotFound {
                        what: "issuer",
                        id: instance.spec.issuer.clone(),
                    });
                }
                for name in &instance.spec.fallback_issuers {
                    if store::issuer_get(&tx, name)?.is_none() {
                        return Err(ServiceError::Invalid(format!(
                            "fallback issuer {name:?} not found; add it with \
                             `certfleet issuer add {name} …` or see `certfleet issuer list`"
                        )));
                    }
                }
                store::instance_insert(&tx, &instance)?;
                let s = &instance.spec;
                store::audit_insert(
                    &tx,
                    now,
                    &AuditRecord {
                        actor: &actor,
                        action: "instance.create",
                        target: &instance.id,
                        outcome: "ok",
                        detail: &format!(
                            "issuer={} type={} domains={} wildcard={} validity_days={} key={}{}",
                            s.issuer,
                            s.validation,
                            s.max_domains,
                            s.wildcard,
                            s.validity_days,
                            s.key,
                            if s.fallback_issuers.is_empty() {
                                String::new()
                            } else {
                                format!(
                                    " fallback={} fallback_after={}s",
                                    s.fallback_issuers.join(","),
                                    crate::renewal::fallback::fallback_after(s)
                                )
                            }
                        ),
                    },
                )?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        Ok(out)
    }

    pub async fn instance_list(&self) -> Result<Vec<InstanceInfo>> {
        Ok(self
            .store
            .call(|c| -> std::result::Result<Vec<InstanceInfo>, StoreError> {
                let mut list = store::instance_list(c)?;
                store::fallback::attach(c, &mut list)?;
                Ok(list)
            })
            .await?)
    }

    pub async fn instance_show(&self, id: String) -> Result<InstanceInfo> {
        self.store
            .call(move |c| {
                let mut found = store::instance_get(c, &id)?.ok_or(ServiceError::NotFound {
                    what: "instance",
                    id,
                })?;
                store::fallback::attach(c, std::slice::from_mut(&mut found))?;
                Ok(found)
            })
            .await
    }

    // ------------------------------------------------------------ applications

    /// Check requested names against an instance's quota; returns them
    /// normalized and de-duplicated, in the order given.
    pub(crate) fn check_names(
        spec: &InstanceSpec,
        instance: &str,
        domains: &[String],
    ) -> Result<Vec<SubjectName>> {
        if domains.is_empty() {
            return Err(ServiceError::Invalid(
                "give at least one --domain".to_string(),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut names = Vec::new();
        for d in domains {
            let n = name::parse(d).map_err(|e| ServiceError::Invalid(e.to_string()))?;
            if n.is_wildcard() && !spec.wildcard {
                return Err(ServiceError::Invalid(format!(
                    "{n} is a wildcard but instance {instance} was not purchased with --wildcard"
                )));
            }
            if seen.insert(n.clone()) {
                names.push(n);
            }
        }
        if names.len() > spec.max_domains as usize {
            return Err(ServiceError::Invalid(format!(
                "{} names requested but instance {instance} allows at most {}",
                names.len(),
                spec.max_domains
            )));
        }
        Ok(names)
    }

    pub async fn cert_apply(
        &self,
        actor: String,
        instance_id: String,
        domains: Vec<String>,
    ) -> Result<ApplicationInfo> {
        let now = self.now().unix_timestamp();
        let app = self
            .store
            .call(move |c| -> Result<ApplicationInfo> {
                let tx = c.transaction()?;
                let app = apply_in_tx(&tx, &actor, &instance_id, &domains, None, now)?;
                tx.commit()?;
                Ok(app)
            })
            .await?;
        self.start_application(&app.id);
        Ok(app)
    }

    /// Hand a stored application to the worker. If the worker has stopped
    /// (shutdown), the application is stored and resumes at the next start.
    pub(crate) fn start_application(&self, id: &str) {
        let _ = self.applications.send(id.to_string());
    }

    /// How many applications are still in flight (pending or validating).
    pub async fn applications_in_flight(&self) -> Result<usize> {
        Ok(self
            .store
            .call(|c| store::applications_in_flight_count(c))
            .await?)
    }

    pub async fn application_show(&self, id: String) -> Result<ApplicationInfo> {
        self.store
            .call(move |c| {
                store::application_get(c, &id)?.ok_or(ServiceError::NotFound {
                    what: "application",
                    id,
                })
            })
            .await
    }

    /// Process applications as they arrive, after resuming those a previous
    /// run left in flight.
    ///
    /// The worker takes every application waiting (up to [`ISSUE_BATCH`]) at
    /// once: a renewal wave or a restart with a backlog is issued in batches
    /// whose built-in signing runs on every core and whose certificates are
    /// committed together (one durable commit per batch instead of one per
    /// certificate). While one batch is being signed, the one before it is
    /// being stored. No application is reported issued before the commit
    /// holding its certificate has reached the disk.
    pub async fn run_applications(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<String>) {
        let mut backlog = std::collections::VecDeque::new();
        match self.store.call(|c| store::applications_in_flight(c)).await {
            Ok(apps) => {
                for a in apps {
                    info!(application = %a.id, state = %a.state, "resuming application");
                    backlog.push_back(a.id);
                }
            }
            Err(e) => warn!(error = %e, "could not list applications to resume"),
        }
        // A batch that is signed but not yet stored.
        let mut signed: Option<Signed> = None;
        loop {
            let mut ids: Vec<String> = Vec::new();
            while ids.len() < ISSUE_BATCH {
                match backlog.pop_front() {
                    Some(id) => ids.push(id),
                    None => break,
                }
            }
            while ids.len() < ISSUE_BATCH {
                match rx.try_recv() {
                    Ok(id) => ids.push(id),
                    Err(_) => break,
                }
            }
            if ids.is_empty() {
                // Nothing else is waiting: store what is signed, then wait.
                if let Some(s) = signed.take() {
                    self.store_signed(s).await;
                }
                match rx.recv().await {
                    Some(id) => backlog.push_back(id),
                    None => break,
                }
                continue;
            }
            let now = self.now();
            let started = std::time::Instant::now();
            let (builtin, others) = self.claim(ids, now).await;
            // Store the previous batch while this one is signed: the store
            // works on one core, signing on all of them.
            let storing = signed.take().map(|s| {
                let ids: Vec<String> = s.issued.iter().map(|(id, _)| id.clone()).collect();
                let me = self.clone();
                (ids, tokio::spawn(async move { me.store_signed(s).await }))
            });
            if !builtin.is_empty() {
                let count = builtin.len();
                let claim = started.elapsed();
                let issued = self.issue_builtin_batch(builtin, now).await;
                signed = Some(Signed {
                    issued,
                    at: now.unix_timestamp(),
                    count,
                    claim,
                    sign: started.elapsed() - claim,
                });
            }
            if let Some((ids, h)) = storing {
                if let Err(e) = h.await {
                    // Whatever of the batch was not stored is still
                    // claimed: fail it (a stored one is no longer in
                    // flight and is left alone).
                    warn!(error = %e, "storing a batch of certificates failed");
                    for id in ids {
                        self.record_failure(
                            &id,
                            internal(format!("storing the certificate failed: {e}")),
                        )
                        .await;
                    }
                }
            }
            if !others.is_empty() {
                // ACME orders wait on a remote CA: store what is signed first.
                if let Some(s) = signed.take() {
                    self.store_signed(s).await;
                }
                for id in others {
                    self.process_application(&id).await;
                }
            }
        }
        if let Some(s) = signed.take() {
            self.store_signed(s).await;
        }
    }

    /// Claim a batch: the built-in ones to sign together, and the ids left
    /// for the one-at-a-time path.
    async fn claim(&self, ids: Vec<String>, now: OffsetDateTime) -> (Vec<Claimed>, Vec<String>) {
        let claimed = {
            let ids = ids.clone();
            self.store
                .call(move |c| claim_builtin(c, ids, now.unix_timestamp()))
                .await
        };
        match claimed {
            Ok(split) => split,
            Err(e) => {
                // Let the one-at-a-time path retry and record each outcome.
                warn!(error = %e.to_rpc().message, "could not claim a batch of applications");
                (Vec::new(), ids)
            }
        }
    }

    /// Record the failures of a signed batch and store its certificates.
    async fn store_signed(&self, s: Signed) {
        let started = std::time::Instant::now();
        let mut rows = Vec::with_capacity(s.issued.len());
        for (app, result) in s.issued {
            match result {
                Ok(row) => rows.push(row),
                Err(e) => self.record_failure(&app, e).await,
            }
        }
        self.persist_batch(rows, s.at).await;
        debug!(
            count = s.count,
            claim_ms = s.claim.as_secs_f64() * 1e3,
            sign_ms = s.sign.as_secs_f64() * 1e3,
            store_ms = started.elapsed().as_secs_f64() * 1e3,
            "issued a batch of built-in applications"
        );
    }

    /// Sign, check and seal a claimed batch on every core. The results come
    /// back in the order of `claimed`.
    async fn issue_builtin_batch(
        &self,
        claimed: Vec<Claimed>,
        now: OffsetDateTime,
    ) -> Vec<(String, Result<CertRow>)> {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(claimed.len())
            .max(1);
        let per = claimed.len().div_ceil(workers);
        let mut claimed = claimed;
        let mut chunks = Vec::with_capacity(workers);
        while !claimed.is_empty() {
            let rest = claimed.split_off(per.min(claimed.len()));
            chunks.push(std::mem::replace(&mut claimed, rest));
        }
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let ids: Vec<String> = chunk.iter().map(|c| c.app.id.clone()).collect();
                let master = self.master.clone();
                let crl_base = self.crl_url_base.clone();
                let handle = tokio::task::spawn_blocking(move || {
                    issue_chunk(&master, &crl_base, chunk, now)
                });
                (ids, handle)
            })
            .collect();
        let mut out = Vec::new();
        for (ids, h) in handles {
            match h.await {
                Ok(results) => out.extend(results),
                Err(e) => {
                    // The chunk's applications are claimed (`validating`):
                    // fail each one so none is left in flight forever.
                    warn!(error = %e, "issuing thread failed");
                    out.extend(
                        ids.into_iter().map(|id| {
                            (id, Err(internal(format!("the issuing thread failed: {e}"))))
                        }),
                    );
                }
            }
        }
        out
    }

    /// Store issued certificates in one transaction (a savepoint each, so
    /// one refused row does not take the others with it).
    async fn persist_batch(&self, rows: Vec<CertRow>, at: i64) {
        if rows.is_empty() {
            return;
        }
        let ids: Vec<String> = rows.iter().map(|r| r.application.clone()).collect();
        let stored = self
            .store
            .call(move |c| -> Result<Vec<Persisted>> {
                let mut tx = c.transaction()?;
                let mut out = Vec::with_capacity(rows.len());
                for mut row in rows {
                    let sp = tx.savepoint()?;
                    let r = persist_issued(&sp, &mut row, at);
                    if r.is_ok() {
                        sp.commit()?;
                    }
                    out.push((row.application, row.info.id, row.info.serial, r));
                }
                failpoint("issue.before_commit")?;
                tx.commit()?;
                Ok(out)
            })
            .await;
        match stored {
            Ok(results) => {
                let mut wake = false;
                for (app, cert, serial, r) in results {
                    match r {
                        Ok(Some(started)) => {
                            info!(certificate = %cert, %serial, application = %app, "certificate issued");
                            wake |= started;
                        }
                        Ok(None) => {}
                        Err(e) => self.record_failure(&app, e).await,
                    }
                }
                if wake {
                    self.rollout_wake.notify_one();
                }
            }
            Err(e) => {
                let message = e.to_rpc().message;
                for app in ids {
                    self.record_failure(&app, ServiceError::Internal(message.clone()))
                        .await;
                }
            }
        }
    }

    async fn process_application(&self, id: &str) {
        // Transient failures (a CA's 5xx, a timeout) are retried with
        // exponential backoff and jitter, resuming the same order.
        let mut attempt = 0u32;
        let result = loop {
            match self.try_process_application(id).await {
                Err(ServiceError::Transient(e)) if attempt < TRANSIENT_RETRIES => {
                    let delay = std::time::Duration::from_millis(500 << attempt).mul_f64(
                        0.5 + crate::renewal::policy::jitter_fraction(&format!("{id}{attempt}")),
                    );
                    warn!(application = %id, error = %e, retry_in = ?delay, "transient failure; retrying");
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
                other => break other,
            }
        };
        if let Err(e) = result {
            self.record_failure(id, e).await;
        }
    }

    /// Mark an application failed, free its instance, audit, and schedule
    /// the next attempt of the renewal it was, if any.
    async fn record_failure(&self, id: &str, e: ServiceError) {
        let message = e.to_rpc().message;
        warn!(application = %id, error = %message, "application failed");
        let app_id = id.to_string();
        let now = self.now().unix_timestamp();
        let r = self
            .store
            .call(move |c| -> Result<()> {
                let tx = c.transaction()?;
                let Some(mut app) = store::application_get(&tx, &app_id)? else {
                    return Ok(());
                };
                if !app.state.in_flight() {
                    return Ok(());
                }
                app.state = ApplicationState::Failed;
                app.last_error = Some(message.clone());
                app.updated_at = Timestamp(now);
                store::application_update(&tx, &app)?;
                store::instance_update(
                    &tx,
                    &app.instance,
                    InstanceState::Unused,
                    Some(&app.id),
                    None,
                )?;
                store::audit_insert(
                    &tx,
                    now,
                    &AuditRecord {
                        actor: "controller",
                        action: "cert.issue",
                        target: &app.instance,
                        outcome: "failed",
                        detail: &format!("application={} error={message}", app.id),
                    },
                )?;
                if let Some(old_id) = store::application_renews(&tx, &app.id)? {
                    if let Some(old) = store::cert_get(&tx, &old_id)? {
                        let attempts = old.renewal_attempts + 1;
                        let mut delay = crate::renewal::policy::retry_delay(
                            attempts,
                            now,
                            old.info.not_after.0,
                        );
                        if crate::renewal::fallback::is_rate_limit(&message) {
                            // The CA's limits run over hours; don't knock sooner.
                            delay = delay.max(crate::renewal::policy::RATE_LIMIT_BACKOFF_SECS);
                        }
                        // Sooner when a fallback issuer is about to take over.
                        delay = crate::renewal::fallback::on_failure(
                            &tx, &app.id, &old, &message, now, delay,
                        )?;
                        store::cert_set_renewal(
                            &tx,
                            &old_id,
                            Some(&message),
                            attempts,
                            Some(now + delay),
                            None,
                        )?;
                    }
                }
                tx.commit()?;
                Ok(())
            })
            .await;
        if let Err(e) = r {
            warn!(application = %id, error = %e, "could not record application failure");
        }
    }

    async fn try_process_application(&self, id: &str) -> Result<()> {
        let now = self.now();
        let id_owned = id.to_string();
        let loaded = self
            .store
            .call(
                move |c| -> Result<Option<(ApplicationInfo, InstanceInfo, IssuerRow)>> {
                    let tx = c.transaction()?;
                    let Some(mut app) = store::application_get(&tx, &id_owned)? else {
                        return Ok(None);
                    };
                    if !app.state.in_flight() {
                        return Ok(None);
                    }
                    let instance = store::instance_get(&tx, &app.instance)?
                        .ok_or_else(|| internal(format!("instance {} vanished", app.instance)))?;
                    let name = store::fallback::application_issuer(&tx, &app.id)?
                        .unwrap_or_else(|| instance.spec.issuer.clone());
                    let issuer = store::issuer_get(&tx, &name)?
                        .ok_or_else(|| internal(format!("issuer {name} vanished")))?;
                    app.state = ApplicationState::Validating;
                    app.attempts += 1;
                    app.updated_at = Timestamp(now.unix_timestamp());
                    store::application_update(&tx, &app)?;
                    tx.commit()?;
                    Ok(Some((app, instance, issuer)))
                },
            )
            .await?;
        let Some((app, instance, issuer)) = loaded else {
            return Ok(());
        };

        let mut row = if issuer.acme.is_some() {
            // Test seam: an injected outage refuses before the CA is asked.
            crate::fault::check_issuer(&issuer.name).map_err(ServiceError::Conflict)?;
            let names = parse_names(&app.domains)?;
            let (leaf_pem, chain_pem, checked, key) =
                self.issue_acme(&app, &instance, &issuer, &names).await?;
            cert_row(
                &self.master,
                &app,
                &instance,
                &issuer.name,
                leaf_pem,
                chain_pem,
                checked,
                &zeroize::Zeroizing::new(key.serialize_pem()),
            )?
        } else {
            let master = self.master.clone();
            let crl_base = self.crl_url_base.clone();
            let claimed = Claimed {
                app,
                instance,
                issuer: Arc::new(issuer),
            };
            let mut results = tokio::task::spawn_blocking(move || {
                issue_chunk(&master, &crl_base, vec![claimed], now)
            })
            .await
            .map_err(internal)?;
            results
                .pop()
                .map(|(_, r)| r)
                .unwrap_or_else(|| Err(internal("issuing thread returned nothing")))?
        };
        let at = now.unix_timestamp();
        let started = self
            .store
            .call(move |c| -> Result<Option<bool>> {
                let tx = c.transaction()?;
                let started = persist_issued(&tx, &mut row, at)?;
                failpoint("issue.before_commit")?;
                tx.commit()?;
                if started.is_some() {
                    info!(certificate = %row.info.id, serial = %row.info.serial, renews = ?row.info.renews, "certificate issued");
                }
                Ok(started)
            })
            .await?;
        if started == Some(true) {
            self.rollout_wake.notify_one();
        }
        Ok(())
    }

    // ------------------------------------------------------------ certificates

    pub async fn cert_list(&self, expiring_within: Option<i64>) -> Result<Vec<CertInfo>> {
        let before = expiring_within.map(|s| self.now().unix_timestamp().saturating_add(s));
        self.store
            .call(move |c| -> Result<Vec<CertInfo>> {
                store::cert_list(c, before)?
                    .into_iter()
                    .map(|r| with_renewal(c, r))
                    .collect()
            })
            .await
    }

    async fn cert_row(&self, id: String) -> Result<CertRow> {
        self.store
            .call(move |c| {
                store::cert_get(c, &id)?.ok_or(ServiceError::NotFound {
                    what: "certificate",
                    id,
                })
            })
            .await
    }

    pub async fn cert_show(&self, id: String) -> Result<CertInfo> {
        self.store
            .call(move |c| -> Result<CertInfo> {
                let row = store::cert_get(c, &id)?.ok_or(ServiceError::NotFound {
                    what: "certificate",
                    id,
                })?;
                with_renewal(c, row)
            })
            .await
    }

    /// Release a certificate's private key. The release is audited before
    /// the key leaves this function.
    pub async fn cert_download(&self, actor: String, id: String) -> Result<CertBundle> {
        let row = self.cert_row(id).await?;
        let issuer_name = row.info.issuer.clone();
        let issuer = self
            .store
            .call(move |c| store::issuer_get(c, &issuer_name))
            .await?
            .ok_or_else(|| internal("issuer of certificate vanished"))?;
        let key = self
            .master
            .open(&key_aad(&row.info.id), &row.key_sealed)
            .map_err(|e| internal(format!("private key of {}: {e}", row.info.id)))?;
        let at = self.now().unix_timestamp();
        let cert_id = row.info.id.clone();
        self.store
            .call(move |c| {
                store::audit_insert(
                    c,
                    at,
                    &AuditRecord {
                        actor: &actor,
                        action: "key.release",
                        target: &cert_id,
                        outcome: "ok",
                        detail: "cert download",
                    },
                )
            })
            .await?;
        Ok(CertBundle {
            id: row.info.id,
            leaf_pem: row.info.leaf_pem,
            chain_pem: row.info.chain_pem,
            root_pem: issuer.root_pem,
            key: Secret::new(key.to_vec()),
        })
    }

    pub async fn cert_revoke(
        &self,
        actor: String,
        id: String,
        reason: RevocationReason,
        force: bool,
        mode: Mode,
    ) -> Result<CertInfo> {
        // An ACME CA is told first; the local state follows only if it agreed.
        let probe_id = id.clone();
        let (cert, issuer) = self
            .store
            .call(move |c| -> Result<(CertRow, Option<IssuerRow>)> {
                let cert =
                    store::cert_get(c, &probe_id)?.ok_or_else(|| ServiceError::NotFound {
                        what: "certificate",
                        id: probe_id.clone(),
                    })?;
                let issuer = store::issuer_get(c, &cert.info.issuer)?;
                Ok((cert, issuer))
            })
            .await?;
        // A dry run never calls the CA: the checks below decide the plan.
        if let Some(issuer) = issuer.filter(|i| i.acme.is_some() && mode == Mode::Commit) {
            let in_service = {
                let id = id.clone();
                self.store
                    .call(move |c| store::deployments_using(c, &id))
                    .await?
            };
            if cert.info.state != CertState::Revoked && (force || in_service.is_empty()) {
                self.revoke_at_acme(&issuer, &cert.info.leaf_pem, reason)
                    .await?;
            }
        }
        let now = self.now();
        let master = self.master.clone();
        self.store
            .call(move |c| -> Result<CertInfo> {
                let tx = c.transaction()?;
                let row = store::cert_get(&tx, &id)?.ok_or_else(|| ServiceError::NotFound {
                    what: "certificate",
                    id: id.clone(),
                })?;
                if row.info.state == CertState::Revoked {
                    return Err(ServiceError::Conflict(format!(
                        "certificate {id} was already revoked at {} (reason {})",
                        row.info
                            .revoked_at
                            .map(|t| t.to_string())
                            .unwrap_or_default(),
                        row.info
                            .revocation_reason
                            .map(|r| r.as_str())
                            .unwrap_or("unspecified")
                    )));
                }
                let in_service = store::deployments_using(&tx, &id)?;
                if !in_service.is_empty() && !force {
                    return Err(ServiceError::Conflict(format!(
                        "certificate {id} is still in service on {}: {}. Renew it \
                         (certfleet cert renew {id}) or roll out a replacement first, or \
                         revoke anyway with --force",
                        if in_service.len() == 1 {
                            "1 deployment".to_string()
                        } else {
                            format!("{} deployments", in_service.len())
                        },
                        in_service
                            .iter()
                            .map(|(agent, target)| format!("{agent}/{target}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                let at = now.unix_timestamp();
                store::cert_revoke(&tx, &id, at, reason)?;
                store::instance_update(
                    &tx,
                    &row.info.instance,
                    InstanceState::Revoked,
                    Some(&row.application),
                    Some(&id),
                )?;
                store::audit_insert(
                    &tx,
                    at,
                    &AuditRecord {
                        actor: &actor,
                        action: "cert.revoke",
                        target: &id,
                        outcome: "ok",
                        detail: &format!(
                            "serial={} reason={reason}{}",
                            row.info.serial,
                            if in_service.is_empty() {
                                String::new()
                            } else {
                                format!(" forced; in service on {} deployment(s)", in_service.len())
                            }
                        ),
                    },
                )?;
                if store::issuer_get(&tx, &row.info.issuer)?.is_some_and(|i| i.acme.is_none()) {
                    regenerate_crl(&tx, &master, &row.info.issuer, now)?;
                }
                mode.finish(tx)?;
                let mut info = row.info;
                info.state = CertState::Revoked;
                info.revoked_at = Some(Timestamp(at));
                info.revocation_reason = Some(reason);
                Ok(info)
            })
            .await
    }

    /// The current CRL of an issuer (the only built-in one when `issuer` is
    /// not given), re-signed when it is older than a day.
    pub async fn crl(&self, issuer: Option<String>) -> Result<Crl> {
        let now = self.now();
        let master = self.master.clone();
        self.store
            .call(move |c| -> Result<Crl> {
                let tx = c.transaction()?;
                let row = crate::ops::issuers::pick_issuer(&tx, issuer)?;
                let name = row.name.clone();
                if row.acme.is_some() {
                    return Err(ServiceError::Invalid(format!(
                        "issuer {name} is an ACME CA; it publishes its own revocation information"
                    )));
                }
                let fresh = match (&row.crl_der, row.crl_at) {
                    (Some(der), Some(at)) if at > (now - CRL_REFRESH).unix_timestamp() => {
                        Some(der.clone())
                    }
                    _ => None,
                };
                let der = match fresh {
                    Some(der) => der,
                    None => {
                        let der = regenerate_crl(&tx, &master, &name, now)?;
                        tx.commit()?;
                        der
                    }
                };
                Ok(Crl { issuer: name, der })
            })
            .await
    }

    /// The fleet on one screen.
    pub async fn status(&self) -> Result<certfleet_protocol::message::FleetStatus> {
        use certfleet_protocol::message::FleetStatus;
        let now = self.now().unix_timestamp();
        let mut status = self
            .store
            .call(move |c| -> Result<FleetStatus> {
                let mut s = FleetStatus::default();
                for row in store::cert_list(c, None)? {
                    let i = &row.info;
                    match i.state {
                        CertState::Active => {
                            s.certificates.active += 1;
                            if i.not_after.0 <= now + 30 * 86_400 {
                                s.expiring.within_30d += 1;
                            }
                            if i.not_after.0 <= now + 7 * 86_400 {
                                s.expiring.within_7d += 1;
                            }
                            if row.renewal_blocked.is_some() {
                                s.renewals.blocked += 1;
                            }
                            if row.renewal_error.is_some() {
                                s.renewals.failing += 1;
                            }
                        }
                        CertState::Superseded => s.certificates.superseded += 1,
                        CertState::Revoked => s.certificates.revoked += 1,
                        CertState::Expired => s.certificates.expired += 1,
                    }
                }
                for r in store::rollout_list(c, None)? {
                    match r.state.as_str() {
                        "running" => s.rollouts.running += 1,
                        "paused" => s.rollouts.paused += 1,
                        "halted" => s.rollouts.halted += 1,
                        _ => {}
                    }
                }
                Ok(s)
            })
            .await?;
        for a in self.agent_list().await? {
            if a.connected {
                status.agents.online += 1;
            } else {
                status.agents.offline += 1;
            }
            if a.clock_skew_secs
                .is_some_and(|s| s.abs() > MAX_CLOCK_SKEW_SECS)
            {
                status.agents.clock_skewed += 1;
            }
        }
        status.at_risk = self.at_risk_status().await?;
        Ok(status)
    }

    pub async fn audit_list(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        Ok(self
            .store
            .call(move |c| store::audit_list(c, limit))
            .await?)
    }

    /// Mark certificates past their expiry. Idempotent; run periodically.
    pub async fn expire(&self) -> Result<usize> {
        let now = self.now().unix_timestamp();
        Ok(self
            .store
            .call(move |c| store::expire_certificates(c, now))
            .await?)
    }
}

/// Check an instance's fallback issuers against its primary: each named
/// once, none the primary, `--fallback-after` only with fallback issuers.
/// (That they exist is checked in the store's transaction.)
fn check_fallback_spec(spec: &InstanceSpec) -> Result<()> {
    let mut seen = BTreeSet::new();
    for name in &spec.fallback_issuers {
        if *name == spec.issuer {
            return Err(ServiceError::Invalid(format!(
                "--fallback-issuer {name} is the primary issuer (--issuer); \
                 name a different issuer to fall back to"
            )));
        }
        if !seen.insert(name.as_str()) {
            return Err(ServiceError::Invalid(format!(
                "--fallback-issuer {name} is given twice"
            )));
        }
    }
    if spec.fallback_issuers.len() > MAX_FALLBACK_ISSUERS {
        return Err(ServiceError::Invalid(format!(
            "at most {MAX_FALLBACK_ISSUERS} fallback issuers, not {}",
            spec.fallback_issuers.len()
        )));
    }
    match spec.fallback_after_secs {
        Some(_) if spec.fallback_issuers.is_empty() => Err(ServiceError::Invalid(
            "--fallback-after needs at least one --fallback-issuer".to_string(),
        )),
        Some(0) => Err(ServiceError::Invalid(
            "--fallback-after must be longer than 0s".to_string(),
        )),
        Some(s) if s > MAX_FALLBACK_AFTER_SECS => Err(ServiceError::Invalid(format!(
            "--fallback-after must be at most {} days, not {s}s",
            MAX_FALLBACK_AFTER_SECS / 86_400
        ))),
        _ => Ok(()),
    }
}

/// Store a new application on an instance, inside the caller's
/// transaction: validates names against the instance's quota, enforces one
/// application in flight, moves the instance to `applying`, audits.
pub(crate) fn apply_in_tx(
    tx: &Connection,
    actor: &str,
    instance_id: &str,
    domains: &[String],
    renews: Option<&str>,
    now: i64,
) -> Result<ApplicationInfo> {
    let instance = store::instance_get(tx, instance_id)?.ok_or_else(|| ServiceError::NotFound {
        what: "instance",
        id: instance_id.to_string(),
    })?;
    let names = Service::check_names(&instance.spec, &instance.id, domains)?;
    match instance.state {
        InstanceState::Unused => {}
        InstanceState::Applying => {
            return Err(ServiceError::Conflict(format!(
                "instance {} already has application {} in flight; wait for it \
                 (certfleet application show {1}) before applying again",
                instance.id,
                instance.application.as_deref().unwrap_or("?")
            )))
        }
        other => {
            return Err(ServiceError::Conflict(format!(
                "instance {} is {other} (certificate {}); an instance holds one \
                 certificate — create a new instance to apply again",
                instance.id,
                instance.certificate.as_deref().unwrap_or("-")
            )))
        }
    }
    let app = ApplicationInfo {
        id: store::new_id("app"),
        instance: instance.id.clone(),
        domains: names.iter().map(ToString::to_string).collect(),
        state: ApplicationState::Pending,
        attempts: 0,
        last_error: None,
        certificate: None,
        created_at: Timestamp(now),
        updated_at: Timestamp(now),
    };
    store::application_insert(tx, &app)?;
    if let Some(old) = renews {
        store::application_set_renews(tx, &app.id, old)?;
    }
    store::instance_update(
        tx,
        &instance.id,
        InstanceState::Applying,
        Some(&app.id),
        None,
    )?;
    store::audit_insert(
        tx,
        now,
        &AuditRecord {
            actor,
            action: if renews.is_some() {
                "cert.renew"
            } else {
                "cert.apply"
            },
            target: &instance.id,
            outcome: "ok",
            detail: &format!(
                "application={} domains={}{}",
                app.id,
                app.domains.join(","),
                renews.map(|r| format!(" renews={r}")).unwrap_or_default()
            ),
        },
    )?;
    Ok(app)
}

/// What storing one issued certificate came to: application, certificate,
/// serial, and [`persist_issued`]'s answer.
type Persisted = (String, String, String, Result<Option<bool>>);

/// A batch signed by the worker, waiting to be stored.
struct Signed {
    issued: Vec<(String, Result<CertRow>)>,
    at: i64,
    count: usize,
    claim: std::time::Duration,
    sign: std::time::Duration,
}

/// An application the worker has claimed (moved to `validating`), with what
/// issuing it needs.
struct Claimed {
    app: ApplicationInfo,
    instance: InstanceInfo,
    issuer: Arc<IssuerRow>,
}

/// Claim the built-in-issuer applications among `ids` in one transaction.
/// Returns them, and the ids left for the one-at-a-time path (ACME issuers,
/// or rows that vanished, whose error that path records).
fn claim_builtin(
    conn: &mut Connection,
    ids: Vec<String>,
    now: i64,
) -> Result<(Vec<Claimed>, Vec<String>)> {
    let tx = conn.transaction()?;
    let mut issuers: HashMap<String, Option<Arc<IssuerRow>>> = HashMap::new();
    let mut seen = HashSet::new();
    let mut claimed = Vec::new();
    let mut others = Vec::new();
    for id in ids {
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(mut app) = store::application_get(&tx, &id)? else {
            continue;
        };
        if !app.state.in_flight() {
            continue;
        }
        let Some(instance) = store::instance_get(&tx, &app.instance)? else {
            others.push(id);
            continue;
        };
        let name = store::fallback::application_issuer(&tx, &app.id)?
            .unwrap_or_else(|| instance.spec.issuer.clone());
        let issuer = match issuers.get(&name) {
            Some(i) => i.clone(),
            None => {
                let i = store::issuer_get(&tx, &name)?.map(Arc::new);
                issuers.insert(name, i.clone());
                i
            }
        };
        let Some(issuer) = issuer.filter(|i| i.acme.is_none()) else {
            others.push(id);
            continue;
        };
        app.state = ApplicationState::Validating;
        app.attempts += 1;
        app.updated_at = Timestamp(now);
        store::application_update(&tx, &app)?;
        claimed.push(Claimed {
            app,
            instance,
            issuer,
        });
    }
    tx.commit()?;
    Ok((claimed, others))
}

/// A built-in issuing CA opened for signing, with its chain.
struct LoadedCa {
    ca: BuiltinCa,
    ca_der: rustls_pki_types::CertificateDer<'static>,
    root_der: rustls_pki_types::CertificateDer<'static>,
    crl_url: String,
}

fn crl_url(base: &str, issuer: &str) -> String {
    format!("{base}/crl/{issuer}.crl")
}

fn load_ca(master: &MasterKey, crl_base: &str, issuer: &IssuerRow) -> Result<LoadedCa> {
    let ca_key = master
        .open(&issuer_key_aad(&issuer.name), &issuer.ca_key_sealed)
        .map_err(internal)?;
    Ok(LoadedCa {
        ca: BuiltinCa::load(issuer.key, &issuer.ca_pem, &ca_key).map_err(internal)?,
        ca_der: pem_to_der(&issuer.ca_pem).ok_or_else(|| internal("stored CA unreadable"))?,
        root_der: pem_to_der(&issuer.root_pem).ok_or_else(|| internal("stored root unreadable"))?,
        crl_url: crl_url(crl_base, &issuer.name),
    })
}

/// Issue every application of `chunk` on this (blocking) thread: key,
/// signature, the checks every certificate must pass, sealed key. Each CA is
/// opened once per chunk.
fn issue_chunk(
    master: &MasterKey,
    crl_base: &str,
    chunk: Vec<Claimed>,
    now: OffsetDateTime,
) -> Vec<(String, Result<CertRow>)> {
    let mut cas: HashMap<String, std::result::Result<LoadedCa, String>> = HashMap::new();
    let memo = check::VerifyMemo::default();
    chunk
        .into_iter()
        .map(|c| {
            let ca = cas
                .entry(c.issuer.name.clone())
                .or_insert_with(|| load_ca(master, crl_base, &c.issuer).map_err(|e| e.to_string()));
            // Test seam: an injected outage refuses before anything is signed.
            let r = match (crate::fault::check_issuer(&c.issuer.name), ca) {
                (Err(refused), _) => Err(ServiceError::Conflict(refused)),
                (Ok(()), Ok(ca)) => issue_one(master, ca, &memo, &c, now),
                (Ok(()), Err(e)) => Err(internal(e.clone())),
            };
            (c.app.id, r)
        })
        .collect()
}

fn parse_names(domains: &[String]) -> Result<Vec<SubjectName>> {
    domains
        .iter()
        .map(|d| name::parse(d).map_err(|e| internal(e.to_string())))
        .collect()
}

/// Sign a leaf with a built-in issuer, check it, and seal its key.
fn issue_one(
    master: &MasterKey,
    ca: &LoadedCa,
    memo: &check::VerifyMemo,
    c: &Claimed,
    now: OffsetDateTime,
) -> Result<CertRow> {
    let names = parse_names(&c.app.domains)?;
    let key = LeafKey::generate(c.instance.spec.key)?;
    failpoint("issue.before_sign")?;
    let leaf = ca
        .ca
        .issue(
            &names,
            &key,
            Duration::days(i64::from(c.instance.spec.validity_days)),
            &ca.crl_url,
            now,
        )
        .map_err(|e| ServiceError::Invalid(e.to_string()))?;
    let checked = check::check_issued_memo(
        &leaf.der,
        std::slice::from_ref(&ca.ca_der),
        &ca.root_der,
        &key,
        &names,
        now.unix_timestamp(),
        memo,
    )
    .map_err(|e| internal(format!("issued certificate failed its checks: {e}")))?;
    // Signed at the CA, not yet stored anywhere.
    failpoint("issue.after_sign")?;
    cert_row(
        master,
        &c.app,
        &c.instance,
        &c.issuer.name,
        leaf.pem,
        c.issuer.ca_pem.clone(),
        checked,
        &key.pkcs8_pem,
    )
}

/// A new leaf key: the public half goes into the certificate, the private
/// half (PKCS#8 PEM) is sealed.
struct LeafKey {
    public: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
    pkcs8_pem: zeroize::Zeroizing<String>,
}

impl LeafKey {
    /// EC keys come straight from the provider: rcgen's generator would
    /// serialize the new key and parse it back, re-validating it with a
    /// scalar multiplication that costs about as much as the signature.
    fn generate(key: KeyType) -> Result<LeafKey> {
        use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, KeyPair as _};
        let ec = match key {
            KeyType::EcdsaP256 => Some(&sig::ECDSA_P256_SHA256_ASN1_SIGNING),
            KeyType::EcdsaP384 => Some(&sig::ECDSA_P384_SHA384_ASN1_SIGNING),
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => None,
        };
        let algorithm = crate::issuer::signature_algorithm(key);
        match ec {
            Some(alg) => {
                let pair = EcdsaKeyPair::generate(alg)
                    .map_err(|_| internal("EC key generation failed"))?;
                let pkcs8 = pair
                    .to_pkcs8v1()
                    .map_err(|_| internal("EC key serialization failed"))?;
                Ok(LeafKey {
                    public: pair.public_key().as_ref().to_vec(),
                    algorithm,
                    pkcs8_pem: private_key_pem(pkcs8.as_ref()),
                })
            }
            None => {
                let pair = generate_key(key).map_err(internal)?;
                Ok(LeafKey {
                    public: rcgen::PublicKeyData::der_bytes(&pair).to_vec(),
                    algorithm,
                    pkcs8_pem: zeroize::Zeroizing::new(pair.serialize_pem()),
                })
            }
        }
    }
}

impl rcgen::PublicKeyData for LeafKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

/// PKCS#8 DER as a `PRIVATE KEY` PEM block (64-column lines, as rcgen
/// writes it).
fn private_key_pem(der: &[u8]) -> zeroize::Zeroizing<String> {
    use base64::Engine;
    let b64 = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    let mut pem = zeroize::Zeroizing::new(String::with_capacity(b64.len() + 64));
    pem.push_str("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// The row of a new certificate, its key sealed to the new id.
#[allow(clippy::too_many_arguments)]
fn cert_row(
    master: &MasterKey,
    app: &ApplicationInfo,
    instance: &InstanceInfo,
    issuer: &str,
    leaf_pem: String,
    chain_pem: String,
    checked: check::Checked,
    key_pem: &str,
) -> Result<CertRow> {
    let cert_id = store::new_id("cert");
    let key_sealed = master
        .seal(&key_aad(&cert_id), key_pem.as_bytes())
        .map_err(internal)?;
    Ok(CertRow {
        info: CertInfo {
            id: cert_id,
            instance: instance.id.clone(),
            issuer: issuer.to_string(),
            domains: app.domains.clone(),
            serial: checked.serial,
            fingerprint: checked.fingerprint,
            key: instance.spec.key,
            not_before: Timestamp(checked.not_before),
            not_after: Timestamp(checked.not_after),
            state: CertState::Active,
            renews: None,
            revoked_at: None,
            revocation_reason: None,
            leaf_pem,
            chain_pem,
            renewal: None,
        },
        application: app.id.clone(),
        key_sealed,
        lineage: String::new(),
        renewal_error: None,
        renewal_attempts: 0,
        renewal_next_at: None,
        renewal_blocked: None,
    })
}

/// Store an issued certificate inside the caller's transaction: the
/// certificate, its application and instance moved to `issued`, the audit
/// record, and — for a renewal — the old certificate superseded and a
/// rollout to its deployments. `None` when the application is no longer in
/// flight (cancelled meanwhile: the certificate is discarded); otherwise
/// whether a rollout was started.
fn persist_issued(tx: &Connection, row: &mut CertRow, at: i64) -> Result<Option<bool>> {
    let Some(mut app) = store::application_get(tx, &row.application)? else {
        return Ok(None);
    };
    if !app.state.in_flight() {
        return Ok(None);
    }
    let renews = store::application_renews(tx, &app.id)?;
    let old = match &renews {
        Some(old_id) => store::cert_get(tx, old_id)?,
        None => None,
    };
    row.lineage = old
        .as_ref()
        .map(|o| o.lineage.clone())
        .unwrap_or_else(|| row.info.id.clone());
    row.info.renews = old.as_ref().map(|o| o.info.id.clone());
    store::cert_insert(tx, row, at)?;
    let mut started = false;
    if let Some(old) = &old {
        if old.info.state == CertState::Active {
            store::cert_set_state(tx, &old.info.id, CertState::Superseded)?;
        }
        store::cert_set_renewal(tx, &old.info.id, None, 0, None, None)?;
        crate::renewal::fallback::on_issued(tx, old, row, at)?;
        let targets = store::lineage_deployments(tx, &row.lineage)?;
        if !targets.is_empty() {
            // The strategy of the lineage's last deploy; the default for a
            // lineage deployed before strategies were remembered.
            let strategy = match store::lineage_strategy(tx, &row.lineage)? {
                Some(text) => crate::ops::rollout::parse_strategy(&text)?,
                None => crate::rollout::policy::Strategy::default(),
            };
            crate::ops::rollout::create(
                tx,
                "renewal",
                &row.lineage,
                &row.info.id,
                Some(&old.info.id),
                targets,
                &strategy,
                true,
                "controller",
                at,
            )?;
            started = true;
        }
    }
    // An adopted certificate goes where the discovered one was.
    if crate::ops::inventory::on_issued(tx, &app.id, &row.info.id, &row.lineage, at)? {
        started = true;
    }
    app.state = ApplicationState::Issued;
    app.certificate = Some(row.info.id.clone());
    app.last_error = None;
    app.updated_at = Timestamp(at);
    store::application_update(tx, &app)?;
    store::instance_update(
        tx,
        &app.instance,
        InstanceState::Issued,
        Some(&app.id),
        Some(&row.info.id),
    )?;
    store::audit_insert(
        tx,
        at,
        &AuditRecord {
            actor: "controller",
            action: "cert.issue",
            target: &row.info.id,
            outcome: "ok",
            detail: &format!(
                "application={} serial={} not_after={}",
                app.id, row.info.serial, row.info.not_after
            ),
        },
    )?;
    Ok(Some(started))
}

/// A certificate's public description with its renewal state filled in.
pub(crate) fn with_renewal(conn: &Connection, row: CertRow) -> Result<CertInfo> {
    let renewal = crate::ops::renewal::info(conn, &row)?;
    let mut info = row.info;
    info.renewal = renewal;
    Ok(info)
}

/// Sign and store a new CRL for `issuer` inside the caller's transaction.
fn regenerate_crl(
    conn: &Connection,
    master: &MasterKey,
    issuer: &str,
    now: OffsetDateTime,
) -> Result<Vec<u8>> {
    let row = store::issuer_get(conn, issuer)?.ok_or_else(|| ServiceError::NotFound {
        what: "issuer",
        id: issuer.to_string(),
    })?;
    let key = master
        .open(&issuer_key_aad(issuer), &row.ca_key_sealed)
        .map_err(internal)?;
    let ca = BuiltinCa::load(row.key, &row.ca_pem, &key).map_err(internal)?;
    let revoked = store::revoked_of_issuer(conn, issuer)?;
    let number = row.crl_number + 1;
    let der = ca.crl(&revoked, number, now).map_err(internal)?;
    store::issuer_set_crl(conn, issuer, number, &der, now.unix_timestamp())?;
    Ok(der)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::server::{self, ServeOptions, DB_FILE};
    use certfleet_protocol::message::ValidationType;
    use rcgen::PublicKeyData;

    fn spec(validity_days: u32) -> InstanceSpec {
        InstanceSpec {
            issuer: "ca".into(),
            validation: ValidationType::Dv,
            max_domains: 1,
            wildcard: false,
            validity_days,
            key: KeyType::EcdsaP256,
            renew_before_days: None,
            fallback_issuers: Vec::new(),
            fallback_after_secs: None,
        }
    }

    #[test]
    fn leaf_keys_are_pkcs8_pem_of_the_public_key_they_carry() {
        for kt in [KeyType::EcdsaP256, KeyType::EcdsaP384] {
            let key = LeafKey::generate(kt).unwrap();
            let pem: &str = &key.pkcs8_pem;
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{kt}");
            assert!(pem.lines().all(|l| l.len() <= 64));
            let parsed = rcgen::KeyPair::from_pem(pem).unwrap();
            assert_eq!(
                parsed.subject_public_key_info(),
                key.subject_public_key_info(),
                "{kt}"
            );
            assert_eq!(parsed.algorithm(), crate::issuer::signature_algorithm(kt));
        }
    }

    /// A backlog issued as one batch: every certificate is checked, sealed
    /// and on disk once the batch is stored; the application the CA refuses
    /// fails alone, with a clear error, and frees its instance.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_is_issued_together_and_a_refused_application_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let opts = ServeOptions {
            state_dir: state_dir.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            crl_listen: "127.0.0.1:0".parse().unwrap(),
            crl_url_base: None,
            master_key_file: None,
        };
        let running = server::start(opts, Arc::new(SystemClock)).await.unwrap();
        let svc = running.service.clone();
        svc.issuer_add(
            "t".into(),
            "ca".into(),
            IssuerKind::Builtin,
            KeyType::EcdsaP256,
        )
        .await
        .unwrap();
        // Twenty ordinary instances, and one whose validity would outlive
        // the issuing CA (which the built-in CA refuses).
        let mut instances = Vec::new();
        for i in 0..21 {
            let days = if i == 7 { MAX_VALIDITY_DAYS } else { 90 };
            instances.push(
                svc.instance_create("t".into(), spec(days))
                    .await
                    .unwrap()
                    .id,
            );
        }
        // Store the applications without handing them to the running
        // worker, then put them through the worker's stages as one batch.
        let now = svc.now();
        let ids = {
            let instances = instances.clone();
            svc.store
                .call(move |c| -> Result<Vec<String>> {
                    let tx = c.transaction()?;
                    let mut ids = Vec::new();
                    for (i, inst) in instances.iter().enumerate() {
                        let domains = [format!("host{i}.batch.test")];
                        let app =
                            apply_in_tx(&tx, "t", inst, &domains, None, now.unix_timestamp())?;
                        ids.push(app.id);
                    }
                    tx.commit()?;
                    Ok(ids)
                })
                .await
                .unwrap()
        };
        let (claimed, others) = svc.claim(ids.clone(), now).await;
        assert_eq!((claimed.len(), others.len()), (21, 0));
        let issued = svc.issue_builtin_batch(claimed, now).await;
        assert_eq!(issued.len(), 21);
        svc.store_signed(Signed {
            issued,
            at: now.unix_timestamp(),
            count: 21,
            claim: std::time::Duration::ZERO,
            sign: std::time::Duration::ZERO,
        })
        .await;

        let mut serials = BTreeSet::new();
        for (i, id) in ids.iter().enumerate() {
            let app = svc.application_show(id.clone()).await.unwrap();
            if i == 7 {
                assert_eq!(app.state, ApplicationState::Failed);
                let err = app.last_error.unwrap();
                assert!(err.contains("shorten --validity-days"), "{err}");
                let inst = svc.instance_show(instances[i].clone()).await.unwrap();
                assert_eq!(inst.state, InstanceState::Unused);
                continue;
            }
            assert_eq!(app.state, ApplicationState::Issued, "{:?}", app.last_error);
            let cert = svc.cert_show(app.certificate.unwrap()).await.unwrap();
            assert_eq!(cert.domains, vec![format!("host{i}.batch.test")]);
            serials.insert(cert.serial.clone());
            // The released key is the one the certificate certifies.
            let bundle = svc
                .cert_download("t".into(), cert.id.clone())
                .await
                .unwrap();
            let key = rcgen::KeyPair::from_pem(bundle.key.expose_str().unwrap()).unwrap();
            let leaf = pem_to_der(&bundle.leaf_pem).unwrap();
            let (_, x) = x509_parser::parse_x509_certificate(&leaf).unwrap();
            assert_eq!(x.public_key().raw, key.subject_public_key_info().as_slice());
        }
        assert_eq!(serials.len(), 20, "every certificate has its own serial");
        running.stop().await;

        // Committed, not merely cached: the database on disk holds them.
        let store = Store::open(&state_dir.join(DB_FILE)).unwrap();
        let on_disk = store.call_blocking(|c| store::cert_list(c, None)).unwrap();
        assert_eq!(on_disk.len(), 20);
    }
}
