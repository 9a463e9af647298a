//! Drives a real demo replica listener on 127.0.0.1:0 over HTTP/1.1 and h2c.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use datastream_demo_replica::fault::Fault;
use datastream_demo_replica::server;
use datastream_demo_replica::service::App;
use datastream_demo_replica::store::Store;
use http::{Method, Request, StatusCode};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Running {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

async fn start(fault: Fault) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let drain = CancellationToken::new();
    let app = Arc::new(App::new(
        "replica-it".into(),
        Store::in_memory().unwrap(),
        fault,
        1 << 20,
        drain.clone(),
    ));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(
        listener,
        app,
        async move {
            let _ = stopped.await;
        },
        drain,
        Duration::from_secs(5),
    ));
    Running {
        addr,
        stop: Some(stop),
        task,
    }
}

async fn h1(addr: std::net::SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    send
}

async fn body_string(resp: hyper::Response<Incoming>) -> String {
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

fn req(method: Method, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "replica")
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn http1_identity_kv_and_faults() {
    let r = start(Fault::default()).await;
    let mut c = h1(r.addr).await;

    let resp = c
        .send_request(req(Method::GET, "/whoami", ""))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-replica-id"], "replica-it");
    assert_eq!(body_string(resp).await, "replica-it\n");

    let resp = c
        .send_request(req(Method::PUT, "/kv/alpha", "one"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = c
        .send_request(req(Method::GET, "/kv/alpha", ""))
        .await
        .unwrap();
    assert_eq!(body_string(resp).await, "one");

    let resp = c
        .send_request(req(Method::POST, "/admin/fault", r#"{"status":503}"#))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = c
        .send_request(req(Method::GET, "/ready", ""))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let resp = c
        .send_request(req(Method::GET, "/healthz", ""))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = c
        .send_request(req(Method::DELETE, "/admin/fault", ""))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = c
        .send_request(req(Method::GET, "/ready", ""))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    drop(c);
    stop(r).await;
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let r = start(Fault::default()).await;
    let io = TokioIo::new(TcpStream::connect(r.addr).await.unwrap());
    let (mut c, conn) =
        hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = c
        .send_request(req(Method::PUT, "http://replica/kv/h2", "over-h2"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let resp = c
        .send_request(req(Method::GET, "http://replica/kv/h2", ""))
        .await
        .unwrap();
    assert_eq!(body_string(resp).await, "over-h2");
    drop(c);
    stop(r).await;
}

#[tokio::test]
async fn echo_streams_before_request_body_ends() {
    let r = start(Fault::default()).await;
    let io = TokioIo::new(TcpStream::connect(r.addr).await.unwrap());
    let (mut c, conn) = hyper::client::conn::http1::handshake::<_, Channel<Bytes>>(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let (mut tx, body) = Channel::<Bytes>::new(1);
    let request = Request::post("/echo")
        .header("host", "replica")
        .body(body)
        .unwrap();
    let pending = tokio::spawn(async move { c.send_request(request).await });
    tx.send_data(Bytes::from_static(b"first")).await.unwrap();
    let mut resp_body = pending.await.unwrap().unwrap().into_body();
    // The first chunk must come back while the request is still open: a buffering server would wait.
    let first = resp_body
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(&first[..], b"first");
    tx.send_data(Bytes::from_static(b"second")).await.unwrap();
    drop(tx);
    let rest = resp_body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"second");
    stop(r).await;
}

#[tokio::test]
async fn hanging_request_is_released_by_graceful_shutdown() {
    let r = start(Fault {
        hang: true,
        ..Fault::default()
    })
    .await;
    let io = TokioIo::new(TcpStream::connect(r.addr).await.unwrap());
    let (mut c, conn) =
        hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    // `send_request` queues the request on the connection before returning its future, and HTTP/2 streams
    // on one connection reach the server in order: once the admin answer (which bypasses the hang) arrives,
    // the hanging request is known to be in flight.
    let pending = tokio::spawn(c.send_request(req(Method::GET, "http://replica/whoami", "")));
    let resp = c
        .send_request(req(Method::GET, "http://replica/admin/fault", ""))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!pending.is_finished());
    stop(r).await;
    let resp = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("hanging request not released")
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn listener_closed_after_shutdown() {
    let r = start(Fault::default()).await;
    let addr = r.addr;
    stop(r).await;
    assert!(TcpStream::connect(addr).await.is_err());
}

async fn stop(mut r: Running) {
    let _ = r.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(10), r.task)
        .await
        .expect("server did not stop")
        .unwrap();
}
