//! `require "ngx.dynamic"` without a .lua file on disk: a package preloader registered with
//! lua-nginx-module that runs the Lua wrapper embedded in this module.
//!
//! lua-nginx-module's and LuaJIT's functions are looked up with `dlsym` instead of being linked:
//! a link-time reference would make `load_module` fail with "undefined symbol" whenever the Lua
//! module is absent or loaded after this one. Looking them up lets nginx start without Lua (the
//! API is then simply unavailable, and the log says why) and makes the `load_module` order free.

use core::ffi::{c_char, c_int, c_void, CStr};
use core::sync::atomic::{AtomicPtr, Ordering};

use nginx_sys::{ngx_conf_t, ngx_int_t, ngx_module_t, NGX_LOG_WARN, NGX_OK};

/// The Lua side of the API, compiled into the module.
const WRAPPER: &str = include_str!("../../../lua/ngx/dynamic.lua");

type LuaState = c_void;
type LuaCFunction = unsafe extern "C-unwind" fn(*mut LuaState) -> c_int;
type AddPackagePreload =
    unsafe extern "C" fn(*mut ngx_conf_t, *const c_char, LuaCFunction) -> ngx_int_t;
type LuaLoadBuffer =
    unsafe extern "C-unwind" fn(*mut LuaState, *const c_char, usize, *const c_char) -> c_int;
type LuaCall = unsafe extern "C-unwind" fn(*mut LuaState, c_int, c_int);
type LuaError = unsafe extern "C-unwind" fn(*mut LuaState) -> c_int;

/// LuaJIT entry points the loader needs, resolved at each configuration load (a reload may bring
/// a freshly mapped Lua module).
static LOAD_BUFFER: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static CALL: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static ERROR: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());

fn lookup(name: &CStr) -> *mut c_void {
    // SAFETY: dlsym with RTLD_DEFAULT only reads the process's loaded-object tables.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
}

/// Is a module of this name part of the configuration being loaded? A Lua module mapped for an
/// older configuration but dropped from this one must not be called: its `ctx_index` would point
/// at another module's configuration.
fn has_module(cf: &ngx_conf_t, name: &CStr) -> bool {
    // SAFETY: `cf->cycle->modules` holds `modules_n` valid module pointers during configuration.
    let modules: &[*mut ngx_module_t] = unsafe {
        let cycle = &*cf.cycle;
        if cycle.modules.is_null() {
            return false;
        }
        core::slice::from_raw_parts(cycle.modules, cycle.modules_n)
    };
    modules.iter().any(|&m| {
        // SAFETY: every entry is a valid module whose `name` is a NUL-terminated static string.
        !m.is_null() && unsafe { !(*m).name.is_null() && CStr::from_ptr((*m).name) == name }
    })
}

/// Registers the `ngx.dynamic` preloader, or logs once why the API is unavailable.
pub fn register_preload(cf: &mut ngx_conf_t) {
    if let Err(reason) = try_register(cf) {
        crate::log::conf(cf, NGX_LOG_WARN, &format!("ngx.dynamic is unavailable: {reason}"));
    }
}

fn try_register(cf: &mut ngx_conf_t) -> Result<(), &'static str> {
    if !has_module(cf, c"ngx_http_lua_module") {
        return Err("lua-nginx-module (ngx_http_lua_module) is not loaded; \
                    add \"load_module modules/ngx_http_lua_module.so;\"");
    }
    let add_preload = lookup(c"ngx_http_lua_add_package_preload");
    let load_buffer = lookup(c"luaL_loadbuffer");
    let call = lookup(c"lua_call");
    let error = lookup(c"lua_error");
    if [add_preload, load_buffer, call, error].iter().any(|p| p.is_null()) {
        return Err("lua-nginx-module is loaded but does not export its Lua API \
                    (ngx_http_lua_add_package_preload, luaL_loadbuffer)");
    }
    LOAD_BUFFER.store(load_buffer, Ordering::Release);
    CALL.store(call, Ordering::Release);
    ERROR.store(error, Ordering::Release);

    // SAFETY: the symbol is lua-nginx-module's `ngx_http_lua_add_package_preload`, whose C
    // signature `AddPackagePreload` mirrors.
    let add_preload: AddPackagePreload = unsafe { core::mem::transmute(add_preload) };
    // SAFETY: called during configuration with the http `cf`, as lua-nginx-module requires; the
    // name is a static C string.
    let rc = unsafe { add_preload(cf, c"ngx.dynamic".as_ptr(), load_wrapper) };
    if rc != NGX_OK as ngx_int_t {
        return Err("lua-nginx-module refused to register the package preloader");
    }
    Ok(())
}

/// The `package.preload["ngx.dynamic"]` loader: runs the embedded wrapper and returns its module
/// table. Lua errors unwind through this frame ("C-unwind"), which holds nothing to drop.
unsafe extern "C-unwind" fn load_wrapper(l: *mut LuaState) -> c_int {
    // SAFETY: the preloader is registered only after all three pointers were stored, and each
    // holds the LuaJIT function whose signature its type mirrors.
    let (load_buffer, call, error) = unsafe {
        (
            core::mem::transmute::<*mut c_void, LuaLoadBuffer>(LOAD_BUFFER.load(Ordering::Acquire)),
            core::mem::transmute::<*mut c_void, LuaCall>(CALL.load(Ordering::Acquire)),
            core::mem::transmute::<*mut c_void, LuaError>(ERROR.load(Ordering::Acquire)),
        )
    };
    // SAFETY: `l` is the calling Lua state; the chunk and its name outlive the call.
    unsafe {
        if load_buffer(l, WRAPPER.as_ptr().cast(), WRAPPER.len(), c"=ngx.dynamic".as_ptr()) != 0 {
            // The compile error message is on the stack; raise it to `require`'s caller.
            return error(l);
        }
        call(l, 0, 1);
    }
    1
}
