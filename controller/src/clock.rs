//! The controller's one source of time. Everything that asks "what time is
//! it" goes through a [`Clock`], so tests can run the controller at any
//! simulated date without sleeping.
//!
//! [`OffsetClock`] is the test seam: when `CERTFLEET_CLOCK_OFFSET_FILE`
//! names a file, the integer number of seconds in it is added to the wall
//! clock (re-read at most every 200 ms; a missing or empty file means 0).
//! Operators never set it; the end-to-end tests use it to move a running
//! controller past a renewal point.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

/// Environment variable naming the clock offset file (tests only).
pub const OFFSET_FILE_ENV: &str = "CERTFLEET_CLOCK_OFFSET_FILE";

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The host's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// The wall clock shifted by the number of seconds in a file.
#[derive(Debug)]
pub struct OffsetClock {
    path: PathBuf,
    cached: Mutex<(Option<Instant>, i64)>,
}

impl OffsetClock {
    pub fn new(path: PathBuf) -> Self {
        OffsetClock {
            path,
            cached: Mutex::new((None, 0)),
        }
    }

    fn offset(&self) -> i64 {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = cached
            .0
            .is_some_and(|at| at.elapsed() < Duration::from_millis(200));
        if !fresh {
            let offset = std::fs::read_to_string(&self.path)
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
                .unwrap_or(0);
            *cached = (Some(Instant::now()), offset);
        }
        cached.1
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + time::Duration::seconds(self.offset())
    }
}

/// A [`Clock`] as rustls' time source, so certificate validity in TLS
/// handshakes is judged by the same (possibly simulated) time as everything
/// else: an expiry in a test fails the way it would in production.
pub struct TlsTime(pub Arc<dyn Clock>);

impl std::fmt::Debug for TlsTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsTime")
    }
}

impl rustls::time_provider::TimeProvider for TlsTime {
    fn current_time(&self) -> Option<rustls_pki_types::UnixTime> {
        // A clock before 1970 is not a time rustls can express; `None`
        // makes the handshake fail rather than judge validity wrongly.
        let secs = u64::try_from(self.0.now().unix_timestamp()).ok()?;
        Some(rustls_pki_types::UnixTime::since_unix_epoch(
            Duration::from_secs(secs),
        ))
    }
}

/// The clock the environment asks for: the wall clock, or the test seam.
pub fn from_env() -> Arc<dyn Clock> {
    match std::env::var_os(OFFSET_FILE_ENV) {
        Some(path) if !path.is_empty() => Arc::new(OffsetClock::new(path.into())),
        _ => Arc::new(SystemClock),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_file_shifts_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offset");
        let clock = OffsetClock::new(path.clone());
        let before = clock.now();
        assert!((before - OffsetDateTime::now_utc()).abs() < time::Duration::seconds(2));
        std::fs::write(&path, "86400\n").unwrap();
        std::thread::sleep(Duration::from_millis(250));
        let later = clock.now() - OffsetDateTime::now_utc();
        assert!((later - time::Duration::days(1)).abs() < time::Duration::seconds(2));
    }

    #[test]
    fn tls_time_reads_the_clock() {
        use rustls::time_provider::TimeProvider;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offset");
        std::fs::write(&path, "8640000").unwrap();
        let tls = TlsTime(Arc::new(OffsetClock::new(path)));
        let seen = tls.current_time().unwrap().as_secs();
        let expected = (OffsetDateTime::now_utc() + time::Duration::days(100)).unix_timestamp();
        assert!(seen.abs_diff(expected as u64) < 2, "{seen} vs {expected}");
    }
}
