//! Rendering of command results as tables (for people) or JSON (for
//! scripts; the shapes are the protocol types, documented in docs/cli.md).

use std::path::{Path, PathBuf};

use certfleet_protocol::message::{
    AdoptionInfo, AgentInfo, ApplicationInfo, CertInfo, FleetStatus, InstanceInfo, IssuerInfo,
    JoinToken, PageRows, RolloutInfo, Timestamp,
};
use serde::Serialize;

use super::rows::{labels, opt, rows_of};
use super::table::table;
use super::Format;

pub(super) struct Output {
    format: Format,
}

/// `key: value` lines for one object.
pub(super) fn fields(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    pairs
        .iter()
        .map(|(k, v)| format!("{:<w$} {v}\n", format!("{k}:")))
        .collect()
}

impl Output {
    pub(super) fn new(format: Format) -> Self {
        Output { format }
    }

    pub(super) fn format(&self) -> Format {
        self.format
    }

    pub(super) fn is_table(&self) -> bool {
        self.format == Format::Table
    }

    pub(super) fn emit<T: Serialize + ?Sized>(
        &self,
        value: &T,
        text: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        match self.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
            Format::Table => print!("{}", text()),
        }
        Ok(())
    }

    pub(super) fn issuer(&self, i: &IssuerInfo) -> anyhow::Result<()> {
        self.emit(i, || {
            let mut f = vec![
                ("name", i.name.clone()),
                ("kind", i.kind.to_string()),
                ("created", i.created_at.to_string()),
            ];
            match &i.directory {
                Some(d) => {
                    f.push(("directory", d.clone()));
                    f.push(("account", opt(&i.account_url)));
                    f.push(("challenge", opt(&i.default_challenge)));
                }
                None => {
                    f.push(("key", i.key.to_string()));
                    f.push(("ca", i.ca_subject.clone()));
                    f.push(("root sha256", i.root_fingerprint.clone()));
                    f.push(("crl", i.crl_url.clone()));
                }
            }
            fields(&f)
        })
    }

    pub(super) fn instance(&self, i: &InstanceInfo) -> anyhow::Result<()> {
        self.emit(i, || {
            let mut f = vec![
                ("id", i.id.clone()),
                ("state", i.state.to_string()),
                ("issuer", i.spec.issuer.clone()),
                ("type", i.spec.validation.to_string()),
                ("domains", i.spec.max_domains.to_string()),
                ("wildcard", i.spec.wildcard.to_string()),
                ("validity", format!("{} days", i.spec.validity_days)),
                ("key", i.spec.key.to_string()),
                ("application", opt(&i.application)),
                ("certificate", opt(&i.certificate)),
                ("created", i.created_at.to_string()),
            ];
            f.extend(super::rows::instance_fallback_fields(i));
            fields(&f)
        })
    }

    pub(super) fn application(&self, a: &ApplicationInfo) -> anyhow::Result<()> {
        self.emit(a, || {
            fields(&[
                ("application", a.id.clone()),
                ("state", a.state.to_string()),
                ("instance", a.instance.clone()),
                ("domains", a.domains.join(", ")),
                ("attempts", a.attempts.to_string()),
                ("certificate", opt(&a.certificate)),
                ("last error", opt(&a.last_error)),
                ("updated", a.updated_at.to_string()),
            ])
        })
    }

    pub(super) fn cert(&self, c: &CertInfo) -> anyhow::Result<()> {
        self.emit(c, || {
            let mut f = vec![
                ("id", c.id.clone()),
                ("state", c.state.to_string()),
                ("domains", c.domains.join(", ")),
                ("issuer", c.issuer.clone()),
                ("instance", c.instance.clone()),
                ("serial", c.serial.clone()),
                ("sha256", c.fingerprint.clone()),
                ("key", c.key.to_string()),
                ("not before", c.not_before.to_string()),
                ("not after", c.not_after.to_string()),
            ];
            if let Some(r) = &c.renews {
                f.push(("renews", r.clone()));
            }
            if let Some(at) = c.revoked_at {
                f.push(("revoked", at.to_string()));
            }
            if let Some(r) = c.revocation_reason {
                f.push(("reason", r.to_string()));
            }
            if let Some(r) = &c.renewal {
                f.push(("renewal due", r.due_at.to_string()));
                if let Some(b) = &r.blocked {
                    f.push(("renewal blocked", b.clone()));
                }
                if let Some(e) = &r.last_error {
                    f.push((
                        "renewal error",
                        format!(
                            "{e} (attempt {}, next {})",
                            r.attempts,
                            r.next_attempt_at
                                .map(|t| t.to_string())
                                .unwrap_or("-".into())
                        ),
                    ));
                }
            }
            fields(&f)
        })
    }

    pub(super) fn token(&self, t: &JoinToken) -> anyhow::Result<()> {
        self.token_for(t, None)
    }

    /// A re-enroll token for agent `agent` (as the operator named it).
    pub(super) fn reenroll_token(&self, agent: &str, t: &JoinToken) -> anyhow::Result<()> {
        self.token_for(t, Some(agent))
    }

    fn token_for(&self, t: &JoinToken, reenroll: Option<&str>) -> anyhow::Result<()> {
        #[derive(Serialize)]
        struct Shown<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            reenroll: Option<&'a str>,
            token: &'a str,
            id: &'a str,
            ca_pin: &'a str,
            #[serde(serialize_with = "certfleet_protocol::message::labels::serialize")]
            labels: &'a [(String, String)],
            uses: u32,
            expires_at: Timestamp,
        }
        let token = t.token.expose_str().unwrap_or_default();
        let shown = Shown {
            reenroll,
            token,
            id: &t.id,
            ca_pin: &t.ca_pin,
            labels: &t.labels,
            uses: t.uses,
            expires_at: t.expires_at,
        };
        self.emit(&shown, || {
            if let Some(agent) = reenroll {
                return format!(
                    "{}\n\nOn agent {agent}'s host, enroll it again with its new identity \
                     (valid until {}, one use); its id, labels and deployments stay, and its \
                     old identity is refused from then on:\n\n    \
                     certfleet-agent enroll --reenroll --controller <controller address> \
                     --token {token} \\\n        \
                     --ca-pin {} --config /etc/certfleet/agent.toml\n",
                    fields(&[
                        ("token", token.to_string()),
                        ("ca pin", t.ca_pin.clone()),
                        ("agent", agent.to_string()),
                    ])
                    .trim_end(),
                    t.expires_at,
                    t.ca_pin
                );
            }
            format!(
                "{}\n\nEnroll an agent with it (valid until {}, {} use(s)):\n\n    \
                 certfleet-agent enroll --controller <controller address> --token {token} \\\n        \
                 --ca-pin {} --config /etc/certfleet/agent.toml\n",
                fields(&[
                    ("token", token.to_string()),
                    ("ca pin", t.ca_pin.clone()),
                    ("labels", labels(&t.labels)),
                ])
                .trim_end(),
                t.expires_at,
                t.uses,
                t.ca_pin
            )
        })
    }

    pub(super) fn agent(&self, a: &AgentInfo) -> anyhow::Result<()> {
        self.emit(a, || {
            fields(&[
                ("id", a.id.clone()),
                ("name", a.name.clone()),
                ("connected", a.connected.to_string()),
                ("labels", labels(&a.labels)),
                (
                    "targets",
                    a.targets
                        .iter()
                        .map(|t| format!("{} ({})", t.name, t.kind))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                ("version", opt(&a.version)),
                (
                    "last seen",
                    a.last_seen.map(|t| t.to_string()).unwrap_or("-".into()),
                ),
                ("enrolled", a.enrolled_at.to_string()),
                (
                    "identity expires",
                    a.identity_expires
                        .map(|t| t.to_string())
                        .unwrap_or("-".into()),
                ),
            ])
        })
    }

    pub(super) fn rollout(&self, r: &RolloutInfo) -> anyhow::Result<()> {
        self.emit(r, || {
            let mut out = fields(&[
                ("rollout", r.id.clone()),
                ("kind", r.kind.clone()),
                ("state", r.state.clone()),
                ("reason", r.reason.clone().unwrap_or("-".into())),
                ("certificate", r.certificate.clone()),
                ("previous", opt(&r.previous)),
                (
                    "strategy",
                    format!(
                        "canary {}, waves of {}, pause {}s, max failures {}, offline deadline {}s",
                        r.strategy.canary,
                        r.strategy.wave,
                        r.strategy.pause_secs,
                        r.strategy.max_failures,
                        r.strategy.offline_deadline_secs
                    ),
                ),
                ("wave", format!("{} of {}", r.current_wave + 1, r.waves)),
                ("updated", r.updated_at.to_string()),
            ]);
            out.push('\n');
            out.push_str(&table(
                &["WAVE", "AGENT", "TARGET", "STATE", "ERROR"],
                r.targets
                    .iter()
                    .map(|t| {
                        vec![
                            t.wave.to_string(),
                            t.agent_name.clone(),
                            t.target.clone(),
                            t.state.clone(),
                            t.error
                                .as_deref()
                                .map(|e| e.lines().next().unwrap_or("").to_string())
                                .unwrap_or("-".into()),
                        ]
                    })
                    .collect(),
            ));
            out
        })
    }

    pub(super) fn status(&self, s: &FleetStatus) -> anyhow::Result<()> {
        self.emit(s, || {
            fields(&[
                (
                    "agents",
                    format!(
                        "{} online, {} offline{}",
                        s.agents.online,
                        s.agents.offline,
                        if s.agents.clock_skewed > 0 {
                            format!(", {} with clock skew over 5 minutes", s.agents.clock_skewed)
                        } else {
                            String::new()
                        }
                    ),
                ),
                (
                    "certificates",
                    format!(
                        "{} active, {} superseded, {} revoked, {} expired",
                        s.certificates.active,
                        s.certificates.superseded,
                        s.certificates.revoked,
                        s.certificates.expired
                    ),
                ),
                (
                    "expiring",
                    format!(
                        "{} within 30 days, {} within 7 days",
                        s.expiring.within_30d, s.expiring.within_7d
                    ),
                ),
                (
                    "renewals",
                    format!(
                        "{} blocked, {} failing",
                        s.renewals.blocked, s.renewals.failing
                    ),
                ),
                (
                    "rollouts",
                    format!(
                        "{} running, {} paused, {} halted",
                        s.rollouts.running, s.rollouts.paused, s.rollouts.halted
                    ),
                ),
                ("at risk", format!("{} deployment(s)", s.at_risk.total)),
            ]) + &at_risk_section(&s.at_risk)
        })
    }

    /// Deployments printed whole, outside a paged list (a renewal plan).
    pub(super) fn deployments(
        &self,
        list: &[certfleet_protocol::message::DeploymentInfo],
    ) -> anyhow::Result<()> {
        self.emit(list, || {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let (header, cells) = rows_of(&PageRows::Deployments(list.to_vec()), now);
            table(header, cells)
        })
    }

    /// What `inventory adopt` started.
    pub(super) fn adoption(&self, a: &AdoptionInfo) -> anyhow::Result<()> {
        self.emit(a, || {
            fields(&[
                ("agent", format!("{} ({})", a.agent_name, a.agent)),
                ("target", a.target.clone()),
                ("path", a.path.clone()),
                ("replaces", a.fingerprint.clone()),
                ("domains", a.domains.join(", ")),
                ("instance", a.instance.clone()),
                ("application", a.application.id.clone()),
                ("state", a.application.state.to_string()),
            ])
        })
    }

    pub(super) fn files(&self, dir: &Path, files: &[PathBuf]) -> anyhow::Result<()> {
        #[derive(Serialize)]
        struct Written<'a> {
            dir: &'a Path,
            files: &'a [PathBuf],
        }
        self.emit(&Written { dir, files }, || {
            files
                .iter()
                .map(|f| format!("wrote {}\n", f.display()))
                .collect()
        })
    }
}

/// `status`'s at-risk items, soonest expiry first, and how many more the
/// lists have; nothing when no deployment is at risk.
fn at_risk_section(a: &certfleet_protocol::message::AtRiskStatus) -> String {
    if a.items.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n");
    out += &table(
        super::rows::AT_RISK_HEADER,
        super::rows::at_risk_cells(&a.items, a.now.0),
    );
    let more = (a.total as usize).saturating_sub(a.items.len());
    if more > 0 {
        out += &format!("… and {more} more (certfleet deployment list --at-risk lists them all)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_protocol::message::{AtRiskItem, AtRiskReason, AtRiskStatus, Timestamp};

    fn item(n: u32, not_after: i64) -> AtRiskItem {
        AtRiskItem {
            deployment: format!("dep-{n}"),
            agent: format!("agent-{n}"),
            agent_name: format!("web-{n}"),
            target: "nginx".into(),
            certificate: format!("cert-{n}"),
            domains: vec!["www.example.test".into(), "example.test".into()],
            not_after: Timestamp(not_after),
            reason: AtRiskReason::RolloutFailed,
            reason_text: "rolled_back: nginx -t failed\nnginx: [emerg] unknown directive".into(),
            since: Timestamp(not_after - 86_400),
        }
    }

    #[test]
    fn status_names_at_risk_items_and_counts_the_rest() {
        let now = 1_800_000_000;
        let section = at_risk_section(&AtRiskStatus {
            total: 25,
            items: vec![item(1, now - 7200), item(2, now + 3 * 86_400)],
            now: Timestamp(now),
        });
        let lines: Vec<&str> = section.lines().collect();
        assert!(lines[1].starts_with("AGENT"), "{section}");
        for (line, expect) in [
            (
                lines[2],
                ["web-1", "www.example.test +1 (cert-1)", "expired 2 h ago"],
            ),
            (
                lines[3],
                ["web-2", "www.example.test +1 (cert-2)", "in 3 d"],
            ),
        ] {
            for e in expect {
                assert!(line.contains(e), "{e:?} missing in {line:?}\n{section}");
            }
            assert!(line.contains("rollout_failed: rolled_back: nginx -t failed"));
            assert!(!line.contains("emerg"), "only the first line of the error");
        }
        assert!(
            lines[4].starts_with("… and 23 more (certfleet deployment list --at-risk"),
            "{section}"
        );
        let none = at_risk_section(&AtRiskStatus::default());
        assert_eq!(none, "");
    }
}
