//! Uploading spooled artifacts ([`crate::upload`]) on each connection: oldest first, `BlobOffer` ->
//! `BlobStatus { have }` (or `BlobStored`), then `BlobChunk`s from `have` until `BlobStored`. An upload cut
//! off goes on, on the next connection, from the offset the aggregator kept. An aggregator that does not take
//! uploads answers `Error(Unsupported)`; the loop then ends for this connection.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use gait_runtime::Tasks;
use gait_wire::{
    AgentMsg, AgentMsgV2, BlobChunk, BlobOffer, ErrorCode, MAX_BLOB_CHUNK_BYTES, ServerMsg,
    ServerMsgV2,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::AgentState;
use super::exchange;
use super::session::REPLY_TIMEOUT;
use crate::db::AgentDb;
use crate::upload;

/// Bytes per `BlobChunk`: a quarter of the wire limit, so a chunk crosses a slow link (about 20 KB/s) within the
/// aggregator's request read timeout (15 s) and the agent's reply timeout.
pub(crate) const CHUNK_BYTES: usize = MAX_BLOB_CHUNK_BYTES / 4;

/// Pause between looks at an empty spool.
pub(crate) const IDLE_INTERVAL: Duration = Duration::from_millis(500);
/// Pause after a retryable refusal or a local failure before the next attempt.
pub(crate) const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the upload loop of one connection until `token` is cancelled (or the handle is dropped).
pub(super) fn spawn_upload_loop(
    tasks: &Tasks,
    state: Arc<AgentState>,
    conn: quinn::Connection,
    token: CancellationToken,
) -> AbortOnDropHandle<()> {
    let db = state.db().clone();
    tasks.spawn_owned(async move { upload_loop(db, conn, token).await })
}

/// What one attempt at one artifact came to.
enum Attempt {
    /// Stored, or refused for good: on to the next.
    Done,
    /// Try again after [`RETRY_INTERVAL`].
    Retry,
    /// Stop on this connection (lost, or the aggregator does not take uploads).
    Stop,
}

async fn upload_loop(db: AgentDb, conn: quinn::Connection, token: CancellationToken) {
    loop {
        let db2 = db.clone();
        let next = match tokio::task::spawn_blocking(move || upload::pending(&db2)).await {
            Ok(Ok(pending)) => pending.into_iter().next(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "upload spool unreadable; retrying");
                None
            }
            Err(_) => return,
        };
        let pause = match next {
            None => IDLE_INTERVAL,
            Some((sha256, entry)) => {
                let attempt = tokio::select! {
                    a = upload_one(&db, &conn, sha256, entry.size) => a,
                    _ = token.cancelled() => return,
                };
                match attempt {
                    Attempt::Done => continue,
                    Attempt::Retry => RETRY_INTERVAL,
                    Attempt::Stop => return,
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = token.cancelled() => return,
        }
    }
}

async fn upload_one(
    db: &AgentDb,
    conn: &quinn::Connection,
    sha256: [u8; 32],
    size: u64,
) -> Attempt {
    let hex = hex::encode(sha256);
    let mut msg = AgentMsgV2::BlobOffer(BlobOffer { sha256, size });
    loop {
        let reply = match exchange::request(conn, &AgentMsg::V2(msg), REPLY_TIMEOUT).await {
            Ok(reply) => reply,
            Err(e) => {
                // The session notices a lost connection; this loop stops asking.
                tracing::debug!(error = %e, sha256 = %hex, "upload exchange failed");
                return Attempt::Stop;
            }
        };
        let have = match reply {
            ServerMsg::V2(ServerMsgV2::BlobStored(stored)) => {
                tracing::info!(sha256 = %hex, size = stored.size, "artifact uploaded");
                return finish(db, sha256, None).await;
            }
            ServerMsg::V2(ServerMsgV2::BlobStatus(status)) if status.sha256 == sha256 => {
                status.have
            }
            ServerMsg::V2(ServerMsgV2::Error(e)) if e.code == ErrorCode::Unsupported => {
                tracing::info!(message = %e.message, "the aggregator does not take artifact uploads");
                return Attempt::Stop;
            }
            ServerMsg::V2(ServerMsgV2::Error(e)) if e.code.is_retryable() => {
                tracing::debug!(code = %e.code, message = %e.message, sha256 = %hex, "upload deferred; retrying");
                return Attempt::Retry;
            }
            ServerMsg::V2(ServerMsgV2::Error(e)) => {
                tracing::error!(code = %e.code, message = %e.message, sha256 = %hex, size,
                    "the aggregator refused an artifact upload for good; its bytes are dropped from the spool");
                return finish(db, sha256, Some(format!("{}: {}", e.code, e.message))).await;
            }
            other => {
                tracing::warn!(reply = ?std::mem::discriminant(&other), sha256 = %hex,
                    "unexpected reply to an upload; stopping uploads on this connection");
                return Attempt::Stop;
            }
        };
        if have >= size {
            // The aggregator holds every byte but did not say stored: offer again, it finishes then.
            msg = AgentMsgV2::BlobOffer(BlobOffer { sha256, size });
            continue;
        }
        let len = (size - have).min(CHUNK_BYTES as u64) as usize;
        let path = upload::spool_file(db, &sha256);
        let read = tokio::task::spawn_blocking(move || read_at(&path, have, len)).await;
        let bytes = match read {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                tracing::error!(error = %e, sha256 = %hex,
                    "the spool copy of an artifact is unreadable; it is dropped from the spool");
                return finish(db, sha256, Some(format!("spool copy unreadable: {e}"))).await;
            }
            Err(_) => return Attempt::Stop,
        };
        msg = AgentMsgV2::BlobChunk(BlobChunk {
            sha256,
            offset: have,
            bytes,
        });
    }
}

fn read_at(path: &std::path::Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    file.read_exact(&mut buf)?;
    Ok(buf)
}

/// Marks `sha256` uploaded (`refused: None`) or refused; a storage failure retries later.
async fn finish(db: &AgentDb, sha256: [u8; 32], refused: Option<String>) -> Attempt {
    let db = db.clone();
    let done = tokio::task::spawn_blocking(move || match refused {
        None => upload::mark_uploaded(&db, &sha256),
        Some(why) => upload::mark_refused(&db, &sha256, &why),
    })
    .await;
    match done {
        Ok(Ok(())) => Attempt::Done,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "upload spool not updated; retrying");
            Attempt::Retry
        }
        Err(_) => Attempt::Stop,
    }
}
