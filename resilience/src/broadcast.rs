//! `broadcast` routes: one request sent to every ready replica, answered once a quorum of them
//! succeeded.
//!
//! The answer is the first successful response, held until the quorum is reached, with the
//! number of acknowledgements at that moment in [`ACKS_HEADER`]. Attempts still running when the
//! quorum is reached carry on in the background, so every ready replica gets the request even
//! though the client does not wait for the slowest. When the quorum can no longer be reached
//! (too few replicas, or too many failed), the request fails at once rather than at its
//! deadline.

use std::future::Future;

use tokio::sync::mpsc;

/// Response header: how many replicas acknowledged a broadcast when it was answered.
pub const ACKS_HEADER: &str = "x-datastream-acks";

/// Why a broadcast failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BroadcastError {
    /// Fewer replicas are ready than the quorum needs.
    #[error("broadcast needs {quorum} acknowledgements but only {ready} replicas are ready")]
    NotEnoughReplicas {
        /// Ready replicas.
        ready: usize,
        /// Acknowledgements needed.
        quorum: usize,
    },
    /// Too many replicas failed for the quorum to be reached.
    #[error(
        "broadcast quorum not reached: {acks} of {sent} replicas acknowledged, {quorum} needed"
    )]
    QuorumFailed {
        /// Successful answers.
        acks: usize,
        /// Replicas the request was sent to.
        sent: usize,
        /// Acknowledgements needed.
        quorum: usize,
    },
}

/// The quorum for `ready` replicas: the configured one, or a majority.
pub fn quorum(configured: Option<u32>, ready: usize) -> usize {
    match configured {
        Some(q) => usize::try_from(q).unwrap_or(usize::MAX).max(1),
        None => ready / 2 + 1,
    }
}

/// Runs every attempt concurrently and returns the first successful result once `quorum`
/// attempts succeeded, with the number of successes at that time. On failure, the last
/// failed result (if any) comes with the error, so the caller can show what a replica said.
pub async fn fan_out<T, F>(
    attempts: Vec<F>,
    quorum: usize,
    is_success: impl Fn(&T) -> bool,
) -> Result<(T, usize), (BroadcastError, Option<T>)>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let sent = attempts.len();
    if sent < quorum || quorum == 0 {
        return Err((
            BroadcastError::NotEnoughReplicas {
                ready: sent,
                quorum,
            },
            None,
        ));
    }
    let (tx, mut rx) = mpsc::channel(sent);
    for attempt in attempts {
        let tx = tx.clone();
        // Spawned, so attempts outlive this function once the quorum is reached.
        tokio::spawn(async move {
            let _ = tx.send(attempt.await).await;
        });
    }
    drop(tx);
    let (mut acks, mut failures) = (0usize, 0usize);
    let mut first_ok = None;
    let mut last_failed = None;
    while let Some(result) = rx.recv().await {
        if is_success(&result) {
            acks += 1;
            first_ok.get_or_insert(result);
            if acks >= quorum {
                let ok = first_ok.take().map(|r| (r, acks));
                return ok.ok_or((BroadcastError::QuorumFailed { acks, sent, quorum }, None));
            }
        } else {
            failures += 1;
            last_failed = Some(result);
            if sent - failures < quorum {
                break;
            }
        }
    }
    Err((
        BroadcastError::QuorumFailed { acks, sent, quorum },
        last_failed,
    ))
}

#[cfg(test)]
mod tests;
