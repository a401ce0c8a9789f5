//! Issue #5, DNS-01: the controller's RFC 2136 client against a real BIND.
//! TXT records added with a TSIG-signed update become visible to `dig`, are
//! removed value by value, and an update signed with the wrong secret is
//! refused with a clear error and changes nothing.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use certfleet_controller::issuer::dns::{challenge_name, DnsError, Rfc2136};
use certfleet_protocol::Secret;
use certfleet_tests::acme::Bind;

/// How long a record may take to become visible (BIND applies updates
/// before answering, so this is slack, not an expected delay).
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime")
}

/// The client settings for `bind`, with `secret_b64` as the TSIG secret.
fn client(bind: &Bind, secret_b64: &str) -> Rfc2136 {
    Rfc2136 {
        server: bind.addr,
        zone: bind.zone.clone(),
        tsig_name: bind.tsig_name.clone(),
        tsig_algorithm: bind.tsig_algorithm.clone(),
        tsig_secret_b64: Secret::from(secret_b64.to_owned()),
    }
}

#[test]
fn add_wait_remove_leaves_other_values() -> Result<()> {
    let bind = Bind::start("acme.test.")?;
    let dns = client(&bind, &bind.tsig_secret_b64);
    dns.validate()?;
    let rt = runtime()?;
    // A wildcard and its base name share one challenge name: two values.
    let name = challenge_name("*.www.acme.test");
    ensure!(name == challenge_name("www.acme.test"));
    let (first, second) = (
        "2xs0bNHbBmTBFSCRZNU7yS0CZyIMLBCNaOXSKETl2ac",
        "Hf3pLvF1ekTx-0fEEr4Nw8lL6dwkpMnV1Wt9JUVz2HA",
    );

    rt.block_on(dns.add_txt(&name, first))?;
    rt.block_on(dns.add_txt(&name, second))?;
    // Adding again is harmless (retries after a lost answer).
    rt.block_on(dns.add_txt(&name, first))?;
    rt.block_on(dns.wait_visible(&name, first, VISIBLE_TIMEOUT))?;
    rt.block_on(dns.wait_visible(&name, second, VISIBLE_TIMEOUT))?;
    let mut seen = bind.txt(&name)?;
    seen.sort();
    ensure!(
        seen == [first, second],
        "dig shows {seen:?} at {name}; log:\n{}",
        bind.log()
    );

    rt.block_on(dns.remove_txt(&name, first))?;
    let seen = bind.txt(&name)?;
    ensure!(
        seen == [second],
        "after removing one value dig shows {seen:?}"
    );

    rt.block_on(dns.remove_txt(&name, second))?;
    // Removing a value that is gone is not an error.
    rt.block_on(dns.remove_txt(&name, second))?;
    let seen = bind.txt(&name)?;
    ensure!(
        seen.is_empty(),
        "after removing both values dig shows {seen:?}"
    );

    // Nothing to see: wait_visible gives up after its timeout, saying so.
    let start = Instant::now();
    let err = rt
        .block_on(dns.wait_visible(&name, first, Duration::from_millis(800)))
        .expect_err("a removed value must not be visible");
    ensure!(
        matches!(err, DnsError::NotVisible { .. }),
        "unexpected error: {err:?}"
    );
    ensure!(
        start.elapsed() < Duration::from_secs(5),
        "wait_visible overran its timeout"
    );
    Ok(())
}

#[test]
fn wrong_secret_is_refused_and_changes_nothing() -> Result<()> {
    let bind = Bind::start("acme.test.")?;
    // Same length and algorithm as the real key, different bytes.
    let mut wrong = STANDARD.decode(bind.tsig_secret_b64.trim())?;
    for b in &mut wrong {
        *b ^= 0x5a;
    }
    let dns = client(&bind, &STANDARD.encode(&wrong));
    dns.validate()?;
    let rt = runtime()?;
    let name = challenge_name("secret.acme.test");

    let err = rt
        .block_on(dns.add_txt(&name, "forged"))
        .expect_err("an update signed with the wrong secret must fail");
    let text = err.to_string();
    ensure!(
        matches!(&err, DnsError::Refused { rcode, .. } if rcode == "NOTAUTH"),
        "expected a NOTAUTH refusal, got {err:?}"
    );
    ensure!(
        text.contains("bad TSIG key or update not allowed"),
        "the error does not say what is wrong: {text}"
    );
    ensure!(
        !text.contains(&bind.tsig_secret_b64),
        "the error shows the secret"
    );
    let seen = bind.txt(&name)?;
    ensure!(
        seen.is_empty(),
        "the refused update left {seen:?} at {name}"
    );

    // An unknown key name is refused the same way.
    let mut unknown = client(&bind, &bind.tsig_secret_b64);
    unknown.tsig_name = "not-a-key".to_owned();
    let err = rt
        .block_on(unknown.add_txt(&name, "forged"))
        .expect_err("an update signed with an unknown key must fail");
    ensure!(
        matches!(err, DnsError::Refused { .. }),
        "expected a refusal, got {err:?}"
    );
    ensure!(bind.txt(&name)?.is_empty());

    // The right key still works afterwards: the refusals were about the key.
    let good = client(&bind, &bind.tsig_secret_b64);
    rt.block_on(good.add_txt(&name, "genuine"))?;
    rt.block_on(good.wait_visible(&name, "genuine", VISIBLE_TIMEOUT))?;
    ensure!(bind.txt(&name)? == ["genuine"]);
    Ok(())
}

#[test]
fn name_outside_the_zone_is_rejected_before_sending() -> Result<()> {
    let bind = Bind::start("acme.test.")?;
    let dns = client(&bind, &bind.tsig_secret_b64);
    let rt = runtime()?;
    let name = challenge_name("www.other.test");
    let err = rt
        .block_on(dns.add_txt(&name, "v"))
        .expect_err("a name outside the zone must be rejected");
    ensure!(
        matches!(err, DnsError::NotInZone { .. }),
        "unexpected error: {err:?}"
    );
    ensure!(bind.txt(&name)?.is_empty());
    Ok(())
}

#[test]
fn silent_server_fails_within_the_timeout() -> Result<()> {
    // A bound UDP socket that never answers, and no TCP listener: the
    // client must give up with an error rather than hang.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let dns = Rfc2136 {
        server: silent.local_addr()?,
        zone: "acme.test.".to_owned(),
        tsig_name: "k".to_owned(),
        tsig_algorithm: "hmac-sha256".to_owned(),
        tsig_secret_b64: Secret::from(STANDARD.encode([7u8; 32])),
    };
    let rt = runtime()?;
    let start = Instant::now();
    let err = rt
        .block_on(dns.add_txt("_acme-challenge.acme.test.", "v"))
        .expect_err("nobody answers");
    ensure!(
        matches!(err, DnsError::Timeout { .. } | DnsError::Io { .. }),
        "unexpected error: {err:?}"
    );
    ensure!(
        start.elapsed() < Duration::from_secs(15),
        "gave up only after {:?}",
        start.elapsed()
    );
    Ok(())
}
