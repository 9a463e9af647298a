use super::*;

fn parse_str(s: &str) -> Result<Option<Head>, HeadError> {
    let mut buf = BytesMut::from(s);
    parse(&mut buf, 8192, MAX_HEADERS)
}

fn ok(s: &str) -> Head {
    parse_str(s).unwrap().unwrap()
}

#[test]
fn parses_a_simple_request_and_leaves_what_follows() {
    let mut buf = BytesMut::from("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Id: 7\r\n\r\nNEXT");
    let head = parse(&mut buf, 8192, MAX_HEADERS).unwrap().unwrap();
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
    assert_eq!(
        parse(&mut buf, 16, MAX_HEADERS).unwrap_err(),
        HeadError::TooLarge
    );
}

#[test]
fn keep_alive_follows_the_version_and_connection_header() {
    assert!(!ok("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keep_alive);
    assert!(!ok("GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
}

#[test]
fn framing_is_decided_from_length_or_chunked() {
    let h = ok("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(h.framing, Framing::Length(5));
    assert!(h.expect_continue);
    assert_eq!(
        ok("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").framing,
        Framing::Empty
    );
    // Agreeing lengths are forwarded as the one value (RFC 9110 8.6).
    for case in [
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
    ] {
        let h = ok(case);
        assert_eq!(h.framing, Framing::Length(3));
        let lengths: Vec<_> = h.request.headers().get_all(CONTENT_LENGTH).iter().collect();
        assert_eq!(lengths, ["3"], "{case:?}");
    }
    assert_eq!(
        ok("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n").framing,
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
    ] {
        assert_eq!(
            parse_str(case).unwrap_err(),
            HeadError::UnsupportedCoding,
            "{case:?}"
        );
    }
    // RFC 9112 6.3: a last coding other than chunked leaves the request unframed: 400.
    for case in [
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    ] {
        assert!(
            matches!(parse_str(case), Err(HeadError::Malformed(_))),
            "{case:?}"
        );
    }
}

/// RFC 9112 3.2: Host is required in HTTP/1.1, once, and valid; HTTP/1.0 may omit it.
#[test]
fn host_is_required_once_and_valid() {
    assert_eq!(
        parse_str("GET / HTTP/1.1\r\n\r\n").unwrap_err(),
        HeadError::Malformed("missing Host")
    );
    assert!(
        ok("GET / HTTP/1.0\r\n\r\n")
            .request
            .headers()
            .get(HOST)
            .is_none()
    );
    for good in ["a", "a.example:8080", "10.0.0.1:80", "[::1]:7080", ""] {
        let h = ok(&format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n"));
        assert_eq!(h.request.headers()[HOST], good);
    }
    for bad in ["u@a", "a:b", "a:80:90", "a b", "a/b"] {
        assert!(
            matches!(
                parse_str(&format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n")),
                Err(HeadError::Malformed(_))
            ),
            "{bad:?}"
        );
    }
}

/// RFC 9112 3.2: the target's form fits the method; userinfo and foreign schemes are refused.
#[test]
fn the_target_form_fits_the_method() {
    assert_eq!(
        ok("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").request.uri(),
        "*"
    );
    let h = ok("GET http://b.example:81/p?q HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(h.request.uri().authority().unwrap(), "b.example:81");
    for bad in [
        "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET a.example:80 HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://u:p@a.example/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET ftp://a.example/ HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert!(
            matches!(parse_str(bad), Err(HeadError::Malformed(_))),
            "{bad:?}"
        );
    }
}

/// Query bytes that curl and others send raw (`"`, `<`, `>`) are forwarded percent-encoded, not
/// refused.
#[test]
fn unencoded_query_bytes_are_percent_encoded() {
    let h = ok("GET /s?q=\"a<b>\"&x={1} HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(h.request.uri(), "/s?q=%22a%3Cb%3E%22&x=%7B1%7D");
}

/// RFC 9112 3: a request-target longer than the sidecar parses gets 414, not 431.
#[test]
fn an_overlong_target_is_414() {
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
    assert_eq!(parse_str(&long).unwrap_err(), HeadError::UriTooLong);
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(70_000));
    let mut buf = BytesMut::from(long.as_str());
    assert_eq!(
        parse(&mut buf, 1 << 20, MAX_HEADERS).unwrap_err(),
        HeadError::UriTooLong
    );
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
    assert_eq!(
        parse(&mut buf, 1 << 20, MAX_HEADERS).unwrap_err(),
        HeadError::TooLarge
    );
    // A raised limit takes them (parsed into a heap array), a lowered one refuses fewer.
    let mut buf = BytesMut::from(format!("{}host: a\r\n\r\n", &s[..s.len() - 2]).as_str());
    let head = parse(&mut buf, 1 << 20, 300).unwrap().unwrap();
    assert_eq!(head.request.headers().len(), MAX_HEADERS + 2);
    let mut buf = BytesMut::from("GET / HTTP/1.1\r\nhost: a\r\nx: 1\r\ny: 2\r\n\r\n");
    assert_eq!(
        parse(&mut buf, 1 << 20, 2).unwrap_err(),
        HeadError::TooLarge
    );
}
