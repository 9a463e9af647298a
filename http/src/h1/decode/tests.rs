use super::*;

fn drain(decoder: &mut Decoder, input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), DecodeError> {
    let mut buf = BytesMut::from(input);
    let mut data = Vec::new();
    loop {
        match decoder.decode(&mut buf, 1024)? {
            Decoded::Data(d) => data.extend_from_slice(&d),
            Decoded::Trailers(t) => return Ok((data, Some(t))),
            Decoded::End => return Ok((data, None)),
            Decoded::NeedMore => panic!("incomplete input"),
        }
    }
}

#[test]
fn length_bodies_stop_at_their_length() {
    let mut buf = BytesMut::from(&b"helloGET"[..]);
    let mut d = Decoder::Length(5);
    assert_eq!(
        d.decode(&mut buf, 0),
        Ok(Decoded::Data(Bytes::from("hello")))
    );
    assert_eq!(d.decode(&mut buf, 0), Ok(Decoded::End));
    assert_eq!(&buf[..], b"GET");
}

#[test]
fn chunked_bodies_with_extensions_and_trailers() {
    let mut d = Decoder::ChunkSize;
    let (data, trailers) = drain(
        &mut d,
        b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\ngrpc-status: 0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(data, b"hello0123456789");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    let mut d = Decoder::ChunkSize;
    assert_eq!(
        drain(&mut d, b"3\r\nabc\r\n0\r\n\r\n").unwrap(),
        (b"abc".to_vec(), None)
    );
}

#[test]
fn decoding_resumes_across_reads() {
    let input = b"4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n";
    let mut d = Decoder::ChunkSize;
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    for &b in input {
        buf.extend_from_slice(&[b]);
        loop {
            match d.decode(&mut buf, 1024).unwrap() {
                Decoded::Data(x) => data.extend_from_slice(&x),
                Decoded::NeedMore => break,
                Decoded::End | Decoded::Trailers(_) => break,
            }
        }
    }
    assert!(d.is_done());
    assert_eq!(data, b"wikipedia");
}

#[test]
fn lenient_framings_are_errors() {
    for bad in [
        &b"5\nhello\r\n0\r\n\r\n"[..],
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n",
        b"fffffffffffffffff\r\n",
        b"\r\n",
        b"5 x\r\nhello\r\n",
        b"0x5\r\nhello\r\n",
    ] {
        let mut d = Decoder::ChunkSize;
        assert!(
            drain(&mut d, bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn oversized_trailers_are_refused() {
    let mut d = Decoder::Trailers;
    let mut buf = BytesMut::from(&b"x-a: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"[..]);
    assert_eq!(d.decode(&mut buf, 16), Err(DecodeError::Trailers));
}
