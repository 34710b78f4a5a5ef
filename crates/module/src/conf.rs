//! The module's per-upstream configuration and the hooks that prepare each zoned upstream:
//! postconfiguration (identify the balancer, wrap the per-request peer init) and init_module
//! (set up the upstream's shared state in its zone, size the per-request `tried` bitmaps).

use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::AtomicUsize;

use dynamic_upstream_core::balancer::Balancer;
#[cfg(ngx_peer_refs)]
use dynamic_upstream_core::config_counter::CounterState;
use nginx_sys::{
    ngx_command_t, ngx_conf_t, ngx_cycle_t, ngx_http_conf_ctx_t, ngx_http_upstream_init_peer_pt,
    ngx_http_upstream_main_conf_t, ngx_http_upstream_module, ngx_http_upstream_rr_peer_t,
    ngx_http_upstream_rr_peers_t, ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_log_error_core,
    ngx_pcalloc, ngx_str_t, ngx_uint_t, NGX_HTTP_UPSTREAM_CREATE, NGX_LOG_ERR, NGX_OK,
};

use crate::balancer::Probe;
use crate::index::PeerIndex;
use crate::locks::PeersGuard;
use crate::ngx_http_lua_dynamic_upstream_module as MODULE;
use crate::slab::SlabGuard;
use crate::state_file::{self, StateFile};

/// Per-upstream state shared by all workers, allocated in the upstream's own zone.
///
/// `count` is the number of peers in each list that the index holds (every peer but those of
/// nginx's resolver), at most `capacity` together. On nginx < 1.27.3 nginx sizes each request's
/// `tried` bitmap from `peers->number`, so a list that grew while a request was between tries
/// would have that request write past its bitmap: `number` is therefore set once, at startup, to
/// `capacity` (a multiple of 64). Newer nginx keeps `number` exact and fails requests whose
/// bitmap may have become too small through its configuration counter; there `request.rs` sizes
/// every request's bitmap for `capacity` instead, and `counter` says when the counter must move.
/// Every field is guarded by the write lock of the list it describes (index 0: primary, 1:
/// backup), the rest by both.
#[repr(C)]
pub struct SharedState {
    pub count: [usize; 2],
    pub capacity: usize,
    /// Removed peers whose memory is given back once no request uses them (see `peers.rs`),
    /// linked through `next`.
    #[cfg(not(ngx_peer_refs))]
    pub graveyard: [*mut ngx_http_upstream_rr_peer_t; 2],
    /// When a change must move nginx's configuration counter.
    #[cfg(ngx_peer_refs)]
    pub counter: CounterState,
    /// Set (by the master, in init_module of a reload) once a newer configuration has read this
    /// upstream's state file: changes made here from then on would be lost, so they are refused.
    pub superseded: AtomicUsize,
    /// The last peer of each list, where `add_peer` appends (unused where nginx's resolver
    /// changes the lists too: they are walked there).
    pub tail: [*mut ngx_http_upstream_rr_peer_t; 2],
    /// Both lists' peers by name.
    pub index: PeerIndex,
}

/// The module's configuration of one `upstream {}` block.
pub struct UpstreamConf {
    pub balancer: Balancer,
    /// `keepalive` wraps the balancer (and its per-request data).
    pub behind_keepalive: bool,
    /// The peer init this module wraps (see `request.rs`).
    pub original_init_peer: ngx_http_upstream_init_peer_pt,
    /// Words of the `tried` bitmap every request of the upstream gets on nginx >= 1.27.3: enough
    /// for `capacity` peers (set at init_module; 0 leaves nginx's own).
    pub tried_words: usize,
    /// Set at init_module for zoned upstreams.
    pub shared: *mut SharedState,
    /// `dynamic_state_file`, if configured.
    pub state: *mut StateFile,
    /// `dynamic_config_counter every_change`: move nginx's configuration counter on every change
    /// of the peers, as other modules do, instead of only when needed (for comparison).
    pub bump_every_change: bool,
}

/// Most peers one list is sized for. Each request pays for a bitmap of `capacity` bits.
const MAX_CAPACITY: usize = 16384;

/// Zone bytes a peer takes at the least: its peer struct, sockaddr, name and server chunks, and
/// its share of the index (two 16-byte slots), with room for the slab allocator's overhead:
/// about 580 + 32 measured on nginx 1.22; on newer nginx the peer struct takes a 512-byte chunk
/// and the sockaddr and name have nginx's own fixed sizes, 128-byte chunks (about 784 + 32).
const MIN_PEER_BYTES: usize = if cfg!(ngx_peer_refs) { 1000 } else { 672 };

pub extern "C" fn create_srv_conf(cf: *mut ngx_conf_t) -> *mut c_void {
    // SAFETY: nginx passes the configuration being parsed.
    let conf = unsafe { ngx_pcalloc((*cf).pool, core::mem::size_of::<UpstreamConf>()) }
        as *mut UpstreamConf;
    if !conf.is_null() {
        // SAFETY: freshly allocated, aligned memory of the right size. No Drop: pool-owned.
        unsafe {
            conf.write(UpstreamConf {
                balancer: Balancer::Other,
                behind_keepalive: false,
                original_init_peer: None,
                tried_words: 0,
                shared: ptr::null_mut(),
                state: ptr::null_mut(),
                bump_every_change: false,
            })
        };
    }
    conf.cast()
}

/// The `dynamic_config_counter when_needed | every_change` directive handler.
pub extern "C" fn set_config_counter(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut core::ffi::c_char {
    // SAFETY: nginx calls directive handlers with the configuration being parsed and this
    // module's server configuration of the upstream block; `args` holds the name and one value.
    let (cf, conf, value) = unsafe {
        let cf = &mut *cf;
        let value = *((*cf.args).elts as *const ngx_str_t).add(1);
        (cf, &mut *(conf as *mut UpstreamConf), crate::bytes::ngx_str(&value))
    };
    if !cfg!(ngx_peer_refs) {
        crate::log::conf(
            cf,
            nginx_sys::NGX_LOG_EMERG,
            "\"dynamic_config_counter\" needs nginx 1.27.3 or newer: this nginx has no \
             configuration counter",
        );
        return ngx::core::NGX_CONF_ERROR as *mut core::ffi::c_char;
    }
    conf.bump_every_change = match value {
        b"when_needed" => false,
        b"every_change" => true,
        _ => {
            let msg = format!(
                "invalid value \"{}\" in \"dynamic_config_counter\": use when_needed or \
                 every_change",
                String::from_utf8_lossy(value)
            );
            crate::log::conf(cf, nginx_sys::NGX_LOG_EMERG, &msg);
            return ngx::core::NGX_CONF_ERROR as *mut core::ffi::c_char;
        }
    };
    ptr::null_mut()
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
            let classified = probe.classify(&*uscf);
            conf.balancer = classified.balancer;
            conf.behind_keepalive = classified.keepalive;
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
                if !crate::peers::resolver_owned(peer) {
                    index.insert(peer, list == 1, tail[list]);
                }
                tail[list] = peer;
                peer = (*peer).next;
            }
            if !cfg!(ngx_peer_refs) && crate::request::wraps(conf.balancer) {
                (*peers).number = capacity;
            }
        }
        shared.write(SharedState {
            count,
            capacity,
            #[cfg(not(ngx_peer_refs))]
            graveyard: [ptr::null_mut(); 2],
            // The bitmaps of requests: for the longer list, or the capacity where `request.rs`
            // widens them.
            #[cfg(ngx_peer_refs)]
            counter: CounterState::new(*(*primary).config, {
                let longest = lists.iter().filter(|l| !l.is_null()).map(|&l| (*l).number).max();
                let longest = longest.unwrap_or(0);
                if crate::request::wraps(conf.balancer) {
                    longest.max(capacity)
                } else {
                    longest
                }
            }),
            superseded: AtomicUsize::new(0),
            tail,
            index,
        });
        conf.shared = shared;
        conf.tried_words = dynamic_upstream_core::config_counter::tried_words(capacity);
        Ok(())
    }
}

/// Peers of a list the index holds (all but nginx's resolver's), by walking it (nginx's `number`
/// may be the capacity).
///
/// # Safety
/// `peers` must be a live list whose lock is held or that no other process can reach yet.
unsafe fn list_len(peers: *const ngx_http_upstream_rr_peers_t) -> usize {
    let mut n = 0;
    // SAFETY: guaranteed by the caller.
    unsafe {
        let mut peer = (*peers).peer;
        while !peer.is_null() {
            n += usize::from(!crate::peers::resolver_owned(peer));
            peer = (*peer).next;
        }
    }
    n
}
