//! Plain-HTTP CRL endpoint: `GET /crl/<issuer>.crl` returns the issuer's
//! current DER CRL, the URL placed in every leaf's CRL distribution point.
//! Relying parties fetch CRLs without TLS (RFC 5280 §4.2.1.13), and the CRL
//! is signed, so plain HTTP is the convention.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::error::ServiceError;

use crate::service::Service;

pub(super) async fn serve(
    listener: TcpListener,
    service: Arc<Service>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "CRL endpoint accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let service = service.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, service.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!(%remote, error = %e, "CRL connection ended with error");
            }
        });
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    service: Arc<Service>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served here",
        ));
    }
    let Some(issuer) = req
        .uri()
        .path()
        .strip_prefix("/crl/")
        .and_then(|p| p.strip_suffix(".crl"))
    else {
        return Ok(text(StatusCode::NOT_FOUND, "CRLs are at /crl/<issuer>.crl"));
    };
    match service.crl(Some(issuer.to_string())).await {
        Ok(crl) => {
            let mut r = Response::new(Full::new(Bytes::from(crl.der)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/pkix-crl"),
            );
            Ok(r)
        }
        Err(ServiceError::NotFound { .. }) => Ok(text(StatusCode::NOT_FOUND, "no such issuer")),
        Err(e) => {
            warn!(error = %e.to_rpc().message, "could not produce CRL");
            Ok(text(StatusCode::INTERNAL_SERVER_ERROR, "CRL unavailable"))
        }
    }
}
