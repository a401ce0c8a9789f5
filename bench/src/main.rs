//! certfleet benchmarks. Each prints a one-line JSON result and appends it
//! to `target/bench-results.jsonl`; `docs/performance.md` records the
//! numbers and how they were obtained.
//!
//! - `issue`: built-in CA issuance per second, every certificate checked,
//!   sealed and committed, next to the raw signing rate of the crypto
//!   provider measured in the same run. The headline number is a renewal
//!   wave (every certificate issued so far comes due at once); the
//!   end-to-end rate of one operator call after another is reported too.
//! - `handshake`: full mutual-TLS QUIC handshakes (with the version
//!   exchange) per second against a real controller.
//! - `served`: time from `certfleet deploy` to nginx serving the new
//!   certificate (one real agent, one real nginx), p50 over 20 deploys.
//! - `acme`: sequential and 8-way concurrent ACME orders against a local
//!   Pebble with HTTP-01 through a real agent, next to certbot against the
//!   same Pebble (module `acme`).
//!
//! - `hold`: 10k then 25k idle simulated agents on one controller: RSS per
//!   connection, idle CPU, reconnection after a restart.
//! - `rollout`: one certificate to 10k simulated agents in a single wave:
//!   time until every acknowledgement is persisted, CPU per push, p50/p99.
//! - `soak`: two simulated years of a 1,000-certificate, 200-agent fleet
//!   with faults, on one simulated clock (module `soak`).
//! - `hostile`: partial frames, header-only streams, over-long messages and
//!   a flood of bogus enrollments against a real controller while honest
//!   calls and agents go on: RSS growth, honest p99, state growth.
//!
//! `issue` runs the controller in this process; the others drive the real
//! `certfleet serve` (and `served`/`acme` the real agent; build them first
//! with `cargo build --release --workspace --bins`). `hold` and `rollout`
//! run the fleet simulator (`fleet_sim`) against it.

mod fleet_sim;
mod hold;
mod hostile;
mod rollout;
mod serve;
mod soak;

mod acme;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use certfleet_controller::clock::SystemClock;
use certfleet_controller::server::{self, ServeOptions};
use certfleet_protocol::message::{InstanceSpec, IssuerKind, KeyType, ValidationType};
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "certfleet-bench", about = "certfleet benchmarks")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
    /// Where results are appended (one JSON line each).
    #[arg(long, default_value = "target/bench-results.jsonl", global = true)]
    results: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Built-in CA issuance per second vs the raw signing rate: COUNT
    /// P-256 certificates issued one operator call after another (end to
    /// end), then all renewed at once in a renewal wave (the headline
    /// number), then RSA-2048 end to end.
    Issue {
        /// P-256 certificates to issue, and then to renew in the wave.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// RSA-2048 certificates (RSA key generation dominates).
        #[arg(long, default_value_t = 50)]
        rsa_count: usize,
    },
    /// Full mTLS QUIC handshakes per second.
    Handshake {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Deploy → nginx serves the new certificate, p50 over N deploys.
    Served {
        #[arg(long, default_value_t = 20)]
        deploys: usize,
    },
    /// ACME orders against local Pebble (HTTP-01 through an agent) vs certbot.
    ///
    /// Needs pebble, pebble-challtestsrv, nginx and certbot
    /// (apt-get install pebble nginx certbot) and the release binaries
    /// (cargo build --release --workspace --bins).
    Acme {
        /// Orders one at a time.
        #[arg(long, default_value_t = 20)]
        sequential: usize,
        /// Orders spread over --concurrency clients.
        #[arg(long, default_value_t = 40)]
        concurrent: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Orders per breakdown variant (instant-acme straight to Pebble).
        #[arg(long, default_value_t = 10)]
        floor: usize,
        /// Certificates certbot obtains (0: skip certbot).
        #[arg(long, default_value_t = 5)]
        certbot: usize,
    },
    /// Idle simulated agents on one controller: RSS per connection, idle
    /// CPU, and reconnection after a controller restart.
    Hold {
        /// First level; the restart is measured with this many agents.
        #[arg(long, default_value_t = 10_000)]
        agents: usize,
        /// Second level.
        #[arg(long, default_value_t = 25_000)]
        max: usize,
        #[command(flatten)]
        sim: SimArgs,
        /// Seconds over which idle CPU is measured at each level.
        #[arg(long, default_value_t = 10)]
        idle_secs: u64,
    },
    /// Years of fleet life on a simulated clock, with faults: zero
    /// certificate-hours served past expiry, at-risk items raised in time.
    Soak(soak::Options),
    /// Hostile peers against a real controller while honest calls and
    /// agents go on (module `hostile`).
    Hostile {
        /// Connections without a certificate holding partial frames.
        #[arg(long, default_value_t = 1000)]
        hostile_connections: usize,
        /// Loopback source addresses they come from (127.0.0.2 …).
        #[arg(long, default_value_t = 64)]
        sources: usize,
        /// Bogus enrollments (wrong tokens) in the flood.
        #[arg(long, default_value_t = 10_000)]
        enrollments: usize,
        /// Seconds of attack during which honest calls are timed.
        #[arg(long, default_value_t = 20)]
        attack_secs: u64,
        /// Simulated agents connected throughout.
        #[arg(long, default_value_t = 100)]
        agents: usize,
    },
    /// One certificate to every simulated agent in a single wave.
    Rollout {
        #[arg(long, default_value_t = 10_000)]
        agents: usize,
        #[command(flatten)]
        sim: SimArgs,
    },
}

/// Fleet simulator settings.
#[derive(Debug, clap::Args)]
struct SimArgs {
    /// Client endpoints (UDP sockets) the simulated agents share.
    #[arg(long, default_value_t = 8)]
    endpoints: usize,
    /// First connections in flight at once while ramping up.
    #[arg(long, default_value_t = 64)]
    ramp_concurrency: usize,
}

fn record(path: &std::path::Path, value: serde_json::Value) -> Result<()> {
    let line = value.to_string();
    println!("{line}");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{line}")?;
    Ok(())
}

/// The 1-minute load average: other work on the machine while measuring.
fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(-1.0)
}

fn machine() -> serde_json::Value {
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "at": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    })
}

/// The wall clock plus an offset the benchmark can move (to make a fleet
/// of certificates come due for renewal at once).
#[derive(Debug, Default)]
struct BenchClock {
    offset_secs: std::sync::atomic::AtomicI64,
}

impl certfleet_controller::clock::Clock for BenchClock {
    fn now(&self) -> time::OffsetDateTime {
        SystemClock.now() + time::Duration::seconds(self.offset_secs.load(Ordering::Relaxed))
    }
}

async fn start_controller(
    clock: Arc<dyn certfleet_controller::clock::Clock>,
) -> Result<(tempfile::TempDir, server::Running)> {
    let dir = tempfile::tempdir()?;
    let opts = ServeOptions {
        state_dir: dir.path().join("state"),
        listen: "127.0.0.1:0".parse()?,
        crl_listen: "127.0.0.1:0".parse()?,
        crl_url_base: None,
        master_key_file: None,
    };
    let running = server::start(opts, clock).await?;
    Ok((dir, running))
}

/// Signatures per second of the provider over `secs` seconds.
fn raw_sign_rate(
    alg: &'static aws_lc_rs::signature::EcdsaSigningAlgorithm,
    secs: f64,
) -> Result<f64> {
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|_| anyhow::anyhow!("keygen"))?;
    let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).map_err(|_| anyhow::anyhow!("key"))?;
    let _ = key.public_key();
    let msg = [7u8; 512];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        key.sign(&rng, &msg).map_err(|_| anyhow::anyhow!("sign"))?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

async fn issue_rate(running: &server::Running, key: KeyType, count: usize) -> Result<f64> {
    let svc = &running.service;
    let start = Instant::now();
    let mut apps = Vec::with_capacity(count);
    for i in 0..count {
        let inst = svc
            .instance_create(
                "bench".into(),
                InstanceSpec {
                    issuer: "bench".into(),
                    validation: ValidationType::Dv,
                    max_domains: 1,
                    wildcard: false,
                    validity_days: 90,
                    key,
                    renew_before_days: None,
                    fallback_issuers: Vec::new(),
                    fallback_after_secs: None,
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!(e.to_rpc().message))?;
        let app = svc
            .cert_apply("bench".into(), inst.id, vec![format!("host{i}.bench.test")])
            .await
            .map_err(|e| anyhow::anyhow!(e.to_rpc().message))?;
        apps.push(app.id);
    }
    // The worker issues in order: the last application finishing means all did.
    let last = apps.last().cloned().context("no applications")?;
    loop {
        let a = svc
            .application_show(last.clone())
            .await
            .map_err(|e| anyhow::anyhow!(e.to_rpc().message))?;
        if !a.state.in_flight() {
            if a.certificate.is_none() {
                bail!("issuance failed: {:?}", a.last_error);
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// A renewal wave: every certificate issued so far comes due at once (the
/// clock moves 89 days on), and the controller renews them all. Timed from
/// moving the clock — the renewal pass that finds them due and stores the
/// applications is inside the span — to the moment no application is left
/// in flight, i.e. the last renewal certificate is committed. Returns
/// (certificates renewed, seconds).
async fn renewal_wave(running: &server::Running, clock: &BenchClock) -> Result<(usize, f64)> {
    let svc = &running.service;
    let rpc = |e: certfleet_controller::service::ServiceError| anyhow::anyhow!(e.to_rpc().message);
    let before = svc.status().await.map_err(rpc)?.certificates;
    let start = Instant::now();
    clock.offset_secs.fetch_add(89 * 86_400, Ordering::Relaxed);
    // The background reconciler may get there first; either way one pass
    // stores every renewal application.
    svc.reconcile_renewals().await.map_err(rpc)?;
    while svc.applications_in_flight().await.map_err(rpc)? > 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = svc.status().await.map_err(rpc)?.certificates;
    let renewed = (after.superseded - before.superseded) as usize;
    if renewed != before.active as usize || after.active != before.active {
        bail!(
            "renewal wave incomplete: {renewed} of {} certificates renewed ({} active after)",
            before.active,
            after.active
        );
    }
    Ok((renewed, elapsed))
}

async fn bench_issue(results: &std::path::Path, count: usize, rsa_count: usize) -> Result<()> {
    let clock = Arc::new(BenchClock::default());
    let (_dir, running) = start_controller(clock.clone()).await?;
    running
        .service
        .issuer_add(
            "bench".into(),
            "bench".into(),
            IssuerKind::Builtin,
            KeyType::EcdsaP256,
        )
        .await
        .map_err(|e| anyhow::anyhow!(e.to_rpc().message))?;
    let raw = raw_sign_rate(&aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING, 2.0)?;
    let p256 = issue_rate(&running, KeyType::EcdsaP256, count).await?;
    let (renewed, wave_secs) = renewal_wave(&running, &clock).await?;
    let wave = renewed as f64 / wave_secs;
    let rsa = issue_rate(&running, KeyType::Rsa2048, rsa_count).await?;
    record(
        results,
        json!({
            "bench": "issue",
            "p256_certs_per_sec": (wave * 10.0).round() / 10.0,
            "p256_wave_count": renewed,
            "p256_wave_secs": (wave_secs * 1000.0).round() / 1000.0,
            "p256_end_to_end_per_sec": (p256 * 10.0).round() / 10.0,
            "rsa2048_certs_per_sec": (rsa * 10.0).round() / 10.0,
            "raw_p256_signs_per_sec": raw.round(),
            "ratio_to_raw_signing": (wave / raw * 1000.0).round() / 1000.0,
            "count": count,
            "rsa_count": rsa_count,
            "note": "p256_certs_per_sec: renewal wave of `count` P-256 certificates, from the renewal pass to the last certificate committed; p256_end_to_end_per_sec: instance create + apply + issue, one operator call after another",
            "machine": machine(),
        }),
    )?;
    running.stop().await;
    Ok(())
}

async fn bench_handshake(
    results: &std::path::Path,
    seconds: u64,
    concurrency: usize,
) -> Result<()> {
    // The real controller in its own process, so its CPU can be measured
    // apart from the clients'.
    let ctl = tokio::task::spawn_blocking(certfleet_tests::Controller::start).await??;
    let cred = Arc::new(certfleet_controller::client::Credential::load(
        &ctl.credential_path(),
    )?);
    let addr = ctl.listen();
    let pid = ctl.runtime().pid;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let cpu_before = serve::cpu_seconds(pid)?;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (cred, done, failed) = (cred.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match certfleet_controller::client::Client::open(addr, &cred).await {
                    Ok(c) => {
                        c.close();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = serve::cpu_seconds(pid)? - cpu_before;
    let n = done.load(Ordering::Relaxed) as f64;
    record(
        results,
        json!({
            "bench": "handshake",
            "handshakes_per_sec": (n / elapsed).round(),
            "controller_cpu_seconds": (cpu * 100.0).round() / 100.0,
            "per_controller_core_second": if cpu > 0.0 { (n / cpu).round() } else { 0.0 },
            "failed": failed.load(Ordering::Relaxed),
            "concurrency": concurrency,
            "note": "clients run in this process on the same 2 cores; per_controller_core_second divides by the controller's own CPU time",
            "machine": machine(),
        }),
    )?;
    drop(ctl);
    Ok(())
}

fn bench_served(results: &std::path::Path, deploys: usize) -> Result<()> {
    use certfleet_tests::fleet::{token, wait_connected, wait_served, Agent, Nginx};
    use certfleet_tests::{str_field, Controller};
    const NAME: &str = "www.bench.test";
    let ctl = Controller::start()?;
    ctl.cli_json(&["issuer", "add", "ca", "--kind", "builtin"])?;
    let nginx = Nginx::start(NAME)?;
    let (tok, pin) = token(&ctl, &["--labels", "role=web"])?;
    let mut agent = Agent::new(&ctl, &Agent::nginx_target(&nginx, NAME, "")?)?;
    agent.enroll(&ctl, &tok, &pin)?;
    agent.start()?;
    wait_connected(
        &ctl,
        agent.id.as_deref().unwrap_or_default(),
        true,
        Duration::from_secs(30),
    )?;
    let mut times = Vec::new();
    for _ in 0..deploys {
        let cert = ctl.issue("ca", &[], &[NAME])?;
        let id = str_field(&cert, "id")?.to_owned();
        let fp = str_field(&cert, "fingerprint")?.to_owned();
        let start = Instant::now();
        ctl.cli_json(&["deploy", &id, "--to", "role=web", "--target", "nginx"])?;
        // Poll with an in-process TLS client every 5 ms, so the measurement
        // adds little of its own.
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], nginx.port));
        loop {
            let seen = certfleet_agent::install::verify::served_fingerprint(
                addr,
                NAME,
                Duration::from_secs(2),
            );
            if seen.as_deref() == Ok(fp.as_str()) {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("nginx never served {fp}: last saw {seen:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        wait_served(nginx.port, NAME, &fp, Duration::from_secs(5))?;
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    record(
        results,
        json!({
            "bench": "served",
            "p50_ms": pct(0.5).round(),
            "p90_ms": pct(0.9).round(),
            "max_ms": pct(1.0).round(),
            "deploys": deploys,
            "note": "from starting the deploy CLI to the first TLS handshake (polled every 5 ms) that shows the new leaf",
            "machine": machine(),
        }),
    )
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.bench {
        Bench::Served { deploys } => bench_served(&cli.results, deploys),
        Bench::Acme {
            sequential,
            concurrent,
            concurrency,
            floor,
            certbot,
        } => acme::run(
            &cli.results,
            acme::Options {
                sequential,
                concurrent,
                concurrency,
                floor,
                certbot,
            },
        ),
        bench => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
                )
                .with_writer(std::io::stderr)
                .init();
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                match bench {
                    Bench::Issue { count, rsa_count } => {
                        bench_issue(&cli.results, count, rsa_count).await
                    }
                    Bench::Handshake {
                        seconds,
                        concurrency,
                    } => bench_handshake(&cli.results, seconds, concurrency).await,
                    Bench::Hold {
                        agents,
                        max,
                        sim,
                        idle_secs,
                    } => {
                        hold::run(
                            &cli.results,
                            hold::Options {
                                agents,
                                max,
                                endpoints: sim.endpoints,
                                ramp_concurrency: sim.ramp_concurrency,
                                idle_secs,
                            },
                        )
                        .await
                    }
                    Bench::Rollout { agents, sim } => {
                        rollout::run(
                            &cli.results,
                            rollout::Options {
                                agents,
                                endpoints: sim.endpoints,
                                ramp_concurrency: sim.ramp_concurrency,
                            },
                        )
                        .await
                    }
                    Bench::Soak(options) => soak::run(&cli.results, options).await,
                    Bench::Hostile {
                        hostile_connections,
                        sources,
                        enrollments,
                        attack_secs,
                        agents,
                    } => {
                        hostile::run(
                            &cli.results,
                            hostile::Options {
                                hostile_connections,
                                sources,
                                enrollments,
                                attack_secs,
                                agents,
                            },
                        )
                        .await
                    }
                    Bench::Served { .. } | Bench::Acme { .. } => {
                        unreachable!("handled above")
                    }
                }
            })
        }
    }
}
