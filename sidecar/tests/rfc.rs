//! The proxy rules of RFC 9110 (HTTP semantics), RFC 9112 (HTTP/1.1) and RFC 9113 section 8
//! (HTTP/2 <-> HTTP/1.1) that apply to the sidecar as a gateway, one test per rule or defect,
//! against real loopback backends (hyper servers, or raw sockets where a backend must misbehave)
//! and with raw HTTP/1 bytes or hyper clients. The list of rules and the decision on each is in
//! docs/sidecar.md ("HTTP conformance").

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use support::{Backend, h2_client, sidecar};

/// RFC 9110 9.3.2: a response to HEAD has no content. An HTTP/2 backend that sends some anyway
/// (hyper's HTTP/2 server does) must not turn a good answer into a reset stream: the client
/// gets the headers, the length a GET would get, and no body, as directly over HTTP/1.1.
#[tokio::test]
async fn a_head_answer_has_no_content_whatever_the_upstream_sends() {
    let backend = Backend::start("r0").await;
    let proxy = sidecar("{}", &[backend.spec()]).await;
    let client = h2_client();
    let req = Request::builder()
        .method(Method::HEAD)
        .uri(format!("http://{}/", proxy.traffic_addr()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .unwrap()
        .expect("an answer, not a reset stream");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-backend"], "r0");
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("a clean end")
        .to_bytes();
    assert!(body.is_empty());
}
