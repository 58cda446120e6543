//! One request stream: reading and answering a frame, and every request but record batches (`Hello`,
//! `PollBundle`, the unidirectional `BundleReport`); batches go to [`super::records`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gait_store::{ActiveBundle, AgentHello, AlertKind, BundleReportRow, NewAgentAlert};
use gait_wire::close::{CLOSE_IDENTITY_IN_USE, IDENTITY_IN_USE_REASON};
use gait_wire::{
    AgentMsg, AgentMsgV2, BundleOffer, BundleRef, ErrorCode, FrameDecoder, PROTOCOL_VERSION,
    ServerMsg, ServerMsgV2, Welcome, WireError,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::identity::Claim;

use super::connection::{Session, touch};
use super::endpoint::IngestState;
use super::records::on_batch;
use super::{MAX_POLL_WAIT, REQUEST_READ_TIMEOUT};
use crate::clock::unix_ms;
use crate::metrics;

/// Largest bundle report frame.
const MAX_REPORT_FRAME: u32 = 64 * 1024;

/// Read one complete frame body from `recv`, bounded by `max` bytes and the read timeout.
async fn read_request(recv: &mut quinn::RecvStream, max: u32) -> Result<Vec<u8>, String> {
    let limit = max as usize + gait_wire::FRAME_HEADER_LEN;
    let bytes = match tokio::time::timeout(REQUEST_READ_TIMEOUT, recv.read_to_end(limit)).await {
        Err(_) => {
            return Err(format!(
                "request not received within {}s",
                REQUEST_READ_TIMEOUT.as_secs()
            ));
        }
        Ok(Err(quinn::ReadToEndError::TooLong)) => {
            return Err(format!("request larger than {max} bytes"));
        }
        Ok(Err(e)) => return Err(format!("request stream failed: {e}")),
        Ok(Ok(bytes)) => bytes,
    };
    let mut decoder = FrameDecoder::new(max);
    decoder.push(&bytes);
    let frame = decoder
        .next_frame()
        .map_err(|e| format!("bad frame: {e}"))?;
    let Some(body) = frame else {
        return Err("truncated frame".into());
    };
    if decoder.buffered_len() != 0 {
        return Err("trailing bytes after the request frame".into());
    }
    Ok(body)
}

async fn write_response(send: &mut quinn::SendStream, msg: ServerMsgV2) {
    match gait_wire::encode_frame(&ServerMsg::V2(msg)) {
        Ok(frame) => {
            if send.write_all(&frame).await.is_ok() {
                let _ = send.finish();
            }
        }
        Err(e) => warn!(error = %e, "response could not be encoded"),
    }
}

pub(super) fn error_msg(code: ErrorCode, message: impl Into<String>) -> ServerMsgV2 {
    ServerMsgV2::Error(WireError::new(code, message))
}

pub(super) async fn handle_request(
    state: Arc<IngestState>,
    session: Arc<Session>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shutdown: CancellationToken,
) {
    let body = match read_request(&mut recv, state.limits.max_frame).await {
        Ok(b) => b,
        Err(reason) => return session.protocol_violation(&state, &reason),
    };
    let msg = match gait_wire::decode_agent_msg(&body) {
        Ok(AgentMsg::V2(m)) => m,
        Ok(AgentMsg::V1(_)) => {
            // An agent of protocol version 1 or 2 (envelope V1) cannot get past the ALPN; answered anyway.
            return write_response(
                &mut send,
                error_msg(
                    ErrorCode::Unsupported,
                    format!(
                        "envelope V1 (protocol version 2 or older) is not spoken here; this aggregator \
                         speaks protocol version {PROTOCOL_VERSION}: upgrade the agent"
                    ),
                ),
            )
            .await;
        }
        Err(e) => {
            // An unknown variant from a newer agent is answered, not punished.
            if e.error_code() == ErrorCode::Unsupported {
                return write_response(&mut send, error_msg(ErrorCode::Unsupported, e.to_string()))
                    .await;
            }
            return session.protocol_violation(&state, &format!("malformed request: {e}"));
        }
    };
    let is_hello = matches!(msg, AgentMsgV2::Hello(_));
    if !is_hello && !session.hello_done.load(Ordering::Acquire) {
        return write_response(
            &mut send,
            error_msg(ErrorCode::BadRequest, "send Hello first"),
        )
        .await;
    }
    // Every arm's future is boxed: this task's own future is then only as large as its biggest *local* state,
    // not as its biggest arm. An idle agent keeps one of these parked in a long-poll, so its size is paid once
    // per connected agent (it was 17 KiB with the arms inline; docs/benchmarks.md).
    let reply = match msg {
        AgentMsgV2::Hello(hello) => {
            let started = std::time::Instant::now();
            let reply = Box::pin(on_hello(&state, &session, hello)).await;
            state
                .metrics
                .hello_duration
                .observe(started.elapsed().as_secs_f64());
            reply
        }
        AgentMsgV2::PollBundle(poll) => {
            let wait = Duration::from_millis(u64::from(poll.wait_ms)).min(MAX_POLL_WAIT);
            let poll = Box::pin(on_poll(&state, &session, poll.have_epoch, wait));
            tokio::select! {
                r = poll => r,
                _ = shutdown.cancelled() => error_msg(ErrorCode::Unavailable, "aggregator shutting down"),
                _ = session.conn.closed() => return,
            }
        }
        AgentMsgV2::RecordBatch(batch) => {
            Box::pin(async {
                let id = batch.batch_id;
                let turn = session.batch_order.wait_turn(id).await;
                let reply = on_batch(&state, &session, batch).await;
                drop(turn);
                reply
            })
            .await
        }
        AgentMsgV2::BundleReport(_) => error_msg(
            ErrorCode::BadRequest,
            "send BundleReport on a unidirectional stream",
        ),
        AgentMsgV2::RenewCertificate(renew) => {
            Box::pin(super::renew::on_renew(&state, &session, renew)).await
        }
        AgentMsgV2::FetchApprovals(fetch) => {
            Box::pin(on_fetch_approvals(&state, &session, fetch)).await
        }
        AgentMsgV2::BlobOffer(offer) => {
            Box::pin(super::upload::on_offer(&state, &session, offer)).await
        }
        AgentMsgV2::BlobChunk(chunk) => {
            Box::pin(super::upload::on_chunk(&state, &session, chunk)).await
        }
    };
    write_response(&mut send, reply).await;
    touch(&state, &session);
}

/// The approvals issued for this agent's requests (its tenancy and id from the certificate).
async fn on_fetch_approvals(
    state: &IngestState,
    session: &Session,
    fetch: gait_wire::FetchApprovals,
) -> ServerMsgV2 {
    let Some(approvals) = &state.approvals else {
        return ServerMsgV2::Approvals(gait_wire::ApprovalDelivery::default());
    };
    match approvals
        .deliverable(&session.key, fetch.after_request_id)
        .await
    {
        Ok(mut delivered) => {
            delivered.truncate(gait_wire::approval::MAX_DELIVERED_APPROVALS);
            ServerMsgV2::Approvals(gait_wire::ApprovalDelivery {
                approvals: delivered,
            })
        }
        Err(e) => {
            warn!(error = %e, agent = %session.key, "approvals could not be read for delivery");
            error_msg(ErrorCode::Unavailable, "approvals unavailable; retry")
        }
    }
}

fn active_row(b: &BundleRef) -> ActiveBundle {
    ActiveBundle {
        epoch: b.epoch,
        digest: hex::encode(b.digest),
        since_unix_ms: b.since_unix_ms,
    }
}

fn received_row(b: &BundleRef) -> gait_store::BundleRef {
    gait_store::BundleRef {
        epoch: b.epoch,
        digest: hex::encode(b.digest),
    }
}

async fn on_hello(state: &IngestState, session: &Session, hello: gait_wire::Hello) -> ServerMsgV2 {
    if hello.protocol_version != PROTOCOL_VERSION {
        return error_msg(
            ErrorCode::Unsupported,
            format!(
                "protocol version {} not supported; this aggregator speaks {PROTOCOL_VERSION}",
                hello.protocol_version
            ),
        );
    }
    let now = unix_ms();
    let conn_id = session.conn.stable_id();
    match state.identities.claim(
        &session.key,
        hello.instance_id,
        conn_id,
        session.remote,
        Some(session.conn.clone()),
    ) {
        Claim::Refused {
            holder,
            holder_remote,
        } => return refuse_second_instance(state, session, &hello, holder, holder_remote).await,
        Claim::Granted {
            replaced: Some(old),
        } => {
            info!(agent = %session.key, instance_id = %hello.instance_id, old_remote = %old.remote_address(),
                remote = %session.remote, "the same agent instance reconnected; closing its older session");
            old.close(
                gait_wire::close::CLOSE_NORMAL.into(),
                b"replaced by a newer session of the same agent instance",
            );
        }
        Claim::Granted { replaced: None } => {}
    }
    let row = AgentHello {
        remote_addr: session.remote.to_string(),
        agent_version: truncate(&hello.agent_version, 64),
        active_bundle: hello.active.as_ref().map(active_row),
        received_bundle: hello.received.as_ref().map(received_row),
        outbox_depth: hello.outbox_depth,
        shed_total: hello.shed_total,
        cert_serial: session.cert_serial.clone(),
        cert_not_after_unix_ms: session.cert_not_after_unix_ms,
        cert_issuer: session.cert_issuer.clone(),
    };
    match state.presence.connected(session.key.clone(), row).await {
        Ok(cursor) => {
            note_instance(state, session, &hello).await;
            session.hello_done.store(true, Ordering::Release);
            session.last_seen_ms.store(now as u64, Ordering::Relaxed);
            ServerMsgV2::Welcome(Welcome {
                server_version: state.server_version.clone(),
                protocol_version: PROTOCOL_VERSION,
                org: session.key.tenant.org.to_string(),
                project: session.key.tenant.project.to_string(),
                env: session.key.tenant.env.to_string(),
                agent_id: session.key.agent_id.to_string(),
                committed_seq: cursor.committed_seq,
                committed_hash: cursor.committed_hash,
            })
        }
        Err(e) => {
            state.identities.release(&session.key, conn_id);
            warn!(error = %e, agent_id = %session.key.agent_id, "agent registration failed");
            error_msg(ErrorCode::Unavailable, "store unavailable; retry")
        }
    }
}

/// Refuses a `Hello` from a second instance of a held identity: ERROR log naming the agent, both instance ids
/// and both peers, a counted metric, a durable alert row, then the connection is closed with
/// [`CLOSE_IDENTITY_IN_USE`]. The holding session is not disturbed.
async fn refuse_second_instance(
    state: &IngestState,
    session: &Session,
    hello: &gait_wire::Hello,
    holder: gait_wire::InstanceId,
    holder_remote: std::net::SocketAddr,
) -> ServerMsgV2 {
    let kind = AlertKind::DuplicateInstance;
    metrics::inc_labelled(&state.metrics.identity_alerts, "kind", kind.as_str());
    error!(agent = %session.key, instance_id = %hello.instance_id, remote = %session.remote,
        live_instance_id = %holder, live_remote = %holder_remote, serial = %session.cert_serial,
        "another instance of this agent identity is connected; refused the new one. Two processes share one \
         certificate: stop one of them, or issue each host its own certificate");
    let alert = NewAgentAlert {
        kind,
        instance_id: hello.instance_id.to_hex(),
        other_instance_id: holder.to_hex(),
        remote_addr: session.remote.to_string(),
        other_remote_addr: holder_remote.to_string(),
        detail: format!(
            "instance {} from {} refused: instance {} from {} holds the identity (agent last_seq {})",
            hello.instance_id, session.remote, holder, holder_remote, hello.last_seq
        ),
    };
    if let Err(e) = state
        .intake
        .record_alert(&session.key, &alert, unix_ms())
        .await
    {
        warn!(error = %e, agent = %session.key, "identity alert not stored (the ERROR log and metric stand)");
    }
    session.conn.close(
        CLOSE_IDENTITY_IN_USE.into(),
        IDENTITY_IN_USE_REASON.as_bytes(),
    );
    error_msg(ErrorCode::Forbidden, IDENTITY_IN_USE_REASON)
}

/// Stores the hello's instance id as the identity's current instance; when it replaces another instance and
/// the agent's `last_seq` is behind the committed head (a wiped or copied data directory reusing the
/// certificate), raises an `instance_behind` alert. A store failure here is logged, not fatal: the session
/// goes on and the next hello tries again.
async fn note_instance(state: &IngestState, session: &Session, hello: &gait_wire::Hello) {
    let instance = hello.instance_id.to_hex();
    let change = match state.intake.note_instance(&session.key, &instance).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, agent = %session.key, "agent instance not recorded");
            return;
        }
    };
    let Some(previous) = change.previous.filter(|p| *p != instance) else {
        return;
    };
    if hello.last_seq >= change.committed_seq {
        warn!(agent = %session.key, instance_id = %instance, previous_instance_id = %previous,
            last_seq = hello.last_seq, committed_seq = change.committed_seq,
            "a new agent instance took over this identity (new data directory)");
        return;
    }
    let kind = AlertKind::InstanceBehind;
    metrics::inc_labelled(&state.metrics.identity_alerts, "kind", kind.as_str());
    error!(agent = %session.key, instance_id = %instance, previous_instance_id = %previous,
        remote = %session.remote, last_seq = hello.last_seq, committed_seq = change.committed_seq,
        "a new agent instance is behind what this identity already committed: its data directory was wiped \
         or copied while reusing the certificate; its records at committed seqs will conflict and be \
         quarantined by the agent. Check which host runs this identity");
    let alert = NewAgentAlert {
        kind,
        instance_id: instance,
        other_instance_id: previous,
        remote_addr: session.remote.to_string(),
        other_remote_addr: String::new(),
        detail: format!(
            "agent last_seq {} is behind the committed seq {}",
            hello.last_seq, change.committed_seq
        ),
    };
    if let Err(e) = state
        .intake
        .record_alert(&session.key, &alert, unix_ms())
        .await
    {
        warn!(error = %e, agent = %session.key, "identity alert not stored (the ERROR log and metric stand)");
    }
}

async fn on_poll(
    state: &IngestState,
    session: &Session,
    have_epoch: u64,
    wait: Duration,
) -> ServerMsgV2 {
    match state
        .registry
        .wait_newer(&session.key, have_epoch, wait)
        .await
    {
        Ok(Some(bundle)) => {
            let mut digest = [0u8; 32];
            if hex::decode_to_slice(&bundle.digest, &mut digest).is_err() {
                return error_msg(ErrorCode::Internal, "stored bundle digest is not hex");
            }
            state.metrics.bundles_served.inc();
            ServerMsgV2::Bundle(BundleOffer {
                epoch: bundle.epoch,
                digest,
                signed_bundle: bundle.bytes.clone(),
            })
        }
        Ok(None) => ServerMsgV2::NoNewBundle { have_epoch },
        Err(e) => {
            warn!(error = %e, "bundle lookup failed");
            error_msg(ErrorCode::Unavailable, "registry unavailable; retry")
        }
    }
}

async fn on_report(state: &IngestState, session: &Session, report: gait_wire::BundleReport) {
    if let Some(refusal) = &report.refusal {
        metrics::inc_labelled(
            &state.metrics.bundle_refusals_reported,
            "code",
            bounded_code(&refusal.code),
        );
        warn!(agent_id = %session.key.agent_id, org = %session.key.tenant.org, epoch = refusal.epoch,
            code = %refusal.code, message = %refusal.message, "agent refused a bundle");
    }
    let mut rows = Vec::new();
    if let Some(r) = &report.received {
        rows.push(BundleReportRow::Received(received_row(r)));
    }
    if let Some(a) = &report.applied {
        rows.push(BundleReportRow::Activated(active_row(a)));
    }
    if let Some(r) = &report.refusal {
        rows.push(BundleReportRow::Refused {
            epoch: r.epoch,
            code: truncate(&r.code, 64),
            message: truncate(&r.message, 512),
        });
    }
    let now = unix_ms();
    for row in &rows {
        if let Err(e) = state
            .intake
            .record_bundle_report(&session.key, row, now)
            .await
        {
            warn!(error = %e, "bundle report not stored");
        }
    }
}

pub(super) async fn handle_report(
    state: Arc<IngestState>,
    session: Arc<Session>,
    mut recv: quinn::RecvStream,
) {
    let body = match read_request(&mut recv, MAX_REPORT_FRAME).await {
        Ok(b) => b,
        Err(reason) => return session.protocol_violation(&state, &reason),
    };
    match gait_wire::decode_agent_msg(&body) {
        Ok(AgentMsg::V2(AgentMsgV2::BundleReport(report)))
            if session.hello_done.load(Ordering::Acquire) =>
        {
            on_report(&state, &session, report).await
        }
        Ok(_) => session.protocol_violation(
            &state,
            "only a BundleReport after Hello may use a unidirectional stream",
        ),
        Err(e) => session.protocol_violation(&state, &format!("malformed report: {e}")),
    }
}

/// Refusal codes are agent-supplied: only the bundle crate's own codes ([`gait_bundle::BundleError::CODES`])
/// become metric labels, anything else is `other`.
fn bounded_code(code: &str) -> &'static str {
    gait_bundle::BundleError::CODES
        .into_iter()
        .find(|known| *known == code)
        .unwrap_or("other")
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_refusal_labels_are_the_bundle_crates_codes_or_other() {
        for code in gait_bundle::BundleError::CODES {
            assert_eq!(bounded_code(code), code);
        }
        assert_eq!(
            bounded_code("bundle_schema_unsupported"),
            "bundle_schema_unsupported"
        );
        assert_eq!(bounded_code("anything an agent says"), "other");
    }
}
