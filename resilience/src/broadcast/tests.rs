use super::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

type Attempt = std::pin::Pin<Box<dyn Future<Output = (u32, bool)> + Send>>;

fn attempt(id: u32, ok: bool, delay_ms: u64, done: Arc<AtomicUsize>) -> Attempt {
    Box::pin(async move {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        done.fetch_add(1, Ordering::SeqCst);
        (id, ok)
    })
}

#[test]
fn majority_by_default() {
    assert_eq!(quorum(None, 1), 1);
    assert_eq!(quorum(None, 3), 2);
    assert_eq!(quorum(None, 4), 3);
    assert_eq!(quorum(Some(3), 5), 3);
    assert_eq!(quorum(Some(0), 5), 1);
}

#[tokio::test(start_paused = true)]
async fn answers_at_quorum_with_the_first_success_and_finishes_the_rest() {
    let done = Arc::new(AtomicUsize::new(0));
    let attempts = vec![
        attempt(1, true, 30, done.clone()),
        attempt(2, true, 10, done.clone()),
        attempt(3, true, 500, done.clone()),
    ];
    let ((id, _), acks) = fan_out(attempts, 2, |r: &(u32, bool)| r.1).await.unwrap();
    assert_eq!((id, acks), (2, 2));
    assert_eq!(
        done.load(Ordering::SeqCst),
        2,
        "answered before the slowest"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        done.load(Ordering::SeqCst),
        3,
        "the slowest still got the request"
    );
}

#[tokio::test(start_paused = true)]
async fn fails_as_soon_as_the_quorum_is_out_of_reach() {
    let done = Arc::new(AtomicUsize::new(0));
    let attempts = vec![
        attempt(1, false, 10, done.clone()),
        attempt(2, false, 20, done.clone()),
        attempt(3, true, 10_000, done.clone()),
    ];
    let started = tokio::time::Instant::now();
    let (err, last) = fan_out(attempts, 2, |r: &(u32, bool)| r.1)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        BroadcastError::QuorumFailed {
            acks: 0,
            sent: 3,
            quorum: 2
        }
    );
    assert_eq!(last, Some((2, false)));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn too_few_replicas_fail_without_sending() {
    let done = Arc::new(AtomicUsize::new(0));
    let attempts = vec![attempt(1, true, 0, done.clone())];
    let (err, _) = fan_out(attempts, 2, |r: &(u32, bool)| r.1)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        BroadcastError::NotEnoughReplicas {
            ready: 1,
            quorum: 2
        }
    );
    tokio::task::yield_now().await;
    assert_eq!(done.load(Ordering::SeqCst), 0);
}
