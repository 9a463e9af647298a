//! Request-head buffers passed from a connection that goes idle to the next one that has a
//! request, per thread.
//!
//! An idle connection keeps no buffer (see the module documentation), so without this every
//! request would allocate a fresh head buffer (a few KiB, beyond the allocator's small-size
//! caches) and, on the first head split off it, the shared header `bytes` adds, then free both
//! after the response. A buffer that nothing else refers to any more is as good as new: it is
//! kept here, up to a few per thread, for whichever connection reads next.

use std::cell::RefCell;

use bytes::BytesMut;

/// Buffers kept per thread: enough for the connections that finish an exchange in one pass of
/// the scheduler, few enough to be no memory to speak of.
const KEPT: usize = 8;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
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
}
