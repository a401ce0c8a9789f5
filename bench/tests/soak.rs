//! The short soak: 60 simulated days of a 100-certificate, 20-agent fleet
//! with every kind of fault, through the real `certfleet-bench soak`
//! binary. Nothing may be served past its expiry, and every certificate
//! that came close to expiry must have been flagged at risk early enough.
//! Measured sensitivity: with the rollout retry disabled this run serves
//! certificates past their expiry (309 certificate-hours at seed 7).

use std::process::Command;

#[test]
fn sixty_days_serve_nothing_past_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_certfleet-bench"))
        .args(["--results"])
        .arg(&results)
        .args([
            "soak",
            "--days",
            "60",
            "--certificates",
            "100",
            "--agents",
            "20",
            "--offline-agents",
            "2",
            "--restarts",
            "4",
            "--seed",
            "7",
            // Agents resync only on pokes and reconnections: what heals a
            // failed install is then the controller's own rollout retry,
            // so this test fails without it (the agent's periodic resync
            // would heal it too, and hide its loss).
            "--resync-hours",
            "0",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "soak failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let line = std::fs::read_to_string(&results).unwrap();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert_eq!(line.trim(), stdout.trim());
    let r: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(r["bench"], "soak");
    assert_eq!(r["simulated_days"], 60);
    assert_eq!(r["certificates"], 100);
    assert_eq!(r["agents"], 20);
    assert_eq!(r["served_past_expiry_cert_hours"], 0, "{r}");
    // A week-long install failure brought at least one certificate within
    // its at-risk lead; it was flagged at least that early.
    assert!(r["came_within_lead"].as_u64().unwrap() >= 1, "{r}");
    assert!(
        r["faults"]["failing_targets_brought_within_lead"]
            .as_u64()
            .unwrap()
            >= 1,
        "{r}"
    );
    let ratio = r["at_risk_min_lead_ratio"].as_f64().expect("a lead ratio");
    assert!(ratio >= 1.0, "{r}");
    // The run did what it says: renewals rolled out, faults happened, the
    // controller restarted both ways, and identities renewed themselves.
    assert!(r["renewals"].as_u64().unwrap() > 50, "{r}");
    assert!(r["installs"].as_u64().unwrap() > 50, "{r}");
    assert!(r["at_risk_raised"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["restarts_graceful"], 2, "{r}");
    assert_eq!(r["restarts_crash"], 2, "{r}");
    assert_eq!(r["faults"]["hosts_down"], 2, "{r}");
    assert_eq!(r["faults"]["failing_targets"], 5, "{r}");
    assert!(r["agent_identity_renewals"].as_u64().unwrap() >= 20, "{r}");
    assert_eq!(r["unsettled_steps"], 0, "{r}");
}
