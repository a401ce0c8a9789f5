//! The agent's clock: the wall clock, or — for end-to-end tests only — the
//! wall clock shifted by the integer number of seconds in the file named by
//! `CERTFLEET_CLOCK_OFFSET_FILE` (the same seam the controller has). The
//! agent reports this clock to the controller, which flags skew.

/// Environment variable naming the clock offset file (tests only).
pub const OFFSET_FILE_ENV: &str = "CERTFLEET_CLOCK_OFFSET_FILE";

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    let offset = std::env::var_os(OFFSET_FILE_ENV)
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| t.trim().parse::<i64>().ok())
        .unwrap_or(0);
    time::OffsetDateTime::now_utc().unix_timestamp() + offset
}

/// [`now`] as rustls' time source, so the controller's certificate is judged
/// by the same (possibly shifted) clock as everything else the agent does.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsTime;

impl rustls::time_provider::TimeProvider for TlsTime {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        // Before 1970 is not a time rustls can express; `None` fails the
        // handshake instead of judging validity wrongly.
        let secs = u64::try_from(now()).ok()?;
        Some(rustls::pki_types::UnixTime::since_unix_epoch(
            std::time::Duration::from_secs(secs),
        ))
    }
}
