//! Admission of new connections before their handshake: which peers may
//! have the controller do TLS work, and in what order.
//!
//! A handshake costs the controller CPU (a signature, a key exchange, a
//! certificate chain to verify) before it knows who the peer is, so it is
//! admitted on what is known before any crypto: the source (an IPv4 address
//! or an IPv6 /64, [`source_of`]) and whether QUIC has validated it.
//!
//! - At most [`Admission::limit`] handshakes are in progress at once
//!   ([`HANDSHAKES_PER_CORE`] per core, at least [`MIN_HANDSHAKES`]); more
//!   wait in line with no crypto done (their client retransmits its first
//!   packet meanwhile), for at most [`WAIT_DEADLINE`].
//! - A source is *known* once a peer holding a valid certificate
//!   authenticated from it, for [`KNOWN_FOR`] ([`MAX_KNOWN`] sources at
//!   most). A known source's handshakes go before every unknown one and
//!   have no per-source cap (agents behind one NAT). Under load, a known
//!   source's handshake whose address QUIC has not validated is first sent
//!   a Retry (no crypto), so a forged source address cannot jump the line.
//! - An unknown source may have at most [`MAX_PENDING_PER_SOURCE`]
//!   handshakes waiting or in progress and connections held without a
//!   certificate ([`Gate::held`]), together; a new connection beyond that
//!   is refused at once (QUIC `CONNECTION_REFUSED`), before any crypto.
//! - At most [`MAX_WAITING`] unknown handshakes wait; beyond, new ones are
//!   ignored (their client retries on its own timer), never refused.
//!
//! Invariants: every admitted handshake holds a [`Ticket`]; a ticket holds
//! a place in progress or a place in line, and gives it back on drop
//! (passing a place in progress to the next in line, known first); the
//! counts are only changed under the one lock.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::debug;

use super::gate::{source_of, Gate};

/// Handshakes in progress at once, per core.
pub(crate) const HANDSHAKES_PER_CORE: usize = 128;
/// Handshakes in progress at once, whatever the cores.
pub(crate) const MIN_HANDSHAKES: usize = 256;
/// Handshakes waiting or in progress plus connections held without a
/// certificate, from one unknown source.
pub(crate) const MAX_PENDING_PER_SOURCE: usize = 16;
/// Unknown sources' handshakes waiting for a place.
pub(crate) const MAX_WAITING: usize = 16_384;
/// How long a handshake may wait for a place.
pub(crate) const WAIT_DEADLINE: Duration = Duration::from_secs(10);
/// From a handshake's start to its end; the connecting future is dropped
/// (and the connection with it) after that.
pub(crate) const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// How long a source stays known after its last authenticated peer.
pub(crate) const KNOWN_FOR: Duration = Duration::from_secs(24 * 3600);
/// Known sources remembered at most.
pub(crate) const MAX_KNOWN: usize = 1 << 17;

/// What to do with a new connection, before its handshake.
pub(crate) enum Decision {
    /// Go on with the handshake once the ticket is ready.
    Admit(Ticket),
    /// Send a Retry: prove the address first.
    Retry,
    /// Refuse it (the peer sees `CONNECTION_REFUSED`); why.
    Refuse(String),
    /// Drop its packet without an answer; the peer retransmits.
    Ignore,
}

#[derive(Default)]
struct State {
    /// Handshakes holding a place in progress.
    running: usize,
    /// Unknown sources' tickets in line.
    waiting: usize,
    known_line: VecDeque<oneshot::Sender<()>>,
    unknown_line: VecDeque<oneshot::Sender<()>>,
    /// Tickets (in line or in progress) per source.
    pending: HashMap<IpAddr, usize>,
    /// Known sources and when a peer last authenticated from each.
    known: HashMap<IpAddr, Instant>,
    refused: u64,
}

/// The handshake admission of one controller.
pub(crate) struct Admission {
    limit: usize,
    gate: Arc<Gate>,
    state: Mutex<State>,
}

/// A handshake's place, in line or in progress; given back on drop.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    source: IpAddr,
    known: bool,
    /// `None` once the ticket holds a place in progress; else the channel
    /// a place arrives on.
    line: Option<oneshot::Receiver<()>>,
}

impl Ticket {
    /// Wait until the ticket holds a place in progress, for at most
    /// `deadline`. Whether it does.
    pub(crate) async fn ready(&mut self, deadline: Instant) -> bool {
        let Some(rx) = self.line.as_mut() else {
            return true;
        };
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(())) => {
                self.line = None;
                true
            }
            _ => false,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let adm = self.admission.clone();
        let mut s = adm.lock();
        // Places are only handed over under the lock, so this look is
        // final: either a place was given to this ticket or none will be.
        let held = match self.line.as_mut() {
            None => true,
            Some(rx) => {
                let given = rx.try_recv().is_ok();
                rx.close();
                if !self.known && !given {
                    s.waiting -= 1;
                }
                given
            }
        };
        if let Some(n) = s.pending.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                s.pending.remove(&self.source);
            }
        }
        if held {
            adm.hand_over(&mut s);
        }
    }
}

impl Admission {
    pub(crate) fn new(gate: Arc<Gate>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_limit(gate, (HANDSHAKES_PER_CORE * cores).max(MIN_HANDSHAKES))
    }

    pub(crate) fn with_limit(gate: Arc<Gate>, limit: usize) -> Self {
        Admission {
            limit: limit.max(1),
            gate,
            state: Mutex::new(State::default()),
        }
    }

    /// Handshakes in progress at once.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place in progress was given back: pass it to the next live ticket
    /// in line, known sources first, or free it.
    fn hand_over(&self, s: &mut State) {
        while let Some(tx) = s.known_line.pop_front() {
            if tx.send(()).is_ok() {
                return;
            }
        }
        while let Some(tx) = s.unknown_line.pop_front() {
            if tx.send(()).is_ok() {
                s.waiting -= 1;
                return;
            }
        }
        s.running -= 1;
    }

    /// Decide on a new connection from `ip`, before its handshake;
    /// `validated` is whether QUIC has validated its address.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, validated: bool) -> Decision {
        let source = source_of(ip);
        let now = Instant::now();
        let mut s = self.lock();
        let known = s
            .known
            .get(&source)
            .is_some_and(|at| now.duration_since(*at) < KNOWN_FOR);
        let busy = s.running >= self.limit;
        if known && busy && !validated {
            return Decision::Retry;
        }
        if !known {
            let pending = s.pending.get(&source).copied().unwrap_or(0);
            let held = self.gate.held(source);
            if pending + held >= MAX_PENDING_PER_SOURCE {
                s.refused += 1;
                return Decision::Refuse(format!(
                    "{source} has {pending} handshakes in progress and {held} connections \
                     without a certificate (at most {MAX_PENDING_PER_SOURCE} together)"
                ));
            }
            if busy && s.waiting >= MAX_WAITING {
                return Decision::Ignore;
            }
        }
        *s.pending.entry(source).or_insert(0) += 1;
        let line = if busy {
            let (tx, rx) = oneshot::channel();
            if known {
                s.known_line.push_back(tx);
            } else {
                s.unknown_line.push_back(tx);
                s.waiting += 1;
            }
            Some(rx)
        } else {
            s.running += 1;
            None
        };
        Decision::Admit(Ticket {
            admission: self.clone(),
            source,
            known,
            line,
        })
    }

    /// A peer with a valid certificate authenticated from `ip`.
    pub(crate) fn authenticated(&self, ip: IpAddr) {
        let source = source_of(ip);
        let now = Instant::now();
        let mut s = self.lock();
        if s.known.len() >= MAX_KNOWN && !s.known.contains_key(&source) {
            s.known.retain(|_, at| now.duration_since(*at) < KNOWN_FOR);
            if s.known.len() >= MAX_KNOWN {
                return;
            }
        }
        s.known.insert(source, now);
    }

    /// Connections refused so far.
    #[cfg(test)]
    fn refused(&self) -> u64 {
        self.lock().refused
    }
}

/// Decide on a new connection before its handshake: refuse, ignore or
/// retry it here, or give it back with its ticket.
pub(super) fn decide(
    admission: &Arc<Admission>,
    incoming: quinn::Incoming,
) -> Option<(quinn::Incoming, Ticket)> {
    let remote = incoming.remote_address();
    match admission.admit(remote.ip(), incoming.remote_address_validated()) {
        Decision::Admit(ticket) => Some((incoming, ticket)),
        Decision::Retry => {
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            None
        }
        Decision::Refuse(reason) => {
            debug!(%remote, %reason, "refusing a handshake");
            incoming.refuse();
            None
        }
        Decision::Ignore => {
            incoming.ignore();
            None
        }
    }
}

/// Wait for the ticket's place, then run the handshake within
/// [`HANDSHAKE_DEADLINE`]; the place is given back as soon as it ends. The
/// connection, or `None` if there was no place in time or the handshake
/// failed.
pub(super) async fn handshake(
    incoming: quinn::Incoming,
    mut ticket: Ticket,
) -> Option<quinn::Connection> {
    if !ticket.ready(Instant::now() + WAIT_DEADLINE).await {
        debug!("no place for the handshake in time");
        incoming.ignore();
        return None;
    }
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "handshake refused");
            return None;
        }
    };
    let outcome = tokio::time::timeout(HANDSHAKE_DEADLINE, connecting).await;
    // The place goes to the next handshake in line.
    drop(ticket);
    match outcome {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            debug!(error = %e, "handshake failed");
            None
        }
        Err(_) => {
            debug!("handshake not completed in time");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(d: Decision) -> Ticket {
        match d {
            Decision::Admit(t) => t,
            Decision::Retry => panic!("retry"),
            Decision::Refuse(why) => panic!("refused: {why}"),
            Decision::Ignore => panic!("ignored"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn an_unknown_source_is_refused_beyond_its_cap() {
        let adm = Arc::new(Admission::with_limit(Arc::new(Gate::default()), 4));
        let flood = ip("192.0.2.1");
        let tickets: Vec<_> = (0..MAX_PENDING_PER_SOURCE)
            .map(|_| ticket(adm.admit(flood, true)))
            .collect();
        let Decision::Refuse(why) = adm.admit(flood, true) else {
            panic!("not refused")
        };
        assert!(why.contains("192.0.2.1"), "{why}");
        assert_eq!(adm.refused(), 1);
        // Another source is not affected; it waits its turn.
        let mut other = ticket(adm.admit(ip("192.0.2.2"), true));
        assert!(other.line.is_some());
        drop(tickets);
        assert!(other.ready(Instant::now()).await);
        assert!(matches!(adm.admit(flood, true), Decision::Admit(_)));
    }

    #[tokio::test]
    async fn held_connections_without_a_certificate_count_against_the_cap() {
        let gate = Arc::new(Gate::default());
        let adm = Arc::new(Admission::with_limit(gate.clone(), 64));
        let flood = ip("192.0.2.1");
        let slots: Vec<_> = (0..super::super::gate::MAX_PER_SOURCE)
            .map(|_| gate.admit(flood).unwrap())
            .collect();
        let tickets: Vec<_> = (slots.len()..MAX_PENDING_PER_SOURCE)
            .map(|_| ticket(adm.admit(flood, true)))
            .collect();
        assert!(matches!(adm.admit(flood, true), Decision::Refuse(_)));
        drop(slots);
        assert!(matches!(adm.admit(flood, true), Decision::Admit(_)));
        drop(tickets);
    }

    #[tokio::test]
    async fn known_sources_go_first_and_have_no_cap() {
        let adm = Arc::new(Admission::with_limit(Arc::new(Gate::default()), 2));
        let fleet = ip("198.51.100.7");
        adm.authenticated(fleet);
        let running: Vec<_> = (0..2)
            .map(|i| ticket(adm.admit(ip(&format!("192.0.2.{i}")), true)))
            .collect();
        let mut unknown = ticket(adm.admit(ip("192.0.2.9"), true));
        // Busy: an unvalidated known address is asked to prove itself.
        assert!(matches!(adm.admit(fleet, false), Decision::Retry));
        let mut known: Vec<_> = (0..MAX_PENDING_PER_SOURCE + 4)
            .map(|_| ticket(adm.admit(fleet, true)))
            .collect();
        // A place given back goes to the known source first.
        drop(running);
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(known[0].ready(soon).await);
        assert!(known[1].ready(soon).await);
        assert!(!unknown.ready(Instant::now()).await);
        // The known line empties before the unknown line moves.
        known.truncate(2);
        drop(known);
        assert!(unknown.ready(soon).await);
    }

    #[tokio::test]
    async fn a_ticket_dropped_in_line_gives_back_what_it_held() {
        let adm = Arc::new(Admission::with_limit(Arc::new(Gate::default()), 1));
        let first = ticket(adm.admit(ip("192.0.2.1"), true));
        let second = ticket(adm.admit(ip("192.0.2.2"), true));
        let mut third = ticket(adm.admit(ip("192.0.2.3"), true));
        // The place passes to `second`, which gives up before looking.
        drop(first);
        drop(second);
        assert!(third.ready(Instant::now()).await);
        drop(third);
        let s = adm.lock();
        assert_eq!((s.running, s.waiting, s.pending.len()), (0, 0, 0));
    }

    #[tokio::test]
    async fn the_line_is_bounded_by_ignoring() {
        let adm = Arc::new(Admission::with_limit(Arc::new(Gate::default()), 1));
        let mut tickets = vec![ticket(adm.admit(ip("10.0.0.1"), true))];
        for i in 0..MAX_WAITING {
            let a = IpAddr::from([10, 1, (i / 256) as u8, (i % 256) as u8]);
            tickets.push(ticket(adm.admit(a, true)));
        }
        assert!(matches!(adm.admit(ip("10.2.0.1"), true), Decision::Ignore));
        // Known sources still get in line.
        adm.authenticated(ip("10.3.0.1"));
        assert!(matches!(
            adm.admit(ip("10.3.0.1"), true),
            Decision::Admit(_)
        ));
    }
}
