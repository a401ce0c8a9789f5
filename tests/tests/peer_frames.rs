//! Issue #2, acceptance 4 (peer side): a peer holding a valid credential that
//! sends a corrupted, truncated or oversized frame loses that stream (closed
//! promptly, never left hanging), and the controller keeps serving everyone
//! else.
//!
//! Issue #14 (hostile peers): a peer without a certificate may only enroll,
//! within a deadline; a stream that stops after its header is closed at the
//! read deadline; a flood of wrong join tokens leaves aggregate audit rows
//! only; an oversized list is refused before it is decoded.

use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use certfleet_controller::client::{anonymous_client_config, connect, Credential};
use certfleet_controller::identity::SERVER_NAME;
use certfleet_protocol::{
    frame,
    message::{ErrorKind, Hello, HelloReply, Request, Response},
    Secret, DEFAULT_MAX_FRAME, PROTOCOL,
};
use certfleet_tests::{fleet, Controller};

/// How long the controller may take to give up on a bad stream.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the controller did with a stream carrying bad input.
#[derive(Debug)]
enum Closed {
    /// The stream ended; the controller may have answered with an error.
    Finished(Vec<u8>),
    /// The stream or connection was reset or closed.
    Reset(String),
}

/// Sends `bytes` on a new stream of `conn` (finishing the stream unless
/// `keep_open`) and waits for the controller to end the stream.
async fn send_bad(conn: &quinn::Connection, bytes: &[u8], keep_open: bool) -> Result<Closed> {
    let (mut send, mut recv) = tokio::time::timeout(CLOSE_TIMEOUT, conn.open_bi())
        .await
        .map_err(|_| anyhow!("no stream credit for {CLOSE_TIMEOUT:?}: bad streams left open"))?
        .context("opening a stream")?;
    // The controller may stop reading as soon as it has seen enough to
    // refuse, so a failed write is an acceptable outcome, not a test error.
    if send.write_all(bytes).await.is_ok() && !keep_open {
        let _ = send.finish();
    }
    let read = tokio::time::timeout(CLOSE_TIMEOUT, recv.read_to_end(DEFAULT_MAX_FRAME + 4))
        .await
        .map_err(|_| {
            anyhow!("the controller left a stream with bad input open for {CLOSE_TIMEOUT:?}")
        })?;
    drop(send);
    let closed = match read {
        Ok(bytes) => Closed::Finished(bytes),
        Err(e) => Closed::Reset(e.to_string()),
    };
    closed.ensure_refusal()?;
    Ok(closed)
}

impl Closed {
    /// Fails if the controller answered bad input with anything but a
    /// refusal: an error response, a refused hello, or nothing.
    fn ensure_refusal(&self) -> Result<()> {
        let Closed::Finished(bytes) = self else {
            return Ok(());
        };
        if bytes.is_empty() {
            return Ok(());
        }
        if let Ok(Response::Error(_)) = frame::decode::<Response>(bytes, DEFAULT_MAX_FRAME) {
            return Ok(());
        }
        if let Ok(HelloReply::Refused { .. }) =
            frame::decode::<HelloReply>(bytes, DEFAULT_MAX_FRAME)
        {
            return Ok(());
        }
        bail!("the controller answered bad input with something other than a refusal: {bytes:02x?}")
    }

    fn summary(&self) -> String {
        match self {
            Closed::Finished(bytes) => format!("finished after {} bytes", bytes.len()),
            Closed::Reset(reason) => format!("reset: {reason}"),
        }
    }
}

/// A connection that has completed the protocol's hello exchange.
async fn hello(ctl: &Controller, cred: &Credential) -> Result<quinn::Connection> {
    let conn = connect(ctl.listen(), cred).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = Hello {
        versions: PROTOCOL,
        software: "certfleet-tests".to_owned(),
    };
    send.write_all(&frame::encode(&hello, DEFAULT_MAX_FRAME)?)
        .await?;
    send.finish()?;
    let reply = tokio::time::timeout(CLOSE_TIMEOUT, recv.read_to_end(DEFAULT_MAX_FRAME + 4))
        .await
        .context("no hello reply")??;
    match frame::decode::<HelloReply>(&reply, DEFAULT_MAX_FRAME)? {
        HelloReply::Accepted { .. } => Ok(conn),
        HelloReply::Refused { reason } => bail!("hello refused: {reason}"),
    }
}

/// The frames a confused or hostile peer might send.
fn bad_frames() -> Vec<(&'static str, Vec<u8>, bool)> {
    let mut malformed = 16u32.to_be_bytes().to_vec();
    malformed.extend([0xFF; 16]); // an endless varint: not a message
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend([0x01; 10]); // stream ends 90 bytes early
    let mut trailing = 2u32.to_be_bytes().to_vec();
    trailing.extend([0x01, 0x00]); // a short message plus a stray byte, at best
    let mut oversized = 0xFFFF_FFFFu32.to_be_bytes().to_vec();
    oversized.extend([0u8; 64 * 1024]); // and keep the stream open: never wait for 4 GiB
    vec![
        ("malformed body", malformed, false),
        ("truncated body", truncated, false),
        ("trailing bytes", trailing, false),
        (
            "not a frame at all",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            false,
        ),
        ("oversized length", oversized, true),
        ("empty stream", Vec::new(), false),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_do_not_disturb_the_controller() -> Result<()> {
    let mut ctl = Controller::start()?;
    ctl.cli_json(&["issuer", "add", "ca1", "--kind", "builtin"])?;
    let before = ctl.inventory()?;
    let cred = Credential::load(&ctl.credential_path())?;

    for (what, bytes, keep_open) in bad_frames() {
        // Before the hello: the first stream must carry a valid Hello.
        let conn = connect(ctl.listen(), &cred).await?;
        let closed = send_bad(&conn, &bytes, keep_open)
            .await
            .with_context(|| format!("{what}, instead of the hello"))?;
        println!("{what}, instead of the hello: {}", closed.summary());
        conn.close(0u32.into(), b"done");

        // After the hello, as a request.
        let conn = hello(&ctl, &cred).await?;
        let closed = send_bad(&conn, &bytes, keep_open)
            .await
            .with_context(|| format!("{what}, as a request"))?;
        println!("{what}, as a request: {}", closed.summary());
        conn.close(0u32.into(), b"done");

        ctl.ensure_running()
            .with_context(|| format!("after {what}"))?;
    }

    // Nothing changed, and an ordinary client is still served.
    assert_eq!(ctl.inventory()?, before, "inventory after bad frames");
    let cert = ctl.issue("ca1", &[], &["after.example.test"])?;
    ensure!(cert["state"] == "active", "{cert}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_on_many_streams_at_once() -> Result<()> {
    let mut ctl = Controller::start()?;
    let cred = Credential::load(&ctl.credential_path())?;
    let conn = hello(&ctl, &cred).await?;
    let mut tasks = Vec::new();
    for i in 0..32u32 {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let mut oversized = (0xF000_0000u32 + i).to_be_bytes().to_vec();
            oversized.extend([0u8; 1024]);
            send_bad(&conn, &oversized, true).await
        }));
    }
    for task in tasks {
        // A connection-level refusal (the connection closed before the
        // stream opened) is also a fine answer; hanging is not.
        match task.await? {
            Ok(_) => {}
            Err(e) if format!("{e:#}").starts_with("opening a stream") => {}
            Err(e) => return Err(e),
        }
    }
    ctl.ensure_running()?;
    ctl.cli_json(&["issuer", "list"])?;
    Ok(())
}

/// A connection without a client certificate, as anyone who can reach the
/// port may open.
async fn anonymous(ctl: &Controller, cred: &Credential) -> Result<quinn::Connection> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let conn = endpoint
        .connect_with(
            anonymous_client_config(&cred.ca)?,
            ctl.listen(),
            SERVER_NAME,
        )?
        .await
        .context("handshake without a certificate")?;
    Ok(conn)
}

/// Sends the hello on a new stream and reads the reply.
async fn say_hello(conn: &quinn::Connection) -> Result<()> {
    let hello = Hello {
        versions: PROTOCOL,
        software: "certfleet-tests".to_owned(),
    };
    let reply: HelloReply = call(conn, &frame::encode(&hello, DEFAULT_MAX_FRAME)?).await?;
    ensure!(matches!(reply, HelloReply::Accepted { .. }), "{reply:?}");
    Ok(())
}

/// Sends one frame on a new stream and decodes the answer.
async fn call<T: serde::de::DeserializeOwned>(conn: &quinn::Connection, bytes: &[u8]) -> Result<T> {
    let (mut send, mut recv) = conn.open_bi().await?;
    // The controller stops reading a request it refuses from its first
    // bytes: a failed write is expected then, and the answer still comes.
    if send.write_all(bytes).await.is_ok() {
        let _ = send.finish();
    }
    let reply = tokio::time::timeout(CLOSE_TIMEOUT, recv.read_to_end(DEFAULT_MAX_FRAME + 4))
        .await
        .context("no answer")??;
    Ok(frame::decode(&reply, DEFAULT_MAX_FRAME)?)
}

/// Waits for the controller to close `conn`; the close reason.
async fn closed_within(conn: &quinn::Connection, within: Duration) -> Result<String> {
    let closed = tokio::time::timeout(within, conn.closed())
        .await
        .map_err(|_| anyhow!("the controller left the connection open for {within:?}"))?;
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            Ok(String::from_utf8_lossy(&c.reason).into_owned())
        }
        other => bail!("connection ended without the controller closing it: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_only_enrollment_is_possible() -> Result<()> {
    let mut ctl = Controller::start()?;
    let cred = Credential::load(&ctl.credential_path())?;

    // An admin request after the hello: the connection is closed.
    let conn = anonymous(&ctl, &cred).await?;
    say_hello(&conn).await?;
    let (mut send, _recv) = conn.open_bi().await?;
    send.write_all(&frame::encode(&Request::IssuerList, DEFAULT_MAX_FRAME)?)
        .await?;
    send.finish()?;
    let reason = closed_within(&conn, CLOSE_TIMEOUT).await?;
    ensure!(reason.contains("only enrollment"), "{reason}");

    // An agent request instead of the hello: closed as well.
    let conn = anonymous(&ctl, &cred).await?;
    let (mut send, _recv) = conn.open_bi().await?;
    send.write_all(&frame::encode(&Request::DesiredState, DEFAULT_MAX_FRAME)?)
        .await?;
    send.finish()?;
    closed_within(&conn, CLOSE_TIMEOUT).await?;

    // An enrollment larger than its few KiB: refused, not read.
    let conn = anonymous(&ctl, &cred).await?;
    say_hello(&conn).await?;
    let big = Request::Enroll {
        token: Secret::new(b"cfjt1.x.y".to_vec()),
        csr_pem: "x".repeat(64 * 1024),
        hostname: "web1".into(),
    };
    match call::<Response>(&conn, &frame::encode(&big, DEFAULT_MAX_FRAME)?).await {
        Ok(Response::Error(e)) => ensure!(e.message.contains("exceeds the limit"), "{e:?}"),
        Ok(other) => bail!("an oversized enrollment was answered with {other:?}"),
        // Closed before the answer could be read: also a refusal.
        Err(_) => {}
    }
    closed_within(&conn, CLOSE_TIMEOUT).await?;

    // A peer that opens a connection and sends nothing is closed at the
    // enrollment deadline (10 s from the handshake).
    let started = std::time::Instant::now();
    let idle = anonymous(&ctl, &cred).await?;
    let reason = closed_within(&idle, Duration::from_secs(20)).await?;
    ensure!(
        reason.contains("no hello in time") || reason.contains("within 10s"),
        "{reason}"
    );
    ensure!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );

    ctl.ensure_running()?;
    ctl.cli_json(&["issuer", "list"])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_only_stream_is_closed_at_the_read_deadline() -> Result<()> {
    let mut ctl = Controller::start()?;
    let cred = Credential::load(&ctl.credential_path())?;
    let conn = hello(&ctl, &cred).await?;
    let started = std::time::Instant::now();
    let (mut send, _recv) = conn.open_bi().await?;
    // A header announcing 1000 bytes, then silence.
    send.write_all(&1000u32.to_be_bytes()).await?;
    let reason = closed_within(&conn, Duration::from_secs(30)).await?;
    ensure!(reason.contains("not received in time"), "{reason}");
    ensure!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    // A stream that sends nothing at all is closed too.
    let conn = hello(&ctl, &cred).await?;
    let (mut send, _recv) = conn.open_bi().await?;
    // One byte of a header (a stream reaches the controller with its
    // first byte).
    send.write_all(&[0]).await?;
    let reason = closed_within(&conn, Duration::from_secs(30)).await?;
    ensure!(reason.contains("no frame header"), "{reason}");
    ctl.ensure_running()?;
    ctl.cli_json(&["issuer", "list"])?;
    Ok(())
}

/// A `CertApply` body with `n` empty domains (`n` < 2^21).
fn cert_apply_with_empty_domains(n: u32) -> Vec<u8> {
    let mut body = postcard_request(&Request::CertApply {
        instance: "i".into(),
        domains: vec![],
    });
    body.pop(); // the empty list's length
    let mut v = n;
    while v >= 0x80 {
        body.push((v as u8) | 0x80);
        v >>= 7;
    }
    body.push(v as u8);
    body.resize(body.len() + n as usize, 0);
    let mut frame = u32::try_from(body.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes()
        .to_vec();
    frame.extend(body);
    frame
}

fn postcard_request(r: &Request) -> Vec<u8> {
    let framed = frame::encode(r, DEFAULT_MAX_FRAME).expect("a small request encodes");
    framed[frame::HEADER_LEN..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_lists_are_refused_before_decoding() -> Result<()> {
    let mut ctl = Controller::start()?;
    let cred = Credential::load(&ctl.credential_path())?;
    let conn = hello(&ctl, &cred).await?;

    // The attack of issue 14: 4 MiB of empty domains. Refused from the
    // header: a CertApply is far smaller than that.
    let answer: Response = call(&conn, &cert_apply_with_empty_domains(4_000_000)).await?;
    let Response::Error(e) = answer else {
        bail!("a 4 MiB CertApply was answered with {answer:?}")
    };
    ensure!(e.kind == ErrorKind::InvalidArgument, "{e:?}");
    ensure!(e.message.contains("exceeds the limit"), "{}", e.message);

    // Within the size limit but over the list limit: refused by the
    // list's length, before the list is allocated.
    let answer: Response = call(&conn, &cert_apply_with_empty_domains(200_000)).await?;
    let Response::Error(e) = answer else {
        bail!("200,000 empty domains were answered with {answer:?}")
    };
    ensure!(
        e.message
            .contains("a list of 200000 items exceeds the limit (at most 10000 are accepted)"),
        "{}",
        e.message
    );

    // The same connection still works, and so does everyone else's.
    let answer: Response = call(
        &conn,
        &frame::encode(&Request::IssuerList, DEFAULT_MAX_FRAME)?,
    )
    .await?;
    ensure!(matches!(answer, Response::Issuers(_)), "{answer:?}");
    ctl.ensure_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_tokens_leaves_aggregate_audit_rows() -> Result<()> {
    let mut ctl = Controller::start()?;
    let cred = Credential::load(&ctl.credential_path())?;
    let (token, _pin) = fleet::token(&ctl, &[])?;
    let id = token.split('.').nth(1).context("token id")?.to_owned();
    let before = audit_rows(&ctl)?;

    const ATTEMPTS: usize = 40;
    let mut rate_limited = 0;
    for i in 0..ATTEMPTS {
        let conn = anonymous(&ctl, &cred).await?;
        say_hello(&conn).await?;
        let enroll = Request::Enroll {
            token: Secret::new(format!("cfjt1.{id}.wrong{i}").into_bytes()),
            csr_pem: "not even a CSR".into(),
            hostname: "intruder".into(),
        };
        let answer: Response = call(&conn, &frame::encode(&enroll, DEFAULT_MAX_FRAME)?).await?;
        let Response::Error(e) = answer else {
            bail!("a wrong token was answered with {answer:?}")
        };
        if e.message.contains("try again in") {
            rate_limited += 1;
        } else {
            ensure!(e.message.contains("invalid, expired or used up"), "{e:?}");
        }
        conn.close(0u32.into(), b"done");
    }
    // 20 refusals in a burst (and one more every 2 s), then the source is
    // refused without a look at its token.
    ensure!(rate_limited >= 10, "only {rate_limited} were rate limited");

    // The refusals reach the audit log as one row per source and minute,
    // with a count, within a few seconds.
    let rows = certfleet_tests::wait_for(Duration::from_secs(20), "aggregate audit rows", || {
        let rows: Vec<_> = audit_rows(&ctl)?
            .into_iter()
            .filter(|e| !before.contains(e))
            .collect();
        let total: u64 = rows.iter().filter_map(count_of).sum();
        Ok((total == ATTEMPTS as u64).then_some(rows))
    })?;
    ensure!(
        (1..=2).contains(&rows.len()),
        "{} rows for {ATTEMPTS} refusals: {rows:#?}",
        rows.len()
    );
    for row in &rows {
        ensure!(row["actor"] == "enroll:127.0.0.1", "{row}");
        ensure!(row["outcome"] == "refused", "{row}");
    }
    ctl.ensure_running()?;
    Ok(())
}

/// The audit rows of refused enrollments.
fn audit_rows(ctl: &Controller) -> Result<Vec<serde_json::Value>> {
    let audit = ctl.cli_json(&["audit", "list", "--limit", "1000"])?;
    Ok(audit
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["action"] == "agent.enroll"
                && e["outcome"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("refused"))
        })
        .cloned()
        .collect())
}

/// The `count=N` of an aggregate audit row.
fn count_of(row: &serde_json::Value) -> Option<u64> {
    row["detail"]
        .as_str()?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("count="))?
        .parse()
        .ok()
}
