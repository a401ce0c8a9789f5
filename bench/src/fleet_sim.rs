//! The fleet simulator: thousands of agents in one process, each with its
//! own identity and its own mutual-TLS QUIC connection to a real
//! `certfleet serve`.
//!
//! A simulated agent is the agent library driven by a loop like
//! `certfleet-agent run`: [`Conn::mtls_via`] (the agent's transport, over a
//! client endpoint shared with other simulated agents, so a handful of UDP
//! sockets carry every connection), `AgentHello`, [`session::sync`]
//! (desired state → the real `files` install pipeline into a tmpfs
//! directory → one report per target), pokes, challenge commands through
//! the agent's own handler, the periodic resync, and reconnection with
//! [`session::backoff`]. What it leaves out: config files on disk, identity
//! renewal (its 30-day identity outlives every benchmark) and the
//! interrupted-install recovery at start.
//!
//! Identities come from [`mint_agents_for_bench`], a library call on the
//! controller's state directory while the controller is stopped (token
//! enrollment costs a durable commit per agent; that path is measured by
//! the end-to-end tests, not here).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use certfleet_agent::config::Config;
use certfleet_agent::identity::Identity;
use certfleet_agent::session;
use certfleet_agent::transport::{self, Conn};
use certfleet_controller::client::{Client, Credential};
use certfleet_controller::mint::mint_agents_for_bench;
use certfleet_controller::server::{open_state, ServeOptions};
use certfleet_protocol::message::{
    AgentCommand, AgentCommandReply, DeploymentStatus, Poke, Request, Response,
};
use certfleet_protocol::{frame, DEFAULT_MAX_FRAME};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use certfleet_tests::{Controller, ControllerOptions};

/// The one target every simulated agent declares.
pub(crate) const TARGET: &str = "files";
/// The name that target serves.
pub(crate) const DOMAIN: &str = "fleet.bench.test";
/// The label every simulated agent carries.
pub(crate) const LABEL: (&str, &str) = ("role", "bench");

/// One simulated agent: its identity and its (in-memory) config.
pub(crate) struct SimAgent {
    pub(crate) index: usize,
    pub(crate) identity: Identity,
    pub(crate) config: Config,
    pub(crate) addr: SocketAddr,
}

impl SimAgent {
    /// The live certificate file of its target.
    pub(crate) fn fullchain(&self) -> PathBuf {
        self.config
            .state_dir
            .with_file_name("tls")
            .join("fullchain.pem")
    }
}

/// Give `count` simulated agents identities in the (stopped) controller's
/// state directory, and prepare each one's directories under `root`
/// (which should be on tmpfs).
pub(crate) fn mint(
    state_dir: &Path,
    root: &Path,
    controller: SocketAddr,
    count: usize,
) -> Result<Vec<SimAgent>> {
    let opts = ServeOptions {
        state_dir: state_dir.to_path_buf(),
        listen: controller,
        crl_listen: "127.0.0.1:0".parse()?,
        crl_url_base: None,
        master_key_file: None,
    };
    let state = open_state(&opts, &certfleet_controller::clock::SystemClock)?;
    let keys: Vec<(String, rcgen::KeyPair)> = (0..count)
        .map(|i| {
            Ok((
                format!("sim-{i}"),
                rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
            ))
        })
        .collect::<Result<_>>()?;
    let now = time::OffsetDateTime::now_utc();
    let labels = vec![(LABEL.0.to_string(), LABEL.1.to_string())];
    let minted = mint_agents_for_bench(&state, &keys, &labels, now)?;
    let ca = state.identity.cert_der().clone();
    drop(state);
    let mut agents = Vec::with_capacity(count);
    for (i, (m, (_, key))) in minted.into_iter().zip(keys).enumerate() {
        let dir = root.join(format!("a{i}"));
        let state_dir = dir.join("state");
        let tls = dir.join("tls");
        session::prepare_state_dir(&state_dir)?;
        std::fs::create_dir_all(&tls)?;
        let text = format!(
            "controller = \"{controller}\"\n\
             state_dir = \"{}\"\n\
             name = \"{}\"\n\
             allowed_dirs = [\"{}\"]\n\
             [labels]\n{} = \"{}\"\n\
             [[target]]\n\
             name = \"{TARGET}\"\n\
             kind = \"files\"\n\
             domains = [\"{DOMAIN}\"]\n\
             fullchain = \"{}\"\n\
             key = \"{}\"\n",
            state_dir.display(),
            m.name,
            tls.display(),
            LABEL.0,
            LABEL.1,
            tls.join("fullchain.pem").display(),
            tls.join("privkey.pem").display(),
        );
        let config = Config::parse(&dir.join("agent.toml"), &text)?;
        let cert = CertificateDer::from_pem_slice(m.cert_pem.as_bytes())
            .map_err(|e| anyhow!("minted certificate: {e}"))?;
        let identity = Identity {
            agent: m.id,
            cert,
            ca: ca.clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before: now.unix_timestamp() - 300,
            not_after: now.unix_timestamp()
                + certfleet_controller::fleet::AGENT_IDENTITY_DAYS * 86_400,
        };
        agents.push(SimAgent {
            index: i,
            identity,
            config,
            addr: controller,
        });
    }
    Ok(agents)
}

/// What the simulated fleet has done, updated by every agent task.
pub(crate) struct Stats {
    start: Instant,
    /// Agents whose session is up: connected, hello sent, first sync done.
    pub(crate) ready: AtomicUsize,
    /// Sessions ever established.
    pub(crate) sessions: AtomicU64,
    /// Connection attempts that failed.
    pub(crate) connect_failures: AtomicU64,
    /// Sessions that ended with an error after connecting.
    pub(crate) session_errors: AtomicU64,
    /// Per agent: microseconds after `start` when it first finished a sync
    /// that left [`Stats::expect`] installed and reported; 0 = not yet.
    acked_at: Vec<AtomicU64>,
    /// Agents counted in `acked_at`.
    pub(crate) acked: AtomicUsize,
    /// The fingerprint a rollout is delivering.
    expect: RwLock<Option<String>>,
    pub(crate) last_error: Mutex<Option<String>>,
}

impl Stats {
    fn new(n: usize) -> Stats {
        Stats {
            start: Instant::now(),
            ready: AtomicUsize::new(0),
            sessions: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            session_errors: AtomicU64::new(0),
            acked_at: (0..n).map(|_| AtomicU64::new(0)).collect(),
            acked: AtomicUsize::new(0),
            expect: RwLock::new(None),
            last_error: Mutex::new(None),
        }
    }

    /// Start counting acknowledgements of the certificate with `fingerprint`.
    pub(crate) fn expect(&self, fingerprint: &str) {
        for a in &self.acked_at {
            a.store(0, Ordering::SeqCst);
        }
        self.acked.store(0, Ordering::SeqCst);
        *self.expect.write().unwrap_or_else(|p| p.into_inner()) = Some(fingerprint.to_string());
    }

    /// When each agent acknowledged, relative to `since` (agents that did
    /// not are left out).
    pub(crate) fn ack_times(&self, since: Instant) -> Vec<Duration> {
        let base = since.saturating_duration_since(self.start);
        self.acked_at
            .iter()
            .map(|a| a.load(Ordering::SeqCst))
            .filter(|&us| us > 0)
            .map(|us| Duration::from_micros(us).saturating_sub(base))
            .collect()
    }

    fn error(&self, e: &anyhow::Error) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{e:#}"));
    }
}

/// A running simulated fleet.
pub(crate) struct Fleet {
    agents: Vec<Arc<SimAgent>>,
    endpoints: Vec<quinn::Endpoint>,
    pub(crate) stats: Arc<Stats>,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// A fleet of `agents` sharing `endpoints` client endpoints (UDP
    /// sockets). Nothing connects until [`Fleet::start`].
    pub(crate) fn new(agents: Vec<SimAgent>, endpoints: usize) -> Result<Fleet> {
        let addr = agents.first().context("an empty fleet")?.addr;
        let endpoints = (0..endpoints.max(1))
            .map(|_| transport::client_endpoint(addr))
            .collect::<Result<Vec<_>>>()?;
        Ok(Fleet {
            stats: Arc::new(Stats::new(agents.len())),
            agents: agents.into_iter().map(Arc::new).collect(),
            endpoints,
            tasks: Vec::new(),
        })
    }

    pub(crate) fn agents(&self) -> &[Arc<SimAgent>] {
        &self.agents
    }

    /// Start the agents that are not running yet, up to `upto`. At most
    /// `concurrency` first connection attempts are in flight at once (a
    /// ramp, as a fleet being rolled out); reconnections after that follow
    /// the agent's own backoff, unpaced.
    pub(crate) fn start(&mut self, upto: usize, concurrency: usize) {
        let gate = Arc::new(Semaphore::new(concurrency.max(1)));
        let from = self.tasks.len();
        for a in self.agents[from..upto.min(self.agents.len())].iter() {
            let endpoint = self.endpoints[a.index % self.endpoints.len()].clone();
            self.tasks.push(tokio::spawn(run_agent(
                a.clone(),
                endpoint,
                self.stats.clone(),
                gate.clone(),
            )));
        }
    }

    /// Wait until `n` agents are ready, or fail after `timeout`.
    pub(crate) async fn wait_ready(&self, n: usize, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let ready = self.stats.ready.load(Ordering::SeqCst);
            if ready >= n {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "only {ready} of {n} simulated agents connected within {timeout:?}; \
                     last error: {:?}",
                    self.stats.last_error.lock().ok().and_then(|e| e.clone())
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stop every agent (their connections close).
    pub(crate) async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        for e in &self.endpoints {
            e.close(0u32.into(), b"simulation over");
        }
    }
}

/// One agent's life, like `certfleet-agent run`.
async fn run_agent(
    agent: Arc<SimAgent>,
    endpoint: quinn::Endpoint,
    stats: Arc<Stats>,
    gate: Arc<Semaphore>,
) {
    let mut attempt = 0u32;
    let mut first = Some(gate);
    loop {
        let mut state = SessionState::Connecting;
        let permit = match first.take() {
            Some(g) => g.acquire_owned().await.ok(),
            None => None,
        };
        let result = run_session(&agent, &endpoint, &stats, &mut state, permit).await;
        if state == SessionState::Ready {
            stats.ready.fetch_sub(1, Ordering::SeqCst);
        }
        if let Err(e) = result {
            if state == SessionState::Connecting {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.session_errors.fetch_add(1, Ordering::Relaxed);
            }
            stats.error(&e);
        }
        if state != SessionState::Connecting {
            // The controller was reachable: come back quickly.
            attempt = 0;
        }
        let wait = session::backoff(attempt, session::jitter());
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(wait).await;
    }
}

#[derive(Debug, PartialEq, Eq)]
enum SessionState {
    Connecting,
    Connected,
    Ready,
}

async fn run_session(
    agent: &SimAgent,
    endpoint: &quinn::Endpoint,
    stats: &Stats,
    state: &mut SessionState,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<()> {
    let conn = Conn::mtls_via(endpoint, agent.addr, &agent.identity).await?;
    *state = SessionState::Connected;
    stats.sessions.fetch_add(1, Ordering::Relaxed);
    conn.call(&Request::AgentHello(session::hello(&agent.config)))
        .await?;
    sync(agent, &conn, stats).await?;
    drop(permit);
    *state = SessionState::Ready;
    stats.ready.fetch_add(1, Ordering::SeqCst);
    let mut resync = tokio::time::interval(session::RESYNC_INTERVAL);
    resync.tick().await;
    loop {
        tokio::select! {
            bi = conn.conn.accept_bi() => {
                let (mut send, mut recv) = bi.map_err(|e| anyhow!("connection lost: {e}"))?;
                let reply = match frame::read::<AgentCommand, _>(&mut recv, DEFAULT_MAX_FRAME).await {
                    Ok(command) => certfleet_agent::challenge::handle(&agent.config, command).await,
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
                    sync(agent, &conn, stats).await?;
                }
            }
            _ = resync.tick() => sync(agent, &conn, stats).await?,
        }
    }
}

/// The agent's own sync, then a note of when the expected certificate was
/// installed and its report acknowledged (a report is acknowledged only
/// after the controller has committed it).
async fn sync(agent: &SimAgent, conn: &Conn, stats: &Stats) -> Result<()> {
    session::sync(&agent.config, conn).await?;
    let expect = stats
        .expect
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(fp) = expect {
        let slot = &stats.acked_at[agent.index];
        if slot.load(Ordering::SeqCst) == 0 {
            let st = certfleet_agent::state::AgentState::load(&agent.config.state_dir)?;
            if st.targets.get(TARGET).is_some_and(|t| {
                t.fingerprint.as_deref() == Some(fp.as_str())
                    && t.last_result == DeploymentStatus::Installed
            }) {
                let us = stats.start.elapsed().as_micros().max(1);
                slot.store(u64::try_from(us).unwrap_or(u64::MAX), Ordering::SeqCst);
                stats.acked.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    Ok(())
}

/// SHA-256 (lower-case hex) of the first certificate in a PEM file: what
/// the agent installed, checked the way an operator would.
pub(crate) fn installed_fingerprint(path: &Path) -> Result<String> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let der =
        CertificateDer::from_pem_slice(&pem).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(certfleet_controller::check::fingerprint(der.as_ref()))
}

/// A controller process and a simulated fleet minted for it.
pub(crate) struct Rig {
    pub(crate) serve: Controller,
    pub(crate) fleet: Fleet,
    pub(crate) admin: Client,
    /// How long minting the identities took.
    pub(crate) mint: Duration,
    // Dropped last: the agents' directories (on tmpfs).
    _agents: tempfile::TempDir,
}

impl Rig {
    /// Start a controller on a free loopback port, stop it, mint `count`
    /// agents into its state, start it again and connect an admin client.
    /// No agent is started yet.
    pub(crate) async fn new(count: usize, endpoints: usize) -> Result<Rig> {
        let agents_dir = tempfile::Builder::new()
            .prefix("certfleet-bench-agents-")
            .tempdir_in(TMPFS)
            .with_context(|| format!("cannot create a directory in {TMPFS}"))?;
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let shm = agents_dir.path().to_path_buf();
        let (serve, agents, mint) = tokio::task::spawn_blocking(move || -> Result<_> {
            let mut serve = Controller::start_with(ControllerOptions {
                listen: Some(listen),
                ..ControllerOptions::default()
            })?;
            serve.terminate()?;
            let t = Instant::now();
            let agents = mint(serve.state_dir(), &shm, listen, count)?;
            let took = t.elapsed();
            serve.start_again()?;
            Ok((serve, agents, took))
        })
        .await??;
        let cred = Credential::load(&serve.credential_path())?;
        let admin = Client::open(listen, &cred).await?;
        Ok(Rig {
            fleet: Fleet::new(agents, endpoints)?,
            serve,
            admin,
            mint,
            _agents: agents_dir,
        })
    }

    /// Reconnect the admin client (after a controller restart).
    pub(crate) async fn reconnect_admin(&mut self) -> Result<()> {
        let cred = Credential::load(&self.serve.credential_path())?;
        self.admin = Client::open(self.serve.listen(), &cred).await?;
        Ok(())
    }

    /// Agents the controller itself counts as connected.
    pub(crate) async fn online(&self) -> Result<u32> {
        match self.admin.call(&Request::Status).await? {
            Response::Status(s) => Ok(s.agents.online),
            other => bail!("unexpected answer to Status: {other:?}"),
        }
    }
}

/// Where simulated agents keep their state and install their files.
pub(crate) const TMPFS: &str = "/dev/shm";
