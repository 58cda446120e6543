//! Shutdown on SIGINT (Ctrl-C) or SIGTERM: one root token, cancelled once.

use tokio_util::sync::CancellationToken;

/// Completes at the first SIGINT or SIGTERM. If SIGTERM cannot be listened for (no signal driver), waits for
/// SIGINT alone and logs why.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutdown requested"),
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the process")
            }
        }
    }
    match tokio::signal::ctrl_c().await {
        Ok(()) => tracing::info!(signal = "SIGINT", "shutdown requested"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    }
}

/// Cancels `token` at the first SIGINT or SIGTERM, or returns when the token is cancelled for another reason
/// (a failed essential task), so the waiting task never outlives the process's own shutdown.
pub async fn cancel_on_signal(token: CancellationToken) {
    tokio::select! {
        _ = shutdown_signal() => token.cancel(),
        _ = token.cancelled() => {}
    }
}
