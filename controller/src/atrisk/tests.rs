//! The at-risk pass on a real store and a real issued certificate, driven
//! the way a benchmark drives it: a manual clock and passes called
//! directly. Only the application worker runs (no renewal or at-risk
//! loop), so what the test sees is what its own passes computed.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use certfleet_protocol::message::{
    ApplicationState, AtRiskReason, DeploymentStatus, InstallReport, InstanceSpec, IssuerKind,
    KeyType, ValidationType,
};
use time::OffsetDateTime;

use crate::clock::Clock;
use crate::server::{open_state, ServeOptions};
use crate::service::Service;
use crate::store;

/// A clock that moves only when told.
struct ManualClock(AtomicI64);

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        // Test times are well inside OffsetDateTime's range.
        OffsetDateTime::from_unix_timestamp(self.0.load(Ordering::SeqCst)).expect("valid time")
    }
}

const DAY: i64 = 86_400;

/// Audit entries of `action` on `target`.
async fn audited(svc: &Service, action: &str, target: &str) -> usize {
    svc.audit_list(10_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.action == action && e.target == target)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_rise_and_clear_once_with_the_since_of_their_cause() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ServeOptions {
        state_dir: dir.path().join("state"),
        listen: "127.0.0.1:0".parse().unwrap(),
        crl_listen: "127.0.0.1:0".parse().unwrap(),
        crl_url_base: None,
        master_key_file: None,
    };
    let t0 = OffsetDateTime::now_utc().unix_timestamp();
    let clock = Arc::new(ManualClock(AtomicI64::new(t0)));
    let state = open_state(&opts, clock.as_ref()).unwrap();
    let (svc, rx) = Service::new(
        state.store,
        state.master,
        clock.clone(),
        state.identity,
        "http://127.0.0.1:1".into(),
    );
    let worker = tokio::spawn(svc.clone().run_applications(rx));

    // A 9-day certificate: renew_before is 3 days, half of it 1.5.
    svc.issuer_add(
        "t".into(),
        "ca".into(),
        IssuerKind::Builtin,
        KeyType::EcdsaP256,
    )
    .await
    .unwrap();
    let spec = InstanceSpec {
        issuer: "ca".into(),
        validation: ValidationType::Dv,
        max_domains: 1,
        wildcard: false,
        validity_days: 9,
        key: KeyType::EcdsaP256,
        renew_before_days: None,
        fallback_issuers: Vec::new(),
        fallback_after_secs: None,
    };
    let inst = svc.instance_create("t".into(), spec).await.unwrap();
    let app = svc
        .cert_apply("t".into(), inst.id, vec!["a.example.test".into()])
        .await
        .unwrap();
    let mut cert = None;
    for _ in 0..600 {
        let a = svc.application_show(app.id.clone()).await.unwrap();
        if a.state == ApplicationState::Issued {
            cert = a.certificate;
            break;
        }
        assert_ne!(a.state, ApplicationState::Failed, "{:?}", a.last_error);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cert = svc.cert_show(cert.expect("issued")).await.unwrap();
    let due = cert.renewal.as_ref().unwrap().due_at.0;
    let renew_before = (cert.not_after.0 - cert.not_before.0) / 3;
    let half = cert.not_after.0 - renew_before / 2;

    // One agent, enrolled at t0 and never seen since, serving it.
    let cert_id = cert.id.clone();
    let deployment = svc
        .store
        .call(move |c| -> Result<String, store::StoreError> {
            let row = crate::fleet::new_agent_row("agent-1", "web-1", &[], t0);
            store::agent_insert(c, &row)?;
            let dep = store::deployment_upsert(c, "agent-1", "web", &cert_id, &cert_id, t0)?;
            let report = InstallReport {
                deployment: dep.clone(),
                certificate: cert_id.clone(),
                status: DeploymentStatus::Installed,
                served_fingerprint: None,
                error: None,
                duration_ms: 1,
            };
            assert!(store::deployment_report(c, "agent-1", &report, t0)?);
            Ok(dep)
        })
        .await
        .unwrap();
    let set = |t: i64| clock.0.store(t, Ordering::SeqCst);

    assert_eq!(svc.reconcile_at_risk().await.unwrap(), 0);
    // Offline long past its deadline, but the certificate is not due yet.
    set(due - 1);
    assert_eq!(svc.reconcile_at_risk().await.unwrap(), 0);

    // Past due with the agent away: at risk since the due time, not since
    // the pass noticed (an hour later).
    set(due + 3600);
    assert_eq!(svc.reconcile_at_risk().await.unwrap(), 1);
    let items = svc.at_risk_items().await.unwrap();
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(item.reason, AtRiskReason::AgentOffline);
    assert_eq!(item.since.0, due);
    assert_eq!(
        (
            item.agent_name.as_str(),
            item.target.as_str(),
            item.certificate.as_str()
        ),
        ("web-1", "web", cert.id.as_str())
    );
    assert!(
        item.reason_text.starts_with("agent offline since "),
        "{item:?}"
    );
    assert_eq!(item.domains, vec!["a.example.test".to_string()]);
    // Passes that find the same thing change nothing and audit nothing.
    for _ in 0..3 {
        assert_eq!(svc.reconcile_at_risk().await.unwrap(), 1);
    }
    assert_eq!(svc.at_risk_items().await.unwrap(), items);
    assert_eq!(audited(&svc, "at_risk.raise", &deployment).await, 1);

    // The agent connects: nothing failed any more, and half the window is
    // still ahead, so the item clears.
    let (_session, _events) = svc.sessions.register("agent-1");
    assert_eq!(svc.reconcile_at_risk().await.unwrap(), 0);
    assert_eq!(audited(&svc, "at_risk.clear", &deployment).await, 1);

    // Half the window left (nothing renews it here): at risk since that
    // moment exactly, whenever the pass runs; `status` shows it.
    set(half + 5 * 3600);
    assert_eq!(svc.reconcile_at_risk().await.unwrap(), 1);
    let status = svc.status().await.unwrap();
    assert_eq!(status.at_risk.total, 1);
    assert_eq!(status.at_risk.now.0, half + 5 * 3600);
    let item = &status.at_risk.items[0];
    assert_eq!(item.reason, AtRiskReason::HalfWindowLeft);
    assert_eq!(item.since.0, half);
    assert!(item.reason_text.contains("3 d renewal window"), "{item:?}");
    assert_eq!(audited(&svc, "at_risk.raise", &deployment).await, 2);

    // Past expiry it stays, with the same since.
    set(cert.not_after.0 + DAY);
    assert_eq!(svc.reconcile_at_risk().await.unwrap(), 1);
    assert_eq!(svc.at_risk_items().await.unwrap()[0].since.0, half);

    // The deployment goes away with its agent: the item clears.
    svc.store
        .call(move |c| store::agent_remove(c, "agent-1", t0 + 10 * DAY))
        .await
        .unwrap();
    assert_eq!(svc.reconcile_at_risk().await.unwrap(), 0);
    assert!(svc.at_risk_items().await.unwrap().is_empty());
    assert_eq!(audited(&svc, "at_risk.clear", &deployment).await, 2);
    assert_eq!(audited(&svc, "at_risk.raise", &deployment).await, 2);
    worker.abort();
}

/// `store::at_risk::served_deployments` leaves out certificates before
/// `not_after − ⌈0.35 × lifetime⌉`; renewal is never due earlier.
#[test]
fn renewal_is_never_due_before_the_bound_the_pass_filters_on() {
    use crate::renewal::policy::due_at;
    let nb = 1_800_000_000;
    for days in [1, 6, 9, 45, 90, 365, 3650] {
        for extra in [0, 7, 300] {
            let na = nb + days * DAY + extra;
            let bound = na - ((na - nb) * 7 + 19) / 20;
            for configured in [None, Some(DAY), Some(365 * DAY)] {
                for n in 0..50 {
                    let due = due_at(&format!("cert-{n}"), nb, na, configured, None);
                    assert!(
                        due >= bound,
                        "{days} d + {extra} s, {configured:?}: {due} < {bound}"
                    );
                }
            }
        }
    }
}
