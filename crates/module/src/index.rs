//! An index of an upstream's peers by name, in its zone, so that a call naming one peer costs
//! the same with 10,000 peers as with 10.
//!
//! Open addressing with linear probing over a power-of-two table sized for twice the upstream's
//! capacity (so it is at most half full), holding peer pointers tagged with the list they are in
//! (bit 0: backup). Deletion shifts later entries back instead of leaving tombstones, so lookups
//! never degrade after churn. Every function requires the write locks of both lists (or, at
//! startup, that no other process exists yet): the table belongs to the upstream, not to a list.

use dynamic_upstream_core::address::names_peer;
use nginx_sys::ngx_http_upstream_rr_peer_t;

use crate::bytes;

type Peer = ngx_http_upstream_rr_peer_t;

/// The index of one upstream: `mask + 1` slots in the zone.
#[repr(C)]
pub struct PeerIndex {
    slots: *mut usize,
    mask: usize,
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
    /// Slots needed for an upstream of this capacity.
    pub fn slots_for(capacity: usize) -> usize {
        (2 * capacity).next_power_of_two()
    }

    /// An index over zeroed memory of `slots_for(capacity)` words.
    pub fn new(slots: *mut usize, capacity: usize) -> Self {
        PeerIndex { slots, mask: Self::slots_for(capacity) - 1 }
    }

    /// # Safety
    /// `i` must be within the table (it always is once masked).
    unsafe fn slot(&self, i: usize) -> *mut usize {
        // SAFETY: the table has `mask + 1` slots and `i & mask` is within it.
        unsafe { self.slots.add(i & self.mask) }
    }

    /// The peer with this canonical name, and whether it is in the backup list.
    ///
    /// # Safety
    /// Both list write locks must be held.
    pub unsafe fn find(&self, name: &str) -> Option<(*mut Peer, bool)> {
        let mut i = hash(name.as_bytes());
        // At most half full: an empty slot always ends the probe.
        loop {
            // SAFETY: locks held; every non-zero slot holds a live, linked peer.
            let entry = unsafe { *self.slot(i) };
            if entry == 0 {
                return None;
            }
            let peer = (entry & !1) as *mut Peer;
            // SAFETY: as above.
            if names_peer(unsafe { key(peer) }, name) {
                return Some((peer, entry & 1 != 0));
            }
            i = i.wrapping_add(1);
        }
    }

    /// Files a peer that is not in the index yet.
    ///
    /// # Safety
    /// Both list write locks must be held, `peer` must be live and the index below half full.
    pub unsafe fn insert(&self, peer: *mut Peer, backup: bool) {
        // SAFETY: guaranteed by the caller.
        let mut i = hash(unsafe { key(peer) });
        // SAFETY: as above; the table always has an empty slot.
        unsafe {
            while *self.slot(i) != 0 {
                i = i.wrapping_add(1);
            }
            *self.slot(i) = peer as usize | usize::from(backup);
        }
    }

    /// Takes a peer out of the index (it must be in it).
    ///
    /// # Safety
    /// Both list write locks must be held and `peer` must be live.
    pub unsafe fn remove(&self, peer: *mut Peer) {
        // SAFETY: guaranteed by the caller.
        let mut hole = hash(unsafe { key(peer) }) & self.mask;
        // SAFETY: locks held; the peer is in the table, so the probe finds it.
        unsafe {
            while *self.slot(hole) & !1 != peer as usize {
                hole = (hole + 1) & self.mask;
            }
            // Shift back every later entry of the probe run that may live in the hole.
            let mut j = hole;
            loop {
                j = (j + 1) & self.mask;
                let entry = *self.slot(j);
                if entry == 0 {
                    break;
                }
                let home = hash(key((entry & !1) as *const Peer)) & self.mask;
                // Does `home` lie cyclically outside (hole, j]? Then the entry can fill the hole.
                let movable =
                    if hole <= j { home <= hole || home > j } else { home <= hole && home > j };
                if movable {
                    *self.slot(hole) = entry;
                    hole = j;
                }
            }
            *self.slot(hole) = 0;
        }
    }
}
