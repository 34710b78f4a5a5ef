//! The per-request wrapper of `uscf->peer.init` for the upstreams whose peers this module
//! changes.
//!
//! nginx < 1.27.3: removal must be memory-safe. nginx keeps `pc->name`, a pointer to the `name`
//! inside the shared peer, for the rest of the request: `$upstream_addr` and error-log lines read
//! it long after the peer was released (`ngx_http_upstream_connect` stores it in
//! `u->state->peer`). A removed peer's memory can only be given back once no request holds such
//! a pointer. So, right after the balancer picks a peer, the wrapper copies the name into the
//! request's pool, as nginx >= 1.27.3 itself does for zones. The rest of a peer's use lies
//! between the balancer's `get` and `free`, which the peer's `conns` counts (see `peers.rs`).
//!
//! nginx >= 1.27.3: adds must not cost requests. nginx sizes each request's `tried` bitmap for
//! the lists as they are at its start, and fails the request ("no live upstreams") if the
//! configuration counter moved before its next try; a list growing past that bitmap would need
//! the counter moved. The wrapper gives every request a bitmap for the upstream's capacity
//! instead, as nginx < 1.27.3 does through `number`, so adds within the capacity never move it.
//! All built-in balancers keep the round-robin per-request data first in theirs, and
//! `keepalive` keeps theirs in its own.
//!
//! Upstreams with a balancer this module does not know are not wrapped: such a balancer may look
//! at `u->peer.data` (balancer_by_lua does), and their lists are never changed anyway.

use dynamic_upstream_core::balancer::{check, Balancer, Change};
use nginx_sys::{ngx_http_request_t, ngx_http_upstream_srv_conf_t, ngx_int_t, NGX_ERROR, NGX_OK};

use crate::conf::{upstream_conf, UpstreamConf};
#[cfg(not(ngx_peer_refs))]
pub use name_copy::init_peer;

/// Does this balancer's upstream get the wrapper? On nginx < 1.27.3 those whose peers can be
/// removed (and they get a capacity-sized `number`), on newer nginx all whose lists can change.
pub fn wraps(balancer: Balancer) -> bool {
    if cfg!(ngx_peer_refs) {
        balancer != Balancer::Other
    } else {
        check(b"", balancer, Change::RemovePeer, None).is_ok()
    }
}

/// Runs the wrapped balancer's own peer init: the upstream's configuration if it succeeded, else
/// what to return to nginx.
///
/// # Safety
/// As `uscf->peer.init`, on an upstream this module wrapped.
unsafe fn init_wrapped<'a>(
    r: *mut ngx_http_request_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> Result<&'a UpstreamConf, ngx_int_t> {
    // SAFETY: guaranteed by the caller; `original_init_peer` was saved from this upstream.
    unsafe {
        let conf = upstream_conf(us);
        let Some(original) = conf.original_init_peer else {
            return Err(NGX_ERROR as ngx_int_t);
        };
        match original(r, us) {
            rc if rc == NGX_OK as ngx_int_t => Ok(conf),
            rc => Err(rc),
        }
    }
}

/// `uscf->peer.init` of wrapped upstreams on nginx >= 1.27.3: the balancer's own, then a `tried`
/// bitmap for the upstream's capacity.
#[cfg(ngx_peer_refs)]
pub extern "C" fn init_peer(
    r: *mut ngx_http_request_t,
    us: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: nginx calls peer.init with a live request that has an upstream, and the upstream
    // configuration this hook was installed on (an explicit, zoned one with a known balancer,
    // whose per-request data starts with the round-robin data, or keepalive's around it).
    unsafe {
        let conf = match init_wrapped(r, us) {
            Ok(conf) if conf.tried_words > 1 => conf,
            Ok(_) => return NGX_OK as ngx_int_t,
            Err(rc) => return rc,
        };
        let mut data = (*(*r).upstream).peer.data;
        if conf.behind_keepalive {
            data = (*(data as *const crate::balancer::KeepalivePeerData)).data;
        }
        let rrp = data as *mut nginx_sys::ngx_http_upstream_rr_peer_data_t;
        // Zeroed, as nginx's own is at this point: no peer has been tried yet.
        let tried = nginx_sys::ngx_pcalloc((*r).pool, conf.tried_words * size_of::<usize>());
        if tried.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        (*rrp).tried = tried.cast();
        NGX_OK as ngx_int_t
    }
}

/// The name-copying wrapper of nginx < 1.27.3.
#[cfg(not(ngx_peer_refs))]
mod name_copy {
    use core::ffi::c_void;
    use core::mem::size_of;

    use nginx_sys::{
        ngx_event_free_peer_pt, ngx_event_get_peer_pt, ngx_http_request_t,
        ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_peer_connection_t, ngx_pnalloc, ngx_pool_t,
        ngx_str_t, ngx_uint_t, NGX_DONE, NGX_ERROR, NGX_OK,
    };

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

    /// `uscf->peer.init` of wrapped upstreams on nginx < 1.27.3: the balancer's own, with its
    /// callbacks wrapped.
    pub extern "C" fn init_peer(
        r: *mut ngx_http_request_t,
        us: *mut ngx_http_upstream_srv_conf_t,
    ) -> ngx_int_t {
        // SAFETY: nginx calls peer.init with a live request that has an upstream, and the upstream
        // configuration this hook was installed on (an explicit, zoned one).
        unsafe {
            if let Err(rc) = super::init_wrapped(r, us) {
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
}
