//! Header rewriting between the client and the upstream: hop-by-hop removal (RFC 9110 section
//! 7.6.1) and the `x-forwarded-*` / `forwarded` (RFC 7239) entries.

use std::net::{IpAddr, SocketAddr};

use http::header::{
    CONNECTION, CONTENT_LENGTH, EXPECT, Entry, HOST, HeaderName, HeaderValue, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE, VIA,
};
use http::{HeaderMap, Version};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Removes hop-by-hop headers: those named by `Connection`, and the fixed set. With `upgrade`,
/// `Upgrade` and `Connection: upgrade` stay, because the protocol switch is forwarded.
/// With `keep_te_trailers`, a client's `te: trailers` goes on: gRPC requires it on HTTP/2, and
/// an HTTP/1 upstream sends trailers only to a client that accepts them (the sidecar relays
/// them to such clients). An `Expect: 100-continue` goes too: the sidecar answers it itself
/// when it starts reading the body, so the next hop must not send a second `100`.
///
/// Returns whether `te: trailers` was kept, so that the caller can name it in `Connection`
/// towards an HTTP/1.1 hop (RFC 9110 10.1.4).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool, keep_te_trailers: bool) -> bool {
    // Most messages carry none of these: one pass over the names (cheap comparisons) instead
    // of a hash lookup per hop-by-hop name on every request and response.
    let any = headers.keys().any(|n| {
        n == CONNECTION
            || n == TE
            || n == TRANSFER_ENCODING
            || n == UPGRADE
            || n == KEEP_ALIVE
            || n == PROXY_CONNECTION
            || n == EXPECT
    });
    if !any && !upgrade {
        return false;
    }
    let te_trailers = keep_te_trailers && has_token(headers, &TE, "trailers");
    if headers.contains_key(CONNECTION) {
        // Collect names first: the values borrow the map that is about to change.
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            // Host is the target's, not a connection option (rebuilt by the request path).
            .filter(|n| !(upgrade && *n == UPGRADE) && *n != HOST)
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(TRANSFER_ENCODING);
    headers.remove(TE);
    if headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        headers.remove(EXPECT);
    }
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
    te_trailers
}

/// Removes from trailers what must not be there or not travel beyond this hop: the
/// connection-specific fields, framing, routing and the trailer announcement itself (RFC 9110
/// 6.5.1 and 7.6.1; an HTTP/2 peer resets a stream whose trailers carry any of them).
pub fn strip_trailer_fields(trailers: &mut HeaderMap) {
    let any = trailers.keys().any(|n| {
        n == CONNECTION
            || n == TE
            || n == TRANSFER_ENCODING
            || n == UPGRADE
            || n == KEEP_ALIVE
            || n == PROXY_CONNECTION
            || n == CONTENT_LENGTH
            || n == HOST
            || n == TRAILER
    });
    if any {
        strip_hop_by_hop(trailers, false, false);
        trailers.remove(CONTENT_LENGTH);
        trailers.remove(HOST);
        trailers.remove(TRAILER);
    }
}

/// How the sidecar names itself in `Via` (RFC 9110 7.6.3 lets a gateway use a pseudonym, and
/// asks it not to expose internal host names).
pub const VIA_PSEUDONYM: &str = "datastream";

/// The forwarding entries of one client, formatted once per connection so that a request
/// without earlier entries costs no allocation.
#[derive(Debug, Clone)]
pub struct Forwarding {
    ip: String,
    node: String,
    xff: HeaderValue,
    forwarded: HeaderValue,
    /// The three fields as HTTP/1 field lines, for requests that carry none of them yet: the
    /// own HTTP/1 client writes these bytes after the request's own fields, and the header map
    /// is not touched (see [`PendingForwarding`]).
    h1_lines: Box<[u8]>,
}

/// Forwarding fields not yet in a request's header map. A request that arrived with none of
/// `x-forwarded-for`, `forwarded` and `x-forwarded-proto` (the common case) and goes to an
/// HTTP/1 upstream has the same four field lines added to every copy sent: the own HTTP/1
/// client writes them as bytes ([`Self::write_h1`]), which saves four hash-map insertions per
/// request; any other way of sending puts them in the map first ([`Self::apply`]).
#[derive(Debug, Clone, Copy)]
pub struct PendingForwarding<'a> {
    forwarding: &'a Forwarding,
    /// The protocol version the request was received in (for `Via`).
    version: Version,
}

impl PendingForwarding<'_> {
    /// Adds the fields to `headers`, unless they are there already (a request handed back
    /// unsent by an attempt that added them): calling it again changes nothing.
    pub fn apply(self, headers: &mut HeaderMap) {
        if !headers.contains_key(&X_FORWARDED_FOR) {
            self.forwarding.apply(headers, self.version);
        }
    }

    /// Appends the fields as HTTP/1 field lines.
    pub fn write_h1(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.forwarding.h1_lines);
        out.extend_from_slice(b"via: ");
        out.extend_from_slice(via(self.version).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

static VIA_10: HeaderValue = HeaderValue::from_static("1.0 datastream");
static VIA_11: HeaderValue = HeaderValue::from_static("1.1 datastream");
static VIA_2: HeaderValue = HeaderValue::from_static("2 datastream");

/// The sidecar's `Via` entry for a request received in `version`.
fn via(version: Version) -> &'static HeaderValue {
    match version {
        Version::HTTP_2 => &VIA_2,
        Version::HTTP_10 => &VIA_10,
        _ => &VIA_11,
    }
}

impl Forwarding {
    /// The entries for `client`.
    pub fn new(client: SocketAddr) -> Self {
        let ip = client.ip().to_string();
        let node = match client.ip() {
            IpAddr::V4(v4) => format!("for={v4};proto=http"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto=http"),
        };
        // Both are built from an IP address and ASCII literals: always valid header values.
        let xff =
            HeaderValue::from_str(&ip).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let forwarded = HeaderValue::from_str(&node)
            .unwrap_or_else(|_| HeaderValue::from_static("for=unknown"));
        let h1_lines =
            format!("x-forwarded-for: {ip}\r\nforwarded: {node}\r\nx-forwarded-proto: http\r\n")
                .into_bytes()
                .into_boxed_slice();
        Self {
            ip,
            node,
            xff,
            forwarded,
            h1_lines,
        }
    }

    /// Adds the entries to `headers` now (see [`Self::apply`]), or, with `may_defer` and a
    /// request that carries no forwarding entries of its own, leaves them to the sender: see
    /// [`PendingForwarding`].
    pub fn apply_or_defer(
        &self,
        headers: &mut HeaderMap,
        version: Version,
        may_defer: bool,
    ) -> Option<PendingForwarding<'_>> {
        // One pass of name comparisons; the three are rare in requests from clients.
        if may_defer
            && !headers
                .keys()
                .any(|n| n == FORWARDED || n == X_FORWARDED_FOR || n == X_FORWARDED_PROTO)
        {
            return Some(PendingForwarding {
                forwarding: self,
                version,
            });
        }
        self.apply(headers, version);
        None
    }

    /// Appends the client to `x-forwarded-for` and `forwarded`, sets `x-forwarded-proto` when
    /// absent, and appends the sidecar to `Via` with the protocol `version` the request was
    /// received in (RFC 9110 7.6.3: a gateway MUST). One hash lookup per field (the entry
    /// API), as this runs on every request.
    pub fn apply(&self, headers: &mut HeaderMap, version: Version) {
        append(headers, &X_FORWARDED_FOR, &self.xff, &self.ip);
        append(headers, &FORWARDED, &self.forwarded, &self.node);
        headers
            .entry(X_FORWARDED_PROTO.clone())
            .or_insert_with(|| HeaderValue::from_static("http"));
        // A field line of its own rather than joined into an earlier one: `Via` is a list, and
        // RFC 9110 5.3 makes the two forms equivalent; this one costs no lookup.
        headers.append(VIA, via(version).clone());
    }
}

/// Adds `value` (the text `text`) to the list field `name`: all earlier field lines of `name`
/// and `text` joined into one line, as RFC 9110 section 5.3 allows.
fn append(headers: &mut HeaderMap, name: &HeaderName, value: &HeaderValue, text: &str) {
    match headers.entry(name.clone()) {
        Entry::Vacant(slot) => {
            slot.insert(value.clone());
        }
        Entry::Occupied(mut slot) => {
            let mut joined = String::new();
            for v in slot.iter().filter_map(|v| v.to_str().ok()) {
                joined.push_str(v);
                joined.push_str(", ");
            }
            joined.push_str(text);
            let joined = HeaderValue::from_str(&joined).unwrap_or_else(|_| value.clone());
            // Replaces every earlier line.
            slot.insert(joined);
        }
    }
}

/// Appends `client` to the forwarding headers of an HTTP/1.1 request (see
/// [`Forwarding::apply`]).
pub fn append_forwarded(headers: &mut HeaderMap, client: SocketAddr) {
    Forwarding::new(client).apply(headers, Version::HTTP_11);
}

/// Whether a Host field value is `uri-host [ ":" port ]` (RFC 9110 7.2), possibly empty (RFC
/// 9112 3.2 allows it when the target has no authority), without userinfo. A byte scan rather
/// than a URI parse: it runs on every HTTP/1.1 request.
pub fn valid_host(value: &[u8]) -> bool {
    // What follows the host: nothing, or a port.
    let port = match value.first() {
        None => return true,
        // An IP literal: `[` address `]`, then an optional port.
        Some(b'[') => match value.iter().position(|&b| b == b']') {
            Some(end) => {
                let inner = &value[1..end];
                let ok = !inner.is_empty()
                    && inner
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'));
                if !ok {
                    return false;
                }
                &value[end + 1..]
            }
            None => return false,
        },
        // reg-name: unreserved, percent-encoded and sub-delims; no userinfo, path or spaces.
        // One pass up to the first byte that is not one of them.
        Some(_) => {
            let end = value
                .iter()
                .position(|&b| !REG_NAME[usize::from(b)])
                .unwrap_or(value.len());
            &value[end..]
        }
    };
    match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// The bytes of a Host's reg-name (RFC 3986 3.2.2): unreserved, `%` and sub-delims.
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

/// Whether an HTTP/1.1 request asks for a protocol switch (`Connection: upgrade` + `Upgrade`).
pub fn wants_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(UPGRADE)
        && has_token(headers, &CONNECTION, "upgrade")
}

/// A `Content-Length` value that is one plain decimal number (RFC 9110 8.6: `1*DIGIT`; not
/// "+5", not a list), at most 19 digits so that it fits a `u64`.
pub(crate) fn plain_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Whether a comma-separated list value (a `Connection` or `Transfer-Encoding` field, say)
/// names `token`, ignoring case and optional whitespace.
pub fn lists_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The transfer codings a message's `Transfer-Encoding` field lines list, tallied line by line:
/// how many, and whether the last is `chunked` (RFC 9112 6.1). Request and response heads are
/// framed from it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Codings {
    /// Codings listed so far.
    pub count: u32,
    /// Whether the last one listed is `chunked`.
    pub last_chunked: bool,
}

impl Codings {
    /// Adds the codings one field line lists (empty list items do not count).
    pub fn note(&mut self, value: &[u8]) {
        for coding in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if !coding.is_empty() {
                self.count += 1;
                self.last_chunked = coding.eq_ignore_ascii_case(b"chunked");
            }
        }
    }
}

/// Whether any field line of `name` lists `token` (see [`lists_token`]).
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| lists_token(v.as_bytes(), token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn removes_fixed_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false, true);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn keeps_te_trailers_and_upgrade_when_asked() {
        let mut h = map(&[
            ("te", "trailers"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(wants_upgrade(Version::HTTP_11, &h));
        assert!(strip_hop_by_hop(&mut h, true, true));
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn host_values_are_checked_by_their_grammar() {
        for good in [
            "a",
            "a.example:8080",
            "10.0.0.1:80",
            "[::1]:7080",
            "[::1]",
            "",
            "a:",
            "x_y",
        ] {
            assert!(valid_host(good.as_bytes()), "{good:?}");
        }
        for bad in [
            "u@a", "a:b", "a:80:90", "a b", "a/b", "[::1", "[]:80", "[::1]x", "a?b",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn expect_and_connection_host_are_handled_here() {
        let mut h = map(&[
            ("expect", "100-continue"),
            ("connection", "host, x-a"),
            ("host", "a"),
            ("x-a", "1"),
        ]);
        assert!(!strip_hop_by_hop(&mut h, false, true));
        assert!(h.get("expect").is_none());
        assert!(h.get("x-a").is_none());
        assert_eq!(h["host"], "a", "Host is never a connection option");
    }

    #[test]
    fn trailers_lose_connection_and_framing_fields() {
        let mut t = map(&[
            ("grpc-status", "0"),
            ("connection", "x-b"),
            ("x-b", "1"),
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("trailer", "grpc-status"),
        ]);
        strip_trailer_fields(&mut t);
        assert_eq!(t.len(), 1);
        assert_eq!(t["grpc-status"], "0");
    }

    #[test]
    fn appends_forwarded_entries() {
        let mut h = map(&[("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=1.1.1.1")]);
        append_forwarded(&mut h, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 127.0.0.1");
        assert_eq!(h["forwarded"], "for=1.1.1.1, for=127.0.0.1;proto=http");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["via"], "1.1 datastream");
        let mut h = map(&[("via", "1.1 edge")]);
        Forwarding::new("127.0.0.1:5000".parse().unwrap()).apply(&mut h, Version::HTTP_2);
        let via: Vec<_> = h.get_all("via").iter().collect();
        assert_eq!(via, ["1.1 edge", "2 datastream"]);
        let mut h = HeaderMap::new();
        append_forwarded(&mut h, "[::1]:5000".parse().unwrap());
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
    }

    #[test]
    fn several_earlier_forwarding_lines_become_one_and_a_given_proto_stays() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
        ]);
        append_forwarded(&mut h, "127.0.0.1:5000".parse().unwrap());
        let xff: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(xff, ["1.1.1.1, 2.2.2.2, 127.0.0.1"]);
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
