//! The module's per-upstream configuration and the hooks that prepare each zoned upstream:
//! postconfiguration (identify the balancer, wrap the per-request peer init) and init_module
//! (set up the upstream's shared state in its zone, size the per-request `tried` bitmaps).

use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::AtomicUsize;

use dynamic_upstream_core::balancer::Balancer;
use nginx_sys::{
    ngx_conf_t, ngx_cycle_t, ngx_http_conf_ctx_t, ngx_http_upstream_init_peer_pt,
    ngx_http_upstream_main_conf_t, ngx_http_upstream_module, ngx_http_upstream_rr_peer_t,
    ngx_http_upstream_rr_peers_t, ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_log_error_core,
    ngx_pcalloc, ngx_uint_t, NGX_HTTP_UPSTREAM_CREATE, NGX_LOG_ERR, NGX_OK,
};

use crate::balancer::Probe;
use crate::index::PeerIndex;
use crate::locks::PeersGuard;
use crate::ngx_http_lua_dynamic_upstream_module as MODULE;
use crate::slab::SlabGuard;
use crate::state_file::{self, StateFile};

/// Per-upstream state shared by all workers, allocated in the upstream's own zone.
///
/// nginx sizes each request's `tried` bitmap from `peers->number`, so a list that grew while a
/// request was between tries would have that request write past its bitmap. `number` is
/// therefore set once, at startup, to `capacity` (a multiple of 64), and the real sizes are kept
/// here; both lists together hold at most `capacity` peers. Every field is guarded by the write
/// lock of the list it describes (index 0: primary, 1: backup), the index by both.
#[repr(C)]
pub struct SharedState {
    pub count: [usize; 2],
    pub capacity: usize,
    /// Removed peers whose memory is given back once no request uses them (see `peers.rs`),
    /// linked through `next`.
    pub graveyard: [*mut ngx_http_upstream_rr_peer_t; 2],
    /// Set (by the master, in init_module of a reload) once a newer configuration has read this
    /// upstream's state file: changes made here from then on would be lost, so they are refused.
    pub superseded: AtomicUsize,
    /// The last peer of each list, where `add_peer` appends.
    pub tail: [*mut ngx_http_upstream_rr_peer_t; 2],
    /// Both lists' peers by name.
    pub index: PeerIndex,
}

/// The module's configuration of one `upstream {}` block.
pub struct UpstreamConf {
    pub balancer: Balancer,
    /// The peer init this module wraps, for upstreams whose peers can be removed.
    pub original_init_peer: ngx_http_upstream_init_peer_pt,
    /// Set at init_module for zoned upstreams.
    pub shared: *mut SharedState,
    /// `dynamic_state_file`, if configured.
    pub state: *mut StateFile,
}

/// Most peers one list is sized for. Each request pays for a bitmap of `capacity` bits.
const MAX_CAPACITY: usize = 16384;

/// Zone bytes a peer takes at the least: its peer struct, sockaddr, name and server chunks
/// (about 580 measured), and its share of the index (two 16-byte slots).
const MIN_PEER_BYTES: usize = 672;

pub extern "C" fn create_srv_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: nginx passes the configuration being parsed.
    let conf = unsafe { ngx_pcalloc((*cf).pool, core::mem::size_of::<UpstreamConf>()) }
        as *mut UpstreamConf;
    if !conf.is_null() {
        // SAFETY: freshly allocated, aligned memory of the right size. No Drop: pool-owned.
        unsafe {
            conf.write(UpstreamConf {
                balancer: Balancer::Other,
                original_init_peer: None,
                shared: ptr::null_mut(),
                state: ptr::null_mut(),
            })
        };
    }
    conf.cast()
}

/// This module's configuration of an explicit upstream.
///
/// # Safety
/// `uscf` must be an explicit `upstream {}` block of a live configuration.
pub unsafe fn upstream_conf<'a>(uscf: *const ngx_http_upstream_srv_conf_t) -> &'a mut UpstreamConf {
    // SAFETY: explicit upstreams have a server configuration for every http module, ours
    // created by `create_srv_conf`.
    unsafe {
        let index = MODULE.ctx_index;
        &mut *(*(*uscf).srv_conf.add(index) as *mut UpstreamConf)
    }
}

/// The explicit upstreams with a zone, from an http main configuration.
///
/// # Safety
/// `umcf` must be the live upstream main configuration.
pub unsafe fn zoned_upstreams(
    umcf: *const ngx_http_upstream_main_conf_t,
) -> impl Iterator<Item = *mut ngx_http_upstream_srv_conf_t> {
    // SAFETY: the array holds `nelts` upstream configuration pointers.
    let all = unsafe {
        if umcf.is_null() || (*umcf).upstreams.elts.is_null() {
            &[][..]
        } else {
            core::slice::from_raw_parts(
                (*umcf).upstreams.elts as *const *mut ngx_http_upstream_srv_conf_t,
                (*umcf).upstreams.nelts,
            )
        }
    };
    all.iter().copied().filter(|&u| {
        // SAFETY: each entry is a live upstream configuration.
        !u.is_null()
            && unsafe {
                (*u).flags & NGX_HTTP_UPSTREAM_CREATE as ngx_uint_t != 0
                    && !(*u).shm_zone.is_null()
                    && !(*u).srv_conf.is_null()
            }
    })
}

pub extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: nginx calls postconfiguration with the http configuration being loaded.
    let cf = unsafe { &mut *cf };
    // SAFETY: as above.
    let probe = unsafe { Probe::run(cf) };
    // SAFETY: in postconfiguration `cf->ctx` is the http context, holding the upstream module's
    // main configuration; every upstream's init_upstream has run.
    unsafe {
        let http = &*(cf.ctx as *const ngx_http_conf_ctx_t);
        let umcf = *http.main_conf.add(ngx_http_upstream_module.ctx_index)
            as *const ngx_http_upstream_main_conf_t;
        for uscf in zoned_upstreams(umcf) {
            let conf = upstream_conf(uscf);
            conf.balancer = probe.classify(&*uscf);
            if crate::request::wraps(conf.balancer) {
                conf.original_init_peer = (*uscf).peer.init;
                (*uscf).peer.init = Some(crate::request::init_peer);
            }
        }
    }
    NGX_OK as ngx_int_t
}

/// Sets up each zoned upstream's shared state. Runs in the master after the zones were created
/// and filled by nginx, before any worker exists, once the configuration is committed. nginx
/// exits if this fails, even on a reload, so nothing here fails: an upstream whose state cannot
/// be set up is left unmanaged (its API calls answer with an error).
pub extern "C" fn init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx passes the new, fully configured cycle.
    unsafe {
        let conf_ctx = (*cycle).conf_ctx;
        let http = *conf_ctx.add(nginx_sys::ngx_http_module.index) as *const ngx_http_conf_ctx_t;
        if http.is_null() {
            return NGX_OK as ngx_int_t;
        }
        let umcf = *(*http).main_conf.add(ngx_http_upstream_module.ctx_index)
            as *const ngx_http_upstream_main_conf_t;
        for uscf in zoned_upstreams(umcf) {
            // Upstreams sharing a zone share its room.
            let zone = (*uscf).shm_zone;
            let sharing = zoned_upstreams(umcf).filter(|&u| (*u).shm_zone == zone).count();
            if init_upstream(uscf, sharing).is_err() {
                let zone = &(*(*uscf).shm_zone).shm.name;
                ngx_log_error_core(
                    NGX_LOG_ERR as ngx_uint_t,
                    (*cycle).log,
                    0,
                    c"no memory in upstream zone \"%V\" for ngx.dynamic: its peers cannot be changed".as_ptr(),
                    zone,
                );
            }
            let state = upstream_conf(uscf).state;
            if !state.is_null() {
                state_file::supersede_running(cycle, uscf);
                // The running generation is marked: its workers may take the lock now.
                (*state).reading_lock = None;
            }
        }
    }
    NGX_OK as ngx_int_t
}

/// # Safety
/// `uscf` must be a zoned upstream of the cycle being initialised, its zone filled by nginx.
unsafe fn init_upstream(
    uscf: *mut ngx_http_upstream_srv_conf_t,
    upstreams_in_zone: usize,
) -> Result<(), ()> {
    // SAFETY: the zone module replaced `peer.data` with the lists it copied into the zone; no
    // worker exists yet, and the locks are taken anyway, as everywhere else.
    unsafe {
        let conf = upstream_conf(uscf);
        let primary = (*uscf).peer.data as *mut ngx_http_upstream_rr_peers_t;
        if primary.is_null() || (*primary).shpool.is_null() {
            return Ok(());
        }
        let backup = (*primary).next;
        let zone_size = (*(*uscf).shm_zone).shm.size;
        let lists = [primary, backup];
        let count = lists.map(|l| if l.is_null() { 0 } else { list_len(l) });
        let by_zone =
            (zone_size / MIN_PEER_BYTES / upstreams_in_zone.max(1)).clamp(64, MAX_CAPACITY);
        let capacity = by_zone.max(count[0] + count[1]).next_multiple_of(64);

        let (shared, slots) = {
            let slab = SlabGuard::lock((*primary).shpool);
            let shared = slab.calloc(size_of::<SharedState>()) as *mut SharedState;
            let slots = slab.calloc(PeerIndex::bytes_for(capacity));
            if shared.is_null() || slots.is_null() {
                slab.free(shared);
                slab.free(slots);
                return Err(());
            }
            (shared, slots)
        };
        let index = PeerIndex::new(slots, capacity);
        let _lock = PeersGuard::write(primary);
        let _backup_lock = (!backup.is_null()).then(|| PeersGuard::write(backup));
        let mut tail = [ptr::null_mut(); 2];
        for (list, &peers) in lists.iter().enumerate() {
            if peers.is_null() {
                continue;
            }
            let mut peer = (*peers).peer;
            while !peer.is_null() {
                index.insert(peer, list == 1, tail[list]);
                tail[list] = peer;
                peer = (*peer).next;
            }
            if crate::request::wraps(conf.balancer) {
                (*peers).number = capacity;
            }
        }
        shared.write(SharedState {
            count,
            capacity,
            graveyard: [ptr::null_mut(); 2],
            superseded: AtomicUsize::new(0),
            tail,
            index,
        });
        conf.shared = shared;
        Ok(())
    }
}

/// Peers in a list, by walking it (nginx's `number` may be the capacity).
///
/// # Safety
/// `peers` must be a live list whose lock is held or that no other process can reach yet.
pub unsafe fn list_len(peers: *const ngx_http_upstream_rr_peers_t) -> usize {
    let mut n = 0;
    // SAFETY: guaranteed by the caller.
    unsafe {
        let mut peer = (*peers).peer;
        while !peer.is_null() {
            n += 1;
            peer = (*peer).next;
        }
    }
    n
}
