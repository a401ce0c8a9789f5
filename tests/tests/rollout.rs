//! End-to-end: automatic renewal and fleet-wide rollouts (issue 4) with the
//! real controller, real agents, real nginx and `files` targets.
//!
//! Renewal is driven without sleeping: the controller and every agent of a
//! test read the same clock-offset file ([`CLOCK_OFFSET_ENV`]), and the test
//! moves their clock forward by writing into it. What is asserted is what an
//! operator would check: the certificate each nginx actually serves (`openssl
//! s_client`), the files on disk, `rollout show`, `cert show`, `status`, and
//! the agents' own logs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use certfleet_tests::fleet::{
    agent_log_events, check_wave_invariants, named_files_agent_config, named_nginx_agent_config,
    parse_rfc3339, rollout_show, served_fingerprint, token, unix_now, wait_connected,
    wait_rollout_state, wait_served, write_clock_offset, Agent, Nginx, CLOCK_OFFSET_ENV,
};
use certfleet_tests::{array, cert_fingerprint, str_field, Controller, ControllerOptions};
use serde_json::Value;
use tempfile::TempDir;

/// The name every certificate and every target of these tests is for.
const NAME: &str = "www.example.test";
/// The target name every agent of these tests has.
const TARGET: &str = "web";
/// How long agents may take to connect, and a rollout over a handful of
/// healthy agents to finish.
const WAIT: Duration = Duration::from_secs(60);
/// 17 hours: past the renewal point of a 1-day certificate (due 16 h after
/// issue, a little earlier with jitter), well before its expiry.
const PAST_RENEWAL_OF_ONE_DAY: i64 = 17 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Nginx,
    Files,
}

/// One agent of a test fleet with the server it installs into.
struct Member {
    name: String,
    agent: Agent,
    nginx: Option<Nginx>,
    /// The `files` target's directory.
    files: Option<TempDir>,
}

impl Member {
    fn id(&self) -> &str {
        self.agent.id.as_deref().unwrap_or_default()
    }

    /// The certificate this member's server presents: what nginx serves, or
    /// the leaf at the top of the `files` target's fullchain.
    fn fingerprint(&self) -> Result<String> {
        match (&self.nginx, &self.files) {
            (Some(nginx), _) => served_fingerprint(nginx.port, NAME),
            (None, Some(dir)) => cert_fingerprint(&dir.path().join("fullchain.pem")),
            (None, None) => unreachable!("a member has an nginx or a files directory"),
        }
    }

    /// Fails unless this member's server presents `fingerprint` (waiting up
    /// to `timeout` for an nginx reload).
    fn ensure_presents(&self, fingerprint: &str, what: &str, timeout: Duration) -> Result<()> {
        match &self.nginx {
            Some(nginx) => wait_served(nginx.port, NAME, fingerprint, timeout)
                .with_context(|| format!("{} should serve {what}", self.name)),
            None => {
                let seen = self.fingerprint()?;
                ensure!(
                    seen == fingerprint,
                    "{}'s fullchain holds {seen}, expected {what} ({fingerprint})",
                    self.name
                );
                Ok(())
            }
        }
    }

    fn events(&self, message: &str, certificate: &str) -> Result<Vec<i64>> {
        agent_log_events(&self.agent.log_text(), message, certificate)
    }
}

/// A controller with the built-in issuer `ca` and agents `web-1`, `web-2`, …
/// (one per kind, in order), each with one target named [`TARGET`].
struct Fleet {
    members: Vec<Member>,
    /// Declared after the members so the agents are killed first.
    ctl: Controller,
    offset_file: PathBuf,
    _offset_dir: TempDir,
}

#[derive(Default)]
struct FleetOptions {
    /// Controller and agents read the clock-offset file.
    clock_offset: bool,
    /// Restart the controller on a fixed port before any agent enrolls, so
    /// the agents find it again after a restart.
    pin_port: bool,
    /// Agents (by index) that read the clock-offset file even when the
    /// controller does not.
    skewed_agents: Vec<usize>,
    /// Written into the clock-offset file before anything starts.
    initial_offset: Option<i64>,
}

impl Fleet {
    fn start(kinds: &[Kind], options: FleetOptions) -> Result<Fleet> {
        let offset_dir = tempfile::Builder::new()
            .prefix("certfleet-clock-")
            .tempdir()?;
        let offset_file = offset_dir.path().join("clock-offset");
        let offset_env = (
            CLOCK_OFFSET_ENV.to_owned(),
            offset_file.to_string_lossy().into_owned(),
        );
        if let Some(secs) = options.initial_offset {
            write_clock_offset(&offset_file, secs)?;
        }
        let mut ctl = Controller::start_with(ControllerOptions {
            env: if options.clock_offset {
                vec![offset_env.clone()]
            } else {
                Vec::new()
            },
            ..ControllerOptions::default()
        })?;
        if options.pin_port {
            let port = ctl.listen().port();
            ctl.restart_with(&["--listen", &format!("127.0.0.1:{port}")])?;
        }
        ctl.cli_json(&["issuer", "add", "ca", "--kind", "builtin"])?;
        let uses = kinds.len().max(1).to_string();
        let (tok, pin) = token(&ctl, &["--labels", "role=web", "--uses", &uses])?;
        let mut members = Vec::new();
        for (i, kind) in kinds.iter().enumerate() {
            let name = format!("web-{}", i + 1);
            let (body, nginx, files) = match kind {
                Kind::Nginx => {
                    let nginx = Nginx::start(NAME)?;
                    let body = named_nginx_agent_config(&name, TARGET, &nginx, NAME)?;
                    (body, Some(nginx), None)
                }
                Kind::Files => {
                    let dir = tempfile::Builder::new()
                        .prefix("certfleet-files-")
                        .tempdir()?;
                    let body = named_files_agent_config(&name, TARGET, dir.path(), NAME);
                    (body, None, Some(dir))
                }
            };
            let mut agent = Agent::new(&ctl, &body)?;
            agent.enroll(&ctl, &tok, &pin)?;
            if options.clock_offset || options.skewed_agents.contains(&i) {
                agent.set_env(&offset_env.0, &offset_env.1);
            }
            agent.start()?;
            members.push(Member {
                name,
                agent,
                nginx,
                files,
            });
        }
        for m in &members {
            wait_connected(&ctl, m.id(), true, WAIT)?;
        }
        Ok(Fleet {
            members,
            ctl,
            offset_file,
            _offset_dir: offset_dir,
        })
    }

    /// Issues a certificate for [`NAME`] on a new instance created with
    /// `instance_args`; returns (id, fingerprint).
    fn issue(&self, instance_args: &[&str]) -> Result<(String, String)> {
        let cert = self.ctl.issue("ca", instance_args, &[NAME])?;
        Ok((
            str_field(&cert, "id")?.to_owned(),
            str_field(&cert, "fingerprint")?.to_owned(),
        ))
    }

    fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}: a test bug"))
    }

    /// Moves the clock of the controller and every agent to `secs` seconds
    /// ahead of the wall clock.
    fn set_clock_offset(&self, secs: i64) -> Result<()> {
        write_clock_offset(&self.offset_file, secs)
    }

    /// `deploy CERT --to role=web --target web ARGS…` as run by an operator;
    /// the raw output.
    fn deploy(&self, cert: &str, args: &[&str]) -> Result<std::process::Output> {
        let mut full = vec![
            "--output", "json", "deploy", cert, "--to", "role=web", "--target", TARGET,
        ];
        full.extend_from_slice(args);
        self.ctl.cli(&full)
    }

    /// [`Fleet::deploy`] with `--wait`, failing unless the rollout completed;
    /// returns the RolloutInfo it printed.
    fn deploy_and_wait(&self, cert: &str, args: &[&str]) -> Result<Value> {
        let mut full = vec!["--wait"];
        full.extend_from_slice(args);
        let out = self.deploy(cert, &full)?;
        ensure!(
            out.status.success(),
            "deploy {cert} {args:?} --wait failed with {}:\nstderr: {}\nstdout: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let rollout: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "deploy printed no RolloutInfo JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        ensure!(
            rollout["state"] == "completed",
            "deploy --wait ended but not completed: {rollout:#}"
        );
        Ok(rollout)
    }

    fn rollouts(&self) -> Result<Vec<Value>> {
        Ok(array(&self.ctl.cli_json(&["rollout", "list"])?)?.clone())
    }

    /// Waits for the certificate whose `renews` is `old`; returns (id,
    /// fingerprint).
    fn wait_renewed(&self, old: &str, timeout: Duration) -> Result<(String, String)> {
        certfleet_tests::wait_for(timeout, &format!("a certificate renewing {old}"), || {
            let certs = self.ctl.cli_json(&["cert", "list"])?;
            array(&certs)?
                .iter()
                .find(|c| c["renews"] == old)
                .map(|c| -> Result<(String, String)> {
                    Ok((
                        str_field(c, "id")?.to_owned(),
                        str_field(c, "fingerprint")?.to_owned(),
                    ))
                })
                .transpose()
        })
        .with_context(|| {
            format!(
                "cert show {old}: {}",
                self.ctl
                    .cli_json(&["cert", "show", old])
                    .map(|c| c.to_string())
                    .unwrap_or_else(|e| format!("{e:#}"))
            )
        })
    }

    /// Waits for the rollout of `kind` for `cert` to appear; returns its id.
    fn wait_rollout_of(&self, kind: &str, cert: &str, timeout: Duration) -> Result<String> {
        certfleet_tests::wait_for(timeout, &format!("a {kind} rollout of {cert}"), || {
            Ok(self
                .rollouts()?
                .iter()
                .find(|r| r["kind"] == kind && r["certificate"] == cert)
                .and_then(|r| r["id"].as_str().map(str::to_owned)))
        })
    }
}

/// The target of `rollout` on agent `agent_name`.
fn target<'a>(rollout: &'a Value, agent_name: &str) -> Result<&'a Value> {
    array(&rollout["targets"])?
        .iter()
        .find(|t| t["agent_name"] == agent_name)
        .ok_or_else(|| anyhow!("rollout has no target on {agent_name}: {rollout:#}"))
}

/// Agent name → wave of every target of `rollout`.
fn waves_by_agent(rollout: &Value) -> Result<BTreeMap<String, i64>> {
    array(&rollout["targets"])?
        .iter()
        .map(|t| {
            Ok((
                str_field(t, "agent_name")?.to_owned(),
                t["wave"]
                    .as_i64()
                    .ok_or_else(|| anyhow!("target without a wave: {t}"))?,
            ))
        })
        .collect()
}

fn expected_waves(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(n, w)| ((*n).to_owned(), *w)).collect()
}

/// Checks from the agents' own logs that `cert` went out wave by wave: every
/// agent of wave k had logged `installed` before any agent of wave k+1
/// logged `installing`, and no agent installed it twice.
fn ensure_installed_wave_by_wave(fleet: &Fleet, rollout: &Value, cert: &str) -> Result<()> {
    let waves = waves_by_agent(rollout)?;
    let last = waves.values().copied().max().unwrap_or(-1);
    for wave in 0..last {
        let finished = waves
            .iter()
            .filter(|(_, w)| **w == wave)
            .map(|(name, _)| {
                let m = fleet.member(name);
                let installed = m.events("installed", cert)?;
                installed
                    .last()
                    .copied()
                    .ok_or_else(|| anyhow!("{name} never logged installing {cert}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let started = waves
            .iter()
            .filter(|(_, w)| **w == wave + 1)
            .map(|(name, _)| {
                let m = fleet.member(name);
                let installing = m.events("installing", cert)?;
                ensure!(
                    installing.len() == 1,
                    "{name} logged installing {cert} {} times",
                    installing.len()
                );
                Ok(installing[0])
            })
            .collect::<Result<Vec<_>>>()?;
        let finished_at = finished.iter().copied().max().unwrap_or(i64::MIN);
        let started_at = started.iter().copied().min().unwrap_or(i64::MAX);
        ensure!(
            finished_at < started_at,
            "wave {} started installing {cert} ({started_at} µs) before wave {wave} had \
             installed it ({finished_at} µs)",
            wave + 1
        );
    }
    Ok(())
}

/// Fails unless every field of `expected` (recursively) has the same value
/// in `actual`; extra fields in `actual` are fine.
fn ensure_fields(actual: &Value, expected: &Value) -> Result<()> {
    match expected {
        Value::Object(fields) => {
            for (key, want) in fields {
                ensure_fields(&actual[key.as_str()], want)
                    .with_context(|| format!("at {key:?}"))?;
            }
            Ok(())
        }
        want => {
            ensure!(actual == want, "expected {want}, got {actual}");
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------
// Acceptance 1 and 2: renewal at a simulated date, rolled out canary → waves.
// ---------------------------------------------------------------------------

/// web-1 nginx (canary), web-2 nginx, web-3 files, web-4 nginx, web-5 files:
/// with canary 1 and waves of 2 (25 % of 5, rounded up) the waves are
/// [web-1], [web-2, web-3], [web-4, web-5].
const FIVE: [Kind; 5] = [
    Kind::Nginx,
    Kind::Nginx,
    Kind::Files,
    Kind::Nginx,
    Kind::Files,
];

fn five_wave_layout() -> BTreeMap<String, i64> {
    expected_waves(&[
        ("web-1", 0),
        ("web-2", 1),
        ("web-3", 1),
        ("web-4", 2),
        ("web-5", 2),
    ])
}

/// A fleet of [`FIVE`] with a 1-day certificate deployed everywhere;
/// returns the fleet, the certificate's id and fingerprint.
fn five_agents_with_a_one_day_certificate() -> Result<(Fleet, String, String)> {
    let fleet = Fleet::start(
        &FIVE,
        FleetOptions {
            clock_offset: true,
            ..FleetOptions::default()
        },
    )?;
    let (cert, fp) = fleet.issue(&["--validity-days", "1"])?;
    let deployed = fleet.deploy_and_wait(&cert, &["--canary", "1", "--wave", "2"])?;
    assert_eq!(deployed["kind"], "deploy", "{deployed:#}");
    assert_eq!(deployed["certificate"], cert.as_str(), "{deployed:#}");
    assert_eq!(
        waves_by_agent(&deployed)?,
        five_wave_layout(),
        "{deployed:#}"
    );
    ensure!(
        array(&deployed["targets"])?
            .iter()
            .all(|t| t["state"] == "installed" && t["target"] == TARGET),
        "{deployed:#}"
    );
    for m in &fleet.members {
        m.ensure_presents(&fp, "the deployed certificate", WAIT)?;
    }
    Ok((fleet, cert, fp))
}

#[test]
fn renewal_at_a_simulated_date_is_rolled_out_canary_then_waves() -> Result<()> {
    let (fleet, old, old_fp) = five_agents_with_a_one_day_certificate()?;

    // The policy, as `cert show` reports it: a 1-day certificate is due a
    // third of its lifetime before expiry (8 h, plus a third of the minutes
    // the issuer backdates `not_before`), jitter only moving it earlier by up
    // to 1/20 of that.
    let shown = fleet.ctl.cli_json(&["cert", "show", &old])?;
    let not_before = parse_rfc3339(str_field(&shown, "not_before")?)?;
    let not_after = parse_rfc3339(str_field(&shown, "not_after")?)?;
    let lifetime = not_after - not_before;
    ensure!(
        (86_400..=86_400 + 3600).contains(&lifetime),
        "a 1-day certificate (perhaps backdated a few minutes) lives {lifetime} s"
    );
    let renewal = &shown["renewal"];
    let due_at = parse_rfc3339(str_field(renewal, "due_at")?)?;
    let before_expiry = not_after - due_at;
    let third = lifetime / 3;
    ensure!(
        (third..=third + third / 20 + 1).contains(&before_expiry),
        "a 1-day certificate must be due a third of its life ({third} s, + up to 1/20 \
         of that as jitter) before expiry, is due {before_expiry} s before: {shown:#}"
    );
    ensure!(
        renewal["blocked"].is_null() && renewal["last_error"].is_null(),
        "{shown:#}"
    );
    assert_eq!(renewal["attempts"], 0, "{shown:#}");
    let rollouts_before = fleet.rollouts()?.len();

    fleet.set_clock_offset(PAST_RENEWAL_OF_ONE_DAY)?;
    let started = Instant::now();
    let (new, new_fp) = fleet.wait_renewed(&old, WAIT)?;
    ensure!(new_fp != old_fp);
    let rollout_id = fleet.wait_rollout_of("renewal", &new, WAIT)?;
    let remaining = WAIT
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(20));
    let rollout = wait_rollout_state(
        &fleet.ctl,
        &rollout_id,
        &["completed", "halted", "aborted"],
        remaining,
        check_wave_invariants,
    )?;
    assert_eq!(rollout["state"], "completed", "{rollout:#}");
    assert_eq!(rollout["kind"], "renewal", "{rollout:#}");
    assert_eq!(rollout["previous"], old.as_str(), "{rollout:#}");
    assert_eq!(rollout["reason"], Value::Null, "{rollout:#}");
    // The strategy of the lineage's deploy: canary 1, then waves of 2.
    let strategy = &rollout["strategy"];
    assert_eq!(strategy["canary"], 1, "{rollout:#}");
    assert_eq!(strategy["wave"], "2", "{rollout:#}");
    assert_eq!(strategy["pause_secs"], 0, "{rollout:#}");
    assert_eq!(strategy["max_failures"], 0, "{rollout:#}");
    assert_eq!(strategy["offline_deadline_secs"], 600, "{rollout:#}");
    assert_eq!(rollout["waves"], 3, "{rollout:#}");
    assert_eq!(rollout["current_wave"], 2, "{rollout:#}");
    assert_eq!(waves_by_agent(&rollout)?, five_wave_layout(), "{rollout:#}");
    ensure!(
        array(&rollout["targets"])?
            .iter()
            .all(|t| t["state"] == "installed" && t["error"].is_null()),
        "{rollout:#}"
    );
    let listed = fleet.rollouts()?;
    assert_eq!(
        listed.len(),
        rollouts_before + 1,
        "exactly one renewal rollout"
    );
    // `rollout list` is newest first: the renewal, started a (simulated)
    // day after the deploy, leads.
    ensure!(
        listed[0]["id"] == rollout_id.as_str(),
        "rollout list does not start with the newest rollout {rollout_id}: {listed:#?}"
    );
    let created: Vec<i64> = listed
        .iter()
        .map(|r| parse_rfc3339(r["created_at"].as_str().unwrap_or_default()))
        .collect::<Result<_>>()?;
    ensure!(
        created.windows(2).all(|w| w[0] >= w[1]),
        "rollout list is not newest first: {created:?}"
    );

    // What an operator checks: every nginx serves the new certificate, every
    // files target holds it, and the old one is superseded.
    for m in &fleet.members {
        m.ensure_presents(&new_fp, "the renewed certificate", Duration::from_secs(10))?;
    }
    let old_shown = fleet.ctl.cli_json(&["cert", "show", &old])?;
    assert_eq!(old_shown["state"], "superseded", "{old_shown:#}");
    let new_shown = fleet.ctl.cli_json(&["cert", "show", &new])?;
    assert_eq!(new_shown["state"], "active", "{new_shown:#}");
    assert_eq!(new_shown["renews"], old.as_str(), "{new_shown:#}");
    assert_eq!(new_shown["domains"], shown["domains"], "same spec");

    // Canary → waves, as the agents themselves saw it.
    ensure_installed_wave_by_wave(&fleet, &rollout, &new)?;
    Ok(())
}

#[test]
fn renewal_halts_on_a_broken_nginx_and_rollback_restores_the_old_certificate() -> Result<()> {
    let (fleet, old, old_fp) = five_agents_with_a_one_day_certificate()?;
    // web-2 is in wave 1, right after the canary.
    let broken = fleet.member("web-2");
    broken
        .nginx
        .as_ref()
        .ok_or_else(|| anyhow!("web-2 runs nginx"))?
        .break_config()?;

    fleet.set_clock_offset(PAST_RENEWAL_OF_ONE_DAY)?;
    let (new, new_fp) = fleet.wait_renewed(&old, WAIT)?;
    let rollout_id = fleet.wait_rollout_of("renewal", &new, WAIT)?;
    let halted = wait_rollout_state(
        &fleet.ctl,
        &rollout_id,
        &["completed", "halted", "aborted"],
        WAIT,
        check_wave_invariants,
    )?;
    assert_eq!(halted["state"], "halted", "{halted:#}");
    ensure!(
        halted["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "a halted rollout says why: {halted:#}"
    );

    // `rollout show` (as the operator reads it) names the failed agent and
    // its error.
    let shown = rollout_show(&fleet.ctl, &rollout_id)?;
    let failed = target(&shown, "web-2")?;
    assert_eq!(failed["state"], "failed", "{shown:#}");
    assert_eq!(failed["agent"], broken.id(), "{shown:#}");
    let error = failed["error"].as_str().unwrap_or_default();
    ensure!(error.contains("config test"), "{shown:#}");
    assert_eq!(target(&shown, "web-1")?["state"], "installed", "{shown:#}");
    let web3 = target(&shown, "web-3")?["state"].clone();
    ensure!(
        web3 == "installed" || web3 == "in_progress",
        "web-3 was sent the certificate together with web-2: {shown:#}"
    );
    for later in ["web-4", "web-5"] {
        assert_eq!(target(&shown, later)?["state"], "waiting", "{shown:#}");
    }

    // Servers: the canary has the new certificate, the broken one still
    // serves the old one, and the later waves were never touched — also a
    // few seconds later.
    fleet.member("web-1").ensure_presents(
        &new_fp,
        "the renewed certificate",
        Duration::from_secs(10),
    )?;
    std::thread::sleep(Duration::from_secs(3));
    for name in ["web-2", "web-4", "web-5"] {
        fleet.member(name).ensure_presents(
            &old_fp,
            "the old certificate",
            Duration::from_secs(5),
        )?;
    }
    for name in ["web-4", "web-5"] {
        let installing = fleet.member(name).events("installing", &new)?;
        ensure!(
            installing.is_empty(),
            "{name} is in a wave after the failure and must not be touched"
        );
    }
    let still = rollout_show(&fleet.ctl, &rollout_id)?;
    assert_eq!(still["state"], "halted", "{still:#}");
    for later in ["web-4", "web-5"] {
        assert_eq!(target(&still, later)?["state"], "waiting", "{still:#}");
    }

    // Rollback: a rollout of its own that re-deploys the old certificate to
    // every target the halted rollout touched.
    let touched: Vec<String> = array(&still["targets"])?
        .iter()
        .filter(|t| {
            ["installed", "in_progress", "failed"].contains(&t["state"].as_str().unwrap_or(""))
        })
        .map(|t| str_field(t, "agent_name").map(str::to_owned))
        .collect::<Result<_>>()?;
    let rollback = fleet.ctl.cli_json(&["rollout", "rollback", &rollout_id])?;
    assert_eq!(rollback["kind"], "rollback", "{rollback:#}");
    assert_eq!(rollback["certificate"], old.as_str(), "{rollback:#}");
    let rollback_id = str_field(&rollback, "id")?.to_owned();
    ensure!(rollback_id != rollout_id, "rollback is a new rollout");
    let mut names: Vec<String> = array(&rollback["targets"])?
        .iter()
        .map(|t| str_field(t, "agent_name").map(str::to_owned))
        .collect::<Result<_>>()?;
    names.sort();
    assert_eq!(
        names, touched,
        "rollback targets = the touched targets: {rollback:#}"
    );
    let done = wait_rollout_state(
        &fleet.ctl,
        &rollback_id,
        &["completed", "halted", "aborted"],
        WAIT,
        check_wave_invariants,
    )?;
    assert_eq!(done["state"], "completed", "{done:#}");
    for m in &fleet.members {
        m.ensure_presents(&old_fp, "the old certificate after rollback", WAIT)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Acceptance 3: controller SIGKILLed mid-rollout.
// ---------------------------------------------------------------------------

#[test]
fn controller_killed_during_a_pause_resumes_the_rollout_without_repeating_installs() -> Result<()> {
    let mut fleet = Fleet::start(
        &[Kind::Nginx, Kind::Files, Kind::Nginx, Kind::Files],
        FleetOptions {
            pin_port: true,
            ..FleetOptions::default()
        },
    )?;
    let (cert, fp) = fleet.issue(&[])?;
    let out = fleet.deploy(&cert, &["--canary", "1", "--wave", "1", "--pause", "4s"])?;
    ensure!(
        out.status.success(),
        "deploy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())?;
    let id = str_field(&created, "id")?.to_owned();
    assert_eq!(created["strategy"]["pause_secs"], 4, "{created:#}");
    assert_eq!(created["strategy"]["wave"], "1", "{created:#}");
    assert_eq!(created["waves"], 4, "{created:#}");

    // Wait for the pause after wave 1: web-1 and web-2 installed, web-3 not
    // yet started.
    let in_pause = certfleet_tests::wait_for(WAIT, "the pause after wave 1", || {
        let r = rollout_show(&fleet.ctl, &id)?;
        check_wave_invariants(&r)?;
        let state = |name: &str| target(&r, name).map(|t| t["state"].clone());
        Ok((state("web-1")? == "installed"
            && state("web-2")? == "installed"
            && state("web-3")? == "waiting")
            .then_some(r))
    })?;
    assert_eq!(in_pause["state"], "running", "{in_pause:#}");

    fleet.ctl.stop()?; // SIGKILL
    fleet.ctl.restart()?;
    let done = wait_rollout_state(
        &fleet.ctl,
        &id,
        &["completed", "halted", "aborted"],
        Duration::from_secs(75),
        check_wave_invariants,
    )?;
    assert_eq!(done["state"], "completed", "{done:#}");
    ensure!(
        array(&done["targets"])?
            .iter()
            .all(|t| t["state"] == "installed"),
        "{done:#}"
    );
    for m in &fleet.members {
        m.ensure_presents(&fp, "the deployed certificate", Duration::from_secs(10))?;
        let installing = m.events("installing", &cert)?;
        ensure!(
            installing.len() == 1,
            "{} logged `installing` {cert} {} times (exactly once expected):\n{}",
            m.name,
            installing.len(),
            m.agent.log_text()
        );
    }
    ensure_installed_wave_by_wave(&fleet, &done, &cert)?;
    // The pause was kept between every two waves, across the restart too.
    for (before, after) in [("web-1", "web-2"), ("web-2", "web-3"), ("web-3", "web-4")] {
        let installed = fleet.member(before).events("installed", &cert)?;
        let installing = fleet.member(after).events("installing", &cert)?;
        let gap = installing[0] - installed.last().copied().unwrap_or(i64::MAX);
        ensure!(
            gap >= 3_500_000,
            "only {gap} µs between {before} installing and {after} starting (pause 4s)"
        );
    }
    let deployments = fleet
        .ctl
        .cli_json(&["deployment", "list", "--cert", &cert])?;
    ensure!(
        array(&deployments)?.len() == 4
            && array(&deployments)?
                .iter()
                .all(|d| d["status"] == "installed" && d["installed"] == cert.as_str()),
        "{deployments:#}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Bad input and faults.
// ---------------------------------------------------------------------------

#[test]
fn strategy_values_out_of_range_are_refused_and_create_no_rollout() -> Result<()> {
    let fleet = Fleet::start(&[Kind::Files, Kind::Files], FleetOptions::default())?;
    let (cert, _) = fleet.issue(&[])?;
    let cases: [(&[&str], &str); 8] = [
        (&["--wave", "0"], "wave"),
        (&["--wave", "0%"], "wave"),
        (&["--wave", "150%"], "wave"),
        (&["--wave", "lots"], "wave"),
        (&["--max-failures", "-1"], "max-failures"),
        (&["--max-failures=-1"], "max-failures"),
        (&["--canary", "one"], "canary"),
        (&["--canary=-1"], "canary"),
    ];
    let mut unclear = Vec::new();
    for (args, flag) in cases {
        let mut full = vec!["deploy", &cert, "--to", "role=web", "--target", TARGET];
        full.extend_from_slice(args);
        let err = fleet.ctl.cli_err(&full)?;
        if !err.contains(flag) {
            unclear.push(format!("{args:?} → {err}"));
        }
    }
    ensure!(fleet.rollouts()?.is_empty(), "{:?}", fleet.rollouts()?);
    let deployments = fleet.ctl.cli_json(&["deployment", "list"])?;
    ensure!(array(&deployments)?.is_empty(), "{deployments:#}");
    for m in &fleet.members {
        ensure!(m.events("installing", &cert)?.is_empty());
    }
    ensure!(
        unclear.is_empty(),
        "these errors do not name the flag at fault:\n{}",
        unclear.join("\n")
    );
    Ok(())
}

#[test]
fn pause_resume_abort_rules_and_one_rollout_per_lineage() -> Result<()> {
    let fleet = Fleet::start(
        &[Kind::Files, Kind::Files, Kind::Files],
        FleetOptions::default(),
    )?;
    let (cert, fp) = fleet.issue(&[])?;
    let out = fleet.deploy(&cert, &["--canary", "1", "--wave", "1", "--pause", "30s"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout)?;
    let id = str_field(&created, "id")?.to_owned();
    assert_eq!(created["kind"], "deploy");
    // The canary installs, then the 30 s pause begins.
    certfleet_tests::wait_for(WAIT, "the canary to install", || {
        let r = rollout_show(&fleet.ctl, &id)?;
        Ok((target(&r, "web-1")?["state"] == "installed").then_some(()))
    })?;

    let paused = fleet.ctl.cli_json(&["rollout", "pause", &id])?;
    assert_eq!(paused["state"], "paused", "{paused:#}");
    let status = fleet.ctl.cli_json(&["status"])?;
    assert_eq!(status["rollouts"]["paused"], 1, "{status:#}");
    assert_eq!(status["rollouts"]["running"], 0, "{status:#}");

    // A second rollout of the same lineage is refused and names the first.
    let before = fleet.rollouts()?;
    let out = fleet.deploy(&cert, &[])?;
    let err = certfleet_tests::expect_cli_error(&out, "a second deploy of a paused lineage")?;
    ensure!(err.contains(&id), "the refusal should name {id}: {err}");
    assert_eq!(fleet.rollouts()?, before, "nothing created");

    let resumed = fleet.ctl.cli_json(&["rollout", "resume", &id])?;
    assert_eq!(resumed["state"], "running", "{resumed:#}");
    let out = fleet.deploy(&cert, &[])?;
    let err = certfleet_tests::expect_cli_error(&out, "a second deploy of a running lineage")?;
    ensure!(err.contains(&id), "the refusal should name {id}: {err}");

    let aborted = fleet.ctl.cli_json(&["rollout", "abort", &id])?;
    assert_eq!(aborted["state"], "aborted", "{aborted:#}");
    for (verb, what) in [("resume", "resuming"), ("pause", "pausing")] {
        let err = fleet.ctl.cli_err(&["rollout", verb, &id])?;
        ensure!(
            err.contains("aborted"),
            "{what} an aborted rollout: the error should say it is aborted: {err}"
        );
    }
    assert_eq!(
        rollout_show(&fleet.ctl, &id)?["state"],
        "aborted",
        "refusals change nothing"
    );
    let watch = fleet.ctl.cli(&["rollout", "watch", &id])?;
    ensure!(
        !watch.status.success(),
        "watch exits non-zero on an aborted rollout"
    );
    // Nothing after the canary was touched.
    for name in ["web-2", "web-3"] {
        ensure!(fleet.member(name).events("installing", &cert)?.is_empty());
    }

    // An aborted rollout no longer holds the lineage.
    let completed = fleet.deploy_and_wait(&cert, &["--wave", "100%"])?;
    let done_id = str_field(&completed, "id")?.to_owned();
    for m in &fleet.members {
        m.ensure_presents(&fp, "the deployed certificate", WAIT)?;
    }
    let err = fleet.ctl.cli_err(&["rollout", "pause", &done_id])?;
    ensure!(err.contains("completed"), "{err}");
    let err = fleet.ctl.cli_err(&["rollout", "resume", &done_id])?;
    ensure!(err.contains("completed"), "{err}");
    let watch = fleet.ctl.cli(&["rollout", "watch", &done_id])?;
    ensure!(
        watch.status.success(),
        "watch exits 0 on a completed rollout: {}",
        String::from_utf8_lossy(&watch.stderr)
    );
    ensure!(
        !watch.stdout.is_empty() || !watch.stderr.is_empty(),
        "watch without a terminal prints progress lines"
    );
    let err = fleet
        .ctl
        .cli_err(&["rollout", "show", "rol_doesnotexist"])?;
    ensure!(err.contains("not found"), "{err}");
    Ok(())
}

#[test]
fn agent_offline_for_the_whole_rollout_fails_its_target_and_halts() -> Result<()> {
    // web-2 connects once (so the controller knows its target), then dies
    // before the deploy and stays down; with canary 1 and waves of 1 (25 %
    // of 3) it is alone in wave 1.
    let mut fleet = Fleet::start(
        &[Kind::Files, Kind::Files, Kind::Files],
        FleetOptions::default(),
    )?;
    fleet.members[1].agent.kill();
    let dead = fleet.members[1].id().to_owned();
    wait_connected(&fleet.ctl, &dead, false, WAIT)?;
    let (cert, fp) = fleet.issue(&[])?;
    let started = Instant::now();
    let out = fleet.deploy(
        &cert,
        &["--offline-deadline", "3s", "--wait", "--timeout", "60s"],
    )?;
    certfleet_tests::expect_cli_error(&out, "deploy --wait of a rollout that halts")?;
    ensure!(
        started.elapsed() < Duration::from_secs(45),
        "took {:?}",
        started.elapsed()
    );
    let rollouts = fleet.rollouts()?;
    ensure!(rollouts.len() == 1, "{rollouts:?}");
    let id = str_field(&rollouts[0], "id")?.to_owned();
    let shown = rollout_show(&fleet.ctl, &id)?;
    assert_eq!(shown["state"], "halted", "{shown:#}");
    assert_eq!(shown["strategy"]["offline_deadline_secs"], 3, "{shown:#}");
    assert_eq!(target(&shown, "web-1")?["state"], "installed", "{shown:#}");
    let offline = target(&shown, "web-2")?;
    assert_eq!(offline["state"], "failed", "{shown:#}");
    ensure!(
        offline["error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("offline")),
        "{shown:#}"
    );
    assert_eq!(target(&shown, "web-3")?["state"], "waiting", "{shown:#}");
    fleet
        .member("web-1")
        .ensure_presents(&fp, "the deployed certificate", WAIT)?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        !fleet
            .member("web-3")
            .files
            .as_ref()
            .map(|d| d.path().join("fullchain.pem").exists())
            .unwrap_or(true),
        "web-3 comes after the failure and must not be touched"
    );
    let watch = fleet.ctl.cli(&["rollout", "watch", &id])?;
    ensure!(
        !watch.status.success(),
        "watch exits non-zero on a halted rollout"
    );

    // `status` on one screen: 2 agents online, 1 offline, one halted rollout,
    // and the certificates by expiry (a 5-day one within 7 days, a 20-day
    // one within 30).
    let (short, _) = fleet.issue(&["--validity-days", "5"])?;
    let (medium, _) = fleet.issue(&["--validity-days", "20", "--renew-before-days", "2"])?;
    let status = fleet.ctl.cli_json(&["status"])?;
    let expected = serde_json::json!({
        "agents": {"online": 2, "offline": 1},
        "certificates": {"active": 3, "superseded": 0, "revoked": 0, "expired": 0},
        "expiring": {"within_30d": 2, "within_7d": 1},
        "renewals": {"blocked": 0, "failing": 0},
        "rollouts": {"running": 0, "paused": 0, "halted": 1},
    });
    ensure_fields(&status, &expected).with_context(|| format!("status: {status:#}"))?;

    // The renewal policy of those certificates, as `cert show` reports it:
    // due at not_after − min(renew-before, lifetime / 3), jitter ≤ 1/20 of
    // that, only earlier.
    for (id, renew_before) in [
        (&cert, 30 * 86_400),
        (&short, 5 * 86_400 / 3),
        (&medium, 2 * 86_400),
    ] {
        let shown = fleet.ctl.cli_json(&["cert", "show", id])?;
        let not_after = parse_rfc3339(str_field(&shown, "not_after")?)?;
        let due = parse_rfc3339(str_field(&shown["renewal"], "due_at")?)?;
        let early = not_after - due;
        ensure!(
            (renew_before..=renew_before + renew_before / 20 + 1).contains(&early),
            "expected due {renew_before} s (+ ≤5 % jitter) before expiry, got {early}: {shown:#}"
        );
    }
    Ok(())
}

#[test]
fn revoking_an_installed_certificate_is_refused_until_it_is_replaced_or_forced() -> Result<()> {
    let fleet = Fleet::start(&[Kind::Files, Kind::Files], FleetOptions::default())?;
    let (old, _) = fleet.issue(&[])?;
    fleet.deploy_and_wait(&old, &[])?;

    let err = fleet
        .ctl
        .cli_err(&["cert", "revoke", &old, "--reason", "superseded"])?;
    for needle in ["web-1", "web-2", TARGET, "renew"] {
        ensure!(
            err.contains(needle),
            "the refusal should mention {needle:?}: {err}"
        );
    }
    assert_eq!(
        fleet.ctl.cli_json(&["cert", "show", &old])?["state"],
        "active",
        "a refused revoke changes nothing"
    );

    // The suggested way: renew (forced now), let the renewal roll out, then
    // the old certificate is installed nowhere and revokes without --force.
    let app = fleet.ctl.cli_json(&["cert", "renew", &old])?;
    ensure!(app["id"].is_string() && app["state"].is_string(), "{app:#}");
    let (new, new_fp) = fleet.wait_renewed(&old, WAIT)?;
    let rollout = fleet.wait_rollout_of("renewal", &new, WAIT)?;
    wait_rollout_state(
        &fleet.ctl,
        &rollout,
        &["completed"],
        WAIT,
        check_wave_invariants,
    )?;
    for m in &fleet.members {
        m.ensure_presents(&new_fp, "the renewed certificate", WAIT)?;
    }
    let revoked = fleet
        .ctl
        .cli_json(&["cert", "revoke", &old, "--reason", "superseded"])?;
    ensure!(revoked.is_object(), "{revoked}");
    assert_eq!(
        fleet.ctl.cli_json(&["cert", "show", &old])?["state"],
        "revoked"
    );

    // The installed one: refused, then forced.
    let err = fleet
        .ctl
        .cli_err(&["cert", "revoke", &new, "--reason", "keyCompromise"])?;
    ensure!(err.contains("web-1") && err.contains("--force"), "{err}");
    fleet.ctl.cli_json(&[
        "cert",
        "revoke",
        &new,
        "--reason",
        "keyCompromise",
        "--force",
    ])?;
    assert_eq!(
        fleet.ctl.cli_json(&["cert", "show", &new])?["state"],
        "revoked"
    );
    Ok(())
}

#[test]
fn ca_unable_to_issue_at_renewal_backs_off_visibly_and_starts_no_rollout() -> Result<()> {
    let fleet = Fleet::start(
        &[Kind::Files],
        FleetOptions {
            clock_offset: true,
            ..FleetOptions::default()
        },
    )?;
    // 3649 days: still within the built-in CA's 10 years now, due 30 days
    // before expiry; 3640 days later it is due but not expired, and a
    // replacement with the same spec would outlive the CA.
    let (cert, fp) = fleet.issue(&["--validity-days", "3649"])?;
    fleet.deploy_and_wait(&cert, &[])?;
    let rollouts_before = fleet.rollouts()?;
    let certs_before = array(&fleet.ctl.cli_json(&["cert", "list"])?)?.len();

    let offset = 3640 * 86_400;
    fleet.set_clock_offset(offset)?;
    admin_credential_valid_at(&fleet.ctl)?;
    // Ten years on, the controller's endpoint certificate has expired too:
    // the controller replaces it within seconds of noticing, and the CLI
    // (on the same clock) gets in from then on.
    certfleet_tests::wait_for(WAIT, "the endpoint certificate's renewal", || {
        Ok(fleet
            .ctl
            .log()?
            .contains("endpoint certificate renewed")
            .then_some(()))
    })?;
    let shown = certfleet_tests::wait_for(WAIT, "a failed renewal attempt", || {
        let shown = fleet.ctl.cli_json(&["cert", "show", &cert])?;
        Ok((!shown["renewal"]["last_error"].is_null()).then_some(shown))
    })?;
    let renewal = &shown["renewal"];
    ensure!(renewal["attempts"].as_i64() >= Some(1), "{shown:#}");
    ensure!(
        renewal["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("CA")),
        "the error says the CA refused: {shown:#}"
    );
    let next = parse_rfc3339(str_field(renewal, "next_attempt_at")?)?;
    let controller_now = unix_now() + offset;
    ensure!(
        next > controller_now - 2,
        "the next attempt must be in the (simulated) future: {next} vs now {controller_now}: {shown:#}"
    );
    assert_eq!(shown["state"], "active", "{shown:#}");

    // A few reconciler ticks later: still nothing rolled out or issued.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(fleet.rollouts()?, rollouts_before, "no rollout started");
    let certs = fleet.ctl.cli_json(&["cert", "list"])?;
    ensure!(
        array(&certs)?.len() == certs_before
            && array(&certs)?.iter().all(|c| c["renews"].is_null()),
        "no certificate was issued: {certs:#}"
    );
    let listed = array(&certs)?
        .iter()
        .find(|c| c["id"] == cert.as_str())
        .cloned()
        .unwrap_or_default();
    ensure!(
        !listed["renewal"]["last_error"].is_null(),
        "cert list shows it too: {listed:#}"
    );
    let status = fleet.ctl.cli_json(&["status"])?;
    ensure!(
        status["renewals"]["failing"].as_i64() >= Some(1),
        "{status:#}"
    );
    assert_eq!(status["rollouts"]["running"], 0, "{status:#}");
    fleet
        .member("web-1")
        .ensure_presents(&fp, "the old certificate", Duration::from_secs(5))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Clock skew.
// ---------------------------------------------------------------------------

#[test]
fn agent_clock_skew_is_reported_and_flagged() -> Result<()> {
    // web-1 runs 10 minutes ahead; web-2 and the controller on the real
    // clock.
    let fleet = Fleet::start(
        &[Kind::Files, Kind::Files],
        FleetOptions {
            skewed_agents: vec![0],
            initial_offset: Some(600),
            ..FleetOptions::default()
        },
    )?;
    let skew_of = |agents: &Value, name: &str| -> Result<Value> {
        Ok(array(agents)?
            .iter()
            .find(|a| a["name"] == name)
            .ok_or_else(|| anyhow!("no agent {name}: {agents:#}"))?["clock_skew_secs"]
            .clone())
    };
    let agents = certfleet_tests::wait_for(WAIT, "skew reported for both agents", || {
        let agents = fleet.ctl.cli_json(&["agent", "list"])?;
        Ok(
            (skew_of(&agents, "web-1")?.is_i64() && skew_of(&agents, "web-2")?.is_i64())
                .then_some(agents),
        )
    })?;
    let skew = skew_of(&agents, "web-1")?.as_i64().unwrap_or_default();
    ensure!(
        (570..=630).contains(&skew),
        "web-1 runs 600 s ahead, reported skew {skew}: {agents:#}"
    );
    let normal = skew_of(&agents, "web-2")?.as_i64().unwrap_or_default();
    ensure!(
        normal.abs() <= 30,
        "web-2 runs on the real clock, reported skew {normal}: {agents:#}"
    );

    // The table flags the skewed agent (over 5 minutes).
    let table = fleet.ctl.cli_ok(&["agent", "list"])?;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_default()
            .to_lowercase()
    };
    ensure!(
        ["skew", "600", "10m", "+10"]
            .iter()
            .any(|s| row("web-1").contains(s)),
        "the table should flag web-1's skew:\n{table}"
    );
    ensure!(
        !row("web-2").contains("skew"),
        "web-2 is within 5 minutes and must not be flagged:\n{table}"
    );
    Ok(())
}

/// Ten years on, the admin credential of the controller's first start (365
/// days) has long expired, as it would have in production, where the
/// operator would hold a newer one. Mint that newer one as a locked-out
/// operator with the state directory would (`admin create --state-dir`, on
/// the controller's simulated clock), and put it where [`Controller::cli`]
/// looks.
fn admin_credential_valid_at(ctl: &Controller) -> Result<()> {
    let fresh = ctl.credential_path().with_extension("renewed");
    // `Controller::cli` runs the CLI on the controller's simulated clock.
    ctl.cli_ok(&[
        "admin",
        "create",
        "operator",
        "--state-dir",
        &ctl.state_dir().to_string_lossy(),
        "--out",
        &fresh.to_string_lossy(),
    ])?;
    std::fs::rename(&fresh, ctl.credential_path())?;
    Ok(())
}
