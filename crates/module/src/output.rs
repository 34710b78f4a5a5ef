//! Results written into buffers owned by the Lua caller.
//!
//! The caller passes an array of fixed-size records and one byte buffer for their strings. When
//! either is too small, writing goes on counting what would be needed, so the caller can grow its
//! buffers and call again: a large zone is never truncated silently.

/// Where a string landed in the caller's byte buffer (read by the Lua wrapper, never by Rust).
#[repr(C)]
#[derive(Clone, Copy, Default)]
#[allow(dead_code)]
pub struct StrRef {
    off: u32,
    len: u32,
}

pub struct Output<'a, T> {
    items: &'a mut [T],
    bytes: &'a mut [u8],
    items_needed: usize,
    bytes_needed: usize,
}

impl<'a, T> Output<'a, T> {
    pub fn new(items: &'a mut [T], bytes: &'a mut [u8]) -> Self {
        Output { items, bytes, items_needed: 0, bytes_needed: 0 }
    }

    /// Copies a string into the byte buffer if it still fits.
    pub fn string(&mut self, s: &[u8]) -> StrRef {
        let off = self.bytes_needed;
        self.bytes_needed = off.saturating_add(s.len());
        if let Some(dst) = self.bytes.get_mut(off..self.bytes_needed) {
            dst.copy_from_slice(s);
        }
        StrRef {
            off: u32::try_from(off).unwrap_or(u32::MAX),
            len: u32::try_from(s.len()).unwrap_or(u32::MAX),
        }
    }

    /// Stores a record if it still fits.
    pub fn push(&mut self, item: T) {
        if let Some(slot) = self.items.get_mut(self.items_needed) {
            *slot = item;
        }
        self.items_needed += 1;
    }

    /// Did everything fit? Either way, the counts are what a complete answer needs.
    pub fn complete(&self) -> bool {
        self.items_needed <= self.items.len() && self.bytes_needed <= self.bytes.len()
    }

    pub fn items_needed(&self) -> usize {
        self.items_needed
    }

    pub fn bytes_needed(&self) -> usize {
        self.bytes_needed
    }
}
