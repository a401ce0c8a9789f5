//! The soak's agents: the agent library on the simulated clock, one task
//! per agent, each with its own state directory and `files` targets on
//! tmpfs, enrolled with a real join token.
//!
//! An agent task lives like `certfleet-agent run`: it connects with its
//! identity (refusing an expired one, as the agent does), says hello,
//! renews its identity when due ([`session::renew_identity_if_due`], the
//! agent's own code path), syncs its desired state through the real install
//! pipeline, then answers pokes and commands. What stands in for the
//! agent's wall-clock timers is the soak's step signal: at every simulated
//! step the agent checks its identity again (the agent does at every
//! resync) and resyncs every `resync_steps` steps (0: only on pokes and
//! reconnections).
//!
//! A host taken offline ([`SoakAgent::set_online`]) closes its connection
//! and stays away until brought back; the driver counts its targets as
//! not served meanwhile.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Result};
use certfleet_agent::config::Config;
use certfleet_agent::identity::Identity;
use certfleet_agent::session::{self, IdentityRenewal};
use certfleet_agent::transport::Conn;
use certfleet_protocol::message::{AgentCommand, AgentCommandReply, Poke, Request};
use certfleet_protocol::{frame, DEFAULT_MAX_FRAME};
use tokio::sync::{watch, Notify};

/// One simulated host with an agent.
pub(crate) struct SoakAgent {
    pub(crate) index: usize,
    pub(crate) config: Config,
    /// The agent's clock offset from the simulated clock, in seconds.
    pub(crate) skew: i64,
    /// Steps between full resyncs without a poke; 0: never.
    pub(crate) resync_steps: u64,
    dir: PathBuf,
    online: AtomicBool,
    /// Connected, hello sent and synced since it last connected.
    ready: AtomicBool,
    /// Synced since the driver last looked (its targets may have changed).
    pub(crate) dirty: AtomicBool,
    /// The last step whose work (identity check, resync) this agent has
    /// finished, so the driver never reads a target in the middle of an
    /// install.
    step_done: AtomicU64,
    /// Shared by every agent: notified whenever one of them finished a
    /// step's work or a sync, so the driver waits for that instead of
    /// polling.
    progress: Arc<Notify>,
    /// When the identity on disk comes due for renewal (Unix seconds, on
    /// the agent's clock): read back after every connection and renewal, so
    /// a step before it need not read and parse the identity files again.
    renew_at: AtomicI64,
    /// Identity renewals done over the agent's own code path.
    pub(crate) identity_renewals: AtomicU64,
    pub(crate) sessions: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
}

impl SoakAgent {
    /// Prepare an agent's directories and config under `root`: `targets`
    /// `files` targets, target `k` serving `domains[k]`, each with a test
    /// command that fails while the target's fault file exists.
    pub(crate) fn new(
        root: &Path,
        index: usize,
        controller: SocketAddr,
        domains: &[String],
        skew: i64,
        resync_steps: u64,
        progress: Arc<Notify>,
    ) -> Result<SoakAgent> {
        let dir = root.join(format!("a{index}"));
        let state_dir = dir.join("state");
        session::prepare_state_dir(&state_dir)?;
        let mut text = format!(
            "controller = \"{controller}\"\n\
             state_dir = \"{}\"\n\
             name = \"sim-{index}\"\n\
             allowed_dirs = [\"{}\"]\n\
             [labels]\nrole = \"soak\"\n",
            state_dir.display(),
            dir.join("tls").display(),
        );
        for (k, domain) in domains.iter().enumerate() {
            let tls = dir.join("tls").join(format!("t{k}"));
            std::fs::create_dir_all(&tls)?;
            text.push_str(&format!(
                "[[target]]\n\
                 name = \"t{k}\"\n\
                 kind = \"files\"\n\
                 domains = [\"{domain}\"]\n\
                 fullchain = \"{}\"\n\
                 key = \"{}\"\n\
                 test_command = [\"test\", \"!\", \"-e\", \"{}\"]\n",
                tls.join("fullchain.pem").display(),
                tls.join("privkey.pem").display(),
                dir.join(format!("fail-t{k}")).display(),
            ));
        }
        let config = Config::parse(&dir.join("agent.toml"), &text)?;
        Ok(SoakAgent {
            index,
            config,
            skew,
            resync_steps,
            dir,
            online: AtomicBool::new(true),
            ready: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            step_done: AtomicU64::new(0),
            progress,
            renew_at: AtomicI64::new(i64::MIN),
            identity_renewals: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    pub(crate) fn name(&self) -> String {
        format!("sim-{}", self.index)
    }

    /// The live certificate file of target `k`.
    pub(crate) fn fullchain(&self, k: usize) -> PathBuf {
        self.dir
            .join("tls")
            .join(format!("t{k}"))
            .join("fullchain.pem")
    }

    /// Make target `k`'s test command fail (or pass again).
    pub(crate) fn set_failing(&self, k: usize, failing: bool) -> Result<()> {
        let path = self.dir.join(format!("fail-t{k}"));
        if failing {
            std::fs::write(&path, b"soak fault: this target's test command fails\n")?;
        } else if path.exists() {
            std::fs::remove_file(&path)?;
        }
        Ok(())
    }

    pub(crate) fn online(&self) -> bool {
        self.online.load(Ordering::SeqCst)
    }

    pub(crate) fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::SeqCst);
    }

    pub(crate) fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Connected, synced, and done with the work of step `step`, which
    /// the simulated clock put at `now`. A step that brings this agent no
    /// work of its own (no resync, no identity renewal due) need not be
    /// waited for: the agent only looks at it and goes back to waiting.
    pub(crate) fn settled(&self, step: u64, now: i64) -> bool {
        self.ready() && (self.step_done.load(Ordering::SeqCst) >= step || !self.works_at(step, now))
    }

    /// Whether step `step` at simulated time `now` makes this agent resync
    /// or renew its identity.
    fn works_at(&self, step: u64, now: i64) -> bool {
        resyncs_at(self.resync_steps, self.index, step)
            || now + self.skew >= self.renew_at.load(Ordering::SeqCst)
    }

    /// This agent finished step `step`'s work.
    fn done(&self, step: u64) {
        self.step_done.store(step, Ordering::SeqCst);
        self.progress.notify_one();
    }

    pub(crate) fn identity(&self) -> Result<Identity> {
        Identity::load(&self.config.state_dir)
    }

    fn error(&self, e: &anyhow::Error) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{e:#}"));
    }
}

/// One agent's life until aborted: sessions while online, with the agent's
/// own backoff between them. `step` carries the simulated step number.
pub(crate) async fn run(
    agent: Arc<SoakAgent>,
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    mut step: watch::Receiver<u64>,
) {
    let skew = agent.skew;
    certfleet_agent::clock::with_skew(skew, async move {
        let mut attempt = 0u32;
        loop {
            if !agent.online() {
                if step.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let mut connected = false;
            let result = session(&agent, &endpoint, addr, &mut step, &mut connected).await;
            agent.ready.store(false, Ordering::SeqCst);
            match result {
                // Reconnecting with a renewed identity: at once, no back-off.
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => agent.error(&e),
            }
            if connected {
                attempt = 0;
            }
            let wait = session::backoff(attempt, session::jitter());
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // A step (e.g. the host coming back) is worth a new try.
                _ = step.changed() => {}
            }
        }
    })
    .await
}

async fn session(
    agent: &SoakAgent,
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    step: &mut watch::Receiver<u64>,
    connected: &mut bool,
) -> Result<bool> {
    let config = &agent.config;
    let id = Identity::load(&config.state_dir)?;
    if let Some(why) = id.expired(certfleet_agent::clock::now(), &config.path) {
        bail!("{why}");
    }
    agent.renew_at.store(id.renew_at(), Ordering::SeqCst);
    let conn = Conn::mtls_via(endpoint, addr, &id).await?;
    *connected = true;
    agent.sessions.fetch_add(1, Ordering::Relaxed);
    conn.call(&Request::AgentHello(session::hello(config)))
        .await?;
    let step_now = *step.borrow_and_update();
    if renew_identity(agent, &conn).await? {
        conn.conn
            .close(0u32.into(), b"reconnecting with the renewed identity");
        return Ok(true);
    }
    sync(agent, &conn).await?;
    agent.ready.store(true, Ordering::SeqCst);
    agent.done(step_now);
    loop {
        tokio::select! {
            bi = conn.conn.accept_bi() => {
                let (mut send, mut recv) = bi.map_err(|e| anyhow!("connection lost: {e}"))?;
                let reply = match frame::read::<AgentCommand, _>(&mut recv, DEFAULT_MAX_FRAME).await {
                    Ok(command) => certfleet_agent::challenge::handle(config, command).await,
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
                let mut recv = uni.map_err(|e| anyhow!("connection lost: {e}"))?;
                if let Ok(Poke::DesiredStateChanged) =
                    frame::read::<Poke, _>(&mut recv, DEFAULT_MAX_FRAME).await
                {
                    sync(agent, &conn).await?;
                }
            }
            changed = step.changed() => {
                if changed.is_err() {
                    return Ok(false);
                }
                if !agent.online() {
                    conn.conn.close(0u32.into(), b"host down");
                    return Ok(false);
                }
                let n = *step.borrow_and_update();
                if renew_identity(agent, &conn).await? {
                    conn.conn.close(0u32.into(), b"reconnecting with the renewed identity");
                    return Ok(true);
                }
                if resyncs_at(agent.resync_steps, agent.index, n) {
                    sync(agent, &conn).await?;
                }
                agent.done(n);
            }
        }
    }
}

/// Whether agent `index` resyncs at step `step`: every `resync_steps`
/// steps, the agents spread over them; never when `resync_steps` is 0.
fn resyncs_at(resync_steps: u64, index: usize, step: u64) -> bool {
    resync_steps > 0 && step.wrapping_add(index as u64) % resync_steps == 0
}

/// Renew the identity when due, as the agent does; whether the session
/// should end so the agent reconnects with the new identity at once.
/// Before the renewal time read at the last connection or renewal nothing
/// can be due, and the identity files are not read again.
async fn renew_identity(agent: &SoakAgent, conn: &Conn) -> Result<bool> {
    if certfleet_agent::clock::now() < agent.renew_at.load(Ordering::SeqCst) {
        return Ok(false);
    }
    match session::renew_identity_if_due(&agent.config, conn).await? {
        IdentityRenewal::NotDue => Ok(false),
        IdentityRenewal::Renewed { reconnect } => {
            agent.identity_renewals.fetch_add(1, Ordering::Relaxed);
            let id = agent.identity()?;
            agent.renew_at.store(id.renew_at(), Ordering::SeqCst);
            Ok(reconnect)
        }
    }
}

async fn sync(agent: &SoakAgent, conn: &Conn) -> Result<()> {
    let result = session::sync(&agent.config, conn).await;
    agent.dirty.store(true, Ordering::SeqCst);
    agent.progress.notify_one();
    result
}
