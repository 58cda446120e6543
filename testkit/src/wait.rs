//! Bounded waits on observable conditions. They poll (every [`POLL_INTERVAL`]) until the condition holds and
//! give up after [`PATIENCE`]; nothing in the harness sleeps for a fixed time and then asserts.

use std::future::Future;
use std::time::Duration;

use crate::TestkitError;

/// Upper bound for anything a test waits for: generous, because a loaded two-core machine can make a 1 s step
/// take many seconds. A passing test never waits this long.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// How often a condition is checked again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Waits until `check` returns true, at most [`PATIENCE`].
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) -> Result<(), TestkitError> {
    wait_for(what, || {
        let done = check();
        async move { Ok(done.then_some(())) }
    })
    .await
}

/// Waits until `probe` yields `Some`, at most [`PATIENCE`], and returns that value. An error from `probe`
/// ends the wait at once.
pub async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> Result<T, TestkitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, TestkitError>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(TestkitError::Timeout {
                what: what.to_owned(),
                patience: PATIENCE,
                last: String::new(),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
