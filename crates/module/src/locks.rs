//! nginx's upstream peers locks, taken the way nginx's `ngx_http_upstream_rr_peers_*lock` macros
//! take them (those macros are invisible to bindgen), released by RAII so no return path can leave
//! a lock held.

use nginx_sys::{
    ngx_atomic_t, ngx_http_upstream_rr_peers_t, ngx_rwlock_rlock, ngx_rwlock_unlock,
    ngx_rwlock_wlock,
};

/// A held lock on one peers list (`peers->rwlock`), read or write.
pub struct PeersGuard {
    lock: *mut ngx_atomic_t,
}

impl PeersGuard {
    /// Takes the read lock of a zoned peers list.
    ///
    /// # Safety
    /// `peers` must point to a live peers list in an upstream zone (`shpool` set): its `rwlock` is
    /// then the one every nginx balancer takes for that list.
    pub unsafe fn read(peers: *mut ngx_http_upstream_rr_peers_t) -> Self {
        // SAFETY: the caller guarantees `peers` is a live zoned list; nginx's rwlock functions
        // work on the atomic in place, which lives in the shared zone for the whole cycle.
        let lock = unsafe { &raw mut (*peers).rwlock };
        // SAFETY: as above; spinning is how nginx itself waits for this lock.
        unsafe { ngx_rwlock_rlock(lock) };
        PeersGuard { lock }
    }

    /// Takes the write lock of a zoned peers list: no balancer, `free` or session callback of any
    /// worker can be inside the list while it is held.
    ///
    /// # Safety
    /// As [`read`](Self::read).
    pub unsafe fn write(peers: *mut ngx_http_upstream_rr_peers_t) -> Self {
        // SAFETY: as in `read`.
        let lock = unsafe { &raw mut (*peers).rwlock };
        // SAFETY: as in `read`.
        unsafe { ngx_rwlock_wlock(lock) };
        PeersGuard { lock }
    }
}

impl Drop for PeersGuard {
    fn drop(&mut self) {
        // SAFETY: this guard took the lock in `read` or `write` and releases it exactly once.
        unsafe { ngx_rwlock_unlock(self.lock) };
    }
}
