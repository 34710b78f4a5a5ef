//! nginx glue of lua-dynamic-upstream: the module definition, the `ngx.dynamic` Lua preloader and
//! the functions the embedded Lua wrapper calls through LuaJIT's FFI.
//!
//! Everything that does not need nginx lives in the `dynamic-upstream-core` crate; this crate
//! only reads nginx's structures (under nginx's own locks) and hands the facts to it.

mod balancer;
mod bytes;
mod conf;
mod ffi;
mod locks;
mod lua;
mod output;
mod peers;
mod request;
mod slab;
mod upstreams;

use core::ptr;

use nginx_sys::{ngx_conf_t, ngx_http_module_t, ngx_int_t, ngx_module_t, NGX_HTTP_MODULE};

static MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(preconfiguration),
    postconfiguration: Some(conf::postconfiguration),
    create_main_conf: None,
    init_main_conf: None,
    create_srv_conf: Some(conf::create_srv_conf),
    merge_srv_conf: None,
    create_loc_conf: None,
    merge_loc_conf: None,
};

// The `ngx_modules` table that `load_module` looks for in a dynamic module.
ngx::ngx_modules!(ngx_http_lua_dynamic_upstream_module);

#[used]
#[allow(non_upper_case_globals)]
pub static mut ngx_http_lua_dynamic_upstream_module: ngx_module_t = ngx_module_t {
    ctx: &raw const MODULE_CTX as _,
    commands: ptr::null_mut(),
    type_: NGX_HTTP_MODULE as _,
    init_module: Some(conf::init_module),
    ..ngx_module_t::default()
};

/// Registers `require "ngx.dynamic"` with lua-nginx-module. This must happen in preconfiguration:
/// by postconfiguration the Lua VM exists and `init_by_lua` has already run.
extern "C" fn preconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: nginx calls preconfiguration with the valid configuration being parsed.
    let cf = unsafe { &mut *cf };
    lua::register_preload(cf);
    // A missing Lua module is reported and tolerated: nginx serves on without the API.
    nginx_sys::NGX_OK as ngx_int_t
}
