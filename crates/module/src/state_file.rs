//! `dynamic_state_file <path>;`: an upstream's peers kept in a file, so that runtime changes
//! survive reloads and restarts (nginx never reuses an upstream zone).
//!
//! - At configuration time the file, if it exists, replaces the upstream's `server` lines: it is
//!   read in the directive and its servers are put in place before nginx builds the peer lists
//!   (this module is ordered before `ngx_http_upstream_module`, so its init_main_conf runs
//!   first). nginx's own initialisation, every balancer and `nginx -t` then see those peers as if
//!   they were configured.
//! - After every change, the worker that made it writes a complete snapshot: a temporary file,
//!   fsync, rename. Changes to one upstream are serialised across workers by an exclusive lock on
//!   `<path>.lock`, held from before the change until the snapshot is in place, so a later
//!   change is never overwritten by an earlier one.
//! - A reload reads the file under the same lock and marks the running generation of the
//!   upstream as superseded: from then on its workers refuse changes (they would be lost with
//!   the old zone) instead of accepting them. If the reload fails, the mark is taken back.

use core::ffi::{c_char, c_void};
use core::ptr;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use dynamic_upstream_core::state_file::{self as format, StatePeer};
use nginx_sys::{
    ngx_addr_t, ngx_array_create, ngx_array_push, ngx_array_t, ngx_command_t, ngx_conf_full_name,
    ngx_conf_t, ngx_core_conf_t, ngx_core_module, ngx_http_conf_ctx_t,
    ngx_http_upstream_main_conf_t, ngx_http_upstream_module, ngx_http_upstream_server_t,
    ngx_http_upstream_srv_conf_t, ngx_pcalloc, ngx_pnalloc, ngx_pool_cleanup_add, ngx_str_t,
    ngx_uint_t, NGX_HTTP_UPSTREAM_BACKUP, NGX_LOG_EMERG, NGX_LOG_NOTICE,
};

use crate::conf::{upstream_conf, zoned_upstreams, SharedState, UpstreamConf};
use crate::{bytes, log};

/// An upstream's state file, as configured.
pub struct StateFile {
    pub path: PathBuf,
    lock_path: PathBuf,
    /// The lock file's device and inode.
    lock_id: (u64, u64),
    /// The servers read from the file at configuration time; NULL when it did not exist.
    servers: *mut ngx_array_t,
    /// Where the directive is, for errors found after it was parsed.
    conf_file: ngx_str_t,
    conf_line: ngx_uint_t,
    /// The lock taken when the file was read, held until the new configuration is committed
    /// (init_module), so no worker of the running one can change the upstream in between.
    /// Closed with the configuration's pool if the load fails.
    pub reading_lock: Option<File>,
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Opens the lock file of a state file, creating it if needed (the master can; workers only
/// open it, read-only, which is all `flock` needs).
fn open_lock(lock_path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .create(true)
        .append(true)
        .mode(0o644)
        .open(lock_path)
        .or_else(|_| File::open(lock_path))
}

/// Opens and locks the lock file of a state file.
fn lock(lock_path: &Path) -> io::Result<File> {
    let file = open_lock(lock_path)?;
    file.lock()?;
    Ok(file)
}

/// The identity of a file, whatever path names it.
fn file_id(file: &File) -> io::Result<(u64, u64)> {
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// Can the workers create and replace files in `dir`? The master runs as root and the workers
/// as the `user` directive's user (nobody by default).
///
/// # Safety
/// `cf` must be the configuration being parsed.
unsafe fn workers_can_write(cf: &ngx_conf_t, dir: &Path) -> Result<(), String> {
    let meta = fs::metadata(dir).map_err(|e| format!("directory \"{}\": {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("\"{}\" is not a directory", dir.display()));
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        // Workers run as this same user.
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
            return Err(format!("the workers cannot write to directory \"{}\"", dir.display()));
        }
        return Ok(());
    }
    // SAFETY: the core module's configuration exists from the start of parsing.
    let (uid, gid) = unsafe {
        let ccf = *(*cf.cycle).conf_ctx.add(ngx_core_module.index) as *const ngx_core_conf_t;
        if (*ccf).user != libc::uid_t::MAX {
            ((*ccf).user, (*ccf).group)
        } else {
            // No `user` directive (yet): nginx's default worker user.
            let pw = libc::getpwnam(nginx_sys::NGX_USER.as_ptr());
            if pw.is_null() {
                return Ok(());
            }
            ((*pw).pw_uid, (*pw).pw_gid)
        }
    };
    let mode = meta.permissions().mode();
    let writable = if uid == 0 {
        true
    } else if meta.uid() == uid {
        mode & 0o300 == 0o300
    } else if meta.gid() == gid {
        mode & 0o030 == 0o030
    } else {
        mode & 0o003 == 0o003
    };
    if writable {
        Ok(())
    } else {
        Err(format!(
            "the workers (uid {uid}) cannot write to directory \"{}\" (owner {}, mode {:o})",
            dir.display(),
            meta.uid(),
            mode & 0o7777
        ))
    }
}

/// Logs a configuration error for the directive being parsed and returns NGX_CONF_ERROR.
fn conf_error(cf: &mut ngx_conf_t, msg: &str) -> *mut c_char {
    log::conf(cf, NGX_LOG_EMERG, msg);
    ngx::core::NGX_CONF_ERROR as *mut c_char
}

/// The `dynamic_state_file` directive handler.
pub extern "C" fn set_state_file(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with the configuration being parsed and this
    // module's server configuration of the upstream block.
    let (cf, conf) = unsafe { (&mut *cf, &mut *(conf as *mut UpstreamConf)) };
    if !conf.state.is_null() {
        return c"is duplicate".as_ptr() as *mut c_char;
    }
    // SAFETY: `args` holds the directive name and its one argument.
    let mut value = unsafe { *((*cf.args).elts as *mut ngx_str_t).add(1) };
    // SAFETY: a relative path is made absolute from the prefix, in the configuration's pool.
    if unsafe { ngx_conf_full_name(cf.cycle, &mut value, 0) } != nginx_sys::NGX_OK as isize {
        return ngx::core::NGX_CONF_ERROR as *mut c_char;
    }
    // SAFETY: ngx_conf_full_name returns a pool string.
    let path = PathBuf::from(OsStr::from_bytes(unsafe { bytes::ngx_str(&value) }));

    match fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => {
            return conf_error(cf, &format!("state file \"{}\" is a directory", path.display()));
        }
        _ => {}
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    // SAFETY: `cf` is the configuration being parsed.
    if let Err(e) = unsafe { workers_can_write(cf, dir) } {
        return conf_error(cf, &format!("state file \"{}\": {e}", path.display()));
    }

    let lock_path = lock_path(&path);
    let lock_error = |e: io::Error| format!("state file lock \"{}\": {e}", lock_path.display());
    let (lock, lock_id) = match open_lock(&lock_path).and_then(|f| Ok((file_id(&f)?, f))) {
        Ok((id, file)) => (file, id),
        Err(e) => return conf_error(cf, &lock_error(e)),
    };
    // Checked by file identity, before locking: one file named two ways by two upstreams would
    // have them overwrite each other, and this process block on its own lock.
    // SAFETY: `cf` is inside an upstream block, whose http context holds the upstreams parsed
    // so far.
    if let Some(other) = unsafe { upstream_using(cf, lock_id) } {
        return conf_error(
            cf,
            &format!("state file \"{}\" is already used by upstream \"{other}\"", path.display()),
        );
    }
    if let Err(e) = lock.lock() {
        return conf_error(cf, &lock_error(e));
    }

    let servers = match fs::read(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => ptr::null_mut(),
        Err(e) => {
            return conf_error(cf, &format!("cannot read state file \"{}\": {e}", path.display()));
        }
        Ok(text) => match format::parse(&text) {
            Err(e) => {
                return conf_error(cf, &format!("invalid state file \"{}\" {e}", path.display()));
            }
            // SAFETY: `cf` is the configuration being parsed.
            Ok(peers) => match unsafe { servers_array(cf, &peers) } {
                Some(servers) => servers,
                None => return ngx::core::NGX_CONF_ERROR as *mut c_char,
            },
        },
    };
    // SAFETY: pool memory for the configuration's lifetime; `StateFile` owns heap paths, freed by
    // the cleanup registered below.
    unsafe {
        let state = ngx_pcalloc(cf.pool, size_of::<StateFile>()) as *mut StateFile;
        let cleanup = ngx_pool_cleanup_add(cf.pool, 0);
        if state.is_null() || cleanup.is_null() {
            return ngx::core::NGX_CONF_ERROR as *mut c_char;
        }
        state.write(StateFile {
            path,
            lock_path,
            lock_id,
            servers,
            conf_file: (*cf.conf_file).file.name,
            conf_line: (*cf.conf_file).line,
            reading_lock: Some(lock),
        });
        (*cleanup).handler = Some(drop_state_file);
        (*cleanup).data = state.cast();
        conf.state = state;
    }
    ptr::null_mut()
}

extern "C" fn drop_state_file(data: *mut c_void) {
    // SAFETY: registered with the StateFile written just before, dropped once with its pool.
    unsafe { ptr::drop_in_place(data as *mut StateFile) };
}

/// The upstream already configured with this state file, if any: two upstreams writing one
/// file would overwrite each other (and the configuration-time lock would deadlock).
///
/// # Safety
/// `cf` must be inside an `upstream {}` block.
unsafe fn upstream_using(cf: &ngx_conf_t, lock_id: (u64, u64)) -> Option<String> {
    // SAFETY: the http context's upstream main configuration lists the upstreams parsed so far,
    // each with this module's configuration.
    unsafe {
        let ctx = &*(cf.ctx as *const ngx_http_conf_ctx_t);
        let umcf = *ctx.main_conf.add(ngx_http_upstream_module.ctx_index)
            as *const ngx_http_upstream_main_conf_t;
        let all = core::slice::from_raw_parts(
            (*umcf).upstreams.elts as *const *mut ngx_http_upstream_srv_conf_t,
            (*umcf).upstreams.nelts,
        );
        all.iter().find_map(|&u| {
            if u.is_null() || (*u).srv_conf.is_null() {
                return None;
            }
            let state = upstream_conf(u).state;
            (!state.is_null() && (*state).lock_id == lock_id)
                .then(|| String::from_utf8_lossy(bytes::ngx_str(&(*u).host)).into_owned())
        })
    }
}

/// Marks the running generation of an upstream as superseded by the configuration being
/// committed: its workers refuse changes from now on (they would be lost with its zone).
///
/// # Safety
/// `cycle` must be the cycle being committed (in init_module), `uscf` one of its upstreams.
pub unsafe fn supersede_running(
    cycle: *mut nginx_sys::ngx_cycle_t,
    uscf: *mut ngx_http_upstream_srv_conf_t,
) {
    // SAFETY: the old cycle, if any, is the running configuration, still alive and mapped in the
    // master; a loaded module keeps its indexes across configuration loads.
    unsafe {
        let old = (*cycle).old_cycle;
        if old.is_null() || (*old).conf_ctx.is_null() {
            return;
        }
        let http =
            *(*old).conf_ctx.add(nginx_sys::ngx_http_module.index) as *const ngx_http_conf_ctx_t;
        if http.is_null() {
            return;
        }
        let umcf = *(*http).main_conf.add(ngx_http_upstream_module.ctx_index)
            as *const ngx_http_upstream_main_conf_t;
        let name = bytes::ngx_str(&(*uscf).host);
        for old_uscf in zoned_upstreams(umcf) {
            let state = upstream_conf(old_uscf).shared;
            if bytes::ngx_str(&(*old_uscf).host) == name && !state.is_null() {
                (*state).superseded.store(1, Ordering::Release);
            }
        }
    }
}

/// Builds nginx's server array for the peers of a state file, in the configuration's pool.
///
/// # Safety
/// `cf` must be the configuration being parsed.
unsafe fn servers_array(cf: &mut ngx_conf_t, peers: &[StatePeer]) -> Option<*mut ngx_array_t> {
    // SAFETY: pool allocations of the configuration; every pointer is checked.
    unsafe {
        let servers =
            ngx_array_create(cf.pool, peers.len().max(1), size_of::<ngx_http_upstream_server_t>());
        if servers.is_null() {
            return None;
        }
        for peer in peers {
            let sockaddr = crate::peers::sockaddr_bytes(peer.address.endpoint());
            let name = peer.address.name().as_bytes();
            let sa = ngx_pnalloc(cf.pool, sockaddr.len()) as *mut u8;
            let name_data = ngx_pnalloc(cf.pool, name.len()) as *mut u8;
            let addr = ngx_pcalloc(cf.pool, size_of::<ngx_addr_t>()) as *mut ngx_addr_t;
            let us = ngx_array_push(servers) as *mut ngx_http_upstream_server_t;
            if sa.is_null() || name_data.is_null() || addr.is_null() || us.is_null() {
                return None;
            }
            ptr::copy_nonoverlapping(sockaddr.as_ptr(), sa, sockaddr.len());
            ptr::copy_nonoverlapping(name.as_ptr(), name_data, name.len());
            let name = ngx_str_t { len: name.len(), data: name_data };
            addr.write(ngx_addr_t { sockaddr: sa.cast(), socklen: sockaddr.len() as _, name });
            ptr::write_bytes(us, 0, 1);
            let s = &peer.settings;
            (*us).name = name;
            (*us).addrs = addr;
            (*us).naddrs = 1;
            (*us).weight = s.weight as ngx_uint_t;
            (*us).max_fails = s.max_fails as ngx_uint_t;
            (*us).fail_timeout = s.fail_timeout as _;
            (*us).max_conns = s.max_conns as ngx_uint_t;
            (*us).down = s.down.into();
            (*us).set_backup(s.backup.into());
        }
        Some(servers)
    }
}

/// Appends the configured `server ... resolve` lines (nginx >= 1.27.3) to a state file's servers.
/// Returns false when out of memory.
///
/// # Safety
/// Both must be server arrays of the configuration being parsed; `configured` may be NULL.
#[cfg(ngx_peer_refs)]
unsafe fn keep_resolved_servers(state: *mut ngx_array_t, configured: *const ngx_array_t) -> bool {
    if configured.is_null() {
        return true;
    }
    // SAFETY: guaranteed by the caller; pushed elements are copied whole, as nginx's own array
    // code does.
    unsafe {
        let servers = core::slice::from_raw_parts(
            (*configured).elts as *const ngx_http_upstream_server_t,
            (*configured).nelts,
        );
        for server in servers.iter().filter(|s| s.host.len != 0) {
            let slot = ngx_array_push(state) as *mut ngx_http_upstream_server_t;
            if slot.is_null() {
                return false;
            }
            ptr::copy_nonoverlapping(server, slot, 1);
        }
    }
    true
}

/// Puts state-file servers in place of the configured ones, before nginx builds the peer lists.
/// Runs as this module's init_main_conf, which comes before the upstream module's.
pub extern "C" fn init_main_conf(cf: *mut ngx_conf_t, _conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx passes the http configuration; the upstream module's main configuration is
    // parsed but not yet initialised.
    unsafe {
        let cf = &mut *cf;
        let http = &*(cf.ctx as *const ngx_http_conf_ctx_t);
        let umcf = *http.main_conf.add(ngx_http_upstream_module.ctx_index)
            as *const ngx_http_upstream_main_conf_t;
        if umcf.is_null() || (*umcf).upstreams.elts.is_null() {
            return ptr::null_mut();
        }
        let all = core::slice::from_raw_parts(
            (*umcf).upstreams.elts as *const *mut ngx_http_upstream_srv_conf_t,
            (*umcf).upstreams.nelts,
        );
        for &uscf in all {
            if uscf.is_null() || (*uscf).srv_conf.is_null() {
                continue;
            }
            let state = upstream_conf(uscf).state;
            if state.is_null() {
                continue;
            }
            let state = &*state;
            let at = format!(
                " in {}:{}",
                String::from_utf8_lossy(bytes::ngx_str(&state.conf_file)),
                state.conf_line
            );
            let upstream = String::from_utf8_lossy(bytes::ngx_str(&(*uscf).host)).into_owned();
            if (*uscf).shm_zone.is_null() {
                log::conf_at(
                    cf,
                    NGX_LOG_EMERG,
                    &format!(
                        "\"dynamic_state_file\" needs a \"zone\" in upstream \"{upstream}\"{at}"
                    ),
                );
                return ngx::core::NGX_CONF_ERROR as *mut c_char;
            }
            if state.servers.is_null() {
                continue;
            }
            let servers = core::slice::from_raw_parts(
                (*state.servers).elts as *const ngx_http_upstream_server_t,
                (*state.servers).nelts,
            );
            if servers.iter().any(|s| s.backup() != 0)
                && (*uscf).flags & NGX_HTTP_UPSTREAM_BACKUP as ngx_uint_t == 0
            {
                log::conf_at(
                    cf,
                    NGX_LOG_EMERG,
                    &format!(
                        "state file \"{}\" has backup servers, which the balancer of upstream \
                         \"{upstream}\" does not support{at}",
                        state.path.display()
                    ),
                );
                return ngx::core::NGX_CONF_ERROR as *mut c_char;
            }
            // The resolver's `server ... resolve` lines stay: their peers come from DNS.
            #[cfg(ngx_peer_refs)]
            if !keep_resolved_servers(state.servers, (*uscf).servers) {
                return ngx::core::NGX_CONF_ERROR as *mut c_char;
            }
            (*uscf).servers = state.servers;
            log::conf_at(
                cf,
                NGX_LOG_NOTICE,
                &format!(
                    "upstream \"{upstream}\": {} peers from state file \"{}\" replace its \
                     server lines",
                    servers.len(),
                    state.path.display()
                ),
            );
        }
    }
    ptr::null_mut()
}

/// Why a change to an upstream with a state file was not made or not saved.
pub enum PersistError<E> {
    /// The change itself failed; nothing was changed or written.
    Change(E),
    /// A reload superseded this generation of the upstream: the change was not made.
    Superseded,
    /// The lock could not be taken: the change was not made.
    Lock(PathBuf, io::Error),
    /// The change was made in shared memory but the file could not be written.
    Write(PathBuf, io::Error),
}

impl<E: core::fmt::Display> core::fmt::Display for PersistError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PersistError::Change(e) => e.fmt(f),
            PersistError::Superseded => {
                f.write_str("nginx is reloading this upstream: the change was not made (retry it)")
            }
            PersistError::Lock(path, e) => write!(
                f,
                "cannot lock state file \"{}\": {e}: the change was not made",
                path.display()
            ),
            PersistError::Write(path, e) => write!(
                f,
                "the change was made but not saved to state file \"{}\": {e}",
                path.display()
            ),
        }
    }
}

/// Makes a change and saves the upstream's new state, holding the state file's lock throughout.
///
/// `snapshot` reads the peers after the change; it runs under the same lock.
pub fn persist<E: core::fmt::Display, S: core::fmt::Display>(
    state: &StateFile,
    shared: *mut SharedState,
    upstream_name: &str,
    change: impl FnOnce() -> Result<(), E>,
    snapshot: impl FnOnce() -> Result<Vec<StatePeer>, S>,
) -> Result<(), PersistError<E>> {
    let lock =
        lock(&state.lock_path).map_err(|e| PersistError::Lock(state.lock_path.clone(), e))?;
    // SAFETY: the upstream's shared state lives in its zone for the cycle.
    if !shared.is_null() && unsafe { (*shared).superseded.load(Ordering::Acquire) } != 0 {
        return Err(PersistError::Superseded);
    }
    change().map_err(PersistError::Change)?;
    let written = match snapshot() {
        Ok(peers) => {
            write_atomically(&state.path, format::format(upstream_name, &peers).as_bytes())
        }
        Err(e) => Err(io::Error::other(e.to_string())),
    };
    drop(lock);
    written.map_err(|e| {
        let err = PersistError::<E>::Write(state.path.clone(), e);
        log::error(&err.to_string());
        err
    })
}

/// Replaces a file with new contents so that a crash at any moment leaves the old file or the
/// new one, never a mix: temporary file, fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut file =
            OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(path.parent().unwrap_or(Path::new("/")))?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
