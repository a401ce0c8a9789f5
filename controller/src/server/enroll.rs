//! Connections without a client certificate: enrollment and nothing else.
//!
//! Such a connection gets a place from the [`Gate`] (capped in total and
//! per source), [`ENROLL_DEADLINE`] from the end of its handshake to the
//! answer, two streams one after the other (the hello, then one
//! [`EnrollRequest`] of at most a few KiB), and a QUIC receive window just
//! large enough for them. Anything else closes it. A source whose
//! enrollments keep failing is refused before its token is looked at.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use certfleet_protocol::limits::EnrollRequest;
use certfleet_protocol::message::{ErrorKind, Response, RpcError};
use certfleet_protocol::{frame, DEFAULT_MAX_FRAME};
use quinn::VarInt;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::ctx::Ctx;
use super::intake::{self, Budgets, Refusal};
use crate::enrollment::EnrollFailure;
use certfleet_protocol::close::{
    LIMIT as CLOSE_LIMIT, PROTOCOL as CLOSE_PROTOCOL, UNAUTHORIZED as CLOSE_UNAUTHORIZED,
};

/// From the end of the handshake to the enrollment's answer.
pub(crate) const ENROLL_DEADLINE: Duration = Duration::from_secs(10);

/// Serve a connection that presented no client certificate.
pub(super) async fn serve(conn: quinn::Connection, ctx: Arc<Ctx>, opened: Instant) {
    let source = conn.remote_address().ip();
    let _slot = match ctx.gate.admit(source) {
        Ok(slot) => slot,
        Err(reason) => {
            debug!(%reason, "refusing connection without a certificate");
            conn.close(VarInt::from_u32(CLOSE_LIMIT), reason.as_bytes());
            return;
        }
    };
    let deadline = opened + ENROLL_DEADLINE;
    let budgets = Budgets::for_connection(&ctx.budget);
    match tokio::time::timeout_at(deadline, exchange(&conn, &ctx, source, &budgets, opened)).await {
        Ok(Ok(())) => {
            // Answered: the peer closes; a peer that does not is closed
            // at the deadline.
            let _ = tokio::time::timeout_at(deadline, conn.closed()).await;
            conn.close(VarInt::from_u32(0), b"enrollment answered");
        }
        Ok(Err((code, reason))) => {
            debug!(%reason, "closing connection without a certificate");
            conn.close(VarInt::from_u32(code), reason.as_bytes());
        }
        Err(_) => {
            debug!("enrollment not completed in time; closing");
            conn.close(
                VarInt::from_u32(CLOSE_LIMIT),
                format!(
                    "enrollment not completed within {}s",
                    ENROLL_DEADLINE.as_secs()
                )
                .as_bytes(),
            );
        }
    }
}

/// The hello, then one enrollment request and its answer.
async fn exchange(
    conn: &quinn::Connection,
    ctx: &Ctx,
    source: IpAddr,
    budgets: &Budgets,
    opened: Instant,
) -> Result<(), (u32, String)> {
    super::hello::exchange(conn, budgets, opened)
        .await
        .map_err(|e| (CLOSE_PROTOCOL, e))?;
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| (CLOSE_PROTOCOL, format!("closed before enrolling: {e}")))?;
    let request = match intake::read_enroll(&mut recv, budgets, Instant::now()).await {
        Ok(r) => r,
        Err(Refusal::Answer(e)) => {
            // Too large or over a decode limit: say so, then close.
            let _ = frame::write(&mut send, &Response::Error(e.clone()), DEFAULT_MAX_FRAME).await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
            return Err((CLOSE_UNAUTHORIZED, e.message));
        }
        Err(Refusal::Close(reason)) => return Err((CLOSE_UNAUTHORIZED, reason)),
    };
    let response = enroll(ctx, source, request).await;
    frame::write(&mut send, &response, DEFAULT_MAX_FRAME)
        .await
        .map_err(|e| (CLOSE_PROTOCOL, format!("could not answer: {e}")))?;
    let _ = send.finish();
    Ok(())
}

async fn enroll(ctx: &Ctx, source: IpAddr, request: EnrollRequest) -> Response {
    let now_ms = now_ms(ctx);
    if let Err(message) = ctx.gate.may_enroll(source, now_ms) {
        return Response::Error(RpcError {
            kind: ErrorKind::Unavailable,
            message,
        });
    }
    let EnrollRequest {
        token,
        csr_pem,
        hostname,
    } = request;
    match ctx.service.enroll(token, csr_pem, hostname).await {
        Ok((agent, cert_pem)) => Response::Enrolled {
            agent,
            cert_pem,
            ca_pem: ctx.identity.cert_pem().to_string(),
        },
        Err(EnrollFailure::Refused { why, error }) => {
            debug!(%source, why, "enrollment refused");
            ctx.gate.refused(source, now_ms, why);
            Response::Error(error.to_rpc())
        }
        Err(EnrollFailure::Failed(error)) => {
            warn!(%source, error = %error, "enrollment failed");
            Response::Error(error.to_rpc())
        }
    }
}

fn now_ms(ctx: &Ctx) -> i64 {
    let now = ctx.service.now();
    now.unix_timestamp() * 1000 + i64::from(now.millisecond())
}

/// Write the refused enrollments counted so far to the audit log, every few
/// seconds and once more at shutdown.
pub(super) async fn flush_refusals(
    ctx: Arc<Ctx>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        ctx.gate.flush(&ctx.store, now_ms(&ctx)).await;
        if stopping {
            return;
        }
    }
}
