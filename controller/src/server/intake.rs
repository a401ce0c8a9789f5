//! Reading what peers send, at a bounded cost in time and memory.
//!
//! Every frame the controller reads from a peer (the hello, each request,
//! each command reply) goes through [`read_frame`]:
//!
//! - **Deadlines**: the header must arrive within [`HEADER_DEADLINE`] of the
//!   stream opening, the body may stall for at most [`IDLE_DEADLINE`], and
//!   the whole frame must be in within [`FRAME_DEADLINE`]. A peer that
//!   misses one loses its connection.
//! - **Limits before bytes**: the header is checked against the largest
//!   message the peer's role may send; for a request the variant tag comes
//!   next and names its role and its own limit, so a request of another
//!   role, or over its limit, is refused before its body is read.
//! - **Memory budget**: the body buffer grows as bytes arrive, and every
//!   byte buffered in an unfinished frame is charged to the connection's
//!   budget ([`CONNECTION_BUDGET`]; a peer over it is closed) and to the
//!   controller's ([`GLOBAL_BUDGET`]; a stream waits for room within its
//!   deadlines). The charge is returned once the frame is decoded or
//!   dropped.

use std::sync::Arc;
use std::time::Duration;

use certfleet_protocol::frame::{self, FrameError, HEADER_LEN, READ_CHUNK};
use certfleet_protocol::limits::{self, Caller, EnrollRequest, MessageLimit, RequestClass};
use certfleet_protocol::message::{ErrorKind, Request, RpcError};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// From a stream opening to its frame header.
pub(crate) const HEADER_DEADLINE: Duration = Duration::from_secs(10);
/// Longest pause between two pieces of a frame body.
pub(crate) const IDLE_DEADLINE: Duration = Duration::from_secs(10);
/// From a stream opening to its whole frame.
pub(crate) const FRAME_DEADLINE: Duration = Duration::from_secs(60);
/// Bytes one connection may hold in unfinished frames: one frame of the
/// largest kind and a little more.
pub(crate) const CONNECTION_BUDGET: usize = frame::DEFAULT_MAX_FRAME + 256 * 1024;
/// Bytes all connections together may hold in unfinished frames.
pub(crate) const GLOBAL_BUDGET: usize = 64 * 1024 * 1024;

/// Why a frame was not read, and what to do about it.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Answer with this error on the stream; the connection may go on.
    Answer(RpcError),
    /// The peer broke the protocol or its budget: close its connection.
    Close(String),
}

impl Refusal {
    fn close(what: impl Into<String>) -> Self {
        Refusal::Close(what.into())
    }

    fn answer(kind: ErrorKind, message: String) -> Self {
        Refusal::Answer(RpcError { kind, message })
    }
}

/// A budget of buffered bytes (a semaphore of bytes).
#[derive(Clone)]
pub(crate) struct Budget(Arc<Semaphore>);

impl Budget {
    pub(crate) fn new(bytes: usize) -> Self {
        Budget(Arc::new(Semaphore::new(bytes)))
    }

    /// Bytes not held by any frame now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// The budgets one connection's frames are charged to.
#[derive(Clone)]
pub(crate) struct Budgets {
    pub(crate) connection: Budget,
    pub(crate) global: Budget,
}

impl Budgets {
    pub(crate) fn for_connection(global: &Budget) -> Self {
        Budgets {
            connection: Budget::new(CONNECTION_BUDGET),
            global: global.clone(),
        }
    }
}

/// Bytes taken from the budgets by one frame, given back on drop.
struct Held<'b> {
    budgets: &'b Budgets,
    bytes: usize,
}

impl Held<'_> {
    async fn take(&mut self, n: usize, until: Instant) -> Result<(), Refusal> {
        let n32 = u32::try_from(n).map_err(|_| Refusal::close("frame chunk too large"))?;
        match self.budgets.connection.0.try_acquire_many(n32) {
            Ok(p) => p.forget(),
            Err(_) => {
                return Err(Refusal::close(format!(
                    "more than {CONNECTION_BUDGET} bytes of unfinished requests on one connection"
                )))
            }
        }
        let global = tokio::time::timeout_at(until, self.budgets.global.0.acquire_many(n32)).await;
        match global {
            Ok(Ok(p)) => p.forget(),
            _ => {
                self.budgets.connection.0.add_permits(n);
                return Err(Refusal::close(
                    "the controller is busy with other requests and this one did not arrive in time",
                ));
            }
        }
        self.bytes += n;
        Ok(())
    }

    fn give_back(&mut self, n: usize) {
        let n = n.min(self.bytes);
        self.budgets.connection.0.add_permits(n);
        self.budgets.global.0.add_permits(n);
        self.bytes -= n;
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.give_back(self.bytes);
    }
}

/// Read one frame: a header within `max`, then `check` on the first
/// bytes of the body (at most 5, fewer if the body is shorter) to learn its
/// own limit, then the body, then `decode`. `opened` is when the stream
/// opened (or the connection, for the hello).
async fn read_frame<T, C>(
    recv: &mut quinn::RecvStream,
    budgets: &Budgets,
    opened: Instant,
    max: usize,
    check: impl FnOnce(&[u8]) -> Result<(MessageLimit, C), Refusal>,
    decode: impl FnOnce(&[u8], C) -> Result<T, FrameError>,
) -> Result<T, Refusal> {
    let frame_until = opened + FRAME_DEADLINE;
    let mut header = [0u8; HEADER_LEN];
    match tokio::time::timeout_at(opened + HEADER_DEADLINE, recv.read_exact(&mut header)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Refusal::close(format!("stream ended before a frame: {e}"))),
        Err(_) => {
            return Err(Refusal::close(format!(
                "no frame header within {}s",
                HEADER_DEADLINE.as_secs()
            )))
        }
    }
    let len = frame::body_len(header, max).map_err(|e| too_large(&e))?;
    let mut held = Held { budgets, bytes: 0 };
    let mut body = Vec::new();
    let mut limit = None;
    let mut check = Some(check);
    loop {
        if limit.is_none() && (body.len() >= 5 || body.len() == len) {
            let Some(check) = check.take() else {
                return Err(Refusal::close("request checked twice"));
            };
            let (l, class) = check(&body)?;
            if len > l.max_bytes {
                return Err(too_large(&FrameError::TooLarge {
                    len,
                    max: l.max_bytes,
                }));
            }
            limit = Some((l, class));
        }
        if body.len() == len {
            break;
        }
        // Until the limit is known, read only the few bytes of the tag.
        let want = if limit.is_some() {
            (len - body.len()).min(READ_CHUNK)
        } else {
            (5 - body.len()).min(len - body.len())
        };
        held.take(want, frame_until).await?;
        let until = frame_until.min(Instant::now() + IDLE_DEADLINE);
        let got = match tokio::time::timeout_at(
            until,
            frame::read_chunk(recv, body.len() + want, &mut body),
        )
        .await
        {
            Ok(Ok(0)) => {
                return Err(Refusal::close(format!(
                    "stream ended after {} of {len} bytes of a frame",
                    body.len()
                )))
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(Refusal::close(format!("stream error: {e}"))),
            Err(_) => {
                return Err(Refusal::close(format!(
                    "frame of {len} bytes not received in time ({} bytes arrived)",
                    body.len()
                )))
            }
        };
        held.give_back(want - got);
    }
    let Some((_, class)) = limit else {
        return Err(Refusal::close("request of unknown kind"));
    };
    match decode(&body, class) {
        Ok(msg) => Ok(msg),
        Err(e @ FrameError::Limit(_)) => Err(Refusal::answer(
            ErrorKind::InvalidArgument,
            format!("{e}; nothing was done"),
        )),
        Err(e) => Err(Refusal::close(format!("malformed frame: {e}"))),
    }
}

fn too_large(e: &FrameError) -> Refusal {
    match e {
        FrameError::TooLarge { .. } => Refusal::answer(
            ErrorKind::InvalidArgument,
            format!("request refused: {e}; nothing was done"),
        ),
        other => Refusal::close(other.to_string()),
    }
}

/// Read one message of a fixed type (the hello, a command reply).
pub(crate) async fn read_message<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    budgets: &Budgets,
    opened: Instant,
    limit: MessageLimit,
) -> Result<T, Refusal> {
    read_frame(
        recv,
        budgets,
        opened,
        limit.max_bytes,
        |_| Ok((limit, ())),
        |body, ()| certfleet_protocol::bounded::decode_body(body, limit.decode),
    )
    .await
}

/// Read one request from `caller`, refusing a request of another role from
/// its tag and decoding within its variant's limits.
pub(crate) async fn read_request(
    recv: &mut quinn::RecvStream,
    budgets: &Budgets,
    opened: Instant,
    caller: Caller,
) -> Result<Request, Refusal> {
    read_frame(
        recv,
        budgets,
        opened,
        limits::max_request_bytes(caller),
        |prefix| classify(prefix, caller).map(|c| (c.limit, c)),
        |body, class: RequestClass| limits::decode_request(body, &class),
    )
    .await
}

/// Read the one request a peer without a certificate may make, as its own
/// small type: anything else is refused from its tag.
pub(crate) async fn read_enroll(
    recv: &mut quinn::RecvStream,
    budgets: &Budgets,
    opened: Instant,
) -> Result<EnrollRequest, Refusal> {
    read_frame(
        recv,
        budgets,
        opened,
        limits::ENROLL.max_bytes,
        |prefix| classify(prefix, Caller::Enrolling).map(|c| (c.limit, ())),
        |body, ()| EnrollRequest::decode(body),
    )
    .await
}

/// The class of the request starting with `prefix`, if `caller` may make it.
fn classify(prefix: &[u8], caller: Caller) -> Result<RequestClass, Refusal> {
    let tag = match limits::peek_tag(prefix) {
        Ok(Some((tag, _))) => tag,
        Ok(None) | Err(_) => return Err(Refusal::close("malformed request tag")),
    };
    let Some(class) = limits::classify(tag) else {
        return Err(Refusal::close(format!("unknown request kind {tag}")));
    };
    if class.caller == caller {
        return Ok(class);
    }
    Err(match (caller, class.caller) {
        (Caller::Enrolling, _) => Refusal::close(
            "this connection presented no client certificate; only enrollment is possible \
             (pass --credential)",
        ),
        (Caller::Agent, _) => Refusal::answer(
            ErrorKind::PermissionDenied,
            format!(
                "agents may only make agent requests ({} is not one)",
                class.name
            ),
        ),
        (Caller::Admin, _) => Refusal::answer(
            ErrorKind::InvalidArgument,
            format!(
                "{} is a request for {}; an admin credential cannot make it",
                class.name,
                class.caller.as_str()
            ),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn held_bytes_come_back() {
        let budgets = Budgets::for_connection(&Budget::new(100_000));
        {
            let mut held = Held {
                budgets: &budgets,
                bytes: 0,
            };
            held.take(60_000, Instant::now() + Duration::from_secs(1))
                .await
                .unwrap();
            held.give_back(10_000);
            assert_eq!(budgets.global.available(), 50_000);
            // The global budget is short: the stream waits, then gives up.
            let err = held
                .take(60_000, Instant::now() + Duration::from_millis(20))
                .await
                .unwrap_err();
            assert!(matches!(err, Refusal::Close(_)));
            assert_eq!(budgets.connection.available(), CONNECTION_BUDGET - 50_000);
        }
        assert_eq!(budgets.global.available(), 100_000);
        assert_eq!(budgets.connection.available(), CONNECTION_BUDGET);
    }

    #[tokio::test]
    async fn one_connection_cannot_exceed_its_budget() {
        let budgets = Budgets::for_connection(&Budget::new(GLOBAL_BUDGET));
        let mut held = Held {
            budgets: &budgets,
            bytes: 0,
        };
        held.take(CONNECTION_BUDGET, Instant::now()).await.unwrap();
        let err = held.take(1, Instant::now()).await.unwrap_err();
        assert!(
            matches!(&err, Refusal::Close(w) if w.contains("one connection")),
            "{err:?}"
        );
    }

    #[test]
    fn roles_are_checked_from_the_tag() {
        let body = |r: &Request| postcard::to_stdvec(r).unwrap();
        let list = body(&Request::IssuerList);
        assert!(classify(&list, Caller::Admin).is_ok());
        assert!(matches!(
            classify(&list, Caller::Agent),
            Err(Refusal::Answer(RpcError {
                kind: ErrorKind::PermissionDenied,
                ..
            }))
        ));
        assert!(matches!(
            classify(&list, Caller::Enrolling),
            Err(Refusal::Close(_))
        ));
        let desired = body(&Request::DesiredState);
        assert!(matches!(
            classify(&desired, Caller::Admin),
            Err(Refusal::Answer(_))
        ));
        assert!(classify(&desired, Caller::Agent).is_ok());
        assert!(matches!(
            classify(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF], Caller::Admin),
            Err(Refusal::Close(_))
        ));
    }
}
