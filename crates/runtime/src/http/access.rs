//! The access log of both HTTP servers (tower-http's `TraceLayer`): one line per request with its method,
//! path, status and latency, inside a span carrying a request id — the caller's `x-request-id` when it sent a
//! sane one, else a fresh `<process prefix>-<counter>` — so every log line a request causes can be found by
//! that id. Query strings are left out (they can carry cursors and filters, never needed to find a request).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Request, Response};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{MakeSpan, OnResponse, TraceLayer};
use tracing::{Level, Span};

/// The layer: add it to a router (`.layer(access_log(Level::INFO))`).
pub type AccessLayer =
    TraceLayer<SharedClassifier<ServerErrorsAsFailures>, AccessSpan, (), AccessLine, (), (), ()>;

/// The access log at `level` (the aggregator's API logs at INFO, the agent's per-decision API at DEBUG).
pub fn access_log(level: Level) -> AccessLayer {
    TraceLayer::new_for_http()
        .make_span_with(AccessSpan { level })
        .on_request(())
        .on_response(AccessLine { level })
        .on_body_chunk(())
        .on_eos(())
        .on_failure(())
}

/// Longest caller-supplied request id kept; a longer or non-printable one is replaced by a fresh id.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// Makes the per-request span (`http` with `request_id`, `method`, `path`) at the access log's level: where
/// that level is filtered out (the agent's per-decision API at the default INFO), no span is built and no
/// request id is made, so the decision path pays nothing for it.
#[derive(Debug, Clone, Copy)]
pub struct AccessSpan {
    level: Level,
}

impl<B> MakeSpan<B> for AccessSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        // The field expressions are evaluated only when the span is enabled.
        macro_rules! span_at {
            ($level:expr) => {
                tracing::span!(
                    $level,
                    "http",
                    request_id = %request_id(request.headers().get("x-request-id")),
                    method = %request.method(),
                    path = %request.uri().path(),
                )
            };
        }
        match self.level {
            Level::ERROR | Level::WARN | Level::INFO => span_at!(Level::INFO),
            Level::DEBUG => span_at!(Level::DEBUG),
            Level::TRACE => span_at!(Level::TRACE),
        }
    }
}

/// Writes the access line when the response head is ready.
#[derive(Debug, Clone, Copy)]
pub struct AccessLine {
    level: Level,
}

impl<B> OnResponse<B> for AccessLine {
    fn on_response(self, response: &Response<B>, latency: Duration, _span: &Span) {
        let status = response.status().as_u16();
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        match self.level {
            Level::ERROR | Level::WARN | Level::INFO => {
                tracing::info!(target: "access", status, latency_us, "request")
            }
            Level::DEBUG => tracing::debug!(target: "access", status, latency_us, "request"),
            Level::TRACE => tracing::trace!(target: "access", status, latency_us, "request"),
        }
    }
}

/// The caller's id when it is 1..=64 visible ASCII characters, else a fresh one.
fn request_id(header: Option<&http::HeaderValue>) -> String {
    if let Some(text) = header.and_then(|v| v.to_str().ok())
        && !text.is_empty()
        && text.len() <= MAX_REQUEST_ID_LEN
        && text.bytes().all(|b| b.is_ascii_graphic())
    {
        return text.to_owned();
    }
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        // The process id and start time make ids unlikely to repeat across restarts without a RNG.
        let nanos = std::time::UNIX_EPOCH
            .elapsed()
            .map_or(0, |d| d.subsec_nanos());
        format!("{:x}{:05x}", std::process::id(), nanos & 0xfffff)
    });
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_ids_are_kept_when_sane_and_replaced_otherwise() {
        let ok = http::HeaderValue::from_static("abc-123");
        assert_eq!(request_id(Some(&ok)), "abc-123");
        let long = http::HeaderValue::from_str(&"x".repeat(65)).unwrap();
        let spaced = http::HeaderValue::from_static("a b");
        let fresh = [
            request_id(Some(&long)),
            request_id(Some(&spaced)),
            request_id(None),
        ];
        assert!(
            fresh.iter().all(|id| id.contains('-') && id.len() < 40),
            "{fresh:?}"
        );
        assert_ne!(fresh[0], fresh[1]);
        assert_ne!(fresh[1], fresh[2]);
    }
}
