//! Request routing and the handlers of every endpoint.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use tokio_util::sync::CancellationToken;

use crate::fault::{Decision, Fault, FaultState};
use crate::store::{Store, StoreError};

/// Error type carried by response bodies (an echoed request body may fail mid-stream).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type of every response.
pub type ResponseBody = BoxBody<Bytes, BoxError>;

/// Header naming the replica that answered, on every response.
pub const REPLICA_HEADER: &str = "x-replica-id";

/// Shared state of the service.
#[derive(Debug)]
pub struct App {
    identity: String,
    identity_header: HeaderValue,
    store: Store,
    faults: FaultState,
    shutdown: CancellationToken,
    max_value_bytes: usize,
    /// Memory held on purpose through `/admin/memory` (to test memory limits).
    ballast: parking_lot::Mutex<Vec<Vec<u8>>>,
}

impl App {
    /// Builds the service state around `store` (the `/kv` data). `shutdown` is cancelled when the
    /// replica starts draining; it releases hanging requests and turns `/ready` to 503.
    pub fn new(
        identity: String,
        store: Store,
        fault: Fault,
        max_value_bytes: usize,
        shutdown: CancellationToken,
    ) -> Self {
        let identity_header = HeaderValue::from_str(&identity)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid-identity"));
        Self {
            identity,
            identity_header,
            store,
            faults: FaultState::new(fault),
            shutdown,
            max_value_bytes,
            ballast: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// The replica identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The `/kv` store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The fault state, for callers that configure it directly.
    pub fn faults(&self) -> &FaultState {
        &self.faults
    }
}

/// Serves one request. Never fails: every error becomes an HTTP status.
pub async fn handle<B>(
    app: Arc<App>,
    req: Request<B>,
) -> Result<Response<ResponseBody>, std::convert::Infallible>
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let head = req.method() == Method::HEAD;
    let mut resp = route(&app, req).await;
    resp.headers_mut()
        .insert(REPLICA_HEADER, app.identity_header.clone());
    if head {
        // A response to HEAD has no content (RFC 9110 9.3.2); hyper's HTTP/1 server drops it,
        // its HTTP/2 server would send it. The length of what a GET would get stays.
        if let Some(len) = resp.body().size_hint().exact()
            && !resp.headers().contains_key(http::header::CONTENT_LENGTH)
        {
            resp.headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        resp = resp.map(|_| no_content());
    }
    Ok(resp)
}

fn no_content() -> ResponseBody {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

async fn route<B>(app: &App, req: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let path = req.uri().path().to_owned();
    // Health and admin endpoints bypass faults so that liveness holds and a fault can always be cleared.
    if path == "/healthz" {
        return only(&req, &[Method::GET, Method::HEAD])
            .unwrap_or_else(|| text(StatusCode::OK, "ok\n"));
    }
    if path == "/admin/fault" {
        return admin_fault(app, req).await;
    }
    if path == "/admin/memory" {
        return admin_memory(app, req).await;
    }
    if let Some(resp) = apply_fault(app).await {
        return resp;
    }
    match path.as_str() {
        "/" => match only(&req, &[Method::GET, Method::HEAD]) {
            Some(resp) => resp,
            None => identity_json(app).await,
        },
        "/whoami" => only(&req, &[Method::GET, Method::HEAD])
            .unwrap_or_else(|| text(StatusCode::OK, format!("{}\n", app.identity))),
        "/ready" => only(&req, &[Method::GET, Method::HEAD]).unwrap_or_else(|| {
            if app.shutdown.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }),
        "/echo" => only(&req, &[Method::POST, Method::PUT]).unwrap_or_else(|| echo(req)),
        p if p.starts_with("/kv/") => kv(app, req).await,
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Applies latency, then the status or hang decision; `None` means "serve normally".
async fn apply_fault(app: &App) -> Option<Response<ResponseBody>> {
    let fault = app.faults.get();
    if !fault.is_active() {
        return None;
    }
    let latency = fault.latency();
    if !latency.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(latency) => {}
            () = app.shutdown.cancelled() => {}
        }
    }
    match fault.decide(rand::random::<f64>()) {
        Decision::Pass => None,
        Decision::Fail(code) => Some(text(code, "injected fault\n")),
        Decision::Hang => {
            app.shutdown.cancelled().await;
            Some(text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"))
        }
    }
}

async fn admin_fault<B>(app: &App, req: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    match *req.method() {
        Method::GET => json(StatusCode::OK, &app.faults.get()),
        Method::DELETE => {
            app.faults.clear();
            json(StatusCode::OK, &app.faults.get())
        }
        Method::POST | Method::PUT => {
            let body = match read_limited(req.into_body(), 64 * 1024).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let fault: Fault = match serde_json::from_slice(&body) {
                Ok(f) => f,
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("invalid fault: {e}\n")),
            };
            if let Err(e) = fault.validate() {
                return text(StatusCode::BAD_REQUEST, format!("invalid fault: {e}\n"));
            }
            tracing::info!(?fault, "fault configured through admin request");
            app.faults.set(fault);
            json(StatusCode::OK, &app.faults.get())
        }
        _ => method_not_allowed(&[Method::GET, Method::POST, Method::PUT, Method::DELETE]),
    }
}

/// Most memory one `/admin/memory` request may add.
const MAX_BALLAST_MIB: u64 = 4096;

/// `/admin/memory`: `POST {"mib": N}` allocates N MiB more and writes every page, so that it is
/// resident and counts against the container's memory limit; `GET` reports what is held and
/// `DELETE` frees it. This is how the e2e suite checks that a memory limit is enforced.
async fn admin_memory<B>(app: &App, req: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Grow {
        mib: u64,
    }
    let held = |app: &App| -> u64 {
        app.ballast
            .lock()
            .iter()
            .map(|b| b.len() as u64)
            .sum::<u64>()
            >> 20
    };
    match *req.method() {
        Method::GET => json(StatusCode::OK, &serde_json::json!({"mib": held(app)})),
        Method::DELETE => {
            app.ballast.lock().clear();
            json(StatusCode::OK, &serde_json::json!({"mib": 0}))
        }
        Method::POST => {
            let body = match read_limited(req.into_body(), 1024).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let grow: Grow = match serde_json::from_slice(&body) {
                Ok(g) => g,
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("invalid request: {e}\n")),
            };
            if grow.mib > MAX_BALLAST_MIB {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("mib {} exceeds {MAX_BALLAST_MIB}\n", grow.mib),
                );
            }
            tracing::warn!(mib = grow.mib, "allocating memory on request");
            {
                let mut ballast = app.ballast.lock();
                for _ in 0..grow.mib {
                    // Non-zero bytes: the pages must really be written to become resident.
                    ballast.push(vec![0xa5; 1 << 20]);
                }
            }
            json(StatusCode::OK, &serde_json::json!({"mib": held(app)}))
        }
        _ => method_not_allowed(&[Method::GET, Method::POST, Method::DELETE]),
    }
}

async fn kv<B>(app: &App, req: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let key = req.uri().path().trim_start_matches("/kv/").to_owned();
    if key.is_empty() {
        return text(StatusCode::BAD_REQUEST, "empty key\n");
    }
    match *req.method() {
        Method::GET | Method::HEAD => match app.store.get(&key).await {
            Ok(Some(value)) => {
                let mut resp = Response::new(full(value));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                resp
            }
            Ok(None) => text(StatusCode::NOT_FOUND, "no such key\n"),
            Err(e) => storage_error(&e),
        },
        Method::PUT => {
            let value = match read_limited(req.into_body(), app.max_value_bytes).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            // `put` returns once the write is committed durably (fsync), so a 2xx means it is on disk.
            match app.store.put(&key, value).await {
                Ok(true) => empty(StatusCode::CREATED),
                Ok(false) => empty(StatusCode::NO_CONTENT),
                Err(e) => storage_error(&e),
            }
        }
        Method::DELETE => match app.store.delete(&key).await {
            Ok(true) => empty(StatusCode::NO_CONTENT),
            Ok(false) => text(StatusCode::NOT_FOUND, "no such key\n"),
            Err(e) => storage_error(&e),
        },
        _ => method_not_allowed(&[Method::GET, Method::HEAD, Method::PUT, Method::DELETE]),
    }
}

/// Streams the request body back frame by frame, so a proxy in between must stream too.
fn echo<B>(req: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let content_type = req.headers().get(CONTENT_TYPE).cloned();
    let mut resp = Response::new(req.into_body().map_err(Into::into).boxed());
    if let Some(ct) = content_type {
        resp.headers_mut().insert(CONTENT_TYPE, ct);
    }
    resp
}

/// 503 for a failure of availability (I/O error, disk full), 413 for a value the database refuses
/// as too large, 500 otherwise; the store has logged the error.
fn storage_error(e: &StoreError) -> Response<ResponseBody> {
    let status = if e.is_value_too_large() {
        StatusCode::PAYLOAD_TOO_LARGE
    } else if e.is_unavailable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    text(status, format!("storage error: {e}\n"))
}

async fn identity_json(app: &App) -> Response<ResponseBody> {
    // A failing database does not fail the identity answer: `keys` is null then (the store logs why).
    let keys = app.store.len().await.ok();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "replica": app.identity,
            "version": env!("CARGO_PKG_VERSION"),
            "keys": keys,
        }),
    )
}

async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, Response<ResponseBody>>
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {limit} bytes\n"),
        )),
        Err(e) => Err(text(
            StatusCode::BAD_REQUEST,
            format!("reading body: {e}\n"),
        )),
    }
}

/// `Some(405)` when the method is not among `allowed`.
fn only<B>(req: &Request<B>, allowed: &[Method]) -> Option<Response<ResponseBody>> {
    (!allowed.contains(req.method())).then(|| method_not_allowed(allowed))
}

fn method_not_allowed(allowed: &[Method]) -> Response<ResponseBody> {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    let list = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(v) = HeaderValue::from_str(&list) {
        resp.headers_mut().insert(ALLOW, v);
    }
    resp
}

fn full(b: impl Into<Bytes>) -> ResponseBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<ResponseBody> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> Arc<App> {
        Arc::new(App::new(
            "replica-7".into(),
            Store::in_memory().unwrap(),
            Fault::default(),
            16,
            CancellationToken::new(),
        ))
    }

    async fn call(
        app: &Arc<App>,
        method: Method,
        path: &str,
        body: &'static str,
    ) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let resp = handle(app.clone(), req).await.unwrap();
        assert_eq!(resp.headers()[REPLICA_HEADER], "replica-7");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn whoami_and_root_report_identity() {
        let a = app();
        assert_eq!(
            call(&a, Method::GET, "/whoami", "").await,
            (StatusCode::OK, "replica-7\n".into())
        );
        let (status, body) = call(&a, Method::GET, "/", "").await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["replica"], "replica-7");
    }

    #[tokio::test]
    async fn kv_lifecycle_and_limits() {
        let a = app();
        assert_eq!(
            call(&a, Method::GET, "/kv/x", "").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&a, Method::PUT, "/kv/x", "v1").await.0,
            StatusCode::CREATED
        );
        assert_eq!(
            call(&a, Method::PUT, "/kv/x", "v2").await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            call(&a, Method::GET, "/kv/x", "").await,
            (StatusCode::OK, "v2".into())
        );
        assert_eq!(
            call(&a, Method::PUT, "/kv/big", "01234567890123456789")
                .await
                .0,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            call(&a, Method::DELETE, "/kv/x", "").await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            call(&a, Method::DELETE, "/kv/x", "").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&a, Method::PUT, "/kv/", "v").await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            call(&a, Method::POST, "/kv/x", "v").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn storage_failure_answers_503_with_a_reason() {
        let backend = crate::store::tests::FailingBackend::default();
        let fail = backend.fail.clone();
        let store = Store::with_backend(backend, "failing").unwrap();
        let a = Arc::new(App::new(
            "replica-7".into(),
            store,
            Fault::default(),
            16,
            CancellationToken::new(),
        ));
        assert_eq!(
            call(&a, Method::PUT, "/kv/x", "v1").await.0,
            StatusCode::CREATED
        );
        fail.store(true, std::sync::atomic::Ordering::Relaxed);
        let (status, body) = call(&a, Method::PUT, "/kv/y", "v2").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.starts_with("storage error: put failed in database failing"),
            "{body}"
        );
        fail.store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            call(&a, Method::GET, "/kv/x", "").await,
            (StatusCode::OK, "v1".into())
        );
    }

    #[tokio::test]
    async fn root_counts_keys_from_the_store() {
        let a = app();
        call(&a, Method::PUT, "/kv/a", "1").await;
        call(&a, Method::PUT, "/kv/b", "2").await;
        let (_, body) = call(&a, Method::GET, "/", "").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["keys"], 2);
    }

    #[tokio::test]
    async fn admin_memory_holds_and_frees_what_it_is_asked_for() {
        let a = app();
        let (s, body) = call(&a, Method::POST, "/admin/memory", r#"{"mib":3}"#).await;
        assert_eq!((s, body.trim()), (StatusCode::OK, r#"{"mib":3}"#));
        let (_, body) = call(&a, Method::GET, "/admin/memory", "").await;
        assert_eq!(body.trim(), r#"{"mib":3}"#);
        let (s, _) = call(&a, Method::POST, "/admin/memory", r#"{"mib":99999}"#).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (_, body) = call(&a, Method::DELETE, "/admin/memory", "").await;
        assert_eq!(body.trim(), r#"{"mib":0}"#);
    }

    #[tokio::test]
    async fn admin_fault_fails_data_and_ready_but_not_health() {
        let a = app();
        let (s, _) = call(&a, Method::POST, "/admin/fault", r#"{"status":503}"#).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            call(&a, Method::GET, "/ready", "").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            call(&a, Method::GET, "/whoami", "").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            call(&a, Method::GET, "/healthz", "").await.0,
            StatusCode::OK
        );
        assert_eq!(
            call(&a, Method::DELETE, "/admin/fault", "").await.0,
            StatusCode::OK
        );
        assert_eq!(call(&a, Method::GET, "/ready", "").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn admin_fault_rejects_invalid_bodies() {
        let a = app();
        assert_eq!(
            call(&a, Method::POST, "/admin/fault", "{").await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            call(&a, Method::POST, "/admin/fault", r#"{"rate":3}"#)
                .await
                .0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(a.faults().get(), Fault::default());
    }

    #[tokio::test]
    async fn hang_released_by_shutdown() {
        let token = CancellationToken::new();
        let a = Arc::new(App::new(
            "r".into(),
            Store::in_memory().unwrap(),
            Fault {
                hang: true,
                ..Fault::default()
            },
            16,
            token.clone(),
        ));
        let req = Request::get("/whoami")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let pending = tokio::spawn(handle(a.clone(), req));
        tokio::task::yield_now().await;
        assert!(!pending.is_finished());
        token.cancel();
        let resp = pending.await.unwrap().unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn echo_returns_body_and_ready_turns_unavailable_on_shutdown() {
        let token = CancellationToken::new();
        let a = Arc::new(App::new(
            "replica-7".into(),
            Store::in_memory().unwrap(),
            Fault::default(),
            16,
            token.clone(),
        ));
        assert_eq!(
            call(&a, Method::POST, "/echo", "hello").await,
            (StatusCode::OK, "hello".into())
        );
        token.cancel();
        assert_eq!(
            call(&a, Method::GET, "/ready", "").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            call(&a, Method::GET, "/nope", "").await.0,
            StatusCode::NOT_FOUND
        );
    }
}
