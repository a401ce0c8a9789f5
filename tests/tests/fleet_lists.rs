//! Lists at fleet size: 50,000 certificates, 25,000 agents and their
//! deployments listed through the real CLI and controller, as JSON and as
//! tables, and an answer too large for one frame refused with an error
//! that names the limit.
//!
//! The rows are seeded into the stopped controller's real store by a
//! library call (issuing 50,000 certificates would take the whole CI
//! budget); listing them goes through the same request, store query and
//! CLI an operator uses.

use std::collections::HashSet;
use std::process::Output;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use certfleet_controller::client::{Client, Credential};
use certfleet_controller::server::{open_state, ServeOptions};
use certfleet_protocol::list::{ListQuery, PageRequest, MAX_PAGE_ROWS};
use certfleet_protocol::message::{ErrorKind, Request, Response, RpcError};
use certfleet_protocol::{frame, DEFAULT_MAX_FRAME};
use certfleet_tests::{array, str_field, Controller};
use serde_json::Value;

const CERTS: usize = 50_000;
const AGENTS: usize = 25_000;

/// The CLI with a fixed table width, so wrapping does not depend on the
/// terminal the tests run in.
fn cli(ctl: &Controller, args: &[&str]) -> Result<Output> {
    let mut cmd = ctl.cli_command();
    cmd.env("COLUMNS", "200")
        .arg("--controller")
        .arg(ctl.listen().to_string())
        .arg("--credential")
        .arg(ctl.credential_path())
        .args(args);
    let started = Instant::now();
    let out = certfleet_tests::run_with_timeout(&mut cmd, certfleet_tests::CLI_TIMEOUT)?;
    eprintln!("certfleet {}: {:?}", args.join(" "), started.elapsed());
    ensure!(
        out.status.success(),
        "`certfleet {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

fn json_list(ctl: &Controller, args: &[&str]) -> Result<Vec<Value>> {
    let mut full = vec!["--output", "json"];
    full.extend_from_slice(args);
    let out = cli(ctl, &full)?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("`certfleet {}` printed invalid JSON", full.join(" ")))?;
    Ok(array(&v)?.clone())
}

/// Data lines of a table (the header is the first line).
fn table_rows(ctl: &Controller, args: &[&str]) -> Result<Vec<String>> {
    let out = cli(ctl, args)?;
    let text = String::from_utf8(out.stdout)?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    ensure!(header.starts_with("ID"), "no header: {header:?}");
    Ok(lines.map(str::to_owned).collect())
}

/// `(not_after, id)` of each certificate row, in list order.
fn expiry_keys(rows: &[Value]) -> Result<Vec<(i64, String)>> {
    rows.iter()
        .map(|r| {
            let at = certfleet_tests::fleet::parse_rfc3339(str_field(r, "not_after")?)?;
            Ok((at, str_field(r, "id")?.to_owned()))
        })
        .collect()
}

/// The rows are soonest expiry first, ties by id: each key is above the
/// one before it.
fn ensure_expiry_order(what: &str, keys: &[(i64, String)]) -> Result<()> {
    if let Some(w) = keys.windows(2).find(|w| w[0] >= w[1]) {
        anyhow::bail!(
            "{what} is not soonest expiry first, ties by id: {:?} before {:?}",
            w[0],
            w[1]
        );
    }
    Ok(())
}

fn distinct_ids(rows: &[Value]) -> Result<usize> {
    let ids: HashSet<&str> = rows
        .iter()
        .map(|r| str_field(r, "id"))
        .collect::<Result<_>>()?;
    Ok(ids.len())
}

#[test]
fn lists_at_fleet_size_page_and_stream() -> Result<()> {
    let mut ctl = Controller::start()?;
    let cert = ctl.issue_default()?;
    let template = str_field(&cert, "id")?.to_owned();
    ctl.terminate()?;

    let started = Instant::now();
    let opts = ServeOptions {
        state_dir: ctl.state_dir().to_path_buf(),
        listen: "127.0.0.1:0".parse()?,
        crl_listen: "127.0.0.1:0".parse()?,
        crl_url_base: None,
        master_key_file: None,
    };
    let state = open_state(&opts, &certfleet_controller::clock::SystemClock)?;
    let labels = vec![("role".to_string(), "web".to_string())];
    let seeded = certfleet_controller::seed::seed_fleet_for_tests(
        &state,
        &template,
        CERTS,
        AGENTS,
        "web",
        &labels,
        time::OffsetDateTime::now_utc(),
    )?;
    drop(state);
    eprintln!("seeded in {:?}", started.elapsed());
    ctl.start_again()?;

    // Certificates: every one exactly once, no PEM in a list row.
    let t = Instant::now();
    let certs = json_list(&ctl, &["cert", "list"])?;
    eprintln!("cert list --output json: {:?}", t.elapsed());
    ensure!(
        certs.len() == CERTS + 1,
        "{} certificates listed",
        certs.len()
    );
    ensure!(
        distinct_ids(&certs)? == CERTS + 1,
        "a certificate was listed twice"
    );
    ensure!(
        certs
            .iter()
            .all(|c| c.get("leaf_pem").is_none() && c.get("chain_pem").is_none()),
        "a list row carries PEM: {}",
        certs[0]
    );
    // Soonest expiry first across pages of 500: the seeded expiries are 97
    // distinct times shared by ~515 certificates each, so pages end inside
    // runs of equal times and the id must carry the order across them.
    let keys = expiry_keys(&certs)?;
    ensure_expiry_order("cert list", &keys)?;
    ensure!(
        keys.last().map(|k| k.1.as_str()) == Some(template.as_str()),
        "the issued certificate expires last but was not listed last"
    );
    // Small pages (7 rows, so hundreds of continuation tokens) give the
    // same rows in the same order.
    let small = json_list(
        &ctl,
        &["cert", "list", "--limit", "2000", "--page-size", "7"],
    )?;
    ensure!(
        expiry_keys(&small)? == keys[..2000],
        "pages of 7 listed other certificates or another order than pages of 500"
    );
    // The expiry filter keeps the order: the earliest 32 of the seeded
    // expiries (a minute apart), exactly those, in order. The bound falls
    // half a minute past the 32nd, so the controller's clock running a few
    // seconds behind this one moves no certificate across it.
    let bound = keys[0].0 + 31 * 60 + 30;
    let within = bound - time::OffsetDateTime::now_utc().unix_timestamp();
    let expiring = json_list(
        &ctl,
        &[
            "cert",
            "list",
            "--expiring-within",
            &format!("{within}s"),
            "--page-size",
            "100",
        ],
    )?;
    let expected: Vec<_> = keys.iter().filter(|k| k.0 < bound).cloned().collect();
    ensure!(
        expiry_keys(&expiring)? == expected && !expected.is_empty(),
        "--expiring-within listed {} certificates, expected the {} earliest in order",
        expiring.len(),
        expected.len()
    );
    let rows = table_rows(&ctl, &["cert", "list", "--page-size", "1000"])?;
    ensure!(rows.len() == CERTS + 1, "{} table rows", rows.len());
    ensure!(
        rows.iter()
            .all(|r| r.contains(" in 3") || r.contains(" in ")),
        "NOT AFTER is not relative: {}",
        rows[0]
    );

    // Agents: labels as an object, every agent once.
    let agents = json_list(&ctl, &["agent", "list"])?;
    ensure!(agents.len() == AGENTS, "{} agents listed", agents.len());
    ensure!(
        distinct_ids(&agents)? == AGENTS,
        "an agent was listed twice"
    );
    ensure!(
        agents[0]["labels"] == serde_json::json!({"role": "web"}),
        "labels are not an object: {}",
        agents[0]
    );
    ensure!(table_rows(&ctl, &["agent", "list"])?.len() == AGENTS);

    // Deployments, all and filtered in the store by agent and certificate.
    let deployments = json_list(&ctl, &["deployment", "list"])?;
    ensure!(
        deployments.len() == AGENTS,
        "{} deployments",
        deployments.len()
    );
    ensure!(distinct_ids(&deployments)? == AGENTS);
    ensure!(table_rows(&ctl, &["deployment", "list"])?.len() == AGENTS);
    let one = json_list(&ctl, &["deployment", "list", "--agent", &seeded.agents[7]])?;
    ensure!(
        one.len() == 1 && one[0]["agent"] == seeded.agents[7].as_str(),
        "{one:?}"
    );
    let of_template = json_list(&ctl, &["deployment", "list", "--cert", &template])?;
    ensure!(of_template.len() == AGENTS);
    let none = json_list(
        &ctl,
        &["deployment", "list", "--cert", &seeded.certificates[0]],
    )?;
    ensure!(none.is_empty(), "{none:?}");

    // Audit times are RFC 3339 in the table, never epoch seconds.
    let audit = String::from_utf8(cli(&ctl, &["audit", "list", "--limit", "5"])?.stdout)?;
    let first = audit.lines().nth(1).unwrap_or_default();
    let at = first.split_whitespace().nth(1).unwrap_or_default();
    certfleet_tests::fleet::parse_rfc3339(at)
        .with_context(|| format!("audit AT is not RFC 3339: {audit}"))?;

    // --limit: rows in all, across pages.
    let some = json_list(
        &ctl,
        &["cert", "list", "--limit", "1234", "--page-size", "500"],
    )?;
    ensure!(some.len() == 1234, "{} rows with --limit 1234", some.len());
    ensure!(table_rows(&ctl, &["agent", "list", "--limit", "3"])?.len() == 3);

    // The frame limit: a full page is far inside it, and the unpaged
    // request of old, whose answer (every certificate with its PEMs) would
    // be tens of megabytes, is refused with an error naming the limit
    // instead of a reset stream.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let cred = Credential::load(&ctl.credential_path())?;
        let client = Client::open(ctl.listen(), &cred).await?;
        let page = client
            .call(&Request::List {
                query: ListQuery::Certificates {
                    expiring_within_secs: None,
                },
                page: PageRequest {
                    limit: u32::MAX,
                    continue_token: None,
                },
            })
            .await?;
        let Response::Page(page) = &page else {
            anyhow::bail!("not a page: {page:?}");
        };
        ensure!(
            page.rows.len() == MAX_PAGE_ROWS as usize,
            "page of {}",
            page.rows.len()
        );
        let size = frame::encode(&Response::Page(page.clone()), DEFAULT_MAX_FRAME)?.len();
        ensure!(size < DEFAULT_MAX_FRAME, "{size}");

        let err = client
            .call(&Request::CertList {
                expiring_within_secs: None,
            })
            .await
            .expect_err("an answer larger than a frame must be refused");
        let text = format!("{err:#}");
        ensure!(
            text.contains("exceeds the limit of 4194304 bytes") && !text.contains("stream error"),
            "{text}"
        );

        // Tokens are opaque, but one that is not the list's own (garbage,
        // or a well-formed token of the id-ordered lists of before) is an
        // invalid argument that says to start again, not a wrong page.
        let hex = |key: &str| -> String { key.bytes().map(|b| format!("{b:02x}")).collect() };
        let queries = [
            ListQuery::Certificates {
                expiring_within_secs: None,
            },
            ListQuery::Rollouts,
            ListQuery::Inventory {
                expiring_within_secs: None,
                agent: None,
            },
        ];
        for query in queries {
            for bad in [
                "not-a-token".to_owned(),
                format!("c1.{}", hex(&template)),
                format!("c1.{}", hex("agent-1\n3")),
            ] {
                let err = client
                    .call(&Request::List {
                        query: query.clone(),
                        page: PageRequest {
                            limit: 10,
                            continue_token: Some(bad.clone()),
                        },
                    })
                    .await
                    .expect_err("a foreign continuation token must be refused");
                let rpc = err.downcast_ref::<RpcError>().with_context(|| {
                    format!("{query:?} with {bad}: not a controller error: {err:#}")
                })?;
                ensure!(
                    rpc.kind == ErrorKind::InvalidArgument && rpc.message.contains("first page"),
                    "{query:?} with token {bad}: {rpc:?}"
                );
            }
        }
        client.close();
        Ok(())
    })?;
    eprintln!("whole test: {:?}", started.elapsed());
    Ok(())
}

/// `agent list` LAST SEEN follows the agent's requests (here the
/// desired-state fetch and report of a deploy), not its connect time.
#[test]
fn agent_list_last_seen_is_last_activity() -> Result<()> {
    use certfleet_tests::fleet::{
        named_files_agent_config, parse_rfc3339, token, wait_connected, Agent,
    };
    use std::time::Duration;

    let ctl = Controller::start()?;
    let cert = ctl.issue_default()?;
    let cert_id = str_field(&cert, "id")?.to_owned();
    let (tok, pin) = token(&ctl, &[])?;
    let mut agent = Agent::new(&ctl, "")?;
    let tls = agent.dir.join("tls");
    std::fs::create_dir_all(&tls)?;
    let config = named_files_agent_config("web-1", "files", &tls, "www.example.test");
    std::fs::write(
        &agent.config,
        format!("{}{config}", std::fs::read_to_string(&agent.config)?),
    )?;
    agent.enroll(&ctl, &tok, &pin)?;
    let id = agent.id.clone().context("enrolled agent has no id")?;
    agent.start()?;
    wait_connected(&ctl, &id, true, Duration::from_secs(30))?;
    let seen = |ctl: &Controller| -> Result<i64> {
        let list = ctl.cli_json(&["agent", "list"])?;
        let a = array(&list)?
            .iter()
            .find(|a| a["id"] == id.as_str())
            .context("agent missing from agent list")?;
        parse_rfc3339(str_field(a, "last_seen")?)
    };
    let connected_at = seen(&ctl)?;

    std::thread::sleep(Duration::from_secs(3));
    ctl.cli_ok(&[
        "deploy",
        &cert_id,
        "--to",
        &format!("agent={id}"),
        "--target",
        "files",
        "--wait",
    ])?;
    let after = seen(&ctl)?;
    ensure!(
        after >= connected_at + 3,
        "LAST SEEN stayed at the connect time ({connected_at}) after the agent \
         fetched and reported a deployment (now {after})"
    );
    let table = String::from_utf8(ctl.cli_ok(&["agent", "list"])?.stdout)?;
    let row = table
        .lines()
        .find(|l| l.contains("web-1"))
        .unwrap_or_default();
    ensure!(
        row.trim_end().ends_with("now") || row.contains(" ago"),
        "LAST SEEN should be relative, not a timestamp: {table}"
    );
    Ok(())
}
