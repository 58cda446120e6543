//! `BlobOffer` and `BlobChunk`: the edge of artifact uploads. The uploader is the connection's certificate
//! identity; [`crate::evidence::Uploads`] decides, this module only maps its answer to a wire reply.

use gait_wire::{BlobChunk, BlobOffer, BlobStatus, BlobStored, ErrorCode, ServerMsgV2};

use super::connection::Session;
use super::endpoint::IngestState;
use super::request::error_msg;
use crate::evidence::{Progress, UploadError};

pub(super) async fn on_offer(
    state: &IngestState,
    session: &Session,
    offer: BlobOffer,
) -> ServerMsgV2 {
    let Some(uploads) = &state.uploads else {
        return not_served();
    };
    let out = uploads.offer(&session.key, offer.sha256, offer.size).await;
    reply(offer.sha256, out)
}

pub(super) async fn on_chunk(
    state: &IngestState,
    session: &Session,
    chunk: BlobChunk,
) -> ServerMsgV2 {
    let Some(uploads) = &state.uploads else {
        return not_served();
    };
    let out = uploads
        .chunk(&session.key, chunk.sha256, chunk.offset, &chunk.bytes)
        .await;
    reply(chunk.sha256, out)
}

fn not_served() -> ServerMsgV2 {
    error_msg(
        ErrorCode::Unsupported,
        "this aggregator does not take artifact uploads",
    )
}

fn reply(sha256: gait_wire::Digest, out: Result<Progress, UploadError>) -> ServerMsgV2 {
    match out {
        Ok(Progress::Have(have)) => ServerMsgV2::BlobStatus(BlobStatus { sha256, have }),
        Ok(Progress::Stored { size }) => ServerMsgV2::BlobStored(BlobStored { sha256, size }),
        Err(e) => error_msg(code_of(&e), e.to_string()),
    }
}

/// The wire code of an upload error: what the agent should do next depends on it (see `gait_wire::blob`).
fn code_of(e: &UploadError) -> ErrorCode {
    match e {
        UploadError::Disabled | UploadError::UnknownAgent => ErrorCode::Forbidden,
        UploadError::TooLarge { .. }
        | UploadError::Blob(crate::evidence::BlobError::TooLarge { .. }) => ErrorCode::TooLarge,
        UploadError::DigestMismatch { .. }
        | UploadError::BadChunk(_)
        | UploadError::Blob(crate::evidence::BlobError::DigestMismatch { .. }) => {
            ErrorCode::BadRequest
        }
        // Retryable: a quota frees up as uploads complete or expire; an expired upload is offered again.
        UploadError::Quota { .. }
        | UploadError::NotInProgress(_)
        | UploadError::Io { .. }
        | UploadError::Blob(_)
        | UploadError::Store(_)
        | UploadError::Registry(_) => ErrorCode::Unavailable,
    }
}
