//! `acme`: ACME orders against a local Pebble (`PEBBLE_VA_NOSLEEP=1`) with
//! HTTP-01 answered through a real agent's webroot, next to certbot
//! obtaining certificates from the same Pebble in the same run.
//!
//! Everything is real and local: `pebble` and `pebble-challtestsrv` (every
//! name resolves to 127.0.0.1), an nginx serving the webroot on the port
//! Pebble's VA validates, a `certfleet serve` with an ACME issuer for that
//! Pebble, and one enrolled `certfleet-agent` whose `files` target covers
//! `*.acme.bench` and sets `webroot`, so the controller has the agent write
//! each challenge file. Orders are sent by an in-process operator client
//! (`CertApplyChallenge`, then `ApplicationShow` every 5 ms), so neither a
//! CLI process start nor a 200 ms `--wait` poll is counted.
//!
//! Phases, all against the same Pebble:
//! 1. `sequential`: one order at a time; p50/p99 from request to issued
//!    certificate.
//! 2. `concurrent`: `concurrency` clients ordering at once; per-order
//!    p50/p99 and certificates per second.
//! 3. Breakdown: the same ACME flow run by this process with instant-acme
//!    directly (the challenge file written straight into the webroot, no
//!    controller, no agent), once polling every 2 ms (what Pebble, nginx and
//!    the ACME round trips cost) and once with instant-acme's default
//!    polling policy, which the controller uses.
//! 4. certbot (`certbot certonly --webroot`, one process per certificate, the
//!    way it is run), after an untimed account registration.
//!
//! Pebble's 5% bad-nonce injection is off and authorization reuse is off
//! (`PEBBLE_AUTHZREUSE=0`), so every order validates a fresh HTTP-01
//! challenge, for certfleet and certbot alike.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use certfleet_controller::client::{Client, Credential};
use certfleet_protocol::message::{
    ApplicationInfo, InstanceSpec, KeyType, Request, Response, ValidationType,
};
use certfleet_tests::acme::{ChallTestSrv, Pebble, PebbleOptions, WebrootNginx};
use certfleet_tests::fleet::{named_files_agent_config, token, wait_connected, Agent};
use certfleet_tests::{utf8, Controller};
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use serde_json::json;

/// The zone every benchmark name is in; the agent's target covers `*.ZONE`.
const ZONE: &str = "acme.bench";
/// Upper bound for one order (Pebble answers in milliseconds).
const ORDER_TIMEOUT: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub sequential: usize,
    pub concurrent: usize,
    pub concurrency: usize,
    pub floor: usize,
    pub certbot: usize,
}

pub(crate) fn run(results: &Path, opts: Options) -> Result<()> {
    let started = Instant::now();
    let certbot = if opts.certbot > 0 {
        Some(certbot_bin()?)
    } else {
        None
    };

    let cts = ChallTestSrv::start()?;
    let mut pebble_opts = PebbleOptions::new(cts.dns_addr());
    pebble_opts.no_nonce_reject = true;
    pebble_opts
        .env
        .push(("PEBBLE_AUTHZREUSE".into(), "0".into()));
    let pebble = Pebble::start(pebble_opts)?;
    let webroot = WebrootNginx::start(pebble.http_port)?;
    let ctl = Controller::start()?;
    ctl.cli_json(&[
        "issuer",
        "add",
        "pebble",
        "--kind",
        "acme",
        "--directory",
        &pebble.directory_url(),
        "--ca-bundle",
        utf8(pebble.ca_bundle_path())?,
        "--contact",
        "mailto:ops@acme.bench",
    ])?;

    // One agent answering HTTP-01 for every name in the zone.
    let files = tempfile::tempdir()?;
    let config = format!(
        "{}webroot = \"{}\"\n",
        named_files_agent_config("bench-acme", "files", files.path(), &format!("*.{ZONE}")),
        webroot.webroot().display()
    );
    let (tok, pin) = token(&ctl, &["--labels", "role=web"])?;
    let mut agent = Agent::new(&ctl, &config)?;
    agent.enroll(&ctl, &tok, &pin)?;
    agent.start()?;
    wait_connected(
        &ctl,
        agent.id.as_deref().unwrap_or_default(),
        true,
        Duration::from_secs(30),
    )?;

    let rt = tokio::runtime::Runtime::new()?;
    let cred = Arc::new(Credential::load(&ctl.credential_path())?);
    let addr = ctl.listen();
    let (sequential, concurrent) = rt.block_on(async {
        let client = Arc::new(Client::open(addr, &cred).await?);
        // One untimed order: the controller loads the account, connections
        // are set up.
        let warm = instances(&client, 1).await?;
        order(&client, &warm[0], &name("warmup", 0)).await?;

        let ids = instances(&client, opts.sequential).await?;
        let mut seq = Vec::with_capacity(ids.len());
        let start = Instant::now();
        for (i, id) in ids.iter().enumerate() {
            seq.push(order(&client, id, &name("seq", i)).await?);
        }
        let seq_wall = start.elapsed().as_secs_f64();

        let queue = Arc::new(Queue::new(instances(&client, opts.concurrent).await?));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..opts.concurrency {
            let (client, queue) = (client.clone(), queue.clone());
            tasks.push(tokio::spawn(async move {
                let mut times = Vec::new();
                while let Some((i, id)) = queue.next() {
                    times.push(order(&client, &id, &name("conc", i)).await?);
                }
                anyhow::Ok(times)
            }));
        }
        let mut conc = Vec::new();
        for t in tasks {
            conc.extend(t.await??);
        }
        let conc_wall = start.elapsed().as_secs_f64();
        client.close();
        anyhow::Ok(((seq, seq_wall), (conc, conc_wall)))
    })?;

    // Breakdown: the same flow without controller and agent, from this
    // process: with the controller's HTTP client (TCP_NODELAY) and polling
    // every 2 ms, this is what Pebble, nginx and the round trips cost; with
    // instant-acme's own client (Nagle on); and with instant-acme's own
    // client and polling policy, which the controller used before.
    let (floor, nagle, old) = rt.block_on(async {
        let pem = std::fs::read_to_string(pebble.ca_bundle_path())?;
        let new_account = NewAccount {
            contact: &[],
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let nodelay = certfleet_controller::issuer::acme::account_builder(Some(&pem))
            .map_err(|e| anyhow::anyhow!(e.to_string()))?
            .create(&new_account, pebble.directory_url(), None)
            .await?
            .0;
        let plain = Account::builder_with_root(pebble.ca_bundle_path())?
            .create(&new_account, pebble.directory_url(), None)
            .await?
            .0;
        let dir = webroot.challenge_dir();
        let fast = RetryPolicy::new()
            .initial_delay(Duration::from_millis(2))
            .backoff(1.0)
            .timeout(ORDER_TIMEOUT);
        let default_policy = RetryPolicy::new().timeout(ORDER_TIMEOUT);
        let mut runs = Vec::new();
        for (label, account, policy) in [
            ("floor", &nodelay, &fast),
            ("nagle", &plain, &fast),
            ("old", &plain, &default_policy),
        ] {
            // One untimed order each: connections are set up.
            direct_order(account, &dir, &name(&format!("{label}-warmup"), 0), policy).await?;
            let mut phases = Vec::new();
            for i in 0..opts.floor {
                phases.push(direct_order(account, &dir, &name(label, i), policy).await?);
            }
            runs.push(phases);
        }
        let old = runs.pop().unwrap_or_default();
        let nagle = runs.pop().unwrap_or_default();
        let floor = runs.pop().unwrap_or_default();
        anyhow::Ok((floor, nagle, old))
    })?;

    let certbot_result = match &certbot {
        Some(bin) => Some(run_certbot(bin, &pebble, &webroot, opts.certbot)?),
        None => None,
    };

    let (seq, seq_wall) = sequential;
    let (conc, conc_wall) = concurrent;
    let seq_p50 = percentile(&seq, 0.5);
    let mut value = json!({
        "bench": "acme",
        "sequential": {
            "orders": seq.len(),
            "p50_ms": round1(seq_p50),
            "p99_ms": round1(percentile(&seq, 0.99)),
            "max_ms": round1(percentile(&seq, 1.0)),
            "certs_per_sec": round2(seq.len() as f64 / seq_wall),
        },
        "concurrent": {
            "orders": conc.len(),
            "concurrency": opts.concurrency,
            "p50_ms": round1(percentile(&conc, 0.5)),
            "p99_ms": round1(percentile(&conc, 0.99)),
            "certs_per_sec": round2(conc.len() as f64 / conc_wall),
        },
        "breakdown": {
            "direct_floor_p50_ms": round1(percentile(&totals(&floor), 0.5)),
            "direct_floor_order_p50_ms": round1(percentile(&floor.iter().map(|p| p.order).collect::<Vec<_>>(), 0.5)),
            "direct_floor_validation_p50_ms": round1(percentile(&floor.iter().map(|p| p.validation).collect::<Vec<_>>(), 0.5)),
            "direct_floor_finalize_p50_ms": round1(percentile(&floor.iter().map(|p| p.finalize).collect::<Vec<_>>(), 0.5)),
            "certfleet_over_floor_ms": round1(seq_p50 - percentile(&totals(&floor), 0.5)),
            "direct_instant_acme_client_p50_ms": round1(percentile(&totals(&nagle), 0.5)),
            "direct_instant_acme_client_and_policy_p50_ms": round1(percentile(&totals(&old), 0.5)),
            "orders_each": floor.len(),
            "note": "direct_*: the same ACME flow from this process, the challenge file written straight into the webroot (no controller, no agent). floor: the controller's HTTP client (TCP_NODELAY), polling every 2 ms. instant_acme_client: instant-acme's own client (Nagle on), polling every 2 ms. instant_acme_client_and_policy: its client and default polling (250 ms, doubling), as the controller did before",
        },
        "target_p50_ms": 50,
        "machine": crate::machine(),
    });
    if let Some(cb) = certbot_result {
        value["certbot"] = json!({
            "certificates": cb.times.len(),
            "p50_ms": round1(percentile(&cb.times, 0.5)),
            "max_ms": round1(percentile(&cb.times, 1.0)),
            "startup_ms": round1(cb.startup_ms),
            "version": cb.version,
        });
        value["certbot_over_certfleet"] = json!(round1(percentile(&cb.times, 0.5) / seq_p50));
        value["target_ratio"] = json!(20);
    }
    value["wall_seconds"] = json!(round1(started.elapsed().as_secs_f64()));
    crate::record(results, value)?;
    drop(agent);
    drop(ctl);
    Ok(())
}

fn name(phase: &str, i: usize) -> String {
    format!("{phase}-{i}.{ZONE}")
}

fn totals(phases: &[Phases]) -> Vec<f64> {
    phases.iter().map(|p| p.total).collect()
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The `p` quantile (nearest rank) of `values`, in the unit given.
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A work queue the concurrent clients pull `(index, instance)` from.
struct Queue(std::sync::Mutex<std::vec::IntoIter<(usize, String)>>);

impl Queue {
    fn new(ids: Vec<String>) -> Queue {
        let items: Vec<(usize, String)> = ids.into_iter().enumerate().collect();
        Queue(std::sync::Mutex::new(items.into_iter()))
    }

    fn next(&self) -> Option<(usize, String)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).next()
    }
}

async fn call(client: &Client, request: Request) -> Result<Response> {
    match client.call(&request).await? {
        Response::Error(e) => bail!("the controller refused {request:?}: {}", e.message),
        r => Ok(r),
    }
}

/// `n` one-name ACME instances for the `pebble` issuer (untimed set-up: an
/// instance holds one certificate).
async fn instances(client: &Client, n: usize) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let spec = InstanceSpec {
            issuer: "pebble".into(),
            validation: ValidationType::Dv,
            max_domains: 1,
            wildcard: false,
            validity_days: 90,
            key: KeyType::EcdsaP256,
            renew_before_days: None,
            fallback_issuers: Vec::new(),
            fallback_after_secs: None,
        };
        match call(client, Request::InstanceCreate(spec)).await? {
            Response::Instance(i) => ids.push(i.id),
            other => bail!("unexpected reply to InstanceCreate: {other:?}"),
        }
    }
    Ok(ids)
}

/// One order through the controller: milliseconds from the request to the
/// application showing its certificate.
async fn order(client: &Client, instance: &str, domain: &str) -> Result<f64> {
    let start = Instant::now();
    let mut app = application(
        call(
            client,
            Request::CertApplyChallenge {
                instance: instance.to_string(),
                domains: vec![domain.to_string()],
                challenge: Some("http-01".into()),
            },
        )
        .await?,
    )?;
    while app.state.in_flight() {
        if start.elapsed() > ORDER_TIMEOUT {
            bail!("application {} for {domain} still {}", app.id, app.state);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        app = application(call(client, Request::ApplicationShow { id: app.id.clone() }).await?)?;
    }
    if app.certificate.is_none() {
        bail!(
            "application {} for {domain} failed: {}",
            app.id,
            app.last_error.as_deref().unwrap_or("no reason given")
        );
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

fn application(r: Response) -> Result<ApplicationInfo> {
    match r {
        Response::Application(a) => Ok(a),
        other => bail!("expected an application, got {other:?}"),
    }
}

/// Milliseconds one direct order spent in each step.
#[derive(Debug, Clone, Copy)]
struct Phases {
    total: f64,
    /// newOrder and the authorization fetch.
    order: f64,
    /// Challenge answered → order ready (Pebble's validation, polled).
    validation: f64,
    /// CSR generation, finalize → certificate downloaded (polled).
    finalize: f64,
}

/// One HTTP-01 order straight from instant-acme, the key authorization
/// written into the webroot nginx serves.
async fn direct_order(
    account: &Account,
    challenge_dir: &Path,
    domain: &str,
    policy: &RetryPolicy,
) -> Result<Phases> {
    let start = Instant::now();
    let ms = |since: Instant| since.elapsed().as_secs_f64() * 1000.0;
    let ids = [Identifier::Dns(domain.to_string())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let mut written = Vec::new();
    let mut authorizations = order.authorizations();
    let mut answered = None;
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        if authz.status != AuthorizationStatus::Pending {
            continue;
        }
        let mut challenge = authz
            .challenge(ChallengeType::Http01)
            .context("Pebble offered no http-01 challenge")?;
        let path = challenge_dir.join(&challenge.token);
        std::fs::write(&path, challenge.key_authorization().as_str())?;
        written.push(path);
        answered.get_or_insert_with(|| ms(start));
        challenge.set_ready().await?;
    }
    let order_ms = answered.context("no pending authorization")?;
    let validating = Instant::now();
    let status = order.poll_ready(policy).await?;
    let validation = ms(validating);
    for p in written {
        let _ = std::fs::remove_file(p);
    }
    if status != OrderStatus::Ready {
        bail!("direct order for {domain} ended {status:?}");
    }
    let finalizing = Instant::now();
    let csr = rcgen_csr(domain)?;
    order.finalize_csr(&csr).await?;
    order.poll_certificate(policy).await?;
    Ok(Phases {
        total: ms(start),
        order: order_ms,
        validation,
        finalize: ms(finalizing),
    })
}

/// A P-256 CSR for `domain` (DER), as the controller makes.
fn rcgen_csr(domain: &str) -> Result<Vec<u8>> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    Ok(params.serialize_request(&key)?.der().to_vec())
}

fn certbot_bin() -> Result<PathBuf> {
    ["/usr/bin/certbot", "/usr/local/bin/certbot"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context(
            "certbot is not installed: the acme benchmark compares against it \
             (Debian/Ubuntu: apt-get install certbot; or pass --certbot 0 to skip it)",
        )
}

struct Certbot {
    times: Vec<f64>,
    startup_ms: f64,
    version: String,
}

/// `count` certificates with certbot from `pebble`, HTTP-01 through the same
/// webroot nginx; one certbot process per certificate.
fn run_certbot(
    bin: &Path,
    pebble: &Pebble,
    webroot: &WebrootNginx,
    count: usize,
) -> Result<Certbot> {
    let dir = tempfile::tempdir()?;
    let base = |sub: &str| -> Result<Command> {
        let mut cmd = Command::new(bin);
        cmd.env("REQUESTS_CA_BUNDLE", pebble.ca_bundle_path())
            .args([
                "--config-dir",
                utf8(&dir.path().join("config"))?,
                "--work-dir",
                utf8(&dir.path().join("work"))?,
                "--logs-dir",
                utf8(&dir.path().join("logs"))?,
                "--server",
                &pebble.directory_url(),
                "--non-interactive",
                "--agree-tos",
                "--register-unsafely-without-email",
            ])
            .arg(sub);
        Ok(cmd)
    };
    let run = |mut cmd: Command, what: &str| -> Result<()> {
        let out = cmd
            .output()
            .with_context(|| format!("running certbot {what}"))?;
        if !out.status.success() {
            bail!(
                "certbot {what} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    // Interpreter start-up alone, and the version.
    let start = Instant::now();
    let out = Command::new(bin).arg("--version").output()?;
    let startup_ms = start.elapsed().as_secs_f64() * 1000.0;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Account registration, untimed (certfleet's account exists too).
    run(base("register")?, "register")?;
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let mut cmd = base("certonly")?;
        cmd.args([
            "--webroot",
            "-w",
            utf8(webroot.webroot())?,
            "-d",
            &name("certbot", i),
        ]);
        let start = Instant::now();
        run(cmd, "certonly")?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Certbot {
        times,
        startup_ms,
        version,
    })
}
