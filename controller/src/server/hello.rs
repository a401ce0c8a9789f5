//! The version exchange on the first stream of every connection, read
//! within the hello's own limit and deadline.

use certfleet_protocol::limits;
use certfleet_protocol::message::{Hello, HelloReply};
use certfleet_protocol::{frame, DEFAULT_MAX_FRAME, PROTOCOL};
use quinn::VarInt;
use tokio::time::Instant;
use tracing::{debug, info};

use super::intake::{self, Budgets, Refusal};
use certfleet_protocol::close::{PROTOCOL as CLOSE_PROTOCOL, VERSION as CLOSE_VERSION};

/// Answer the peer's hello. `Err` means the connection has been closed
/// (malformed, late or incompatible hello), with the reason for the log.
pub(super) async fn exchange(
    conn: &quinn::Connection,
    budgets: &Budgets,
    opened: Instant,
) -> Result<(), String> {
    let accepted = tokio::time::timeout_at(opened + intake::HEADER_DEADLINE, conn.accept_bi());
    let (mut send, mut recv) = match accepted.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("closed before hello: {e}")),
        Err(_) => {
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"no hello in time");
            return Err("no hello stream in time".into());
        }
    };
    let hello: Hello = match intake::read_message(&mut recv, budgets, opened, limits::HELLO).await {
        Ok(h) => h,
        Err(refusal) => {
            let why = match refusal {
                Refusal::Answer(e) => e.message,
                Refusal::Close(w) => w,
            };
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"malformed hello");
            return Err(format!("malformed hello: {why}"));
        }
    };
    let reply = match PROTOCOL.negotiate(hello.versions) {
        Ok(version) => HelloReply::Accepted {
            version,
            controller: format!("certfleet {}", env!("CARGO_PKG_VERSION")),
        },
        Err(e) => HelloReply::Refused {
            reason: e.to_string(),
        },
    };
    let refused = matches!(reply, HelloReply::Refused { .. });
    if let Err(e) = frame::write(&mut send, &reply, DEFAULT_MAX_FRAME).await {
        return Err(format!("could not answer the hello: {e}"));
    }
    let _ = send.finish();
    if refused {
        info!(software = %hello.software, "refusing peer of incompatible version");
        let _ = tokio::time::timeout(intake::HEADER_DEADLINE, send.stopped()).await;
        conn.close(
            VarInt::from_u32(CLOSE_VERSION),
            b"incompatible protocol version",
        );
        return Err("incompatible protocol version".into());
    }
    debug!(software = %hello.software, "peer connected");
    Ok(())
}
