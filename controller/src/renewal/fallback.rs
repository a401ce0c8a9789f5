//! Fallback issuers inside renewal's transactions: which issuer a renewal
//! application goes to, and what an application's outcome means for its
//! lineage. [`fallback_policy`](super::fallback_policy) decides; this
//! module loads and stores the lineage's state and audits every switch.
//!
//! Invariants: a lineage whose instance names no fallback issuer is never
//! touched (no row, no extra query beyond its instance); a switch is stored
//! and audited in the transaction that makes it; the issuer an application
//! goes to is recorded on the application when it is not the instance's.

use certfleet_protocol::message::InstanceSpec;
use rusqlite::Connection;
use tracing::info;

use super::fallback_policy::{self as policy, Pick, State, Window};
use crate::error::Result;
use crate::store::fallback::{self as rows, LineageIssuer};
use crate::store::{self, AuditRecord, CertRow};

/// Audit action of a lineage moving from one issuer to another.
pub const SWITCH_ACTION: &str = "cert.issuer_switch";

/// The issuer chain of a spec: the primary, then its fallbacks in order.
pub fn chain(spec: &InstanceSpec) -> Vec<String> {
    let mut chain = Vec::with_capacity(1 + spec.fallback_issuers.len());
    chain.push(spec.issuer.clone());
    chain.extend(spec.fallback_issuers.iter().cloned());
    chain
}

/// The spec's `fallback_after`, in seconds.
pub fn fallback_after(spec: &InstanceSpec) -> i64 {
    spec.fallback_after_secs
        .map(|s| i64::try_from(s).unwrap_or(i64::MAX))
        .unwrap_or(policy::DEFAULT_FALLBACK_AFTER_SECS)
}

/// Whether an application's error is a CA's rate-limit refusal (the
/// wording of `issuer::acme::AcmeError::RateLimited`).
pub fn is_rate_limit(message: &str) -> bool {
    message.contains("rate limiting")
}

/// The stored state of `lineage` as indexes into `chain` (an issuer no
/// longer in the chain counts as the primary).
fn load(conn: &Connection, lineage: &str, chain: &[String]) -> Result<Option<State>> {
    Ok(rows::get(conn, lineage)?.map(|row| State {
        active: chain
            .iter()
            .position(|n| *n == row.active_issuer)
            .unwrap_or(0),
        active_since: row.active_since,
        fallback_since: row.fallback_since,
        failing_since: row.failing_since,
        rate_limited: row.rate_limited,
    }))
}

/// The state of a lineage that has no row yet: on its primary since its
/// first certificate.
fn initial(conn: &Connection, lineage: &str, now: i64) -> Result<State> {
    let since = store::cert_get(conn, lineage)?
        .map(|c| c.info.not_before.0)
        .unwrap_or(now);
    Ok(State::primary(since))
}

fn save(conn: &Connection, lineage: &str, chain: &[String], s: &State, at: i64) -> Result<()> {
    rows::put(
        conn,
        &LineageIssuer {
            lineage: lineage.to_string(),
            active_issuer: chain[s.active.min(chain.len() - 1)].clone(),
            active_since: s.active_since,
            fallback_since: s.fallback_since,
            failing_since: s.failing_since,
            rate_limited: s.rate_limited,
        },
        at,
    )?;
    Ok(())
}

fn window(conn: &Connection, cert: &CertRow) -> Result<Window> {
    Ok(Window {
        due_at: super::due_at(conn, cert)?,
        not_after: cert.info.not_after.0,
    })
}

#[allow(clippy::too_many_arguments)]
fn audit_switch(
    conn: &Connection,
    actor: &str,
    cert: &str,
    lineage: &str,
    from: &str,
    to: &str,
    reason: &str,
    now: i64,
) -> Result<()> {
    info!(certificate = %cert, %lineage, %from, %to, %reason, "renewals switch issuer");
    store::audit_insert(
        conn,
        now,
        &AuditRecord {
            actor,
            action: SWITCH_ACTION,
            target: cert,
            outcome: "ok",
            detail: &format!("lineage={lineage} from={from} to={to} reason={reason}"),
        },
    )?;
    Ok(())
}

/// Where the next renewal application goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The issuer to apply to.
    pub issuer: String,
    /// For a probe of the primary: the active fallback issuer, to apply to
    /// instead when the primary cannot be applied to at all (no instance).
    pub otherwise: Option<String>,
}

/// The issuer the next renewal application of `cert` (whose instance has
/// `spec`) goes to. A switch is stored and audited here.
pub fn choose(
    conn: &Connection,
    cert: &CertRow,
    spec: &InstanceSpec,
    actor: &str,
    now: i64,
) -> Result<Choice> {
    let chain = chain(spec);
    if chain.len() <= 1 {
        return Ok(Choice {
            issuer: spec.issuer.clone(),
            otherwise: None,
        });
    }
    let state = match load(conn, &cert.lineage, &chain)? {
        Some(s) => s,
        None => initial(conn, &cert.lineage, now)?,
    };
    let fresh = cert.renewal_attempts == 0;
    let pick = policy::pick(
        chain.len(),
        &state,
        fresh,
        window(conn, cert)?,
        fallback_after(spec),
        now,
    );
    match pick {
        Pick::Switch(to, reason) => {
            let next = policy::switched(&state, to, now);
            save(conn, &cert.lineage, &chain, &next, now)?;
            audit_switch(
                conn,
                actor,
                &cert.info.id,
                &cert.lineage,
                &chain[state.active.min(chain.len() - 1)],
                &chain[to],
                reason.as_str(),
                now,
            )?;
        }
        Pick::ProbePrimary => {
            info!(certificate = %cert.info.id, primary = %chain[0], "renewing from a fallback issuer; trying the primary first");
        }
        Pick::Active(_) => {}
    }
    Ok(Choice {
        issuer: chain[pick.index()].clone(),
        otherwise: (pick == Pick::ProbePrimary)
            .then(|| chain[state.active.min(chain.len() - 1)].clone()),
    })
}

/// Record a failed renewal application `app` of `old` and return the delay
/// before the next attempt, given `base` (renewal's delay without fallback
/// issuers).
pub fn on_failure(
    conn: &Connection,
    app: &str,
    old: &CertRow,
    message: &str,
    now: i64,
    base: i64,
) -> Result<i64> {
    let Some(instance) = store::instance_get(conn, &old.info.instance)? else {
        return Ok(base);
    };
    let spec = &instance.spec;
    let chain = chain(spec);
    if chain.len() <= 1 {
        return Ok(base);
    }
    let used_name = rows::application_issuer(conn, app)?.unwrap_or_else(|| spec.issuer.clone());
    let used = chain.iter().position(|n| *n == used_name).unwrap_or(0);
    let state = match load(conn, &old.lineage, &chain)? {
        Some(s) => s,
        None => initial(conn, &old.lineage, now)?,
    };
    let next = policy::failed(&state, used, is_rate_limit(message), now);
    if next != state || rows::get(conn, &old.lineage)?.is_none() {
        save(conn, &old.lineage, &chain, &next, now)?;
    }
    Ok(policy::retry_delay(
        chain.len(),
        &next,
        used,
        window(conn, old)?,
        fallback_after(spec),
        now,
        base,
    ))
}

/// Record that `new` (issued by `new.info.issuer`) renewed `old`: the
/// issuer's failures are forgotten, and a probe of the primary that issued
/// moves the lineage back to it (audited).
pub fn on_issued(conn: &Connection, old: &CertRow, new: &CertRow, at: i64) -> Result<()> {
    let Some(instance) = store::instance_get(conn, &old.info.instance)? else {
        return Ok(());
    };
    let chain = chain(&instance.spec);
    if chain.len() <= 1 {
        return Ok(());
    }
    // No row: never failed over and never failed, nothing to remember.
    let Some(state) = load(conn, &old.lineage, &chain)? else {
        return Ok(());
    };
    let Some(used) = chain.iter().position(|n| *n == new.info.issuer) else {
        return Ok(());
    };
    let (next, moved) = policy::issued(&state, used, at);
    if next == state {
        return Ok(());
    }
    save(conn, &old.lineage, &chain, &next, at)?;
    if moved {
        audit_switch(
            conn,
            "controller",
            &new.info.id,
            &old.lineage,
            &chain[state.active.min(chain.len() - 1)],
            &chain[used],
            "the primary issued again",
            at,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    use certfleet_protocol::message::{
        ApplicationState, CertInfo, CertState, IssuerKind, KeyType, ValidationType,
    };
    use time::OffsetDateTime;

    use super::*;
    use crate::clock::Clock;
    use crate::server::{self, ServeOptions};
    use crate::service::Service;

    /// The wall clock moved by a number of seconds the test sets.
    #[derive(Default)]
    struct MovedClock(AtomicI64);

    impl Clock for MovedClock {
        fn now(&self) -> OffsetDateTime {
            OffsetDateTime::now_utc() + time::Duration::seconds(self.0.load(Ordering::SeqCst))
        }
    }

    async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
        for _ in 0..600 {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    async fn renewal_of(svc: &Service, old: &str) -> Option<CertInfo> {
        svc.cert_list(None)
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.renews.as_deref() == Some(old))
    }

    /// The whole rule on a running controller, with the injected outage as
    /// the primary's failure: renewals stay on a refusing primary until
    /// fallback-after, then the fallback issues and the switch is audited;
    /// once the primary accepts again, the next renewal goes back to it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn renewals_fail_over_and_come_back_to_the_primary() {
        // Issuer names unique to this test: the outage is process-wide.
        let (main, spare) = ("fbtest-main", "fbtest-spare");
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(MovedClock::default());
        let running = server::start(
            ServeOptions {
                state_dir: dir.path().join("state"),
                listen: "127.0.0.1:0".parse().unwrap(),
                crl_listen: "127.0.0.1:0".parse().unwrap(),
                crl_url_base: None,
                master_key_file: None,
            },
            clock.clone(),
        )
        .await
        .unwrap();
        let svc = running.service.clone();
        for name in [main, spare] {
            svc.issuer_add(
                "t".into(),
                name.into(),
                IssuerKind::Builtin,
                KeyType::EcdsaP256,
            )
            .await
            .unwrap();
        }
        let inst = svc
            .instance_create(
                "t".into(),
                InstanceSpec {
                    issuer: main.into(),
                    validation: ValidationType::Dv,
                    max_domains: 1,
                    wildcard: false,
                    validity_days: 1,
                    key: KeyType::EcdsaP256,
                    renew_before_days: None,
                    fallback_issuers: vec![spare.into()],
                    fallback_after_secs: Some(3600),
                },
            )
            .await
            .unwrap();
        let app = svc
            .cert_apply("t".into(), inst.id.clone(), vec!["fb.example.test".into()])
            .await
            .unwrap();
        let first = wait_for("the first certificate", async || {
            let a = svc.application_show(app.id.clone()).await.unwrap();
            (a.state == ApplicationState::Issued).then_some(a.certificate?)
        })
        .await;

        // The primary refuses; renewal comes due (a 1-day certificate renews
        // 16 h in) and fails against it.
        crate::fault::set_issuer_outage(main, true);
        clock.0.store(17 * 3600, Ordering::SeqCst);
        let shown = wait_for("the refused renewal", async || {
            let c = svc.cert_show(first.clone()).await.unwrap();
            c.renewal.filter(|r| r.attempts > 0)
        })
        .await;
        let error = shown.last_error.unwrap();
        assert_eq!(error, format!("issuer {main} refused: injected outage"));
        let status = svc.instance_show(inst.id.clone()).await.unwrap().issuing;
        let status = status.expect("a failing lineage reports its issuer");
        assert_eq!(status.active_issuer, main);
        assert!(status.failing_since.is_some());
        assert_eq!(status.fallback_since, None);
        // The next attempt is planned no later than the switch.
        let next = shown.next_attempt_at.unwrap().0;
        let failing = status.failing_since.unwrap().0;
        assert!(next <= failing + 3600, "{next} vs {failing}");
        assert!(renewal_of(&svc, &first).await.is_none());

        // Past fallback-after: the spare issues, the lineage continues.
        clock.0.store(17 * 3600 + 3601, Ordering::SeqCst);
        let second = wait_for("the renewal from the spare", async || {
            renewal_of(&svc, &first).await
        })
        .await;
        assert_eq!(second.issuer, spare);
        assert_eq!(
            svc.cert_show(first.clone()).await.unwrap().state,
            CertState::Superseded
        );
        let status = svc.instance_show(inst.id.clone()).await.unwrap().issuing;
        let status = status.unwrap();
        assert_eq!(status.active_issuer, spare);
        assert_eq!(status.lineage, first);
        assert!(status.fallback_since.is_some());
        assert_eq!(status.failing_since, None);
        let on = svc.issuing_from_fallback().await.unwrap();
        assert_eq!(on.len(), 1);
        assert_eq!(on[0].lineage, first);
        assert_eq!(on[0].instance.as_deref(), Some(second.instance.as_str()));
        assert_eq!(on[0].active_issuer, spare);

        // The primary is back; the next renewal (more than fallback-after
        // after the switch) tries it first, and it issues.
        crate::fault::set_issuer_outage(main, false);
        let due = super::super::policy::due_at(
            &second.id,
            second.not_before.0,
            second.not_after.0,
            None,
            None,
        );
        let wall = OffsetDateTime::now_utc().unix_timestamp();
        clock.0.store(due - wall + 60, Ordering::SeqCst);
        let third = wait_for("the renewal from the primary", async || {
            renewal_of(&svc, &second.id).await
        })
        .await;
        assert_eq!(third.issuer, main);
        let status = svc.instance_show(inst.id.clone()).await.unwrap().issuing;
        let status = status.unwrap();
        assert_eq!(status.active_issuer, main);
        assert_eq!(status.fallback_since, None);
        assert!(svc.issuing_from_fallback().await.unwrap().is_empty());

        // Both switches are in the audit log.
        let audit = svc.audit_list(1000).await.unwrap();
        let switches: Vec<_> = audit
            .iter()
            .filter(|a| a.action == SWITCH_ACTION)
            .map(|a| a.detail.clone())
            .collect();
        assert_eq!(switches.len(), 2, "{switches:?}");
        assert!(switches.iter().any(|d| d.contains(&format!(
            "from={main} to={spare} reason=failing for longer than fallback-after"
        ))));
        assert!(switches.iter().any(|d| d.contains(&format!(
            "from={spare} to={main} reason=the primary issued again"
        ))));
        running.stop().await;
    }
}
