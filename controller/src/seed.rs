//! **Tests only**: fill a stopped controller's store with a fleet-sized
//! list of certificates, agents and deployments in one transaction, so a
//! test can list 50,000 rows through the real controller and CLI without
//! issuing 50,000 certificates first.
//!
//! Like [`crate::mint::mint_agents_for_bench`] it is a library call on an
//! opened state directory, reachable from no request and no command.
//! The rows are real rows of the real store: each certificate copies an
//! issued one (its PEMs, key and instance) under a new id, serial and
//! fingerprint; each agent is enrolled with the given labels (without an
//! identity certificate: it never connects); each agent gets one
//! deployment of the copied certificate on target `files`.

use certfleet_protocol::message::Timestamp;

use crate::store::{self, AuditRecord};

/// What [`seed_fleet_for_tests`] added.
#[derive(Debug, Clone, Default)]
pub struct Seeded {
    pub certificates: Vec<String>,
    pub agents: Vec<String>,
    pub deployments: usize,
}

/// Add `certificates` copies of certificate `template`, and `agents`
/// agents named `<prefix>-<n>` with one deployment of `template` each.
pub fn seed_fleet_for_tests(
    state: &crate::server::State,
    template: &str,
    certificates: usize,
    agents: usize,
    prefix: &str,
    labels: &[(String, String)],
    now: time::OffsetDateTime,
) -> anyhow::Result<Seeded> {
    let ts = now.unix_timestamp();
    let template = template.to_string();
    let prefix = prefix.to_string();
    let labels = labels.to_vec();
    state
        .store
        .call_blocking(move |c| -> anyhow::Result<Seeded> {
            let tx = c.transaction()?;
            let original = store::cert_get(&tx, &template)?
                .ok_or_else(|| anyhow::anyhow!("no certificate {template} to copy"))?;
            let mut seeded = Seeded::default();
            for n in 0..certificates {
                let mut row = original.clone();
                row.info.id = store::new_id("cert");
                // Distinct serial and fingerprint (both unique in the store),
                // shaped like real ones.
                row.info.serial = format!("{:040X}", 0x5EED_0000_0000u64 + n as u64);
                row.info.fingerprint = format!("{:064x}", 0x5EED_0000_0000u64 + n as u64);
                // Expiries spread over the 97 minutes before the
                // original's (so it expires last), many certificates sharing
                // each one, so a list in expiry order has both orders to
                // keep: by time, and by id among equal times across page
                // boundaries.
                row.info.not_after = Timestamp(row.info.not_after.0 - 60 * (1 + n as i64 % 97));
                row.lineage = row.info.id.clone();
                row.info.renews = None;
                store::cert_insert(&tx, &row, ts)?;
                seeded.certificates.push(row.info.id);
            }
            for n in 0..agents {
                let id = store::new_id("agent");
                store::agent_insert(
                    &tx,
                    &crate::fleet::new_agent_row(&id, &format!("{prefix}-{n}"), &labels, ts),
                )?;
                store::deployment_upsert(&tx, &id, "files", &original.lineage, &template, ts)?;
                seeded.deployments += 1;
                seeded.agents.push(id);
            }
            store::audit_insert(
                &tx,
                ts,
                &AuditRecord {
                    actor: "certfleet-tests",
                    action: "fleet.seed.tests",
                    target: "",
                    outcome: "ok",
                    detail: &format!(
                        "certificates={certificates} agents={agents} at={}",
                        Timestamp(ts)
                    ),
                },
            )?;
            tx.commit()?;
            Ok(seeded)
        })
}
