//! Borrowing nginx and Lua byte strings as slices.

use core::slice;

use nginx_sys::ngx_str_t;

/// The bytes at `ptr`, or an empty slice for a NULL pointer or zero length.
///
/// # Safety
/// `ptr` must point to `len` readable bytes that stay valid and unchanged for `'a`.
pub unsafe fn raw<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { slice::from_raw_parts(ptr, len) }
    }
}

/// The bytes of an `ngx_str_t`.
///
/// # Safety
/// As [`raw`], for `s.data` and `s.len`.
pub unsafe fn ngx_str<'a>(s: &ngx_str_t) -> &'a [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { raw(s.data, s.len) }
}
