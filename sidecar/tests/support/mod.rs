//! Test support: real backends on loopback with controllable latency and status, a sidecar
//! started in-process on ephemeral ports, and small HTTP clients.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use datastream_lb::endpoint::EndpointSpec;
use datastream_sidecar::config::compile::compile;
use datastream_sidecar::metrics::Metrics;
use datastream_sidecar::policy::Policy;
use datastream_sidecar::proxy::ServerLimits;
use datastream_sidecar::{RuntimeSettings, Shared, Sidecar};
use futures::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type TestBody = BoxBody<Bytes, hyper::Error>;

/// A backend replica: answers with its name after `latency`, with `status`.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub latency_ms: AtomicU64,
    pub status: AtomicU16,
    pub requests: AtomicU64,
    pub inflight: AtomicU64,
    pub connections: AtomicU64,
    pub last_headers: Mutex<Option<HeaderMap>>,
    task: tokio::task::JoinHandle<()>,
    kill: tokio::sync::watch::Sender<bool>,
}

impl Backend {
    /// Starts a backend on 127.0.0.1 with an ephemeral port.
    pub async fn start(name: &str) -> Arc<Backend> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(name, listener).await
    }

    /// Starts a backend that speaks only one protocol (`Version::HTTP_11` or `HTTP_2`).
    pub async fn start_speaking(name: &str, only: http::Version) -> Arc<Backend> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_as(name, listener, Some(only)).await
    }

    /// Starts a backend on a given address (to bring one back on the same port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Arc<Backend> {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(name, listener).await
    }

    async fn serve(name: &str, listener: TcpListener) -> Arc<Backend> {
        Self::serve_as(name, listener, None).await
    }

    async fn serve_as(
        name: &str,
        listener: TcpListener,
        only: Option<http::Version>,
    ) -> Arc<Backend> {
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<Arc<Backend>>();
        let (kill, killed) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let me = rx.await.unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                me.connections.fetch_add(1, Ordering::Relaxed);
                let me = Arc::clone(&me);
                let mut killed = killed.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let me = Arc::clone(&me);
                        async move { Ok::<_, Infallible>(me.handle(req).await) }
                    });
                    let io = TokioIo::new(stream);
                    // hyper-util's auto builder detects the protocol even when told one, so a
                    // single-protocol replica uses hyper's own builders.
                    let conn: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match only {
                        None => Box::pin(async move {
                            let builder =
                                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                            let _ = builder.serve_connection_with_upgrades(io, svc).await;
                        }),
                        Some(http::Version::HTTP_2) => Box::pin(async move {
                            let builder =
                                hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                            let _ = builder.serve_connection(io, svc).await;
                        }),
                        Some(_) => Box::pin(async move {
                            let builder = hyper::server::conn::http1::Builder::new();
                            let _ = builder.serve_connection(io, svc).with_upgrades().await;
                        }),
                    };
                    tokio::select! {
                        _ = conn => {}
                        _ = killed.wait_for(|k| *k) => {}
                    }
                });
            }
        });
        let backend = Arc::new(Backend {
            name: name.to_owned(),
            addr,
            latency_ms: AtomicU64::new(0),
            status: AtomicU16::new(200),
            requests: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            last_headers: Mutex::new(None),
            task,
            kill,
        });
        tx.send(Arc::clone(&backend)).ok().unwrap();
        backend
    }

    /// Dies: stops accepting and drops every open connection, like a killed process.
    pub fn kill(&self) {
        self.task.abort();
        let _ = self.kill.send(true);
    }

    pub fn set_latency(&self, ms: u64) {
        self.latency_ms.store(ms, Ordering::Relaxed);
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn spec(&self) -> EndpointSpec {
        EndpointSpec {
            addr: self.addr,
            name: self.name.clone(),
            local: false,
            serving: true,
        }
    }

    async fn handle(&self, mut req: Request<Incoming>) -> Response<TestBody> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inflight.fetch_add(1, Ordering::Relaxed);
        *self.last_headers.lock() = Some(req.headers().clone());
        let path = req.uri().path().to_owned();
        let mut extra = 0;
        if let Some(ms) = path.strip_prefix("/slow/") {
            extra = ms.parse().unwrap_or(0);
        }
        let latency = self.latency_ms.load(Ordering::Relaxed) + extra;
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let resp = if path == "/ws" {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on_upgrade.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 1024];
                    loop {
                        match io.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let mut out = b"echo:".to_vec();
                                out.extend_from_slice(&buf[..n]);
                                if io.write_all(&out).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(empty())
                .unwrap()
        } else if path == "/echo" {
            // gRPC-style: stream the request body back as it arrives, then trailers.
            let name = self.name.clone();
            let frames = BodyStream::new(req.into_body())
                .filter_map(|f| async move {
                    match f {
                        Ok(f) => f.into_data().ok().map(|d| Ok(Frame::data(d))),
                        Err(e) => Some(Err(e)),
                    }
                })
                .chain(futures::stream::once(async move {
                    let mut t = HeaderMap::new();
                    t.insert("grpc-status", "0".parse().unwrap());
                    t.insert("x-replica", name.parse().unwrap());
                    Ok(Frame::trailers(t))
                }));
            Response::builder()
                .header("content-type", "application/grpc")
                .header("x-backend", &self.name)
                // HTTP/1 servers send trailers only when they are announced.
                .header("trailer", "grpc-status, x-replica")
                .body(BodyExt::boxed(StreamBody::new(frames)))
                .unwrap()
        } else if let Some(spec) = path.strip_prefix("/drip/") {
            // A streaming response: `/drip/<chunks>/<ms between chunks>`.
            let (n, ms) = spec.split_once('/').unwrap_or(("1", "0"));
            let (n, ms): (u64, u64) = (n.parse().unwrap_or(1), ms.parse().unwrap_or(0));
            let frames = futures::stream::iter(0..n).then(move |i| async move {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Ok::<_, hyper::Error>(Frame::data(Bytes::from(format!("chunk{i}\n"))))
            });
            Response::builder()
                .header("x-backend", &self.name)
                .body(BodyExt::boxed(StreamBody::new(frames)))
                .unwrap()
        } else if path == "/version" {
            // What arrived here: the protocol and the authority (URI or Host).
            let authority = req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .or_else(|| {
                    req.headers()
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            full_response(200, &self.name, format!("{:?} {authority}", req.version()))
        } else if path == "/headers" {
            let mut text = String::new();
            for (k, v) in req.headers() {
                text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            full_response(200, &self.name, text)
        } else if path == "/upload" {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            full_response(200, &self.name, format!("{body}"))
        } else {
            let status = self.status.load(Ordering::Relaxed);
            full_response(status, &self.name, self.name.clone())
        };
        self.inflight.fetch_sub(1, Ordering::Relaxed);
        resp
    }
}

fn full_response(status: u16, name: &str, body: String) -> Response<TestBody> {
    Response::builder()
        .status(status)
        .header("x-backend", name)
        .header("connection", "keep-alive")
        .header("keep-alive", "timeout=5")
        .body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
        .unwrap()
}

fn empty() -> TestBody {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

/// A loopback address where every connect is refused, held for as long as the returned
/// socket lives. The socket is bound but never listens, and without `SO_REUSEADDR`, so no
/// other test can take the port in the meantime (a listener bound and dropped frees the
/// port, and a parallel test's server answering on it turns "refused" into a real reply).
pub fn refusing_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// Starts `n` backends named r0..rN.
pub async fn backends(n: usize) -> Vec<Arc<Backend>> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(Backend::start(&format!("r{i}")).await);
    }
    v
}

/// Compiles a traffic policy written as YAML (the DataStream `spec.traffic` shape).
pub fn policy(yaml: &str, metrics: &Metrics) -> Policy {
    let traffic = serde_saphyr::from_str(yaml).expect("valid traffic YAML");
    compile(&traffic, 1, "test", metrics).expect("valid policy")
}

pub fn settings(drain_delay: Duration) -> RuntimeSettings {
    RuntimeSettings {
        traffic: "127.0.0.1:0".parse().unwrap(),
        peer: Some("127.0.0.1:0".parse().unwrap()),
        admin: "127.0.0.1:0".parse().unwrap(),
        limits: ServerLimits {
            header_read_timeout: Duration::from_millis(500),
            max_header_bytes: 16 * 1024,
            ..ServerLimits::default()
        },
        drain_delay,
        drain_timeout: Duration::from_secs(5),
    }
}

/// Starts a sidecar with `traffic` (YAML) over `endpoints`.
pub async fn sidecar(traffic: &str, endpoints: &[EndpointSpec]) -> Sidecar {
    sidecar_with(traffic, endpoints, settings(Duration::from_millis(300))).await
}

pub async fn sidecar_with(
    traffic: &str,
    endpoints: &[EndpointSpec],
    settings: RuntimeSettings,
) -> Sidecar {
    let metrics = Metrics::new();
    let p = policy(traffic, &metrics);
    let shared = Arc::new(Shared::new(p, metrics));
    shared.set_endpoints(endpoints);
    Sidecar::start(&settings, shared, serde_json::json!({}))
        .await
        .expect("sidecar starts")
}

pub type H1Client = Client<HttpConnector, Full<Bytes>>;

pub fn h1_client() -> H1Client {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(2))
        .build(c)
}

pub fn h2_client() -> H1Client {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(c)
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn backend(&self) -> &str {
        self.headers
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends a GET with `headers` to `addr` + `path`.
pub async fn get(
    client: &H1Client,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    try_get(client, addr, path, headers)
        .await
        .expect("request succeeds")
}

pub async fn try_get(
    client: &H1Client,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let mut b = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client
        .request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Writes raw bytes to `addr` and reads until the peer closes or `wait` passes.
pub async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in raw HTTP/1 text.
pub fn raw_status(text: &str) -> Option<u16> {
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

// === the sidecar binary ===

/// A loopback address that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A child process killed and reaped when dropped.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the `datastream-sidecar` binary with `args`, its output discarded.
pub fn spawn_sidecar(args: &[&str]) -> Proc {
    Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_datastream-sidecar"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("binary starts"),
    )
}
