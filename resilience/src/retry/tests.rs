use super::*;
use http::HeaderValue;
use http_body_util::Full;

fn policy(conditions: &[RetryCondition]) -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        conditions: Conditions::from_list(conditions),
        backoff: Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        },
        non_idempotent: false,
    }
}

#[test]
fn unsent_requests_are_retried_for_every_method() {
    let mut p = policy(&[]);
    p.attempts = 0;
    for m in [Method::POST, Method::PATCH, Method::GET] {
        assert_eq!(p.classify(&m, Outcome::NotSent), Some(RetryReason::NotSent));
    }
}

#[test]
fn sent_requests_need_idempotence_and_a_listed_condition() {
    let p = policy(&[
        RetryCondition::GatewayError,
        RetryCondition::Reset,
        RetryCondition::PerTryTimeout,
    ]);
    let get = Method::GET;
    assert_eq!(
        p.classify(&get, Outcome::Status(StatusCode::SERVICE_UNAVAILABLE)),
        Some(RetryReason::GatewayError)
    );
    assert_eq!(
        p.classify(&get, Outcome::Status(StatusCode::INTERNAL_SERVER_ERROR)),
        None,
        "500 is not a gateway error"
    );
    assert_eq!(p.classify(&get, Outcome::Status(StatusCode::OK)), None);
    assert_eq!(
        p.classify(&get, Outcome::Status(StatusCode::TOO_MANY_REQUESTS)),
        None
    );
    assert_eq!(p.classify(&get, Outcome::Reset), Some(RetryReason::Reset));
    assert_eq!(
        p.classify(&Method::PUT, Outcome::PerTryTimeout),
        Some(RetryReason::PerTryTimeout)
    );
    assert_eq!(p.classify(&Method::POST, Outcome::Reset), None);
    assert_eq!(
        p.classify(
            &Method::POST,
            Outcome::Status(StatusCode::SERVICE_UNAVAILABLE)
        ),
        None
    );
}

#[test]
fn route_opt_in_allows_non_idempotent_retries() {
    let mut p = policy(&[RetryCondition::ServerError]);
    p.non_idempotent = true;
    assert_eq!(
        p.classify(
            &Method::POST,
            Outcome::Status(StatusCode::INTERNAL_SERVER_ERROR)
        ),
        Some(RetryReason::ServerError)
    );
    assert_eq!(p.classify(&Method::POST, Outcome::Reset), None);
    assert!(p.retries_status(StatusCode::INTERNAL_SERVER_ERROR));
    assert!(!p.retries_status(StatusCode::NOT_FOUND));
}

#[test]
fn zero_attempts_disables_policy_retries() {
    let mut p = policy(&[RetryCondition::Reset]);
    p.attempts = 0;
    assert_eq!(p.classify(&Method::GET, Outcome::Reset), None);
}

#[test]
fn backoff_doubles_up_to_the_cap_with_full_jitter() {
    let b = Backoff {
        base: Duration::from_millis(25),
        max: Duration::from_millis(250),
    };
    assert_eq!(b.delay(1, 1.0), Duration::from_millis(25));
    assert_eq!(b.delay(2, 1.0), Duration::from_millis(50));
    assert_eq!(b.delay(3, 1.0), Duration::from_millis(100));
    assert_eq!(b.delay(5, 1.0), Duration::from_millis(250));
    assert_eq!(b.delay(40, 1.0), Duration::from_millis(250));
    assert_eq!(b.delay(3, 0.5), Duration::from_millis(50));
    assert_eq!(b.delay(3, 0.0), Duration::ZERO);
    for _ in 0..100 {
        assert!(b.jittered(2) <= Duration::from_millis(50));
    }
}

#[test]
fn replay_plan_from_framing() {
    let mut h = HeaderMap::new();
    assert_eq!(replay_plan(&h, true, MAX_REPLAY_BYTES), Replay::Empty);
    h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    assert_eq!(replay_plan(&h, false, MAX_REPLAY_BYTES), Replay::Empty);
    h.insert(CONTENT_LENGTH, HeaderValue::from_static("1000"));
    assert_eq!(
        replay_plan(&h, false, MAX_REPLAY_BYTES),
        Replay::Buffer(1000)
    );
    assert_eq!(replay_plan(&h, false, 999), Replay::Stream);
    h.remove(CONTENT_LENGTH);
    h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    assert_eq!(replay_plan(&h, false, MAX_REPLAY_BYTES), Replay::Stream);
    h.remove(TRANSFER_ENCODING);
    assert_eq!(
        replay_plan(&h, false, MAX_REPLAY_BYTES),
        Replay::Stream,
        "an HTTP/2 body of unknown length"
    );
}

#[tokio::test]
async fn buffering_respects_the_limit() {
    let ok = buffer(Full::new(Bytes::from_static(b"hello")), 5).await;
    assert_eq!(ok.unwrap(), Bytes::from_static(b"hello"));
    let big = buffer(Full::new(Bytes::from_static(b"hello!")), 5).await;
    assert!(matches!(big, Err(BufferError::TooLarge { limit: 5 })));
}
