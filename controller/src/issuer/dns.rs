//! DNS-01 through RFC 2136 dynamic updates signed with TSIG (RFC 8945).
//!
//! [`Rfc2136`] names an authoritative server, the zone it accepts updates
//! for and a TSIG key. The controller adds the `_acme-challenge` TXT record
//! with [`Rfc2136::add_txt`], waits with [`Rfc2136::wait_visible`] until the
//! server answers it, lets the CA validate, and removes exactly that value with
//! [`Rfc2136::remove_txt`] (other values at the same name, e.g. for a wildcard
//! and its base name, stay).
//!
//! Messages and signatures come from `hickory-proto` (HMAC through aws-lc-rs);
//! this module only moves bytes. Every exchange is bounded by
//! [`REQUEST_TIMEOUT`]: UDP first, then once over TCP when UDP fails or the
//! answer is truncated. A successful update answer must carry a valid TSIG
//! signature, so a forged "NOERROR" is not taken for success. Nothing here
//! panics on user or network input, and the secret never reaches a log.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use certfleet_protocol::Secret;
use hickory_proto::{
    dnssec::{rdata::tsig::TsigAlgorithm, tsig::TSigner},
    op::{update_message, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{rdata::TXT, Name, RData, Record, RecordSet, RecordType},
    ProtoError,
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};
use zeroize::Zeroizing;

/// Upper bound for one request/response exchange over one transport.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// TTL of the challenge records: short, so a stale value does not linger in
/// the CA's resolver.
pub const CHALLENGE_TTL: u32 = 60;

/// Allowed clock difference between us and the server for TSIG (RFC 8945
/// recommends 300 s).
const TSIG_FUDGE: u16 = 300;

/// Pause between two queries of [`Rfc2136::wait_visible`].
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The TSIG algorithms accepted, by their BIND names.
const ALGORITHMS: [(&str, TsigAlgorithm); 3] = [
    ("hmac-sha256", TsigAlgorithm::HmacSha256),
    ("hmac-sha384", TsigAlgorithm::HmacSha384),
    ("hmac-sha512", TsigAlgorithm::HmacSha512),
];

/// Where and how to send dynamic updates for a zone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rfc2136 {
    /// The zone's primary authoritative server (UDP and TCP).
    pub server: SocketAddr,
    /// The zone, e.g. `acme.test.` (the trailing dot is optional).
    pub zone: String,
    /// Name of the TSIG key, as in the server's `key "…"` statement.
    pub tsig_name: String,
    /// `hmac-sha256`, `hmac-sha384` or `hmac-sha512`.
    pub tsig_algorithm: String,
    /// The key's secret in standard base64, as in BIND's key file.
    pub tsig_secret_b64: Secret,
}

/// Why a dynamic update or a lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The configured zone is not a domain name.
    #[error("invalid DNS zone {zone:?}: {reason}")]
    BadZone { zone: String, reason: String },
    /// A record name is not a domain name.
    #[error("invalid DNS name {name:?}: {reason}")]
    BadName { name: String, reason: String },
    /// The record name lies outside the configured zone.
    #[error(
        "{name} is not inside zone {zone}: configure the zone that contains it \
         (or delegate _acme-challenge with a CNAME into an updatable zone)"
    )]
    NotInZone { name: String, zone: String },
    /// The TSIG key name is not a domain name.
    #[error("invalid TSIG key name {name:?}: {reason}")]
    BadKeyName { name: String, reason: String },
    /// The TSIG algorithm is not one of those supported.
    #[error(
        "unsupported TSIG algorithm {algorithm:?}: use hmac-sha256, hmac-sha384 or hmac-sha512"
    )]
    BadAlgorithm { algorithm: String },
    /// The TSIG secret is not usable.
    #[error(
        "TSIG secret of key {key:?} is {reason}: give the base64 `secret` from the \
         server's key file"
    )]
    BadSecret { key: String, reason: &'static str },
    /// The server answered the update with an error code.
    #[error("DNS server {server} rejected the update of {name} with {rcode}: {hint}")]
    Refused {
        server: SocketAddr,
        name: String,
        /// The RCODE mnemonic, e.g. `NOTAUTH`.
        rcode: String,
        hint: &'static str,
    },
    /// No answer in time over UDP nor TCP.
    #[error("DNS server {server} did not answer within {timeout:?} (over UDP and TCP)")]
    Timeout {
        server: SocketAddr,
        timeout: Duration,
    },
    /// A socket operation failed.
    #[error("talking to DNS server {server}")]
    Io {
        server: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The server's answer was malformed, did not match the request or was
    /// not correctly signed.
    #[error("bad answer from DNS server {server}: {reason}")]
    BadResponse { server: SocketAddr, reason: String },
    /// Building or signing a message failed.
    #[error("building the DNS message for {name}")]
    Encode {
        name: String,
        #[source]
        source: ProtoError,
    },
    /// [`Rfc2136::wait_visible`] gave up.
    #[error(
        "DNS server {server} still does not answer TXT {value:?} at {name} after {timeout:?}{}",
        last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
    )]
    NotVisible {
        server: SocketAddr,
        name: String,
        value: String,
        timeout: Duration,
        last_error: Option<String>,
    },
}

/// What a validated [`Rfc2136`] resolves to.
struct Prepared {
    zone: Name,
    signer: TSigner,
}

impl Rfc2136 {
    /// Validate (zone/name syntax, algorithm known, secret is base64).
    pub fn validate(&self) -> Result<(), DnsError> {
        self.prepare().map(|_| ())
    }

    /// Add a TXT record `name` (absolute, e.g.
    /// `"_acme-challenge.www.acme.test."`; a missing trailing dot is implied)
    /// with `value`, TTL [`CHALLENGE_TTL`], via a TSIG-signed UPDATE. The name
    /// must be inside the zone. Adding a value that is already there succeeds.
    pub async fn add_txt(&self, name: &str, value: &str) -> Result<(), DnsError> {
        let prepared = self.prepare()?;
        let record_name = self.name_in_zone(&prepared.zone, name)?;
        let rrset = txt_rrset(record_name, value, CHALLENGE_TTL);
        // `name_in_zone` checked `zone.zone_of(name)`, which is what
        // `append` asserts.
        let message = update_message::append(rrset, prepared.zone.clone(), false, false);
        tracing::debug!(server = %self.server, name, "adding TXT record");
        self.send_update(&prepared.signer, message, name).await
    }

    /// Delete exactly that TXT value (leave others). Deleting a value that is
    /// not there succeeds.
    pub async fn remove_txt(&self, name: &str, value: &str) -> Result<(), DnsError> {
        let prepared = self.prepare()?;
        let record_name = self.name_in_zone(&prepared.zone, name)?;
        let rrset = txt_rrset(record_name, value, 0);
        // `name_in_zone` checked `zone.zone_of(name)`, which is what
        // `delete_by_rdata` asserts.
        let message = update_message::delete_by_rdata(rrset, prepared.zone.clone(), false);
        tracing::debug!(server = %self.server, name, "removing TXT record");
        self.send_update(&prepared.signer, message, name).await
    }

    /// Poll the server (plain query, no TSIG needed) until it answers the TXT
    /// value, or time out.
    pub async fn wait_visible(
        &self,
        name: &str,
        value: &str,
        timeout: Duration,
    ) -> Result<(), DnsError> {
        let prepared = self.prepare()?;
        let record_name = self.name_in_zone(&prepared.zone, name)?;
        let deadline = Instant::now() + timeout;
        let mut last_error: Option<String>;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Bound the whole query (UDP and the TCP retry) by the time left.
            let query = self.query_txt(&record_name, REQUEST_TIMEOUT);
            match tokio::time::timeout(left, query).await {
                Ok(Ok(values)) if values.iter().any(|v| v == value.as_bytes()) => return Ok(()),
                Ok(Ok(_)) => last_error = None,
                Ok(Err(e)) => last_error = Some(error_chain(&e)),
                Err(_) => last_error = Some(format!("no answer within {left:?}")),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DnsError::NotVisible {
                    server: self.server,
                    name: record_name.to_ascii(),
                    value: value.to_owned(),
                    timeout,
                    last_error,
                });
            }
            tokio::time::sleep(left.min(POLL_INTERVAL)).await;
        }
    }

    /// Parses and checks every field.
    fn prepare(&self) -> Result<Prepared, DnsError> {
        let zone = absolute_name(&self.zone).map_err(|reason| DnsError::BadZone {
            zone: self.zone.clone(),
            reason,
        })?;
        if zone.is_root() {
            return Err(DnsError::BadZone {
                zone: self.zone.clone(),
                reason: "the root zone cannot be updated".to_owned(),
            });
        }
        let key_name = absolute_name(&self.tsig_name).map_err(|reason| DnsError::BadKeyName {
            name: self.tsig_name.clone(),
            reason,
        })?;
        let algorithm = parse_algorithm(&self.tsig_algorithm)?;
        let key = decode_secret(&self.tsig_secret_b64).map_err(|reason| DnsError::BadSecret {
            key: self.tsig_name.clone(),
            reason,
        })?;
        // hickory keeps its own copy of the key for the signer's lifetime.
        let signer = TSigner::new(key.to_vec(), algorithm, key_name, TSIG_FUDGE).map_err(|_| {
            DnsError::BadAlgorithm {
                algorithm: self.tsig_algorithm.clone(),
            }
        })?;
        Ok(Prepared { zone, signer })
    }

    /// `name` as an absolute name inside `zone`.
    fn name_in_zone(&self, zone: &Name, name: &str) -> Result<Name, DnsError> {
        let parsed = absolute_name(name).map_err(|reason| DnsError::BadName {
            name: name.to_owned(),
            reason,
        })?;
        if !zone.zone_of(&parsed) {
            return Err(DnsError::NotInZone {
                name: parsed.to_ascii(),
                zone: zone.to_ascii(),
            });
        }
        Ok(parsed)
    }

    /// Signs `message`, sends it and checks the answer: NOERROR with a valid
    /// signature, or a [`DnsError::Refused`] naming the RCODE.
    async fn send_update(
        &self,
        signer: &TSigner,
        mut message: Message,
        name: &str,
    ) -> Result<(), DnsError> {
        let encode = |source| DnsError::Encode {
            name: name.to_owned(),
            source,
        };
        let verifier = message.finalize(signer, unix_now()).map_err(encode)?;
        let request = message.to_vec().map_err(encode)?;
        let response = self.exchange(&request, message.id()).await?;
        let parsed = self.parse_response(&response, OpCode::Update)?;
        let rcode = parsed.response_code();
        if rcode != ResponseCode::NoError {
            return Err(DnsError::Refused {
                server: self.server,
                name: name.to_owned(),
                rcode: rcode_name(rcode),
                hint: rcode_hint(rcode),
            });
        }
        let Some(mut verify) = verifier else {
            return Err(DnsError::BadResponse {
                server: self.server,
                reason: "the request was not signed".to_owned(),
            });
        };
        verify(&response).map_err(|e| DnsError::BadResponse {
            server: self.server,
            reason: format!(
                "the TSIG signature of the answer does not verify ({e}); is another \
                 server answering at this address?"
            ),
        })?;
        Ok(())
    }

    /// The TXT values (strings of each record concatenated) the server
    /// answers at `name`.
    async fn query_txt(&self, name: &Name, timeout: Duration) -> Result<Vec<Vec<u8>>, DnsError> {
        let mut message = Message::new();
        message
            .set_id(random_id())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(false)
            .add_query(Query::query(name.clone(), RecordType::TXT));
        let request = message.to_vec().map_err(|source| DnsError::Encode {
            name: name.to_ascii(),
            source,
        })?;
        let response = self
            .exchange_with_timeout(&request, message.id(), timeout)
            .await?;
        let parsed = self.parse_response(&response, OpCode::Query)?;
        match parsed.response_code() {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            rcode => {
                return Err(DnsError::BadResponse {
                    server: self.server,
                    reason: format!("the TXT query of {name} failed with {}", rcode_name(rcode)),
                })
            }
        }
        Ok(parsed
            .answers()
            .iter()
            .filter(|r| r.name() == name)
            .filter_map(|r| match r.data() {
                RData::TXT(txt) => Some(txt.iter().flat_map(|s| s.iter().copied()).collect()),
                _ => None,
            })
            .collect())
    }

    /// Decodes an answer and checks it is a response to an `op` request.
    fn parse_response(&self, response: &[u8], op: OpCode) -> Result<Message, DnsError> {
        let parsed = Message::from_vec(response).map_err(|e| DnsError::BadResponse {
            server: self.server,
            reason: format!("undecodable message ({e})"),
        })?;
        if parsed.message_type() != MessageType::Response || parsed.op_code() != op {
            return Err(DnsError::BadResponse {
                server: self.server,
                reason: format!(
                    "expected a {op:?} response, got a {:?} {:?}",
                    parsed.op_code(),
                    parsed.message_type()
                ),
            });
        }
        Ok(parsed)
    }

    /// [`Rfc2136::exchange_with_timeout`] with [`REQUEST_TIMEOUT`].
    async fn exchange(&self, request: &[u8], id: u16) -> Result<Vec<u8>, DnsError> {
        self.exchange_with_timeout(request, id, REQUEST_TIMEOUT)
            .await
    }

    /// Sends `request` over UDP and returns the answer with the same `id`;
    /// repeats it once over TCP when UDP fails, times out or is truncated.
    /// Each transport gets `timeout`.
    async fn exchange_with_timeout(
        &self,
        request: &[u8],
        id: u16,
        timeout: Duration,
    ) -> Result<Vec<u8>, DnsError> {
        match self.exchange_udp(request, id, timeout).await {
            Ok(response) if !is_truncated(&response) => return Ok(response),
            Ok(_) => {
                tracing::debug!(server = %self.server, "UDP answer truncated; retrying over TCP")
            }
            Err(e) => tracing::debug!(
                server = %self.server,
                error = %error_chain(&e),
                "UDP exchange failed; retrying over TCP"
            ),
        }
        self.exchange_tcp(request, id, timeout).await
    }

    async fn exchange_udp(
        &self,
        request: &[u8],
        id: u16,
        timeout: Duration,
    ) -> Result<Vec<u8>, DnsError> {
        let io = |source| DnsError::Io {
            server: self.server,
            source,
        };
        let exchange = async {
            let local: SocketAddr = if self.server.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = UdpSocket::bind(local).await.map_err(io)?;
            // Connected: the kernel drops datagrams from other sources.
            socket.connect(self.server).await.map_err(io)?;
            socket.send(request).await.map_err(io)?;
            let mut buf = vec![0; usize::from(u16::MAX)];
            loop {
                let len = socket.recv(&mut buf).await.map_err(io)?;
                // A late answer to an earlier request: keep waiting.
                if message_id(&buf[..len]) == Some(id) {
                    buf.truncate(len);
                    return Ok(buf);
                }
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| DnsError::Timeout {
                server: self.server,
                timeout,
            })?
    }

    async fn exchange_tcp(
        &self,
        request: &[u8],
        id: u16,
        timeout: Duration,
    ) -> Result<Vec<u8>, DnsError> {
        let io = |source| DnsError::Io {
            server: self.server,
            source,
        };
        let len = u16::try_from(request.len()).map_err(|_| DnsError::BadResponse {
            server: self.server,
            reason: "request too large for TCP framing".to_owned(),
        })?;
        let exchange = async {
            let mut stream = TcpStream::connect(self.server).await.map_err(io)?;
            let mut framed = Vec::with_capacity(request.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(request);
            stream.write_all(&framed).await.map_err(io)?;
            let mut len = [0; 2];
            stream.read_exact(&mut len).await.map_err(io)?;
            let mut response = vec![0; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut response).await.map_err(io)?;
            Ok(response)
        };
        let response = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| DnsError::Timeout {
                server: self.server,
                timeout,
            })??;
        if message_id(&response) != Some(id) {
            return Err(DnsError::BadResponse {
                server: self.server,
                reason: "the TCP answer does not match the request id".to_owned(),
            });
        }
        Ok(response)
    }
}

/// The `_acme-challenge.<domain>.` name for a domain (strip a leading `*.` for
/// wildcards).
pub fn challenge_name(domain: &str) -> String {
    let domain = domain.trim();
    let domain = domain.strip_prefix("*.").unwrap_or(domain);
    let domain = domain.trim_end_matches('.');
    format!("_acme-challenge.{domain}.")
}

/// Parses `text` as a domain name, absolute whether or not it ends in a dot.
fn absolute_name(text: &str) -> Result<Name, String> {
    if text.is_empty() {
        return Err("empty name".to_owned());
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters".to_owned());
    }
    if text.contains("..") || text.starts_with('.') && text != "." {
        return Err("contains an empty label".to_owned());
    }
    let mut name = Name::from_ascii(text).map_err(|e| e.to_string())?;
    name.set_fqdn(true);
    Ok(name)
}

fn parse_algorithm(text: &str) -> Result<TsigAlgorithm, DnsError> {
    let wanted = text.trim().trim_end_matches('.');
    ALGORITHMS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
        .map(|(_, algorithm)| algorithm.clone())
        .ok_or_else(|| DnsError::BadAlgorithm {
            algorithm: text.to_owned(),
        })
}

/// The key bytes of a base64 secret; whitespace (line breaks in key files)
/// is ignored.
fn decode_secret(secret: &Secret) -> Result<Zeroizing<Vec<u8>>, &'static str> {
    let text = secret.expose_str().ok_or("not text")?;
    let compact: Zeroizing<String> =
        Zeroizing::new(text.chars().filter(|c| !c.is_ascii_whitespace()).collect());
    if compact.is_empty() {
        return Err("empty");
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map(Zeroizing::new)
        .map_err(|_| "not valid base64")?;
    if key.is_empty() {
        return Err("empty");
    }
    Ok(key)
}

/// One TXT record holding `value`, split into the 255-byte character strings
/// DNS requires. Update and delete build it the same way, so a delete
/// matches the record an add created.
fn txt_rrset(name: Name, value: &str, ttl: u32) -> RecordSet {
    let mut chunks: Vec<&[u8]> = value.as_bytes().chunks(255).collect();
    if chunks.is_empty() {
        chunks.push(b"");
    }
    let record = Record::from_rdata(name, ttl, RData::TXT(TXT::from_bytes(chunks)));
    RecordSet::from(record)
}

fn message_id(message: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*message.first()?, *message.get(1)?]))
}

/// The TC bit of a DNS header.
fn is_truncated(message: &[u8]) -> bool {
    message.get(2).is_some_and(|flags| flags & 0x02 != 0)
}

fn random_id() -> u16 {
    let mut bytes = [0; 2];
    // A failing system RNG only makes the id predictable; answers are still
    // matched by the connected socket and, for updates, by TSIG.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    u16::from_be_bytes(bytes)
}

/// Seconds since the epoch for the TSIG time field.
fn unix_now() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

fn rcode_name(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".to_owned(),
        ResponseCode::FormErr => "FORMERR".to_owned(),
        ResponseCode::ServFail => "SERVFAIL".to_owned(),
        ResponseCode::NXDomain => "NXDOMAIN".to_owned(),
        ResponseCode::NotImp => "NOTIMP".to_owned(),
        ResponseCode::Refused => "REFUSED".to_owned(),
        ResponseCode::YXDomain => "YXDOMAIN".to_owned(),
        ResponseCode::YXRRSet => "YXRRSET".to_owned(),
        ResponseCode::NXRRSet => "NXRRSET".to_owned(),
        ResponseCode::NotAuth => "NOTAUTH".to_owned(),
        ResponseCode::NotZone => "NOTZONE".to_owned(),
        other => format!("RCODE {}", u16::from(other)),
    }
}

fn rcode_hint(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NotAuth | ResponseCode::Refused => {
            "bad TSIG key or update not allowed; check the key name, algorithm and secret \
             against the server's key, that its allow-update/update-policy names this key \
             for the zone, that the server is the zone's primary, and that both clocks agree"
        }
        ResponseCode::NotZone => "the name is not in the zone the server holds",
        ResponseCode::ServFail => "the server could not apply the update; see its log",
        ResponseCode::NotImp => "the server does not implement dynamic updates",
        ResponseCode::FormErr => "the server could not parse the update",
        _ => "unexpected response code",
    }
}

/// An error and its sources on one line, for logs and
/// [`DnsError::NotVisible`].
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

impl fmt::Display for Rfc2136 {
    /// `zone via server (key name)`, without the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} via {} (key {})",
            self.zone, self.server, self.tsig_name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Rfc2136 {
        Rfc2136 {
            server: "127.0.0.1:9".parse().unwrap(),
            zone: "acme.test.".to_owned(),
            tsig_name: "certfleet-test".to_owned(),
            tsig_algorithm: "hmac-sha256".to_owned(),
            tsig_secret_b64: Secret::from(
                "c2VjcmV0LWtleS1ieXRlcy0xMjM0NTY3ODkwYWJjZGVm".to_owned(),
            ),
        }
    }

    #[test]
    fn challenge_names() {
        assert_eq!(
            challenge_name("www.acme.test"),
            "_acme-challenge.www.acme.test."
        );
        assert_eq!(
            challenge_name("www.acme.test."),
            "_acme-challenge.www.acme.test."
        );
        assert_eq!(challenge_name("*.acme.test"), "_acme-challenge.acme.test.");
        assert_eq!(challenge_name("acme.test"), "_acme-challenge.acme.test.");
    }

    #[test]
    fn accepts_a_good_config() {
        config().validate().unwrap();
        let mut c = config();
        c.zone = "acme.test".to_owned();
        c.tsig_algorithm = "HMAC-SHA512".to_owned();
        c.validate().unwrap();
        c.tsig_algorithm = "hmac-sha384".to_owned();
        // Key files may wrap long secrets.
        c.tsig_secret_b64 = Secret::from("c2VjcmV0LWtl\n eS1ieXRlcw==".to_owned());
        c.validate().unwrap();
    }

    #[test]
    fn rejects_bad_algorithm() {
        for algorithm in ["hmac-md5", "hmac-sha1", "", "sha256"] {
            let mut c = config();
            c.tsig_algorithm = algorithm.to_owned();
            let err = c.validate().unwrap_err();
            assert!(matches!(err, DnsError::BadAlgorithm { .. }), "{err:?}");
            assert!(err.to_string().contains("hmac-sha256"), "{err}");
        }
    }

    #[test]
    fn rejects_bad_secret() {
        for secret in ["not base64!", "", "   ", "YWJj*"] {
            let mut c = config();
            c.tsig_secret_b64 = Secret::from(secret.to_owned());
            let err = c.validate().unwrap_err();
            assert!(
                matches!(err, DnsError::BadSecret { .. }),
                "{secret:?}: {err:?}"
            );
            assert!(!err.to_string().contains(secret) || secret.trim().is_empty());
        }
        let mut c = config();
        c.tsig_secret_b64 = Secret::new(vec![0xff, 0xfe]);
        assert!(matches!(c.validate(), Err(DnsError::BadSecret { .. })));
    }

    #[test]
    fn secret_stays_out_of_errors_and_debug() {
        let mut c = config();
        c.tsig_algorithm = "bogus".to_owned();
        let err = c.validate().unwrap_err();
        assert!(!format!("{err} {err:?}").contains("c2VjcmV0"));
        assert!(!format!("{c:?} {c}").contains("c2VjcmV0"));
    }

    #[test]
    fn rejects_bad_zone_and_key_name() {
        for zone in ["", ".", "a..b", "acme test", "x".repeat(64).as_str()] {
            let mut c = config();
            c.zone = zone.to_owned();
            assert!(
                matches!(c.validate(), Err(DnsError::BadZone { .. })),
                "{zone:?}"
            );
        }
        let mut c = config();
        c.tsig_name = "bad key".to_owned();
        assert!(matches!(c.validate(), Err(DnsError::BadKeyName { .. })));
    }

    #[test]
    fn name_must_be_inside_zone() {
        let c = config();
        let zone = c.prepare().unwrap().zone;
        for name in [
            "_acme-challenge.www.example.test.",
            "_acme-challenge.test.",
            "_acme-challenge.notacme.test",
        ] {
            let err = c.name_in_zone(&zone, name).unwrap_err();
            assert!(matches!(err, DnsError::NotInZone { .. }), "{name}: {err:?}");
            assert!(
                err.to_string().contains("not inside zone acme.test."),
                "{err}"
            );
        }
        for name in ["", "a..acme.test", "_acme challenge.acme.test"] {
            let err = c.name_in_zone(&zone, name).unwrap_err();
            assert!(matches!(err, DnsError::BadName { .. }), "{name:?}: {err:?}");
        }
        let inside = c
            .name_in_zone(&zone, "_acme-challenge.WWW.Acme.Test")
            .unwrap();
        assert!(inside.is_fqdn());
        c.name_in_zone(&zone, "acme.test.").unwrap();
    }

    #[tokio::test]
    async fn operations_check_the_name_before_sending() {
        // Port 9 on loopback: nothing must be sent, so nothing can time out.
        let c = config();
        let outside = "_acme-challenge.example.test.";
        assert!(matches!(
            c.add_txt(outside, "v").await,
            Err(DnsError::NotInZone { .. })
        ));
        assert!(matches!(
            c.remove_txt(outside, "v").await,
            Err(DnsError::NotInZone { .. })
        ));
        assert!(matches!(
            c.wait_visible(outside, "v", Duration::from_secs(1)).await,
            Err(DnsError::NotInZone { .. })
        ));
    }

    #[test]
    fn long_values_are_split_into_character_strings() {
        let name = Name::from_ascii("t.acme.test.").unwrap();
        let value = "x".repeat(600);
        let rrset = txt_rrset(name, &value, 60);
        let record = rrset.records_without_rrsigs().next().unwrap();
        let RData::TXT(txt) = record.data() else {
            panic!("not TXT: {record:?}")
        };
        let lens: Vec<usize> = txt.iter().map(|s| s.len()).collect();
        assert_eq!(lens, [255, 255, 90]);
        let empty = txt_rrset(Name::from_ascii("t.acme.test.").unwrap(), "", 60);
        let record = empty.records_without_rrsigs().next().unwrap();
        let RData::TXT(txt) = record.data() else {
            panic!("not TXT: {record:?}")
        };
        assert_eq!(txt.iter().count(), 1);
    }

    #[test]
    fn header_helpers_tolerate_short_input() {
        assert_eq!(message_id(&[]), None);
        assert_eq!(message_id(&[1]), None);
        assert_eq!(message_id(&[1, 2]), Some(0x0102));
        assert!(!is_truncated(&[0, 0]));
        assert!(is_truncated(&[0, 0, 0x02]));
    }

    #[test]
    fn refusals_explain_themselves() {
        let err = DnsError::Refused {
            server: "127.0.0.1:53".parse().unwrap(),
            name: "_acme-challenge.acme.test.".to_owned(),
            rcode: rcode_name(ResponseCode::NotAuth),
            hint: rcode_hint(ResponseCode::NotAuth),
        };
        let text = err.to_string();
        assert!(text.contains("NOTAUTH"), "{text}");
        assert!(
            text.contains("bad TSIG key or update not allowed"),
            "{text}"
        );
    }
}
