//! The agent's clock: the wall clock, or — for end-to-end tests only — the
//! wall clock shifted by the integer number of seconds in the file named by
//! `CERTFLEET_CLOCK_OFFSET_FILE` (the same seam the controller has). The
//! agent reports this clock to the controller, which flags skew.
//!
//! A program that runs the agent library on a simulated clock (the soak
//! benchmark) replaces the base time for the whole process with
//! [`set_source`], and may run one agent's work under a skew with
//! [`with_skew`]: every reading inside that task — reports, identity
//! renewal decisions, and the TLS configurations it builds — is shifted by
//! that many seconds. Without either, the agent behaves as it always did.

use std::future::Future;
use std::sync::{Arc, RwLock};

/// Environment variable naming the clock offset file (tests only).
pub const OFFSET_FILE_ENV: &str = "CERTFLEET_CLOCK_OFFSET_FILE";

/// A replacement for the wall clock: seconds since the Unix epoch.
pub type Source = Arc<dyn Fn() -> i64 + Send + Sync>;

static SOURCE: RwLock<Option<Source>> = RwLock::new(None);

tokio::task_local! {
    static SKEW: i64;
}

/// Replace the process's base time (`None`: back to the wall clock and the
/// offset file). For programs that simulate time; the agent binary never
/// calls it.
pub fn set_source(source: Option<Source>) {
    *SOURCE.write().unwrap_or_else(|p| p.into_inner()) = source;
}

/// Run `work` with this task's clock `secs` seconds off the base time.
pub async fn with_skew<F: Future>(secs: i64, work: F) -> F::Output {
    SKEW.scope(secs, work).await
}

/// The skew of the current task (0 outside [`with_skew`]).
fn skew() -> i64 {
    SKEW.try_with(|s| *s).unwrap_or(0)
}

fn base() -> i64 {
    if let Some(source) = SOURCE.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        return source();
    }
    let offset = std::env::var_os(OFFSET_FILE_ENV)
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| t.trim().parse::<i64>().ok())
        .unwrap_or(0);
    time::OffsetDateTime::now_utc().unix_timestamp() + offset
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    base() + skew()
}

/// [`now`] as rustls' time source, so the controller's certificate is judged
/// by the same (possibly shifted) clock as everything else the agent does.
/// It keeps the skew of the task that made it: handshakes run on quinn's
/// own tasks.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsTime {
    skew: i64,
}

impl TlsTime {
    /// A time source with the current task's skew.
    pub fn current() -> TlsTime {
        TlsTime { skew: skew() }
    }
}

impl rustls::time_provider::TimeProvider for TlsTime {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        // Before 1970 is not a time rustls can express; `None` fails the
        // handshake instead of judging validity wrongly.
        let secs = u64::try_from(base() + self.skew).ok()?;
        Some(rustls::pki_types::UnixTime::since_unix_epoch(
            std::time::Duration::from_secs(secs),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn skew_applies_inside_its_task_only() {
        let outside = now();
        let inside = with_skew(600, async { now() }).await;
        assert!((inside - outside - 600).abs() <= 2, "{inside} vs {outside}");
        let tls = with_skew(-600, async { TlsTime::current() }).await;
        assert_eq!(tls.skew, -600);
        assert!((now() - outside).abs() <= 2);
    }
}
