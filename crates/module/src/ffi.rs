//! The functions the embedded Lua wrapper (`lua/ngx/dynamic.lua`) calls through LuaJIT's FFI.
//!
//! They take no request: everything is reached through `ngx_cycle`. Each returns
//! - `NGX_OK`: the caller's buffers hold the answer;
//! - `NGX_DECLINED`: the buffers were too small; the sizes a complete answer needs are written
//!   back and the caller grows its buffers and calls again;
//! - `NGX_ERROR`: the error text is in `err`.
//!
//! The record layouts are mirrored by the `ffi.cdef` in the Lua wrapper; keep the two in step.

use core::ffi::{c_char, c_int};
use core::fmt::{self, Write};
use core::slice;
use std::panic::{catch_unwind, AssertUnwindSafe};

use nginx_sys::{ngx_http_upstream_rr_peers_t, NGX_DECLINED, NGX_ERROR, NGX_OK};

use dynamic_upstream_core::address::{AddressError, ServerAddress};
use dynamic_upstream_core::options::{OptionError, PeerOptions};

use crate::bytes;
use crate::conf::upstream_conf;
use crate::locks::PeersGuard;
use crate::output::{Output, StrRef};
use crate::peers;
use crate::state_file::{self, PersistError};
use crate::upstreams::{LookupError, Upstreams, ZonedUpstream};

/// Everything an API call can answer with instead of a result.
enum ApiError {
    Lookup(LookupError),
    Address(AddressError),
    Option(OptionError),
    Peers(peers::Error),
    Persist(PersistError<peers::Error>),
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Lookup(e) => e.fmt(f),
            ApiError::Address(e) => e.fmt(f),
            ApiError::Option(e) => e.fmt(f),
            ApiError::Peers(e) => e.fmt(f),
            ApiError::Persist(e) => e.fmt(f),
        }
    }
}

impl From<LookupError> for ApiError {
    fn from(e: LookupError) -> Self {
        ApiError::Lookup(e)
    }
}

impl From<AddressError> for ApiError {
    fn from(e: AddressError) -> Self {
        ApiError::Address(e)
    }
}

impl From<OptionError> for ApiError {
    fn from(e: OptionError) -> Self {
        ApiError::Option(e)
    }
}

impl From<peers::Error> for ApiError {
    fn from(e: peers::Error) -> Self {
        ApiError::Peers(e)
    }
}

/// Peer options as the Lua wrapper passes them: a value and whether it was given.
#[repr(C)]
pub struct OptionsRecord {
    weight: f64,
    max_fails: f64,
    fail_timeout: f64,
    max_conns: f64,
    has_weight: u8,
    has_max_fails: u8,
    has_fail_timeout: u8,
    has_max_conns: u8,
    has_down: u8,
    down: u8,
    has_backup: u8,
    backup: u8,
}

impl OptionsRecord {
    fn to_options(&self) -> PeerOptions {
        let num = |has: u8, v: f64| (has != 0).then_some(v);
        let flag = |has: u8, v: u8| (has != 0).then_some(v != 0);
        PeerOptions {
            weight: num(self.has_weight, self.weight),
            max_fails: num(self.has_max_fails, self.max_fails),
            fail_timeout: num(self.has_fail_timeout, self.fail_timeout),
            max_conns: num(self.has_max_conns, self.max_conns),
            down: flag(self.has_down, self.down),
            backup: flag(self.has_backup, self.backup),
        }
    }
}

/// One upstream of `list_upstreams`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct UpstreamRecord {
    name: StrRef,
    zone: StrRef,
}

/// One peer of `describe_zone`. Numbers are doubles so LuaJIT reads them as plain Lua numbers.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct PeerRecord {
    name: StrRef,
    server: StrRef,
    weight: f64,
    current_weight: f64,
    effective_weight: f64,
    max_fails: f64,
    fail_timeout: f64,
    fails: f64,
    max_conns: f64,
    conns: f64,
    accessed: f64,
    checked: f64,
    down: u8,
    backup: u8,
}

/// The caller's error buffer: `cap` bytes at `buf`, the written length returned in `*len`.
struct ErrorBuf {
    buf: *mut u8,
    len: *mut usize,
}

impl ErrorBuf {
    /// Writes `err`, cut to the buffer's capacity (the Lua side passes room for any message the
    /// module produces; caller-supplied names inside messages are already shortened).
    fn set(&self, err: &dyn fmt::Display) -> c_int {
        struct Cut<'a> {
            buf: &'a mut [u8],
            used: usize,
        }
        impl Write for Cut<'_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                let room = self.buf.len() - self.used;
                let n = s.len().min(room);
                self.buf[self.used..self.used + n].copy_from_slice(&s.as_bytes()[..n]);
                self.used += n;
                Ok(())
            }
        }
        if self.buf.is_null() || self.len.is_null() {
            return NGX_ERROR as c_int;
        }
        // SAFETY: the Lua wrapper passes a buffer of `*len` bytes and a valid `size_t *`.
        let buf = unsafe { slice::from_raw_parts_mut(self.buf, *self.len) };
        let mut cut = Cut { buf, used: 0 };
        let _ = write!(cut, "{err}");
        // SAFETY: as above.
        unsafe { *self.len = cut.used };
        NGX_ERROR as c_int
    }
}

/// Runs an API call, turning a panic (a bug, never expected) into an error instead of taking
/// the worker down; lock guards release their locks while unwinding.
fn guarded(err: &ErrorBuf, call: impl FnOnce() -> Result<c_int, ApiError>) -> c_int {
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(rc)) => rc,
        Ok(Err(e)) => err.set(&e),
        Err(_) => err.set(&"internal error in ngx.dynamic (see the error log)"),
    }
}

/// Builds a caller's record and byte buffers from the FFI arguments.
///
/// # Safety
/// `items` must point to `*n` records and `bytes` to `*bytes_len` bytes (either may be NULL when
/// its count is 0), all initialised, writable and not aliased for the call.
unsafe fn output<'a, T>(
    items: *mut T,
    n: *mut usize,
    bytes: *mut u8,
    bytes_len: *mut usize,
) -> Output<'a, T> {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let items =
            if items.is_null() { &mut [][..] } else { slice::from_raw_parts_mut(items, *n) };
        let bytes = if bytes.is_null() {
            &mut [][..]
        } else {
            slice::from_raw_parts_mut(bytes, *bytes_len)
        };
        Output::new(items, bytes)
    }
}

/// Reports a finished output: its sizes, and whether it was complete.
///
/// # Safety
/// `n` and `bytes_len` must be valid for writes.
unsafe fn finish<T>(out: &Output<'_, T>, n: *mut usize, bytes_len: *mut usize) -> c_int {
    // SAFETY: guaranteed by the caller.
    unsafe {
        *n = out.items_needed();
        *bytes_len = out.bytes_needed();
    }
    if out.complete() {
        NGX_OK as c_int
    } else {
        NGX_DECLINED as c_int
    }
}

/// Lists the explicit upstreams with a zone: name and zone name, in configuration order.
///
/// # Safety
/// Called by the Lua wrapper in an nginx worker with buffers as `output` describes, `err` of
/// `*err_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn ngx_dynamic_upstream_ffi_list(
    items: *mut UpstreamRecord,
    n: *mut usize,
    bytes: *mut u8,
    bytes_len: *mut usize,
    err: *mut u8,
    err_len: *mut usize,
) -> c_int {
    let err = ErrorBuf { buf: err, len: err_len };
    guarded(&err, || {
        // SAFETY: called from a worker's Lua code, so the cycle is configured.
        let upstreams = unsafe { Upstreams::current()? };
        // SAFETY: buffers as documented above.
        let mut out = unsafe { output(items, n, bytes, bytes_len) };
        for entry in upstreams.entries() {
            if let Some(zone) = entry.zone {
                let record =
                    UpstreamRecord { name: out.string(entry.name), zone: out.string(zone) };
                out.push(record);
            }
        }
        // SAFETY: `n` and `bytes_len` are valid (see above).
        Ok(unsafe { finish(&out, n, bytes_len) })
    })
}

/// Describes the peers of the upstream a target names: primary peers, then backup peers.
///
/// # Safety
/// As `ngx_dynamic_upstream_ffi_list`, plus `target` of `target_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn ngx_dynamic_upstream_ffi_describe(
    target: *const c_char,
    target_len: usize,
    items: *mut PeerRecord,
    n: *mut usize,
    bytes: *mut u8,
    bytes_len: *mut usize,
    err: *mut u8,
    err_len: *mut usize,
) -> c_int {
    let err = ErrorBuf { buf: err, len: err_len };
    guarded(&err, || {
        // SAFETY: the wrapper passes a Lua string's bytes and length.
        let target = unsafe { bytes::raw(target.cast(), target_len) };
        // SAFETY: called from a worker's Lua code, so the cycle is configured.
        let upstream = unsafe { Upstreams::current()? }.resolve(target)?;
        // SAFETY: buffers as documented above.
        let mut out = unsafe { output(items, n, bytes, bytes_len) };
        describe(&upstream, &mut out);
        // SAFETY: `n` and `bytes_len` are valid (see above).
        Ok(unsafe { finish(&out, n, bytes_len) })
    })
}

/// The upstream a target names and the peer a server string names, from FFI arguments.
///
/// # Safety
/// Each pointer must point to its length in readable bytes.
unsafe fn upstream_and_server(
    target: *const c_char,
    target_len: usize,
    server: *const c_char,
    server_len: usize,
) -> Result<(ZonedUpstream, ServerAddress), ApiError> {
    // SAFETY: guaranteed by the caller.
    let (target, server) =
        unsafe { (bytes::raw(target.cast(), target_len), bytes::raw(server.cast(), server_len)) };
    // The address first: a malformed one is the caller's error whatever the target.
    let addr = ServerAddress::parse(server)?;
    // SAFETY: called from a worker's Lua code, so the cycle is configured.
    let upstream = unsafe { Upstreams::current()? }.resolve(target)?;
    Ok((upstream, addr))
}

/// Makes a change; for an upstream with a state file, saves its new state too.
fn change(
    upstream: &ZonedUpstream,
    make: impl FnOnce() -> Result<(), peers::Error>,
) -> Result<c_int, ApiError> {
    // SAFETY: the explicit upstream `resolve` found.
    let conf = unsafe { upstream_conf(upstream.conf) };
    if conf.state.is_null() {
        make()?;
    } else {
        // SAFETY: the state file configuration lives as long as the cycle.
        let state = unsafe { &*conf.state };
        state_file::persist(state, conf.shared, &upstream.name_text(), make, || {
            peers::snapshot(upstream)
        })
        .map_err(ApiError::Persist)?;
    }
    Ok(NGX_OK as c_int)
}

/// Adds a peer (`add_peer`).
///
/// # Safety
/// Called by the Lua wrapper: strings with their lengths, a valid options record, `err` of
/// `*err_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn ngx_dynamic_upstream_ffi_add_peer(
    target: *const c_char,
    target_len: usize,
    server: *const c_char,
    server_len: usize,
    options: *const OptionsRecord,
    err: *mut u8,
    err_len: *mut usize,
) -> c_int {
    let err = ErrorBuf { buf: err, len: err_len };
    guarded(&err, || {
        // SAFETY: as documented above.
        let options = unsafe { (*options).to_options() }.validate()?;
        // SAFETY: as documented above.
        let (upstream, addr) =
            unsafe { upstream_and_server(target, target_len, server, server_len)? };
        change(&upstream, || peers::add_peer(&upstream, &addr, &options.with_defaults()))
    })
}

/// Removes a peer (`remove_peer`).
///
/// # Safety
/// As `ngx_dynamic_upstream_ffi_add_peer`.
#[no_mangle]
pub unsafe extern "C" fn ngx_dynamic_upstream_ffi_remove_peer(
    target: *const c_char,
    target_len: usize,
    server: *const c_char,
    server_len: usize,
    err: *mut u8,
    err_len: *mut usize,
) -> c_int {
    let err = ErrorBuf { buf: err, len: err_len };
    guarded(&err, || {
        // SAFETY: as documented above.
        let (upstream, addr) =
            unsafe { upstream_and_server(target, target_len, server, server_len)? };
        change(&upstream, || peers::remove_peer(&upstream, &addr))
    })
}

/// Changes a peer in place (`update_peer`, and `set_peer_down` with only `down`).
///
/// # Safety
/// As `ngx_dynamic_upstream_ffi_add_peer`.
#[no_mangle]
pub unsafe extern "C" fn ngx_dynamic_upstream_ffi_update_peer(
    target: *const c_char,
    target_len: usize,
    server: *const c_char,
    server_len: usize,
    options: *const OptionsRecord,
    err: *mut u8,
    err_len: *mut usize,
) -> c_int {
    let err = ErrorBuf { buf: err, len: err_len };
    guarded(&err, || {
        // SAFETY: as documented above.
        let options = unsafe { (*options).to_options() }.validate()?;
        // SAFETY: as documented above.
        let (upstream, addr) =
            unsafe { upstream_and_server(target, target_len, server, server_len)? };
        change(&upstream, || peers::update_peer(&upstream, &addr, &options))
    })
}

/// The size and free bytes of the zone of the upstream a target names (`zone_usage`).
///
/// # Safety
/// As `ngx_dynamic_upstream_ffi_add_peer`; `size` and `free` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn ngx_dynamic_upstream_ffi_zone_usage(
    target: *const c_char,
    target_len: usize,
    size: *mut usize,
    free: *mut usize,
    err: *mut u8,
    err_len: *mut usize,
) -> c_int {
    let err = ErrorBuf { buf: err, len: err_len };
    guarded(&err, || {
        // SAFETY: as documented above.
        let target = unsafe { bytes::raw(target.cast(), target_len) };
        // SAFETY: called from a worker's Lua code, so the cycle is configured.
        let upstream = unsafe { Upstreams::current()? }.resolve(target)?;
        let (zone_size, zone_free) = peers::zone_usage(&upstream)?;
        // SAFETY: as documented above.
        unsafe {
            *size = zone_size;
            *free = zone_free;
        }
        Ok(NGX_OK as c_int)
    })
}

/// Copies the primary list, then the backup list, each under its own read lock (taken primary
/// first, the order every writer of this module uses).
fn describe(upstream: &ZonedUpstream, out: &mut Output<'_, PeerRecord>) {
    let primary = upstream.peers;
    // SAFETY: `resolve` returned a live zoned peers list.
    let _primary_lock = unsafe { PeersGuard::read(primary) };
    // SAFETY: the primary read lock is held.
    unsafe { copy_peers(primary, false, out) };

    // SAFETY: `next` is read under the primary lock; the backup list, once linked, is never freed.
    let backup = unsafe { (*primary).next };
    if !backup.is_null() {
        // SAFETY: a backup list of a zoned upstream lives in the same zone.
        let _backup_lock = unsafe { PeersGuard::read(backup) };
        // SAFETY: the backup read lock is held.
        unsafe { copy_peers(backup, true, out) };
    }
}

/// Copies one list's peers. Nothing here can fail: records and strings that do not fit are only
/// counted.
///
/// # Safety
/// The read lock of `peers` must be held, which keeps every peer in the list alive and its fields
/// stable.
unsafe fn copy_peers(
    peers: *mut ngx_http_upstream_rr_peers_t,
    backup: bool,
    out: &mut Output<'_, PeerRecord>,
) {
    // SAFETY: guaranteed by the caller: the list and its peers are stable under the read lock.
    unsafe {
        let mut peer = (*peers).peer;
        while let Some(p) = peer.as_ref() {
            let (name, server) = (bytes::ngx_str(&p.name), bytes::ngx_str(&p.server));
            let name_ref = out.string(name);
            // Usually the same text: one copy, and one Lua string for both fields.
            let server_ref = if server == name { name_ref } else { out.string(server) };
            let record = PeerRecord {
                name: name_ref,
                server: server_ref,
                weight: p.weight as f64,
                current_weight: p.current_weight as f64,
                effective_weight: p.effective_weight as f64,
                max_fails: p.max_fails as f64,
                fail_timeout: p.fail_timeout as f64,
                fails: p.fails as f64,
                max_conns: p.max_conns as f64,
                conns: p.conns as f64,
                accessed: p.accessed as f64,
                checked: p.checked as f64,
                down: u8::from(p.down != 0),
                backup: u8::from(backup),
            };
            out.push(record);
            peer = p.next;
        }
    }
}
