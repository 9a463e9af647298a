//! A response's header section relayed as the bytes it arrived in, when both legs of the
//! exchange are this crate's HTTP/1 code.
//!
//! Why: turning a response head into a header map (a name lookup, a value check and a hash
//! insertion per field), then back into bytes for the client, and clearing the map, is the
//! largest cost of relaying a small answer that nobody on the way reads. The own client
//! already knows every field's position from its parse; when no field needs the proxy's
//! attention, the client's head can carry the block of field lines as it is, and the server
//! copies it in one piece.
//!
//! "Needs the proxy's attention" is decided once, by [`RelayedFields::scan`]: any
//! connection-specific field (RFC 9110 7.6.1: `Connection`, `Keep-Alive`,
//! `Proxy-Connection`, `TE`, `Transfer-Encoding`, `Upgrade`) or `Expect`, a body not delimited
//! by one plain `Content-Length`, whitespace before a colon (RFC 9112 5.1 says to remove it),
//! or a line not ended by CRLF sends the response through the header map as before. What is
//! relayed is therefore exactly what the map would have carried, in the upstream's order and
//! spelling (field names are case-insensitive, RFC 9110 5.1).

use std::ops::Range;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::client::Span;

/// The field lines of a response head, as received, and what the encoder needs to know of
/// them.
#[derive(Debug, Clone)]
pub struct RelayedFields {
    /// Each field line with its CRLF, nothing else.
    block: Bytes,
    /// The body's length, from the one `Content-Length` line.
    length: u64,
    /// Where that line is in `block`, CRLF included.
    length_line: Range<usize>,
    /// Whether a `Date` field is among them.
    has_date: bool,
}

/// Field names from this length on are refused by a header map.
const MAX_NAME: usize = 1 << 16;

/// Names of the connection-specific fields, and of one the request path must look at.
const NEED_THE_MAP: [&[u8]; 7] = [
    b"te",
    b"expect",
    b"upgrade",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
];

/// Whether `name` (in any case) is one of [`NEED_THE_MAP`]. Most names have none of their
/// lengths and are passed over without looking at a byte.
fn needs_the_map(name: &[u8]) -> bool {
    matches!(name.len(), 2 | 6 | 7 | 10 | 16 | 17) && NEED_THE_MAP.iter().any(|n| is_named(name, n))
}

/// Whether the field name `name`, a token as httparse validated it, is `lower` in any case;
/// `lower` holds only lower-case letters and `-`.
///
/// Why not `eq_ignore_ascii_case`: it folds both sides byte by byte, and this runs on the
/// fields of every relayed response. Setting bit 0x20 of a byte folds an upper-case letter onto
/// its lower case and leaves lower-case letters and `-` as they are. A byte it turns into a
/// lower-case letter was that letter in either case; one it turns into `-` (0x2D) was `-` or
/// CR (0x0D), and no token holds a CR. So one OR per word of eight bytes does the comparison.
#[inline]
fn is_named(name: &[u8], lower: &[u8]) -> bool {
    const FOLD: u64 = 0x2020_2020_2020_2020;
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    if n < 8 {
        if n < 4 {
            return name.iter().zip(lower).all(|(&a, &b)| a | 0x20 == b);
        }
        let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4"));
        return half(name, 0) | 0x2020_2020 == half(lower, 0)
            && half(name, n - 4) | 0x2020_2020 == half(lower, n - 4);
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8"));
    // Whole words, then the last (overlapping) word.
    let mut at = 0;
    while at + 8 < n {
        if word(name, at) | FOLD != word(lower, at) {
            return false;
        }
        at += 8;
    }
    word(name, n - 8) | FOLD == word(lower, n - 8)
}

impl RelayedFields {
    /// The field block of `head`, whose fields httparse found at `spans` (validated names and
    /// values), if it can be relayed as it is; `None` sends the response through a header map.
    pub(super) fn scan(head: &Bytes, spans: &[Span]) -> Option<Self> {
        let (first, last) = (spans.first()?, spans.last()?);
        let start = first.0.0;
        let end = last.1.1 + 2;
        let mut next = start;
        let mut length = None;
        let mut length_line = 0..0;
        let mut has_date = false;
        for &((n0, n1), (_, v1)) in spans {
            // Contiguous lines, each `name:` then the value and CRLF (httparse trims the
            // value's trailing whitespace, so a line that had some falls back too).
            if n0 != next
                || head.get(n1) != Some(&b':')
                || head.get(v1..v1 + 2) != Some(b"\r\n".as_slice())
            {
                return None;
            }
            next = v1 + 2;
            let name = &head[n0..n1];
            match name.len() {
                // The map path refuses a name this long (`HeaderName`'s limit); so does this.
                MAX_NAME.. => return None,
                14 if is_named(name, b"content-length") => {
                    let value = head[n1 + 1..v1].trim_ascii();
                    if length.is_some() {
                        return None;
                    }
                    length = Some(super::super::headers::plain_length(value)?);
                    length_line = n0 - start..next - start;
                }
                4 if is_named(name, b"date") => has_date = true,
                _ if needs_the_map(name) => return None,
                _ => {}
            }
        }
        Some(Self {
            block: head.slice(start..end),
            length: length?,
            length_line,
            has_date,
        })
    }

    /// The body's length, as its `Content-Length` line says.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Whether the upstream sent a `Date` field.
    pub fn has_date(&self) -> bool {
        self.has_date
    }

    /// Appends the field lines to a head being written; without the `Content-Length` line
    /// unless `with_length`.
    pub(crate) fn write(&self, out: &mut Vec<u8>, with_length: bool) {
        if with_length {
            out.extend_from_slice(&self.block);
        } else {
            out.extend_from_slice(&self.block[..self.length_line.start]);
            out.extend_from_slice(&self.block[self.length_line.end..]);
        }
    }

    /// Puts the fields into `headers`, for a reader that needs them as a map after all.
    pub fn append_to(&self, headers: &mut HeaderMap) {
        let mut at = 0;
        while at < self.block.len() {
            let line_end = self.block[at..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .map_or(self.block.len(), |p| at + p);
            let line = &self.block[at..line_end];
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                let value = &line[colon + 1..];
                let lead = value.len() - value.trim_ascii_start().len();
                let name = HeaderName::from_bytes(&line[..colon]);
                let value = HeaderValue::from_maybe_shared(
                    self.block.slice(at + colon + 1 + lead..line_end),
                );
                // Both were validated by the parse that found them.
                if let (Ok(name), Ok(value)) = (name, value) {
                    headers.append(name, value);
                }
            }
            at = line_end + 2;
        }
    }
}

/// The fields of a response head in `text`, as the own client would keep them.
#[cfg(test)]
pub(super) fn of_head(text: &str) -> Option<RelayedFields> {
    let head = Bytes::copy_from_slice(text.as_bytes());
    RelayedFields::scan(&head, &tests::spans_of(&head))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes a field name may hold (RFC 9110 5.6.2 `tchar`).
    fn token_bytes() -> Vec<u8> {
        (0u8..=127)
            .filter(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
            .collect()
    }

    #[test]
    fn is_named_agrees_with_a_case_insensitive_comparison_for_every_token_byte() {
        let mut targets: Vec<&[u8]> = NEED_THE_MAP.to_vec();
        targets.extend([b"date".as_slice(), b"content-length", b"x", b"ab-cd"]);
        for target in targets {
            // Every case mix of the name itself (a bit per letter, up to 17 letters)...
            let mixes = 1u32 << target.len().min(17);
            for mix in (0..mixes).step_by(((mixes >> 10) as usize).max(1)) {
                let name: Vec<u8> = target
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| {
                        if mix >> i & 1 == 1 {
                            b.to_ascii_uppercase()
                        } else {
                            b
                        }
                    })
                    .collect();
                assert!(
                    is_named(&name, target),
                    "{}",
                    String::from_utf8_lossy(&name)
                );
            }
            // ...and every token byte in every position.
            for at in 0..target.len() {
                for b in token_bytes() {
                    let mut name = target.to_vec();
                    name[at] = b;
                    assert_eq!(
                        is_named(&name, target),
                        name.eq_ignore_ascii_case(target),
                        "{} against {}",
                        String::from_utf8_lossy(&name),
                        String::from_utf8_lossy(target),
                    );
                }
            }
            // Names one byte shorter or longer.
            assert!(!is_named(&target[1..], target));
            assert!(!is_named(&[target, b"s"].concat(), target));
        }
    }

    pub(super) fn spans_of(head: &[u8]) -> Vec<Span> {
        let mut fields = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut fields);
        resp.parse(head).unwrap().unwrap();
        let base = head.as_ptr() as usize;
        let span = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            (start, start + s.len())
        };
        resp.headers
            .iter()
            .map(|h| (span(h.name.as_bytes()), span(h.value)))
            .collect()
    }

    fn scan(text: &str) -> Option<RelayedFields> {
        of_head(text)
    }

    #[test]
    fn a_plain_head_is_relayed_as_it_came() {
        let fields = scan(
            "HTTP/1.1 200 OK\r\nX-Replica: r1\r\nContent-Length: 12\r\ncontent-type: text/plain\r\n\r\n",
        )
        .expect("relayed");
        assert_eq!(fields.length(), 12);
        assert!(!fields.has_date());
        let mut out = Vec::new();
        fields.write(&mut out, true);
        assert_eq!(
            out,
            b"X-Replica: r1\r\nContent-Length: 12\r\ncontent-type: text/plain\r\n"
        );
        out.clear();
        fields.write(&mut out, false);
        assert_eq!(out, b"X-Replica: r1\r\ncontent-type: text/plain\r\n");
        let mut map = HeaderMap::new();
        fields.append_to(&mut map);
        assert_eq!(map.len(), 3);
        assert_eq!(map["x-replica"], "r1");
        assert_eq!(map["content-length"], "12");
        assert_eq!(map["content-type"], "text/plain");
        let dated = scan("HTTP/1.1 200 OK\r\nDATE: x\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert!(dated.has_date());
    }

    #[test]
    fn heads_the_proxy_must_rewrite_go_through_the_map() {
        for head in [
            // No length, a list, two lines, a sign: framed by the map path's rules.
            "HTTP/1.1 200 OK\r\nx-a: b\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            // Connection-specific fields, in any case.
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nKeep-Alive: timeout=5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nproxy-connection: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nUpgrade: h2c\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nte: trailers\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            // Bare LF line ends, trailing whitespace trimmed by the parse.
            "HTTP/1.1 200 OK\ncontent-length: 5\n\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5 \r\n\r\n",
        ] {
            assert!(scan(head).is_none(), "{head:?}");
        }
        assert!(
            scan("HTTP/1.1 200 OK\r\n\r\n").is_none(),
            "no fields, no length"
        );
        let long = format!(
            "HTTP/1.1 200 OK\r\n{}: v\r\ncontent-length: 0\r\n\r\n",
            "n".repeat(MAX_NAME)
        );
        assert!(scan(&long).is_none(), "a name no header map takes");
    }
}
