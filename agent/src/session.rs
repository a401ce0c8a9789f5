//! The agent's life: enrollment once, then one long-lived mTLS connection
//! to the controller, reconnecting with exponential backoff and jitter.
//!
//! On every (re)connect and every poke the agent fetches its full desired
//! state and reconciles each target — so anything lost in transit is
//! recovered by the next fetch, and a repeat of what is already installed
//! is only re-reported, never re-installed.

use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use certfleet_protocol::message::{
    AgentCommand, AgentCommandReply, AgentHello, DeploymentStatus, DesiredInstall, InstallReport,
    Poke, Request, Response, TargetInfo, Timestamp,
};
use certfleet_protocol::{frame, Secret, DEFAULT_MAX_FRAME};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::identity::{self, Identity};
use crate::install;
use crate::state::{AgentState, TargetState};
use crate::transport::{self, Conn};

/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Full reconcile even without a poke, as a safety net.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(300);
/// Exit status of `certfleet-agent run` when the controller says this agent
/// has been removed (sysexits' EX_NOPERM). The packaged unit lists it in
/// `RestartPreventExitStatus=`: restarting cannot help.
pub const EXIT_AGENT_REMOVED: u8 = 77;

use crate::clock::now;

/// Create the state directory (0700) and its journal directory.
pub fn prepare_state_dir(dir: &Path) -> anyhow::Result<()> {
    for d in [dir.to_path_buf(), dir.join("journal")] {
        if !d.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
        }
    }
    Ok(())
}

/// Enroll with a join token; stores the identity in the state directory.
pub async fn enroll(
    config: &Config,
    controller: &str,
    token: Secret,
    pin: &str,
    reenroll: bool,
) -> anyhow::Result<String> {
    if !pin.starts_with("sha256:") || pin.len() != 7 + 64 {
        bail!("--ca-pin must look like sha256:<64 hex digits>, as printed by `certfleet agent token create`");
    }
    if Identity::exists(&config.state_dir) && !reenroll {
        bail!(
            "this agent is already enrolled (identity in {}); to give it a new identity with the \
             same id, labels and deployments, run `certfleet agent token create --reenroll AGENT` \
             on the controller and then `certfleet-agent enroll --reenroll …` here",
            config.state_dir.display()
        );
    }
    prepare_state_dir(&config.state_dir)?;
    let addr = transport::resolve(controller).await?;
    // The pin is checked during the TLS handshake, before the token is sent.
    let conn = Conn::enroll(addr, pin).await?;
    let (key_pem, csr_pem) = identity::new_key_and_csr(&config.name)?;
    let response = conn
        .call(&Request::Enroll {
            token,
            csr_pem,
            hostname: config.name.clone(),
        })
        .await
        .context("enrollment refused")?;
    let Response::Enrolled {
        agent,
        cert_pem,
        ca_pem,
    } = response
    else {
        bail!("unexpected answer to enrollment: {response:?}");
    };
    Identity::store(
        &config.state_dir,
        &agent,
        &key_pem,
        &cert_pem,
        Some(&ca_pem),
    )?;
    conn.conn.close(0u32.into(), b"enrolled");
    Ok(agent)
}

/// What the agent tells the controller about itself after connecting.
pub fn hello(config: &Config) -> AgentHello {
    AgentHello {
        hostname: config.name.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        labels: config.labels.clone(),
        targets: config
            .targets
            .iter()
            .map(|t| TargetInfo {
                name: t.name.clone(),
                kind: t.kind.as_str().to_string(),
                domains: t.domains.clone(),
                webroot: t.webroot.is_some(),
            })
            .collect(),
        now: Timestamp(now()),
    }
}

/// Recover interrupted installs (whole old file sets back), reloading
/// servers that had already been reloaded with the new files. A journal
/// that cannot be recovered is logged and left in place for the operator;
/// the other targets carry on.
pub async fn recover(config: &Config) -> anyhow::Result<()> {
    let journal = config.state_dir.join("journal");
    let results =
        tokio::task::spawn_blocking(move || install::files::recover_each(&journal)).await??;
    for result in results {
        let r = match result {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "could not recover an interrupted install; fix it by hand");
                continue;
            }
        };
        warn!(target = %r.target, "recovered an interrupted install; previous files restored");
        if r.needs_reload {
            if let Some(t) = config.target(&r.target) {
                if let Err(e) = install::reload(t).await {
                    warn!(target = %r.target, error = %e, "reload after recovery failed");
                }
            }
        }
    }
    Ok(())
}

/// Install what the controller wants; returns the reports to send.
pub async fn reconcile(
    config: &Config,
    desired: Vec<DesiredInstall>,
) -> anyhow::Result<Vec<InstallReport>> {
    let mut state = AgentState::load(&config.state_dir)?;
    let mut reports = Vec::new();
    for d in desired {
        let Some(target) = config.target(&d.target) else {
            reports.push(InstallReport {
                deployment: d.deployment.clone(),
                certificate: d.certificate.clone(),
                status: DeploymentStatus::Failed,
                served_fingerprint: None,
                error: Some(format!(
                    "this agent's config ({}) has no target named {:?}",
                    config.path.display(),
                    d.target
                )),
                duration_ms: 0,
            });
            continue;
        };
        // Already done when the live files hold the certificate and, where
        // the target can be verified, the server is seen serving it (after a
        // rollback the old certificate is live again without a new install).
        let on_disk = install::already_installed(target, &d.fingerprint);
        let served = if on_disk && target.verify.is_some() {
            install::verify_once(target, &d.fingerprint).await
        } else {
            on_disk
        };
        let report = if served {
            let recorded = state.targets.get(&target.name);
            let changed = recorded.is_none_or(|s| {
                s.fingerprint.as_deref() != Some(d.fingerprint.as_str())
                    || s.last_result != DeploymentStatus::Installed
            });
            if changed {
                state.targets.insert(
                    target.name.clone(),
                    TargetState {
                        certificate: Some(d.certificate.clone()),
                        fingerprint: Some(d.fingerprint.clone()),
                        not_after: Some(d.not_after),
                        deployment: Some(d.deployment.clone()),
                        last_result: DeploymentStatus::Installed,
                        last_error: None,
                        at: Timestamp(now()),
                    },
                );
                state.save(&config.state_dir)?;
            }
            InstallReport {
                deployment: d.deployment.clone(),
                certificate: d.certificate.clone(),
                status: DeploymentStatus::Installed,
                served_fingerprint: target.verify.map(|_| d.fingerprint.clone()),
                error: None,
                duration_ms: 0,
            }
        } else if let Some(bundle) = &d.bundle {
            info!(target = %target.name, certificate = %d.certificate, "installing");
            let r = install::install(config, target, &d, bundle, now()).await;
            let previous = state.targets.get(&target.name).cloned();
            let installed = r.status == DeploymentStatus::Installed;
            state.targets.insert(
                target.name.clone(),
                TargetState {
                    certificate: if installed {
                        Some(d.certificate.clone())
                    } else {
                        previous.as_ref().and_then(|p| p.certificate.clone())
                    },
                    fingerprint: if installed {
                        Some(d.fingerprint.clone())
                    } else {
                        previous.as_ref().and_then(|p| p.fingerprint.clone())
                    },
                    not_after: if installed {
                        Some(d.not_after)
                    } else {
                        previous.as_ref().and_then(|p| p.not_after)
                    },
                    deployment: Some(d.deployment.clone()),
                    last_result: r.status,
                    last_error: r.error.clone(),
                    at: Timestamp(now()),
                },
            );
            state.save(&config.state_dir)?;
            r
        } else {
            // The controller holds this target as installed, but its files
            // say otherwise (restored by hand, rebuilt host): ask again.
            warn!(target = %target.name, certificate = %d.certificate, "certificate missing; asking the controller for it");
            InstallReport {
                deployment: d.deployment.clone(),
                certificate: d.certificate.clone(),
                status: DeploymentStatus::Missing,
                served_fingerprint: None,
                error: Some(format!(
                    "{} does not hold certificate {}; it will be installed again",
                    target.name, d.certificate
                )),
                duration_ms: 0,
            }
        };
        reports.push(report);
    }
    Ok(reports)
}

/// Fetch the full desired state, reconcile every target, report each result.
pub async fn sync(config: &Config, conn: &Conn) -> anyhow::Result<()> {
    let desired = match conn.call(&Request::DesiredState).await? {
        Response::Desired(d) => d,
        other => bail!("unexpected answer to DesiredState: {other:?}"),
    };
    for report in reconcile(config, desired).await? {
        conn.call(&Request::Report(report)).await?;
    }
    Ok(())
}

/// What [`renew_identity_if_due`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityRenewal {
    /// The identity is not two thirds into its life yet.
    NotDue,
    /// Renewed; with `reconnect`, the session should end so the agent
    /// reconnects with the new identity at once: its first use retires the
    /// old one at the controller, so a copy of the old key stops working now
    /// rather than when this session ends. Not when the new identity is
    /// itself already due by this host's clock (a clock far ahead of the
    /// controller's), which would reconnect and renew in a loop.
    Renewed { reconnect: bool },
}

/// Renew the identity over `conn` when it is two thirds into its life
/// ([`Identity::renew_at`]). What the agent does after connecting and at
/// every resync.
pub async fn renew_identity_if_due(
    config: &Config,
    conn: &Conn,
) -> anyhow::Result<IdentityRenewal> {
    let id = Identity::load(&config.state_dir)?;
    if now() < id.renew_at() {
        return Ok(IdentityRenewal::NotDue);
    }
    let reconnect = renew_identity(config, conn, &id).await?;
    Ok(IdentityRenewal::Renewed { reconnect })
}

async fn renew_identity(config: &Config, conn: &Conn, id: &Identity) -> anyhow::Result<bool> {
    let (key_pem, csr_pem) = identity::new_key_and_csr(&config.name)?;
    let cert_pem = match conn.call(&Request::RenewIdentity { csr_pem }).await? {
        Response::Identity { cert_pem } => cert_pem,
        other => bail!("unexpected answer to RenewIdentity: {other:?}"),
    };
    Identity::store(&config.state_dir, &id.agent, &key_pem, &cert_pem, None)?;
    let fresh = Identity::load(&config.state_dir)?;
    let reconnect = now() < fresh.renew_at();
    info!(reconnect, "identity certificate renewed");
    Ok(reconnect)
}

/// One connection's life. Returns when the connection ends; `connected`
/// tells the caller whether the controller was reached at all.
async fn session(config: &Config, connected: &mut bool) -> anyhow::Result<()> {
    let id = Identity::load(&config.state_dir)?;
    // An expired identity cannot be renewed over mTLS (the controller
    // refuses it in the handshake): say so and how to fix it, instead of a
    // TLS error. The loop keeps trying, so a re-enrollment while this agent
    // runs is picked up without a restart.
    if let Some(why) = id.expired(now(), &config.path) {
        bail!("{why}");
    }
    let addr = transport::resolve(&config.controller).await?;
    info!(controller = %addr, "connecting");
    let conn = Arc::new(Conn::mtls(addr, &id).await?);
    *connected = true;
    info!(controller = %addr, agent = %id.agent, "connected");
    conn.call(&Request::AgentHello(hello(config))).await?;
    if renew_identity_if_due(config, &conn).await? == (IdentityRenewal::Renewed { reconnect: true })
    {
        conn.conn
            .close(0u32.into(), b"reconnecting with the renewed identity");
        return Ok(());
    }
    sync(config, &conn).await?;
    let mut resync = tokio::time::interval(RESYNC_INTERVAL);
    resync.tick().await;
    // Discovery runs beside the session (a scan may take a while) and right
    // away on connect: the first tick of the interval is immediate.
    let scanning = Arc::new(tokio::sync::Mutex::new(()));
    let mut rescan = tokio::time::interval(config.discovery.interval);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = rescan.tick(), if config.discovery.enabled => {
                spawn_discovery(config, &conn, &scanning, None);
            }
            bi = conn.conn.accept_bi() => {
                let (mut send, mut recv) = bi.map_err(|e| conn.lost(e))?;
                let reply = match frame::read::<AgentCommand, _>(&mut recv, DEFAULT_MAX_FRAME).await {
                    Ok(AgentCommand::Discover) => {
                        spawn_discovery(config, &conn, &scanning, Some(send));
                        continue;
                    }
                    Ok(command) => crate::challenge::handle(config, command).await,
                    Err(e) => AgentCommandReply {
                        files: 0,
                        error: Some(format!("malformed command: {e}")),
                    },
                };
                if frame::write(&mut send, &reply, DEFAULT_MAX_FRAME).await.is_ok() {
                    let _ = send.finish();
                }
            }
            uni = conn.conn.accept_uni() => {
                let mut recv = uni.map_err(|e| conn.lost(e))?;
                match frame::read::<Poke, _>(&mut recv, DEFAULT_MAX_FRAME).await {
                    Ok(Poke::DesiredStateChanged) => sync(config, &conn).await?,
                    Err(e) => warn!(error = %e, "malformed poke ignored"),
                }
            }
            _ = resync.tick() => {
                if renew_identity_if_due(config, &conn).await? == (IdentityRenewal::Renewed { reconnect: true }) {
                    conn.conn.close(0u32.into(), b"reconnecting with the renewed identity");
                    return Ok(());
                }
                sync(config, &conn).await?;
            }
        }
    }
}

/// Send one discovery report; the answer says how many certificates.
async fn send_inventory(
    conn: &Conn,
    report: certfleet_protocol::message::InventoryReport,
) -> AgentCommandReply {
    for p in &report.problems {
        warn!(problem = %p, "discovery");
    }
    let report = crate::discovery::fit(report, DEFAULT_MAX_FRAME / 2);
    let n = report.entries.len();
    match conn.call(&Request::InventoryReport(report)).await {
        Ok(_) => {
            info!(certificates = n, "discovery report sent");
            AgentCommandReply {
                files: u32::try_from(n).unwrap_or(u32::MAX),
                error: None,
            }
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), "could not send the discovery report");
            AgentCommandReply {
                files: 0,
                error: Some(format!("could not send the discovery report: {e:#}")),
            }
        }
    }
}

/// Scan for certificates in use and send the report, beside the session.
/// One scan at a time; `reply`, when the controller asked for the scan,
/// gets the number of certificates reported once the report is sent.
fn spawn_discovery(
    config: &Config,
    conn: &Arc<Conn>,
    scanning: &Arc<tokio::sync::Mutex<()>>,
    reply: Option<quinn::SendStream>,
) {
    let config = config.clone();
    let conn = conn.clone();
    let scanning = scanning.clone();
    tokio::spawn(async move {
        let answer = if !config.discovery.enabled {
            AgentCommandReply {
                files: 0,
                error: Some(format!(
                    "discovery is disabled in this agent's config ({})",
                    config.path.display()
                )),
            }
        } else if let Ok(_one) = scanning.try_lock() {
            // The scan bounds its own steps; this bounds the whole of it. A
            // scan that overruns sends nothing, so the controller keeps the
            // last snapshot.
            let limit = config.discovery.timeout + Duration::from_secs(30);
            match tokio::time::timeout(
                limit,
                crate::discovery::scan(&config.discovery, &config.targets, now()),
            )
            .await
            {
                Ok(report) => send_inventory(&conn, report).await,
                Err(_) => {
                    let e = format!(
                        "the discovery scan did not finish within {}; nothing was reported",
                        humantime::format_duration(limit)
                    );
                    warn!(error = %e, "discovery");
                    AgentCommandReply {
                        files: 0,
                        error: Some(e),
                    }
                }
            }
        } else {
            AgentCommandReply {
                files: 0,
                error: Some(
                    "a discovery scan is already running; its report arrives when it ends".into(),
                ),
            }
        };
        if let Some(mut send) = reply {
            if frame::write(&mut send, &answer, DEFAULT_MAX_FRAME)
                .await
                .is_ok()
            {
                let _ = send.finish();
            }
        }
    });
}

/// Exponential backoff with jitter: `base * 2^attempt`, capped, ±50%.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1u32 << attempt.min(10));
    let capped = base.min(MAX_BACKOFF);
    capped.mul_f64(0.5 + jitter.clamp(0.0, 1.0))
}

/// A uniform random number in [0, 1] for [`backoff`].
pub fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut b);
    f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX)
}

/// What a removed agent logs before it stops: what happened and the only
/// way back. A removed agent cannot be re-enrolled under its old id (the
/// controller refuses `agent token create --reenroll` for it), so the host
/// comes back as a new agent with an ordinary join token; `enroll
/// --reenroll` here only lets that replace the identity files.
fn removed_advice(config: &Config, e: &anyhow::Error) -> String {
    let agent = Identity::load(&config.state_dir)
        .map(|id| id.agent)
        .unwrap_or_else(|_| "this agent".into());
    format!(
        "{e:#}. The agent stops (exit status {EXIT_AGENT_REMOVED}; systemd does not restart it). \
         {agent} cannot be re-enrolled under its old id; to bring this host back, enroll it as \
         a new agent: on the controller run `certfleet agent token create --labels …`, then \
         here `certfleet-agent enroll --reenroll --token T --ca-pin P --config {}` (--reenroll \
         replaces the old identity files) and `systemctl start certfleet-agent`, then deploy \
         to the new agent again",
        config.path.display()
    )
}

/// Run the agent until `shutdown` resolves. Returns an error wrapping
/// [`transport::AgentRemoved`] when the controller says the agent has been
/// removed; every other failure is retried.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    prepare_state_dir(&config.state_dir)?;
    if !Identity::exists(&config.state_dir) {
        bail!(
            "this agent is not enrolled yet: run `certfleet-agent enroll --controller HOST:PORT \
             --token T --ca-pin P --config {}`",
            config.path.display()
        );
    }
    recover(&config).await?;
    let work = async {
        let mut attempt = 0u32;
        loop {
            let mut connected = false;
            match session(&config, &mut connected).await {
                Ok(()) => {}
                Err(e) if e.downcast_ref::<transport::AgentRemoved>().is_some() => {
                    error!("{}", removed_advice(&config, &e));
                    return Err(e);
                }
                Err(e) => warn!(error = %format!("{e:#}"), "session ended"),
            }
            if connected {
                // The controller was reachable: come back quickly.
                attempt = 0;
            }
            let wait = backoff(attempt, jitter());
            attempt = attempt.saturating_add(1);
            info!(retry_in = ?wait, "reconnecting");
            tokio::time::sleep(wait).await;
        }
    };
    tokio::select! {
        removed = work => removed,
        _ = shutdown => {
            info!("agent stopping");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0, 0.5), Duration::from_millis(500));
        assert_eq!(backoff(1, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(20, 0.5), MAX_BACKOFF);
        assert!(backoff(3, 0.0) < backoff(3, 1.0));
        assert!(backoff(30, 1.0) <= MAX_BACKOFF.mul_f64(1.5));
    }
}
