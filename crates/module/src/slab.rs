//! The upstream zone's slab allocator, used under its own mutex.
//!
//! One guard takes `shpool->mutex` once for a group of allocations or frees. Lock order, as in
//! nginx: a peers rwlock may be held when this is taken, never the other way round.

use core::ffi::c_void;

use nginx_sys::{
    ngx_shmtx_lock, ngx_shmtx_unlock, ngx_slab_calloc_locked, ngx_slab_free_locked, ngx_slab_pool_t,
};

pub struct SlabGuard {
    pool: *mut ngx_slab_pool_t,
}

impl SlabGuard {
    /// Locks the slab pool of an upstream zone.
    ///
    /// # Safety
    /// `pool` must be the live slab pool at the start of an upstream zone.
    pub unsafe fn lock(pool: *mut ngx_slab_pool_t) -> Self {
        // SAFETY: guaranteed by the caller; the mutex lives in the pool header.
        unsafe { ngx_shmtx_lock(&raw mut (*pool).mutex) };
        SlabGuard { pool }
    }

    /// Zeroed memory from the zone, or NULL when the zone is full. A full zone is the caller's
    /// answer to give (`no memory in upstream zone`), not a critical error for nginx's log, so
    /// the slab's own message is silenced for this allocation, as nginx's limit_req does.
    pub fn calloc(&self, size: usize) -> *mut u8 {
        // SAFETY: the pool mutex is held by this guard, so no other allocation can see the
        // flag changed.
        unsafe {
            let pool = &mut *self.pool;
            let log_nomem = pool.log_nomem();
            pool.set_log_nomem(0);
            let p = ngx_slab_calloc_locked(self.pool, size).cast();
            pool.set_log_nomem(log_nomem);
            p
        }
    }

    /// Gives memory back to the zone; NULL is ignored.
    ///
    /// # Safety
    /// `p` must be NULL or a live allocation from this pool that nothing will use again.
    pub unsafe fn free<T>(&self, p: *mut T) {
        if !p.is_null() {
            // SAFETY: the pool mutex is held; `p` is guaranteed by the caller.
            unsafe { ngx_slab_free_locked(self.pool, p.cast::<c_void>()) };
        }
    }

    /// Free bytes in the zone: whole free pages, the slab's own measure of room.
    pub fn free_bytes(&self) -> usize {
        // SAFETY: the pool mutex is held, so `pfree` is stable; ngx_pagesize is set at startup.
        unsafe { (*self.pool).pfree * nginx_sys::ngx_pagesize }
    }
}

impl Drop for SlabGuard {
    fn drop(&mut self) {
        // SAFETY: this guard locked the mutex in `lock` and unlocks it exactly once.
        unsafe { ngx_shmtx_unlock(&raw mut (*self.pool).mutex) };
    }
}
