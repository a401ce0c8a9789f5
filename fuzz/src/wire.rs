//! Harnesses for what crosses the QUIC connection: frames, requests by
//! role, the fixed-type messages of both sides, and drawn values of every
//! message type.
//!
//! The request harness makes the controller's intake decisions in its order
//! (controller/src/server/intake.rs): the frame limit of the caller's role,
//! the variant tag, the role check, the variant's own size limit, then the
//! bounded decode. Whatever decodes must encode back to a body that decodes
//! to the same value, with the same tag and no more bytes.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use certfleet_protocol::bounded::{self, DecodeLimits};
use certfleet_protocol::frame::{self, FrameError, DEFAULT_MAX_FRAME, HEADER_LEN};
use certfleet_protocol::limits::{self, Caller, EnrollRequest};
use certfleet_protocol::message::{
    AgentCommand, AgentCommandReply, Hello, HelloReply, Poke, Request, Response,
};
use certfleet_protocol::sample;
use serde::{de::DeserializeOwned, Serialize};

/// The largest frame the frame harness accepts: small, so that the size
/// check is exercised as often as the body.
const FRAME_MAX: usize = 64 * 1024;

/// Frame decoding, in memory and from a stream, of the messages a
/// controller sends (read by agents and the CLI) and of requests.
pub fn frame(data: &[u8]) {
    framed::<Request>(data);
    framed::<Response>(data);
    framed::<HelloReply>(data);
}

fn framed<T>(data: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let whole = frame::decode::<T>(data, FRAME_MAX);
    if let Ok(value) = &whole {
        let again = frame::encode(value, FRAME_MAX).expect("a decoded message encodes");
        assert!(again.len() <= data.len(), "re-encoding grew the frame");
        let back: T = frame::decode(&again, FRAME_MAX).expect("own frame decodes");
        assert_eq!(&back, value);
    }
    // The stream reader takes one frame and leaves the rest: it agrees with
    // the in-memory decoder on that frame.
    let streamed = read_now::<T>(data);
    let Some((header, body)) = data.split_first_chunk::<HEADER_LEN>() else {
        assert!(matches!(streamed, Err(FrameError::Io(_))), "{streamed:?}");
        return;
    };
    match frame::body_len(*header, FRAME_MAX) {
        Err(_) => assert!(matches!(streamed, Err(FrameError::TooLarge { .. }))),
        Ok(len) if body.len() < len => {
            assert!(matches!(streamed, Err(FrameError::Truncated { .. })))
        }
        Ok(len) => {
            let one = frame::decode::<T>(&data[..HEADER_LEN + len], FRAME_MAX);
            match (one, streamed) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("in memory {a:?}, streamed {b:?}"),
            }
        }
    }
}

/// `frame::read` over the bytes: a slice reader never waits, so one poll
/// finishes it.
fn read_now<T: DeserializeOwned>(data: &[u8]) -> Result<T, FrameError> {
    let mut reader = data;
    let mut fut = pin!(frame::read::<T, _>(&mut reader, FRAME_MAX));
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("reading from a slice waited"),
    }
}

/// A request body from a peer of the role the first byte picks.
pub fn request(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let caller = [Caller::Enrolling, Caller::Agent, Caller::Admin][usize::from(pick % 3)];
    if body.len() > limits::max_request_bytes(caller) {
        return; // refused from the frame header
    }
    if caller == Caller::Enrolling {
        enrollment(body);
        return;
    }
    let Ok(Some((tag, _))) = limits::peek_tag(body) else {
        return;
    };
    let Some(class) = limits::classify(tag) else {
        return;
    };
    if class.caller != caller || body.len() > class.limit.max_bytes {
        return;
    }
    match limits::decode_request(body, &class) {
        Ok(request) => {
            let again = postcard::to_stdvec(&request).expect("a decoded request encodes");
            assert!(again.len() <= body.len(), "re-encoding grew the request");
            let (tag2, _) = limits::peek_tag(&again).unwrap().unwrap();
            assert_eq!(tag, tag2, "{} changed variant", class.name);
            let back = limits::decode_request(&again, &class).expect("own body decodes");
            assert_eq!(back, request);
        }
        Err(e) => assert!(
            matches!(
                e,
                FrameError::Malformed(_) | FrameError::Limit(_) | FrameError::TrailingBytes(_)
            ),
            "{e:?}"
        ),
    }
}

/// What a connection without a certificate sends: only `Request::Enroll`
/// decodes, as [`EnrollRequest`], and it is the same value as the full
/// request type would give.
fn enrollment(body: &[u8]) {
    let enroll = EnrollRequest::decode(body);
    let class = match limits::peek_tag(body) {
        Ok(Some((tag, _))) => limits::classify(tag),
        _ => None,
    };
    match (enroll, class) {
        (Ok(e), Some(class)) => {
            assert_eq!(class.caller, Caller::Enrolling);
            match limits::decode_request(body, &class) {
                Ok(Request::Enroll {
                    token,
                    csr_pem,
                    hostname,
                }) => assert_eq!((token, csr_pem, hostname), (e.token, e.csr_pem, e.hostname)),
                other => panic!("EnrollRequest decoded but Request gave {other:?}"),
            }
        }
        (Ok(e), None) => panic!("unclassified body decoded as enrollment {e:?}"),
        (Err(_), Some(class)) if class.caller != Caller::Enrolling => {}
        (Err(_), _) => {}
    }
}

/// The fixed-type messages: what the controller reads before a request
/// (the hello, an agent's command reply; bounded) and what agents and the
/// CLI read from the controller (plain frame decode).
pub fn message(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    match pick % 6 {
        0 => bounded_round_trip::<Hello>(body, limits::HELLO.max_bytes, limits::HELLO.decode),
        1 => bounded_round_trip::<AgentCommandReply>(
            body,
            limits::COMMAND_REPLY.max_bytes,
            limits::COMMAND_REPLY.decode,
        ),
        2 => plain_round_trip::<HelloReply>(body),
        3 => plain_round_trip::<Response>(body),
        4 => plain_round_trip::<AgentCommand>(body),
        _ => plain_round_trip::<Poke>(body),
    }
}

fn bounded_round_trip<T>(body: &[u8], max_bytes: usize, limits: DecodeLimits)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if body.len() > max_bytes {
        return;
    }
    if let Ok(value) = bounded::decode_body::<T>(body, limits) {
        let again = postcard::to_stdvec(&value).expect("a decoded message encodes");
        assert!(again.len() <= body.len());
        let back: T = bounded::decode_body(&again, limits).expect("own body decodes");
        assert_eq!(back, value);
    }
}

fn plain_round_trip<T>(body: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if body.len() > DEFAULT_MAX_FRAME {
        return;
    }
    if let Ok(value) = frame::decode_body::<T>(body) {
        let again = postcard::to_stdvec(&value).expect("a decoded message encodes");
        assert!(again.len() <= body.len());
        let back: T = frame::decode_body(&again).expect("own body decodes");
        assert_eq!(back, value);
    }
}

/// Values of `Request` and `Response` drawn from the input (every variant
/// reachable in a few bytes) survive encode and the role-checked decode.
pub fn structured(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    if pick % 2 == 0 {
        let Some(request) = sample::arbitrary::<Request>(rest) else {
            return;
        };
        let body = postcard::to_stdvec(&request).expect("requests encode");
        let (tag, _) = limits::peek_tag(&body).unwrap().unwrap();
        let class = limits::classify(tag).expect("every variant is classified");
        assert!(body.len() <= class.limit.max_bytes, "{}", class.name);
        let back = limits::decode_request(&body, &class).expect("a small request decodes");
        assert_eq!(back, request);
        assert_eq!(
            EnrollRequest::decode(&body).is_ok(),
            matches!(request, Request::Enroll { .. })
        );
    } else {
        let Some(response) = sample::arbitrary::<Response>(rest) else {
            return;
        };
        let framed = frame::encode(&response, DEFAULT_MAX_FRAME).expect("responses encode");
        let back: Response = frame::decode(&framed, DEFAULT_MAX_FRAME).expect("own frame");
        assert_eq!(back, response);
    }
}
