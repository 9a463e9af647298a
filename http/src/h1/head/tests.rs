use super::*;

fn parse_str(s: &str) -> Result<Option<Head>, HeadError> {
    let mut buf = BytesMut::from(s);
    parse(&mut buf, 8192)
}

fn ok(s: &str) -> Head {
    parse_str(s).unwrap().unwrap()
}

#[test]
fn parses_a_simple_request_and_leaves_what_follows() {
    let mut buf = BytesMut::from("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Id: 7\r\n\r\nNEXT");
    let head = parse(&mut buf, 8192).unwrap().unwrap();
    assert_eq!(head.request.method(), Method::GET);
    assert_eq!(head.request.uri(), "/a?b=1");
    assert_eq!(head.request.version(), Version::HTTP_11);
    assert_eq!(head.request.headers()["x-id"], "7");
    assert_eq!(head.framing, Framing::Empty);
    assert!(head.keep_alive);
    assert_eq!(&buf[..], b"NEXT");
}

#[test]
fn incomplete_heads_ask_for_more_until_the_limit() {
    assert!(
        parse_str("GET / HTTP/1.1\r\nHost: x\r\n")
            .unwrap()
            .is_none()
    );
    let mut buf = BytesMut::from("GET / HTTP/1.1\r\nX: aaaaaaaaaaaaaaaa\r\n");
    assert_eq!(parse(&mut buf, 16).unwrap_err(), HeadError::TooLarge);
}

#[test]
fn keep_alive_follows_the_version_and_connection_header() {
    assert!(!ok("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
    assert!(!ok("GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
}

#[test]
fn framing_is_decided_from_length_or_chunked() {
    let h = ok("POST / HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(h.framing, Framing::Length(5));
    assert!(h.expect_continue);
    assert_eq!(
        ok("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").framing,
        Framing::Empty
    );
    assert_eq!(
        ok("POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n").framing,
        Framing::Length(3)
    );
    assert_eq!(
        ok("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").framing,
        Framing::Chunked
    );
}

#[test]
fn smuggling_shapes_are_refused() {
    let cases = [
        "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ];
    for case in cases {
        assert!(
            matches!(parse_str(case), Err(HeadError::Ambiguous(_))),
            "{case:?}"
        );
    }
    for case in [
        "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length : 5\r\n\r\n",
        "POST / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
    ] {
        assert!(
            matches!(parse_str(case), Err(HeadError::Malformed(_))),
            "{case:?}"
        );
    }
    for case in [
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
    ] {
        assert_eq!(
            parse_str(case).unwrap_err(),
            HeadError::UnsupportedCoding,
            "{case:?}"
        );
    }
}

#[test]
fn garbage_is_malformed_not_a_panic() {
    for case in [
        "\u{0}\u{1}\u{2}\r\n\r\n",
        "GET\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
    ] {
        assert!(parse_str(case).is_err(), "{case:?}");
    }
}

#[test]
fn too_many_fields_is_too_large() {
    let mut s = String::from("GET / HTTP/1.1\r\n");
    for i in 0..=MAX_HEADERS {
        s.push_str(&format!("x-{i}: v\r\n"));
    }
    s.push_str("\r\n");
    let mut buf = BytesMut::from(s.as_str());
    assert_eq!(parse(&mut buf, 1 << 20).unwrap_err(), HeadError::TooLarge);
}
