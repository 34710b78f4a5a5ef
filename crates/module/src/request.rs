//! The per-request wrapper that makes peer removal memory-safe on nginx < 1.27.3.
//!
//! nginx keeps `pc->name`, a pointer to the `name` inside the shared peer, for the rest of the
//! request: `$upstream_addr` and error-log lines read it long after the peer was released
//! (`ngx_http_upstream_connect` stores it in `u->state->peer`). A removed peer's memory can only
//! be given back once no request holds such a pointer. So, right after the balancer picks a
//! peer, this wrapper copies the name into the request's pool, as nginx >= 1.27.3 itself does
//! for zones. The rest of a peer's use lies between the balancer's `get` and `free`, which the
//! peer's `conns` counts (see `peers.rs`).
//!
//! Upstreams with a balancer this module does not know are not wrapped: such a balancer may look
//! at `u->peer.data` (balancer_by_lua does), and peers are never removed from them anyway.

use core::ffi::c_void;
use core::mem::size_of;

use dynamic_upstream_core::balancer::{check_legacy, Balancer, Change};
use nginx_sys::{
    ngx_event_free_peer_pt, ngx_event_get_peer_pt, ngx_http_request_t,
    ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_peer_connection_t, ngx_pnalloc, ngx_pool_t,
    ngx_str_t, ngx_uint_t, NGX_DONE, NGX_ERROR, NGX_OK,
};

use crate::conf::upstream_conf;

/// Does this balancer's upstream get the wrapper (and a capacity-sized `number`)? Those whose
/// peers can be removed do, on nginx < 1.27.3; newer nginx copies the name itself.
pub fn wraps(balancer: Balancer) -> bool {
    !cfg!(ngx_peer_refs) && check_legacy(b"", balancer, Change::RemovePeer).is_ok()
}

/// The wrapped balancer's callbacks and data, in the request pool.
struct PeerData {
    get: ngx_event_get_peer_pt,
    free: ngx_event_free_peer_pt,
    data: *mut c_void,
    #[cfg(ngx_feature = "http_ssl")]
    set_session: nginx_sys::ngx_event_set_peer_session_pt,
    #[cfg(ngx_feature = "http_ssl")]
    save_session: nginx_sys::ngx_event_save_peer_session_pt,
    pool: *mut ngx_pool_t,
    zone_start: usize,
    zone_end: usize,
}

/// `uscf->peer.init` of wrapped upstreams.
pub extern "C" fn init_peer(
    r: *mut ngx_http_request_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: nginx calls peer.init with a live request that has an upstream, and the upstream
    // configuration this hook was installed on (an explicit, zoned one).
    unsafe {
        let conf = upstream_conf(us);
        let Some(original) = conf.original_init_peer else {
            return NGX_ERROR as ngx_int_t;
        };
        let rc = original(r, us);
        if rc != NGX_OK as ngx_int_t {
            return rc;
        }
        let pool = (*r).pool;
        let pd = nginx_sys::ngx_palloc(pool, size_of::<PeerData>()) as *mut PeerData;
        if pd.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        let pc = &mut (*(*r).upstream).peer;
        let zone = &(*(*us).shm_zone).shm;
        pd.write(PeerData {
            get: pc.get,
            free: pc.free,
            data: pc.data,
            #[cfg(ngx_feature = "http_ssl")]
            set_session: pc.set_session,
            #[cfg(ngx_feature = "http_ssl")]
            save_session: pc.save_session,
            pool,
            zone_start: zone.addr as usize,
            zone_end: zone.addr as usize + zone.size,
        });
        pc.data = pd.cast();
        pc.get = Some(get_peer);
        pc.free = Some(free_peer);
        #[cfg(ngx_feature = "http_ssl")]
        {
            if pc.set_session.is_some() {
                pc.set_session = Some(set_session);
            }
            if pc.save_session.is_some() {
                pc.save_session = Some(save_session);
            }
        }
    }
    NGX_OK as ngx_int_t
}

extern "C" fn get_peer(pc: *mut ngx_peer_connection_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: `data` is the PeerData this wrapper installed; `pc` is the request's connection.
    unsafe {
        let pd = &*(data as *const PeerData);
        let Some(get) = pd.get else { return NGX_ERROR as ngx_int_t };
        let rc = get(pc, pd.data);
        if rc != NGX_OK as ngx_int_t && rc != NGX_DONE as ngx_int_t {
            return rc;
        }
        let name = (*pc).name;
        let at = name as usize;
        if name.is_null() || at < pd.zone_start || at >= pd.zone_end {
            return rc;
        }
        // The name lives in the zone: give the request its own copy.
        let len = (*name).len;
        let copy = ngx_pnalloc(pd.pool, size_of::<ngx_str_t>() + len) as *mut ngx_str_t;
        if copy.is_null() {
            // The peer stays taken; nginx releases it when it finalizes the request.
            return NGX_ERROR as ngx_int_t;
        }
        let bytes = copy.add(1).cast::<u8>();
        core::ptr::copy_nonoverlapping((*name).data, bytes, len);
        copy.write(ngx_str_t { len, data: bytes });
        (*pc).name = copy;
        rc
    }
}

extern "C" fn free_peer(pc: *mut ngx_peer_connection_t, data: *mut c_void, state: ngx_uint_t) {
    // SAFETY: `data` is the PeerData this wrapper installed.
    unsafe {
        let pd = &*(data as *const PeerData);
        if let Some(free) = pd.free {
            free(pc, pd.data, state);
        }
    }
}

#[cfg(ngx_feature = "http_ssl")]
extern "C" fn set_session(pc: *mut ngx_peer_connection_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: installed only when the wrapped balancer has this callback.
    unsafe {
        let pd = &*(data as *const PeerData);
        match pd.set_session {
            Some(f) => f(pc, pd.data),
            None => NGX_OK as ngx_int_t,
        }
    }
}

#[cfg(ngx_feature = "http_ssl")]
extern "C" fn save_session(pc: *mut ngx_peer_connection_t, data: *mut c_void) {
    // SAFETY: installed only when the wrapped balancer has this callback.
    unsafe {
        let pd = &*(data as *const PeerData);
        if let Some(f) = pd.save_session {
            f(pc, pd.data);
        }
    }
}
