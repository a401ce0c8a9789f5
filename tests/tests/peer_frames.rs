//! Issue #2, acceptance 4 (peer side): a peer holding a valid credential that
//! sends a corrupted, truncated or oversized frame loses that stream (closed
//! promptly, never left hanging), and the controller keeps serving everyone
//! else.

use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use certfleet_controller::client::{connect, Credential};
use certfleet_protocol::{
    frame,
    message::{Hello, HelloReply, Response},
    DEFAULT_MAX_FRAME, PROTOCOL,
};
use certfleet_tests::Controller;

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
