//! Request body decoding: `Content-Length` and chunked transfer coding, strictly.
//!
//! The decoder works on whatever bytes the connection has read so far and never copies data:
//! each data frame is split off the read buffer. Chunk-size lines must end in CRLF, chunk data
//! must be followed by CRLF, sizes must be plain hex without overflow: a lenient decoder is a
//! request-smuggling vector when the upstream is strict, and the other way round.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;

/// Why a body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A chunk-size line was not valid.
    #[error("invalid chunk size line")]
    ChunkSize,
    /// Chunk data was not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    /// The trailer section was malformed or too large.
    #[error("invalid trailer section")]
    Trailers,
}

/// One step of decoding.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// Trailer fields (chunked bodies only); the body ends after them.
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// The buffer holds no further complete item: read more.
    NeedMore,
}

/// The state of one body's decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes remain.
    Length(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// This many bytes of the current chunk remain.
    ChunkData(u64),
    /// Expecting the CRLF after chunk data.
    ChunkEnd,
    /// Expecting the trailer section (possibly empty) after the last chunk.
    Trailers,
    /// Complete.
    Done,
}

impl Decoder {
    /// Whether the body is complete.
    #[inline]
    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// Bytes known to remain, for a length-delimited body.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }

    /// Decodes the next item from the front of `buf`. `max_trailers` bounds the trailer section.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        max_trailers: usize,
    ) -> Result<Decoded, DecodeError> {
        loop {
            match *self {
                Decoder::Done => return Ok(Decoded::End),
                Decoder::Length(0) => {
                    *self = Decoder::Done;
                    return Ok(Decoded::End);
                }
                Decoder::Length(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                    let left = n - take as u64;
                    // Done with the last byte, so the body reports its end with its last frame.
                    *self = if left == 0 {
                        Decoder::Done
                    } else {
                        Decoder::Length(left)
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                Decoder::ChunkSize => {
                    let Some(end) = find_crlf(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&buf[..end])?;
                    buf.advance(end + 2);
                    *self = if size == 0 {
                        Decoder::Trailers
                    } else {
                        Decoder::ChunkData(size)
                    };
                }
                Decoder::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                    *self = if take as u64 == n {
                        Decoder::ChunkEnd
                    } else {
                        Decoder::ChunkData(n - take as u64)
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                Decoder::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(DecodeError::ChunkEnd);
                    }
                    buf.advance(2);
                    *self = Decoder::ChunkSize;
                }
                Decoder::Trailers => return self.trailers(buf, max_trailers),
            }
        }
    }

    fn trailers(&mut self, buf: &mut BytesMut, max: usize) -> Result<Decoded, DecodeError> {
        if buf.len() >= 2 && &buf[..2] == b"\r\n" {
            buf.advance(2);
            *self = Decoder::Done;
            return Ok(Decoded::End);
        }
        let mut fields = [httparse::EMPTY_HEADER; 64];
        match httparse::parse_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete((len, fields))) => {
                let mut map = HeaderMap::with_capacity(fields.len());
                for f in fields.iter() {
                    let name = HeaderName::from_bytes(f.name.as_bytes())
                        .map_err(|_| DecodeError::Trailers)?;
                    let value =
                        HeaderValue::from_bytes(f.value).map_err(|_| DecodeError::Trailers)?;
                    map.append(name, value);
                }
                buf.advance(len);
                *self = Decoder::Done;
                Ok(Decoded::Trailers(map))
            }
            Ok(httparse::Status::Partial) if buf.len() < max => Ok(Decoded::NeedMore),
            _ => Err(DecodeError::Trailers),
        }
    }
}

/// The index of the CRLF ending the line at the front of `buf`, if it is complete.
fn find_crlf(buf: &[u8], max: usize) -> Result<Option<usize>, DecodeError> {
    match buf.iter().take(max).position(|&b| b == b'\n') {
        Some(0) => Err(DecodeError::ChunkSize),
        Some(i) if buf[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err(DecodeError::ChunkSize),
        None if buf.len() >= max => Err(DecodeError::ChunkSize),
        None => Ok(None),
    }
}

/// `chunk-size [ chunk-ext ]`: hex digits, then optionally `;` and extensions (ignored).
fn chunk_size(line: &[u8]) -> Result<u64, DecodeError> {
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() || digits.len() > 15 {
        return Err(DecodeError::ChunkSize);
    }
    let rest = rest.trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') || rest.contains(&b'\r') {
        return Err(DecodeError::ChunkSize);
    }
    let digits = std::str::from_utf8(digits).map_err(|_| DecodeError::ChunkSize)?;
    u64::from_str_radix(digits, 16).map_err(|_| DecodeError::ChunkSize)
}

#[cfg(test)]
mod tests;
