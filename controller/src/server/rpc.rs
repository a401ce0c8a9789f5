//! The QUIC side of the controller: accept loop → one task per connection
//! (with a span naming the peer) → one task per request stream.
//!
//! A connection is authenticated by TLS (client certificate from the identity
//! CA) and then against the store (the credential must still be known and
//! not revoked). Its first stream carries the version exchange. Every frame
//! is read through [`super::intake`] (deadlines, per-role and per-request
//! limits, memory budgets); a connection without a certificate is served by
//! [`super::enroll`] and may only enroll. A peer that sends a malformed
//! frame, or misses a deadline, has its connection closed; a request over
//! its limits is answered with an error. The controller goes on serving
//! everyone else.

use std::sync::Arc;

use certfleet_protocol::limits::{self, Caller};
use certfleet_protocol::message::{
    AgentCommand, AgentCommandReply, ErrorKind, Poke, Request, Response, RpcError,
};
use certfleet_protocol::{frame, DEFAULT_MAX_FRAME};
use quinn::VarInt;
use rustls_pki_types::CertificateDer;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use super::admission;
use super::ctx::{Ctx, Revoked};
use super::intake::{self, Budgets, Refusal};
use crate::agent_bus::SessionEvent;
use crate::identity::{peer_identity, PeerIdentity, Role};

use crate::error::ServiceError;

use crate::service::{Issue, Mode};
use crate::store::{self};

/// QUIC application close codes.
const CLOSE_UNAUTHORIZED: u32 = certfleet_protocol::close::UNAUTHORIZED;
const CLOSE_PROTOCOL: u32 = certfleet_protocol::close::PROTOCOL;
const CLOSE_AGENT_REMOVED: u32 = certfleet_protocol::close::AGENT_REMOVED;
const CLOSE_LIMIT: u32 = certfleet_protocol::close::LIMIT;

/// The QUIC receive window of a connection once its peer is authenticated
/// (before, it is the endpoint's small initial window).
const AUTHENTICATED_RECEIVE_WINDOW: u32 = 1024 * 1024;

pub(super) async fn accept_loop(
    endpoint: quinn::Endpoint,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    debug!(
        handshakes = ctx.admission.limit(),
        "admitting handshakes in progress at most"
    );
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.changed() => return,
        };
        let Some(incoming) = incoming else { return };
        let remote = incoming.remote_address();
        // Decided before any crypto is done for the peer.
        let Some((incoming, ticket)) = admission::decide(&ctx.admission, incoming) else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(
            async move {
                if let Some(conn) = admission::handshake(incoming, ticket).await {
                    serve_connection(conn, ctx, Instant::now()).await;
                }
            }
            .instrument(tracing::info_span!("conn", %remote)),
        );
    }
}

/// Why a connection is refused: the close code and the reason text.
type ConnRefusal = (u32, String);

fn unauthorized(reason: impl Into<String>) -> ConnRefusal {
    (CLOSE_UNAUTHORIZED, reason.into())
}

/// Who the peer is: `None` for a connection without a client certificate
/// (enrollment only), or an identity that is still valid in the store. An
/// agent authenticated by a newer identity retires its older ones
/// (`agent_identity.rs`); a removed agent is told so with its own close code.
async fn authenticate(
    conn: &quinn::Connection,
    ctx: &Ctx,
) -> Result<Option<PeerIdentity>, ConnRefusal> {
    let Some(certs) = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
    else {
        return Ok(None);
    };
    let Some(leaf) = certs.first() else {
        return Ok(None);
    };
    let peer = peer_identity(leaf).map_err(|e| unauthorized(e.to_string()))?;
    // One trip to the store answers both questions: is the credential
    // known and not revoked, and (for an agent) is the agent not removed.
    let serial = peer.serial.clone();
    let agent = (peer.role == Role::Agent).then(|| peer.subject.clone());
    let now = ctx.service.now().unix_timestamp();
    let (row, agent_known, removed_at) = ctx
        .store
        .call(move |c| -> Result<_, store::StoreError> {
            let row = store::credential_get(c, &serial)?;
            let Some(id) = agent else {
                return Ok((row, true, None));
            };
            let agent_row = store::agent_get(c, &id)?;
            let removed_at = agent_row.as_ref().and_then(|a| a.removed_at);
            let valid = row.as_ref().is_some_and(|r| {
                r.revoked_at.is_none() && r.role == Role::Agent.as_str() && r.subject == id
            });
            if valid && removed_at.is_none() {
                crate::agent_identity::retire_superseded(c, &id, &serial, now)?;
            }
            Ok((row, agent_row.is_some(), removed_at))
        })
        .await
        .map_err(|e| unauthorized(format!("store: {e}")))?;
    if peer.role == Role::Agent {
        if let Some(at) = removed_at {
            return Err((CLOSE_AGENT_REMOVED, agent_removed(&peer.subject, Some(at))));
        }
    }
    match row {
        Some(r) if r.revoked_at.is_some() => {
            return Err(unauthorized(if peer.role == Role::Agent {
                // Only a renewal or a re-enrollment revokes the identity of
                // an agent that is still there.
                format!(
                    "the identity of agent {} (serial {}) was replaced by a newer one (renewed \
                     and used, or re-enrolled); this copy of it is refused. Use the host that \
                     holds the newer identity, or run `certfleet agent token create --reenroll \
                     {}` and `certfleet-agent enroll --reenroll …` on this one",
                    peer.subject, peer.serial, peer.subject
                )
            } else {
                format!(
                    "the credential of admin {:?} (serial {}) has been revoked; ask another \
                     admin for a new one, or run `certfleet admin create NAME --state-dir DIR \
                     --out FILE` on the controller host",
                    peer.subject, peer.serial
                )
            }));
        }
        Some(r) if r.role == peer.role.as_str() && r.subject == peer.subject && agent_known => {}
        _ => return Err(unauthorized("credential is not known to this controller")),
    }
    Ok(Some(peer))
}

/// The close reason for an agent removed (at `at`, Unix seconds, when
/// known).
fn agent_removed(agent: &str, at: Option<i64>) -> String {
    let when = at
        .map(|t| format!(" at {}", certfleet_protocol::message::Timestamp(t)))
        .unwrap_or_default();
    format!(
        "agent {agent} has been removed from this controller{when}; its identity will not be \
         accepted again"
    )
}

async fn serve_connection(conn: quinn::Connection, ctx: Arc<Ctx>, opened: Instant) {
    let peer = match authenticate(&conn, &ctx).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            let span = tracing::info_span!("peer", actor = "enrolling");
            return super::enroll::serve(conn, ctx, opened)
                .instrument(span)
                .await;
        }
        Err((code, reason)) => {
            warn!(%reason, "refusing connection");
            conn.close(VarInt::from_u32(code), reason.as_bytes());
            return;
        }
    };
    conn.set_receive_window(VarInt::from_u32(AUTHENTICATED_RECEIVE_WINDOW));
    ctx.admission.authenticated(conn.remote_address().ip());
    let span = tracing::info_span!("peer", actor = %peer.actor());
    async move {
        let budgets = Budgets::for_connection(&ctx.budget);
        if let Err(reason) = super::hello::exchange(&conn, &budgets, opened).await {
            debug!(%reason, "no session");
            return;
        }
        if peer.role == Role::Admin {
            tokio::spawn(
                close_when_revoked(
                    conn.clone(),
                    peer.serial.clone(),
                    ctx.admin_revoked.subscribe(),
                )
                .in_current_span(),
            );
        }
        let session = (peer.role == Role::Agent).then(|| {
            let (id, events) = ctx.service.sessions.register(&peer.subject);
            tokio::spawn(
                session_events(conn.clone(), events, peer.subject.clone(), budgets.clone())
                    .in_current_span(),
            );
            (peer.subject.clone(), id)
        });
        let peer = Arc::new(peer);
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(e) => {
                    debug!(reason = %e, "connection ended");
                    break;
                }
            };
            let ctx = ctx.clone();
            let conn = conn.clone();
            let peer = peer.clone();
            let budgets = budgets.clone();
            tokio::spawn(
                async move { serve_stream(conn, send, recv, ctx, peer, budgets).await }
                    .in_current_span(),
            );
        }
        if let Some((agent, id)) = session {
            ctx.service.sessions.unregister(&agent, id);
            info!("agent disconnected");
        }
    }
    .instrument(span)
    .await
}

/// Deliver session events to a connected agent: pokes on a stream of their
/// own, and removal as a closed connection.
async fn session_events(
    conn: quinn::Connection,
    mut events: tokio::sync::mpsc::UnboundedReceiver<SessionEvent>,
    agent: String,
    budgets: Budgets,
) {
    while let Some(event) = events.recv().await {
        match event {
            SessionEvent::Poke => {
                let sent = async {
                    let mut send = conn.open_uni().await.ok()?;
                    frame::write(&mut send, &Poke::DesiredStateChanged, DEFAULT_MAX_FRAME)
                        .await
                        .ok()?;
                    send.finish().ok()
                };
                if sent.await.is_none() {
                    debug!("could not poke agent; it will catch up on reconnect");
                }
            }
            SessionEvent::Command(command, reply) => {
                // A discovery scan may take up to its own timeout (60 s by
                // default); the others answer at once.
                let wait = std::time::Duration::from_secs(match command {
                    AgentCommand::Discover => 90,
                    _ => 20,
                });
                let conn = conn.clone();
                let budgets = budgets.clone();
                tokio::spawn(
                    async move {
                        let answer = async {
                            let (mut send, mut recv) =
                                conn.open_bi().await.map_err(|e| e.to_string())?;
                            frame::write(&mut send, &command, DEFAULT_MAX_FRAME)
                                .await
                                .map_err(|e| e.to_string())?;
                            let _ = send.finish();
                            // The agent may take up to `wait` to start
                            // answering (a scan); the body then has the
                            // usual deadlines.
                            let started =
                                Instant::now() + wait.saturating_sub(intake::HEADER_DEADLINE);
                            intake::read_message::<AgentCommandReply>(
                                &mut recv,
                                &budgets,
                                started,
                                limits::COMMAND_REPLY,
                            )
                            .await
                            .map_err(|r| match r {
                                Refusal::Answer(e) => e.message,
                                Refusal::Close(w) => w,
                            })
                        };
                        let answer = match tokio::time::timeout(wait, answer).await {
                            Ok(Ok(a)) => a,
                            Ok(Err(e)) => AgentCommandReply {
                                files: 0,
                                error: Some(format!("agent did not answer: {e}")),
                            },
                            Err(_) => AgentCommandReply {
                                files: 0,
                                error: Some(format!(
                                    "agent did not answer within {}s",
                                    wait.as_secs()
                                )),
                            },
                        };
                        let _ = reply.send(answer);
                    }
                    .in_current_span(),
                );
            }
            SessionEvent::Removed => {
                info!("closing session of removed agent");
                conn.close(
                    VarInt::from_u32(CLOSE_AGENT_REMOVED),
                    agent_removed(&agent, None).as_bytes(),
                );
                return;
            }
            SessionEvent::Kick => {
                info!("closing session of replaced agent");
                conn.close(
                    VarInt::from_u32(CLOSE_UNAUTHORIZED),
                    b"agent identity replaced, or a newer session of it took over",
                );
                return;
            }
        }
    }
}

/// Close an admin's connection as soon as its credential is revoked, the
/// way a removed agent's session is closed. The connection that made the
/// revocation is spared so that its answer arrives; its next request is
/// refused ([`admin_request`] checks the store every time).
async fn close_when_revoked(
    conn: quinn::Connection,
    serial: String,
    mut revoked: broadcast::Receiver<Revoked>,
) {
    loop {
        let event = tokio::select! {
            e = revoked.recv() => e,
            _ = conn.closed() => return,
        };
        match event {
            Ok(r) if r.origin != conn.stable_id() && r.serials.contains(&serial) => {
                info!(%serial, "closing the connection of a revoked admin credential");
                conn.close(
                    VarInt::from_u32(CLOSE_UNAUTHORIZED),
                    b"this admin credential has been revoked",
                );
                return;
            }
            Ok(_) => {}
            // Missed events: the store check on every request still
            // refuses a revoked credential.
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn serve_stream(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: Arc<Ctx>,
    peer: Arc<PeerIdentity>,
    budgets: Budgets,
) {
    let caller = match peer.role {
        Role::Admin => Caller::Admin,
        Role::Agent => Caller::Agent,
    };
    let request = match intake::read_request(&mut recv, &budgets, Instant::now(), caller).await {
        Ok(r) => r,
        Err(Refusal::Answer(e)) => {
            debug!(error = %e, "request refused before decoding");
            // The rest of the request is not wanted.
            let _ = recv.stop(VarInt::from_u32(0));
            if frame::write(&mut send, &Response::Error(e), DEFAULT_MAX_FRAME)
                .await
                .is_ok()
            {
                let _ = send.finish();
            }
            return;
        }
        Err(Refusal::Close(reason)) => {
            warn!(%reason, "bad request; closing connection");
            let code = if reason.contains("in time") || reason.contains("bytes of unfinished") {
                CLOSE_LIMIT
            } else {
                CLOSE_PROTOCOL
            };
            conn.close(VarInt::from_u32(code), reason.as_bytes());
            return;
        }
    };
    let revoking = matches!(request, Request::AdminRevoke { .. });
    let response = match peer.role {
        Role::Admin => admin_request(&ctx, &peer, request).await,
        Role::Agent => agent_request(&ctx, &peer, request).await,
    };
    // An answer too large for a frame becomes an error the client can
    // show, instead of a reset stream it could only call a stream error.
    // Paged lists never get here (list.rs bounds every page).
    let bytes = match frame::encode(&response, DEFAULT_MAX_FRAME) {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "response too large for a frame; answering with an error");
            let refusal = Response::Error(RpcError {
                kind: ErrorKind::Internal,
                message: format!(
                    "the answer does not fit in one message ({e}); \
                     use a paged list command or a narrower filter"
                ),
            });
            match frame::encode(&refusal, DEFAULT_MAX_FRAME) {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "could not encode the error response");
                    return;
                }
            }
        }
    };
    match send.write_all(&bytes).await {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => warn!(error = %e, "could not send response"),
    }
    if let (true, Response::AdminCredentials(list)) = (revoking, &response) {
        // No receiver (no other admin connected) is not an error.
        let _ = ctx.admin_revoked.send(Revoked {
            serials: list.iter().map(|c| c.serial.clone()).collect(),
            origin: conn.stable_id(),
        });
    }
}

/// What an admin request changes, for the audit log of refused requests.
fn mutation(request: &Request) -> Option<(&'static str, String)> {
    Some(match request {
        Request::IssuerAdd { name, .. } => ("issuer.add", name.clone()),
        Request::InstanceCreate(spec) => ("instance.create", spec.issuer.clone()),
        Request::CertApply { instance, .. } | Request::CertApplyChallenge { instance, .. } => {
            ("cert.apply", instance.clone())
        }
        Request::IssuerAddAcme { name, .. } => ("issuer.add", name.clone()),
        Request::CertDownload { id } => ("key.release", id.clone()),
        Request::CertRevoke { id, .. } => ("cert.revoke", id.clone()),
        Request::TokenCreate { .. } => ("agent.token.create", String::new()),
        Request::TokenCreateReenroll { agent, .. } => ("agent.token.create", agent.clone()),
        Request::AgentRemove { id } => ("agent.remove", id.clone()),
        Request::Deploy { certificate, .. } | Request::DeployRollout { certificate, .. } => {
            ("deploy", certificate.clone())
        }
        Request::CertRevokeForced { id, .. } => ("cert.revoke", id.clone()),
        Request::CertRenew { id } => ("cert.renew", id.clone()),
        Request::RolloutPause { id } => ("rollout.pause", id.clone()),
        Request::RolloutResume { id } => ("rollout.resume", id.clone()),
        Request::RolloutAbort { id } => ("rollout.abort", id.clone()),
        Request::RolloutRollback { id, .. } => ("rollout.rollback", id.clone()),
        Request::InventoryAdopt { agent, .. } => ("inventory.adopt", agent.clone()),
        Request::AdminCreate { name, .. } => ("admin.credential.create", name.clone()),
        Request::AdminRenew { .. } => ("admin.credential.renew", String::new()),
        Request::AdminRevoke { name, .. } => ("admin.credential.revoke", name.clone()),
        Request::AdminBackup { snapshot: None, .. } => ("admin.backup", String::new()),
        _ => return None,
    })
}

async fn admin_request(ctx: &Ctx, peer: &PeerIdentity, request: Request) -> Response {
    let svc = &ctx.service;
    let actor = peer.actor();
    // The credential was valid when the connection opened; it may have been
    // revoked since (by another admin, on another connection). Asking the
    // store on every request refuses a revoked credential at once, also on
    // a connection that stays open.
    match svc.admin_credential_valid(peer.serial.clone()).await {
        Ok(true) => {}
        Ok(false) => {
            return denied(&format!(
                "the credential of admin {:?} (serial {}) has been revoked; ask another admin \
                 for a new one (`certfleet admin create NAME --out FILE`), or run `certfleet \
                 admin create NAME --state-dir DIR --out FILE` on the controller host",
                peer.subject, peer.serial
            ))
        }
        Err(e) => return Response::Error(e.to_rpc()),
    }
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
            .cert_revoke(actor.clone(), id, reason, false, Mode::Commit)
            .await
            .map(Response::Certificate),
        Request::CertRevokeForced { id, reason } => svc
            .cert_revoke(actor.clone(), id, reason, true, Mode::Commit)
            .await
            .map(Response::Certificate),
        Request::CertRenew { id } => svc
            .cert_renew(actor.clone(), id, Mode::Commit)
            .await
            .map(Response::Application),
        Request::DeployRollout {
            certificate,
            selector,
            target,
            strategy,
        } => match crate::rollout::strategy_from_spec(&strategy) {
            Ok(strategy) => svc
                .deploy(
                    actor.clone(),
                    certificate,
                    selector,
                    target,
                    strategy,
                    Mode::Commit,
                )
                .await
                .map(Response::Rollout),
            Err(e) => Err(ServiceError::Invalid(e)),
        },
        Request::RolloutList => svc.rollout_list().await.map(Response::Rollouts),
        Request::RolloutShow { id } => svc.rollout_show(id).await.map(Response::Rollout),
        Request::RolloutPause { id } => svc
            .rollout_control(actor.clone(), id, "pause")
            .await
            .map(Response::Rollout),
        Request::RolloutResume { id } => svc
            .rollout_control(actor.clone(), id, "resume")
            .await
            .map(Response::Rollout),
        Request::RolloutAbort { id } => svc
            .rollout_control(actor.clone(), id, "abort")
            .await
            .map(Response::Rollout),
        Request::RolloutRollback { id, strategy } => {
            match crate::rollout::strategy_from_spec(&strategy) {
                Ok(strategy) => svc
                    .rollout_rollback(actor.clone(), id, strategy)
                    .await
                    .map(Response::Rollout),
                Err(e) => Err(ServiceError::Invalid(e)),
            }
        }
        Request::Status => svc.status().await.map(Response::Status),
        Request::IssuerAddAcme {
            name,
            directory,
            contact,
            eab_kid,
            eab_hmac_key,
            ca_bundle_pem,
            default_challenge,
            dns,
        } => svc
            .issuer_add_acme(
                actor.clone(),
                crate::challenge::AcmeIssuerSpec {
                    name,
                    directory,
                    contact,
                    eab_kid,
                    eab_hmac_key,
                    ca_bundle_pem,
                    default_challenge,
                    dns,
                },
            )
            .await
            .map(Response::Issuer),
        Request::IssuerShow { name } => svc.issuer_show(name).await.map(Response::Issuer),
        Request::CertApplyChallenge {
            instance,
            domains,
            challenge,
        } => svc
            .cert_apply_with(actor.clone(), instance, domains, challenge)
            .await
            .map(Response::Application),
        Request::CaCrl { issuer } => svc.crl(issuer).await.map(Response::Crl),
        Request::AuditList { limit } => svc.audit_list(limit).await.map(Response::Audit),
        Request::TokenCreate {
            labels,
            ttl_secs,
            uses,
        } => svc
            .token_create(actor.clone(), labels, ttl_secs, uses)
            .await
            .map(Response::Token),
        Request::TokenCreateReenroll { agent, ttl_secs } => svc
            .token_create_reenroll(actor.clone(), agent, ttl_secs)
            .await
            .map(Response::Token),
        Request::AgentList => svc.agent_list().await.map(Response::Agents),
        Request::AgentShow { id } => svc.agent_show(id).await.map(Response::Agent),
        Request::AgentRemove { id } => svc
            .agent_remove(actor.clone(), id)
            .await
            .map(Response::Agent),
        Request::Deploy {
            certificate,
            selector,
            target,
        } => svc
            .deploy(
                actor.clone(),
                certificate,
                selector,
                target,
                crate::rollout::policy::Strategy::default(),
                Mode::Commit,
            )
            .await
            .map(Response::Rollout),
        Request::DeploymentList { certificate, agent } => svc
            .deployment_list(certificate, agent)
            .await
            .map(Response::Deployments),
        Request::InventoryList {
            expiring_within_secs,
            agent,
        } => svc
            .inventory_list(expiring_within_secs, agent)
            .await
            .map(Response::Inventory),
        Request::InventoryScan { agent } => {
            svc.inventory_scan(agent).await.map(Response::Inventory)
        }
        Request::List { query, page } => svc.list_page(query, page).await.map(Response::Page),
        Request::InventoryAdopt {
            agent,
            certificate,
            issuer,
            validity_days,
            key,
        } => svc
            .inventory_adopt(
                actor.clone(),
                crate::inventory::AdoptRequest {
                    agent,
                    certificate,
                    issuer,
                    validity_days,
                    key,
                },
                Mode::Commit,
            )
            .await
            .map(Response::Adoption),
        Request::CaRoot { issuer } => svc.ca_root(issuer).await.map(Response::CaRoot),
        // Not in `mutation`: a dry run changes nothing, so nothing is
        // audited, not even a refusal (the plan carries it).
        Request::DryRun(planned) => Ok(Response::Plan(svc.plan(actor.clone(), planned).await)),
        Request::AdminCreate { name, csr_pem } => svc
            .admin_issue(Issue::Create, actor.clone(), name, csr_pem)
            .await
            .map(Response::AdminIssued),
        Request::AdminList => svc.admin_list().await.map(Response::AdminCredentials),
        // Renewal is for the operator making the request, never another.
        Request::AdminRenew { csr_pem } => svc
            .admin_issue(Issue::Renew, actor.clone(), peer.subject.clone(), csr_pem)
            .await
            .map(Response::AdminIssued),
        Request::AdminRevoke { name, force } => svc
            .admin_revoke(actor.clone(), name, force)
            .await
            .map(Response::AdminCredentials),
        Request::AdminBackup { snapshot, offset } => svc
            .backup_chunk(actor.clone(), snapshot, offset)
            .await
            .map(Response::Backup),
        Request::Enroll { .. }
        | Request::InventoryReport(_)
        | Request::AgentHello(_)
        | Request::DesiredState
        | Request::Report(_)
        | Request::RenewIdentity { .. } => Err(ServiceError::Invalid(
            "this request is for agents; an admin credential cannot make it".into(),
        )),
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

fn denied(message: &str) -> Response {
    Response::Error(RpcError {
        kind: ErrorKind::PermissionDenied,
        message: message.into(),
    })
}

async fn agent_request(ctx: &Ctx, peer: &PeerIdentity, request: Request) -> Response {
    let svc = &ctx.service;
    let agent = peer.subject.clone();
    svc.note_agent_activity(&agent).await;
    let result = match request {
        Request::AgentHello(hello) => svc.agent_hello(agent, hello).await.map(|()| Response::Ack),
        Request::DesiredState => svc.desired_state(agent).await.map(Response::Desired),
        Request::Report(report) => svc.report(agent, report).await.map(|()| Response::Ack),
        Request::InventoryReport(report) => svc
            .inventory_report(agent, report)
            .await
            .map(|()| Response::Ack),
        Request::RenewIdentity { csr_pem } => svc
            .renew_identity(agent, peer.serial.clone(), csr_pem)
            .await
            .map(|cert_pem| Response::Identity { cert_pem }),
        _ => return denied("agents may only make agent requests"),
    };
    result.unwrap_or_else(|e| Response::Error(e.to_rpc()))
}
