//! `certfleet serve`: opens the state directory, starts the QUIC endpoint for
//! admins and agents, the plain-HTTP CRL endpoint and the background
//! reconcilers, and drains them all on shutdown.

mod admission;
mod crl_http;
mod ctx;
pub mod endpoint_cert;
mod enroll;
mod gate;
mod hello;
mod intake;
pub mod lock;
mod rpc;
pub mod state_dir;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::client::Credential;
use crate::clock::Clock;
use crate::identity::{IdentityCa, Role};
use crate::seal::MasterKey;
use crate::service::Service;
use crate::store::{self, Store};

/// File names inside the state directory.
pub const DB_FILE: &str = "certfleet.db";
pub const MASTER_KEY_FILE: &str = "master.key";
pub const ADMIN_CREDENTIAL_FILE: &str = "admin.credential";
pub const RUNTIME_FILE: &str = "runtime.json";

const MASTER_KEY_CHECK: &str = "master_key_check";
const MASTER_KEY_CHECK_AAD: &str = "meta:master-key-check";
const MASTER_KEY_CHECK_TEXT: &[u8] = b"certfleet master key check v1";

/// QUIC connection receive window before the peer is authenticated.
const INITIAL_RECEIVE_WINDOW: u32 = 16 * 1024;
/// QUIC receive window of one stream.
const STREAM_RECEIVE_WINDOW: u32 = 256 * 1024;

/// How long an admin credential written by the controller stays valid.
pub use crate::admin::ADMIN_CREDENTIAL_DAYS;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub crl_listen: SocketAddr,
    /// Base of the URL written into certificates' CRL distribution point;
    /// defaults to `http://<crl_listen>`.
    pub crl_url_base: Option<String>,
    pub master_key_file: Option<PathBuf>,
}

/// What a running controller tells the world about itself
/// (`<state-dir>/runtime.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RuntimeInfo {
    pub listen: SocketAddr,
    pub crl_listen: SocketAddr,
    pub crl_url_base: String,
    pub pid: u32,
}

/// The opened state directory.
pub struct State {
    pub store: Store,
    pub master: Arc<MasterKey>,
    pub identity: Arc<IdentityCa>,
}

/// Open the state directory: database, master key (created at first start,
/// verified on every later one), identity CA and the first admin credential.
pub fn open_state(opts: &ServeOptions, clock: &dyn Clock) -> anyhow::Result<State> {
    state_dir::prepare(&opts.state_dir)?;
    let key_path = master_key_path(&opts.state_dir, opts.master_key_file.as_deref());
    let store = Store::open(&opts.state_dir.join(DB_FILE))?;
    let check = store.call_blocking(|c| store::meta_get(c, MASTER_KEY_CHECK))?;
    let master = match check {
        Some(blob) => verified_master_key(&key_path, &blob, &opts.state_dir)?,
        None => {
            let key = if key_path.exists() {
                MasterKey::load(&key_path)?
            } else {
                info!(path = %key_path.display(), "creating master key");
                MasterKey::create(&key_path)?
            };
            let blob = key.seal(MASTER_KEY_CHECK_AAD, MASTER_KEY_CHECK_TEXT)?;
            store.call_blocking(|c| store::meta_put(c, MASTER_KEY_CHECK, &blob))?;
            key
        }
    };

    let now = clock.now();
    let existing = store.call_blocking(|c| store::identity_ca_get(c))?;
    let identity = match existing {
        Some(row) => IdentityCa::load(&master, &row)?,
        None => {
            info!("creating identity CA and the first admin credential");
            let (ca, row) = IdentityCa::create(&master, now)?;
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let issued = ca.issue_client(
                Role::Admin,
                "admin",
                &key,
                now,
                time::Duration::days(ADMIN_CREDENTIAL_DAYS),
            )?;
            let ts = now.unix_timestamp();
            store.call_blocking(|c| -> anyhow::Result<()> {
                let tx = c.transaction()?;
                store::identity_ca_put(&tx, &row, ts)?;
                store::credential_insert(
                    &tx,
                    &store::CredentialRow {
                        serial: issued.serial.clone(),
                        role: Role::Admin.as_str().into(),
                        subject: "admin".into(),
                        not_after: issued.not_after,
                        revoked_at: None,
                    },
                    ts,
                )?;
                store::audit_insert(
                    &tx,
                    ts,
                    &store::AuditRecord {
                        actor: "controller",
                        action: "admin.credential.create",
                        target: "admin",
                        outcome: "ok",
                        detail: &format!("serial={} file={ADMIN_CREDENTIAL_FILE}", issued.serial),
                    },
                )?;
                tx.commit()?;
                Ok(())
            })?;
            Credential::write_pem(
                &opts.state_dir.join(ADMIN_CREDENTIAL_FILE),
                &issued.cert_pem,
                ca.cert_pem(),
                &key.serialize_pem(),
            )?;
            ca
        }
    };
    Ok(State {
        store,
        master: Arc::new(master),
        identity: Arc::new(identity),
    })
}

fn master_key_path(state_dir: &Path, file: Option<&Path>) -> PathBuf {
    file.map(Path::to_path_buf)
        .unwrap_or_else(|| state_dir.join(MASTER_KEY_FILE))
}

/// Load the master key and check it against the state directory's sealed
/// check value.
fn verified_master_key(
    key_path: &Path,
    check: &[u8],
    state_dir: &Path,
) -> anyhow::Result<MasterKey> {
    let key = MasterKey::load(key_path)?;
    key.open(MASTER_KEY_CHECK_AAD, check).map_err(|_| {
        anyhow!(
            "master key {} does not match state directory {}: it is not the key this \
             controller was initialized with. Restore the original key file, or name it \
             with --master-key-file",
            key_path.display(),
            state_dir.display()
        )
    })?;
    Ok(key)
}

/// Check that the master key at `key_path` is the one the database file
/// `db` (a backup about to be restored) was made with.
pub fn verify_master_key_of(db: &Path, key_path: &Path) -> anyhow::Result<()> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("cannot open {}", db.display()))?;
    let check = store::meta_get(&conn, MASTER_KEY_CHECK)?.ok_or_else(|| {
        anyhow!(
            "{} holds no certfleet controller state (no master key check value)",
            db.display()
        )
    })?;
    let key = MasterKey::load(key_path)?;
    key.open(MASTER_KEY_CHECK_AAD, &check).map_err(|_| {
        anyhow!(
            "master key {} is not the key {} was made with: its private keys would not open. \
             Put the master key of the controller the backup came from there, or name it with \
             --master-key-file",
            key_path.display(),
            db.display()
        )
    })?;
    Ok(())
}

/// The master key's path: `file`, or `master.key` in the state directory.
pub fn master_key_location(state_dir: &Path, file: Option<&Path>) -> PathBuf {
    master_key_path(state_dir, file)
}

/// Open an initialized state directory without creating anything and
/// without the controller lock, for `certfleet admin create --state-dir`:
/// it works beside a running controller (SQLite's own locking orders the
/// writes) and with none.
pub fn open_existing(state_dir: &Path, master_key_file: Option<&Path>) -> anyhow::Result<State> {
    let db = state_dir.join(DB_FILE);
    if !db.exists() {
        bail!(
            "{} holds no controller state ({} is missing): name the directory `certfleet \
             serve` uses with --state-dir",
            state_dir.display(),
            db.display()
        );
    }
    // SQLite may create its -wal and -shm files here; made by another user
    // (root), they would lock the controller's own user out of its database.
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(&db).with_context(|| format!("cannot read {}", db.display()))?,
    );
    let me = nix::unistd::getuid().as_raw();
    if owner != me {
        let name = nix::unistd::User::from_uid(owner.into())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| format!("uid {owner}"));
        bail!(
            "{} belongs to {name}, and this command runs as uid {me}: files it creates there \
             would lock the controller out of its database; run it as that user (sudo -u \
             {name} certfleet …)",
            db.display()
        );
    }
    let store = Store::open(&db)?;
    let not_initialized = || {
        anyhow!(
            "state directory {} was never initialized by `certfleet serve`; start the \
             controller once, it writes the first admin credential",
            state_dir.display()
        )
    };
    let check = store
        .call_blocking(|c| store::meta_get(c, MASTER_KEY_CHECK))?
        .ok_or_else(not_initialized)?;
    let key_path = master_key_path(state_dir, master_key_file);
    let master = verified_master_key(&key_path, &check, state_dir)?;
    let row = store
        .call_blocking(|c| store::identity_ca_get(c))?
        .ok_or_else(not_initialized)?;
    let identity = IdentityCa::load(&master, &row)?;
    Ok(State {
        store,
        master: Arc::new(master),
        identity: Arc::new(identity),
    })
}

fn write_runtime(dir: &Path, info: &RuntimeInfo) -> anyhow::Result<()> {
    let tmp = dir.join(format!("{RUNTIME_FILE}.tmp"));
    // Created afresh, so 0600 applies (an existing file keeps its mode).
    let _ = std::fs::remove_file(&tmp);
    crate::client::create_private_file(&tmp, 0o600)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &serde_json::to_vec_pretty(info)?))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(RUNTIME_FILE))
        .with_context(|| format!("cannot write {}", dir.join(RUNTIME_FILE).display()))?;
    Ok(())
}

/// A controller whose sockets are bound and whose tasks are running.
pub struct Running {
    pub runtime: RuntimeInfo,
    pub service: Arc<Service>,
    shutdown: watch::Sender<bool>,
    endpoint: quinn::Endpoint,
    tasks: tokio::task::JoinSet<()>,
    state_dir: PathBuf,
    endpoint_cert: Arc<endpoint_cert::EndpointCert>,
    identity: Arc<IdentityCa>,
    clock: Arc<dyn Clock>,
    // Held until the controller has stopped; dropped last.
    _lock: lock::StateLock,
}

impl Running {
    /// Stop accepting, close connections, and wait (briefly) for tasks.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"controller shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(5), self.endpoint.wait_idle()).await;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let _ = std::fs::remove_file(self.state_dir.join(RUNTIME_FILE));
        info!("controller stopped");
    }

    /// Stop as a crash would: every task aborted where it stands, nothing
    /// drained or waited for, `runtime.json` left behind. For the soak
    /// benchmark, which restarts controllers both ways in one process.
    /// Peers see their connections closed at once (after a real crash they
    /// would see a reset from the next controller on the port, or an idle
    /// timeout); the port is free once those connections' own tasks have
    /// noticed, a moment later.
    pub async fn abort(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"controller aborted");
        warn!("controller aborted");
    }

    /// The validity of the endpoint certificate new handshakes get.
    pub fn endpoint_cert_validity(&self) -> (time::OffsetDateTime, time::OffsetDateTime) {
        self.endpoint_cert.validity()
    }

    /// One check of the endpoint-certificate renewal loop, now: renew it if
    /// it is due. Whether it was renewed.
    pub fn renew_endpoint_cert_if_due(&self) -> anyhow::Result<bool> {
        Ok(endpoint_cert::renew_if_due(
            &self.endpoint_cert,
            &self.identity,
            self.clock.now(),
        )?)
    }
}

/// Open the state, bind the sockets and start every task.
pub async fn start(opts: ServeOptions, clock: Arc<dyn Clock>) -> anyhow::Result<Running> {
    // The lock comes first: nothing of the state directory is read or
    // written while another controller may be using it.
    let (state_lock, state) = {
        let opts = opts.clone();
        let clock = clock.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            state_dir::prepare_dir(&opts.state_dir)?;
            let state_lock = lock::acquire(&opts.state_dir)?;
            Ok((state_lock, open_state(&opts, clock.as_ref())?))
        })
        .await??
    };

    let endpoint_cert = Arc::new(endpoint_cert::EndpointCert::new(
        &state.identity,
        crate::identity::server_provider(),
        clock.now(),
    )?);
    let tls = state.identity.server_tls(
        endpoint_cert.clone(),
        Arc::new(crate::clock::TlsTime(clock.clone())),
    )?;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(60).try_into()?));
    // quinn sets aside state for every stream a peer may open at once,
    // per connection: 256 bidirectional and 100 unidirectional streams
    // were ~25 kB of each idle agent's connection. Admins and agents make
    // one request at a time (more just wait for credit), and no peer opens
    // unidirectional streams to the controller (pokes go the other way).
    transport.max_concurrent_bidi_streams(32u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    // What quinn buffers for a peer before the controller reads it. A
    // connection starts with a window that holds a hello and an
    // enrollment, since anyone may open one; an authenticated connection
    // is given more (see `rpc`). One stream's window bounds one request's
    // unread bytes; large requests (inventory reports) are read as they
    // arrive.
    transport.receive_window(INITIAL_RECEIVE_WINDOW.into());
    transport.stream_receive_window(STREAM_RECEIVE_WINDOW.into());
    server_config.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::server(server_config, opts.listen).with_context(|| {
        format!(
            "cannot listen on {} (UDP); is another controller running? choose another --listen",
            opts.listen
        )
    })?;
    let listen = endpoint.local_addr()?;
    let crl_listener = tokio::net::TcpListener::bind(opts.crl_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (TCP) for the CRL endpoint; choose another --crl-listen",
                opts.crl_listen
            )
        })?;
    let crl_listen = crl_listener.local_addr()?;
    let crl_url_base = opts
        .crl_url_base
        .clone()
        .unwrap_or_else(|| format!("http://{crl_listen}"));

    let (service, app_rx) = Service::new(
        state.store.clone(),
        state.master.clone(),
        clock.clone(),
        state.identity.clone(),
        crl_url_base.clone(),
    );
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(service.clone().run_applications(app_rx));
    tasks.spawn(crl_http::serve(
        crl_listener,
        service.clone(),
        shutdown_rx.clone(),
    ));
    tasks.spawn(expiry_loop(service.clone(), shutdown_rx.clone()));
    tasks.spawn(service.clone().run_rollouts(shutdown_rx.clone()));
    tasks.spawn(service.clone().run_renewals(shutdown_rx.clone()));
    tasks.spawn(service.clone().run_at_risk(shutdown_rx.clone()));
    tasks.spawn(endpoint_cert::renew_loop(
        endpoint_cert.clone(),
        state.identity.clone(),
        clock.clone(),
        shutdown_rx.clone(),
    ));
    let gate = Arc::new(gate::Gate::default());
    let ctx = Arc::new(ctx::Ctx {
        service: service.clone(),
        store: state.store.clone(),
        identity: state.identity.clone(),
        admin_revoked: tokio::sync::broadcast::channel(16).0,
        admission: Arc::new(admission::Admission::new(gate.clone())),
        gate,
        budget: intake::Budget::new(intake::GLOBAL_BUDGET),
    });
    tasks.spawn(enroll::flush_refusals(ctx.clone(), shutdown_rx.clone()));
    tasks.spawn(rpc::accept_loop(endpoint.clone(), ctx, shutdown_rx));

    let runtime = RuntimeInfo {
        listen,
        crl_listen,
        crl_url_base,
        pid: std::process::id(),
    };
    write_runtime(&opts.state_dir, &runtime)?;
    info!(%listen, %crl_listen, state_dir = %opts.state_dir.display(), "controller listening");
    Ok(Running {
        runtime,
        service,
        shutdown,
        endpoint,
        tasks,
        state_dir: opts.state_dir,
        endpoint_cert,
        identity: state.identity.clone(),
        clock,
        _lock: state_lock,
    })
}

/// Run a controller until `shutdown` resolves.
pub async fn run(
    opts: ServeOptions,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let running = start(opts, clock).await?;
    shutdown.await;
    info!("shutting down");
    running.stop().await;
    Ok(())
}

/// Marks certificates past their expiry, every minute.
async fn expiry_loop(service: Arc<Service>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match service.expire().await {
                    Ok(0) => {}
                    Ok(n) => info!(count = n, "certificates expired"),
                    Err(e) => warn!(error = %e, "expiry pass failed"),
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}
