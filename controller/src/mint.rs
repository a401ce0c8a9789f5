//! **Benchmarks only**: agents enrolled straight into an opened state
//! directory ([`mint_agents_for_bench`]), for `certfleet-bench hold`,
//! `rollout` and the soak.

use time::Duration;

use crate::fleet::{new_agent_row, parse_labels, valid_hostname, AGENT_IDENTITY_DAYS};
use crate::identity::Role;
use crate::store::{self, AuditRecord};

/// An agent identity made by [`mint_agents_for_bench`].
#[derive(Debug, Clone)]
pub struct MintedAgent {
    pub id: String,
    pub name: String,
    pub cert_pem: String,
}

/// **Benchmarks only** (`certfleet-bench hold` and `rollout`): enroll agents
/// straight into a controller's state, without join tokens, so thousands of
/// simulated agents get identities in seconds rather than one durable
/// enrollment commit each. It is a library call on an opened state
/// directory, reachable from no network request and no CLI command: whoever
/// can open the state directory holds the master key and the identity CA
/// already. Each agent gets what token enrollment gives it (an agent row,
/// a 30-day identity certificate for `public_key`, a credential row), all in
/// one transaction with one audit entry for the batch.
pub fn mint_agents_for_bench<K: rcgen::PublicKeyData>(
    state: &crate::server::State,
    agents: &[(String, K)],
    labels: &[(String, String)],
    now: time::OffsetDateTime,
) -> anyhow::Result<Vec<MintedAgent>> {
    for (name, _) in agents {
        anyhow::ensure!(valid_hostname(name), "{name:?} is not a valid host name");
    }
    for (k, v) in labels {
        parse_labels(&format!("{k}={v}")).map_err(anyhow::Error::msg)?;
    }
    let ts = now.unix_timestamp();
    let mut minted = Vec::with_capacity(agents.len());
    let mut issued_all = Vec::with_capacity(agents.len());
    for (name, key) in agents {
        let id = store::new_id("agent");
        let issued = state.identity.issue_client(
            Role::Agent,
            &id,
            key,
            now,
            Duration::days(AGENT_IDENTITY_DAYS),
        )?;
        minted.push(MintedAgent {
            id,
            name: name.clone(),
            cert_pem: issued.cert_pem.clone(),
        });
        issued_all.push(issued);
    }
    state.store.call_blocking(|c| -> anyhow::Result<()> {
        let tx = c.transaction()?;
        for (m, issued) in minted.iter().zip(&issued_all) {
            store::agent_insert(&tx, &new_agent_row(&m.id, &m.name, labels, ts))?;
            store::credential_insert(
                &tx,
                &store::CredentialRow {
                    serial: issued.serial.clone(),
                    role: Role::Agent.as_str().into(),
                    subject: m.id.clone(),
                    not_after: issued.not_after,
                    revoked_at: None,
                },
                ts,
            )?;
        }
        store::audit_insert(
            &tx,
            ts,
            &AuditRecord {
                actor: "certfleet-bench",
                action: "agent.enroll.bench",
                target: "",
                outcome: "ok",
                detail: &format!("count={}", minted.len()),
            },
        )?;
        tx.commit()?;
        Ok(())
    })?;
    Ok(minted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_minted_agents_authenticate_like_enrolled_ones() {
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::server::ServeOptions {
            state_dir: dir.path().join("state"),
            listen: "127.0.0.1:0".parse().unwrap(),
            crl_listen: "127.0.0.1:0".parse().unwrap(),
            crl_url_base: None,
            master_key_file: None,
        };
        let now = time::OffsetDateTime::now_utc();
        let state = crate::server::open_state(&opts, &crate::clock::SystemClock).unwrap();
        let keys: Vec<(String, rcgen::KeyPair)> = (0..3)
            .map(|i| {
                (
                    format!("sim-{i}"),
                    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
                )
            })
            .collect();
        let labels = vec![("role".to_string(), "bench".to_string())];
        let minted = mint_agents_for_bench(&state, &keys, &labels, now).unwrap();
        assert_eq!(minted.len(), 3);
        for m in &minted {
            // The certificate names the agent as the controller's TLS
            // layer reads it, and the store knows both agent and credential.
            let der = crate::identity::pem_to_der(&m.cert_pem).unwrap();
            let peer = crate::identity::peer_identity(&der).unwrap();
            assert_eq!(peer.role, Role::Agent);
            assert_eq!(peer.subject, m.id);
            let (agent, cred) = state.store.call_blocking(|c| {
                (
                    store::agent_get(c, &m.id).unwrap().unwrap(),
                    store::credential_get(c, &peer.serial).unwrap().unwrap(),
                )
            });
            assert_eq!(agent.labels, labels);
            assert!(agent.removed_at.is_none());
            assert_eq!(cred.subject, m.id);
            assert_eq!(cred.role, "agent");
        }
        let audit = state
            .store
            .call_blocking(|c| store::audit_list(c, 10))
            .unwrap();
        assert!(audit.iter().any(|a| a.action == "agent.enroll.bench"));
        // Bad names are refused before anything is written.
        let bad = vec![(
            "not a host".to_string(),
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        )];
        assert!(mint_agents_for_bench(&state, &bad, &labels, now).is_err());
    }
}
