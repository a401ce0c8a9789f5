//! `hostile`: what hostile peers cost a real `certfleet serve`, and whether
//! honest clients and agents notice.
//!
//! A controller with `--agents` connected simulated agents first serves an
//! honest admin (a fresh connection, hello and `status` per call, as the
//! CLI does) alone: the baseline p99. Then, while the same honest calls go
//! on, it is attacked for `--attack-secs`:
//!
//! - `--hostile-connections` connections without a certificate from
//!   `--sources` loopback addresses (127.0.0.2 …), a third each holding 32
//!   streams that announce 4 MiB frames and send 1 KiB, a third holding 32
//!   header-only streams, a third sending a hello and half of an
//!   enrollment, then nothing;
//! - 4 connections with the admin credential, each with 16 streams
//!   announcing 4 MiB and 16 streams sending 64 KiB of a 200 KiB
//!   `CertApply`, then nothing;
//! - a loop of over-long messages: a `CertApply` of 200,000 empty domains
//!   with the admin credential, a 64 KiB enrollment without one.
//!
//! It records the controller's RSS growth at its peak, the honest p99, and
//! how long after it opened the last hostile connection was closed by the
//! controller. Last, `--enrollments` bogus enrollments (wrong tokens) from
//! all sources, and the state directory's growth once the refusal counts
//! have been flushed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use certfleet_controller::client::{anonymous_client_config, connect, Client, Credential};
use certfleet_controller::identity::SERVER_NAME;
use certfleet_protocol::message::{Hello, HelloReply, Request, Response};
use certfleet_protocol::{frame, Secret, DEFAULT_MAX_FRAME, PROTOCOL};
use serde_json::json;

use crate::fleet_sim::Rig;
use crate::serve::rss_kb;

pub(crate) struct Options {
    pub(crate) hostile_connections: usize,
    pub(crate) sources: usize,
    pub(crate) enrollments: usize,
    pub(crate) attack_secs: u64,
    pub(crate) agents: usize,
}

/// How one hostile connection ended.
#[derive(Debug, Clone)]
struct Ended {
    /// From the start of the handshake to the controller closing it.
    after: Duration,
    /// The controller's reason.
    reason: String,
}

pub(crate) async fn run(results: &Path, o: Options) -> Result<()> {
    anyhow::ensure!((1..=250).contains(&o.sources), "--sources must be 1..=250");
    let total = Instant::now();
    let mut rig = Rig::new(o.agents, 2).await?;
    rig.fleet.start(o.agents, 32);
    rig.fleet
        .wait_ready(o.agents, Duration::from_secs(120))
        .await?;
    let addr = rig.serve.listen();
    let pid = rig.serve.runtime().pid;
    let cred = Arc::new(Credential::load(&rig.serve.credential_path())?);
    let anon = anonymous_client_config(&cred.ca)?;
    let endpoints = (0..o.sources)
        .map(|i| {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8));
            quinn::Endpoint::client(SocketAddr::new(ip, 0))
                .with_context(|| format!("cannot bind a UDP socket on {ip}"))
        })
        .collect::<Result<Vec<_>>>()?;

    // Baseline: honest calls alone.
    let baseline = honest_calls(
        addr,
        &cred,
        Duration::from_secs(o.attack_secs.min(15)),
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base_rss = rss_kb(pid)?;
    eprintln!(
        "hostile: baseline p99 {:.1} ms over {} calls, controller RSS {} MB",
        p99_ms(&baseline),
        baseline.len(),
        base_rss / 1024
    );

    // The attack, with honest calls going on.
    let peak = Arc::new(AtomicU64::new(base_rss));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Ok(kb) = rss_kb(pid) {
                    peak.fetch_max(kb, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let attack_start = Instant::now();
    let mut hostile = Vec::new();
    for i in 0..o.hostile_connections {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let anon = anon.clone();
        hostile.push(tokio::spawn(async move {
            unauthenticated(&endpoint, anon, addr, i % 3).await
        }));
        // Spread the handshakes a little, as a real flood arrives.
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for _ in 0..4 {
        let cred = cred.clone();
        hostile.push(tokio::spawn(
            async move { authenticated(addr, &cred).await },
        ));
    }
    let stop_long = Arc::new(AtomicBool::new(false));
    let long = {
        let (cred, anon, stop) = (cred.clone(), anon.clone(), stop_long.clone());
        let endpoint = endpoints[0].clone();
        tokio::spawn(async move { over_long(addr, &cred, &endpoint, anon, &stop).await })
    };
    let during = honest_calls(
        addr,
        &cred,
        Duration::from_secs(o.attack_secs),
        Some(attack_start),
    )
    .await;
    stop_long.store(true, Ordering::Relaxed);
    let (long_refused, long_other) = long.await?;
    let mut ended = Vec::new();
    let mut left_open = 0;
    for h in hostile {
        match tokio::time::timeout(Duration::from_secs(90), h).await {
            Ok(Ok(Some(e))) => ended.push(e),
            Ok(Ok(None)) => {}
            _ => left_open += 1,
        }
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.await?;
    let peak_rss = peak.load(Ordering::Relaxed);
    let capped = ended
        .iter()
        .filter(|e| e.reason.contains("too many connections"))
        .count();
    let closed_within = ended
        .iter()
        .map(|e| e.after.as_secs_f64())
        .fold(0.0, f64::max);
    eprintln!(
        "hostile: {} hostile connections ended ({capped} refused by the caps, {left_open} left \
         open), last closed {closed_within:.1} s after it opened; peak RSS {} MB; honest p99 \
         {:.1} ms over {} calls",
        ended.len(),
        peak_rss / 1024,
        p99_ms(&during),
        during.len()
    );

    // The enrollment flood.
    let state_dir = rig.serve.state_dir().to_path_buf();
    let before = dir_kb(&state_dir)?;
    let t = Instant::now();
    let flood = enrollment_flood(&endpoints, &anon, addr, o.enrollments).await;
    let flood_secs = t.elapsed().as_secs_f64();
    // The refusal counts reach the audit log within 5 s.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = dir_kb(&state_dir)?;
    let audit_rows = match rig
        .admin
        .call(&Request::AuditList { limit: 100_000 })
        .await?
    {
        Response::Audit(rows) => rows
            .iter()
            .filter(|r| r.action == "agent.enroll" && r.outcome.starts_with("refused"))
            .count(),
        other => bail!("unexpected answer to AuditList: {other:?}"),
    };
    let online = rig.online().await?;
    eprintln!(
        "hostile: {} bogus enrollments in {flood_secs:.1} s ({} refused by token, {} rate \
         limited, {} connections refused, {} failed); state dir {before} → {after} kB, {audit_rows} \
         audit rows; {online} of {} agents online",
        o.enrollments, flood.refused, flood.rate_limited, flood.capped, flood.failed, o.agents
    );

    let stats = &rig.fleet.stats;
    crate::record(
        results,
        json!({
            "bench": "hostile",
            "hostile_connections": o.hostile_connections + 4,
            "hostile_connections_refused_by_caps": capped,
            "hostile_connections_left_open": left_open,
            "hostile_closed_within_s": (closed_within * 10.0).round() / 10.0,
            "controller_rss_base_mb": base_rss / 1024,
            "controller_rss_peak_mb": peak_rss / 1024,
            "controller_rss_growth_mb": ((peak_rss.saturating_sub(base_rss)) as f64 / 1024.0).round(),
            "honest_p99_ms": (p99_ms(&during) * 10.0).round() / 10.0,
            "honest_p99_baseline_ms": (p99_ms(&baseline) * 10.0).round() / 10.0,
            "honest_calls": during.len(),
            "honest_calls_baseline": baseline.len(),
            "over_long_refused": long_refused,
            "over_long_other": long_other,
            "enrollments": o.enrollments,
            "enrollments_refused_by_token": flood.refused,
            "enrollments_rate_limited": flood.rate_limited,
            "enrollment_connections_refused": flood.capped,
            "enrollments_failed": flood.failed,
            "enrollment_flood_secs": (flood_secs * 10.0).round() / 10.0,
            "state_dir_growth_kb": after.saturating_sub(before),
            "enroll_refusal_audit_rows": audit_rows,
            "agents": o.agents,
            "agents_online_after": online,
            "agent_session_errors": stats.session_errors.load(Ordering::SeqCst),
            "sources": o.sources,
            "attack_secs": o.attack_secs,
            "total_secs": (total.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "load_avg_1m": crate::load_avg(),
            "machine": crate::machine(),
        }),
    )?;
    rig.fleet.stop().await;
    Ok(())
}

/// Honest admin calls one after another for `secs`, each a new
/// connection with its hello and one `status`, as the CLI makes them.
/// The latency of each; failed calls count as the whole time they took.
async fn honest_calls(
    addr: SocketAddr,
    cred: &Credential,
    secs: Duration,
    since: Option<Instant>,
) -> Vec<Duration> {
    let until = since.unwrap_or_else(Instant::now) + secs;
    let mut times = Vec::new();
    while Instant::now() < until {
        let t = Instant::now();
        let ok = async {
            let c = Client::open(addr, cred).await?;
            let r = c.call(&Request::Status).await?;
            c.close();
            anyhow::ensure!(matches!(r, Response::Status(_)), "{r:?}");
            Ok::<_, anyhow::Error>(())
        }
        .await;
        if let Err(e) = ok {
            eprintln!("hostile: an honest call failed: {e:#}");
        }
        times.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    times
}

fn p99_ms(times: &[Duration]) -> f64 {
    if times.is_empty() {
        return 0.0;
    }
    let mut v: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Bytes under `dir`, in kB.
fn dir_kb(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_kb(&entry.path())? * 1024
        } else {
            meta.len()
        };
    }
    Ok(total / 1024)
}

/// Waits for the controller to close `conn`.
async fn ended(conn: &quinn::Connection, start: Instant) -> Ended {
    let reason = match conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(c) => {
            String::from_utf8_lossy(&c.reason).into_owned()
        }
        other => other.to_string(),
    };
    Ended {
        after: start.elapsed(),
        reason,
    }
}

fn hello_frame() -> Vec<u8> {
    let hello = Hello {
        versions: PROTOCOL,
        software: "certfleet-bench-hostile".into(),
    };
    frame::encode(&hello, DEFAULT_MAX_FRAME).unwrap_or_default()
}

/// Sends the hello and waits for the reply.
async fn say_hello(conn: &quinn::Connection) -> Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&hello_frame()).await?;
    send.finish()?;
    let reply = recv.read_to_end(64 * 1024).await?;
    match frame::decode::<HelloReply>(&reply, DEFAULT_MAX_FRAME)? {
        HelloReply::Accepted { .. } => Ok(()),
        HelloReply::Refused { reason } => bail!("hello refused: {reason}"),
    }
}

/// Opens a stream and writes `bytes`, then leaves it open (the writes run
/// in their own task: flow control may hold them).
async fn hold_stream(conn: &quinn::Connection, bytes: Vec<u8>) {
    if let Ok((mut send, recv)) = conn.open_bi().await {
        tokio::spawn(async move {
            let _recv = recv;
            let _ = send.write_all(&bytes).await;
            // Keep the stream open until the connection ends.
            let _ = send.stopped().await;
        });
    }
}

/// One connection without a certificate that holds what it may: `kind` 0
/// partial 4 MiB frames, 1 header-only streams, 2 half an enrollment.
async fn unauthenticated(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    kind: usize,
) -> Option<Ended> {
    let start = Instant::now();
    let conn = endpoint
        .connect_with(config, addr, SERVER_NAME)
        .ok()?
        .await
        .ok()?;
    let mut four_mib = (4u32 << 20).to_be_bytes().to_vec();
    match kind {
        0 => {
            four_mib.extend([7u8; 1024]);
            for _ in 0..32 {
                hold_stream(&conn, four_mib.clone()).await;
            }
        }
        1 => {
            for _ in 0..32 {
                hold_stream(&conn, four_mib.clone()).await;
            }
        }
        _ => {
            if say_hello(&conn).await.is_ok() {
                let mut half = 4000u32.to_be_bytes().to_vec();
                // Request::Enroll's tag, then the start of a token.
                half.push(13);
                half.extend([b'x'; 1000]);
                hold_stream(&conn, half).await;
            }
        }
    }
    Some(ended(&conn, start).await)
}

/// A connection with the admin credential that holds partial frames on
/// every stream it may open.
async fn authenticated(addr: SocketAddr, cred: &Credential) -> Option<Ended> {
    let start = Instant::now();
    let conn = connect(addr, cred).await.ok()?;
    say_hello(&conn).await.ok()?;
    let mut four_mib = (4u32 << 20).to_be_bytes().to_vec();
    four_mib.extend([0u8; 16 * 1024]);
    let mut partial = (200u32 * 1024).to_be_bytes().to_vec();
    partial.push(5); // Request::CertApply
    partial.extend([0u8; 64 * 1024]);
    for i in 0..32 {
        let bytes = if i % 2 == 0 {
            four_mib.clone()
        } else {
            partial.clone()
        };
        hold_stream(&conn, bytes).await;
    }
    Some(ended(&conn, start).await)
}

/// Over-long messages until `stop`: a `CertApply` of 200,000 empty
/// domains with the admin credential and a 64 KiB enrollment without.
/// Answers (refused, anything else).
async fn over_long(
    addr: SocketAddr,
    cred: &Credential,
    endpoint: &quinn::Endpoint,
    anon: quinn::ClientConfig,
    stop: &AtomicBool,
) -> (u64, u64) {
    let mut body = vec![5u8, 1, b'i'];
    let n: u32 = 200_000;
    let mut v = n;
    while v >= 0x80 {
        body.push((v as u8) | 0x80);
        v >>= 7;
    }
    body.push(v as u8);
    body.resize(body.len() + n as usize, 0);
    let mut apply = (body.len() as u32).to_be_bytes().to_vec();
    apply.extend(body);
    let enroll = frame::encode(
        &Request::Enroll {
            token: Secret::new(b"cfjt1.x.y".to_vec()),
            csr_pem: "x".repeat(64 * 1024),
            hostname: "h".into(),
        },
        DEFAULT_MAX_FRAME,
    )
    .unwrap_or_default();
    let (mut refused, mut other) = (0, 0);
    let admin = match connect(addr, cred).await {
        Ok(c) if say_hello(&c).await.is_ok() => Some(c),
        _ => None,
    };
    while !stop.load(Ordering::Relaxed) {
        if let Some(conn) = &admin {
            match exchange(conn, &apply).await {
                Some(Response::Error(e)) if e.message.contains("exceeds the limit") => refused += 1,
                _ => other += 1,
            }
        }
        let closed = async {
            let conn = endpoint
                .connect_with(anon.clone(), addr, SERVER_NAME)
                .ok()?
                .await
                .ok()?;
            say_hello(&conn).await.ok()?;
            let _ = exchange(&conn, &enroll).await;
            tokio::time::timeout(Duration::from_secs(15), conn.closed())
                .await
                .ok()
        }
        .await;
        if closed.is_some() {
            refused += 1;
        } else {
            other += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (refused, other)
}

/// Sends one frame on a new stream and decodes the answer, if any.
async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> Option<Response> {
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    if send.write_all(bytes).await.is_ok() {
        let _ = send.finish();
    }
    let reply = tokio::time::timeout(Duration::from_secs(15), recv.read_to_end(1 << 20))
        .await
        .ok()?
        .ok()?;
    frame::decode(&reply, DEFAULT_MAX_FRAME).ok()
}

#[derive(Default)]
struct Flood {
    refused: u64,
    rate_limited: u64,
    capped: u64,
    failed: u64,
}

/// `n` enrollments with wrong tokens, 8 at a time per source.
async fn enrollment_flood(
    endpoints: &[quinn::Endpoint],
    anon: &quinn::ClientConfig,
    addr: SocketAddr,
    n: usize,
) -> Flood {
    let next = Arc::new(AtomicU64::new(0));
    let counts = Arc::new([
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ]);
    let mut tasks = Vec::new();
    for endpoint in endpoints {
        for _ in 0..4 {
            let (endpoint, anon, next, counts) =
                (endpoint.clone(), anon.clone(), next.clone(), counts.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n as u64 {
                        return;
                    }
                    let enroll = frame::encode(
                        &Request::Enroll {
                            token: Secret::new(format!("cfjt1.bogus{i}.secret").into_bytes()),
                            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
                            hostname: format!("bogus{i}"),
                        },
                        DEFAULT_MAX_FRAME,
                    )
                    .unwrap_or_default();
                    let outcome = async {
                        let conn = endpoint
                            .connect_with(anon.clone(), addr, SERVER_NAME)
                            .ok()?
                            .await
                            .ok()?;
                        let answer = match say_hello(&conn).await {
                            Ok(()) => exchange(&conn, &enroll).await,
                            Err(_) => None,
                        };
                        conn.close(0u32.into(), b"done");
                        Some(answer)
                    }
                    .await;
                    let slot = match outcome {
                        Some(Some(Response::Error(e))) if e.message.contains("try again") => 1,
                        Some(Some(Response::Error(_))) => 0,
                        Some(None) => 2,
                        _ => 3,
                    };
                    counts[slot].fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let get = |i: usize| counts[i].load(Ordering::Relaxed);
    Flood {
        refused: get(0),
        rate_limited: get(1),
        capped: get(2),
        failed: get(3),
    }
}
