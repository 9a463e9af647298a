//! Time on a stream: when a request body ends (the sidecar's request timeout starts there) and
//! how long a body may stall (the stream idle timeout).
//!
//! Both exist for streams: an upload, a client-streaming gRPC call or a server-sent event
//! stream legitimately lasts longer than any request timeout, so the request timeout waits for
//! the request body to end, and what bounds a stream instead is that bytes keep moving.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::time::{Instant, Sleep};

/// Tells a waiting task that a request body has been read to its end, or why it failed.
/// Cloned into the body (which fires it) and kept by the request path (whose timer waits for
/// the end, and which learns from a failure that the client, not the replica, broke the
/// exchange: an HTTP/2 upstream connection only reports a reset stream).
#[derive(Debug, Clone, Default)]
pub struct EndSignal {
    inner: Arc<EndInner>,
}

#[derive(Debug, Default)]
struct EndInner {
    ended: AtomicBool,
    /// A [`BodyFailure`] code, 0 while none.
    failure: AtomicU8,
    waker: AtomicWaker,
}

/// How a streamed request body failed on the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// The client sent nothing for the stream idle timeout.
    Stalled = 1,
    /// The client's body broke off.
    Client = 2,
    /// The body went over the size limit.
    TooLarge = 3,
}

impl EndSignal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the body as ended and wakes the waiter; later calls do nothing.
    pub fn fire(&self) {
        if !self.inner.ended.swap(true, Ordering::AcqRel) {
            self.inner.waker.wake();
        }
    }

    /// Records why the body failed (the first reason sticks).
    pub fn fail(&self, why: BodyFailure) {
        let _ =
            self.inner
                .failure
                .compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Why the body failed, if it did.
    pub fn failure(&self) -> Option<BodyFailure> {
        match self.inner.failure.load(Ordering::Acquire) {
            1 => Some(BodyFailure::Stalled),
            2 => Some(BodyFailure::Client),
            3 => Some(BodyFailure::TooLarge),
            _ => None,
        }
    }

    /// Whether the body has ended.
    #[inline]
    pub fn has_fired(&self) -> bool {
        self.inner.ended.load(Ordering::Acquire)
    }

    /// Resolves once the body has ended.
    pub fn ended(&self) -> Ended<'_> {
        Ended { signal: self }
    }
}

/// The future of [`EndSignal::ended`].
#[derive(Debug)]
pub struct Ended<'a> {
    signal: &'a EndSignal,
}

impl Future for Ended<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.has_fired() {
            return Poll::Ready(());
        }
        self.signal.inner.waker.register(cx.waker());
        // Fired between the check and the registration: the wake may have gone to an old waker.
        if self.signal.has_fired() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// The stream idle timeout of one body: fires when the body has made no progress for `idle`.
///
/// Nothing is allocated or armed until the body first has to wait, so a body that arrives
/// whole (most requests and responses) costs no timer; after that, a stall re-arms the timer at
/// most once per wait, from a clock reading taken only when the body had progressed.
#[derive(Debug)]
pub struct IdleTimer {
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    progressed: bool,
}

impl IdleTimer {
    /// A timer for `idle`; `None` disables it.
    pub fn new(idle: Option<Duration>) -> Self {
        Self {
            idle: idle.unwrap_or(Duration::ZERO),
            sleep: None,
            progressed: false,
        }
    }

    /// The configured idle time (zero when disabled).
    #[inline]
    pub fn duration(&self) -> Duration {
        self.idle
    }

    /// The body produced something.
    #[inline]
    pub fn progress(&mut self) {
        self.progressed = true;
    }

    /// The body has to wait: `Ready` once it has waited `idle` since its last progress.
    pub fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.idle.is_zero() {
            return Poll::Pending;
        }
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if self.progressed {
                    sleep.as_mut().reset(Instant::now() + self.idle);
                }
                sleep
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep(self.idle))),
        };
        self.progressed = false;
        sleep.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_end_signal_wakes_its_waiter_once() {
        let signal = EndSignal::new();
        let waiter = {
            let signal = signal.clone();
            tokio::spawn(async move { signal.ended().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        signal.fire();
        signal.fire();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert!(signal.has_fired());
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timer_counts_from_the_last_progress() {
        let mut timer = IdleTimer::new(Some(Duration::from_secs(10)));
        async fn stalled(timer: &mut IdleTimer) -> bool {
            std::future::poll_fn(|cx| Poll::Ready(timer.poll_stalled(cx).is_ready())).await
        }
        assert!(!stalled(&mut timer).await);
        tokio::time::advance(Duration::from_secs(8)).await;
        timer.progress();
        assert!(!stalled(&mut timer).await, "progress re-arms the timer");
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(!stalled(&mut timer).await, "8 s since the last progress");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(stalled(&mut timer).await, "11 s since the last progress");
        let mut off = IdleTimer::new(None);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!stalled(&mut off).await);
    }
}
