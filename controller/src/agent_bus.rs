//! The controller's way to its connected agents: which are connected, and
//! the events a live session carries out (poke, kick, command, removed).
//! The QUIC sessions in `server/` register here; every other part of the
//! controller only sends.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;

/// What the controller asks of a live agent session.
#[derive(Debug)]
pub enum SessionEvent {
    /// Desired state changed: fetch it.
    Poke,
    /// The agent's identity was replaced (re-enrollment) or a newer
    /// session took over: close the connection.
    Kick,
    /// Carry out a command and answer on the channel.
    Command(
        certfleet_protocol::message::AgentCommand,
        tokio::sync::oneshot::Sender<certfleet_protocol::message::AgentCommandReply>,
    ),
    /// The agent was removed: close the connection with the definitive
    /// close code, so the agent stops instead of retrying.
    Removed,
}

/// Live agent sessions by agent id.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, (u64, mpsc::UnboundedSender<SessionEvent>)>>,
    next: std::sync::atomic::AtomicU64,
}

impl Sessions {
    /// Register a session; a previous session of the same agent is kicked.
    pub fn register(&self, agent: &str) -> (u64, mpsc::UnboundedReceiver<SessionEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let old = self.lock().insert(agent.to_string(), (id, tx));
        if let Some((_, old)) = old {
            let _ = old.send(SessionEvent::Kick);
        }
        (id, rx)
    }

    pub fn unregister(&self, agent: &str, session: u64) {
        let mut map = self.lock();
        if map.get(agent).is_some_and(|(id, _)| *id == session) {
            map.remove(agent);
        }
    }

    pub fn send(&self, agent: &str, event: SessionEvent) -> bool {
        self.lock()
            .get(agent)
            .is_some_and(|(_, tx)| tx.send(event).is_ok())
    }

    pub fn is_connected(&self, agent: &str) -> bool {
        self.lock().contains_key(agent)
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Ids of the agents connected now.
    pub fn connected_ids(&self) -> std::collections::HashSet<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (u64, mpsc::UnboundedSender<SessionEvent>)>>
    {
        // A panic while holding this lock leaves a valid map behind.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}
