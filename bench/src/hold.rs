//! `hold`: how many idle agents one controller carries, and what they cost.
//!
//! Ramps a simulated fleet to `--agents` (10k) connected agents, measures
//! the controller's RSS and idle CPU, restarts the controller (SIGTERM,
//! then start again on the same state directory and port) and times the
//! agents' reconnection with their normal backoff, then ramps to `--max`
//! (25k) and measures again. RSS per connection is the growth over the
//! freshly started controller divided by the agents connected.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde_json::json;

use crate::fleet_sim::Rig;
use crate::serve::{cpu_split, rss_kb};

pub(crate) struct Options {
    pub(crate) agents: usize,
    pub(crate) max: usize,
    pub(crate) endpoints: usize,
    pub(crate) ramp_concurrency: usize,
    pub(crate) idle_secs: u64,
}

/// Controller CPU (user, system) in percent of one core over `secs` idle
/// seconds.
async fn idle_cpu(pid: u32, secs: u64) -> Result<(f64, f64)> {
    let (u0, s0) = cpu_split(pid)?;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (u1, s1) = cpu_split(pid)?;
    let el = t.elapsed().as_secs_f64();
    Ok(((u1 - u0) / el * 100.0, (s1 - s0) / el * 100.0))
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn own_rss_kb() -> u64 {
    rss_kb(std::process::id()).unwrap_or(0)
}

pub(crate) async fn run(results: &Path, o: Options) -> Result<()> {
    ensure!(o.max >= o.agents, "--max must be at least --agents");
    let total = Instant::now();
    let mut rig = Rig::new(o.max, o.endpoints).await?;
    eprintln!("hold: {} identities minted in {:.1?}", o.max, rig.mint);
    let pid = rig.serve.runtime().pid;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base_rss = rss_kb(pid)?;

    // Ramp to the first level.
    let t = Instant::now();
    rig.fleet.start(o.agents, o.ramp_concurrency);
    rig.fleet
        .wait_ready(o.agents, Duration::from_secs(150))
        .await?;
    let ramp_small = t.elapsed();
    eprintln!("hold: {} agents connected in {ramp_small:.1?}", o.agents);
    let (cpu_after_ramp_u, cpu_after_ramp_s) = cpu_split(pid)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_small = rss_kb(pid)?;
    let (idle_small_u, idle_small_s) = idle_cpu(pid, o.idle_secs).await?;
    let online_small = rig.online().await?;

    // Restart: stop as systemd does, start again on the same port.
    eprintln!("hold: restarting the controller");
    let sessions_before = rig.fleet.stats.sessions.load(Ordering::SeqCst);
    let t_stop = Instant::now();
    let mut serve = rig.serve;
    let (serve, stopped, started) = tokio::task::spawn_blocking(move || -> Result<_> {
        serve.terminate()?;
        let stopped = t_stop.elapsed();
        serve.start_again()?;
        Ok((serve, stopped, t_stop.elapsed()))
    })
    .await??;
    rig.serve = serve;
    let t_up = Instant::now();
    let pid = rig.serve.runtime().pid;
    // Every session has to be a new one: wait for that many new sessions
    // and for the ready count to be back.
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let new = rig.fleet.stats.sessions.load(Ordering::SeqCst) - sessions_before;
        let ready = rig.fleet.stats.ready.load(Ordering::SeqCst);
        if new >= o.agents as u64 && ready >= o.agents {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {new} of {} agents reconnected within 150 s ({ready} ready)",
            o.agents
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reconnect_from_up = t_up.elapsed();
    eprintln!(
        "hold: {} agents reconnected {reconnect_from_up:.1?} after the restart",
        o.agents
    );
    let reconnect_from_stop = t_stop.elapsed();
    let restart_cpu = crate::serve::cpu_seconds(pid)?;
    rig.reconnect_admin().await?;
    let online_after_restart = rig.online().await?;
    let rss_after_restart = rss_kb(pid)?;

    // Ramp to the second level.
    let t = Instant::now();
    rig.fleet.start(o.max, o.ramp_concurrency);
    rig.fleet
        .wait_ready(o.max, Duration::from_secs(150))
        .await?;
    let ramp_large = t.elapsed();
    eprintln!(
        "hold: {} agents connected, {ramp_large:.1?} after the restart level",
        o.max
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_large = rss_kb(pid)?;
    let (idle_large_u, idle_large_s) = idle_cpu(pid, o.idle_secs).await?;
    let online_large = rig.online().await?;
    let stats = &rig.fleet.stats;
    let per_conn = |rss: u64, n: usize| r1(rss.saturating_sub(base_rss) as f64 / n as f64);
    crate::record(
        results,
        json!({
            "bench": "hold",
            "agents": o.agents,
            "max": o.max,
            "controller_rss_base_kb": base_rss,
            "controller_rss_kb_at_agents": rss_small,
            "controller_rss_kb_at_max": rss_large,
            "rss_per_conn_kb_at_agents": per_conn(rss_small, o.agents),
            "rss_per_conn_kb_at_max": per_conn(rss_large, o.max),
            "idle_cpu_pct_at_agents": r1(idle_small_u + idle_small_s),
            "idle_cpu_pct_at_max": r1(idle_large_u + idle_large_s),
            "idle_cpu_user_sys_pct_at_max": [r1(idle_large_u), r1(idle_large_s)],
            "idle_secs": o.idle_secs,
            "ramp_secs_to_agents": r1(ramp_small.as_secs_f64()),
            "ramp_secs_agents_to_max": r1(ramp_large.as_secs_f64()),
            "controller_cpu_secs_ramp_to_agents": r1(cpu_after_ramp_u + cpu_after_ramp_s),
            "restart_stop_secs": (stopped.as_secs_f64() * 100.0).round() / 100.0,
            "restart_start_secs": (started.as_secs_f64() * 100.0).round() / 100.0,
            "reconnect_secs_after_up": (reconnect_from_up.as_secs_f64() * 100.0).round() / 100.0,
            "reconnect_secs_after_sigterm": (reconnect_from_stop.as_secs_f64() * 100.0).round() / 100.0,
            "controller_cpu_secs_reconnect": r1(restart_cpu),
            "controller_rss_kb_after_reconnect": rss_after_restart,
            "online_seen_by_controller": [online_small, online_after_restart, online_large],
            "connect_failures": stats.connect_failures.load(Ordering::SeqCst),
            "session_errors": stats.session_errors.load(Ordering::SeqCst),
            "simulator_rss_kb": own_rss_kb(),
            "mint_secs": r1(rig.mint.as_secs_f64()),
            "total_secs": r1(total.elapsed().as_secs_f64()),
            "ramp_concurrency": o.ramp_concurrency,
            "endpoints": o.endpoints,
            "load_avg_1m": crate::load_avg(),
            "machine": crate::machine(),
        }),
    )?;
    rig.fleet.stop().await;
    Ok(())
}
