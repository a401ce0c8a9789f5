//! `certfleet-bench soak`: years of fleet life on a simulated clock.
//!
//! The real controller runs in this process on a [`SimClock`] (store,
//! issuing with two built-in issuers, renewal, rollouts with their retries,
//! expiry, the endpoint certificate's renewal, agent identities), and the
//! agent library runs beside it for every simulated host ([`agents`]), on
//! the same clock, installing through the real `files` pipeline into tmpfs.
//! The soak steps the clock (an hour by default); after each step it runs
//! every reconciler pass once (`Service::reconcile_step`; the background
//! loops still run on their wall-clock ticks too), waits until the work it
//! started has settled (`Service::pending`), then reads back what every
//! target serves and judges it against the clock ([`ledger`]); every 4
//! simulated hours it also runs the at-risk pass and reads its items back
//! ([`AT_RISK_EVERY_SECS`]). The loop's pacing is in [`pace`]. Faults come
//! from a seeded schedule ([`faults`]). One JSON line is the result; a
//! certificate or credential served past its expiry, or a certificate that
//! came close to expiry without having been flagged at risk early enough,
//! makes the run fail.

mod agents;
mod control;
mod faults;
mod ledger;
mod pace;
mod sim;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use certfleet_controller::rollout::policy::Strategy;
use certfleet_controller::server::{self, ServeOptions};
use certfleet_controller::service::{Mode, ServiceError};
use certfleet_protocol::message::{InstanceSpec, IssuerKind, KeyType, ValidationType};
use serde_json::json;
use tokio::sync::watch;

use agents::SoakAgent;
use control::{Counts, Ctl, Operator};
use faults::{Plan, Schedule};
use ledger::{Ledger, Served};
use pace::{settle, wait_ready, Lap, Phases};
use sim::{Rng, SimClock};

/// The soak's size and faults.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Options {
    /// Simulated days.
    #[arg(long, default_value_t = 730)]
    pub(crate) days: i64,
    /// Certificates, each deployed to one target.
    #[arg(long, default_value_t = 1000)]
    pub(crate) certificates: usize,
    /// Simulated hosts, each with an agent and `certificates / agents`
    /// `files` targets.
    #[arg(long, default_value_t = 200)]
    pub(crate) agents: usize,
    /// Seed of the fault schedule and the lifetimes.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Shortest certificate lifetime, in days.
    #[arg(long, default_value_t = 6)]
    pub(crate) min_lifetime_days: u32,
    /// Longest certificate lifetime, in days.
    #[arg(long, default_value_t = 365)]
    pub(crate) max_lifetime_days: u32,
    /// Hosts that go down for three weeks each.
    #[arg(long, default_value_t = 20)]
    pub(crate) offline_agents: usize,
    /// Percentage of targets whose install fails for a week.
    #[arg(long, default_value_t = 5)]
    pub(crate) failing_percent: usize,
    /// Controller restarts, alternately graceful and crash-like.
    #[arg(long, default_value_t = 20)]
    pub(crate) restarts: usize,
    /// Clock offset of one agent, in seconds.
    #[arg(long, default_value_t = 600, allow_hyphen_values = true)]
    pub(crate) skew_secs: i64,
    /// Simulated seconds per step.
    #[arg(long, default_value_t = 3600)]
    pub(crate) step_secs: i64,
    /// Client endpoints (UDP sockets) the agents share.
    #[arg(long, default_value_t = 8)]
    pub(crate) endpoints: usize,
    /// Simulated hours between an agent's full resyncs without a poke (the
    /// real agent resyncs every 5 minutes; 0: only on pokes and
    /// reconnections, to see what the controller heals on its own).
    #[arg(long, default_value_t = 24)]
    pub(crate) resync_hours: u64,
    /// Print every fault as it happens (stderr).
    #[arg(long)]
    pub(crate) verbose: bool,
}

/// How often the soak runs the at-risk pass and reads its items back, in
/// simulated seconds.
const AT_RISK_EVERY_SECS: i64 = 4 * 3600;

fn rpc(e: ServiceError) -> anyhow::Error {
    anyhow!(e.to_rpc().message)
}

/// The hours at which a lineage of `days`-day certificates issued at hour
/// 0 comes due for renewal (the default renewal window: a third of the
/// lifetime, at most 30 days), while the window is a day longer than the
/// week a failing install lasts; none otherwise.
fn renewal_hours(days: i64, hours: i64) -> Vec<i64> {
    let window = (days * 24 / 3).min(30 * 24);
    if window < 8 * 24 {
        return Vec::new();
    }
    let period = days * 24 - window;
    (1..)
        .map(|n| n * period)
        .take_while(|&h| h <= hours)
        .collect()
}

/// Where certificate `j` goes: (agent, target).
fn placement(j: usize, agents: usize) -> (usize, usize) {
    (j % agents, j / agents)
}

pub(crate) async fn run(results: &Path, o: Options) -> Result<()> {
    if o.agents == 0 || o.certificates == 0 || o.days <= 0 || o.step_secs <= 0 {
        bail!("--agents, --certificates, --days and --step-secs must be positive");
    }
    if o.min_lifetime_days < 1 || o.min_lifetime_days > o.max_lifetime_days {
        bail!("--min-lifetime-days must be at least 1 and at most --max-lifetime-days");
    }
    let wall = Instant::now();
    let start = time::OffsetDateTime::now_utc().unix_timestamp();
    let clock = SimClock::install(start);
    let root = tempfile::Builder::new()
        .prefix("certfleet-soak-")
        .tempdir_in(crate::fleet_sim::TMPFS)
        .with_context(|| format!("cannot create a directory in {}", crate::fleet_sim::TMPFS))?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let opts = ServeOptions {
        state_dir: root.path().join("controller"),
        listen: addr,
        crl_listen: "127.0.0.1:0".parse()?,
        crl_url_base: None,
        master_key_file: None,
    };
    let mut ctl = Ctl::start(opts.clone(), clock.clone()).await?;
    let svc = ctl.svc();
    let issuers = ["ca-a", "ca-b"];
    for name in issuers {
        svc.issuer_add(
            "soak".into(),
            name.into(),
            IssuerKind::Builtin,
            KeyType::EcdsaP256,
        )
        .await
        .map_err(rpc)?;
    }

    // Hosts: agent a holds target k for certificate k * agents + a.
    let mut rng = Rng::new(o.seed ^ 0x5eed);
    let domain = |j: usize| format!("c{j}.soak.test");
    let mut hosts = Vec::with_capacity(o.agents);
    let progress = Arc::new(tokio::sync::Notify::new());
    let token = svc
        .token_create(
            "soak".into(),
            vec![("role".into(), "soak".into())],
            3600,
            u32::try_from(o.agents)?,
        )
        .await
        .map_err(rpc)?;
    for a in 0..o.agents {
        let domains: Vec<String> = (0..)
            .map(|k| k * o.agents + a)
            .take_while(|&j| j < o.certificates)
            .map(domain)
            .collect();
        let skew = if a == 0 { o.skew_secs } else { 0 };
        let resync_steps = o.resync_hours * 3600 / o.step_secs.max(1) as u64;
        let agent = SoakAgent::new(
            root.path(),
            a,
            addr,
            &domains,
            skew,
            resync_steps,
            progress.clone(),
        )?;
        certfleet_agent::session::enroll(
            &agent.config,
            &addr.to_string(),
            token.token.clone(),
            &token.ca_pin,
            false,
        )
        .await
        .with_context(|| format!("enrolling {}", agent.name()))?;
        hosts.push(Arc::new(agent));
    }
    let (step_tx, step_rx) = watch::channel(0u64);
    let endpoints = (0..o.endpoints.max(1))
        .map(|_| certfleet_agent::transport::client_endpoint(addr))
        .collect::<Result<Vec<_>>>()?;
    let tasks: Vec<_> = hosts
        .iter()
        .map(|h| {
            tokio::spawn(agents::run(
                h.clone(),
                endpoints[h.index % endpoints.len()].clone(),
                addr,
                step_rx.clone(),
            ))
        })
        .collect();
    wait_ready(&hosts, Duration::from_secs(120)).await?;

    // Certificates, then one deploy each.
    let mut apps = Vec::with_capacity(o.certificates);
    let mut lifetimes = Vec::with_capacity(o.certificates);
    for j in 0..o.certificates {
        let lifetime = rng.range(
            i64::from(o.min_lifetime_days),
            i64::from(o.max_lifetime_days),
        );
        lifetimes.push(lifetime);
        let inst = svc
            .instance_create(
                "soak".into(),
                InstanceSpec {
                    issuer: issuers[j % issuers.len()].into(),
                    validation: ValidationType::Dv,
                    max_domains: 1,
                    wildcard: false,
                    validity_days: u32::try_from(lifetime)?,
                    key: KeyType::EcdsaP256,
                    renew_before_days: None,
                    // Each issuer is the other's fallback.
                    fallback_issuers: vec![issuers[(j + 1) % issuers.len()].into()],
                    fallback_after_secs: None,
                },
            )
            .await
            .map_err(rpc)?;
        let app = svc
            .cert_apply("soak".into(), inst.id, vec![domain(j)])
            .await
            .map_err(rpc)?;
        apps.push(app.id);
    }
    while svc.applications_in_flight().await.map_err(rpc)? > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (j, app) in apps.into_iter().enumerate() {
        let info = svc.application_show(app).await.map_err(rpc)?;
        let cert = info
            .certificate
            .ok_or_else(|| anyhow!("certificate {j} was not issued: {:?}", info.last_error))?;
        let (a, k) = placement(j, o.agents);
        svc.deploy(
            "soak".into(),
            cert,
            format!("agent=sim-{a}"),
            format!("t{k}"),
            Strategy::default(),
            Mode::Commit,
        )
        .await
        .map_err(rpc)?;
    }
    if !settle(
        &svc,
        &hosts,
        &progress,
        0,
        clock.secs(),
        Duration::from_secs(300),
    )
    .await?
    {
        bail!("the first deploys did not settle within 5 minutes");
    }
    let setup_seconds = wall.elapsed().as_secs_f64();

    // The schedule.
    let hours = o.days * 86_400 / o.step_secs;
    let targets: Vec<(usize, usize)> = (0..o.certificates)
        .map(|j| placement(j, o.agents))
        .collect();
    let schedule = Schedule::new(
        &Plan {
            hours,
            issuer: Some(issuers[1].to_string()),
            offline_agents: o.offline_agents.min(o.agents),
            agents: o.agents,
            targets: targets.clone(),
            renewals: lifetimes
                .iter()
                .map(|&days| renewal_hours(days, hours * o.step_secs / 3600))
                .collect(),
            tight: lifetimes.iter().map(|&days| faults::tight(days)).collect(),
            failing_percent: o.failing_percent,
            restarts: o.restarts,
        },
        o.seed,
    );
    let mut targets_of: Vec<Vec<usize>> = vec![Vec::new(); o.agents];
    for (a, k) in &targets {
        targets_of[*a].push(*k);
    }

    let mut ledger = Ledger::default();
    ledger.at_risk_known = true;
    let mut fingerprints: std::collections::HashMap<String, String> = Default::default();
    let mut operator = Operator::load(&opts.state_dir.join(server::ADMIN_CREDENTIAL_FILE))?;
    let mut identity_not_after: Vec<(u64, i64)> = Vec::with_capacity(o.agents);
    for h in &hosts {
        identity_not_after.push((u64::MAX, h.identity()?.not_after));
    }
    let mut counts = Counts::default();
    let mut phases = Phases::default();
    let mut at_risk_looked: Option<i64> = None;
    for step in 1..=hours {
        let mut lap = Lap::start();
        clock.advance(o.step_secs);
        let now = clock.secs();
        for event in schedule.at(step) {
            if o.verbose {
                let served = match event {
                    faults::Event::InstallFails(a, k) | faults::Event::InstallWorks(a, k) => {
                        Served::read(&hosts[*a].fullchain(*k))?.map(|s| {
                            format!(
                                ", serving a {}-day certificate with {} h left",
                                (s.not_after - s.not_before) / 86_400,
                                (s.not_after - now) / 3600
                            )
                        })
                    }
                    _ => None,
                };
                eprintln!(
                    "soak: step {step} (day {:.1}): {event:?}{}",
                    step as f64 * o.step_secs as f64 / 86_400.0,
                    served.unwrap_or_default()
                );
            }
            counts
                .apply(event, &mut ctl, &hosts, &mut ledger, addr)
                .await?;
        }
        phases.faults += lap.next();
        let svc = ctl.svc();
        if ctl.running().renew_endpoint_cert_if_due()? {
            counts.endpoint_renewals += 1;
        }
        let _ = step_tx.send(step as u64);
        let work = svc.reconcile_step().await.map_err(rpc)?;
        counts.expired += work.expired as u64;
        phases.passes += lap.next();
        // Once something was served past its expiry the run has failed:
        // it goes on to count how long, without waiting the full time for
        // hosts that can no longer connect.
        let patience = if ledger.past_expiry_hours > 0 {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(30)
        };
        if !settle(&svc, &hosts, &progress, step as u64, now, patience).await? {
            counts.unsettled_steps += 1;
            let pending = svc.pending().await.map_err(rpc)?;
            let waiting: Vec<String> = hosts
                .iter()
                .filter(|h| h.online() && !h.ready())
                .take(3)
                .map(|h| {
                    format!(
                        "{}: {:?}",
                        h.name(),
                        h.last_error.lock().ok().and_then(|e| e.clone())
                    )
                })
                .collect();
            eprintln!(
                "soak: step {step} did not settle within {patience:?}: {pending:?}, hosts not ready: {waiting:?}"
            );
        }

        phases.settle += lap.next();

        // What the controller holds at risk, every few simulated hours: an
        // item's `since` is when its condition began, computed from stored
        // facts, so a later look finds the same value (the controller's own
        // loop runs the pass every 2 s of wall time as well).
        if at_risk_looked.is_none_or(|at| now - at >= AT_RISK_EVERY_SECS) {
            at_risk_looked = Some(now);
            svc.reconcile_at_risk().await.map_err(rpc)?;
            for item in svc.at_risk_items().await.map_err(rpc)? {
                let fp = match fingerprints.get(&item.certificate) {
                    Some(fp) => fp.clone(),
                    None => {
                        let fp = svc
                            .cert_show(item.certificate.clone())
                            .await
                            .map_err(rpc)?
                            .fingerprint;
                        fingerprints.insert(item.certificate.clone(), fp.clone());
                        fp
                    }
                };
                ledger.at_risk(&fp, item.since.0);
            }
        }

        phases.at_risk += lap.next();

        // What is served now.
        for h in hosts.iter().filter(|h| h.online()) {
            if h.dirty.swap(false, Ordering::SeqCst) {
                for &k in &targets_of[h.index] {
                    ledger.target((h.index, k), Served::read(&h.fullchain(k))?, now);
                }
            }
        }
        ledger.hour(now, |a| hosts[a].online());
        if now >= ctl.running().endpoint_cert_validity().1.unix_timestamp() {
            ledger.past(format!(
                "the controller's endpoint certificate at step {step}"
            ));
        }
        for h in hosts.iter().filter(|h| h.online()) {
            let seen = h.identity_renewals.load(Ordering::Relaxed) + counts.reenrolled_epoch;
            let slot = &mut identity_not_after[h.index];
            if slot.0 != seen {
                *slot = (seen, h.identity()?.not_after);
            }
            if now >= slot.1 {
                ledger.past(format!("the identity of {} at step {step}", h.name()));
            }
        }
        if step % (86_400 / o.step_secs).max(1) == 0 {
            operator.daily(addr, &clock).await;
        }
        if now >= operator.not_after {
            ledger.past(format!("the operator's admin credential at step {step}"));
        }
        phases.ledger += lap.next();
        let day = step * o.step_secs / 86_400;
        if day > 0 && day % 90 == 0 && (step - 1) * o.step_secs / 86_400 < day {
            eprintln!(
                "soak: day {day} of {} after {:.0} s; {} certificate-hours past expiry so far",
                o.days,
                wall.elapsed().as_secs_f64(),
                ledger.past_expiry_hours
            );
        }
    }

    if o.verbose {
        for h in &hosts {
            eprintln!(
                "soak: {} renewed its identity {} times, {} sessions, identity until {:?}, last error {:?}",
                h.name(),
                h.identity_renewals.load(Ordering::Relaxed),
                h.sessions.load(Ordering::Relaxed),
                h.identity().map(|i| i.not_after - start).ok(),
                h.last_error.lock().ok().and_then(|e| e.clone()),
            );
        }
    }
    let svc = ctl.svc();
    let status = svc.status().await.map_err(rpc)?;
    let ratio = ledger.min_lead_ratio();
    let identity_renewals: u64 = hosts
        .iter()
        .map(|h| h.identity_renewals.load(Ordering::Relaxed))
        .sum();
    let stuck: Vec<String> = hosts
        .iter()
        .filter(|h| h.online() && !h.ready())
        .map(|h| {
            format!(
                "{}: {}",
                h.name(),
                h.last_error
                    .lock()
                    .map(|e| e.clone().unwrap_or_default())
                    .unwrap_or_default()
            )
        })
        .take(5)
        .collect();
    let round = |x: f64| (x * 100.0).round() / 100.0;
    record_result(
        results,
        json!({
            "bench": "soak",
            "simulated_days": o.days,
            "certificates": o.certificates,
            "agents": o.agents,
            "served_past_expiry_cert_hours": ledger.past_expiry_hours,
            "past_expiry_examples": ledger.past_expiry_examples,
            "min_margin_hours": ledger.min_margin_secs.map(|s| round(s as f64 / 3600.0)),
            "at_risk_raised": ledger.at_risk_since.len(),
            "at_risk_min_lead_ratio": ratio.map(round),
            "came_within_lead": ledger.came_close.len(),
            "restarts": counts.graceful + counts.crashes,
            "restarts_graceful": counts.graceful,
            "restarts_crash": counts.crashes,
            "wall_seconds": round(wall.elapsed().as_secs_f64()),
            "setup_seconds": round(setup_seconds),
            "steps": hours,
            "step_secs": o.step_secs,
            "renewals": status.certificates.superseded,
            "installs": ledger.installs,
            "certificates_expired": status.certificates.expired,
            "marked_expired_by_steps": counts.expired,
            "endpoint_cert_renewals": counts.endpoint_renewals,
            "agent_identity_renewals": identity_renewals,
            "agent_reenrollments": counts.reenrollments,
            "agent_reenroll_failures": counts.reenroll_failures,
            "admin_credential_renewals": operator.renewals,
            "operator_failures": operator.failures,
            "operator_last_error": operator.last_error,
            "unsettled_steps": counts.unsettled_steps,
            "step_seconds": phases.json(),
            "agents_not_connected_at_end": stuck,
            "faults": {
                "hosts_down": counts.hosts_down,
                "failing_targets": schedule.failing_targets,
                "failing_targets_brought_within_lead": schedule.tight_targets,
                "install_failure_windows": counts.install_faults,
                "issuer_outages": counts.issuer_outages,
                "skewed_agents": usize::from(o.skew_secs != 0),
                "skew_secs": o.skew_secs,
            },
            "seed": o.seed,
            "machine": crate::machine(),
        }),
    )?;
    let _ = step_tx.send(u64::MAX);
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    if let Some(r) = ctl.running.take() {
        r.stop().await;
    }
    for e in &endpoints {
        e.close(0u32.into(), b"soak over");
    }
    if ledger.past_expiry_hours > 0 {
        bail!(
            "{} certificate-hours served past expiry, e.g. {:?}",
            ledger.past_expiry_hours,
            ledger.past_expiry_examples
        );
    }
    if let Some(r) = ratio.filter(|r| *r < 1.0) {
        bail!("a certificate came close to expiry with an at-risk lead ratio of {r:.2} (< 1)");
    }
    Ok(())
}

fn record_result(results: &Path, value: serde_json::Value) -> Result<()> {
    crate::record(results, value)
}
