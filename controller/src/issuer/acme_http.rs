//! The HTTP client instant-acme talks to the CA through, wrapped so that a
//! failure says what went wrong in the operator's words: an untrusted TLS
//! certificate (and the `--ca-bundle` fix), an HTTP error status from the
//! directory URL, a refused or timed-out connection. Without it those reach
//! the user as hyper's "client error (Connect)" or as a JSON error about
//! the body of a 404 page.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use hyper::body::Bytes;
use hyper::{Method, Request};
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

/// How long a TCP connection to the CA may take to open. Without a bound a
/// black-holed address waits for the kernel's SYN retries (about two
/// minutes) before anyone hears of it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Why an HTTP exchange with the ACME server failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpFailure {
    #[error(
        "{url} answered HTTP {status}; check the ACME directory URL (for Let's Encrypt: \
         https://acme-v02.api.letsencrypt.org/directory)"
    )]
    Status {
        url: String,
        status: hyper::StatusCode,
    },
    #[error(
        "the TLS certificate of {url} is not trusted ({reason}: {detail}); if the CA uses a \
         private root, give it with `certfleet issuer add NAME --kind acme --ca-bundle FILE`"
    )]
    Untrusted {
        url: String,
        reason: &'static str,
        detail: String,
    },
    #[error(
        "cannot connect to {url}: connection refused; check that the CA is running and \
         listening on that host and port"
    )]
    Refused { url: String },
    #[error(
        "cannot connect to {url}: timed out; check that the host is reachable from the \
         controller (firewall, proxy, routing)"
    )]
    TimedOut { url: String },
    #[error("cannot reach {url}: {detail}")]
    Other { url: String, detail: String },
}

/// The controller's HTTPS client for one ACME issuer.
pub struct AcmeHttp<C>(pub C);

impl<C: HttpClient> HttpClient for AcmeHttp<C> {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let url = req.uri().to_string();
        // Every ACME resource but the directory is fetched with POST (or
        // HEAD for nonces) and answers errors as problem documents, which
        // instant-acme reports itself. A GET is the directory: instant-acme
        // parses its body as JSON whatever the status.
        let is_get = req.method() == Method::GET;
        let fut = self.0.request(req);
        Box::pin(async move {
            match fut.await {
                Ok(rsp) if is_get && !rsp.parts.status.is_success() => {
                    Err(instant_acme::Error::Other(Box::new(HttpFailure::Status {
                        url,
                        status: rsp.parts.status,
                    })))
                }
                Ok(rsp) => Ok(rsp),
                Err(instant_acme::Error::Other(e)) => Err(instant_acme::Error::Other(Box::new(
                    classify(&url, e.as_ref()),
                ))),
                Err(other) => Err(other),
            }
        })
    }
}

/// The [`HttpFailure`] inside an instant-acme error, if the request failed
/// in transport (as opposed to an ACME problem document).
pub fn failure(e: &instant_acme::Error) -> Option<&HttpFailure> {
    match e {
        instant_acme::Error::Other(inner) => inner.downcast_ref::<HttpFailure>(),
        _ => None,
    }
}

/// Names the cause of a transport error by walking its source chain: the
/// rustls certificate error or the socket error under hyper's wrappers.
fn classify(url: &str, e: &(dyn StdError + 'static)) -> HttpFailure {
    let url = url.to_string();
    // Depth-first over `source()` and, for an io::Error, its payload:
    // hyper-rustls wraps tokio-rustls's io::Error (which carries the rustls
    // error) in another io::Error, and an io::Error's `source()` skips its
    // payload.
    let mut stack: Vec<&(dyn StdError + 'static)> = vec![e];
    let mut seen = 0;
    while let Some(err) = stack.pop() {
        seen += 1;
        if seen > 32 {
            break;
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            if let Some(f) = untrusted(&url, tls) {
                return f;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return HttpFailure::Refused { url },
                std::io::ErrorKind::TimedOut => return HttpFailure::TimedOut { url },
                _ => {}
            }
            if let Some(inner) = io.get_ref() {
                stack.push(inner);
            }
        }
        if let Some(source) = err.source() {
            stack.push(source);
        }
    }
    let mut detail = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    HttpFailure::Other { url, detail }
}

fn untrusted(url: &str, e: &rustls::Error) -> Option<HttpFailure> {
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(cert) = e else {
        return None;
    };
    let reason = match cert {
        C::UnknownIssuer => "unknown issuer",
        C::Expired | C::ExpiredContext { .. } => "expired",
        C::NotValidYet | C::NotValidYetContext { .. } => "not yet valid",
        C::NotValidForName | C::NotValidForNameContext { .. } => "name mismatch",
        C::Revoked => "revoked",
        C::BadSignature => "bad signature",
        _ => "rejected",
    };
    Some(HttpFailure::Untrusted {
        url: url.to_string(),
        reason,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_under_wrappers_are_found() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let f = classify("https://ca.test/dir", &refused);
        assert!(matches!(f, HttpFailure::Refused { .. }), "{f}");
        assert!(f.to_string().contains("connection refused"));

        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        // As hyper-rustls hands it over: an io::Error around tokio-rustls's.
        let wrapped = std::io::Error::other(tls);
        let f = classify("https://ca.test/dir", &wrapped);
        let text = f.to_string();
        assert!(text.contains("unknown issuer"), "{text}");
        assert!(text.contains("--ca-bundle"), "{text}");
    }

    #[test]
    fn every_cause_has_its_words() {
        let url = "https://ca.test/dir";
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert!(classify(url, &timed_out).to_string().contains("timed out"));
        for (cert, words) in [
            (rustls::CertificateError::Expired, "expired"),
            (rustls::CertificateError::NotValidForName, "name mismatch"),
            (rustls::CertificateError::NotValidYet, "not yet valid"),
        ] {
            let e = std::io::Error::other(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(cert),
            ));
            let text = classify(url, &e).to_string();
            assert!(
                text.contains(words) && text.contains("--ca-bundle"),
                "{text}"
            );
        }
        let status = HttpFailure::Status {
            url: url.into(),
            status: hyper::StatusCode::NOT_FOUND,
        };
        assert!(status.to_string().contains("HTTP 404 Not Found"));
        let other = std::io::Error::other("dns error: no such host");
        let text = classify(url, &other).to_string();
        assert!(
            text.contains("no such host") && text.contains(url),
            "{text}"
        );
    }
}
