//! Issue #14 (hostile peers), handshakes: one source opening hundreds of
//! connections at once has the excess refused before any TLS work (QUIC
//! `CONNECTION_REFUSED`, which the flood sees), while an honest CLI call
//! and a peer from another source get through meanwhile.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use certfleet_controller::client::{anonymous_client_config, Credential};
use certfleet_controller::identity::SERVER_NAME;
use certfleet_protocol::{
    frame,
    message::{Hello, HelloReply},
    DEFAULT_MAX_FRAME, PROTOCOL,
};
use certfleet_tests::Controller;

/// Connections the flood opens at once from one source.
const FLOOD: usize = 300;
/// Generous bound on everything the test waits for.
const DEADLINE: Duration = Duration::from_secs(60);

/// How one connection of the flood ended.
#[derive(Debug)]
enum Outcome {
    /// Refused before its handshake.
    Refused,
    /// Handshake done, then closed by the controller (with its reason).
    ClosedAfterHandshake(String),
    /// Anything else.
    Other(String),
}

/// One connection without a certificate from `endpoint` that holds on
/// until the controller ends it.
async fn flood_one(
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
) -> Outcome {
    let connecting = match endpoint.connect_with(config, addr, SERVER_NAME) {
        Ok(c) => c,
        Err(e) => return Outcome::Other(e.to_string()),
    };
    match connecting.await {
        Ok(conn) => match conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(c) => {
                Outcome::ClosedAfterHandshake(String::from_utf8_lossy(&c.reason).into_owned())
            }
            other => Outcome::Other(other.to_string()),
        },
        Err(quinn::ConnectionError::ConnectionClosed(c))
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            Outcome::Refused
        }
        Err(e) => Outcome::Other(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_from_one_source_is_refused_and_honest_calls_go_on() -> Result<()> {
    let mut ctl = Controller::start()?;
    let cred = Credential::load(&ctl.credential_path())?;
    let anon = anonymous_client_config(&cred.ca)?;
    let addr = ctl.listen();

    let flood_endpoint = quinn::Endpoint::client("127.0.0.7:0".parse()?)
        .context("binding the flood's UDP socket on 127.0.0.7")?;
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| tokio::spawn(flood_one(flood_endpoint.clone(), anon.clone(), addr)))
        .collect();

    // Meanwhile: honest CLI calls, and a peer without a certificate from
    // another source, which may still say hello.
    for _ in 0..3 {
        let out = tokio::task::block_in_place(|| ctl.cli_ok(&["status"]))?;
        ensure!(!out.stdout.is_empty(), "`certfleet status` printed nothing");
    }
    let other = quinn::Endpoint::client("127.0.0.8:0".parse()?)?;
    let conn = tokio::time::timeout(
        DEADLINE,
        other.connect_with(anon.clone(), addr, SERVER_NAME)?,
    )
    .await
    .context("the other source's handshake did not finish")?
    .context("the other source's handshake failed")?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = Hello {
        versions: PROTOCOL,
        software: "certfleet-tests".to_owned(),
    };
    send.write_all(&frame::encode(&hello, DEFAULT_MAX_FRAME)?)
        .await?;
    send.finish()?;
    let reply = tokio::time::timeout(DEADLINE, recv.read_to_end(64 * 1024))
        .await
        .context("no hello reply")??;
    let reply: HelloReply = frame::decode(&reply, DEFAULT_MAX_FRAME)?;
    ensure!(matches!(reply, HelloReply::Accepted { .. }), "{reply:?}");
    conn.close(0u32.into(), b"done");

    let mut refused = 0;
    let mut closed = Vec::new();
    let mut other = Vec::new();
    for task in flood {
        match tokio::time::timeout(DEADLINE, task)
            .await
            .context("a flood connection was left open")??
        {
            Outcome::Refused => refused += 1,
            Outcome::ClosedAfterHandshake(reason) => closed.push(reason),
            Outcome::Other(e) => other.push(e),
        }
    }
    // At most 16 pending handshakes and held connections per source: the
    // flood gets few handshakes, and the rest is refused before any.
    ensure!(
        refused >= FLOOD / 2,
        "only {refused} of {FLOOD} refused before the handshake; {} closed after it ({:?}), \
         other: {other:?}",
        closed.len(),
        closed.iter().take(3).collect::<Vec<_>>()
    );
    ensure!(
        other.is_empty(),
        "flood connections ended otherwise: {other:?}"
    );
    // Those that were let in were closed by the controller with a reason.
    for reason in &closed {
        ensure!(
            reason.contains("too many connections") || reason.contains("in time"),
            "unexpected close reason {reason:?}"
        );
    }
    // And the controller still serves.
    tokio::task::block_in_place(|| ctl.cli_ok(&["status"]))?;
    ctl.ensure_running()?;
    Ok(())
}
