use super::*;
use http::Response;

fn encode(
    resp: Response<()>,
    size: SizeHint,
    ended: bool,
    method: Method,
    version: Version,
) -> (String, Framing, bool) {
    let (parts, ()) = resp.into_parts();
    let mut out = Vec::new();
    let ex = Exchange {
        trailers: false,
        method: &method,
        version,
        keep_alive: true,
    };
    let (framing, close) = head(&mut out, &parts, &size, ended, ex, None);
    (String::from_utf8(out).unwrap(), framing, close)
}

#[test]
fn known_lengths_use_content_length_and_keep_alive() {
    let resp = Response::builder().header("x-a", "1").body(()).unwrap();
    let (text, framing, close) = encode(
        resp,
        SizeHint::with_exact(5),
        false,
        Method::GET,
        Version::HTTP_11,
    );
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\ndate: "),
        "{text}"
    );
    assert!(text.ends_with("GMT\r\n\r\n"), "{text}");
    assert_eq!(framing, Framing::Length(5));
    assert!(!close);
}

#[test]
fn unknown_lengths_are_chunked_or_close_delimited() {
    let (text, framing, close) = encode(
        Response::new(()),
        SizeHint::new(),
        false,
        Method::GET,
        Version::HTTP_11,
    );
    assert!(text.contains("transfer-encoding: chunked\r\n"));
    assert_eq!((framing, close), (Framing::Chunked, false));
    let (text, framing, close) = encode(
        Response::new(()),
        SizeHint::new(),
        false,
        Method::GET,
        Version::HTTP_10,
    );
    assert!(text.contains("connection: close\r\n"));
    assert_eq!((framing, close), (Framing::Eof, true));
}

#[test]
fn bodyless_answers_send_no_body() {
    let resp = Response::builder()
        .header("content-length", "10")
        .body(())
        .unwrap();
    let (text, framing, _) = encode(resp, SizeHint::new(), false, Method::HEAD, Version::HTTP_11);
    assert!(text.contains("content-length: 10\r\n"));
    assert_eq!(framing, Framing::None);
    let resp = Response::builder().status(204).body(()).unwrap();
    let (text, framing, _) = encode(resp, SizeHint::new(), true, Method::GET, Version::HTTP_11);
    assert!(!text.contains("content-length"));
    assert_eq!(framing, Framing::None);
}

#[test]
fn chunks_and_trailers_are_framed() {
    let mut out = Vec::new();
    let mut framing = Framing::Chunked;
    data_prefix(&mut out, &mut framing, 11).unwrap();
    out.extend_from_slice(b"hello world");
    data_suffix(&mut out, framing, 11);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    finish(&mut out, framing, Some(&trailers)).unwrap();
    assert_eq!(out, b"b\r\nhello world\r\n0\r\ngrpc-status: 0\r\n\r\n");
}

#[test]
fn declared_lengths_are_enforced() {
    let mut framing = Framing::Length(3);
    assert_eq!(
        data_prefix(&mut Vec::new(), &mut framing, 4),
        Err(LengthMismatch)
    );
    let mut framing = Framing::Length(3);
    data_prefix(&mut Vec::new(), &mut framing, 2).unwrap();
    assert_eq!(finish(&mut Vec::new(), framing, None), Err(LengthMismatch));
}

#[test]
fn refusals_close_the_connection() {
    let text = refusal(StatusCode::BAD_REQUEST, "bad-request", "nope");
    let text = std::str::from_utf8(&text).unwrap();
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
    assert!(text.contains("connection: close\r\n"));
    assert!(text.ends_with("\r\n\r\nnope\n"));
}

/// Relayed field lines go out after the map's, as they came; the encoder's own `Date` only
/// when they have none, and their `Content-Length` line left out when the body goes chunked.
#[test]
fn relayed_fields_are_written_as_received() {
    let relayed = super::super::relayed::of_head(
        "HTTP/1.1 200 OK\r\nX-Replica: r1\r\nContent-Length: 5\r\n\r\n",
    )
    .unwrap();
    let resp = Response::builder()
        .header("connection", "close")
        .body(())
        .unwrap();
    let (parts, ()) = resp.into_parts();
    let method = Method::GET;
    let ex = Exchange {
        trailers: false,
        method: &method,
        version: Version::HTTP_11,
        keep_alive: true,
    };
    let mut out = Vec::new();
    let size = SizeHint::with_exact(5);
    let (framing, close) = head(&mut out, &parts, &size, false, ex, Some(&relayed));
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with(
            "HTTP/1.1 200 OK\r\nconnection: close\r\nX-Replica: r1\r\nContent-Length: 5\r\ndate: "
        ),
        "{text}"
    );
    assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
    assert_eq!((framing, close), (Framing::Length(5), true));

    let dated = super::super::relayed::of_head(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: Mon, 07 Dec 2026 00:00:00 GMT\r\n\r\n",
    )
    .unwrap();
    let (parts, ()) = Response::new(()).into_parts();
    let chunked = Exchange {
        trailers: true,
        ..ex
    };
    let mut out = Vec::new();
    let (framing, _) = head(&mut out, &parts, &size, false, chunked, Some(&dated));
    assert_eq!(framing, Framing::Chunked);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 200 OK\r\nDate: Mon, 07 Dec 2026 00:00:00 GMT\r\ntransfer-encoding: chunked\r\n\r\n"
    );
}
