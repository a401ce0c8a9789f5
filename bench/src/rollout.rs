//! `rollout`: one certificate to every agent of a connected fleet in a
//! single wave.
//!
//! With `--agents` (10k) simulated agents connected and idle, the bench
//! deploys a built-in-CA certificate with canary 0 and one wave of 100 %
//! (`certfleet deploy CERT --to role=bench --target files --canary 0
//! --wave 100%`, sent as the same RPC). It measures, from the deploy
//! request: each agent's install-and-acknowledge time (the controller
//! commits a report before acknowledging it), the time until every
//! acknowledgement is persisted, the time until the controller itself
//! shows the rollout completed (`rollout show`), and the controller's CPU
//! per push. Afterwards every agent's installed file is checked for the
//! deployed certificate.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use certfleet_protocol::message::{
    InstanceSpec, IssuerKind, KeyType, Request, Response, StrategySpec, ValidationType,
};
use serde_json::json;

use crate::fleet_sim::{installed_fingerprint, Rig, DOMAIN, LABEL, TARGET};
use crate::serve::{cpu_seconds, cpu_split};

pub(crate) struct Options {
    pub(crate) agents: usize,
    pub(crate) endpoints: usize,
    pub(crate) ramp_concurrency: usize,
}

/// Issue a certificate for [`DOMAIN`] from a new built-in CA; returns its
/// id and fingerprint.
async fn issue(rig: &Rig) -> Result<(String, String)> {
    let admin = &rig.admin;
    admin
        .call(&Request::IssuerAdd {
            name: "bench".into(),
            kind: IssuerKind::Builtin,
            key: KeyType::EcdsaP256,
        })
        .await?;
    let Response::Instance(inst) = admin
        .call(&Request::InstanceCreate(InstanceSpec {
            issuer: "bench".into(),
            validation: ValidationType::Dv,
            max_domains: 1,
            wildcard: false,
            validity_days: 90,
            key: KeyType::EcdsaP256,
            renew_before_days: None,
            fallback_issuers: Vec::new(),
            fallback_after_secs: None,
        }))
        .await?
    else {
        bail!("unexpected answer to InstanceCreate");
    };
    let Response::Application(app) = admin
        .call(&Request::CertApply {
            instance: inst.id,
            domains: vec![DOMAIN.into()],
        })
        .await?
    else {
        bail!("unexpected answer to CertApply");
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let cert = loop {
        let Response::Application(a) = admin
            .call(&Request::ApplicationShow { id: app.id.clone() })
            .await?
        else {
            bail!("unexpected answer to ApplicationShow");
        };
        if !a.state.in_flight() {
            break a
                .certificate
                .with_context(|| format!("issuance failed: {:?}", a.last_error))?;
        }
        ensure!(Instant::now() < deadline, "issuance took over 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let Response::Certificate(info) = admin.call(&Request::CertShow { id: cert }).await? else {
        bail!("unexpected answer to CertShow");
    };
    Ok((info.id, info.fingerprint))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

pub(crate) async fn run(results: &Path, o: Options) -> Result<()> {
    let total = Instant::now();
    let mut rig = Rig::new(o.agents, o.endpoints).await?;
    let (cert, fingerprint) = issue(&rig).await?;
    let t = Instant::now();
    rig.fleet.start(o.agents, o.ramp_concurrency);
    rig.fleet
        .wait_ready(o.agents, Duration::from_secs(150))
        .await?;
    let ramp = t.elapsed();
    eprintln!(
        "rollout: {} agents connected in {ramp:.1?}; deploying",
        o.agents
    );
    let pid = rig.serve.runtime().pid;

    // The idle cost of the connected fleet, subtracted from the rollout's.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_t = Instant::now();
    let idle0 = cpu_seconds(pid)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rate = (cpu_seconds(pid)? - idle0) / idle_t.elapsed().as_secs_f64();

    rig.fleet.stats.expect(&fingerprint);
    let (u0, s0) = cpu_split(pid)?;
    let start = Instant::now();
    let Response::Rollout(created) = rig
        .admin
        .call(&Request::DeployRollout {
            certificate: cert.clone(),
            selector: format!("{}={}", LABEL.0, LABEL.1),
            target: TARGET.into(),
            strategy: StrategySpec {
                canary: 0,
                wave: "100%".into(),
                pause_secs: 0,
                max_failures: 0,
                offline_deadline_secs: 600,
            },
        })
        .await?
    else {
        bail!("unexpected answer to DeployRollout");
    };
    let deploy_rpc = start.elapsed();
    ensure!(
        created.targets.len() == o.agents,
        "the rollout has {} targets, not {}",
        created.targets.len(),
        o.agents
    );
    let deadline = start + Duration::from_secs(150);
    while rig.fleet.stats.acked.load(Ordering::SeqCst) < o.agents {
        ensure!(
            Instant::now() < deadline,
            "only {} of {} agents acknowledged within 150 s; last error: {:?}",
            rig.fleet.stats.acked.load(Ordering::SeqCst),
            o.agents,
            rig.fleet
                .stats
                .last_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let all_acked = start.elapsed();
    let (u1, s1) = cpu_split(pid)?;
    // What the controller itself shows: poll `rollout show` until the
    // reconciler has folded every report in.
    let (completed, installed) = loop {
        let Response::Rollout(r) = rig
            .admin
            .call(&Request::RolloutShow {
                id: created.id.clone(),
            })
            .await?
        else {
            bail!("unexpected answer to RolloutShow");
        };
        if r.state != "running" {
            let installed = r.targets.iter().filter(|t| t.state == "installed").count();
            ensure!(
                r.state == "completed",
                "rollout ended {}: {:?}",
                r.state,
                r.reason
            );
            break (start.elapsed(), installed);
        }
        ensure!(
            Instant::now() < deadline,
            "the rollout was still running after 150 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (u2, s2) = cpu_split(pid)?;

    let mut lat = rig.fleet.stats.ack_times(start);
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    // What an operator would check on each host: the file holds the
    // deployed certificate.
    let agents = rig.fleet.agents().to_vec();
    let want = fingerprint.clone();
    let verified = tokio::task::spawn_blocking(move || {
        agents
            .iter()
            .filter(|a| installed_fingerprint(&a.fullchain()).ok().as_deref() == Some(&want))
            .count()
    })
    .await?;
    ensure!(
        verified == o.agents,
        "only {verified} of {} agents hold the deployed certificate",
        o.agents
    );
    let cpu_acked = (u1 - u0) + (s1 - s0);
    let cpu_completed = (u2 - u0) + (s2 - s0);
    let idle_part = idle_rate * all_acked.as_secs_f64();
    let n = o.agents as f64;
    crate::record(
        results,
        json!({
            "bench": "rollout",
            "agents": o.agents,
            "all_acked_persisted_secs": (all_acked.as_secs_f64() * 1000.0).round() / 1000.0,
            "rollout_completed_secs": (completed.as_secs_f64() * 1000.0).round() / 1000.0,
            "deploy_rpc_ms": ms(deploy_rpc),
            "p50_ms": ms(pct(0.5)),
            "p99_ms": ms(pct(0.99)),
            "max_ms": ms(pct(1.0)),
            "controller_cpu_us_per_push": ((cpu_acked - idle_part).max(0.0) / n * 1e6).round(),
            "controller_cpu_us_per_push_raw": (cpu_acked / n * 1e6).round(),
            "controller_cpu_user_sys_secs": [
                ((u1 - u0) * 100.0).round() / 100.0,
                ((s1 - s0) * 100.0).round() / 100.0
            ],
            "controller_cpu_secs_to_completed": (cpu_completed * 100.0).round() / 100.0,
            "controller_idle_cpu_pct": (idle_rate * 1000.0).round() / 10.0,
            "installed_seen_by_controller": installed,
            "verified_on_disk": verified,
            "ramp_secs": (ramp.as_secs_f64() * 10.0).round() / 10.0,
            "mint_secs": (rig.mint.as_secs_f64() * 10.0).round() / 10.0,
            "total_secs": (total.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "connect_failures": rig.fleet.stats.connect_failures.load(Ordering::SeqCst),
            "session_errors": rig.fleet.stats.session_errors.load(Ordering::SeqCst),
            "load_avg_1m": crate::load_avg(),
            "machine": crate::machine(),
        }),
    )?;
    rig.fleet.stop().await;
    Ok(())
}
