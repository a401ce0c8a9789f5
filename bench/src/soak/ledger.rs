//! What was served, measured from outside: the certificate file each target
//! actually serves (read back from disk after every step), the controller's
//! endpoint certificate and the credentials in use, judged against the
//! simulated clock once per simulated hour.
//!
//! Invariants of the figures:
//! - `served_past_expiry_cert_hours`: one per (served certificate, step
//!   hour) with `now >= not_after`, for every target of a host that is up,
//!   the endpoint certificate, each online agent's identity and the
//!   operator's admin credential;
//! - `min_margin_hours`: at each replacement of a target's certificate,
//!   the old one's `not_after - now`; the smallest seen;
//! - the at-risk lead: for every served certificate that came within `L`
//!   (the shorter of 7 days and a sixth of its lifetime) of its expiry,
//!   `(not_after - first at-risk since) / L`, the smallest seen; a
//!   certificate that came that close and was never at risk counts 0.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// A certificate as a target serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Served {
    pub(crate) fingerprint: String,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
}

impl Served {
    /// The certificate in a PEM file (the first one: the leaf).
    pub(crate) fn read(path: &Path) -> Result<Option<Served>> {
        let pem = match std::fs::read(path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let der =
            CertificateDer::from_pem_slice(&pem).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let (not_before, not_after) = validity(&der)?;
        Ok(Some(Served {
            fingerprint: certfleet_controller::check::fingerprint(der.as_ref()),
            not_before,
            not_after,
        }))
    }

    /// How close to its expiry a certificate may come before it must have
    /// been flagged at risk: the shorter of 7 days and a sixth of its life.
    pub(crate) fn lead(&self) -> i64 {
        (7 * 86_400)
            .min((self.not_after - self.not_before) / 6)
            .max(1)
    }
}

/// Validity of a DER certificate, in Unix seconds.
pub(crate) fn validity(der: &[u8]) -> Result<(i64, i64)> {
    let (_, x) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow!("certificate does not parse: {e}"))?;
    Ok((
        x.validity().not_before.timestamp(),
        x.validity().not_after.timestamp(),
    ))
}

/// The running totals.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Per (agent, target): what it serves.
    served: HashMap<(usize, usize), Served>,
    pub(crate) past_expiry_hours: u64,
    /// The first few things found past expiry, for the operator reading
    /// the result.
    pub(crate) past_expiry_examples: Vec<String>,
    pub(crate) min_margin_secs: Option<i64>,
    pub(crate) installs: u64,
    /// Per served fingerprint that came within its lead of expiry: its
    /// not_after and lead (the ratio is computed at the end).
    pub(crate) came_close: HashMap<String, (i64, i64)>,
    /// Per fingerprint: the earliest `since` of an at-risk item naming it.
    pub(crate) at_risk_since: HashMap<String, i64>,
    /// Whether the controller computes at-risk items at all (without them
    /// there is no lead ratio).
    pub(crate) at_risk_known: bool,
}

impl Ledger {
    /// Target `(agent, k)` of a host that is up serves `now_served` at
    /// `now`.
    pub(crate) fn target(&mut self, key: (usize, usize), now_served: Option<Served>, now: i64) {
        let Some(cur) = now_served else {
            return;
        };
        match self.served.get(&key) {
            Some(old) if old.fingerprint == cur.fingerprint => {}
            old => {
                if let Some(old) = old {
                    let margin = old.not_after - now;
                    self.min_margin_secs =
                        Some(self.min_margin_secs.map_or(margin, |m| m.min(margin)));
                    self.installs += 1;
                }
                self.served.insert(key, cur);
            }
        }
    }

    /// A host went down: what it served is no longer served. When it is
    /// back, what it serves then is taken as new (its replacement margin
    /// would measure the outage, not the controller).
    pub(crate) fn forget(&mut self, agent: usize) {
        self.served.retain(|(a, _), _| *a != agent);
    }

    /// Count one hour of everything served by hosts that are up
    /// (`up(agent)`), and note certificates close to expiry.
    pub(crate) fn hour(&mut self, now: i64, up: impl Fn(usize) -> bool) {
        let mut past = Vec::new();
        for ((agent, k), s) in &self.served {
            if !up(*agent) {
                continue;
            }
            if now >= s.not_after - s.lead() {
                self.came_close
                    .entry(s.fingerprint.clone())
                    .or_insert((s.not_after, s.lead()));
            }
            if now >= s.not_after {
                past.push(format!(
                    "sim-{agent} target t{k} served {} past its expiry at {}",
                    &s.fingerprint[..16],
                    s.not_after
                ));
            }
        }
        for p in past {
            self.past(p);
        }
    }

    /// Something in use was past its expiry this hour.
    pub(crate) fn past(&mut self, what: String) {
        self.past_expiry_hours += 1;
        if self.past_expiry_examples.len() < 5 && !self.past_expiry_examples.contains(&what) {
            self.past_expiry_examples.push(what);
        }
    }

    /// An at-risk item names the certificate with `fingerprint`, at risk
    /// since `since`.
    pub(crate) fn at_risk(&mut self, fingerprint: &str, since: i64) {
        let e = self
            .at_risk_since
            .entry(fingerprint.to_string())
            .or_insert(since);
        *e = (*e).min(since);
    }

    /// The smallest at-risk lead ratio; `None` when no served certificate
    /// came within its lead of expiry.
    pub(crate) fn min_lead_ratio(&self) -> Option<f64> {
        if !self.at_risk_known {
            return None;
        }
        self.came_close
            .iter()
            .map(|(fp, (not_after, lead))| match self.at_risk_since.get(fp) {
                Some(since) => (not_after - since) as f64 / *lead as f64,
                None => 0.0,
            })
            .min_by(f64::total_cmp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(fp: &str, not_before: i64, not_after: i64) -> Served {
        Served {
            fingerprint: format!("{fp:0<64}"),
            not_before,
            not_after,
        }
    }

    #[test]
    fn counts_hours_past_expiry_margins_and_leads() {
        let day = 86_400;
        let mut l = Ledger::default();
        l.target((0, 0), Some(served("a", 0, 60 * day)), 0);
        l.hour(10 * day, |_| true);
        assert_eq!(l.past_expiry_hours, 0);
        assert!(l.came_close.is_empty());
        // 3 days before expiry: within the 7-day lead.
        l.hour(57 * day, |_| true);
        assert_eq!(l.came_close.len(), 1);
        assert_eq!(l.min_lead_ratio(), None, "no at-risk items computed");
        l.at_risk_known = true;
        assert_eq!(l.min_lead_ratio(), Some(0.0));
        l.at_risk(&format!("{:0<64}", "a"), 46 * day);
        assert_eq!(l.min_lead_ratio(), Some(2.0));
        // Past expiry on a host that is up counts; a host down does not.
        l.hour(61 * day, |_| false);
        assert_eq!(l.past_expiry_hours, 0);
        l.hour(61 * day, |_| true);
        assert_eq!(l.past_expiry_hours, 1);
        // The replacement: margin is the old one's time left.
        l.target((0, 0), Some(served("b", 61 * day, 120 * day)), 61 * day);
        assert_eq!(l.min_margin_secs, Some(-day));
        assert_eq!(l.installs, 1);
        // A host back from an outage: its first certificate is new.
        l.forget(0);
        l.target((0, 0), Some(served("c", 130 * day, 190 * day)), 131 * day);
        assert_eq!((l.min_margin_secs, l.installs), (Some(-day), 1));
    }
}
