//! Paged lists (`Request::List`): one page of rows per request, bounded in
//! rows and in bytes.
//!
//! A page holds at most `limit` rows (capped at [`MAX_PAGE_ROWS`]) and
//! stops before its rows' encoded size passes [`PAGE_BYTE_BUDGET`], which
//! leaves [`ENVELOPE_RESERVE`] bytes of the frame limit for the response
//! envelope (variant tags, the row count and the continuation token). So
//! a page always fits in one frame, whatever the rows hold; a single row
//! larger than the budget is refused with an error naming the limit.
//!
//! The continuation token is `c1.` and the hex of the last key returned;
//! clients treat it as opaque. A key is the last row's place in the order
//! the list is read in: an id or name, or for the lists in another order
//! its sort columns and the id that breaks ties, one per line
//! (`not_after` and id for certificates and at-risk items, `created_at`
//! and id for rollouts, `not_after` or `-`, agent id and position for the
//! inventory). A token that does not parse as the list's key is an
//! invalid argument. Filters are ids, applied in SQL.

use certfleet_protocol::list::{ListQuery, PageRequest, MAX_PAGE_ROWS};
use certfleet_protocol::message::{
    CertInfo, CertSummary, ListPage, PageRows, RolloutSummary, Timestamp,
};
use certfleet_protocol::DEFAULT_MAX_FRAME;
use serde::Serialize;

use crate::error::{internal, Result, ServiceError};
use crate::inventory::InventoryKey;
use crate::service::{with_renewal, Service};
use crate::store::{self, page};

/// Bytes kept free in a frame for everything around the rows.
pub const ENVELOPE_RESERVE: usize = 64 * 1024;
/// Most encoded row bytes in one page.
pub const PAGE_BYTE_BUDGET: usize = DEFAULT_MAX_FRAME - ENVELOPE_RESERVE;
/// Longest key a token may carry; keys are ids and names, far shorter, and
/// the bound keeps the token inside [`ENVELOPE_RESERVE`].
const MAX_KEY_LEN: usize = 1024;
const TOKEN_PREFIX: &str = "c1.";

fn token(key: &str) -> String {
    format!("{TOKEN_PREFIX}{}", hex::encode(key))
}

fn bad_token(t: &str) -> ServiceError {
    ServiceError::Invalid(format!(
        "continuation token {t:?} is not one this controller hands out; \
         start the list again from the first page"
    ))
}

/// The key a token continues after; `""` (before every key) without one.
fn key_of(t: Option<&str>) -> Result<String> {
    let Some(t) = t else {
        return Ok(String::new());
    };
    let key = t
        .strip_prefix(TOKEN_PREFIX)
        .filter(|h| h.len() <= 2 * MAX_KEY_LEN)
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| bad_token(t))?;
    Ok(key)
}

/// A key `"<number>\n<rest>"`: a sort column and the id after it.
fn number_key(key: &str) -> Option<(i64, &str)> {
    let (n, rest) = key.split_once('\n')?;
    Some((n.parse().ok()?, rest))
}

/// The key of a number and an id, `first` for the first page.
fn number_key_or<'a>(key: &'a str, first: (i64, &'a str)) -> Result<(i64, &'a str)> {
    match key {
        "" => Ok(first),
        k => number_key(k).ok_or_else(|| bad_token(&token(k))),
    }
}

fn inventory_key(k: &InventoryKey) -> String {
    match k.not_after {
        Some(t) => format!("{t}\n{}\n{}", k.agent, k.position),
        None => format!("-\n{}\n{}", k.agent, k.position),
    }
}

fn parse_inventory_key(key: &str) -> Option<InventoryKey> {
    if key.is_empty() {
        return Some(InventoryKey::first());
    }
    let (not_after, rest) = key.split_once('\n')?;
    let (agent, position) = rest.rsplit_once('\n')?;
    Some(InventoryKey {
        not_after: match not_after {
            "-" => None,
            t => Some(t.parse().ok()?),
        },
        agent: agent.to_owned(),
        position: position.parse().ok()?,
    })
}

/// Take rows (fetched with one more than `limit`, to see whether more
/// follow) while they fit in `limit` and the byte budget; the token
/// continues after the last row taken.
fn fill<T: Serialize>(
    what: &str,
    fetched: Vec<T>,
    limit: usize,
    budget: usize,
    key: impl Fn(&T) -> String,
) -> Result<(Vec<T>, Option<String>)> {
    let more = fetched.len() > limit;
    let mut rows = Vec::with_capacity(fetched.len().min(limit));
    let mut used = 0usize;
    for row in fetched.into_iter().take(limit) {
        let size = postcard::to_stdvec(&row).map_err(internal)?.len();
        if used + size > budget {
            if rows.is_empty() {
                return Err(ServiceError::Internal(format!(
                    "one {what} row is {size} bytes, more than a page may hold \
                     ({budget} bytes within the {DEFAULT_MAX_FRAME}-byte frame limit); \
                     look at it with the matching show command"
                )));
            }
            let next = rows.last().map(&key);
            return Ok((rows, next.map(|k| token(&k))));
        }
        used += size;
        rows.push(row);
    }
    let next = if more { rows.last().map(&key) } else { None };
    Ok((rows, next.map(|k| token(&k))))
}

fn cert_summary(c: CertInfo) -> CertSummary {
    CertSummary {
        id: c.id,
        instance: c.instance,
        issuer: c.issuer,
        domains: c.domains,
        serial: c.serial,
        fingerprint: c.fingerprint,
        key: c.key,
        not_before: c.not_before,
        not_after: c.not_after,
        state: c.state,
        renews: c.renews,
        revoked_at: c.revoked_at,
        revocation_reason: c.revocation_reason,
        renewal: c.renewal,
    }
}

impl Service {
    /// One page of a list.
    pub async fn list_page(&self, query: ListQuery, page: PageRequest) -> Result<ListPage> {
        let limit = match page.limit {
            0 => MAX_PAGE_ROWS,
            n => n.min(MAX_PAGE_ROWS),
        };
        let after = key_of(page.continue_token.as_deref())?;
        if let ListQuery::Agents = query {
            // Agents need the session table (connected, last activity),
            // which lives outside the store.
            let fetched = self
                .store
                .call(move |c| page::agent_page(c, &after, limit + 1))
                .await?;
            let infos = fetched.iter().map(|a| self.agent_info(a)).collect();
            let (rows, next) = fill("agent", infos, limit as usize, PAGE_BYTE_BUDGET, |a| {
                a.id.clone()
            })?;
            return Ok(ListPage {
                rows: PageRows::Agents(rows),
                continue_token: next,
            });
        }
        if let ListQuery::Issuers = query {
            let fetched = self
                .store
                .call(move |c| page::issuer_page(c, &after, limit + 1))
                .await?;
            let infos = fetched.iter().map(|i| self.issuer_info(i)).collect();
            let (rows, next) = fill("issuer", infos, limit as usize, PAGE_BYTE_BUDGET, |i| {
                i.name.clone()
            })?;
            return Ok(ListPage {
                rows: PageRows::Issuers(rows),
                continue_token: next,
            });
        }
        let now = self.now().unix_timestamp();
        self.store
            .call(move |c| -> Result<ListPage> { list_in_store(c, query, &after, limit, now) })
            .await
    }
}

/// The lists that need nothing but the store.
fn list_in_store(
    c: &rusqlite::Connection,
    query: ListQuery,
    after: &str,
    limit: u32,
    now: i64,
) -> Result<ListPage> {
    let n = limit as usize;
    let (rows, next) = match query {
        ListQuery::Certificates {
            expiring_within_secs,
        } => {
            let before = expiring_within_secs.map(|s| now.saturating_add(s));
            let after = number_key_or(after, page::CERT_FIRST)?;
            let fetched = page::cert_page(c, before, after, limit + 1)?
                .into_iter()
                .map(|r| with_renewal(c, r).map(cert_summary))
                .collect::<Result<Vec<_>>>()?;
            let (rows, next) = fill("certificate", fetched, n, PAGE_BYTE_BUDGET, |r| {
                format!("{}\n{}", r.not_after.0, r.id)
            })?;
            (PageRows::Certificates(rows), next)
        }
        ListQuery::Deployments { certificate, agent } => {
            // A filter that names nothing is a mistake to report, not an
            // empty list; an agent may be named by id or unique name.
            if let Some(cert) = &certificate {
                crate::fleet::require_certificate(c, cert)?;
            }
            let agent = agent
                .map(|a| crate::fleet::resolve_agent(c, &a).map(|r| r.id))
                .transpose()?;
            let fetched = page::deployment_page(
                c,
                certificate.as_deref(),
                agent.as_deref(),
                after,
                limit + 1,
            )?;
            let (rows, next) = fill("deployment", fetched, n, PAGE_BYTE_BUDGET, |r| r.id.clone())?;
            (PageRows::Deployments(rows), next)
        }
        ListQuery::Audit => {
            // Newest first: the key is the id the next page stays below.
            let before = match after {
                "" => i64::MAX,
                k => k.parse().map_err(|_| bad_token(&token(k)))?,
            };
            let fetched = page::audit_page(c, before, limit + 1)?;
            let (rows, next) = fill("audit", fetched, n, PAGE_BYTE_BUDGET, |r| r.id.to_string())?;
            (PageRows::Audit(rows), next)
        }
        ListQuery::Instances => {
            let mut fetched = page::instance_page(c, after, limit + 1)?;
            store::fallback::attach(c, &mut fetched)?;
            let (rows, next) = fill("instance", fetched, n, PAGE_BYTE_BUDGET, |r| r.id.clone())?;
            (PageRows::Instances(rows), next)
        }
        ListQuery::Rollouts => {
            // Newest first: the key is the one the next page stays below.
            let before = number_key_or(after, page::ROLLOUT_FIRST)?;
            let fetched = page::rollout_page(c, before, limit + 1)?
                .iter()
                .map(|r| rollout_summary(c, r))
                .collect::<Result<Vec<_>>>()?;
            let (rows, next) = fill("rollout", fetched, n, PAGE_BYTE_BUDGET, |r| {
                format!("{}\n{}", r.created_at.0, r.id)
            })?;
            (PageRows::Rollouts(rows), next)
        }
        ListQuery::Inventory {
            expiring_within_secs,
            agent,
        } => {
            let agent = agent
                .map(|a| crate::fleet::resolve_agent(c, &a).map(|r| r.id))
                .transpose()?;
            let before = expiring_within_secs.map(|s| now.saturating_add(s));
            let after = parse_inventory_key(after).ok_or_else(|| bad_token(&token(after)))?;
            let fetched =
                crate::inventory::inventory_page(c, agent.as_deref(), before, &after, limit + 1)?;
            let (rows, next) = fill("inventory", fetched, n, PAGE_BYTE_BUDGET, |(pos, i)| {
                inventory_key(&InventoryKey::of(*pos, i))
            })?;
            (
                PageRows::Inventory(rows.into_iter().map(|(_, i)| i).collect()),
                next,
            )
        }
        ListQuery::InventoryProblems { agent } => {
            let agent = agent
                .map(|a| crate::fleet::resolve_agent(c, &a).map(|r| r.id))
                .transpose()?;
            let fetched = crate::inventory::problems_page(c, agent.as_deref(), after, limit + 1)?;
            let (rows, next) = fill("problem", fetched, n, PAGE_BYTE_BUDGET, |(id, _)| {
                id.clone()
            })?;
            (
                PageRows::InventoryProblems(rows.into_iter().flat_map(|(_, p)| p).collect()),
                next,
            )
        }
        ListQuery::AtRiskDeployments => {
            let after = number_key_or(after, store::at_risk::FIRST)?;
            let fetched = store::at_risk::item_page(c, after, limit + 1)?;
            let (rows, next) = fill("at-risk deployment", fetched, n, PAGE_BYTE_BUDGET, |r| {
                format!("{}\n{}", r.not_after.0, r.deployment)
            })?;
            (PageRows::AtRiskDeployments(rows), next)
        }
        ListQuery::AtRiskCertificates => {
            let after = number_key_or(after, store::at_risk::FIRST)?;
            let fetched = store::at_risk::certificate_page(c, after, limit + 1)?;
            let (rows, next) = fill("at-risk certificate", fetched, n, PAGE_BYTE_BUDGET, |r| {
                format!("{}\n{}", r.not_after.0, r.id)
            })?;
            (PageRows::AtRiskCertificates(rows), next)
        }
        ListQuery::Agents | ListQuery::Issuers => {
            return Err(internal("agents and issuers are listed outside the store"));
        }
    };
    Ok(ListPage {
        rows,
        continue_token: next,
    })
}

fn rollout_summary(c: &rusqlite::Connection, r: &store::RolloutRow) -> Result<RolloutSummary> {
    let strategy = crate::rollout::parse_strategy(&r.strategy)?;
    let (targets, installed, waves) = page::rollout_counts(c, &r.id)?;
    Ok(RolloutSummary {
        id: r.id.clone(),
        kind: r.kind.clone(),
        lineage: r.lineage.clone(),
        certificate: r.certificate.clone(),
        previous: r.previous.clone(),
        state: r.state.clone(),
        reason: r.reason.clone(),
        strategy: crate::rollout::spec_from_strategy(&strategy),
        current_wave: r.current_wave,
        waves,
        targets,
        installed,
        created_at: Timestamp(r.created_at),
        updated_at: Timestamp(r.updated_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_protocol::frame::encode;
    use certfleet_protocol::message::{AuditEntry, Response};

    fn entry(id: i64, detail_len: usize) -> AuditEntry {
        AuditEntry {
            id,
            at: Timestamp(id),
            actor: "admin".into(),
            action: "cert.revoke".into(),
            target: "cert-1".into(),
            outcome: "refused".into(),
            detail: "x".repeat(detail_len),
        }
    }

    /// Whatever the rows weigh, a full page with the longest token encodes
    /// within the frame limit: the budget plus the reserve is the limit.
    #[test]
    fn a_page_always_fits_in_a_frame() {
        for detail in [10, 1000, 100_000, 1_000_000] {
            let rows: Vec<_> = (0..(MAX_PAGE_ROWS as i64 + 1))
                .map(|i| entry(i, detail))
                .collect();
            let (rows, next) = fill(
                "audit",
                rows,
                MAX_PAGE_ROWS as usize,
                PAGE_BYTE_BUDGET,
                |_| "k".repeat(MAX_KEY_LEN),
            )
            .unwrap();
            assert!(!rows.is_empty());
            assert!(next.is_some(), "rows were left, so the page must continue");
            let frame = encode(
                &Response::Page(ListPage {
                    rows: PageRows::Audit(rows),
                    continue_token: next,
                }),
                DEFAULT_MAX_FRAME,
            );
            assert!(frame.is_ok(), "detail {detail}: {:?}", frame.err());
        }
    }

    #[test]
    fn limit_and_last_page() {
        let rows: Vec<_> = (0..5).map(|i| entry(i, 1)).collect();
        let (taken, next) = fill("audit", rows.clone(), 3, PAGE_BYTE_BUDGET, |r| {
            r.id.to_string()
        })
        .unwrap();
        assert_eq!(taken.len(), 3);
        assert_eq!(key_of(next.as_deref()).unwrap(), "2");
        let (taken, next) = fill("audit", rows, 5, PAGE_BYTE_BUDGET, |r| r.id.to_string()).unwrap();
        assert_eq!(taken.len(), 5);
        assert_eq!(next, None);
    }

    #[test]
    fn a_row_larger_than_a_page_is_an_error_naming_the_limit() {
        let err = fill("audit", vec![entry(1, 5000)], 10, 1000, |r| {
            r.id.to_string()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("1000 bytes") && err.contains("frame limit"),
            "{err}"
        );
    }

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(key_of(Some(&token("cert-ab12"))).unwrap(), "cert-ab12");
        assert_eq!(key_of(None).unwrap(), "");
        for bad in ["", "c1.zz", "x1.00", "c1.ff"] {
            let err = key_of(Some(bad)).unwrap_err().to_string();
            assert!(err.contains("first page"), "{bad}: {err}");
        }
    }

    /// The composite keys of the lists in expiry and creation order round
    /// trip, and a token whose key is not the list's (an id alone, a
    /// missing part, a non-number) is an invalid argument, not a panic or
    /// a silent restart.
    #[test]
    fn composite_keys_round_trip_and_malformed_ones_are_invalid() {
        assert_eq!(number_key_or("", (7, "")).unwrap(), (7, ""));
        assert_eq!(
            number_key_or("-5\ncert-ab12", (7, "")).unwrap(),
            (-5, "cert-ab12")
        );
        for bad in ["cert-ab12", "x\ncert-ab12", "\ncert-ab12"] {
            let err = number_key_or(bad, (0, "")).unwrap_err();
            assert!(matches!(err, ServiceError::Invalid(_)), "{bad}: {err}");
            assert!(err.to_string().contains("first page"), "{bad}: {err}");
        }

        for key in [
            InventoryKey {
                not_after: Some(1_700_000_000),
                agent: "agent-1".into(),
                position: 3,
            },
            InventoryKey {
                not_after: None,
                agent: "agent-2".into(),
                position: 0,
            },
        ] {
            assert_eq!(parse_inventory_key(&inventory_key(&key)), Some(key));
        }
        assert_eq!(parse_inventory_key(""), Some(InventoryKey::first()));
        for bad in ["agent-1\n3", "x\nagent-1\n3", "-\nagent-1\nx", "-\nagent-1"] {
            assert_eq!(parse_inventory_key(bad), None, "{bad}");
        }
    }
}
