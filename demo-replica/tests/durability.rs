//! The real binary with `--data-dir`: every write answered 2xx survives SIGKILL (no graceful shutdown)
//! and a restart on the same directory, and a second process cannot open a database already in use.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_datastream-demo-replica");

/// A replica process; killed (SIGKILL) when dropped.
struct Replica {
    child: Child,
    addr: SocketAddr,
}

fn command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["--listen", "127.0.0.1:0", "--replica-id", "durable"])
        .env("RUST_LOG", "info")
        .env_remove("DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Starts the binary on `dir` and waits for its "listening" log line, which names the port.
async fn start(dir: &Path) -> Replica {
    let mut child = command().arg("--data-dir").arg(dir).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            eprintln!("replica: {line}");
            if line.contains("demo replica listening") {
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .unwrap_or_else(|| panic!("no addr= in {line:?}"));
                return addr.parse::<SocketAddr>().unwrap();
            }
        }
        panic!("replica exited before listening");
    })
    .await
    .expect("replica did not start listening");
    // Keep draining the log so that the process never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("replica: {line}");
        }
    });
    Replica { child, addr }
}

impl Replica {
    /// SIGKILL, then checks the process really died of it (no shutdown code ran).
    async fn sigkill(mut self) {
        self.child.start_kill().unwrap();
        let status = self.child.wait().await.unwrap();
        assert_eq!(status.signal(), Some(9), "{status:?}");
    }
}

async fn call(addr: SocketAddr, method: Method, path: &str, body: Bytes) -> (StatusCode, Bytes) {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "replica")
        .body(Full::new(body))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["x-replica-id"], "durable");
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

fn value(i: usize) -> Bytes {
    match i {
        // Every byte value, and a value larger than a database page.
        0 => (0..=255u8).collect::<Vec<_>>().into(),
        1 => vec![b'x'; 64 * 1024].into(),
        _ => format!("value-{i}").into_bytes().into(),
    }
}

#[tokio::test]
async fn writes_survive_sigkill_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    // Not there yet: the replica creates it.
    let dir = tmp.path().join("data");
    let keys = 40;

    let r = start(&dir).await;
    for i in 0..keys {
        let (status, body) = call(r.addr, Method::PUT, &format!("/kv/key-{i}"), value(i)).await;
        assert_eq!(status, StatusCode::CREATED, "key-{i}: {body:?}");
    }
    let (status, _) = call(r.addr, Method::DELETE, "/kv/key-3", Bytes::new()).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(r.addr, Method::PUT, "/kv/key-2", value(1000)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Killed right after the last answer: only the commits can have saved the data.
    r.sigkill().await;
    assert!(dir.join("kv.redb").is_file());

    let r = start(&dir).await;
    for i in 0..keys {
        let (status, body) = call(r.addr, Method::GET, &format!("/kv/key-{i}"), Bytes::new()).await;
        match i {
            2 => assert_eq!((status, body), (StatusCode::OK, value(1000))),
            3 => assert_eq!(status, StatusCode::NOT_FOUND),
            _ => assert_eq!((status, body), (StatusCode::OK, value(i)), "key-{i}"),
        }
    }
    let (status, body) = call(r.addr, Method::GET, "/", Bytes::new()).await;
    assert_eq!(status, StatusCode::OK);
    let root: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(root["keys"], keys - 1);

    // Writes after the restart are durable too.
    let (status, _) = call(r.addr, Method::PUT, "/kv/after", value(7)).await;
    assert_eq!(status, StatusCode::CREATED);
    r.sigkill().await;
    let r = start(&dir).await;
    let (status, body) = call(r.addr, Method::GET, "/kv/after", Bytes::new()).await;
    assert_eq!((status, body), (StatusCode::OK, value(7)));
    r.sigkill().await;
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_fails_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let r = start(tmp.path()).await;

    // The second one gets the directory through $DATA_DIR, which `--data-dir` falls back to.
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        command().env("DATA_DIR", tmp.path()).output(),
    )
    .await
    .expect("the second replica did not exit")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let file = tmp.path().join("kv.redb").display().to_string();
    assert!(stderr.contains(&file), "{stderr}");
    assert!(stderr.contains("already open"), "{stderr}");

    // The first one is undisturbed.
    let (status, _) = call(r.addr, Method::PUT, "/kv/k", Bytes::from_static(b"v")).await;
    assert_eq!(status, StatusCode::CREATED);
    r.sigkill().await;
}
