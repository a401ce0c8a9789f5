//! The gate for peers without a certificate: how many may be connected, how
//! often one source may fail to enroll, and how refusals reach the audit
//! log without a flood reaching the disk.
//!
//! - At most [`MAX_UNAUTHENTICATED`] such connections at once, and
//!   [`MAX_PER_SOURCE`] from one source (an IPv4 address or an IPv6 /64).
//! - Each refused enrollment takes a token from its source's bucket
//!   ([`REFUSAL_BURST`] tokens, refilled at [`REFUSALS_PER_MINUTE`]); a
//!   source with an empty bucket is refused before its token is looked at.
//! - Refusals are counted per source and minute in memory; [`Gate::flush`]
//!   writes one audit row per source and minute and updates its count in
//!   place, so the audit log grows by at most one row per source and
//!   minute ([`MAX_SOURCES_PER_MINUTE`] sources, the rest counted as
//!   `other`), however many refusals there are.
//!
//! [`TokenBucket`] is pure: time is an argument.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use certfleet_protocol::message::Timestamp;
use tracing::warn;

use crate::store::{self, AuditRecord, Store};

/// Connections without a certificate, all sources together.
pub(crate) const MAX_UNAUTHENTICATED: usize = 256;
/// Connections without a certificate from one source.
pub(crate) const MAX_PER_SOURCE: usize = 8;
/// Refused enrollments a source may make in a burst.
pub(crate) const REFUSAL_BURST: f64 = 20.0;
/// Refused enrollments a source may make per minute, sustained.
pub(crate) const REFUSALS_PER_MINUTE: f64 = 30.0;
/// Sources with an audit row of their own per minute.
pub(crate) const MAX_SOURCES_PER_MINUTE: usize = 1024;

/// A token bucket of `burst` tokens refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TokenBucket {
    tokens: f64,
    at_ms: i64,
}

impl TokenBucket {
    pub(crate) fn full(now_ms: i64) -> Self {
        TokenBucket {
            tokens: REFUSAL_BURST,
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: i64) {
        let elapsed = (now_ms - self.at_ms).max(0) as f64;
        self.tokens = (self.tokens + elapsed * REFUSALS_PER_MINUTE / 60_000.0).min(REFUSAL_BURST);
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Whether a token is left now; if not, the seconds until one is.
    pub(crate) fn check(&mut self, now_ms: i64) -> Result<(), u64> {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) * 60.0 / REFUSALS_PER_MINUTE;
            Err(wait.ceil().max(1.0) as u64)
        }
    }

    /// Take a token (none is left below zero).
    pub(crate) fn take(&mut self, now_ms: i64) {
        self.refill(now_ms);
        self.tokens = (self.tokens - 1.0).max(0.0);
    }

    fn is_full(&mut self, now_ms: i64) -> bool {
        self.refill(now_ms);
        self.tokens >= REFUSAL_BURST
    }
}

/// The source a limit applies to: the address, or the /64 of an IPv6 one
/// (one host is given a whole /64).
pub(crate) fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

/// Refusals of one source in one minute.
#[derive(Debug, Clone)]
struct Tally {
    count: u64,
    flushed: u64,
    row: Option<i64>,
    last: &'static str,
}

#[derive(Default)]
struct State {
    total: usize,
    connected: HashMap<IpAddr, usize>,
    buckets: HashMap<IpAddr, TokenBucket>,
    /// By (minute start, source text).
    tally: HashMap<(i64, String), Tally>,
}

/// The limits on unauthenticated peers of one controller.
#[derive(Default)]
pub(crate) struct Gate {
    state: Mutex<State>,
}

/// A place among the unauthenticated connections, given back on drop.
pub(crate) struct Slot {
    gate: Arc<Gate>,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.connected.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                s.connected.remove(&self.source);
            }
        }
    }
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state consistent: a panic elsewhere
        // while holding the lock cannot break it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection without a certificate from `ip`, or
    /// why there is none.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, String> {
        let source = source_of(ip);
        let mut s = self.lock();
        if s.total >= MAX_UNAUTHENTICATED {
            return Err(format!(
                "too many connections without a certificate (at most {MAX_UNAUTHENTICATED}); \
                 try again later"
            ));
        }
        let n = s.connected.entry(source).or_insert(0);
        if *n >= MAX_PER_SOURCE {
            return Err(format!(
                "too many connections without a certificate from {source} (at most \
                 {MAX_PER_SOURCE}); try again later"
            ));
        }
        *n += 1;
        s.total += 1;
        Ok(Slot {
            gate: self.clone(),
            source,
        })
    }

    /// Connections without a certificate held now from `source` (as
    /// [`source_of`] gives it).
    pub(crate) fn held(&self, source: IpAddr) -> usize {
        self.lock().connected.get(&source).copied().unwrap_or(0)
    }

    /// Whether `ip` may try to enroll now; if not, the refusal is counted
    /// and the answer says when to retry.
    pub(crate) fn may_enroll(&self, ip: IpAddr, now_ms: i64) -> Result<(), String> {
        let source = source_of(ip);
        let mut s = self.lock();
        let bucket = s
            .buckets
            .entry(source)
            .or_insert_with(|| TokenBucket::full(now_ms));
        match bucket.check(now_ms) {
            Ok(()) => Ok(()),
            Err(wait) => {
                count(&mut s, source, now_ms, "rate limited");
                Err(format!(
                    "too many refused enrollments from {source}; try again in {wait}s"
                ))
            }
        }
    }

    /// Count a refused enrollment of `ip`.
    pub(crate) fn refused(&self, ip: IpAddr, now_ms: i64, why: &'static str) {
        let source = source_of(ip);
        let mut s = self.lock();
        s.buckets
            .entry(source)
            .or_insert_with(|| TokenBucket::full(now_ms))
            .take(now_ms);
        count(&mut s, source, now_ms, why);
    }

    /// Write the counts that changed since the last flush: a new row for a
    /// source's first refusals in a minute, the count of an existing row
    /// updated in place. Forgets finished minutes and full buckets.
    pub(crate) async fn flush(&self, store: &Store, now_ms: i64) {
        let pending: Vec<((i64, String), Tally)> = self
            .lock()
            .tally
            .iter()
            .filter(|(_, t)| t.count != t.flushed)
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        if !pending.is_empty() {
            let written = store
                .call(move |c| -> Result<_, store::StoreError> {
                    let tx = c.transaction()?;
                    let mut rows = Vec::new();
                    for ((minute, source), t) in &pending {
                        let detail = format!(
                            "count={} minute={} last={}",
                            t.count,
                            Timestamp(*minute),
                            t.last
                        );
                        let row = match t.row {
                            Some(id) => {
                                store::audit_set_detail(&tx, id, &detail)?;
                                id
                            }
                            None => store::audit_insert_id(
                                &tx,
                                *minute,
                                &AuditRecord {
                                    actor: &format!("enroll:{source}"),
                                    action: "agent.enroll",
                                    target: "",
                                    outcome: "refused",
                                    detail: &detail,
                                },
                            )?,
                        };
                        rows.push(((*minute, source.clone()), t.count, row));
                    }
                    tx.commit()?;
                    Ok(rows)
                })
                .await;
            match written {
                Ok(rows) => {
                    let mut s = self.lock();
                    for (key, count, row) in rows {
                        if let Some(t) = s.tally.get_mut(&key) {
                            t.flushed = count;
                            t.row = Some(row);
                        }
                    }
                }
                Err(e) => warn!(error = %e, "could not record refused enrollments"),
            }
        }
        let this_minute = minute_of(now_ms);
        let mut s = self.lock();
        s.tally
            .retain(|(minute, _), t| *minute >= this_minute || t.count != t.flushed);
        s.buckets.retain(|_, b| !b.is_full(now_ms));
    }
}

fn minute_of(now_ms: i64) -> i64 {
    now_ms.div_euclid(60_000) * 60
}

fn count(s: &mut State, source: IpAddr, now_ms: i64, why: &'static str) {
    let minute = minute_of(now_ms);
    let mut key = (minute, source.to_string());
    if !s.tally.contains_key(&key)
        && s.tally.keys().filter(|(m, _)| *m == minute).count() >= MAX_SOURCES_PER_MINUTE
    {
        key.1 = "other".into();
    }
    let t = s.tally.entry(key).or_insert(Tally {
        count: 0,
        flushed: 0,
        row: None,
        last: why,
    });
    t.count += 1;
    t.last = why;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::full(0);
        for _ in 0..REFUSAL_BURST as usize {
            assert!(b.check(0).is_ok());
            b.take(0);
        }
        let wait = b.check(0).unwrap_err();
        assert_eq!(wait, (60.0 / REFUSALS_PER_MINUTE) as u64);
        // One token per 60 / rate seconds comes back.
        let step = (60_000.0 / REFUSALS_PER_MINUTE) as i64;
        assert!(b.check(step - 1).is_err());
        assert!(b.check(step).is_ok());
        b.take(step);
        assert!(b.check(step).is_err());
        // Never more than the burst, and never below zero.
        assert!(b.is_full(10 * 60_000));
        for _ in 0..100 {
            b.take(10 * 60_000);
        }
        assert!(b.check(10 * 60_000 + step).is_ok());
    }

    #[test]
    fn time_going_backwards_does_not_refill() {
        let mut b = TokenBucket::full(1_000_000);
        for _ in 0..REFUSAL_BURST as usize {
            b.take(1_000_000);
        }
        assert!(b.check(0).is_err());
        assert!(b.check(1_000_000).is_err());
    }

    #[test]
    fn connections_are_capped_per_source_and_in_total() {
        let gate = Arc::new(Gate::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let slots: Vec<_> = (0..MAX_PER_SOURCE)
            .map(|_| gate.admit(ip).unwrap())
            .collect();
        assert!(gate.admit(ip).err().unwrap().contains("from 192.0.2.1"));
        drop(slots);
        let mut slots = Vec::new();
        for i in 0..MAX_UNAUTHENTICATED {
            let ip = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
            slots.push(gate.admit(ip).unwrap());
        }
        assert!(gate.admit(ip).err().unwrap().contains("at most 256"));
        slots.pop();
        assert!(gate.admit(ip).is_ok());
    }

    #[test]
    fn ipv6_sources_are_their_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(source_of(a), source_of(b));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_of(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn refusals_are_tallied_per_source_and_minute() {
        let gate = Gate::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for i in 0..REFUSAL_BURST as i64 {
            assert!(gate.may_enroll(ip, i).is_ok());
            gate.refused(ip, i, "wrong secret");
        }
        let err = gate.may_enroll(ip, 100).unwrap_err();
        assert!(err.contains("try again in"), "{err}");
        gate.refused("192.0.2.2".parse().unwrap(), 61_000, "unknown token");
        let s = gate.lock();
        assert_eq!(s.tally.len(), 2);
        let t = &s.tally[&(0, "192.0.2.1".to_string())];
        assert_eq!(
            (t.count, t.last),
            (REFUSAL_BURST as u64 + 1, "rate limited")
        );
        assert_eq!(s.tally[&(60, "192.0.2.2".to_string())].count, 1);
    }

    #[test]
    fn sources_beyond_the_cap_share_one_tally() {
        let gate = Gate::default();
        for i in 0..MAX_SOURCES_PER_MINUTE + 10 {
            let ip = IpAddr::from([10, 1, (i / 256) as u8, (i % 256) as u8]);
            gate.refused(ip, 0, "wrong secret");
        }
        let s = gate.lock();
        assert_eq!(s.tally.len(), MAX_SOURCES_PER_MINUTE + 1);
        assert_eq!(s.tally[&(0, "other".to_string())].count, 10);
    }
}
