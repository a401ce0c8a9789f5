//! When each agent was last active (any request: its periodic desired-state
//! fetch, a report, an inventory scan), for `agent list`'s LAST SEEN.
//!
//! Activity is recorded in memory on every request and written to the
//! store at most once a minute for the whole fleet, in one transaction:
//! 10,000 agents resyncing cost one commit a minute, not one per request.
//! After a controller restart LAST SEEN may be up to that minute behind
//! until the agent's next request.

use std::collections::HashMap;
use std::sync::Mutex;

/// Least time between two writes of activity to the store.
pub const PERSIST_EVERY_SECS: i64 = 60;

#[derive(Debug, Default)]
pub struct Activity {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Latest activity of each agent.
    seen: HashMap<String, i64>,
    /// Agents whose activity is newer than the store's.
    dirty: Vec<String>,
    /// When activity was last handed out to be written.
    persisted_at: i64,
}

impl Activity {
    /// Record activity of `agent` at `now`. When a write is due, returns
    /// every agent's unwritten activity, to be stored by the caller.
    pub fn touch(&self, agent: &str, now: i64) -> Option<Vec<(String, i64)>> {
        // A poisoned lock only means another request panicked mid-update;
        // the map is still a valid map of timestamps.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let previous = inner.seen.insert(agent.to_string(), now);
        if previous.is_none_or(|p| p < now) && !inner.dirty.iter().any(|d| d == agent) {
            inner.dirty.push(agent.to_string());
        }
        if now - inner.persisted_at < PERSIST_EVERY_SECS || inner.dirty.is_empty() {
            return None;
        }
        inner.persisted_at = now;
        let dirty = std::mem::take(&mut inner.dirty);
        Some(
            dirty
                .into_iter()
                .filter_map(|a| inner.seen.get(&a).map(|t| (a, *t)))
                .collect(),
        )
    }

    /// The latest activity of every agent seen since the controller started.
    pub fn snapshot(&self) -> HashMap<String, i64> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.seen.clone()
    }

    /// The latest activity of `agent` recorded since the controller started.
    pub fn last(&self, agent: &str) -> Option<i64> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.seen.get(agent).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_at_most_once_a_minute_with_every_agent_seen_since() {
        let a = Activity::default();
        let first = a
            .touch("agent-1", 1_000)
            .expect("first activity is written");
        assert_eq!(first, vec![("agent-1".to_string(), 1_000)]);
        assert_eq!(a.touch("agent-1", 1_010), None);
        assert_eq!(a.touch("agent-2", 1_020), None);
        assert_eq!(a.touch("agent-1", 1_030), None);
        assert_eq!(a.last("agent-1"), Some(1_030));
        let mut batch = a.touch("agent-3", 1_060).expect("a minute passed");
        batch.sort();
        assert_eq!(
            batch,
            vec![
                ("agent-1".to_string(), 1_030),
                ("agent-2".to_string(), 1_020),
                ("agent-3".to_string(), 1_060)
            ]
        );
        // Nothing new: nothing to write, even after the minute.
        assert_eq!(a.touch("agent-3", 1_060), None);
        assert_eq!(a.last("nobody"), None);
    }
}
