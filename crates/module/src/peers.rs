//! Runtime changes to an upstream's peers in its shared zone.
//!
//! Every change follows nginx's own rules for these lists:
//! - memory is allocated before any lock is taken, and handed back if the change is refused;
//! - lists and peers change only under the write lock of the list that owns them (primary first,
//!   then backup), so no balancer, `free` or session callback of any worker is inside;
//! - nothing done under a lock can fail or panic: lookups, links and counter updates only;
//! - counters are kept exact: `total_weight` (all peers, down ones included), `tries` (peers not
//!   down), `weighted` and `single` with the rule of the nginx built for.
//!
//! Where the two nginx generations differ:
//! - nginx < 1.27.3: `number` holds the capacity (see [`SharedState`]) and `single` means one
//!   primary peer and no backup list peer. A removed peer is unlinked at once and parked in a
//!   graveyard; its memory goes back to the zone when its `conns` is 0, that is when no request
//!   is between the balancer's `get` and `free` on it. After `free`, requests only keep a copy of
//!   its name (`request.rs`).
//! - nginx >= 1.27.3: `number` is exact and `single` follows nginx's zone module. Peers are
//!   allocated as nginx's zone copy allocates them, because nginx frees removed ones itself: a
//!   removed peer no request holds (`refs`) is freed at once, another is marked `zombie` and
//!   freed by the `free` of the last request holding it. nginx copies `pc->name` for zoned
//!   upstreams whose balancer allows changes (`NGX_HTTP_UPSTREAM_MODIFY`), the only ones whose
//!   lists change here. The configuration counter moves only when a request's view of the lists
//!   could become unsafe (`config_counter`). Peers made by nginx's resolver are its own: they
//!   are described, never changed, and since the resolver links and unlinks peers too, positions
//!   in lists that have such peers are found by walking them.

use core::ptr;

use dynamic_upstream_core::address::{names_peer, AddressError, Endpoint, ServerAddress};
use dynamic_upstream_core::balancer::{check, Balancer, Change, Refused};
use dynamic_upstream_core::change::ChangeError;
use dynamic_upstream_core::options::{PeerSettings, ValidOptions};
use dynamic_upstream_core::state_file::StatePeer;
use nginx_sys::{
    ngx_http_upstream_rr_peer_t, ngx_http_upstream_rr_peers_t, ngx_int_t, ngx_uint_t, time_t,
};

use crate::bytes;
use crate::conf::{upstream_conf, SharedState};
use crate::locks::PeersGuard;
use crate::slab::SlabGuard;
use crate::upstreams::ZonedUpstream;

const PRIMARY: usize = 0;
const BACKUP: usize = 1;

/// Why a change call failed.
pub enum Error {
    Change(ChangeError),
    Refused(Refused),
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Change(e) => e.fmt(f),
            Error::Refused(e) => e.fmt(f),
        }
    }
}

impl From<ChangeError> for Error {
    fn from(e: ChangeError) -> Self {
        Error::Change(e)
    }
}

impl From<Refused> for Error {
    fn from(e: Refused) -> Self {
        Error::Refused(e)
    }
}

/// Is this peer one that nginx's resolver made from a `server ... resolve` line?
///
/// # Safety
/// `peer` must be live.
#[cfg(ngx_peer_refs)]
pub unsafe fn resolver_owned(peer: *const ngx_http_upstream_rr_peer_t) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe { !(*peer).host.is_null() }
}

/// Is this peer one that nginx's resolver made? Never, before nginx 1.27.3.
///
/// # Safety
/// None needed; kept `unsafe` like its nginx >= 1.27.3 counterpart.
#[cfg(not(ngx_peer_refs))]
pub unsafe fn resolver_owned(_peer: *const ngx_http_upstream_rr_peer_t) -> bool {
    false
}

/// Does nginx's resolver keep peers in this list (`server ... resolve`)?
///
/// # Safety
/// `peers` must be a live list.
unsafe fn has_resolver(peers: *const ngx_http_upstream_rr_peers_t) -> bool {
    #[cfg(ngx_peer_refs)]
    // SAFETY: guaranteed by the caller; the templates are set at startup and never change.
    return unsafe { !(*peers).resolve.is_null() };
    #[cfg(not(ngx_peer_refs))]
    {
        let _ = peers;
        false
    }
}

/// The table of changes the upstream's balancer takes: `None` on nginx < 1.27.3, else whether
/// nginx marked the upstream as one whose peers may change.
///
/// # Safety
/// `uscf` must be a live upstream configuration.
unsafe fn modern_flags(uscf: *const nginx_sys::ngx_http_upstream_srv_conf_t) -> Option<bool> {
    #[cfg(ngx_peer_refs)]
    // SAFETY: guaranteed by the caller.
    return Some(unsafe { (*uscf).flags } & nginx_sys::NGX_HTTP_UPSTREAM_MODIFY as ngx_uint_t != 0);
    #[cfg(not(ngx_peer_refs))]
    {
        let _ = uscf;
        None
    }
}

/// An upstream being changed: its lists, zone and this module's state for it.
struct Target<'a> {
    upstream: &'a ZonedUpstream,
    primary: *mut ngx_http_upstream_rr_peers_t,
    shared: *mut SharedState,
    balancer: Balancer,
    #[cfg(ngx_peer_refs)]
    bump_every_change: bool,
}

impl<'a> Target<'a> {
    fn new(upstream: &'a ZonedUpstream, change: Change) -> Result<Self, Error> {
        // SAFETY: nginx sets ngx_exiting/ngx_quit in this worker's own memory.
        if unsafe { nginx_sys::ngx_exiting != 0 || nginx_sys::ngx_quit != 0 } {
            return Err(ChangeError::Exiting.into());
        }
        // SAFETY: `conf` is the explicit upstream `resolve` found.
        let conf = unsafe { upstream_conf(upstream.conf) };
        // SAFETY: as above.
        check(upstream.name, conf.balancer, change, unsafe { modern_flags(upstream.conf) })?;
        if conf.shared.is_null() {
            // init_module did not run for this zone (it always does before workers start).
            return Err(ChangeError::NoMemory { zone: upstream.zone_text() }.into());
        }
        Ok(Target {
            upstream,
            primary: upstream.peers,
            shared: conf.shared,
            balancer: conf.balancer,
            #[cfg(ngx_peer_refs)]
            bump_every_change: conf.bump_every_change,
        })
    }

    fn upstream_text(&self) -> String {
        self.upstream.name_text()
    }

    fn not_found(&self, addr: &ServerAddress) -> Error {
        ChangeError::NotFound { peer: addr.name().to_owned(), upstream: self.upstream_text() }
            .into()
    }

    fn exists(&self, addr: &ServerAddress) -> ChangeError {
        ChangeError::Exists { peer: addr.name().to_owned(), upstream: self.upstream_text() }
    }

    /// Locks the primary list, and the backup list when there is one (the order every writer of
    /// this module and nginx's own failover path agree on).
    fn lock_all(&self) -> Locked {
        // SAFETY: `primary` is the live zoned list of this upstream.
        let primary_lock = unsafe { PeersGuard::write(self.primary) };
        // SAFETY: read under the primary write lock; a backup list, once linked, stays.
        let backup = unsafe { (*self.primary).next };
        // SAFETY: a backup list of a zoned upstream lives in the same zone.
        let backup_lock = (!backup.is_null()).then(|| unsafe { PeersGuard::write(backup) });
        let lists = [self.primary, backup];
        // SAFETY: live lists.
        let walks = lists.iter().any(|&l| !l.is_null() && unsafe { has_resolver(l) });
        Locked { lists, walks, _locks: (primary_lock, backup_lock) }
    }
}

/// Both lists of an upstream, write-locked (the backup one when it exists).
struct Locked {
    lists: [*mut ngx_http_upstream_rr_peers_t; 2],
    /// nginx's resolver links and unlinks peers in these lists too, so the neighbours the index
    /// and `tail` recorded may be stale: positions are found by walking the lists.
    walks: bool,
    _locks: (PeersGuard, Option<PeersGuard>),
}

/// A peer found in a locked list.
struct Found {
    list: usize,
    peer: *mut ngx_http_upstream_rr_peer_t,
    /// The peer before it in its list; NULL for the first.
    prev: *mut ngx_http_upstream_rr_peer_t,
}

impl Locked {
    /// The peer an address names, through the upstream's index; an error if it is one of
    /// nginx's resolver's (which the index does not hold).
    ///
    /// # Safety
    /// `target` must be the upstream these lists belong to.
    unsafe fn find(
        &self,
        target: &Target<'_>,
        addr: &ServerAddress,
    ) -> Result<Option<Found>, Error> {
        // SAFETY: this upstream's state; both lists are write-locked, as the index requires.
        let entry = unsafe { (*target.shared).index.find(addr.name()) };
        if let Some(entry) = entry {
            let list = usize::from(entry.backup);
            let prev = if self.walks {
                // SAFETY: the list is write-locked and holds the peer.
                unsafe { self.prev_of(list, entry.peer) }
            } else {
                entry.prev
            };
            return Ok(Some(Found { list, peer: entry.peer, prev }));
        }
        // SAFETY: both lists are write-locked.
        if self.walks && unsafe { self.resolver_has(addr) } {
            return Err(ChangeError::ResolverOwned {
                peer: addr.name().to_owned(),
                upstream: target.upstream_text(),
            }
            .into());
        }
        Ok(None)
    }

    /// Does one of nginx's resolver's peers have this address?
    ///
    /// # Safety
    /// Both lists must be write-locked.
    unsafe fn resolver_has(&self, addr: &ServerAddress) -> bool {
        self.lists.iter().filter(|l| !l.is_null()).any(|&list| {
            // SAFETY: the list is write-locked; its peers are live.
            unsafe {
                let mut peer = (*list).peer;
                while !peer.is_null() {
                    if resolver_owned(peer)
                        && names_peer(bytes::ngx_str(&(*peer).name), addr.name())
                    {
                        return true;
                    }
                    peer = (*peer).next;
                }
                false
            }
        })
    }

    /// The peer before `peer` in its list, by walking it; NULL for the first.
    ///
    /// # Safety
    /// The list must be write-locked and hold `peer`.
    unsafe fn prev_of(
        &self,
        list: usize,
        peer: *mut ngx_http_upstream_rr_peer_t,
    ) -> *mut ngx_http_upstream_rr_peer_t {
        let mut prev = ptr::null_mut();
        // SAFETY: guaranteed by the caller; the walk ends at `peer`.
        unsafe {
            let mut p = (*self.lists[list]).peer;
            while p != peer {
                prev = p;
                p = (*p).next;
            }
        }
        prev
    }

    /// The last peer of a list, where new peers are appended; NULL when it is empty.
    ///
    /// # Safety
    /// The list must be write-locked and `shared` be this upstream's state.
    unsafe fn tail(&self, shared: &SharedState, list: usize) -> *mut ngx_http_upstream_rr_peer_t {
        if !self.walks {
            return shared.tail[list];
        }
        let mut last = ptr::null_mut();
        // SAFETY: guaranteed by the caller.
        unsafe {
            let mut p = (*self.lists[list]).peer;
            while !p.is_null() {
                last = p;
                p = (*p).next;
            }
        }
        last
    }

    /// Peers in the primary list.
    ///
    /// # Safety
    /// `shared` must be this upstream's state.
    unsafe fn primary_len(&self, shared: &SharedState) -> usize {
        if cfg!(ngx_peer_refs) {
            // SAFETY: the list is write-locked; nginx keeps `number` exact there.
            unsafe { (*self.lists[PRIMARY]).number }
        } else {
            shared.count[PRIMARY]
        }
    }

    /// Updates a list's counters for a peer entering (`sign` 1) or leaving (-1) the sums:
    /// `total_weight` counts every peer, `tries` those not down, and on nginx >= 1.27.3
    /// `number` all of them. nginx 1.22 never changes them after startup, so keeping them in
    /// step here keeps them exact.
    ///
    /// # Safety
    /// The list must be write-locked.
    unsafe fn account(&self, list: usize, p: &ngx_http_upstream_rr_peer_t, sign: isize) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let peers = &mut *self.lists[list];
            peers.total_weight = peers.total_weight.wrapping_add_signed(sign * p.weight);
            if p.down == 0 {
                peers.tries = peers.tries.wrapping_add_signed(sign);
            }
            if cfg!(ngx_peer_refs) {
                peers.number = peers.number.wrapping_add_signed(sign);
            }
        }
    }

    /// The peers a new request's `tried` bitmap is sized for: the longer list's, or the
    /// upstream's capacity where `request.rs` widens the bitmaps.
    ///
    /// # Safety
    /// Both lists must be write-locked; `target` is their upstream.
    #[cfg(ngx_peer_refs)]
    unsafe fn bitmap_span(&self, target: &Target<'_>) -> usize {
        let longest = self
            .lists
            .iter()
            .filter(|l| !l.is_null())
            // SAFETY: guaranteed by the caller.
            .map(|&l| unsafe { (*l).number })
            .max()
            .unwrap_or(0);
        if crate::request::wraps(target.balancer) {
            // SAFETY: `capacity` never changes after startup.
            longest.max(unsafe { (*target.shared).capacity })
        } else {
            longest
        }
    }

    /// Makes a change visible the way nginx expects: the flags derived from the counters, and on
    /// nginx >= 1.27.3 the configuration counter when the change needs it (see
    /// `config_counter`). `span_before` is [`bitmap_span`](Self::bitmap_span) before the change.
    ///
    /// # Safety
    /// `target` must be the upstream these lists belong to; its lists' counters are up to date.
    #[cfg(ngx_peer_refs)]
    unsafe fn publish(&self, target: &Target<'_>, span_before: usize, change: Change) {
        // SAFETY: guaranteed by the caller; both lists are write-locked, which guards the shared
        // state and the counter (nginx's resolver moves it under the list's write lock too).
        unsafe {
            self.settle();
            let config = (*self.lists[PRIMARY]).config;
            if config.is_null() {
                return;
            }
            let force = target.bump_every_change
                || dynamic_upstream_core::balancer::rebuilds_tables(target.balancer, change);
            let span_after = self.bitmap_span(target);
            let shared = &mut *target.shared;
            if shared.counter.change(*config, span_before, span_after, force) {
                *config = (*config).wrapping_add(1);
            }
        }
    }

    /// The peers a new request's `tried` bitmap is sized for: before nginx 1.27.3 the capacity,
    /// which `number` holds (nothing moves with it there).
    ///
    /// # Safety
    /// `target` is the upstream of these lists.
    #[cfg(not(ngx_peer_refs))]
    unsafe fn bitmap_span(&self, target: &Target<'_>) -> usize {
        // SAFETY: `capacity` never changes after startup.
        unsafe { (*target.shared).capacity }
    }

    /// Makes a change visible the way nginx expects: the flags derived from the counters.
    ///
    /// # Safety
    /// `target` must be the upstream these lists belong to.
    #[cfg(not(ngx_peer_refs))]
    unsafe fn publish(&self, target: &Target<'_>, _span_before: usize, _change: Change) {
        // SAFETY: guaranteed by the caller.
        unsafe { self.settle(&*target.shared) }
    }

    /// Recomputes the flags derived from the counters, with the rule of nginx's zone module:
    /// `single` when the primary list has one peer and the backup list none.
    ///
    /// # Safety
    /// Both lists must be write-locked.
    #[cfg(ngx_peer_refs)]
    unsafe fn settle(&self) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            for &peers in self.lists.iter().filter(|l| !l.is_null()) {
                (*peers).set_weighted(((*peers).total_weight != (*peers).number).into());
            }
            let (primary, backup) = (self.lists[PRIMARY], self.lists[BACKUP]);
            let single = (*primary).number == 1 && (backup.is_null() || (*backup).number == 0);
            (*primary).set_single(single.into());
        }
    }

    /// Recomputes the flags derived from the counters. nginx 1.22's `single`: exactly one
    /// primary peer and no backup peer.
    ///
    /// # Safety
    /// `shared` must be this upstream's state.
    #[cfg(not(ngx_peer_refs))]
    unsafe fn settle(&self, shared: &SharedState) {
        // SAFETY: both lists are write-locked.
        unsafe {
            for (list, &peers) in self.lists.iter().enumerate() {
                if !peers.is_null() {
                    let weighted = (*peers).total_weight != shared.count[list];
                    (*peers).set_weighted(weighted.into());
                    (*peers).set_single(0);
                }
            }
            let single = shared.count[PRIMARY] == 1 && shared.count[BACKUP] == 0;
            (*self.lists[PRIMARY]).set_single(single.into());
        }
    }

    /// Lets a peer just unlinked go, by nginx's own rule: freed now if no request holds it,
    /// else marked `zombie`, for the `free` of the last request holding it to free.
    ///
    /// # Safety
    /// `target` must be this upstream; the peer was unlinked under the locks still held.
    #[cfg(ngx_peer_refs)]
    unsafe fn release(
        &self,
        target: &Target<'_>,
        _list: usize,
        peer: *mut ngx_http_upstream_rr_peer_t,
    ) {
        // SAFETY: the zone's pool, locked after the lists as nginx orders them. `refs` only
        // changes in a balancer's `get` (under a list write lock) or `free` (under a read
        // lock): not while this write lock is held.
        unsafe {
            let slab = SlabGuard::lock((*target.primary).shpool);
            if (*peer).refs != 0 {
                (*peer).set_zombie(1);
            } else {
                free_peer(&slab, peer);
            }
        }
    }

    /// Lets a peer just unlinked go: parked in the graveyard until no request uses it.
    ///
    /// # Safety
    /// `target` must be this upstream; the peer was unlinked under the locks still held.
    #[cfg(not(ngx_peer_refs))]
    unsafe fn release(
        &self,
        target: &Target<'_>,
        list: usize,
        peer: *mut ngx_http_upstream_rr_peer_t,
    ) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let shared = &mut *target.shared;
            (*peer).next = shared.graveyard[list];
            shared.graveyard[list] = peer;
            self.reap(shared, (*target.primary).shpool);
        }
    }

    /// Gives back the memory of removed peers no request uses any more, taking the zone's
    /// mutex only when there are some.
    ///
    /// # Safety
    /// `shared` must be this upstream's state, `shpool` its zone.
    #[cfg(not(ngx_peer_refs))]
    unsafe fn reap(&self, shared: &mut SharedState, shpool: *mut nginx_sys::ngx_slab_pool_t) {
        if shared.graveyard.iter().all(|g| g.is_null()) {
            return;
        }
        // SAFETY: the zone's pool, locked after the lists as nginx orders them.
        unsafe {
            let slab = SlabGuard::lock(shpool);
            self.reap_with(shared, &slab);
        }
    }

    /// [`reap`](Self::reap) with the zone's mutex already held.
    ///
    /// # Safety
    /// `shared` must be this upstream's state, `slab` its zone.
    #[cfg(not(ngx_peer_refs))]
    unsafe fn reap_with(&self, shared: &mut SharedState, slab: &SlabGuard) {
        for list in [PRIMARY, BACKUP] {
            if self.lists[list].is_null() {
                continue;
            }
            // SAFETY: the owning list is write-locked: no `free` can be changing `conns`, and
            // graveyard peers are reachable only from here.
            unsafe {
                let mut link: *mut *mut ngx_http_upstream_rr_peer_t =
                    &raw mut shared.graveyard[list];
                while !(*link).is_null() {
                    let peer = *link;
                    if (*peer).conns == 0 {
                        *link = (*peer).next;
                        free_peer(slab, peer);
                    } else {
                        link = &raw mut (*peer).next;
                    }
                }
            }
        }
    }
}

/// Frees a peer and everything it owns.
///
/// # Safety
/// `peer` must be unlinked from every list and unused by any request.
unsafe fn free_peer(slab: &SlabGuard, peer: *mut ngx_http_upstream_rr_peer_t) {
    // SAFETY: guaranteed by the caller; every part was allocated from this zone (by nginx's zone
    // copy, `new_peer`, or nginx's session saving).
    unsafe {
        slab.free((*peer).sockaddr);
        slab.free((*peer).name.data);
        slab.free((*peer).server.data);
        slab.free((*peer).ssl_session);
        slab.free(peer);
    }
}

/// A peer built outside any list lock, owned by this call until linked.
struct NewPeer {
    peer: *mut ngx_http_upstream_rr_peer_t,
    /// A backup list made in case the upstream has none yet.
    backup_list: *mut ngx_http_upstream_rr_peers_t,
}

/// The `sockaddr` nginx connects to for an endpoint, as bytes (its length is the `socklen`).
pub fn sockaddr_bytes(endpoint: &Endpoint) -> Vec<u8> {
    // SAFETY: zeroed sockaddr structures are valid; the bytes are copied out as is.
    unsafe {
        fn raw<T>(v: &T) -> Vec<u8> {
            // SAFETY: any initialised value can be viewed as bytes.
            unsafe { core::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of_val(v)) }
                .to_vec()
        }
        match endpoint {
            Endpoint::Ip(std::net::SocketAddr::V4(a)) => {
                let mut sin: libc::sockaddr_in = core::mem::zeroed();
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                raw(&sin)
            }
            Endpoint::Ip(std::net::SocketAddr::V6(a)) => {
                let mut sin6: libc::sockaddr_in6 = core::mem::zeroed();
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                raw(&sin6)
            }
            Endpoint::Unix(path) => {
                let mut sun: libc::sockaddr_un = core::mem::zeroed();
                sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
                for (dst, &src) in sun.sun_path.iter_mut().zip(path.as_bytes()) {
                    *dst = src as libc::c_char;
                }
                // nginx's socklen for unix sockets: the whole structure.
                raw(&sun)
            }
        }
    }
}

impl NewPeer {
    /// Allocates and fills a peer (and a backup list if one may be needed) in the zone.
    ///
    /// # Safety
    /// `target` must be a live zoned upstream.
    unsafe fn new(
        target: &Target<'_>,
        addr: &ServerAddress,
        settings: &PeerSettings,
    ) -> Result<NewPeer, Error> {
        let sockaddr = sockaddr_bytes(addr.endpoint());
        let name = addr.name().as_bytes();
        let server = addr.server().as_bytes();
        // SAFETY: `primary` is live; `next` is only a hint here and checked again under lock.
        let (shpool, needs_backup_list) = unsafe {
            ((*target.primary).shpool, settings.backup && (*target.primary).next.is_null())
        };
        // nginx >= 1.27.3 frees removed peers itself, and its own peers' parts have fixed sizes
        // (`ngx_http_upstream_zone_copy_peer`): ours are made the same way.
        let (sockaddr_size, name_size) = if cfg!(ngx_peer_refs) {
            (size_of::<nginx_sys::ngx_sockaddr_t>().max(sockaddr.len()), MAX_NAME_LEN)
        } else {
            (sockaddr.len(), name.len())
        };
        // SAFETY: the zone's pool.
        let slab = unsafe { SlabGuard::lock(shpool) };
        let peer = slab.calloc(size_of::<ngx_http_upstream_rr_peer_t>())
            as *mut ngx_http_upstream_rr_peer_t;
        let sa = slab.calloc(sockaddr_size);
        let name_data = slab.calloc(name_size.max(name.len()));
        let server_data = slab.calloc(server.len());
        let backup_list = if needs_backup_list {
            slab.calloc(size_of::<ngx_http_upstream_rr_peers_t>())
                as *mut ngx_http_upstream_rr_peers_t
        } else {
            ptr::null_mut()
        };
        if peer.is_null()
            || sa.is_null()
            || name_data.is_null()
            || server_data.is_null()
            || (needs_backup_list && backup_list.is_null())
        {
            // SAFETY: each is NULL or a fresh allocation nobody else has seen.
            unsafe {
                slab.free(peer);
                slab.free(sa);
                slab.free(name_data);
                slab.free(server_data);
                slab.free(backup_list);
            }
            return Err(ChangeError::NoMemory { zone: target.upstream.zone_text() }.into());
        }
        drop(slab);

        // SAFETY: the allocations are private to this call, of the sizes copied.
        unsafe {
            ptr::copy_nonoverlapping(sockaddr.as_ptr(), sa, sockaddr.len());
            ptr::copy_nonoverlapping(name.as_ptr(), name_data, name.len());
            ptr::copy_nonoverlapping(server.as_ptr(), server_data, server.len());
            let p = &mut *peer;
            p.sockaddr = sa.cast();
            p.socklen = sockaddr.len() as _;
            p.name.data = name_data;
            p.name.len = name.len();
            p.server.data = server_data;
            p.server.len = server.len();
            apply(p, settings);
            if !backup_list.is_null() {
                let b = &mut *backup_list;
                b.shpool = shpool;
                b.name = (*target.primary).name;
                #[cfg(ngx_peer_refs)]
                {
                    // Both lists share one counter; `number` starts exact, at 0.
                    b.config = (*target.primary).config;
                }
                #[cfg(not(ngx_peer_refs))]
                {
                    b.number = (*target.shared).capacity;
                }
            }
        }
        Ok(NewPeer { peer, backup_list })
    }

    /// Returns unused memory to the zone.
    ///
    /// # Safety
    /// The peer must not have been linked.
    unsafe fn discard(self, slab: &SlabGuard) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            free_peer(slab, self.peer);
            slab.free(self.backup_list);
        }
    }
}

/// Writes settings into a peer that is private or under its list's write lock.
fn apply(p: &mut ngx_http_upstream_rr_peer_t, s: &PeerSettings) {
    p.weight = s.weight as ngx_int_t;
    p.effective_weight = s.weight as ngx_int_t;
    p.current_weight = 0;
    p.max_fails = s.max_fails as ngx_uint_t;
    p.fail_timeout = s.fail_timeout as time_t;
    p.max_conns = s.max_conns as ngx_uint_t;
    p.down = s.down.into();
}

pub fn add_peer(
    upstream: &ZonedUpstream,
    addr: &ServerAddress,
    settings: &PeerSettings,
) -> Result<(), Error> {
    let target = Target::new(upstream, Change::AddPeer)?;
    if settings.backup && !target.balancer.supports_backup() {
        return Err(ChangeError::BackupUnsupported {
            upstream: target.upstream_text(),
            balancer: target.balancer,
        }
        .into());
    }
    // SAFETY: a live zoned upstream.
    let new = match unsafe { NewPeer::new(&target, addr, settings) } {
        Ok(new) => new,
        // A full zone must not hide that the peer is there already (callers retry on "exists").
        // SAFETY: this upstream's lists, under the locks `lock_all` takes.
        Err(e) => match unsafe { target.lock_all().find(&target, addr) } {
            Ok(Some(_)) => return Err(target.exists(addr).into()),
            Ok(None) => return Err(e),
            Err(owned) => return Err(owned),
        },
    };
    let mut unused_backup_list = new.backup_list;

    let result = {
        let mut locked = target.lock_all();
        // SAFETY: this upstream's lists, under the locks just taken.
        let found = unsafe { locked.find(&target, addr) };
        // SAFETY: this upstream's state, guarded by the locks just taken.
        let shared = unsafe { &mut *target.shared };
        let list = usize::from(settings.backup);
        match found {
            Ok(Some(_)) => Err(target.exists(addr).into()),
            Err(owned) => Err(owned),
            Ok(None) if shared.count[PRIMARY] + shared.count[BACKUP] >= shared.capacity => {
                Err(ChangeError::Full {
                    upstream: target.upstream_text(),
                    capacity: shared.capacity,
                }
                .into())
            }
            // SAFETY: both lists are write-locked; the new peer and list are ours to link.
            Ok(None) => unsafe {
                let span_before = locked.bitmap_span(&target);
                if list == BACKUP && locked.lists[BACKUP].is_null() {
                    // No request can be in a list that did not exist; linking it under the
                    // primary lock publishes it to every failover path at once.
                    (*target.primary).next = new.backup_list;
                    locked.lists[BACKUP] = new.backup_list;
                    unused_backup_list = ptr::null_mut();
                }
                // Appended, so that the positions of existing peers (the bits requests keep in
                // their `tried` bitmaps) do not move.
                let tail = locked.tail(shared, list);
                match tail.as_mut() {
                    Some(tail) => tail.next = new.peer,
                    None => (*locked.lists[list]).peer = new.peer,
                }
                shared.tail[list] = new.peer;
                shared.index.insert(new.peer, list == BACKUP, tail);
                shared.count[list] += 1;
                locked.account(list, &*new.peer, 1);
                // nginx >= 1.27.3: no counter move of its own (but for table balancers), as every
                // request's `tried` bitmap covers the capacity (`request.rs`), and the count
                // stays within it; a list longer than that (resolver peers) moves it.
                locked.publish(&target, span_before, Change::AddPeer);
                #[cfg(not(ngx_peer_refs))]
                locked.reap(shared, (*target.primary).shpool);
                Ok(())
            },
        }
    };

    if result.is_ok() && unused_backup_list.is_null() {
        return Ok(());
    }
    // SAFETY: the zone's pool; no list lock is held any more.
    let slab = unsafe { SlabGuard::lock((*target.primary).shpool) };
    match result {
        // SAFETY: the peer was linked; only an unneeded backup list is given back.
        Ok(()) => unsafe { slab.free(unused_backup_list) },
        // SAFETY: nothing was linked.
        Err(_) => unsafe {
            NewPeer { peer: new.peer, backup_list: unused_backup_list }.discard(&slab)
        },
    }
    result
}

pub fn remove_peer(upstream: &ZonedUpstream, addr: &ServerAddress) -> Result<(), Error> {
    let target = Target::new(upstream, Change::RemovePeer)?;
    let locked = target.lock_all();
    // SAFETY: this upstream's lists, under its locks.
    let found = unsafe { locked.find(&target, addr) }?.ok_or_else(|| target.not_found(addr))?;
    // SAFETY: this upstream's state, guarded by the locks just taken.
    let shared = unsafe { &mut *target.shared };
    // SAFETY: as above.
    if found.list == PRIMARY && unsafe { locked.primary_len(shared) } == 1 {
        return Err(ChangeError::LastPrimary { upstream: target.upstream_text() }.into());
    }
    // SAFETY: both lists are write-locked; `found` is in list `found.list`.
    unsafe {
        let span_before = locked.bitmap_span(&target);
        let (prev, next) = (found.prev, (*found.peer).next);
        match prev.as_mut() {
            Some(prev) => prev.next = next,
            None => (*locked.lists[found.list]).peer = next,
        }
        if next.is_null() {
            shared.tail[found.list] = prev;
        } else if !locked.walks {
            shared.index.set_prev(next, prev);
        }
        shared.index.remove(found.peer);
        shared.count[found.list] -= 1;
        locked.account(found.list, &*found.peer, -1);
        // nginx >= 1.27.3: no counter move of its own (but for table balancers): a request that
        // holds the peer keeps it alive (`refs`), and a shorter list fits every bitmap.
        locked.publish(&target, span_before, Change::RemovePeer);
        locked.release(&target, found.list, found.peer);
    }
    Ok(())
}

/// `set_peer_down` and `update_peer`: fields every balancer reads live, and the weight.
pub fn update_peer(
    upstream: &ZonedUpstream,
    addr: &ServerAddress,
    options: &ValidOptions,
) -> Result<(), Error> {
    let change = if options.weight().is_some() { Change::Weight } else { Change::InPlace };
    let target = Target::new(upstream, change)?;
    let locked = target.lock_all();
    // SAFETY: this upstream's lists, under its locks.
    let found = unsafe { locked.find(&target, addr) }?.ok_or_else(|| target.not_found(addr))?;
    // SAFETY: the owning list is write-locked (both are).
    unsafe {
        let span_before = locked.bitmap_span(&target);
        let p = &mut *found.peer;
        locked.account(found.list, p, -1);
        if let Some(weight) = options.weight() {
            p.weight = weight as ngx_int_t;
            p.effective_weight = weight as ngx_int_t;
            p.current_weight = 0;
        }
        if let Some(v) = options.max_fails() {
            p.max_fails = v as ngx_uint_t;
        }
        if let Some(v) = options.fail_timeout() {
            p.fail_timeout = v as time_t;
        }
        if let Some(v) = options.max_conns() {
            p.max_conns = v as ngx_uint_t;
        }
        if let Some(down) = options.down() {
            if !down {
                // Up: forget past failures too, so the peer gets traffic at once even if nginx
                // had taken it out after max_fails.
                p.fails = 0;
            }
            p.down = down.into();
        }
        locked.account(found.list, p, 1);
        // nginx >= 1.27.3: no counter move (but for table balancers' weights): every balancer
        // reads these fields live, under the list locks held here.
        locked.publish(&target, span_before, change);
    }
    Ok(())
}

/// Zone usage of an upstream: its zone's size and free bytes, after giving back what removed
/// peers no longer need.
pub fn zone_usage(upstream: &ZonedUpstream) -> Result<(usize, usize), Error> {
    let target = Target::new(upstream, Change::InPlace)?;
    // Before nginx 1.27.3 the graveyard is emptied first, under the list locks it needs; later
    // nginx frees removed peers itself, and only the zone's mutex is needed.
    #[cfg(not(ngx_peer_refs))]
    let locked = target.lock_all();
    // SAFETY: this upstream's state and zone; the reap runs under the list locks just taken.
    unsafe {
        let slab = SlabGuard::lock((*target.primary).shpool);
        #[cfg(not(ngx_peer_refs))]
        locked.reap_with(&mut *target.shared, &slab);
        Ok((upstream.zone_size, slab.free_bytes()))
    }
}

/// The upstream's peers as its state file records them: primary peers, then backup peers.
///
/// Meant to run while the state file's lock serialises the upstream's changes, so the list sizes
/// read first stay valid: everything is reserved before the read locks are taken, and nothing
/// under them allocates.
///
/// Fails (rather than leave a peer out) if a peer's name is not an address the file can hold,
/// such as a configured unix socket path with a space in it.
pub fn snapshot(upstream: &ZonedUpstream) -> Result<Vec<StatePeer>, AddressError> {
    // SAFETY: `conf` is the explicit upstream `resolve` found.
    let shared = unsafe { upstream_conf(upstream.conf).shared };
    if shared.is_null() {
        return Ok(Vec::new());
    }
    // SAFETY: the counts are only changed under the state file's lock, which the caller holds.
    let n = unsafe { (*shared).count[PRIMARY] + (*shared).count[BACKUP] };
    let mut records: Vec<(usize, usize, PeerSettings)> = Vec::with_capacity(n);
    let mut names: Vec<u8> = Vec::with_capacity(n * MAX_NAME_LEN);
    {
        // SAFETY: the live zoned primary list.
        let _primary = unsafe { PeersGuard::read(upstream.peers) };
        // SAFETY: read under the primary lock; a linked backup list stays.
        let backup = unsafe { (*upstream.peers).next };
        // SAFETY: the backup list lives in the same zone.
        let _backup = (!backup.is_null()).then(|| unsafe { PeersGuard::read(backup) });
        for (list, peers) in [(PRIMARY, upstream.peers), (BACKUP, backup)] {
            if peers.is_null() {
                continue;
            }
            // SAFETY: the list is read-locked.
            let mut peer = unsafe { (*peers).peer };
            while !peer.is_null() {
                // SAFETY: as above.
                let p = unsafe { &*peer };
                // SAFETY: the name lives in the peer.
                let name = unsafe { bytes::ngx_str(&p.name) };
                let fits = records.len() < records.capacity()
                    && names.len() + name.len() <= names.capacity();
                // nginx's resolver's peers come back from DNS, not from the file.
                // SAFETY: the list is read-locked.
                if fits && !unsafe { resolver_owned(peer) } {
                    records.push((names.len(), name.len(), settings_of(p, list == BACKUP)));
                    names.extend_from_slice(name);
                }
                peer = p.next;
            }
        }
    }
    records
        .into_iter()
        .map(|(off, len, settings)| {
            Ok(StatePeer { address: ServerAddress::parse(&names[off..off + len])?, settings })
        })
        .collect()
}

/// The longest peer name nginx writes (`NGX_SOCKADDR_STRLEN`).
const MAX_NAME_LEN: usize = 113;

/// A peer's settings as a state file records them. Configured values beyond what a state file
/// holds (more than 2^32 - 1, which nginx would accept) are written as that maximum.
fn settings_of(p: &ngx_http_upstream_rr_peer_t, backup: bool) -> PeerSettings {
    let clamp = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
    PeerSettings {
        weight: clamp(p.weight as i64).max(1),
        max_fails: clamp(p.max_fails as i64),
        fail_timeout: clamp(p.fail_timeout),
        max_conns: clamp(p.max_conns as i64),
        down: p.down != 0,
        backup,
    }
}
