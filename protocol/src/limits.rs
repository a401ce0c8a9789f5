//! What each message may weigh, and who may send it.
//!
//! The controller reads a request in three steps, each bounded by what the
//! previous one established: the frame header (refused above the largest
//! request the caller's role may send), the variant tag — the first varint
//! of the body, read from a few bytes — which names the request and so its
//! role and its own size limit (a request for another role is refused
//! without reading further), and only then the body, decoded with the
//! variant's [`DecodeLimits`]. The wire format is that of [`Request`]; the
//! split by role lives here, keyed by variant name, so that variants
//! appended to `Request` keep their place.
//!
//! Enrollment, the only request a peer without a certificate may make, is
//! decoded as its own small type [`EnrollRequest`], never as a `Request`.

use std::sync::OnceLock;

use serde::{de, Deserialize, Serialize};

use crate::bounded::{self, DecodeLimits};
use crate::frame::{FrameError, DEFAULT_MAX_FRAME};
use crate::message::Request;
use crate::Secret;

/// Who may send a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A connection without a client certificate.
    Enrolling,
    /// An agent identity.
    Agent,
    /// An admin credential.
    Admin,
}

impl Caller {
    pub fn as_str(self) -> &'static str {
        match self {
            Caller::Enrolling => "a peer without a certificate",
            Caller::Agent => "an agent",
            Caller::Admin => "an admin",
        }
    }
}

/// The size and decoding limits of one message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimit {
    /// Largest frame body.
    pub max_bytes: usize,
    pub decode: DecodeLimits,
}

impl MessageLimit {
    const fn new(max_bytes: usize, max_items: usize) -> Self {
        MessageLimit {
            max_bytes,
            decode: DecodeLimits::for_frame(max_bytes, max_items),
        }
    }
}

const KIB: usize = 1024;

/// The [`crate::message::Hello`] that opens every connection.
pub const HELLO: MessageLimit = MessageLimit::new(KIB, 16);
/// [`EnrollRequest`]: a token, a CSR and a host name.
pub const ENROLL: MessageLimit = MessageLimit::new(4 * KIB, 512);
/// An agent's answer to a command of the controller.
pub const COMMAND_REPLY: MessageLimit = MessageLimit::new(64 * KIB, 16);
/// An admin request that names things (ids, names, a selector).
const ADMIN_SMALL: MessageLimit = MessageLimit::new(16 * KIB, 1_000);
/// An admin request that carries lists or PEM (domains, labels).
const ADMIN_LARGE: MessageLimit = MessageLimit::new(256 * KIB, 10_000);
/// An ACME issuer with its CA bundle (which may be a whole trust store).
const ADMIN_ACME: MessageLimit = MessageLimit::new(1024 * KIB, 10_000);

/// The role and limits of a [`Request`] variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestClass {
    pub name: &'static str,
    pub caller: Caller,
    pub limit: MessageLimit,
}

/// The role and limits of every `Request` variant, by name. A variant not
/// listed here is refused to everyone (`every_request_is_classified`
/// fails until it is added).
fn class_of(name: &str) -> Option<(Caller, MessageLimit)> {
    use Caller::{Admin, Agent, Enrolling};
    Some(match name {
        "Enroll" => (Enrolling, ENROLL),
        "AgentHello" => (Agent, MessageLimit::new(256 * KIB, 4_000)),
        "DesiredState" => (Agent, MessageLimit::new(KIB, 16)),
        // Errors carry captured command output (4 KiB per stream and
        // command, several commands).
        "Report" => (Agent, MessageLimit::new(256 * KIB, 16)),
        "RenewIdentity" => (Agent, MessageLimit::new(16 * KIB, 16)),
        "InventoryReport" => (
            Agent,
            MessageLimit {
                max_bytes: DEFAULT_MAX_FRAME,
                decode: DecodeLimits {
                    max_items: crate::message::InventoryReport::MAX_ENTRIES,
                    max_heap: 32 * KIB * KIB,
                },
            },
        ),
        "IssuerAddAcme" => (Admin, ADMIN_ACME),
        "InstanceCreate" | "CertApply" | "CertApplyChallenge" | "DryRun" | "TokenCreate"
        | "List" | "Deploy" | "DeployRollout" => (Admin, ADMIN_LARGE),
        "IssuerAdd"
        | "IssuerList"
        | "InstanceList"
        | "InstanceShow"
        | "ApplicationShow"
        | "CertList"
        | "CertShow"
        | "CertDownload"
        | "CertRevoke"
        | "CaCrl"
        | "AuditList"
        | "AgentList"
        | "AgentShow"
        | "AgentRemove"
        | "DeploymentList"
        | "CertRenew"
        | "CertRevokeForced"
        | "RolloutList"
        | "RolloutShow"
        | "RolloutPause"
        | "RolloutResume"
        | "RolloutAbort"
        | "RolloutRollback"
        | "Status"
        | "IssuerShow"
        | "InventoryList"
        | "InventoryAdopt"
        | "InventoryScan"
        | "CaRoot"
        | "AdminCreate"
        | "AdminList"
        | "AdminRenew"
        | "AdminRevoke"
        | "TokenCreateReenroll"
        | "AdminBackup" => (Admin, ADMIN_SMALL),
        _ => return None,
    })
}

/// The names of `Request`'s variants in wire order, as serde knows them.
pub fn request_variants() -> &'static [&'static str] {
    static NAMES: OnceLock<&'static [&'static str]> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names: &'static [&'static str] = &[];
        // The probe fails by design once it has seen the variant list.
        let _ = Request::deserialize(VariantProbe(&mut names));
        names
    })
}

/// The class of the request whose variant tag is `tag`, if it is a known,
/// classified variant.
pub fn classify(tag: u32) -> Option<RequestClass> {
    let name = *request_variants().get(usize::try_from(tag).ok()?)?;
    let (caller, limit) = class_of(name)?;
    Some(RequestClass {
        name,
        caller,
        limit,
    })
}

/// Largest request body `caller` may send, over all its variants.
pub fn max_request_bytes(caller: Caller) -> usize {
    request_variants()
        .iter()
        .filter_map(|n| class_of(n))
        .filter(|(c, _)| *c == caller)
        .map(|(_, l)| l.max_bytes)
        .max()
        .unwrap_or(0)
}

/// The variant tag at the start of a body and the bytes it took; `None`
/// while `prefix` holds too few bytes to tell.
pub fn peek_tag(prefix: &[u8]) -> Result<Option<(u32, usize)>, FrameError> {
    let mut value: u32 = 0;
    for (i, byte) in prefix.iter().enumerate().take(5) {
        let bits = u32::from(byte & 0x7F);
        if i == 4 && bits > 0x0F {
            return Err(FrameError::Limit("request tag out of range".into()));
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if prefix.len() >= 5 {
        return Err(FrameError::Limit("request tag out of range".into()));
    }
    Ok(None)
}

/// A request of a class already checked, decoded with its limits.
pub fn decode_request(body: &[u8], class: &RequestClass) -> Result<Request, FrameError> {
    bounded::decode_body(body, class.limit.decode)
}

/// `Request::Enroll` as its own type: the same bytes after the tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub token: Secret,
    /// PEM certificate signing request for the agent's own key.
    pub csr_pem: String,
    pub hostname: String,
}

impl EnrollRequest {
    /// Decode a body that must be an enrollment: any other request is
    /// refused from its tag, without decoding the rest.
    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        if body.len() > ENROLL.max_bytes {
            return Err(FrameError::TooLarge {
                len: body.len(),
                max: ENROLL.max_bytes,
            });
        }
        let Some((tag, used)) = peek_tag(body)? else {
            return Err(FrameError::Truncated {
                expected: 1,
                got: body.len(),
            });
        };
        match classify(tag) {
            Some(c) if c.caller == Caller::Enrolling => {}
            _ => {
                return Err(FrameError::Limit(
                    "only enrollment is possible without a client certificate".into(),
                ))
            }
        }
        bounded::decode_body(&body[used..], ENROLL.decode)
    }
}

/// A deserializer that records the variant names `Request` declares.
struct VariantProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for VariantProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only an enum can be probed"))
    }

    fn deserialize_enum<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = variants;
        Err(de::Error::custom("probed"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_is_classified() {
        let names = request_variants();
        assert!(names.len() > 40, "{names:?}");
        assert_eq!(names[0], "IssuerAdd");
        for name in names {
            assert!(
                class_of(name).is_some(),
                "Request::{name} has no role and limit in protocol/src/limits.rs"
            );
        }
    }

    #[test]
    fn tags_name_variants_in_wire_order() {
        let r = Request::RenewIdentity {
            csr_pem: "x".into(),
        };
        let body = postcard::to_stdvec(&r).unwrap();
        let (tag, used) = peek_tag(&body).unwrap().unwrap();
        let class = classify(tag).unwrap();
        assert_eq!(
            (class.name, class.caller, used),
            ("RenewIdentity", Caller::Agent, 1)
        );
        assert_eq!(decode_request(&body, &class).unwrap(), r);
        assert_eq!(classify(10_000), None);
    }

    #[test]
    fn tag_varints() {
        assert_eq!(peek_tag(&[]).unwrap(), None);
        assert_eq!(peek_tag(&[0x80]).unwrap(), None);
        assert_eq!(peek_tag(&[0x81, 0x01]).unwrap(), Some((129, 2)));
        assert!(peek_tag(&[0xFF; 5]).is_err());
        assert!(peek_tag(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).is_err());
    }

    #[test]
    fn enroll_request_is_request_enroll_on_the_wire() {
        let r = Request::Enroll {
            token: Secret::new(b"cfjt1.a.b".to_vec()),
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            hostname: "web1".into(),
        };
        let body = postcard::to_stdvec(&r).unwrap();
        let e = EnrollRequest::decode(&body).unwrap();
        assert_eq!(e.hostname, "web1");
        assert_eq!(e.token.expose(), b"cfjt1.a.b");
        let other = postcard::to_stdvec(&Request::IssuerList).unwrap();
        let err = EnrollRequest::decode(&other).unwrap_err();
        assert!(err.to_string().contains("only enrollment"), "{err}");
        let big = postcard::to_stdvec(&Request::Enroll {
            token: Secret::new(vec![b'a'; 10]),
            csr_pem: "x".repeat(ENROLL.max_bytes),
            hostname: "h".into(),
        })
        .unwrap();
        assert!(matches!(
            EnrollRequest::decode(&big),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn roles_and_limits() {
        assert_eq!(max_request_bytes(Caller::Enrolling), ENROLL.max_bytes);
        assert_eq!(max_request_bytes(Caller::Agent), DEFAULT_MAX_FRAME);
        assert_eq!(max_request_bytes(Caller::Admin), ADMIN_ACME.max_bytes);
        let tag = request_variants()
            .iter()
            .position(|n| *n == "CertApply")
            .unwrap();
        let class = classify(tag as u32).unwrap();
        assert_eq!(class.caller, Caller::Admin);
        // A 4 MiB CertApply is refused from its header; under the limit,
        // empty domains stop at the item limit.
        assert!(class.limit.max_bytes < 4 * KIB * KIB);
        assert!(class.limit.decode.max_items <= 10_000);
    }
}
