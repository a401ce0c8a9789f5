//! Property tests: every wire message survives encode → decode unchanged,
//! through the same role-checked, bounded decode the controller and the
//! agent use; a value within the limits decodes and one beyond them is
//! refused with [`FrameError::Limit`], never a panic.
//!
//! Values come from [`crate::sample`], which draws any type from random
//! bytes through its own `Deserialize`, so variants appended later are
//! covered without a strategy to update.

use proptest::prelude::*;
use serde::{de::DeserializeOwned, Serialize};

use crate::bounded::{self, DecodeLimits};
use crate::frame::{self, FrameError, DEFAULT_MAX_FRAME};
use crate::limits::{self, Caller, EnrollRequest};
use crate::list::ListQuery;
use crate::message::{
    AgentCommand, AgentCommandReply, AgentHello, DesiredInstall, Hello, HelloReply, InstallReport,
    InventoryReport, Poke, Request, Response,
};
use crate::sample::{self, Shape};

fn input() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..768)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 384,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Frame round trip, and bounded-decode round trip within `limits`.
fn round_trip<T>(value: &T, limits: DecodeLimits) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let framed = frame::encode(value, DEFAULT_MAX_FRAME).expect("small values encode");
    let back: T = frame::decode(&framed, DEFAULT_MAX_FRAME).expect("own frame decodes");
    prop_assert_eq!(&back, value);
    let body = &framed[frame::HEADER_LEN..];
    let bounded: T = bounded::decode_body(body, limits).expect("within limits");
    prop_assert_eq!(&bounded, value);
    // Every strict prefix is an error, never a panic or another value.
    for cut in [0, body.len() / 2, body.len().saturating_sub(1)] {
        if cut < body.len() {
            prop_assert!(bounded::decode_body::<T>(&body[..cut], limits).is_err());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn requests_round_trip_through_the_role_checked_decode(data in input()) {
        let r: Request = sample::arbitrary(&data).expect("every Request can be drawn");
        let body = postcard::to_stdvec(&r).unwrap();
        let (tag, _) = limits::peek_tag(&body).unwrap().expect("a whole body has a tag");
        let class = limits::classify(tag).expect("every variant is classified");
        prop_assert!(body.len() <= class.limit.max_bytes, "{} bytes for {}", body.len(), class.name);
        prop_assert!(body.len() <= limits::max_request_bytes(class.caller));
        prop_assert_eq!(&limits::decode_request(&body, &class).unwrap(), &r);
        // Only an enrollment decodes on a connection without a certificate.
        let enroll = EnrollRequest::decode(&body);
        match (&r, enroll) {
            (Request::Enroll { token, csr_pem, hostname }, Ok(e)) => {
                prop_assert_eq!(class.caller, Caller::Enrolling);
                prop_assert_eq!((&e.token, &e.csr_pem, &e.hostname), (token, csr_pem, hostname));
            }
            (Request::Enroll { .. }, Err(e)) => prop_assert!(false, "enrollment refused: {e}"),
            (_, Ok(e)) => prop_assert!(false, "{} decoded as enrollment {e:?}", class.name),
            (_, Err(e)) => prop_assert!(matches!(e, FrameError::Limit(_)), "{e}"),
        }
        round_trip(&r, class.limit.decode)?;
    }

    #[test]
    fn item_limits_accept_up_to_and_refuse_beyond(data in input()) {
        let shape = Shape { max_items: 12, ..Shape::default() };
        let Some((r, widest)) = sample::arbitrary_widest::<Request>(&data, shape) else {
            return Err(TestCaseError::reject("not drawable"));
        };
        let body = postcard::to_stdvec(&r).unwrap();
        let at = DecodeLimits { max_items: widest, max_heap: usize::MAX };
        prop_assert_eq!(&bounded::decode_body::<Request>(&body, at).unwrap(), &r);
        if widest > 0 {
            let below = DecodeLimits { max_items: widest - 1, max_heap: usize::MAX };
            let err = bounded::decode_body::<Request>(&body, below).unwrap_err();
            prop_assert!(matches!(&err, FrameError::Limit(m) if m.contains("items")), "{err}");
        }
        // A heap budget of nothing refuses any value holding a byte of text
        // or a list item, with the limit named.
        let none = DecodeLimits { max_items: usize::MAX, max_heap: 0 };
        match bounded::decode_body::<Request>(&body, none) {
            Ok(v) => prop_assert_eq!(&v, &r),
            Err(e) => prop_assert!(matches!(&e, FrameError::Limit(m) if m.contains("memory")), "{e}"),
        }
    }

    #[test]
    fn responses_round_trip(data in input()) {
        let r: Response = sample::arbitrary(&data).expect("every Response can be drawn");
        round_trip(&r, DecodeLimits::for_frame(DEFAULT_MAX_FRAME, 1_000_000))?;
    }

    #[test]
    fn connection_messages_round_trip(data in input()) {
        if let Some(h) = sample::arbitrary::<Hello>(&data) {
            round_trip(&h, limits::HELLO.decode)?;
        }
        if let Some(h) = sample::arbitrary::<HelloReply>(&data) {
            round_trip(&h, limits::HELLO.decode)?;
        }
        let c: AgentCommand = sample::arbitrary(&data).unwrap();
        round_trip(&c, limits::COMMAND_REPLY.decode)?;
        let reply: AgentCommandReply = sample::arbitrary(&data).unwrap();
        round_trip(&reply, limits::COMMAND_REPLY.decode)?;
        let poke: Poke = sample::arbitrary(&data).unwrap();
        round_trip(&poke, limits::HELLO.decode)?;
    }

    #[test]
    fn agent_messages_round_trip(data in input()) {
        let wide = DecodeLimits::for_frame(DEFAULT_MAX_FRAME, InventoryReport::MAX_ENTRIES);
        let hello: AgentHello = sample::arbitrary(&data).unwrap();
        round_trip(&hello, wide)?;
        let report: InventoryReport = sample::arbitrary(&data).unwrap();
        round_trip(&report, wide)?;
        let desired: DesiredInstall = sample::arbitrary(&data).unwrap();
        round_trip(&desired, wide)?;
        let install: InstallReport = sample::arbitrary(&data).unwrap();
        round_trip(&install, wide)?;
        let query: ListQuery = sample::arbitrary(&data).unwrap();
        round_trip(&query, wide)?;
    }

    #[test]
    fn frames_beyond_the_limit_are_refused_from_the_header(data in input(), extra in 1usize..64) {
        let r: Request = sample::arbitrary(&data).unwrap();
        let framed = frame::encode(&r, DEFAULT_MAX_FRAME).unwrap();
        let len = framed.len() - frame::HEADER_LEN;
        let max = len.saturating_sub(extra);
        if max < len {
            let encoded = frame::encode(&r, max);
            prop_assert!(matches!(encoded, Err(FrameError::TooLarge { .. })), "{:?}", encoded);
            let decoded = frame::decode::<Request>(&framed, max);
            prop_assert!(matches!(decoded, Err(FrameError::TooLarge { .. })), "{:?}", decoded);
        }
    }
}
