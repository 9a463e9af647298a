//! A client layer that refuses the controller's writes outside this replica's leadership term.
//!
//! The elector ends the term when it cannot renew in time, but the task that notices may be
//! starved, and a process that was frozen (SIGSTOP, a paused VM, a long GC-like stall) wakes up
//! with reconciles ready to run before its elector gets a turn. Checking the term in the client
//! itself, at the moment each write is sent, closes that window: a write leaves this process only
//! while [`Leadership::is_leading`] holds, judged on the monotonic clock, which keeps counting
//! while the process is stopped. Reads pass, so caches stay warm for a quick return to leadership.

use std::task::{Context, Poll};

use futures::future::{Either, MapErr, Ready, TryFutureExt as _};
use http::{Method, Request};
use tower::{BoxError, Layer, Service};
use tracing::warn;

use crate::leader::Leadership;

/// Wraps a client's service in a [`Fence`].
#[derive(Clone, Debug)]
pub struct FenceLayer {
    leadership: Leadership,
}

impl FenceLayer {
    /// Writes pass while `leadership` holds.
    pub fn new(leadership: Leadership) -> Self {
        FenceLayer { leadership }
    }
}

impl<S> Layer<S> for FenceLayer {
    type Service = Fence<S>;

    fn layer(&self, inner: S) -> Fence<S> {
        Fence {
            inner,
            leadership: self.leadership.clone(),
        }
    }
}

/// Refuses writes (POST, PUT, PATCH, DELETE) once the leadership term has ended.
#[derive(Clone, Debug)]
pub struct Fence<S> {
    inner: S,
    leadership: Leadership,
}

/// A write the fence refused.
#[derive(Debug, thiserror::Error)]
#[error("refused to send {method} {path}: this replica's leadership term has ended")]
pub struct NotLeader {
    /// The write's method.
    pub method: Method,
    /// The write's path.
    pub path: String,
}

fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

type ErrorInto<E> = fn(E) -> BoxError;

impl<S, B> Service<Request<B>> for Fence<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future =
        Either<MapErr<S::Future, ErrorInto<S::Error>>, Ready<Result<S::Response, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if is_write(request.method()) && !self.leadership.is_leading() {
            let refused = NotLeader {
                method: request.method().clone(),
                path: request.uri().path().to_owned(),
            };
            warn!(error = %refused, "write fenced");
            return Either::Right(futures::future::ready(Err(refused.into())));
        }
        let into: ErrorInto<S::Error> = Into::into;
        Either::Left(self.inner.call(request).map_err(into))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::ServiceExt as _;

    use super::*;

    fn echo_method() -> impl Service<
        Request<()>,
        Response = Method,
        Error = std::convert::Infallible,
        Future = Ready<Result<Method, std::convert::Infallible>>,
    > + Clone {
        tower::service_fn(|request: Request<()>| {
            futures::future::ready(Ok(request.method().clone()))
        })
    }

    fn request(method: Method) -> Request<()> {
        Request::builder()
            .method(method)
            .uri("/apis/apps/v1/namespaces/a/statefulsets/s")
            .body(())
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn writes_pass_only_during_the_term_and_reads_always() {
        let leadership = Leadership::default();
        let fence = FenceLayer::new(leadership.clone()).layer(echo_method());
        // No term yet (a standby): reads pass, writes are refused with the request named.
        assert_eq!(
            fence.clone().oneshot(request(Method::GET)).await.unwrap(),
            Method::GET
        );
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let error = fence
                .clone()
                .oneshot(request(method.clone()))
                .await
                .unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "refused to send {method} /apis/apps/v1/namespaces/a/statefulsets/s: this replica's leadership term has ended"
                )
            );
        }
        let unconditional = FenceLayer::new(Leadership::unconditional()).layer(echo_method());
        assert_eq!(
            unconditional.oneshot(request(Method::PATCH)).await.unwrap(),
            Method::PATCH
        );
        // The term is checked when each write is sent, not when the client was built.
        leadership.extend_to(tokio::time::Instant::now() + Duration::from_secs(10));
        assert_eq!(
            fence.clone().oneshot(request(Method::PATCH)).await.unwrap(),
            Method::PATCH
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(fence.clone().oneshot(request(Method::PATCH)).await.is_err());
    }
}
