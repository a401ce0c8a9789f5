//! `certfleet inventory …`: the certificates agents found in use on their
//! hosts, managed or not, and adopting them.

use std::time::Duration;

use anyhow::bail;
use certfleet_protocol::message::{InventoryList, KeyType, PageRows, Planned, Request, Response};
use clap::Subcommand;

use std::io::Write;

use certfleet_protocol::list::ListQuery;

use super::list::{stream_to, Empty, ListArgs};
use super::output::Output;
use super::rows::rows_of;
use super::table::table;
use super::{parse_named, wait_application, Format};
use crate::client::Client;

#[derive(Debug, Subcommand)]
pub enum InventoryCmd {
    /// Every certificate the agents found in use (nginx, Apache, HAProxy,
    /// their `[discovery] paths`), managed by certfleet or not, soonest
    /// expiry first and unreadable ones last, page by page. MANAGED names
    /// the certfleet certificate with the same fingerprint; `-` marks one
    /// certfleet does not renew.
    List {
        /// Only certificates that expire within this period (e.g. 30d);
        /// expired ones are included, unreadable ones are not.
        #[arg(long, value_parser = humantime::parse_duration)]
        expiring_within: Option<Duration>,
        /// Only this agent (id or name).
        #[arg(long)]
        agent: Option<String>,
        /// Same as --output json (kept for older scripts).
        #[arg(long, hide = true)]
        json: bool,
        /// --limit and --page-size count certificates; the agents'
        /// problems follow them in full.
        #[command(flatten)]
        page: ListArgs,
    },
    /// Ask a connected agent to scan now, and show what it found.
    Scan {
        /// Agent id or name.
        agent: String,
    },
    /// Bring a discovered certificate under management: certfleet applies
    /// for the same names from --issuer and installs the result on the
    /// agent's target whose `fullchain` or `cert` is the discovered path;
    /// renewals replace it from then on. The agent must declare that target
    /// in its own config.
    Adopt {
        /// Agent id or name.
        agent: String,
        /// The discovered certificate: its path on the agent, or its
        /// SHA-256 fingerprint.
        certificate: String,
        /// Issuer to apply to (see `certfleet issuer list`).
        #[arg(long)]
        issuer: String,
        /// Lifetime of the replacement [default: the discovered
        /// certificate's].
        #[arg(long)]
        validity_days: Option<u32>,
        /// Key type of the replacement.
        #[arg(long, default_value = "ecdsa-p256", value_parser = parse_named::<KeyType>)]
        key: KeyType,
        /// Wait until the replacement is issued and installed.
        #[arg(long, conflicts_with = "dry_run")]
        wait: bool,
        /// Print what would be adopted (target, names, instance), or why it
        /// would be refused, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// `inventory list`, page by page: the certificates, then the problems of
/// the agents' last scans. JSON keeps the shape of [`InventoryList`]
/// (`{"items": [...], "problems": [...]}`), streamed.
async fn stream_list(
    client: &Client,
    format: Format,
    expiring_within_secs: Option<i64>,
    agent: Option<String>,
    page: &ListArgs,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let items = ListQuery::Inventory {
        expiring_within_secs,
        agent: agent.clone(),
    };
    let problems = ListQuery::InventoryProblems { agent };
    let every = ListArgs {
        limit: None,
        page_size: page.page_size,
    };
    match format {
        Format::Json => {
            w.write_all(b"{\n\"items\": ")?;
            stream_to(client, &mut w, format, items, page, Empty::Header).await?;
            w.write_all(b",\n\"problems\": ")?;
            stream_to(client, &mut w, format, problems, &every, Empty::Header).await?;
            w.write_all(b"}\n")?;
        }
        Format::Table => {
            stream_to(client, &mut w, format, items, page, Empty::Header).await?;
            // Problems are a second table, only when there are any.
            let title = "\nProblems reported by the agents' last scans:";
            stream_to(
                client,
                &mut w,
                format,
                problems,
                &every,
                Empty::Section(title),
            )
            .await?;
        }
    }
    w.flush()?;
    Ok(())
}

fn show_list(out: &Output, list: &InventoryList) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    out.emit(list, || {
        let (header, rows) = rows_of(&PageRows::Inventory(list.items.clone()), now);
        let mut text = table(header, rows);
        if !list.problems.is_empty() {
            text.push_str("\nProblems reported by the agents' last scans:\n");
            let (header, rows) = rows_of(&PageRows::InventoryProblems(list.problems.clone()), now);
            text.push_str(&table(header, rows));
        }
        text
    })
}

pub(super) async fn run(client: &Client, cmd: InventoryCmd, out: &Output) -> anyhow::Result<()> {
    match cmd {
        InventoryCmd::List {
            expiring_within,
            agent,
            json,
            page,
        } => {
            let secs = expiring_within.map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            let format = if json { Format::Json } else { out.format() };
            stream_list(client, format, secs, agent, &page).await
        }
        InventoryCmd::Scan { agent } => {
            let r = client.call(&Request::InventoryScan { agent }).await?;
            show_list(out, &expect_response!(r, Inventory))
        }
        InventoryCmd::Adopt {
            agent,
            certificate,
            issuer,
            validity_days,
            key,
            wait,
            timeout,
            dry_run,
        } => {
            if dry_run {
                let planned = Planned::InventoryAdopt {
                    agent,
                    certificate,
                    issuer,
                    validity_days,
                    key,
                };
                return super::plan::run(client, planned, out).await;
            }
            let r = client
                .call(&Request::InventoryAdopt {
                    agent,
                    certificate,
                    issuer,
                    validity_days,
                    key,
                })
                .await?;
            let adoption = expect_response!(r, Adoption);
            if !wait {
                return out.adoption(&adoption);
            }
            if out.is_table() {
                out.adoption(&adoption)?;
            }
            let deadline = tokio::time::Instant::now() + timeout;
            let app =
                wait_application(client, adoption.application.clone(), deadline, timeout).await?;
            let Some(cert) = app.certificate.clone() else {
                bail!(
                    "application {} failed: {}",
                    app.id,
                    app.last_error.as_deref().unwrap_or("no reason given")
                );
            };
            let r = client.call(&Request::RolloutList).await?;
            let rollouts = expect_response!(r, Rollouts);
            let Some(rollout) = rollouts.iter().find(|r| r.certificate == cert) else {
                bail!(
                    "certificate {cert} was issued but no rollout to {} on {} was started; see \
                     `certfleet rollout list` and the controller's log",
                    adoption.target,
                    adoption.agent_name
                );
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            super::rollout::wait(client, &rollout.id, left, out).await
        }
    }
}
