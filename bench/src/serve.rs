//! What `/proc` says about the memory and CPU of the controller under test
//! (a real `certfleet serve` process, run by the test harness's
//! [`certfleet_tests::Controller`]).

use std::fs;

use anyhow::{Context, Result};

/// Resident set size of a process in kB (`VmRSS` in /proc/<pid>/status).
pub(crate) fn rss_kb(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc status")
}

/// CPU seconds (user, system) a process has used, from /proc/<pid>/stat.
pub(crate) fn cpu_split(pid: u32) -> Result<(f64, f64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<f64> {
        let v: f64 = fields.get(i).context("short /proc stat")?.parse()?;
        // Linux reports in USER_HZ, 100 on every mainstream configuration.
        Ok(v / 100.0)
    };
    Ok((tick(11)?, tick(12)?))
}

/// CPU seconds (user + system) a process has used.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let (u, s) = cpu_split(pid)?;
    Ok(u + s)
}
