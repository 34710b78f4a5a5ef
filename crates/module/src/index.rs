//! An index of an upstream's peers by name, in its zone, so that a call naming one peer costs
//! the same with 10,000 peers as with 10.
//!
//! Open addressing with linear probing over a power-of-two table sized for twice the upstream's
//! capacity (so it is at most half full). Each entry holds a peer pointer tagged with the list
//! it is in (bit 0: backup) and the peer before it in that list, which nginx's singly linked
//! lists cannot give without a walk: removal is then as cheap as a lookup. Deletion shifts later
//! entries back instead of leaving tombstones, so lookups never degrade after churn. Every function requires the write locks of both lists (or, at
//! startup, that no other process exists yet): the table belongs to the upstream, not to a list.

use dynamic_upstream_core::address::names_peer;
use nginx_sys::ngx_http_upstream_rr_peer_t;

use crate::bytes;

type Peer = ngx_http_upstream_rr_peer_t;

/// The index of one upstream: `mask + 1` slots in the zone.
#[repr(C)]
pub struct PeerIndex {
    slots: *mut Slot,
    mask: usize,
}

/// One slot: empty when `peer` is 0.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Slot {
    /// The peer's address, bit 0 set for a backup peer.
    peer: usize,
    /// The peer before it in its list; NULL for the first.
    prev: *mut Peer,
}

/// A peer found in the index.
pub struct Entry {
    pub peer: *mut Peer,
    pub backup: bool,
    pub prev: *mut Peer,
}

/// FNV-1a: short keys, no adversary with control over collisions beyond their own peers.
/// A `unix:` prefix is hashed in lower case, as names are matched (see `names_peer`).
fn hash(name: &[u8]) -> usize {
    let unix = name.len() >= 5 && name[..5].eq_ignore_ascii_case(b"unix:");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, &b) in name.iter().enumerate() {
        let b = if unix && i < 5 { b.to_ascii_lowercase() } else { b };
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as usize
}

/// The name the index files a peer under: the text nginx wrote when creating it.
///
/// # Safety
/// `peer` must be live.
unsafe fn key<'a>(peer: *const Peer) -> &'a [u8] {
    // SAFETY: guaranteed by the caller; the name lives in the peer's zone chunks.
    unsafe { bytes::ngx_str(&(*peer).name) }
}

impl PeerIndex {
    /// Bytes of zone memory the index of an upstream of this capacity takes.
    pub fn bytes_for(capacity: usize) -> usize {
        (2 * capacity).next_power_of_two() * size_of::<Slot>()
    }

    /// An index over zeroed zone memory of `bytes_for(capacity)` bytes.
    pub fn new(slots: *mut u8, capacity: usize) -> Self {
        PeerIndex { slots: slots.cast(), mask: (2 * capacity).next_power_of_two() - 1 }
    }

    /// # Safety
    /// The table must be live (it always is once created); `i` is masked into it.
    unsafe fn slot(&self, i: usize) -> *mut Slot {
        // SAFETY: the table has `mask + 1` slots and `i & mask` is within it.
        unsafe { self.slots.add(i & self.mask) }
    }

    /// The slot holding `peer`, which must be in the index.
    ///
    /// # Safety
    /// As [`find`](Self::find); `peer` must be live and indexed.
    unsafe fn slot_of(&self, peer: *mut Peer) -> usize {
        // SAFETY: guaranteed by the caller; the probe ends at the peer's slot.
        unsafe {
            let mut i = hash(key(peer)) & self.mask;
            while (*self.slot(i)).peer & !1 != peer as usize {
                i = (i + 1) & self.mask;
            }
            i
        }
    }

    /// The peer with this canonical name.
    ///
    /// # Safety
    /// Both list write locks must be held.
    pub unsafe fn find(&self, name: &str) -> Option<Entry> {
        let mut i = hash(name.as_bytes());
        // At most half full: an empty slot always ends the probe.
        loop {
            // SAFETY: locks held; every used slot holds a live, linked peer.
            let slot = unsafe { *self.slot(i) };
            if slot.peer == 0 {
                return None;
            }
            let peer = (slot.peer & !1) as *mut Peer;
            // SAFETY: as above.
            if names_peer(unsafe { key(peer) }, name) {
                return Some(Entry { peer, backup: slot.peer & 1 != 0, prev: slot.prev });
            }
            i = i.wrapping_add(1);
        }
    }

    /// Files a peer that is not in the index yet, with the peer before it in its list.
    ///
    /// # Safety
    /// Both list write locks must be held, `peer` must be live and the index below half full.
    pub unsafe fn insert(&self, peer: *mut Peer, backup: bool, prev: *mut Peer) {
        // SAFETY: guaranteed by the caller; the table always has an empty slot.
        unsafe {
            let mut i = hash(key(peer));
            while (*self.slot(i)).peer != 0 {
                i = i.wrapping_add(1);
            }
            *self.slot(i) = Slot { peer: peer as usize | usize::from(backup), prev };
        }
    }

    /// Records the peer now before `peer` in its list.
    ///
    /// # Safety
    /// Both list write locks must be held; `peer` must be live and indexed.
    pub unsafe fn set_prev(&self, peer: *mut Peer, prev: *mut Peer) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let i = self.slot_of(peer);
            (*self.slot(i)).prev = prev;
        }
    }

    /// Takes a peer out of the index (it must be in it).
    ///
    /// # Safety
    /// Both list write locks must be held and `peer` must be live.
    pub unsafe fn remove(&self, peer: *mut Peer) {
        // SAFETY: locks held; the peer is in the table.
        unsafe {
            let mut hole = self.slot_of(peer);
            // Shift back every later entry of the probe run that may live in the hole.
            let mut j = hole;
            loop {
                j = (j + 1) & self.mask;
                let slot = *self.slot(j);
                if slot.peer == 0 {
                    break;
                }
                let home = hash(key((slot.peer & !1) as *const Peer)) & self.mask;
                // Does `home` lie cyclically outside (hole, j]? Then the entry can fill the hole.
                let movable =
                    if hole <= j { home <= hole || home > j } else { home <= hole && home > j };
                if movable {
                    *self.slot(hole) = slot;
                    hole = j;
                }
            }
            *self.slot(hole) = Slot { peer: 0, prev: core::ptr::null_mut() };
        }
    }
}
