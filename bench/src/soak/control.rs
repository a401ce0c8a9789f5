//! The soak's controller and operator: the controller under test,
//! restarted in place (gracefully or like a crash) on its state directory
//! and port, and the operator's admin credential, used once a simulated day
//! and renewed before it expires; the faults applied to both, counted.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use certfleet_controller::client::{Client, Credential};
use certfleet_controller::server::{self, Running, ServeOptions};
use certfleet_controller::service::Service;
use certfleet_protocol::message::{Request, Response};

use super::agents::SoakAgent;
use super::faults::{Event, Restart};
use super::ledger::{self, Ledger};
use super::sim::SimClock;

/// The controller under test, restarted in place.
pub(super) struct Ctl {
    pub(super) running: Option<Running>,
    opts: ServeOptions,
    clock: SimClock,
}

impl Ctl {
    pub(super) async fn start(opts: ServeOptions, clock: SimClock) -> Result<Ctl> {
        let running = Some(Self::open(&opts, &clock).await?);
        Ok(Ctl {
            running,
            opts,
            clock,
        })
    }

    /// Start on the same state directory and port; the port of a crashed
    /// controller may take a moment to be free (until the last task that
    /// held one of its connections has noticed the close), up to 30 s.
    async fn open(opts: &ServeOptions, clock: &SimClock) -> Result<Running> {
        let mut last = None;
        for _ in 0..600 {
            match server::start(opts.clone(), Arc::new(clock.clone())).await {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last.unwrap_or_else(|| anyhow!("controller did not start")))
    }

    pub(super) fn running(&self) -> &Running {
        self.running.as_ref().expect("controller is running")
    }

    pub(super) fn svc(&self) -> Arc<Service> {
        self.running().service.clone()
    }

    pub(super) async fn restart(&mut self, how: Restart) -> Result<()> {
        if let Some(r) = self.running.take() {
            match how {
                Restart::Graceful => r.stop().await,
                Restart::Crash => r.abort().await,
            }
        }
        self.running = Some(Self::open(&self.opts, &self.clock).await?);
        Ok(())
    }
}

/// The operator: an admin credential, used once a simulated day and
/// renewed (`admin renew`) when the CLI would start warning, 30 days
/// before it expires.
pub(super) struct Operator {
    cred: Credential,
    pub(super) not_after: i64,
    pub(super) renewals: u64,
    pub(super) failures: u64,
    pub(super) last_error: Option<String>,
}

impl Operator {
    pub(super) fn load(path: &Path) -> Result<Operator> {
        let cred = Credential::load(path)?;
        let (_, not_after) = ledger::validity(cred.cert.as_ref())?;
        Ok(Operator {
            cred,
            not_after,
            renewals: 0,
            failures: 0,
            last_error: None,
        })
    }

    pub(super) async fn daily(&mut self, addr: SocketAddr, clock: &SimClock) {
        if let Err(e) = self.try_daily(addr, clock).await {
            self.failures += 1;
            self.last_error = Some(format!("{e:#}"));
        }
    }

    async fn try_daily(&mut self, addr: SocketAddr, clock: &SimClock) -> Result<()> {
        let client = Client::open_at(addr, &self.cred, Arc::new(clock.clone())).await?;
        client.call(&Request::Status).await?;
        if self.not_after - clock.secs() < 30 * 86_400 {
            let (key_pem, csr_pem) = Credential::new_key()?;
            let issued = match client.call(&Request::AdminRenew { csr_pem }).await? {
                Response::AdminIssued(i) => i,
                other => bail!("unexpected answer to AdminRenew: {other:?}"),
            };
            let pem = format!("{}{}{key_pem}", issued.cert_pem, issued.ca_pem);
            self.cred = Credential::from_pem(pem.as_bytes())?;
            self.not_after = issued.credential.not_after.0;
            self.renewals += 1;
        }
        client.close();
        Ok(())
    }
}

/// What the faults did.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) graceful: u64,
    pub(super) crashes: u64,
    pub(super) hosts_down: u64,
    pub(super) install_faults: u64,
    pub(super) issuer_outages: u64,
    pub(super) reenrollments: u64,
    /// Re-enrollments that failed, with why.
    pub(super) reenroll_failures: Vec<String>,
    /// Bumped at every re-enrollment, so cached identities are re-read.
    pub(super) reenrolled_epoch: u64,
    pub(super) endpoint_renewals: u64,
    pub(super) expired: u64,
    pub(super) unsettled_steps: u64,
}

impl Counts {
    pub(super) async fn apply(
        &mut self,
        event: &Event,
        ctl: &mut Ctl,
        hosts: &[Arc<SoakAgent>],
        ledger: &mut Ledger,
        addr: SocketAddr,
    ) -> Result<()> {
        match event {
            Event::Restart(how) => {
                ctl.restart(*how).await?;
                match how {
                    Restart::Graceful => self.graceful += 1,
                    Restart::Crash => self.crashes += 1,
                }
            }
            Event::HostDown(a) => {
                hosts[*a].set_online(false);
                ledger.forget(*a);
                self.hosts_down += 1;
            }
            Event::HostUp(a) => {
                let host = &hosts[*a];
                let id = host.identity()?;
                if id
                    .expired(certfleet_agent::clock::now(), &host.config.path)
                    .is_some()
                {
                    // Its identity expired while the host was down: the
                    // documented way back, a re-enroll token.
                    let token = ctl
                        .svc()
                        .token_create_reenroll("soak".into(), host.name(), 3600)
                        .await
                        .map_err(|e| anyhow!(e.to_rpc().message))?;
                    // A re-enrollment that fails (the controller's own
                    // endpoint certificate expired, say) leaves the host
                    // with its expired identity, counted as such.
                    match certfleet_agent::session::enroll(
                        &host.config,
                        &addr.to_string(),
                        token.token,
                        &token.ca_pin,
                        true,
                    )
                    .await
                    {
                        Ok(_) => {
                            self.reenrollments += 1;
                            self.reenrolled_epoch += 1 << 32;
                        }
                        Err(e) => {
                            self.reenroll_failures
                                .push(format!("{}: {e:#}", host.name()));
                        }
                    }
                }
                host.set_online(true);
            }
            Event::InstallFails(a, k) => {
                hosts[*a].set_failing(*k, true)?;
                self.install_faults += 1;
            }
            Event::InstallWorks(a, k) => hosts[*a].set_failing(*k, false)?,
            Event::IssuerDown(issuer) => {
                certfleet_controller::fault::set_issuer_outage(issuer, true);
                self.issuer_outages += 1;
            }
            Event::IssuerUp(issuer) => {
                certfleet_controller::fault::set_issuer_outage(issuer, false)
            }
        }
        Ok(())
    }
}
