//! The QUIC side of the controller: accept loop → one task per connection
//! (with a span naming the peer) → one task per request stream.
//!
//! A connection is authenticated by TLS (client certificate from the identity
//! CA) and then against the store (the credential must still be known and
//! not revoked). Its first stream carries the version exchange. A peer that
//! sends a malformed or oversized frame has its connection closed; the
//! controller goes on serving everyone else.

use std::sync::Arc;

use certfleet_protocol::message::{ErrorKind, Hello, HelloReply, Request, Response, RpcError};
use certfleet_protocol::{frame, DEFAULT_MAX_FRAME, PROTOCOL};
use quinn::VarInt;
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

use crate::identity::{peer_identity, IdentityCa, PeerIdentity, Role};
use crate::service::{Service, ServiceError};
use crate::store::{self, Store};

/// QUIC application close codes.
pub(super) const CLOSE_UNAUTHORIZED: u32 = 1;
pub(super) const CLOSE_PROTOCOL: u32 = 2;
pub(super) const CLOSE_VERSION: u32 = 3;

pub(super) struct Ctx {
    pub(super) service: Arc<Service>,
    pub(super) store: Store,
    #[allow(dead_code)] // used by enrollment and credential creation
    pub(super) identity: Arc<IdentityCa>,
}

pub(super) async fn accept_loop(
    endpoint: quinn::Endpoint,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.changed() => return,
        };
        let Some(incoming) = incoming else { return };
        let remote = incoming.remote_address();
        let ctx = ctx.clone();
        tokio::spawn(
            async move {
                match incoming.await {
                    Ok(conn) => serve_connection(conn, ctx).await,
                    Err(e) => debug!(error = %e, "handshake failed"),
                }
            }
            .instrument(tracing::info_span!("conn", %remote)),
        );
    }
}

async fn authenticate(conn: &quinn::Connection, ctx: &Ctx) -> Result<PeerIdentity, String> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| "no client certificate".to_string())?;
    let leaf = certs
        .first()
        .ok_or_else(|| "no client certificate".to_string())?;
    let peer = peer_identity(leaf).map_err(|e| e.to_string())?;
    let serial = peer.serial.clone();
    let row = ctx
        .store
        .call(move |c| store::credential_get(c, &serial))
        .await
        .map_err(|e| format!("store: {e}"))?;
    match row {
        Some(r) if r.revoked_at.is_none() && r.role == peer.role.as_str() => Ok(peer),
        Some(r) if r.revoked_at.is_some() => Err("credential has been revoked".into()),
        _ => Err("credential is not known to this controller".into()),
    }
}

async fn serve_connection(conn: quinn::Connection, ctx: Arc<Ctx>) {
    let peer = match authenticate(&conn, &ctx).await {
        Ok(p) => p,
        Err(reason) => {
            warn!(%reason, "refusing connection");
            conn.close(VarInt::from_u32(CLOSE_UNAUTHORIZED), reason.as_bytes());
            return;
        }
    };
    let span = tracing::info_span!("peer", actor = %peer.actor());
    async move {
        // The first stream carries the version exchange.
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "closed before hello");
                return;
            }
        };
        let hello: Hello = match frame::read(&mut recv, DEFAULT_MAX_FRAME).await {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "malformed hello; closing connection");
                conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"malformed hello");
                return;
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
        if frame::write(&mut send, &reply, DEFAULT_MAX_FRAME)
            .await
            .is_err()
        {
            return;
        }
        let _ = send.finish();
        if refused {
            info!(software = %hello.software, "refusing peer of incompatible version");
            let _ = send.stopped().await;
            conn.close(
                VarInt::from_u32(CLOSE_VERSION),
                b"incompatible protocol version",
            );
            return;
        }
        debug!(software = %hello.software, "peer connected");
        let peer = Arc::new(peer);
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(e) => {
                    debug!(reason = %e, "connection ended");
                    return;
                }
            };
            let ctx = ctx.clone();
            let conn = conn.clone();
            let peer = peer.clone();
            tokio::spawn(
                async move { serve_stream(conn, send, recv, ctx, peer).await }.in_current_span(),
            );
        }
    }
    .instrument(span)
    .await
}

async fn serve_stream(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: Arc<Ctx>,
    peer: Arc<PeerIdentity>,
) {
    let request: Request = match frame::read(&mut recv, DEFAULT_MAX_FRAME).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "malformed request; closing connection");
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"malformed frame");
            return;
        }
    };
    let response = match peer.role {
        Role::Admin => admin_request(&ctx, &peer, request).await,
        Role::Agent => Response::Error(RpcError {
            kind: ErrorKind::PermissionDenied,
            message: "agents may not make admin requests".into(),
        }),
    };
    match frame::write(&mut send, &response, DEFAULT_MAX_FRAME).await {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => warn!(error = %e, "could not send response"),
    }
}

/// What an admin request changes, for the audit log of refused requests.
fn mutation(request: &Request) -> Option<(&'static str, String)> {
    Some(match request {
        Request::IssuerAdd { name, .. } => ("issuer.add", name.clone()),
        Request::InstanceCreate(spec) => ("instance.create", spec.issuer.clone()),
        Request::CertApply { instance, .. } => ("cert.apply", instance.clone()),
        Request::CertDownload { id } => ("key.release", id.clone()),
        Request::CertRevoke { id, .. } => ("cert.revoke", id.clone()),
        _ => return None,
    })
}

async fn admin_request(ctx: &Ctx, peer: &PeerIdentity, request: Request) -> Response {
    let svc = &ctx.service;
    let actor = peer.actor();
    let audited = mutation(&request);
    let result: Result<Response, ServiceError> = match request {
        Request::IssuerAdd { name, kind, key } => svc
            .issuer_add(actor.clone(), name, kind, key)
            .await
            .map(Response::Issuer),
        Request::IssuerList => svc.issuer_list().await.map(Response::Issuers),
        Request::InstanceCreate(spec) => svc
            .instance_create(actor.clone(), spec)
            .await
            .map(Response::Instance),
        Request::InstanceList => svc.instance_list().await.map(Response::Instances),
        Request::InstanceShow { id } => svc.instance_show(id).await.map(Response::Instance),
        Request::CertApply { instance, domains } => svc
            .cert_apply(actor.clone(), instance, domains)
            .await
            .map(Response::Application),
        Request::ApplicationShow { id } => {
            svc.application_show(id).await.map(Response::Application)
        }
        Request::CertList {
            expiring_within_secs,
        } => svc
            .cert_list(expiring_within_secs)
            .await
            .map(Response::Certificates),
        Request::CertShow { id } => svc.cert_show(id).await.map(Response::Certificate),
        Request::CertDownload { id } => svc
            .cert_download(actor.clone(), id)
            .await
            .map(Response::Bundle),
        Request::CertRevoke { id, reason } => svc
            .cert_revoke(actor.clone(), id, reason)
            .await
            .map(Response::Certificate),
        Request::CaCrl { issuer } => svc.crl(issuer).await.map(Response::Crl),
        Request::AuditList { limit } => svc.audit_list(limit).await.map(Response::Audit),
    };
    match result {
        Ok(r) => r,
        Err(e) => {
            if let Some((action, target)) = audited {
                svc.audit_failure(actor, action, target, &e).await;
            }
            Response::Error(e.to_rpc())
        }
    }
}
