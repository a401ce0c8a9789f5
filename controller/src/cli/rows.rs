//! Table rows of list pages: each list's header and the cells of one
//! page, with times relative to now ("in 12 d") and errors cut to their
//! first line (`show` and `--output json` have the whole text). The paged
//! lists of [`super::list`] print these page by page.

use certfleet_protocol::list::ListQuery;
use certfleet_protocol::message::{AtRiskItem, AtRiskReason, InstanceInfo, PageRows, Timestamp};

/// "in 12 d", "3 h ago", "now": how far `t` is from `now`, in the largest
/// whole unit.
pub(super) fn relative(t: i64, now: i64) -> String {
    let d = t.saturating_sub(now);
    let a = d.unsigned_abs();
    let (n, unit) = match a {
        0..=59 => return "now".into(),
        60..=3599 => (a / 60, "min"),
        3600..=86_399 => (a / 3600, "h"),
        _ => (a / 86_400, "d"),
    };
    if d > 0 {
        format!("in {n} {unit}")
    } else {
        format!("{n} {unit} ago")
    }
}

fn rel(t: Timestamp, now: i64) -> String {
    relative(t.0, now)
}

/// The first line of an error, for a table cell (`show` has all of it).
fn first_line(e: &Option<String>) -> String {
    e.as_deref()
        .map(|e| e.lines().next().unwrap_or("").to_string())
        .unwrap_or_else(|| "-".into())
}

const CERT_HEADER: &[&str] = &["ID", "STATE", "NOT AFTER", "RENEWAL", "ISSUER", "DOMAINS"];
const AGENT_HEADER: &[&str] = &[
    "ID",
    "NAME",
    "CONNECTED",
    "CLOCK",
    "LABELS",
    "TARGETS",
    "LAST SEEN",
];
const DEPLOYMENT_HEADER: &[&str] = &[
    "ID",
    "AGENT",
    "TARGET",
    "DESIRED",
    "INSTALLED",
    "STATUS",
    "UPDATED",
    "LAST ERROR",
];
const AUDIT_HEADER: &[&str] = &["ID", "AT", "ACTOR", "ACTION", "TARGET", "OUTCOME", "DETAIL"];
const INSTANCE_HEADER: &[&str] = &[
    "ID",
    "STATE",
    "ISSUER",
    "TYPE",
    "DOMAINS",
    "WILDCARD",
    "DAYS",
    "KEY",
    "CERTIFICATE",
    "RENEWS FROM",
];
const ISSUER_HEADER: &[&str] = &["NAME", "KIND", "KEY", "CREATED", "CRL"];
const ROLLOUT_HEADER: &[&str] = &[
    "ID",
    "KIND",
    "STATE",
    "CERTIFICATE",
    "WAVE",
    "TARGETS",
    "UPDATED",
];

const INVENTORY_HEADER: &[&str] = &[
    "NOT AFTER",
    "LEFT",
    "AGENT",
    "SOURCE",
    "SITE",
    "TARGET",
    "MANAGED",
    "PATH",
    "NAMES",
];
const PROBLEM_HEADER: &[&str] = &["AGENT", "PROBLEM"];
const AT_RISK_CERT_HEADER: &[&str] =
    &["ID", "DOMAINS", "EXPIRES", "DEPLOYMENTS", "SINCE", "REASON"];
/// Also the table of `status`'s at-risk items.
pub(super) const AT_RISK_HEADER: &[&str] = &[
    "AGENT",
    "TARGET",
    "CERTIFICATE",
    "EXPIRES",
    "SINCE",
    "REASON",
];

/// The table header of a list.
pub(super) fn header_of(q: &ListQuery) -> &'static [&'static str] {
    match q {
        ListQuery::Certificates { .. } => CERT_HEADER,
        ListQuery::Agents => AGENT_HEADER,
        ListQuery::Deployments { .. } => DEPLOYMENT_HEADER,
        ListQuery::Audit => AUDIT_HEADER,
        ListQuery::Instances => INSTANCE_HEADER,
        ListQuery::Issuers => ISSUER_HEADER,
        ListQuery::Rollouts => ROLLOUT_HEADER,
        ListQuery::Inventory { .. } => INVENTORY_HEADER,
        ListQuery::InventoryProblems { .. } => PROBLEM_HEADER,
        ListQuery::AtRiskCertificates => AT_RISK_CERT_HEADER,
        ListQuery::AtRiskDeployments => AT_RISK_HEADER,
    }
}

/// Table cells of one page of a list; times relative to `now`.
pub(super) fn rows_of(rows: &PageRows, now: i64) -> (&'static [&'static str], Vec<Vec<String>>) {
    match rows {
        PageRows::Certificates(list) => (
            CERT_HEADER,
            list.iter()
                .map(|c| {
                    vec![
                        c.id.clone(),
                        c.state.to_string(),
                        rel(c.not_after, now),
                        match &c.renewal {
                            Some(r) if r.blocked.is_some() => "renewal_blocked: no instance".into(),
                            Some(r) if r.last_error.is_some() => {
                                format!("failing ({} attempts)", r.attempts)
                            }
                            Some(r) => format!("due {}", rel(r.due_at, now)),
                            None => "-".into(),
                        },
                        c.issuer.clone(),
                        c.domains.join(","),
                    ]
                })
                .collect(),
        ),
        PageRows::Agents(list) => (
            AGENT_HEADER,
            list.iter()
                .map(|a| {
                    vec![
                        a.id.clone(),
                        a.name.clone(),
                        if a.connected { "yes" } else { "no" }.into(),
                        match a.clock_skew_secs {
                            Some(s) if s.abs() > crate::service::MAX_CLOCK_SKEW_SECS => {
                                format!("SKEW {s:+}s")
                            }
                            Some(_) => "ok".into(),
                            None => "-".into(),
                        },
                        labels(&a.labels),
                        a.targets
                            .iter()
                            .map(|t| t.name.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        a.last_seen.map(|t| rel(t, now)).unwrap_or("-".into()),
                    ]
                })
                .collect(),
        ),
        PageRows::Deployments(list) => (
            DEPLOYMENT_HEADER,
            list.iter()
                .map(|d| {
                    vec![
                        d.id.clone(),
                        d.agent_name.clone(),
                        d.target.clone(),
                        d.desired.clone(),
                        opt(&d.installed),
                        d.status.to_string(),
                        rel(d.updated_at, now),
                        first_line(&d.last_error),
                    ]
                })
                .collect(),
        ),
        PageRows::Audit(list) => (
            AUDIT_HEADER,
            list.iter()
                .map(|a| {
                    vec![
                        a.id.to_string(),
                        a.at.to_rfc3339(),
                        a.actor.clone(),
                        a.action.clone(),
                        a.target.clone(),
                        a.outcome.clone(),
                        a.detail.clone(),
                    ]
                })
                .collect(),
        ),
        PageRows::Instances(list) => (
            INSTANCE_HEADER,
            list.iter()
                .map(|i| {
                    vec![
                        i.id.clone(),
                        i.state.to_string(),
                        i.spec.issuer.clone(),
                        i.spec.validation.to_string(),
                        i.spec.max_domains.to_string(),
                        if i.spec.wildcard { "yes" } else { "no" }.into(),
                        i.spec.validity_days.to_string(),
                        i.spec.key.to_string(),
                        opt(&i.certificate),
                        renews_from(i),
                    ]
                })
                .collect(),
        ),
        PageRows::Issuers(list) => (
            ISSUER_HEADER,
            list.iter()
                .map(|i| {
                    vec![
                        i.name.clone(),
                        i.kind.to_string(),
                        i.key.to_string(),
                        i.created_at.to_rfc3339(),
                        i.crl_url.clone(),
                    ]
                })
                .collect(),
        ),
        PageRows::Rollouts(list) => (
            ROLLOUT_HEADER,
            list.iter()
                .map(|r| {
                    vec![
                        r.id.clone(),
                        r.kind.clone(),
                        r.state.clone(),
                        r.certificate.clone(),
                        format!("{}/{}", r.current_wave + 1, r.waves),
                        format!("{}/{} installed", r.installed, r.targets),
                        rel(r.updated_at, now),
                    ]
                })
                .collect(),
        ),
        PageRows::Inventory(list) => (
            INVENTORY_HEADER,
            list.iter()
                .map(|i| {
                    let e = &i.entry;
                    vec![
                        e.not_after.map(|t| t.to_rfc3339()).unwrap_or("-".into()),
                        match e.not_after {
                            Some(t) if t.0 <= now => "expired".into(),
                            Some(t) => rel(t, now),
                            None => "-".into(),
                        },
                        i.agent_name.clone(),
                        e.source.clone(),
                        e.site.clone().unwrap_or("-".into()),
                        e.target.clone().unwrap_or("-".into()),
                        i.managed.clone().unwrap_or("-".into()),
                        e.path.clone(),
                        match &e.error {
                            Some(err) => format!("error: {err}"),
                            None => e.sans.join(","),
                        },
                    ]
                })
                .collect(),
        ),
        PageRows::InventoryProblems(list) => (
            PROBLEM_HEADER,
            list.iter()
                .map(|(agent, p)| vec![agent.clone(), p.clone()])
                .collect(),
        ),
        PageRows::AtRiskCertificates(list) => (
            AT_RISK_CERT_HEADER,
            list.iter()
                .map(|c| {
                    vec![
                        c.id.clone(),
                        c.domains.join(","),
                        expires(c.not_after, now),
                        c.deployments.to_string(),
                        rel(c.since, now),
                        reason(c.reason, &c.reason_text),
                    ]
                })
                .collect(),
        ),
        PageRows::AtRiskDeployments(list) => (AT_RISK_HEADER, at_risk_cells(list, now)),
    }
}

/// "expired 2 h ago" or "in 3 d".
fn expires(t: Timestamp, now: i64) -> String {
    if t.0 <= now {
        format!("expired {}", rel(t, now))
    } else {
        rel(t, now)
    }
}

/// `kind: first line of the text`.
fn reason(kind: AtRiskReason, text: &str) -> String {
    format!("{kind}: {}", text.lines().next().unwrap_or(""))
}

/// A certificate by name: its first domain (and how many more), then its id.
fn cert_name(id: &str, domains: &[String]) -> String {
    match domains {
        [] => id.to_string(),
        [one] => format!("{one} ({id})"),
        [first, rest @ ..] => format!("{first} +{} ({id})", rest.len()),
    }
}

/// The cells of at-risk items (a list page, or `status`).
pub(super) fn at_risk_cells(list: &[AtRiskItem], now: i64) -> Vec<Vec<String>> {
    list.iter()
        .map(|i| {
            vec![
                i.agent_name.clone(),
                i.target.clone(),
                cert_name(&i.certificate, &i.domains),
                expires(i.not_after, now),
                rel(i.since, now),
                reason(i.reason, &i.reason_text),
            ]
        })
        .collect()
}

/// Labels as `k=v,k=v`, or `-`.
pub(super) fn labels(l: &[(String, String)]) -> String {
    if l.is_empty() {
        return "-".into();
    }
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// The issuer an instance's lineage renews from, for the list's RENEWS FROM
/// column: the primary unless it failed over (`backup (fallback)`).
fn renews_from(i: &InstanceInfo) -> String {
    match &i.issuing {
        Some(s) if s.fallback_since.is_some() => format!("{} (fallback)", s.active_issuer),
        Some(s) => s.active_issuer.clone(),
        None => i.spec.issuer.clone(),
    }
}

/// The fallback lines of `instance show`: the chain, and which issuer the
/// lineage renews from now, since when.
pub(super) fn instance_fallback_fields(i: &InstanceInfo) -> Vec<(&'static str, String)> {
    let mut f = Vec::new();
    if !i.spec.fallback_issuers.is_empty() {
        f.push(("fallback issuers", i.spec.fallback_issuers.join(", ")));
        let after = i
            .spec
            .fallback_after_secs
            .unwrap_or(crate::renewal::fallback_policy::DEFAULT_FALLBACK_AFTER_SECS.unsigned_abs());
        f.push((
            "fallback after",
            humantime::format_duration(std::time::Duration::from_secs(after)).to_string(),
        ));
    }
    if let Some(s) = &i.issuing {
        let role = if s.fallback_since.is_some() {
            "fallback"
        } else {
            "primary"
        };
        f.push((
            "renews from",
            format!("{} ({role}) since {}", s.active_issuer, s.active_since),
        ));
        if let Some(at) = s.fallback_since {
            f.push(("on fallback since", at.to_string()));
        }
        if let Some(at) = s.failing_since {
            f.push(("failing since", format!("{at} ({})", s.active_issuer)));
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_use_the_largest_whole_unit() {
        assert_eq!(relative(100, 100), "now");
        assert_eq!(relative(100 + 12 * 86_400 + 5, 100), "in 12 d");
        assert_eq!(relative(100, 100 + 3 * 3600 + 59), "3 h ago");
        assert_eq!(relative(100, 100 + 90), "1 min ago");
        // Far-off times saturate instead of overflowing.
        assert!(relative(i64::MIN, i64::MAX).ends_with(" d ago"));
    }
}
