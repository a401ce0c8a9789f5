//! Renewal: re-applying for certificates before they expire and rolling the
//! renewal out to everywhere the lineage is deployed.
//!
//! The reconciler recomputes from stored state on every pass: for each
//! certificate that heads its lineage and is due ([`policy::due_at`]), with
//! no renewal in flight and no back-off pending, it takes an instance with
//! the same spec — an unused one from the pool, or a new one for the
//! built-in issuers, which cost nothing — and applies, to the primary
//! issuer or to a fallback one ([`fallback`]). The application
//! worker finishes the job: on success the old certificate is `superseded`
//! and a rollout starts (`service.rs`); on failure the old certificate
//! carries the error and the time of the next attempt.

pub mod fallback;
pub mod fallback_policy;
pub mod policy;

use std::sync::Arc;
use std::time::Duration;

use certfleet_protocol::message::{
    ApplicationInfo, CertState, InstanceInfo, InstanceState, IssuerKind, Timestamp,
};
use rusqlite::Connection;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::{Result, ServiceError};
pub use crate::ops::renewal::{due_at, info};
use crate::service::Mode;
use crate::service::{apply_in_tx, Service};
use crate::store::{self, AuditRecord, CertRow};

/// How often due certificates are looked for without a poke.
pub const TICK: Duration = Duration::from_secs(2);

/// Start renewing `cert` inside the caller's transaction: find or create
/// an instance, store the application. `Ok(None)` when renewal is blocked
/// (recorded on the certificate).
fn renew_in_tx(
    conn: &Connection,
    cert: &CertRow,
    actor: &str,
    now: i64,
) -> Result<Option<ApplicationInfo>> {
    if let Some(app) = store::renewal_in_flight(conn, &cert.info.id)? {
        return Err(ServiceError::Conflict(format!(
            "certificate {} is already being renewed by application {app}",
            cert.info.id
        )));
    }
    let old_instance = store::instance_get(conn, &cert.info.instance)?
        .ok_or_else(|| crate::error::internal("instance of certificate vanished"))?;
    let primary = store::issuer_get(conn, &old_instance.spec.issuer)?
        .ok_or_else(|| crate::error::internal("issuer of certificate vanished"))?;
    // The primary, or a fallback issuer when the primary keeps failing.
    let choice = fallback::choose(conn, cert, &old_instance.spec, actor, now)?;
    // Built-in issuers are free: an instance is bought on the fly when the
    // pool is empty (for a probe of an ACME primary without one: apply to
    // the built-in fallback instead).
    let free = |name: &str| -> Result<bool> {
        Ok(primary.kind == IssuerKind::Builtin
            || store::issuer_get(conn, name)?.is_some_and(|i| i.kind == IssuerKind::Builtin))
    };
    let pooled = store::instance_from_pool(conn, &old_instance.spec)?;
    let chosen = match (&pooled, choice.otherwise) {
        (None, Some(other)) if !free(&choice.issuer)? && free(&other)? => other,
        _ => choice.issuer,
    };
    let instance = match pooled {
        Some(id) => id,
        None if free(&chosen)? => {
            // Built-in issuers are free: buy the same spec again.
            let instance = InstanceInfo {
                id: store::new_id("inst"),
                spec: old_instance.spec.clone(),
                state: InstanceState::Unused,
                created_at: Timestamp(now),
                application: None,
                certificate: None,
                issuing: None,
            };
            store::instance_insert(conn, &instance)?;
            store::audit_insert(
                conn,
                now,
                &AuditRecord {
                    actor,
                    action: "instance.create",
                    target: &instance.id,
                    outcome: "ok",
                    detail: &format!("for renewal of {}", cert.info.id),
                },
            )?;
            instance.id
        }
        None => {
            let why = "no instance: no unused instance with this spec is left in the pool";
            if cert.renewal_blocked.as_deref() != Some(why) {
                store::audit_insert(
                    conn,
                    now,
                    &AuditRecord {
                        actor,
                        action: "cert.renew",
                        target: &cert.info.id,
                        outcome: "blocked",
                        detail: why,
                    },
                )?;
            }
            store::cert_set_renewal(
                conn,
                &cert.info.id,
                cert.renewal_error.as_deref(),
                cert.renewal_attempts,
                cert.renewal_next_at,
                Some(why),
            )?;
            return Ok(None);
        }
    };
    let app = apply_in_tx(
        conn,
        actor,
        &instance,
        &cert.info.domains,
        Some(&cert.info.id),
        now,
    )?;
    if chosen != old_instance.spec.issuer {
        store::fallback::application_set_issuer(conn, &app.id, &chosen)?;
    }
    Ok(Some(app))
}

impl Service {
    /// `certfleet cert renew ID`: renew now, due or not.
    pub async fn cert_renew(
        &self,
        actor: String,
        id: String,
        mode: Mode,
    ) -> Result<ApplicationInfo> {
        let now = self.now().unix_timestamp();
        let app = self
            .store
            .call(move |c| -> Result<ApplicationInfo> {
                let tx = c.transaction()?;
                let cert = store::cert_get(&tx, &id)?.ok_or_else(|| ServiceError::NotFound {
                    what: "certificate",
                    id: id.clone(),
                })?;
                if cert.info.state != CertState::Active {
                    return Err(ServiceError::Conflict(format!(
                        "certificate {id} is {}; only active certificates are renewed",
                        cert.info.state
                    )));
                }
                let app = renew_in_tx(&tx, &cert, &actor, now)?.ok_or_else(|| {
                    ServiceError::Conflict(format!(
                        "renewal of {id} is blocked: no unused instance with its spec is left; \
                         purchase one with `certfleet instance create`"
                    ))
                })?;
                mode.finish(tx)?;
                Ok(app)
            })
            .await?;
        if mode == Mode::Commit {
            self.start_application(&app.id);
        }
        Ok(app)
    }

    /// Every lineage renewing from a fallback issuer, with the instance of
    /// its newest certificate, the issuer and since when (longest first).
    pub async fn issuing_from_fallback(&self) -> Result<Vec<store::fallback::OnFallback>> {
        Ok(self.store.call(|c| store::fallback::on_fallback(c)).await?)
    }

    /// One pass: start renewals of every due certificate.
    pub async fn reconcile_renewals(&self) -> Result<usize> {
        let now = self.now().unix_timestamp();
        let started = self
            .store
            .call(move |c| -> Result<Vec<String>> {
                let tx = c.transaction()?;
                let mut started = Vec::new();
                for cert in store::renewal_candidates(&tx, now)? {
                    if now < due_at(&tx, &cert)? {
                        continue;
                    }
                    if cert.renewal_next_at.is_some_and(|at| now < at) {
                        continue;
                    }
                    if store::renewal_in_flight(&tx, &cert.info.id)?.is_some() {
                        continue;
                    }
                    if let Some(app) = renew_in_tx(&tx, &cert, "controller", now)? {
                        info!(certificate = %cert.info.id, application = %app.id, "renewal due; applying");
                        started.push(app.id);
                    }
                }
                tx.commit()?;
                Ok(started)
            })
            .await?;
        for app in &started {
            self.start_application(app);
        }
        Ok(started.len())
    }

    /// Look for due renewals on every change and every [`TICK`].
    pub async fn run_renewals(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.reconcile_renewals().await {
                warn!(error = %e.to_rpc().message, "renewal pass failed");
            }
            tokio::select! {
                _ = self.renewal_wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
