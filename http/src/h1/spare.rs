//! Request-head buffers passed from a connection that goes idle to the next one that has a
//! request, and header maps from a response sent to the next head parsed, per thread.
//!
//! An idle connection keeps no buffer (see the module documentation), so without this every
//! request would allocate a fresh head buffer (a few KiB, beyond the allocator's small-size
//! caches) and, on the first head split off it, the shared header `bytes` adds, then free both
//! after the response. A buffer that nothing else refers to any more is as good as new: it is
//! kept here, up to a few per thread, for whichever connection reads next. The same goes for
//! a header map (two vectors): emptied, it keeps its room for the next head.

use std::cell::RefCell;

use bytes::BytesMut;
use http::HeaderMap;

/// Buffers kept per thread: enough for the connections that finish an exchange in one pass of
/// the scheduler, few enough to be no memory to speak of.
const KEPT: usize = 8;

/// Header maps with room for more fields than this are not kept: an unusual head should not
/// pin its large map for every later one.
const MAX_KEPT_FIELDS: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty header map with room for `fields` fields, a kept one when there is one.
pub(super) fn header_map(fields: usize) -> HeaderMap {
    match MAPS.with_borrow_mut(Vec::pop) {
        Some(map) if map.capacity() >= fields => map,
        _ => HeaderMap::with_capacity(fields),
    }
}

/// Empties `map` (its values, and the buffers they share, are released now) and keeps it for
/// the next head parsed on this thread, unless it is large or enough are kept. The request
/// path gives back the maps of the requests it is done with; the connections give back those
/// of the responses they have written.
pub fn give_header_map(mut map: HeaderMap) {
    // A map that never had room (a response whose fields were relayed as bytes) saves nothing.
    if map.capacity() == 0 || map.capacity() > MAX_KEPT_FIELDS {
        return;
    }
    map.clear();
    MAPS.with_borrow_mut(|maps| {
        if maps.len() < KEPT {
            maps.push(map);
        }
    });
}

/// A kept buffer, or an empty one (which allocates on its first reservation).
pub(super) fn take() -> BytesMut {
    SPARE.with_borrow_mut(Vec::pop).unwrap_or_default()
}

/// Keeps `buf` for the next head when it holds no bytes and can take `room` bytes without
/// allocating: its memory no longer shared with a previous head, or spare room of its own.
/// Otherwise it is dropped, as before.
pub(super) fn give(mut buf: BytesMut, room: usize) {
    if !buf.is_empty() || buf.capacity() == 0 || !buf.try_reclaim(room) {
        return;
    }
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < KEPT {
            spare.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_only_when_its_memory_is_free_again() {
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = buf.split_to(buf.len()).freeze();
        // Still shared with the head, and too little room of its own: not kept.
        give(buf, 64);
        assert_eq!(take().capacity(), 0);
        drop(head);

        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = buf.split_to(buf.len()).freeze();
        let memory = head.as_ptr();
        drop(head);
        give(buf, 64);
        let again = take();
        assert!(again.capacity() >= 64);
        assert_eq!(again.as_ptr(), memory, "the same memory, reused in place");
        assert_eq!(take().capacity(), 0, "each buffer is handed out once");
    }

    #[test]
    fn a_kept_header_map_comes_back_empty_with_its_room() {
        let mut map = header_map(8);
        map.insert(http::header::HOST, http::HeaderValue::from_static("a"));
        let room = map.capacity();
        give_header_map(map);
        let again = header_map(4);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room);
        let big = header_map(200);
        assert!(big.capacity() >= 200);
        give_header_map(big);
        assert!(header_map(0).capacity() < 200, "a large map is not kept");
    }
}
