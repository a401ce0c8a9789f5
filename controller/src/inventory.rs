//! The fleet's inventory: certificates agents discovered in use on their
//! hosts, managed by certfleet or not, and their adoption.
//!
//! Each agent's report is a whole snapshot that replaces its previous one
//! in one transaction. A discovered certificate is *managed* when its
//! fingerprint is one certfleet issued, or when the agent's target that
//! holds its path has a certfleet deployment. Adopting a discovered
//! certificate creates an instance and an application for its names and
//! records an adoption; when that application is issued, the issuing transaction
//! creates the deployment to the agent's target that holds the discovered
//! path (`on_issued`), so a controller restart in between loses nothing and
//! the lineage's renewals replace the certificate from then on.

use certfleet_protocol::message::{
    AdoptionInfo, AgentCommand, InstanceInfo, InstanceSpec, InstanceState, InventoryEntry,
    InventoryItem, InventoryList, InventoryReport, KeyType, Timestamp, ValidationType,
};
use certfleet_protocol::name::{self, SubjectName};
use rusqlite::{params, Connection, OptionalExtension};
use tracing::info;

use crate::agent_bus::SessionEvent;

use crate::error::{Result, ServiceError};
use crate::fleet::resolve_agent;
use crate::service::Mode;
use crate::service::{apply_in_tx, Service, MAX_DOMAINS, MAX_VALIDITY_DAYS};
use crate::store::{self, AuditRecord, StoreError};

/// How long `inventory scan` waits for the agent's report.
const SCAN_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn sql(e: rusqlite::Error) -> ServiceError {
    ServiceError::Store(StoreError::from(e))
}

/// Replace an agent's inventory with `report`, inside the caller's
/// transaction.
fn replace(conn: &Connection, agent: &str, report: &InventoryReport, now: i64) -> Result<()> {
    conn.execute("DELETE FROM inventory WHERE agent = ?1", [agent])
        .map_err(sql)?;
    let mut stmt = conn
        .prepare(
            "INSERT INTO inventory (agent, position, path, source, site, target, subject, sans,
             issuer, serial, not_before, not_after, fingerprint, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )
        .map_err(sql)?;
    for (i, e) in report.entries.iter().enumerate() {
        stmt.execute(params![
            agent,
            i as i64,
            e.path,
            e.source,
            e.site,
            e.target,
            e.subject,
            serde_json::to_string(&e.sans).unwrap_or_else(|_| "[]".into()),
            e.issuer,
            e.serial,
            e.not_before.map(|t| t.0),
            e.not_after.map(|t| t.0),
            e.fingerprint.as_ref().map(|f| f.to_ascii_lowercase()),
            e.error,
        ])
        .map_err(sql)?;
    }
    conn.execute(
        "INSERT INTO inventory_scans (agent, scanned_at, received_at, problems)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (agent) DO UPDATE SET scanned_at = excluded.scanned_at,
           received_at = excluded.received_at, problems = excluded.problems",
        params![
            agent,
            report.scanned_at.0,
            now,
            serde_json::to_string(&report.problems).unwrap_or_else(|_| "[]".into())
        ],
    )
    .map_err(sql)?;
    Ok(())
}

/// The columns [`item_from_row`] reads, from `inventory i`, `agents a`
/// and `inventory_scans s`.
const ITEM_COLS: &str = "i.agent, a.name, s.scanned_at, i.path, i.source, i.site, i.target, \
    i.subject, i.sans, i.issuer, i.serial, i.not_before, i.not_after, i.fingerprint, i.error, \
    COALESCE( \
      (SELECT c.id FROM certificates c WHERE c.fingerprint = i.fingerprint), \
      (SELECT COALESCE(d.installed_cert, d.desired_cert) FROM deployments d \
       WHERE d.agent = i.agent AND d.target = i.target))";

fn item_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<InventoryItem> {
    let sans: String = r.get(8)?;
    Ok(InventoryItem {
        agent: r.get(0)?,
        agent_name: r.get(1)?,
        scanned_at: Timestamp(r.get(2)?),
        entry: InventoryEntry {
            path: r.get(3)?,
            source: r.get(4)?,
            site: r.get(5)?,
            target: r.get(6)?,
            subject: r.get(7)?,
            sans: serde_json::from_str(&sans).unwrap_or_default(),
            issuer: r.get(9)?,
            serial: r.get(10)?,
            not_before: r.get::<_, Option<i64>>(11)?.map(Timestamp),
            not_after: r.get::<_, Option<i64>>(12)?.map(Timestamp),
            fingerprint: r.get(13)?,
            error: r.get(14)?,
        },
        managed: r.get(15)?,
    })
}

/// Where a page of `inventory list` continues. The list is soonest expiry
/// first with unreadable certificates (no `not_after`) after every
/// readable one, ties by agent id and position in the agent's report; the
/// key is a row's place in that order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InventoryKey {
    pub(crate) not_after: Option<i64>,
    pub(crate) agent: String,
    pub(crate) position: i64,
}

impl InventoryKey {
    /// Before every row: no certificate expires at `i64::MIN`, agent ids
    /// are non-empty and positions start at 0.
    pub(crate) fn first() -> Self {
        InventoryKey {
            not_after: Some(i64::MIN),
            agent: String::new(),
            position: -1,
        }
    }

    /// The key of a row [`inventory_page`] returned.
    pub(crate) fn of(position: i64, item: &InventoryItem) -> Self {
        InventoryKey {
            not_after: item.entry.not_after.map(|t| t.0),
            agent: item.agent.clone(),
            position,
        }
    }
}

/// One page of discovered certificates after `after` in [`InventoryKey`]
/// order, with each row's position; with `agent` only that agent's, with
/// `not_after_before` only those readable and expiring by then.
///
/// SQLite cannot walk an index for `NULLS LAST`, so the readable rows
/// (index `inventory_not_after` from the key on) and the unreadable ones
/// (the same index at `not_after IS NULL`, by agent and position) are two
/// range scans, the second only once the first runs out. Filters are
/// spliced in as SQL rather than `?n IS NULL OR …`, which would hide the
/// bounds from the planner. `tests` checks both plans.
pub(crate) fn inventory_page(
    conn: &Connection,
    agent: Option<&str>,
    not_after_before: Option<i64>,
    after: &InventoryKey,
    limit: u32,
) -> Result<Vec<(i64, InventoryItem)>> {
    let mut rows = Vec::new();
    if let Some(not_after) = after.not_after {
        let mut stmt = conn
            .prepare_cached(&readable_page_sql(
                agent.is_some(),
                not_after_before.is_some(),
            ))
            .map_err(sql)?;
        let page = stmt
            .query_map(
                params![
                    not_after,
                    after.agent,
                    after.position,
                    agent,
                    not_after_before,
                    limit
                ],
                |r| Ok((r.get(16)?, item_from_row(r)?)),
            )
            .map_err(sql)?;
        rows = page.collect::<std::result::Result<_, _>>().map_err(sql)?;
    }
    let left = (limit as usize).saturating_sub(rows.len());
    // Unreadable certificates have no expiry, so an expiry filter keeps none.
    if not_after_before.is_some() || left == 0 {
        return Ok(rows);
    }
    let (from_agent, from_position) = match after.not_after {
        Some(_) => ("", -1),
        None => (after.agent.as_str(), after.position),
    };
    let mut stmt = conn
        .prepare_cached(&unreadable_page_sql(agent.is_some()))
        .map_err(sql)?;
    let page = stmt
        .query_map(
            params![from_agent, from_position, agent, left as i64],
            |r| Ok((r.get(16)?, item_from_row(r)?)),
        )
        .map_err(sql)?;
    for row in page {
        rows.push(row.map_err(sql)?);
    }
    Ok(rows)
}

/// `i.agent = ?n`, or `?n IS NULL` (always true here) to keep the
/// parameter in the statement when the list is not filtered by agent.
fn agent_filter(n: u8, filtered: bool) -> String {
    match filtered {
        true => format!("i.agent = ?{n}"),
        false => format!("?{n} IS NULL"),
    }
}

/// Readable rows after `(?1, ?2, ?3)`; `?4` an agent, `?5` an expiry bound.
fn readable_page_sql(by_agent: bool, expiring: bool) -> String {
    let expiring = match expiring {
        true => "i.not_after <= ?5",
        false => "?5 IS NULL",
    };
    format!(
        "SELECT {ITEM_COLS}, i.position
         FROM inventory i
         JOIN agents a ON a.id = i.agent AND a.removed_at IS NULL
         JOIN inventory_scans s ON s.agent = i.agent
         WHERE i.not_after IS NOT NULL
           AND (i.not_after, i.agent, i.position) > (?1, ?2, ?3)
           AND {} AND {expiring}
         ORDER BY i.not_after, i.agent, i.position LIMIT ?6",
        agent_filter(4, by_agent)
    )
}

/// Unreadable rows after `(?1, ?2)`; `?3` an agent.
fn unreadable_page_sql(by_agent: bool) -> String {
    format!(
        "SELECT {ITEM_COLS}, i.position
         FROM inventory i
         JOIN agents a ON a.id = i.agent AND a.removed_at IS NULL
         JOIN inventory_scans s ON s.agent = i.agent
         WHERE i.not_after IS NULL AND (i.agent, i.position) > (?1, ?2) AND {}
         ORDER BY i.agent, i.position LIMIT ?4",
        agent_filter(3, by_agent)
    )
}

/// An agent's id and the `(agent name, problem)` pairs of its last scan.
pub(crate) type AgentProblems = (String, Vec<(String, String)>);

/// One page of agents' scan problems, by agent id after `after`.
pub(crate) fn problems_page(
    conn: &Connection,
    agent: Option<&str>,
    after: &str,
    limit: u32,
) -> Result<Vec<AgentProblems>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT s.agent, a.name, s.problems FROM inventory_scans s
             JOIN agents a ON a.id = s.agent AND a.removed_at IS NULL
             WHERE s.agent > ?1 AND (?2 IS NULL OR s.agent = ?2)
             ORDER BY s.agent LIMIT ?3",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map(params![after, agent, limit], |r| {
            let name: String = r.get(1)?;
            let list: String = r.get(2)?;
            let problems = serde_json::from_str::<Vec<String>>(&list)
                .unwrap_or_default()
                .into_iter()
                .map(|p| (name.clone(), p))
                .collect();
            Ok((r.get(0)?, problems))
        })
        .map_err(sql)?;
    rows.collect::<std::result::Result<_, _>>().map_err(sql)
}

/// Every discovered certificate of agents still enrolled (of one agent when
/// given), with the certfleet certificate that manages it: the one of the
/// same fingerprint, else the one deployed to the agent's target that holds
/// the path. The second makes an adopted (or deployed-over) certificate
/// managed as soon as its target has a deployment, not only after the
/// agent's next scan sees the replacement.
fn load(conn: &Connection, agent: Option<&str>) -> Result<InventoryList> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {ITEM_COLS}
             FROM inventory i
             JOIN agents a ON a.id = i.agent AND a.removed_at IS NULL
             JOIN inventory_scans s ON s.agent = i.agent
             WHERE ?1 IS NULL OR i.agent = ?1
             ORDER BY a.name, i.position"
        ))
        .map_err(sql)?;
    let items = stmt
        .query_map([agent], item_from_row)
        .map_err(sql)?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(sql)?;
    let mut stmt = conn
        .prepare(
            "SELECT a.name, s.problems FROM inventory_scans s
             JOIN agents a ON a.id = s.agent AND a.removed_at IS NULL
             WHERE ?1 IS NULL OR s.agent = ?1 ORDER BY a.name",
        )
        .map_err(sql)?;
    let mut problems = Vec::new();
    for row in stmt
        .query_map([agent], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(sql)?
    {
        let (name, list) = row.map_err(sql)?;
        for p in serde_json::from_str::<Vec<String>>(&list).unwrap_or_default() {
            problems.push((name.clone(), p));
        }
    }
    Ok(InventoryList { items, problems })
}

/// Sort by expiry, soonest first (entries that could not be read last), and
/// keep only those expiring before `before` when given (which drops the
/// unreadable ones: their expiry is unknown).
pub fn select(mut items: Vec<InventoryItem>, before: Option<i64>) -> Vec<InventoryItem> {
    if let Some(before) = before {
        items.retain(|i| i.entry.not_after.is_some_and(|t| t.0 <= before));
    }
    items.sort_by(|a, b| {
        let key = |i: &InventoryItem| (i.entry.not_after.is_none(), i.entry.not_after);
        key(a)
            .cmp(&key(b))
            .then_with(|| a.agent_name.cmp(&b.agent_name))
            .then_with(|| a.entry.path.cmp(&b.entry.path))
    });
    items
}

/// An enrolled agent by id or by name.
/// A fingerprint as operators paste it: `AB:CD…`, `sha256:abcd…`.
fn normalize_fingerprint(s: &str) -> String {
    s.trim()
        .trim_start_matches("sha256:")
        .trim_start_matches("SHA256:")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase()
}

/// The names to apply for: the SANs, or the subject CN of a CN-only
/// certificate.
fn names_of(e: &InventoryEntry) -> std::result::Result<Vec<SubjectName>, String> {
    let mut raw = e.sans.clone();
    if raw.is_empty() {
        raw.extend(
            e.subject
                .split(',')
                .filter_map(|p| p.trim().strip_prefix("CN="))
                .map(str::to_string),
        );
    }
    if raw.is_empty() {
        return Err("it names no DNS name or IP address to apply for".into());
    }
    let mut out: Vec<SubjectName> = Vec::new();
    for n in raw {
        let parsed = name::parse(&n).map_err(|err| format!("its name {n:?}: {err}"))?;
        if !out.contains(&parsed) {
            out.push(parsed);
        }
    }
    Ok(out)
}

/// What `certfleet inventory adopt` names.
#[derive(Debug, Clone)]
pub struct AdoptRequest {
    /// Agent id or unique name.
    pub agent: String,
    /// A discovered path or a fingerprint.
    pub certificate: String,
    pub issuer: String,
    pub validity_days: Option<u32>,
    pub key: KeyType,
}

impl Service {
    /// Store an agent's discovery snapshot, replacing its previous one.
    pub async fn inventory_report(&self, agent: String, report: InventoryReport) -> Result<()> {
        report.check().map_err(ServiceError::Invalid)?;
        let now = self.now().unix_timestamp();
        let n = report.entries.len();
        self.store
            .call(move |c| -> Result<()> {
                let tx = c.transaction().map_err(sql)?;
                if store::agent_get(&tx, &agent)?.is_none_or(|a| a.removed_at.is_some()) {
                    return Err(ServiceError::NotFound {
                        what: "agent",
                        id: agent,
                    });
                }
                replace(&tx, &agent, &report, now)?;
                tx.commit().map_err(sql)?;
                Ok(())
            })
            .await?;
        info!(certificates = n, "inventory report stored");
        Ok(())
    }

    /// The fleet's discovered certificates, soonest expiry first.
    pub async fn inventory_list(
        &self,
        expiring_within: Option<i64>,
        agent: Option<String>,
    ) -> Result<InventoryList> {
        let before = expiring_within.map(|s| self.now().unix_timestamp().saturating_add(s));
        let mut list = self
            .store
            .call(move |c| -> Result<InventoryList> {
                let id = agent
                    .map(|a| resolve_agent(c, &a).map(|r| r.id))
                    .transpose()?;
                load(c, id.as_deref())
            })
            .await?;
        list.items = select(list.items, before);
        Ok(list)
    }

    /// Ask a connected agent to scan now; returns its new inventory.
    pub async fn inventory_scan(&self, agent: String) -> Result<InventoryList> {
        let row = self.store.call(move |c| resolve_agent(c, &agent)).await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        if !self
            .sessions
            .send(&row.id, SessionEvent::Command(AgentCommand::Discover, tx))
        {
            return Err(ServiceError::Conflict(format!(
                "agent {} ({}) is not connected; it scans when it connects",
                row.name, row.id
            )));
        }
        let reply = tokio::time::timeout(SCAN_WAIT, rx)
            .await
            .map_err(|_| {
                ServiceError::Transient("the agent did not finish its scan in time".into())
            })?
            .map_err(|_| ServiceError::Transient("the agent's session ended".into()))?;
        if let Some(e) = reply.error {
            return Err(ServiceError::Transient(format!(
                "agent {} could not scan: {e}",
                row.name
            )));
        }
        self.inventory_list(None, Some(row.id)).await
    }

    /// Turn a discovered certificate into a managed lineage: an instance and
    /// an application for its names, and — once issued — a deployment to
    /// the agent's target that holds the discovered path.
    pub async fn inventory_adopt(
        &self,
        actor: String,
        request: AdoptRequest,
        mode: Mode,
    ) -> Result<AdoptionInfo> {
        let AdoptRequest {
            agent,
            certificate,
            issuer,
            validity_days,
            key,
        } = request;
        let now = self.now().unix_timestamp();
        let info = self
            .store
            .call(move |c| -> Result<AdoptionInfo> {
                let tx = c.transaction().map_err(sql)?;
                let agent = resolve_agent(&tx, &agent)?;
                let list = load(&tx, Some(&agent.id))?;
                let wanted = certificate.trim();
                let fingerprint = normalize_fingerprint(wanted);
                let matches: Vec<&InventoryItem> = list
                    .items
                    .iter()
                    .filter(|i| {
                        i.entry.path == wanted
                            || i.entry.fingerprint.as_deref() == Some(fingerprint.as_str())
                    })
                    .collect();
                if matches.is_empty() {
                    return Err(ServiceError::NotFound {
                        what: "discovered certificate",
                        id: format!(
                            "{wanted} on agent {} (see `certfleet inventory list --agent {}`)",
                            agent.name, agent.name
                        ),
                    });
                }
                let readable: Vec<&InventoryItem> = matches
                    .iter()
                    .copied()
                    .filter(|i| i.entry.error.is_none())
                    .collect();
                let Some(first) = readable.first() else {
                    return Err(ServiceError::Invalid(format!(
                        "cannot adopt {}: the agent could not read it ({})",
                        matches[0].entry.path,
                        matches[0].entry.error.as_deref().unwrap_or("unknown error")
                    )));
                };
                if let Some(id) = &first.managed {
                    return Err(ServiceError::Conflict(format!(
                        "{} on agent {} is already managed by certfleet (certificate {id})",
                        first.entry.path, agent.name
                    )));
                }
                let mut targets: Vec<(&str, &InventoryItem)> = readable
                    .iter()
                    .filter_map(|i| i.entry.target.as_deref().map(|t| (t, *i)))
                    .collect();
                targets.sort_by_key(|(t, _)| *t);
                targets.dedup_by_key(|(t, _)| *t);
                let (target, item) = match targets.as_slice() {
                    [one] => *one,
                    [] => {
                        return Err(ServiceError::Invalid(format!(
                            "agent {} has no target whose `fullchain`, `cert` or `combined` \
                             is {path}, so certfleet would not know where to install the \
                             replacement. Add a [[target]] to that agent's config that writes \
                             {path} (`fullchain`/`cert` and the key path for nginx or Apache, \
                             `combined` for HAProxy), restart the agent so it reports the \
                             target and rescans, then adopt again",
                            agent.name,
                            path = first.entry.path
                        )))
                    }
                    many => {
                        return Err(ServiceError::Invalid(format!(
                            "{wanted} is held by several targets of agent {} ({}); adopt it by \
                             path instead",
                            agent.name,
                            many.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
                        )))
                    }
                };
                let e = &item.entry;
                let Some(declared) = agent.targets.iter().find(|t| t.name == target) else {
                    return Err(ServiceError::Invalid(format!(
                        "agent {} reported target {target:?} in its scan but not when it \
                         connected; restart the agent and adopt again",
                        agent.name
                    )));
                };
                let existing: Option<String> = tx
                    .query_row(
                        "SELECT lineage FROM deployments WHERE agent = ?1 AND target = ?2",
                        params![agent.id, target],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(sql)?;
                if let Some(lineage) = existing {
                    return Err(ServiceError::Conflict(format!(
                        "target {target:?} on agent {} already has a certfleet deployment \
                         (lineage {lineage}); it is managed already",
                        agent.name
                    )));
                }
                let pending: Option<String> = tx
                    .query_row(
                        "SELECT d.application FROM adoptions d JOIN applications p
                           ON p.id = d.application
                         WHERE d.agent = ?1 AND d.target = ?2 AND d.rollout IS NULL
                           AND p.state IN ('pending', 'validating')",
                        params![agent.id, target],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(sql)?;
                if let Some(app) = pending {
                    return Err(ServiceError::Conflict(format!(
                        "target {target:?} on agent {} is being adopted already (application \
                         {app}); follow it with `certfleet application show {app}`",
                        agent.name
                    )));
                }
                let names = names_of(e).map_err(|why| {
                    ServiceError::Invalid(format!("cannot adopt {}: {why}", e.path))
                })?;
                for d in &declared.domains {
                    let want =
                        name::parse(d).map_err(|err| ServiceError::Invalid(err.to_string()))?;
                    if !names.iter().any(|n| n.covers(&want)) {
                        return Err(ServiceError::Invalid(format!(
                            "target {target:?} on agent {} serves {d}, which the discovered \
                             certificate ({}) does not cover; fix the target's domains first",
                            agent.name,
                            e.sans.join(", ")
                        )));
                    }
                }
                if names.len() > MAX_DOMAINS as usize {
                    return Err(ServiceError::Invalid(format!(
                        "the discovered certificate names {} hosts; an instance holds at most \
                         {MAX_DOMAINS}",
                        names.len()
                    )));
                }
                if store::issuer_get(&tx, &issuer)?.is_none() {
                    return Err(ServiceError::NotFound {
                        what: "issuer",
                        id: issuer,
                    });
                }
                // The replacement lives as long as the certificate it
                // replaces, unless the operator says otherwise.
                let lifetime_days = match (e.not_before, e.not_after) {
                    (Some(a), Some(b)) if b.0 > a.0 => ((b.0 - a.0 + 86_399) / 86_400) as u32,
                    _ => 90,
                };
                let validity_days = validity_days
                    .unwrap_or(lifetime_days)
                    .clamp(1, MAX_VALIDITY_DAYS);
                let instance = InstanceInfo {
                    id: store::new_id("inst"),
                    spec: InstanceSpec {
                        issuer,
                        validation: ValidationType::Dv,
                        max_domains: names.len() as u32,
                        wildcard: names.iter().any(SubjectName::is_wildcard),
                        validity_days,
                        key,
                        renew_before_days: None,
                        fallback_issuers: Vec::new(),
                        fallback_after_secs: None,
                    },
                    state: InstanceState::Unused,
                    created_at: Timestamp(now),
                    application: None,
                    certificate: None,
                    issuing: None,
                };
                store::instance_insert(&tx, &instance)?;
                let domains: Vec<String> = names.iter().map(ToString::to_string).collect();
                let app = apply_in_tx(&tx, &actor, &instance.id, &domains, None, now)?;
                let fingerprint = e.fingerprint.clone().unwrap_or_default();
                tx.execute(
                    "INSERT INTO adoptions (application, agent, target, path, fingerprint, actor,
                     created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![app.id, agent.id, target, e.path, fingerprint, actor, now],
                )
                .map_err(sql)?;
                store::audit_insert(
                    &tx,
                    now,
                    &AuditRecord {
                        actor: &actor,
                        action: "inventory.adopt",
                        target: &agent.id,
                        outcome: "ok",
                        detail: &format!(
                            "path={} fingerprint={fingerprint} target={target} instance={} \
                             application={} issuer={}",
                            e.path, instance.id, app.id, instance.spec.issuer
                        ),
                    },
                )?;
                mode.finish(tx)?;
                Ok(AdoptionInfo {
                    agent: agent.id.clone(),
                    agent_name: agent.name.clone(),
                    target: target.to_string(),
                    path: e.path.clone(),
                    fingerprint,
                    domains,
                    instance: instance.id,
                    application: app,
                })
            })
            .await?;
        if mode == Mode::DryRun {
            return Ok(info);
        }
        self.start_application(&info.application.id);
        info!(agent = %info.agent, target = %info.target, path = %info.path, "adopting a discovered certificate");
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(agent: &str, path: &str, not_after: Option<i64>) -> InventoryItem {
        InventoryItem {
            agent: agent.into(),
            agent_name: agent.into(),
            scanned_at: Timestamp(0),
            entry: InventoryEntry {
                path: path.into(),
                source: "path".into(),
                site: None,
                target: None,
                subject: "CN=a.test".into(),
                sans: vec![],
                issuer: String::new(),
                serial: String::new(),
                not_before: None,
                not_after: not_after.map(Timestamp),
                fingerprint: None,
                error: not_after.is_none().then(|| "unreadable".into()),
            },
            managed: None,
        }
    }

    #[test]
    fn sorted_by_expiry_and_filtered() {
        let items = vec![
            item("b", "/late", Some(300)),
            item("a", "/broken", None),
            item("a", "/soon", Some(100)),
        ];
        let all = select(items.clone(), None);
        let paths: Vec<&str> = all.iter().map(|i| i.entry.path.as_str()).collect();
        assert_eq!(paths, vec!["/soon", "/late", "/broken"]);
        let soon = select(items, Some(200));
        assert_eq!(soon.len(), 1);
        assert_eq!(soon[0].entry.path, "/soon");
    }

    #[test]
    fn fingerprints_and_names() {
        assert_eq!(normalize_fingerprint("sha256:AB:cd"), "abcd");
        let mut e = item("a", "/x", Some(1)).entry;
        assert_eq!(names_of(&e).unwrap()[0].to_string(), "a.test");
        e.sans = vec!["*.b.test".into(), "b.test".into(), "b.test".into()];
        assert_eq!(names_of(&e).unwrap().len(), 2);
        e.sans = vec!["not a name".into()];
        assert!(names_of(&e).is_err());
    }

    /// Two agents' reports read two rows a page: soonest expiry first
    /// across agents, ties by agent and position, unreadable ones last,
    /// each row once; the filters keep that order; both statements read
    /// the expiry index in order instead of sorting.
    #[test]
    fn pages_follow_expiry_with_unreadable_last() {
        let dir = tempfile::tempdir().unwrap();
        let db = store::Store::open(&dir.path().join("db")).unwrap();
        db.call_blocking(|c| {
            let reports = [
                ("agent-b", vec![Some(300), None, Some(100)]),
                ("agent-a", vec![Some(100), None, Some(200), Some(300)]),
            ];
            for (agent, expiries) in reports {
                store::agent_insert(
                    c,
                    &store::AgentRow {
                        id: agent.into(),
                        name: agent.into(),
                        labels: vec![],
                        targets: vec![],
                        version: None,
                        enrolled_at: 0,
                        last_seen: None,
                        removed_at: None,
                        skew_secs: None,
                        identity_expires: None,
                    },
                )
                .unwrap();
                let entries = expiries
                    .iter()
                    .enumerate()
                    .map(|(n, e)| item(agent, &format!("/{n}"), *e).entry)
                    .collect();
                let report = InventoryReport {
                    scanned_at: Timestamp(0),
                    entries,
                    problems: vec![],
                };
                replace(c, agent, &report, 0).unwrap();
            }
            let paged = |agent: Option<&str>, before: Option<i64>| {
                let mut key = InventoryKey::first();
                let mut seen = vec![];
                loop {
                    let page = inventory_page(c, agent, before, &key, 2).unwrap();
                    let Some((pos, last)) = page.last() else {
                        return seen;
                    };
                    key = InventoryKey::of(*pos, last);
                    seen.extend(
                        page.into_iter()
                            .map(|(_, i)| (i.entry.not_after.map(|t| t.0), i.agent, i.entry.path)),
                    );
                }
            };
            let row = |t: Option<i64>, a: &str, p: &str| (t, a.to_string(), p.to_string());
            assert_eq!(
                paged(None, None),
                vec![
                    row(Some(100), "agent-a", "/0"),
                    row(Some(100), "agent-b", "/2"),
                    row(Some(200), "agent-a", "/2"),
                    row(Some(300), "agent-a", "/3"),
                    row(Some(300), "agent-b", "/0"),
                    row(None, "agent-a", "/1"),
                    row(None, "agent-b", "/1"),
                ]
            );
            assert_eq!(
                paged(Some("agent-b"), None),
                vec![
                    row(Some(100), "agent-b", "/2"),
                    row(Some(300), "agent-b", "/0"),
                    row(None, "agent-b", "/1"),
                ]
            );
            assert_eq!(
                paged(None, Some(200)),
                vec![
                    row(Some(100), "agent-a", "/0"),
                    row(Some(100), "agent-b", "/2"),
                    row(Some(200), "agent-a", "/2"),
                ]
            );

            let none = None::<String>;
            let plan = store::page::query_plan(
                c,
                &readable_page_sql(false, false),
                params![0, "", -1, none, None::<i64>, 10],
            );
            store::page::assert_index_order(&plan, "inventory_not_after");
            let plan = store::page::query_plan(
                c,
                &readable_page_sql(false, true),
                params![0, "", -1, none, 100, 10],
            );
            store::page::assert_index_order(&plan, "inventory_not_after");
            let plan =
                store::page::query_plan(c, &unreadable_page_sql(false), params!["", -1, none, 10]);
            store::page::assert_index_order(&plan, "inventory_not_after");
        });
    }
}
