//! The soak's simulated time and randomness.
//!
//! [`SimClock`] is one number of simulated Unix seconds shared by the
//! in-process controller (as its [`Clock`], which also feeds its rustls time
//! provider and every admin client the soak opens) and by the agent library
//! (installed as the agent's process-wide clock source), so a certificate or
//! credential that would expire in production fails the same way here. It
//! only moves when the soak steps it.
//!
//! [`Rng`] is SplitMix64: the fault schedule and the certificate lifetimes
//! are a function of `--seed` alone.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use certfleet_controller::clock::Clock;
use time::OffsetDateTime;

/// Simulated seconds since the Unix epoch.
#[derive(Debug, Clone)]
pub(crate) struct SimClock(Arc<AtomicI64>);

impl SimClock {
    /// A clock at `start`, installed as the agent library's clock source.
    pub(crate) fn install(start: i64) -> SimClock {
        let clock = SimClock(Arc::new(AtomicI64::new(start)));
        let secs = clock.0.clone();
        certfleet_agent::clock::set_source(Some(Arc::new(move || secs.load(Ordering::SeqCst))));
        clock
    }

    pub(crate) fn secs(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }

    pub(crate) fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for SimClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(self.secs()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// SplitMix64.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (`lo` when the range is empty).
    pub(crate) fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }

    /// `n` distinct indices below `len`, in drawing order.
    pub(crate) fn pick(&mut self, len: usize, n: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..len).collect();
        let n = n.min(len);
        for i in 0..n {
            let j = self.range(i as i64, len as i64 - 1) as usize;
            all.swap(i, j);
        }
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_seeded_and_in_range() {
        let a: Vec<u64> = (0..5).scan(Rng::new(7), |r, _| Some(r.next())).collect();
        let b: Vec<u64> = (0..5).scan(Rng::new(7), |r, _| Some(r.next())).collect();
        assert_eq!(a, b);
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            assert!((6..=365).contains(&r.range(6, 365)));
        }
        let picked = r.pick(10, 4);
        assert_eq!(picked.len(), 4);
        let mut sorted = picked.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4);
    }
}
